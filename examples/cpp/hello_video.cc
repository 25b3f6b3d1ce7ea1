// Generates a video with the default model, prints the progress, saves an MP4: hello_video.c through the C++
// wrapper, vgen.hpp. Usage: hello_video [OUT.mp4]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "vgen.hpp"

int main(int argc, char **argv) {
    const std::string out = argc > 1 ? argv[1] : "hello_video.mp4";
    try {
        vgen::Engine engine;
        vgen::Job job = engine.submit(R"({"prompt": "a red circle moving right", "seed": 1})");
        std::uint32_t last_step = 0;
        while (!job.wait_for(std::chrono::milliseconds(20))) {
            const vgen::JobStatus st = job.poll();
            if (st.step != last_step) {
                std::printf("step %u/%u  %3.0f%%  eta %lld ms\n", st.step, st.steps, st.progress * 100.0,
                            static_cast<long long>(st.eta_ms));
                last_step = st.step;
            }
        }
        job.result().save(out);  // throws the job's error if it failed or was cancelled
        std::printf("wrote %s\n", out.c_str());
        return 0;
    } catch (const vgen::Error &e) {
        std::fprintf(stderr, "failed: %s (%s)\n", e.what(), e.name());
        return 1;
    }
}
