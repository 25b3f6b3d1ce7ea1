/* vgen: native text-to-video generation. A header-only C++17 wrapper over the C ABI in vgen.h. */

/**
 * \file vgen.hpp
 * \brief RAII classes over `vgen.h`, for C++17 hosts: `vgen::Engine`, `vgen::Job`, `vgen::Video` and
 * `vgen::Error`. Link `libvgen` as for C; nothing here needs compiling.
 *
 * ```cpp
 * vgen::Engine engine(R"({"devices": ["cpu"]})");
 * vgen::Job job = engine.submit(R"({"prompt": "a red circle moving right", "seed": 1})",
 *                               [](std::uint64_t, std::string_view event) { std::cout << event << '\n'; });
 * vgen::Video video = job.wait_result();      // throws vgen::Error if the job failed
 * video.save("clip.mp4");
 * ```
 *
 * Conventions
 * -----------
 * - Every C handle has one owner here: `Engine` owns a `vgen_engine *` and `Video` a `vgen_video *`; each frees
 *   its handle in its destructor. They are move-only; a moved-from object is empty (it owns nothing, and only
 *   destruction, assignment and `get()` may be used on it). `release()` hands the handle back to C.
 * - A `Job` is a job id and the engine it belongs to. It owns nothing (the C ABI has no job handle to free), so
 *   it is an ordinary copyable value; it must not be used after its engine is destroyed.
 * - Every call that fails throws `vgen::Error`, which carries the `vgen_status` and vgen's message. Functions that
 *   cannot fail are `noexcept`. Strings vgen returns are copied into `std::string` and freed at once.
 * - Requests and configurations are JSON strings, exactly as in C (see `vgen_engine_new` and
 *   `vgen_engine_submit` for their fields).
 *
 * Thread safety
 * -------------
 * As in C: an `Engine`, a `Job` and a `Video` may be used from any number of threads at once through their
 * `const` members. Destroying, assigning or releasing an object must be the last use of it, with no other call
 * on it running. Callbacks run on the engine's dispatcher thread.
 */

#ifndef VGEN_HPP
#define VGEN_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "vgen.h"

namespace vgen {

/**
 * \brief A failed call: the status vgen returned and its message.
 *
 * Thread safety: an immutable value.
 */
class Error : public std::runtime_error {
public:
    Error(vgen_status status, const std::string &message) : std::runtime_error(message), status_(status) {}

    /// The status the C call returned; never `VGEN_STATUS_OK`.
    vgen_status status() const noexcept { return status_; }

    /// The status's short name, such as `"invalid_argument"` (a static string).
    const char *name() const noexcept { return vgen_status_name(status_); }

    /// Whether the same call may succeed if retried later unchanged (a full queue, a busy device, ...).
    bool retryable() const noexcept { return vgen_status_is_retryable(status_); }

private:
    vgen_status status_;
};

namespace detail {

/// Throws `Error` for a failed status, with the calling thread's last error message (copied at once: the C
/// pointer is valid only until the next vgen call on this thread).
inline void check(vgen_status status) {
    if (status != VGEN_STATUS_OK) throw Error(status, vgen_last_error());
}

/// Copies a string vgen allocated and frees it.
inline std::string take(char *s) {
    std::unique_ptr<char, void (*)(char *)> owned(s, vgen_string_free);
    return owned ? std::string(owned.get()) : std::string();
}

}  // namespace detail

/// The version of vgen, for example `"0.1.0"`.
inline std::string version() { return vgen_version(); }

/// The version of libtorch vgen was built against, for example `"2.11.0+cu130"`.
inline std::string libtorch_version() { return vgen_libtorch_version(); }

/// The C ABI version of the libvgen loaded; at least `VGEN_ABI_VERSION` when it has all this header declares.
inline std::uint32_t abi_version() noexcept { return vgen_abi_version(); }

/// The number of CUDA GPUs libtorch sees; 0 where there is none (jobs then run on the CPU).
inline std::size_t cuda_device_count() noexcept { return vgen_cuda_device_count(); }

/// A snapshot of a job: the C struct itself (`state`, `stage`, `progress`, `step`, `steps`, `eta_ms`, `error`, ...).
using JobStatus = vgen_job_status;

/// Whether a job in this state has ended (succeeded, failed or was cancelled). A job ends exactly once.
inline bool is_terminal(vgen_job_state state) noexcept {
    return state == VGEN_JOB_SUCCEEDED || state == VGEN_JOB_FAILED || state == VGEN_JOB_CANCELLED;
}

/**
 * \brief A finished video (or a preview): RGB8 frames and metadata. Owns a `vgen_video *`, freed with
 * `vgen_video_free` by the destructor.
 *
 * The frames are vgen's own buffer, not a copy: `data()` stays valid as long as this object (or whoever
 * `release()` handed the handle to) keeps the video, even after the job is released or the engine destroyed.
 * Thread safety: immutable; read it from any number of threads at once.
 */
class Video {
public:
    /// An empty video, owning nothing.
    Video() noexcept = default;

    /// Takes ownership of `video` (from `vgen_job_result` or `vgen_job_preview`); NULL makes an empty video.
    explicit Video(vgen_video *video) : video_(video) {
        if (video_ == nullptr) return;
        const vgen_status status = vgen_video_frames(video_, &data_, &frames_, &height_, &width_, &fps_);
        if (status != VGEN_STATUS_OK) {
            vgen_video_free(video_);
            video_ = nullptr;
            detail::check(status);
        }
    }

    Video(Video &&other) noexcept { swap(other); }
    Video &operator=(Video &&other) noexcept {
        Video taken(std::move(other));
        taken.swap(*this);
        return *this;
    }
    Video(const Video &) = delete;
    Video &operator=(const Video &) = delete;
    ~Video() { vgen_video_free(video_); }

    /// `frames() × height() × width() × 3` bytes of RGB8, row-major; NULL for an empty video.
    const std::uint8_t *data() const noexcept { return data_; }
    /// The bytes `data()` points at.
    std::size_t size() const noexcept { return std::size_t{frames_} * height_ * width_ * 3; }
    /// Frame `i` (0-based, below `frames()`), `height() × width() × 3` bytes.
    const std::uint8_t *frame(std::uint32_t i) const noexcept { return data_ + std::size_t{i} * height_ * width_ * 3; }
    std::uint32_t frames() const noexcept { return frames_; }
    std::uint32_t height() const noexcept { return height_; }
    std::uint32_t width() const noexcept { return width_; }
    /// Frames per second; 0 for a preview.
    double fps() const noexcept { return fps_; }

    /// The metadata (seed, model, device, timings per stage, peak memory, attempts, cache hit) as JSON.
    std::string metadata_json() const {
        char *json = nullptr;
        detail::check(vgen_video_metadata(video_, &json));
        return detail::take(json);
    }

    /// Copies frame `i` into `dst` in `format` (`VGEN_PIXELS_RGB8`, `VGEN_PIXELS_RGBA8` or `VGEN_PIXELS_BGRA8`),
    /// rows `dst_stride` bytes apart: straight into a texture's or a staging buffer's memory.
    void copy_frame(std::size_t i, vgen_pixel_format format, std::uint8_t *dst, std::size_t dst_stride) const {
        detail::check(vgen_video_copy_frame(video_, i, format, dst, dst_stride));
    }

    /// Which frame of the whole video is this one's frame 0 (not 0 only for `Job::frames()` of a job that keeps
    /// no frames).
    std::uint32_t first_frame() const {
        std::uint32_t first = 0;
        detail::check(vgen_video_first_frame(video_, &first));
        return first;
    }

    /// Writes the video to `path` in the format its extension asks for (`.mp4`, `.gif`, `.png`, or a folder
    /// ending in `/`). The file appears complete or not at all.
    void save(const std::string &path) const { detail::check(vgen_video_save(video_, path.c_str())); }

    /// The C handle, still owned by this object; NULL when empty.
    const vgen_video *get() const noexcept { return video_; }
    /// Gives up ownership: the caller frees the handle with `vgen_video_free`. The object becomes empty.
    vgen_video *release() noexcept {
        Video empty;
        swap(empty);
        return std::exchange(empty.video_, nullptr);
    }
    explicit operator bool() const noexcept { return video_ != nullptr; }

    void swap(Video &other) noexcept {
        std::swap(video_, other.video_);
        std::swap(data_, other.data_);
        std::swap(frames_, other.frames_);
        std::swap(height_, other.height_);
        std::swap(width_, other.width_);
        std::swap(fps_, other.fps_);
    }

private:
    vgen_video *video_ = nullptr;
    const std::uint8_t *data_ = nullptr;
    std::uint32_t frames_ = 0, height_ = 0, width_ = 0;
    double fps_ = 0;
};

/// A preview frame set and the denoising step it shows.
struct Preview {
    Video video;
    std::uint32_t step;
};

/**
 * \brief A submitted job: its id and the engine that runs it.
 *
 * Owns nothing, so it copies freely; it must not be used after its `Engine` is destroyed. The engine keeps the
 * job's record for its configured retention. Thread safety: any thread, any number at once.
 */
class Job {
public:
    /// The job `id` of `engine`, as returned by `vgen_engine_submit`.
    Job(const vgen_engine *engine, std::uint64_t id) noexcept : engine_(engine), id_(id) {}

    std::uint64_t id() const noexcept { return id_; }

    /// The job's status at once. Never blocks and never allocates, so a game loop may call it every frame.
    JobStatus poll() const {
        JobStatus status = VGEN_JOB_STATUS_INIT;
        detail::check(vgen_job_poll(engine_, id_, &status));
        return status;
    }

    /// Waits up to `timeout` for the job to end: its final status, or nothing if it is still going (it goes on).
    std::optional<JobStatus> wait_for(std::chrono::milliseconds timeout) const {
        JobStatus status = VGEN_JOB_STATUS_INIT;
        const vgen_status s = vgen_job_wait(engine_, id_, timeout.count() < 0 ? 0 : timeout.count(), &status);
        if (s == VGEN_STATUS_TIMEOUT) return std::nullopt;
        detail::check(s);
        return status;
    }

    /// Waits for the job to end, however long it takes; its final status.
    JobStatus wait() const {
        JobStatus status = VGEN_JOB_STATUS_INIT;
        detail::check(vgen_job_wait(engine_, id_, -1, &status));
        return status;
    }

    /// Cancels the job: a queued one at once, a running one at its next step. False if it had already ended,
    /// which is harmless.
    bool cancel() const {
        bool cancelled = false;
        detail::check(vgen_job_cancel(engine_, id_, &cancelled));
        return cancelled;
    }

    /// The video of a succeeded job. Throws the job's error if it failed or was cancelled, and
    /// `VGEN_STATUS_NOT_READY` while it is still going.
    Video result() const {
        vgen_video *video = nullptr;
        detail::check(vgen_job_result(engine_, id_, &video));
        return Video(video);
    }

    /// Waits for the job to end, then returns its video (`wait()`, then `result()`).
    Video wait_result() const {
        wait();
        return result();
    }

    /// The latest preview, or nothing before the first (see `preview_every` in the request).
    std::optional<Preview> preview() const {
        vgen_video *video = nullptr;
        std::uint32_t step = 0;
        const vgen_status s = vgen_job_preview(engine_, id_, &video, &step);
        if (s == VGEN_STATUS_NOT_READY) return std::nullopt;
        detail::check(s);
        return Preview{Video(video), step};
    }

    /// The frames decoded so far (see `vgen_job_frames`), or nothing before the first chunk. Call it when
    /// `poll().frames_ready` has risen, not every game frame: each call copies the frames.
    std::optional<Video> frames() const {
        vgen_video *video = nullptr;
        const vgen_status s = vgen_job_frames(engine_, id_, &video);
        if (s == VGEN_STATUS_NOT_READY) return std::nullopt;
        detail::check(s);
        return Video(video);
    }

    /// The job's events with a sequence number above `since` (0 for all), as a JSON array.
    std::string events_json(std::uint64_t since = 0) const {
        char *json = nullptr;
        detail::check(vgen_job_events(engine_, id_, since, &json));
        return detail::take(json);
    }

    /// The message of a failed or cancelled job's error; empty when it has none.
    std::string error_message() const {
        char *message = nullptr;
        detail::check(vgen_job_error_message(engine_, id_, &message));
        return detail::take(message);
    }

private:
    const vgen_engine *engine_;
    std::uint64_t id_;
};

/**
 * \brief An embedded engine. Owns a `vgen_engine *`; the destructor frees it with `vgen_engine_free`, which
 * drains or cancels the jobs within the configured timeout, delivers their last events and joins every thread.
 *
 * Thread safety: any number of threads may submit and follow jobs at once. Destroy it last, and never from a
 * callback.
 */
class Engine {
public:
    /// A callback for a job's events: the job id and the event as JSON (valid only during the call). It runs on
    /// the engine's dispatcher thread; the terminal event (`"type":"finished"`) comes exactly once, last. An
    /// exception it throws is caught and dropped, since it cannot cross the C ABI.
    using Callback = std::function<void(std::uint64_t job, std::string_view event_json)>;

    /// An engine with the default configuration (every GPU, else the CPU).
    Engine() { detail::check(vgen_engine_new(nullptr, &engine_)); }

    /// An engine from a JSON configuration (the fields of `EngineConfig`; unknown fields are an error).
    explicit Engine(const std::string &config_json) { detail::check(vgen_engine_new(config_json.c_str(), &engine_)); }

    /// Takes ownership of a C engine (NULL makes an empty one).
    explicit Engine(vgen_engine *engine) noexcept : engine_(engine) {}

    Engine(Engine &&other) noexcept : engine_(std::exchange(other.engine_, nullptr)) {}
    Engine &operator=(Engine &&other) noexcept {
        if (this != &other) {
            vgen_engine_free(engine_);
            engine_ = std::exchange(other.engine_, nullptr);
        }
        return *this;
    }
    Engine(const Engine &) = delete;
    Engine &operator=(const Engine &) = delete;
    ~Engine() { vgen_engine_free(engine_); }

    /// Validates and queues a request given as JSON; returns at once. Throws `Error` with what to change when
    /// the request is invalid (nothing is queued then).
    Job submit(const std::string &request_json) const {
        std::uint64_t id = 0;
        detail::check(vgen_engine_submit(engine_, request_json.c_str(), nullptr, &id));
        return Job(engine_, id);
    }

    /// As `submit`, with a callback for every event of this job. vgen owns the callback from here on and
    /// destroys it exactly once (on the dispatcher thread after the terminal event, or before this returns if
    /// the submit fails), so whatever it captures lives exactly as long as vgen needs it.
    Job submit(const std::string &request_json, Callback callback) const {
        auto *owned = new Callback(std::move(callback));
        const vgen_callback c = {&Engine::deliver, owned, &Engine::destroy};
        std::uint64_t id = 0;
        // On failure vgen has already run the finalizer, which deleted `owned`.
        detail::check(vgen_engine_submit(engine_, request_json.c_str(), &c, &id));
        return Job(engine_, id);
    }

    /// As `submit`, with the first frame (and the last, for a first–last frame model) as raw pixels, e.g. a
    /// render target read back: see `vgen_image`. Either may be nullptr; vgen copies the pixels before this returns.
    Job submit(const std::string &request_json, const vgen_image *image, const vgen_image *last_image = nullptr) const {
        std::uint64_t id = 0;
        detail::check(vgen_engine_submit_images(engine_, request_json.c_str(), image, last_image, nullptr, &id));
        return Job(engine_, id);
    }

    /// Registers a callback for every event of every job (see `vgen_engine_on_event`); vgen destroys it when
    /// the engine is freed.
    void on_event(Callback callback) const {
        auto *owned = new Callback(std::move(callback));
        const vgen_callback c = {&Engine::deliver, owned, &Engine::destroy};
        // On failure vgen has already run the finalizer, which deleted `owned`.
        detail::check(vgen_engine_on_event(engine_, &c));
    }

    /// Starts shutting down and returns at once (see `vgen_engine_shutdown`); true once the shutdown has
    /// finished, when destroying the engine no longer blocks. `timeout` < 0: the configured drain timeout.
    bool shutdown(std::chrono::milliseconds timeout = std::chrono::milliseconds(-1)) const {
        const vgen_status s = vgen_engine_shutdown(engine_, timeout.count() < 0 ? -1 : timeout.count());
        if (s == VGEN_STATUS_NOT_READY) return false;
        detail::check(s);
        return true;
    }

    /// The job `id` of this engine (from the C API, or `Job::id()`).
    Job job(std::uint64_t id) const noexcept { return Job(engine_, id); }

    /// The engine's metrics as a JSON object.
    std::string metrics_json() const { return metrics(0); }

    /// The engine's metrics in Prometheus' text format.
    std::string metrics_prometheus() const { return metrics(1); }

    /// The devices jobs run on and each one's circuit breaker, as JSON (see `vgen_engine_devices`).
    std::string devices_json() const {
        char *text = nullptr;
        detail::check(vgen_engine_devices(engine_, &text));
        return detail::take(text);
    }

    /// The models the engine can run, each with its folder and defaults, as JSON (see `vgen_engine_models`).
    std::string models_json() const {
        char *text = nullptr;
        detail::check(vgen_engine_models(engine_, &text));
        return detail::take(text);
    }

    /// The C handle, still owned by this object; NULL when empty.
    vgen_engine *get() const noexcept { return engine_; }
    /// Gives up ownership: the caller frees the handle with `vgen_engine_free`. The object becomes empty.
    vgen_engine *release() noexcept { return std::exchange(engine_, nullptr); }
    explicit operator bool() const noexcept { return engine_ != nullptr; }

private:
    std::string metrics(std::uint32_t format) const {
        char *text = nullptr;
        detail::check(vgen_engine_metrics(engine_, format, &text));
        return detail::take(text);
    }

    static void deliver(void *userdata, std::uint64_t job, const char *event_json) noexcept {
        try {
            const Callback &callback = *static_cast<Callback *>(userdata);
            if (callback) callback(job, event_json);
        } catch (...) {
            // An exception must not unwind into vgen's dispatcher thread (through C frames); it is dropped.
        }
    }

    static void destroy(void *userdata) noexcept { delete static_cast<Callback *>(userdata); }

    vgen_engine *engine_ = nullptr;
};

}  // namespace vgen

#endif  // VGEN_HPP
