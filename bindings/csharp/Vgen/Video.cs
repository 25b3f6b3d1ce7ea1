// A video's frames, as libvgen holds them: copied into a texture's memory on request, never marshalled whole.

using System;
using System.Runtime.InteropServices;

namespace Vgen
{
    /// <summary>Frames from a job: its result, the frames decoded so far, or a preview. Immutable; any thread may
    /// read it. Dispose it when done (its pixels live in native memory).</summary>
    public sealed class Video : IDisposable
    {
        readonly VideoHandle handle;
        readonly IntPtr data;

        internal Video(VideoHandle handle)
        {
            this.handle = handle;
            Native.Check(Native.vgen_video_frames(handle, out data, out uint frames, out uint height, out uint width, out double fps));
            Native.Check(Native.vgen_video_first_frame(handle, out uint first));
            Frames = (int)frames;
            Height = (int)height;
            Width = (int)width;
            Fps = fps;
            FirstFrame = (int)first;
        }

        public int Frames { get; }
        public int Height { get; }
        public int Width { get; }
        /// <summary>Frames per second; 0 for a preview and for frames so far.</summary>
        public double Fps { get; }
        /// <summary>Which frame of the whole video is this one's frame 0 (not 0 only for the frames so far of a job
        /// that keeps no frames).</summary>
        public int FirstFrame { get; }

        /// <summary>The bytes a frame takes in <paramref name="format"/> with rows packed.</summary>
        public int FrameBytes(PixelFormat format = PixelFormat.Rgba8)
        {
            return Width * Height * (format == PixelFormat.Rgb8 ? 3 : 4);
        }

        /// <summary>Copies frame <paramref name="index"/> into <paramref name="dst"/>, rows <paramref name="stride"/>
        /// bytes apart (0: packed), top row first: what <c>Texture2D.LoadRawTextureData</c> or Godot's
        /// <c>Image.SetData</c> takes. RGBA8 and BGRA8 get alpha 255.</summary>
        public void CopyFrame(int index, byte[] dst, int stride = 0, PixelFormat format = PixelFormat.Rgba8)
        {
            if (dst == null) throw new ArgumentNullException(nameof(dst));
            stride = CheckedStride(stride, format, dst.LongLength);
            Native.Check(Native.vgen_video_copy_frame(handle, Index(index),
                (uint)format, dst, (UIntPtr)(uint)stride));
        }

        /// <summary>As <see cref="CopyFrame(int, byte[], int, PixelFormat)"/>, into native memory (a mapped texture,
        /// a <c>NativeArray</c>'s pointer) of <paramref name="dstBytes"/> bytes.</summary>
        public void CopyFrame(int index, IntPtr dst, long dstBytes, int stride = 0, PixelFormat format = PixelFormat.Rgba8)
        {
            if (dst == IntPtr.Zero) throw new ArgumentNullException(nameof(dst));
            stride = CheckedStride(stride, format, dstBytes);
            Native.Check(Native.vgen_video_copy_frame_ptr(handle, Index(index),
                (uint)format, dst, (UIntPtr)(uint)stride));
        }

        static UIntPtr Index(int index)
        {
            if (index < 0) throw new ArgumentOutOfRangeException(nameof(index), "a frame index is at least 0");
            return (UIntPtr)(uint)index;
        }

        /// <summary>Frame <paramref name="index"/> as RGB8 bytes exactly as libvgen holds it (a copy).</summary>
        public byte[] Rgb(int index)
        {
            if (index < 0 || index >= Frames) throw new ArgumentOutOfRangeException(nameof(index), $"the video has {Frames} frames");
            int bytes = Width * Height * 3;
            var rgb = new byte[bytes];
            Marshal.Copy(new IntPtr(data.ToInt64() + (long)index * bytes), rgb, 0, bytes);
            return rgb;
        }

        /// <summary>Writes the video to a file in the format its extension asks for (.mp4, .gif, .png).</summary>
        public void Save(string path) { Native.Check(Native.vgen_video_save(handle, Native.Utf8(path))); }

        public void Dispose() { handle.Dispose(); }

        /// <summary>The stride to use, after checking that the buffer holds every row: libvgen trusts the buffer's
        /// length, so it is checked here, before any native code writes.</summary>
        int CheckedStride(int stride, PixelFormat format, long capacity)
        {
            int row = Width * (format == PixelFormat.Rgb8 ? 3 : 4);
            if (stride == 0) stride = row;
            if (stride < row) throw new ArgumentException($"stride {stride} is less than a row ({row} bytes)", nameof(stride));
            long need = Height == 0 ? 0 : (long)stride * (Height - 1) + row;
            if (capacity < need) throw new ArgumentException($"the buffer holds {capacity} bytes; a frame needs {need}", "dst");
            return stride;
        }
    }
}
