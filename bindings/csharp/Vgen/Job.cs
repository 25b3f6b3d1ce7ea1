// A submitted job: an id and the engine that runs it. Every call here returns at once (Wait aside), so a game's
// Update() may call them each frame.

namespace Vgen
{
    public sealed class Job
    {
        readonly Engine engine;

        internal Job(Engine engine, ulong id)
        {
            this.engine = engine;
            Id = id;
        }

        public ulong Id { get; }

        /// <summary>The job's status now. Never blocks and never allocates in native code: call it every frame.</summary>
        public JobStatus Poll()
        {
            var status = Native.NewStatus();
            Native.Check(Native.vgen_job_poll(engine.Handle, Id, ref status));
            return status;
        }

        /// <summary>Waits up to <paramref name="timeoutMs"/> (-1: forever) for the job to end. Blocks: not for the
        /// main thread. Throws <see cref="WaitTimeoutException"/> if it is still going.</summary>
        public JobStatus Wait(long timeoutMs = -1)
        {
            var status = Native.NewStatus();
            Native.Check(Native.vgen_job_wait(engine.Handle, Id, timeoutMs, ref status));
            return status;
        }

        /// <summary>Cancels the job (a running one stops at its next step); false when it had already ended.</summary>
        public bool Cancel()
        {
            Native.Check(Native.vgen_job_cancel(engine.Handle, Id, out bool cancelled));
            return cancelled;
        }

        /// <summary>The finished video. Throws the job's error if it failed or was cancelled, and
        /// <see cref="NotReadyException"/> while it runs.</summary>
        public Video Result()
        {
            Native.Check(Native.vgen_job_result(engine.Handle, Id, out VideoHandle video));
            return new Video(video);
        }

        /// <summary>The frames decoded so far, or null before the first chunk. Call it when
        /// <see cref="JobStatus.FramesReady"/> has risen (or on a "frames" event), not every frame: each call copies
        /// the frames in native memory.</summary>
        public Video Frames()
        {
            int status = Native.vgen_job_frames(engine.Handle, Id, out VideoHandle video);
            if (status == 15) return null;
            Native.Check(status);
            return new Video(video);
        }

        /// <summary>The latest preview and its step, or null before the first (see <c>preview_every</c>).</summary>
        public Video Preview(out uint step)
        {
            int status = Native.vgen_job_preview(engine.Handle, Id, out VideoHandle video, out step);
            if (status == 15) return null;
            Native.Check(status);
            return new Video(video);
        }

        /// <summary>The message of a failed or cancelled job's error; empty when it has none.</summary>
        public string ErrorMessage()
        {
            Native.Check(Native.vgen_job_error_message(engine.Handle, Id, out System.IntPtr message));
            return Native.Take(message) ?? "";
        }

        /// <summary>Forgets a finished job and its video now (they are otherwise kept for the engine's retention).</summary>
        public void Release() { Native.Check(Native.vgen_job_release(engine.Handle, Id)); }
    }
}
