// One exception type per vgen_status, so that a game catches what it can handle (QueueFullException: try later;
// InvalidArgumentException: fix the request) and lets the rest through. The numbers are the C ABI's.

using System;

namespace Vgen
{
    /// <summary>A vgen call failed. <see cref="Status"/> is the C ABI's <c>vgen_status</c> number; the message is
    /// vgen's own, saying what to change.</summary>
    public class VgenException : Exception
    {
        public VgenException(int status, string message) : base(message) { Status = status; }

        public int Status { get; }

        /// <summary>Whether the same call may succeed later (a full queue, a device out of rotation, ...).</summary>
        public bool IsRetryable => Native.vgen_status_is_retryable((uint)Status);

        internal static VgenException From(int status, string message)
        {
            switch (status)
            {
                case 1: return new InvalidArgumentException(message);
                case 2: return new NotFoundException(message);
                case 3: return new AlreadyExistsException(message);
                case 4: return new QueueFullException(message);
                case 5: return new CancelledException(message);
                case 6: return new DeadlineExceededException(message);
                case 7: return new ResourceExhaustedException(message);
                case 8: return new UnavailableException(message);
                case 9: return new ModelException(message);
                case 10: return new InternalException(message);
                case 11: return new ShuttingDownException(message);
                case 12: return new IoException(message);
                case 13: return new UnsupportedException(message);
                case 14: return new WaitTimeoutException(message);
                case 15: return new NotReadyException(message);
                case 16: return new NumericalException(message);
                case 100: return new NullParameterException(message);
                case 101: return new PanicException(message);
                case 102: return new InvalidUtf8Exception(message);
                default: return new VgenException(status, message);
            }
        }
    }

    public sealed class InvalidArgumentException : VgenException { public InvalidArgumentException(string m) : base(1, m) { } }
    public sealed class NotFoundException : VgenException { public NotFoundException(string m) : base(2, m) { } }
    public sealed class AlreadyExistsException : VgenException { public AlreadyExistsException(string m) : base(3, m) { } }
    public sealed class QueueFullException : VgenException { public QueueFullException(string m) : base(4, m) { } }
    public sealed class CancelledException : VgenException { public CancelledException(string m) : base(5, m) { } }
    public sealed class DeadlineExceededException : VgenException { public DeadlineExceededException(string m) : base(6, m) { } }
    public sealed class ResourceExhaustedException : VgenException { public ResourceExhaustedException(string m) : base(7, m) { } }
    public sealed class UnavailableException : VgenException { public UnavailableException(string m) : base(8, m) { } }
    public sealed class ModelException : VgenException { public ModelException(string m) : base(9, m) { } }
    public sealed class InternalException : VgenException { public InternalException(string m) : base(10, m) { } }
    public sealed class ShuttingDownException : VgenException { public ShuttingDownException(string m) : base(11, m) { } }
    public sealed class IoException : VgenException { public IoException(string m) : base(12, m) { } }
    public sealed class UnsupportedException : VgenException { public UnsupportedException(string m) : base(13, m) { } }
    /// <summary>A wait ran out of time; the job goes on (VGEN_STATUS_TIMEOUT; named apart from System.TimeoutException).</summary>
    public sealed class WaitTimeoutException : VgenException { public WaitTimeoutException(string m) : base(14, m) { } }
    public sealed class NotReadyException : VgenException { public NotReadyException(string m) : base(15, m) { } }
    public sealed class NumericalException : VgenException { public NumericalException(string m) : base(16, m) { } }
    public sealed class NullParameterException : VgenException { public NullParameterException(string m) : base(100, m) { } }
    public sealed class PanicException : VgenException { public PanicException(string m) : base(101, m) { } }
    public sealed class InvalidUtf8Exception : VgenException { public InvalidUtf8Exception(string m) : base(102, m) { } }
}
