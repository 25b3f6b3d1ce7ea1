// The C ABI of libvgen (include/vgen.h) as P/Invoke declarations: the one file that knows the native layout.
// Strings cross as NUL-terminated UTF-8 both ways, marshalled here by hand (Unity's .NET Framework profile would
// otherwise use the ANSI code page on Windows).

using System;
using System.Runtime.InteropServices;
using System.Text;

namespace Vgen
{
    /// <summary>Unity's IL2CPP and Mono's full AOT look for an attribute of this name on every method that native
    /// code calls back: they then compile a reverse P/Invoke wrapper for it. Any namespace will do.</summary>
    [AttributeUsage(AttributeTargets.Method)]
    public sealed class MonoPInvokeCallbackAttribute : Attribute
    {
        public MonoPInvokeCallbackAttribute(Type delegateType) { DelegateType = delegateType; }
        public Type DelegateType { get; }
    }

    /// <summary>A job's state; terminal states are Succeeded, Failed and Cancelled.</summary>
    public enum JobState : int { Queued = 0, Running = 1, Succeeded = 2, Failed = 3, Cancelled = 4 }

    /// <summary>Pixel layouts for <see cref="Video.CopyFrame(int, byte[], int, PixelFormat)"/> and images.</summary>
    public enum PixelFormat : uint { Rgb8 = 0, Rgba8 = 1, Bgra8 = 2 }

    /// <summary>A snapshot of a job (<c>vgen_job_status</c>); plain data.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct JobStatus
    {
        /// <summary>The struct's size, set by the binding: how libvgen knows which fields this layout has.</summary>
        public uint Size;
        public JobState State;
        /// <summary>0 validating, 1 encoding prompt, 2 generating, 3 decoding, 4 encoding video, 5 finalizing.</summary>
        public uint Stage;
        /// <summary>0 to 1, weighted by each stage's measured cost.</summary>
        public double Progress;
        public uint Step;
        public uint Steps;
        public uint QueuePosition;
        public uint Attempt;
        /// <summary>Estimated milliseconds to completion, or -1 when unknown.</summary>
        public long EtaMs;
        public uint EtaConfidence;
        /// <summary>The job's error code once it failed or was cancelled, else 0.</summary>
        public int Error;
        [MarshalAs(UnmanagedType.U1)] public bool CacheHit;
        /// <summary>Frames decoded so far: <see cref="Job.Frames"/> reads them.</summary>
        public uint FramesReady;
        /// <summary>Rises with each new preview.</summary>
        public ulong PreviewSeq;

        public bool IsTerminal => State == JobState.Succeeded || State == JobState.Failed || State == JobState.Cancelled;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct NativeCallback
    {
        public IntPtr Callback;
        public IntPtr Userdata;
        public IntPtr Finalizer;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct NativeImage
    {
        public IntPtr Data;
        public uint Width;
        public uint Height;
        public uint Stride;
        public uint Format;
    }

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate void EventCallback(IntPtr userdata, ulong job, IntPtr eventJson);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate void FinalizerCallback(IntPtr userdata);

    internal static class Native
    {
        const string Lib = "vgen";

        /// <summary>The ABI this binding was written against (<c>VGEN_ABI_VERSION</c>).</summary>
        internal const uint AbiVersion = 2;

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern uint vgen_abi_version();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern IntPtr vgen_version();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern IntPtr vgen_last_error();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern void vgen_string_free(IntPtr s);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        [return: MarshalAs(UnmanagedType.U1)]
        internal static extern bool vgen_status_is_retryable(uint status);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_engine_new(byte[] configJson, out IntPtr engine);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern void vgen_engine_free(IntPtr engine);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_engine_shutdown(EngineHandle engine, long timeoutMs);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_engine_on_event(EngineHandle engine, ref NativeCallback callback);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_engine_submit(EngineHandle engine, byte[] requestJson, IntPtr callback, out ulong job);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_engine_submit_images(
            EngineHandle engine, byte[] requestJson, ref NativeImage image, IntPtr lastImage, IntPtr callback, out ulong job);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_job_poll(EngineHandle engine, ulong job, ref JobStatus status);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_job_wait(EngineHandle engine, ulong job, long timeoutMs, ref JobStatus status);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_job_cancel(EngineHandle engine, ulong job, [MarshalAs(UnmanagedType.U1)] out bool cancelled);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_job_release(EngineHandle engine, ulong job);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_job_error_message(EngineHandle engine, ulong job, out IntPtr message);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_job_result(EngineHandle engine, ulong job, out VideoHandle video);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_job_frames(EngineHandle engine, ulong job, out VideoHandle video);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_job_preview(EngineHandle engine, ulong job, out VideoHandle video, out uint step);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern void vgen_video_free(IntPtr video);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_video_frames(
            VideoHandle video, out IntPtr data, out uint frames, out uint height, out uint width, out double fps);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_video_first_frame(VideoHandle video, out uint first);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_video_copy_frame(VideoHandle video, UIntPtr index, uint format, byte[] dst, UIntPtr dstStride);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl, EntryPoint = "vgen_video_copy_frame")]
        internal static extern int vgen_video_copy_frame_ptr(VideoHandle video, UIntPtr index, uint format, IntPtr dst, UIntPtr dstStride);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        internal static extern int vgen_video_save(VideoHandle video, byte[] path);

        /// <summary>A string as NUL-terminated UTF-8.</summary>
        internal static byte[] Utf8(string s)
        {
            if (s == null) return null;
            var bytes = new byte[Encoding.UTF8.GetByteCount(s) + 1];
            Encoding.UTF8.GetBytes(s, 0, s.Length, bytes, 0);
            return bytes;
        }

        /// <summary>A NUL-terminated UTF-8 string at <paramref name="p"/> (not freed).</summary>
        internal static string FromUtf8(IntPtr p)
        {
            if (p == IntPtr.Zero) return null;
            int n = 0;
            while (Marshal.ReadByte(p, n) != 0) n++;
            var bytes = new byte[n];
            Marshal.Copy(p, bytes, 0, n);
            return Encoding.UTF8.GetString(bytes);
        }

        /// <summary>A string vgen allocated, freed after it is read.</summary>
        internal static string Take(IntPtr p)
        {
            try { return FromUtf8(p); } finally { vgen_string_free(p); }
        }

        internal static JobStatus NewStatus()
        {
            return new JobStatus { Size = (uint)Marshal.SizeOf(typeof(JobStatus)) };
        }

        /// <summary>Throws the exception of a status that is not OK, with vgen's message for this thread.</summary>
        internal static void Check(int status)
        {
            if (status != 0) throw VgenException.From(status, FromUtf8(vgen_last_error()));
        }
    }

    /// <summary>Owns a <c>vgen_engine *</c>. Releasing it never blocks the thread that drops it: an engine whose
    /// shutdown has not finished is shut down with no drain and freed on a thread-pool thread.</summary>
    internal sealed class EngineHandle : SafeHandle
    {
        EngineHandle() : base(IntPtr.Zero, true) { }
        internal EngineHandle(IntPtr h) : base(IntPtr.Zero, true) { SetHandle(h); }

        public override bool IsInvalid => handle == IntPtr.Zero;

        protected override bool ReleaseHandle()
        {
            IntPtr h = handle;
            // 0 is VGEN_STATUS_OK: the shutdown (started now if it was not) has finished, so the free is quick.
            if (ShutdownFinished(h)) Native.vgen_engine_free(h);
            else System.Threading.ThreadPool.QueueUserWorkItem(_ => Native.vgen_engine_free(h));
            return true;
        }

        [DllImport("vgen", CallingConvention = CallingConvention.Cdecl, EntryPoint = "vgen_engine_shutdown")]
        static extern int vgen_engine_shutdown_raw(IntPtr engine, long timeoutMs);

        static bool ShutdownFinished(IntPtr h) { return vgen_engine_shutdown_raw(h, 0) == 0; }
    }

    /// <summary>Owns a <c>vgen_video *</c>.</summary>
    internal sealed class VideoHandle : SafeHandle
    {
        VideoHandle() : base(IntPtr.Zero, true) { }

        public override bool IsInvalid => handle == IntPtr.Zero;

        protected override bool ReleaseHandle()
        {
            Native.vgen_video_free(handle);
            return true;
        }
    }
}
