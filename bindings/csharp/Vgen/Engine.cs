// The engine: submit, pump events on the main thread, shut down without a hitch.
//
// Invariants:
// - Native code calls back only into the static thunks below (marked [MonoPInvokeCallback] for IL2CPP and full
//   AOT); their delegates live in static fields, so the GC never collects what native code holds a pointer to.
// - The thunks run on vgen's dispatcher thread and only enqueue: no game code runs there. Pump() delivers the queue
//   on whichever thread calls it (the main thread, in a game).
// - The userdata vgen holds is a GCHandle to the engine's Inbox (not to the Engine, so a forgotten Engine can still
//   be collected). vgen calls the finalizer thunk exactly once, when the engine is freed, and it frees the handle.

using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Runtime.InteropServices;
using System.Threading;

namespace Vgen
{
    /// <summary>One event of a job, as vgen's JSON (<c>{"job":..,"seq":..,"type":"progress",..}</c>).</summary>
    public struct JobEvent
    {
        public ulong Job;
        /// <summary>"queued", "started", "stage", "progress", "preview", "frames", "retry_scheduled", "warning" or
        /// "finished" (the last event of every job, exactly once).</summary>
        public string Type;
        public string Json;
    }

    /// <summary>An embedded vgen engine. Any thread may submit and poll; events are delivered by <see cref="Pump"/>
    /// on the thread that calls it. Dispose it (or let it be collected): that never blocks.</summary>
    public sealed class Engine : IDisposable
    {
        static readonly EventCallback EventThunk = OnNativeEvent;
        static readonly FinalizerCallback FinalizerThunk = OnNativeFinalize;

        readonly EngineHandle handle;
        readonly Inbox inbox = new Inbox();

        /// <summary>Events waiting for <see cref="Pump"/>, filled from vgen's dispatcher thread.</summary>
        sealed class Inbox
        {
            internal readonly ConcurrentQueue<JobEvent> Events = new ConcurrentQueue<JobEvent>();
            /// <summary>The managed ids of the threads that delivered events (never the main thread).</summary>
            internal readonly ConcurrentDictionary<int, bool> Threads = new ConcurrentDictionary<int, bool>();
        }

        /// <summary>Raised by <see cref="Pump"/>, on its thread, for every event of every job of this engine.</summary>
        public event Action<JobEvent> Event;

        /// <summary>An engine from a JSON configuration (null for the defaults): for a game, for example
        /// <c>{"cpu_threads": 2}</c> to leave it the other cores.</summary>
        public Engine(string configJson = null)
        {
            if (Native.vgen_abi_version() < Native.AbiVersion)
                throw new VgenException(13, $"libvgen has ABI {Native.vgen_abi_version()}; this binding needs {Native.AbiVersion} or later");
            Native.Check(Native.vgen_engine_new(Native.Utf8(configJson), out IntPtr raw));
            handle = new EngineHandle(raw);
            var userdata = GCHandle.Alloc(inbox);
            var callback = new NativeCallback
            {
                Callback = Marshal.GetFunctionPointerForDelegate(EventThunk),
                Userdata = GCHandle.ToIntPtr(userdata),
                Finalizer = Marshal.GetFunctionPointerForDelegate(FinalizerThunk),
            };
            // On failure vgen has already called the finalizer, which freed `userdata`.
            Native.Check(Native.vgen_engine_on_event(handle, ref callback));
        }

        internal EngineHandle Handle => handle;

        /// <summary>vgen's version, for example "0.1.0".</summary>
        public static string Version => Native.FromUtf8(Native.vgen_version());

        /// <summary>The C ABI version of the libvgen loaded.</summary>
        public static uint AbiVersion => Native.vgen_abi_version();

        /// <summary>Validates and queues a request (JSON, as for <c>vgen_engine_submit</c>); returns at once. Throws
        /// <see cref="InvalidArgumentException"/> saying what to change when the request is invalid.</summary>
        public Job Submit(string requestJson)
        {
            Native.Check(Native.vgen_engine_submit(handle, Native.Utf8(requestJson), IntPtr.Zero, out ulong id));
            return new Job(this, id);
        }

        /// <summary>As <see cref="Submit(string)"/>, with the first frame as raw pixels (a render target read back):
        /// <paramref name="height"/> rows <paramref name="stride"/> bytes apart. vgen copies them before this returns.</summary>
        public Job Submit(string requestJson, byte[] pixels, int width, int height, int stride, PixelFormat format = PixelFormat.Rgba8)
        {
            if (pixels == null) throw new ArgumentNullException(nameof(pixels));
            int row = width * (format == PixelFormat.Rgb8 ? 3 : 4);
            if (width <= 0 || height <= 0 || stride < row || pixels.LongLength < (long)stride * (height - 1) + row)
                throw new ArgumentException($"{pixels.LongLength} bytes do not hold {width}x{height} {format} pixels at stride {stride}");
            var pinned = GCHandle.Alloc(pixels, GCHandleType.Pinned);
            try
            {
                var image = new NativeImage
                {
                    Data = pinned.AddrOfPinnedObject(), Width = (uint)width, Height = (uint)height,
                    Stride = (uint)stride, Format = (uint)format,
                };
                Native.Check(Native.vgen_engine_submit_images(handle, Native.Utf8(requestJson), ref image, IntPtr.Zero, IntPtr.Zero, out ulong id));
                return new Job(this, id);
            }
            finally { pinned.Free(); }
        }

        /// <summary>The job <paramref name="id"/> of this engine.</summary>
        public Job JobOf(ulong id) { return new Job(this, id); }

        /// <summary>Delivers up to <paramref name="maxEvents"/> waiting events to <see cref="Event"/> on the calling
        /// thread; returns how many it delivered. Call it once per frame from the main thread.</summary>
        public int Pump(int maxEvents = int.MaxValue)
        {
            int delivered = 0;
            while (delivered < maxEvents && inbox.Events.TryDequeue(out JobEvent ev))
            {
                delivered++;
                Event?.Invoke(ev);
            }
            return delivered;
        }

        /// <summary>Starts shutting down and returns at once: submits fail from now on, jobs get
        /// <paramref name="timeoutMs"/> (-1: the configured drain timeout) to finish and are then cancelled, and each
        /// job's last event still arrives (keep pumping). True once the shutdown has finished.</summary>
        public bool Shutdown(long timeoutMs = -1)
        {
            int status = Native.vgen_engine_shutdown(handle, timeoutMs);
            if (status == 15) return false;
            Native.Check(status);
            return true;
        }

        /// <summary>Frees the engine without blocking the caller: if its shutdown has not finished, running jobs are
        /// cancelled and the engine is freed on a thread-pool thread.</summary>
        public void Dispose() { handle.Dispose(); }

        /// <summary>The managed ids of the threads vgen delivered events on (for tests: never the main thread).</summary>
        internal ICollection<int> CallbackThreads => inbox.Threads.Keys;

        [MonoPInvokeCallback(typeof(EventCallback))]
        static void OnNativeEvent(IntPtr userdata, ulong job, IntPtr eventJson)
        {
            // Nothing may throw into native code.
            try
            {
                if (!(GCHandle.FromIntPtr(userdata).Target is Inbox inbox)) return;
                string json = Native.FromUtf8(eventJson);
                inbox.Threads[Thread.CurrentThread.ManagedThreadId] = true;
                inbox.Events.Enqueue(new JobEvent { Job = job, Type = TypeOf(json), Json = json });
            }
            catch (Exception) { }
        }

        [MonoPInvokeCallback(typeof(FinalizerCallback))]
        static void OnNativeFinalize(IntPtr userdata)
        {
            try { GCHandle.FromIntPtr(userdata).Free(); } catch (Exception) { }
        }

        /// <summary>The value of the event's "type" field (vgen writes it as a plain word).</summary>
        static string TypeOf(string json)
        {
            const string key = "\"type\":\"";
            int start = json.IndexOf(key, StringComparison.Ordinal);
            if (start < 0) return "";
            start += key.Length;
            int end = json.IndexOf('"', start);
            return end < 0 ? "" : json.Substring(start, end - start);
        }
    }
}
