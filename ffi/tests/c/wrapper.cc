// The C++ wrapper, vgen.hpp: errors as exceptions carrying the status, move-only owners that free their handles
// once, and std::function callbacks that vgen destroys exactly once (through the C finalizer), also when the
// submit fails or the callback throws. Run by `make test-c`, and under AddressSanitizer and valgrind, which also
// catch a callback destroyed twice or never.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "vgen.hpp"

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);   \
            std::exit(1);                                                            \
        }                                                                            \
    } while (0)

// Expects `statement` to throw vgen::Error with `expected`; returns its message.
#define EXPECT_ERROR(statement, expected)                                            \
    [&]() -> std::string {                                                           \
        try {                                                                        \
            statement;                                                               \
        } catch (const vgen::Error &e) {                                             \
            CHECK(e.status() == (expected));                                         \
            CHECK(std::strlen(e.what()) > 0);                                        \
            return e.what();                                                         \
        }                                                                            \
        CHECK(!"no vgen::Error thrown by " #statement);                              \
        return {};                                                                   \
    }()

namespace {

// What a callback's captured state saw; the state's destruction is counted to check that vgen destroys the
// std::function exactly once.
struct Seen {
    std::atomic<int> events{0};
    std::atomic<int> finished{0};
    std::atomic<int> destroyed{0};
};

struct Capture {
    Seen *seen;
    explicit Capture(Seen *s) : seen(s) {}
    Capture(const Capture &) = delete;
    ~Capture() { seen->destroyed++; }
};

vgen::Engine::Callback counting(Seen &seen, bool throws = false) {
    auto capture = std::make_shared<Capture>(&seen);
    return [capture, throws](std::uint64_t, std::string_view event) {
        capture->seen->events++;
        if (event.find("\"type\":\"finished\"") != std::string_view::npos) capture->seen->finished++;
        if (throws) throw std::runtime_error("a host bug");
    };
}

const char *const CPU = R"({"devices": ["cpu"]})";

}  // namespace

int main() {
    CHECK(vgen::version() == vgen_version());
    CHECK(vgen::libtorch_version().rfind("2.11", 0) == 0);

    // Errors carry the status, its name, whether to retry, and the message.
    std::string message = EXPECT_ERROR(vgen::Engine(R"({"devices": ["cpu"], "bogus": 1})"), VGEN_STATUS_INVALID_ARGUMENT);
    CHECK(message.find("bogus") != std::string::npos);
    try {
        vgen::Engine bad(R"({"workers_per_device": 0})");
        CHECK(!"unreachable");
    } catch (const vgen::Error &e) {
        CHECK(std::string(e.name()) == "invalid_argument" && !e.retryable());
    }

    Seen ok, failed, thrower, cancelled;
    {
        vgen::Engine first(CPU);
        vgen::Engine engine(std::move(first));  // move-only: the handle moves, the old owner is empty
        CHECK(!first && engine);

        // A failed submit destroys its callback before it throws.
        message = EXPECT_ERROR(engine.submit(R"({"prompt": "x", "width": 100})", counting(failed)), VGEN_STATUS_INVALID_ARGUMENT);
        CHECK(message.find("96 or 112") != std::string::npos);
        CHECK(failed.destroyed == 1 && failed.events == 0);
        EXPECT_ERROR(engine.submit(R"({"prompt": "x", "model": "nothing"})"), VGEN_STATUS_NOT_FOUND);
        // Raw pixels reach validation: noop animates no image, so it refuses them, naming the field.
        const unsigned char pixels[2 * 2 * 4] = {0};
        const vgen_image image = {pixels, 2, 2, 8, VGEN_PIXELS_RGBA8};
        message = EXPECT_ERROR(engine.submit(R"({"prompt": "x", "model": "noop"})", &image), VGEN_STATUS_INVALID_ARGUMENT);
        CHECK(message.find("image: noop") != std::string::npos);

        vgen::Job job = engine.submit(R"({"prompt": "a green square", "model": "testcard", "width": 32, "height": 32, "num_frames": 5,
                                          "steps": 3, "preview_every": 1, "seed": 9})",
                                      counting(ok));
        vgen::Job copy = job;  // a Job is a value
        const vgen::JobStatus st = copy.wait();
        CHECK(st.state == VGEN_JOB_SUCCEEDED && vgen::is_terminal(st.state) && st.progress == 1.0);
        vgen::Video video = job.result();
        CHECK(video.frames() == 5 && video.height() == 32 && video.width() == 32 && video.fps() > 0);
        CHECK(video.size() == 5u * 32 * 32 * 3 && video.frame(4) == video.data() + 4u * 32 * 32 * 3);
        CHECK(video.metadata_json().find("\"seed\":9") != std::string::npos);
        EXPECT_ERROR(video.save("/nonexistent-dir/x.gif"), VGEN_STATUS_IO);
        std::optional<vgen::Preview> preview = job.preview();
        CHECK(preview && preview->step == 3 && preview->video.frames() == 5);
        CHECK(job.events_json().find("\"finished\"") != std::string::npos && job.error_message().empty());
        CHECK(st.preview_seq == 3 && st.frames_ready == 5 && st.size == sizeof(vgen::JobStatus));
        std::optional<vgen::Video> so_far = job.frames();
        CHECK(so_far && so_far->frames() == 5 && so_far->first_frame() == 0);
        std::vector<std::uint8_t> texture(32 * 4 * 32);
        video.copy_frame(2, VGEN_PIXELS_BGRA8, texture.data(), 32 * 4);
        CHECK(texture[0] == video.frame(2)[2] && texture[2] == video.frame(2)[0] && texture[3] == 255);
        EXPECT_ERROR(video.copy_frame(5, VGEN_PIXELS_RGBA8, texture.data(), 32 * 4), VGEN_STATUS_INVALID_ARGUMENT);
        CHECK(vgen::abi_version() >= VGEN_ABI_VERSION);

        vgen::Video moved(std::move(video));
        CHECK(!video && moved && moved.frames() == 5 && video.data() == nullptr);
        vgen_video *raw = moved.release();  // handed back to C
        CHECK(raw != nullptr && !moved);
        vgen_video_free(raw);

        // An exception thrown by a callback does not cross into vgen; the job goes on and ends normally.
        vgen::Job throws = engine.submit(R"({"prompt": "x", "model": "noop", "seed": 2})", counting(thrower, true));
        CHECK(throws.wait().state == VGEN_JOB_SUCCEEDED);

        // Waiting with a timeout, cancelling, and the cancelled job's error as an exception.
        vgen::Job slow = engine.submit(R"({"prompt": "!slow=20 slow", "model": "faulty", "steps": 200})", counting(cancelled));
        CHECK(!slow.wait_for(std::chrono::milliseconds(30)));
        CHECK(slow.cancel());
        CHECK(slow.wait().state == VGEN_JOB_CANCELLED && !slow.cancel());
        CHECK(slow.error_message().find("cancelled") != std::string::npos);
        EXPECT_ERROR(slow.result(), VGEN_STATUS_CANCELLED);
        EXPECT_ERROR(engine.job(999999).poll(), VGEN_STATUS_NOT_FOUND);
        CHECK(engine.metrics_prometheus().find("vgen_jobs_cancelled_total 1") != std::string::npos);
        CHECK(engine.metrics_json().find("\"cancelled\":1") != std::string::npos);
        CHECK(engine.devices_json().find("\"breaker\":\"closed\"") != std::string::npos);
        CHECK(engine.models_json().find("\"name\":\"testcard\",\"default\":false,\"test_model\":true") != std::string::npos);
    }
    // The engine is gone: every callback had its terminal event once and was destroyed once.
    for (const Seen *seen : {&ok, &thrower, &cancelled}) {
        CHECK(seen->finished == 1 && seen->destroyed == 1 && seen->events >= 1);
    }
    CHECK(thrower.events >= 2);  // it threw at every event and still received the next ones
    std::printf("C++ wrapper: ok (%d events)\n", ok.events.load());
    return 0;
}
