// A simulated game: an Update() loop on the main thread that makes a clip with the default model, shows its
// previews and its frames as they decode, cancels another job, survives a garbage collection mid-job and shuts
// down without a hitch. Run by `make test-csharp` under Mono; prints "N passed, N failed" and exits non-zero on a
// failure.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq;
using System.Threading;
using Vgen;

static class GameLoop
{
    static int passed, failed;

    static void Check(bool ok, string what)
    {
        if (ok) passed++; else failed++;
        Console.WriteLine((ok ? "ok     " : "FAILED ") + what);
    }

    static T Throws<T>(Action action) where T : Exception
    {
        try { action(); }
        catch (T e) { return e; }
        catch (Exception e) { Console.WriteLine($"       threw {e.GetType().Name}: {e.Message}"); return null; }
        return null;
    }

    const double BudgetMs = 1.0;

    static int Main()
    {
        int mainThread = Thread.CurrentThread.ManagedThreadId;
        Check(Engine.AbiVersion >= 2 && Engine.Version.Length > 0, $"vgen {Engine.Version}, C ABI {Engine.AbiVersion}");
        var engine = new Engine("{\"devices\": [\"cpu\"], \"cpu_threads\": 1}");

        var hero = engine.Submit("{\"prompt\": \"a red circle moving right\", \"seed\": 1, \"preview_every\": 2}");
        var doomed = engine.Submit("{\"prompt\": \"a blue square moving up\", \"seed\": 2}");

        // What the game uploads: one RGBA texture per frame of the hero's clip, filled as the frames decode.
        var textures = new Dictionary<int, byte[]>();
        byte[] previewTexture = null;
        int previewUploads = 0, frameBatches = 0, handlerOffMain = 0;
        var events = new Dictionary<ulong, List<string>>();
        uint framesSeen = 0;
        ulong previewSeen = 0;

        engine.Event += ev =>
        {
            if (Thread.CurrentThread.ManagedThreadId != mainThread) handlerOffMain++;
            if (!events.TryGetValue(ev.Job, out var list)) events[ev.Job] = list = new List<string>();
            list.Add(ev.Type);
        };

        var over = 0;
        var frames = 0;
        double worst = 0;
        bool collected = false, cancelSent = false;
        var clock = Stopwatch.StartNew();
        var update = new Stopwatch();
        while (clock.Elapsed < TimeSpan.FromMinutes(3))
        {
            // --- Update(): everything vgen costs the main thread this frame -----------------------------------
            update.Restart();
            engine.Pump();
            var h = hero.Poll();
            var d = doomed.Poll();
            if (!cancelSent && d.State == JobState.Running && d.Step >= 1) cancelSent = doomed.Cancel();
            if (h.PreviewSeq != previewSeen)
            {
                previewSeen = h.PreviewSeq;
                using (var preview = hero.Preview(out uint _))
                {
                    if (preview != null)
                    {
                        previewTexture = previewTexture ?? new byte[preview.FrameBytes()];
                        preview.CopyFrame(preview.Frames - 1, previewTexture);
                        previewUploads++;
                    }
                }
            }
            if (h.FramesReady > framesSeen)
            {
                using (var soFar = hero.Frames())
                {
                    for (int i = (int)framesSeen; i < soFar.FirstFrame + soFar.Frames; i++)
                    {
                        var texture = new byte[soFar.FrameBytes()];
                        soFar.CopyFrame(i - soFar.FirstFrame, texture);
                        textures[i] = texture;
                    }
                    framesSeen = (uint)(soFar.FirstFrame + soFar.Frames);
                    frameBatches++;
                }
            }
            double ms = update.Elapsed.TotalMilliseconds;
            frames++;
            if (frames > 10) // the first frames JIT-compile the loop
            {
                worst = Math.Max(worst, ms);
                if (ms > BudgetMs) over++;
            }
            // --- the rest of the frame -----------------------------------------------------------------------
            if (!collected && h.Progress > 0.3)
            {
                // A collection mid-job: the callback thunks and their userdata must survive it.
                GC.Collect();
                GC.WaitForPendingFinalizers();
                GC.Collect();
                collected = true;
            }
            if (h.IsTerminal && d.IsTerminal && events.ContainsKey(hero.Id) && events[hero.Id].Contains("finished")
                && events.ContainsKey(doomed.Id) && events[doomed.Id].Contains("finished"))
                break;
            Thread.Sleep(4);
        }
        int allowed = Math.Max(2, frames / 50);
        Check(over <= allowed, $"{frames} frames, {over} over the {BudgetMs} ms budget ({allowed} allowed), worst {worst:F3} ms");
        Check(collected, "a garbage collection mid-job");
        Check(handlerOffMain == 0, "every event handler ran on the main thread (in Pump)");
        Check(!engine.CallbackThreads.Contains(mainThread) && engine.CallbackThreads.Count > 0,
            "vgen's callbacks never ran on the main thread");

        var status = hero.Poll();
        Check(status.State == JobState.Succeeded, $"the hero clip succeeded ({status.State})");
        Check(events[hero.Id].Count(t => t == "frames") >= 2 && events[hero.Id].Last() == "finished",
            $"'frames' events as chunks decoded ({events[hero.Id].Count(t => t == "frames")}), 'finished' last");
        Check(previewUploads >= 1 && status.PreviewSeq >= 1, $"{previewUploads} previews uploaded (preview_seq {status.PreviewSeq})");
        using (var video = hero.Result())
        {
            Check(video.Frames == 17 && video.Width == 64 && video.Height == 64, $"{video.Frames} frames of {video.Width}x{video.Height}");
            Check(frameBatches >= 2 && textures.Count == video.Frames, $"{textures.Count} frames uploaded while decoding, in {frameBatches} batches");
            bool same = true, streamedSame = true;
            var rgba = new byte[video.FrameBytes()];
            for (int i = 0; i < video.Frames; i++)
            {
                var rgb = video.Rgb(i);
                video.CopyFrame(i, rgba);
                for (int p = 0; p < video.Width * video.Height; p++)
                {
                    same &= rgba[4 * p] == rgb[3 * p] && rgba[4 * p + 1] == rgb[3 * p + 1] && rgba[4 * p + 2] == rgb[3 * p + 2] && rgba[4 * p + 3] == 255;
                }
                streamedSame &= textures.ContainsKey(i) && textures[i].SequenceEqual(rgba);
            }
            Check(same, "RGBA8 copies equal vgen_video_frames' RGB8 pixels, alpha 255");
            Check(streamedSame, "the frames uploaded while decoding are the finished video's");
            var bgra = new byte[video.FrameBytes(PixelFormat.Bgra8) + 64 * 4];
            video.CopyFrame(16, bgra, 64 * 4 + 4, PixelFormat.Bgra8);
            var last = video.Rgb(16);
            Check(bgra[0] == last[2] && bgra[2] == last[0] && bgra[(64 * 4 + 4) * 63 + 2] == last[63 * 64 * 3], "BGRA8 with a padded stride");
            Check(Throws<InvalidArgumentException>(() => video.CopyFrame(17, rgba)) != null, "frame 17 of 17: InvalidArgumentException");
            Check(Throws<ArgumentException>(() => video.CopyFrame(0, new byte[100])) != null, "a buffer too small is refused before native code writes");
        }
        Check(doomed.Poll().State == JobState.Cancelled && Throws<CancelledException>(() => doomed.Result()) != null,
            "the cancelled job's result throws CancelledException");
        var bad = Throws<InvalidArgumentException>(() => engine.Submit("{\"prompt\": \"x\", \"colour\": \"red\"}"));
        Check(bad != null && bad.Message.Contains("colour") && !bad.IsRetryable, "a bad request: InvalidArgumentException naming the field");
        Check(Throws<NotReadyException>(() => engine.Submit("{\"prompt\": \"a green triangle growing\", \"seed\": 3}").Result()) != null,
            "an unfinished job's result: NotReadyException");

        // Shutting down: returns at once, keeps delivering the last events, then freeing does not block.
        var shutdownClock = Stopwatch.StartNew();
        Check(!engine.Shutdown(0) && shutdownClock.ElapsedMilliseconds < 50, $"Shutdown returned at once ({shutdownClock.ElapsedMilliseconds} ms)");
        Check(Throws<ShuttingDownException>(() => engine.Submit("{\"prompt\": \"late\"}")) != null, "a submit after it: ShuttingDownException");
        while (!engine.Shutdown(0) && shutdownClock.Elapsed < TimeSpan.FromSeconds(30))
        {
            engine.Pump();
            Thread.Sleep(4);
        }
        engine.Pump();
        var dispose = Stopwatch.StartNew();
        engine.Dispose();
        Check(dispose.ElapsedMilliseconds < 50, $"Dispose after the shutdown took {dispose.ElapsedMilliseconds} ms");

        // An engine dropped mid-job without a shutdown: Dispose still returns at once.
        var dropped = new Engine("{\"devices\": [\"cpu\"], \"cpu_threads\": 1}");
        dropped.Submit("{\"prompt\": \"a white circle moving left\", \"seed\": 4}");
        Thread.Sleep(200);
        dispose.Restart();
        dropped.Dispose();
        Check(dispose.ElapsedMilliseconds < 50, $"Dispose mid-job took {dispose.ElapsedMilliseconds} ms");

        Console.WriteLine($"{passed} passed, {failed} failed");
        return failed == 0 ? 0 : 1;
    }
}
