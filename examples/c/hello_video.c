/* Generates a video with the default model, prints the progress, saves an MP4. Usage: hello_video [OUT.mp4] */
#include <stdint.h>
#include <stdio.h>

#include "vgen.h"

int main(int argc, char **argv) {
    const char *out = argc > 1 ? argv[1] : "hello_video.mp4";
    vgen_engine *engine = NULL;
    if (vgen_engine_new(NULL, &engine) != VGEN_STATUS_OK) {
        fprintf(stderr, "engine: %s\n", vgen_last_error());
        return 1;
    }
    uint64_t job = 0;
    if (vgen_engine_submit(engine, "{\"prompt\": \"a red circle moving right\", \"seed\": 1}", NULL, &job) != VGEN_STATUS_OK) {
        fprintf(stderr, "submit: %s\n", vgen_last_error());
        vgen_engine_free(engine);
        return 1;
    }
    vgen_job_status st = VGEN_JOB_STATUS_INIT;
    uint32_t last_step = 0;
    while (vgen_job_wait(engine, job, 20, &st) == VGEN_STATUS_TIMEOUT) {
        vgen_job_poll(engine, job, &st);
        if (st.step != last_step) {
            printf("step %u/%u  %3.0f%%  eta %lld ms\n", st.step, st.steps, st.progress * 100.0, (long long)st.eta_ms);
            last_step = st.step;
        }
    }
    vgen_video *video = NULL;
    int rc = 1;
    if (st.state == VGEN_JOB_SUCCEEDED && vgen_job_result(engine, job, &video) == VGEN_STATUS_OK &&
        vgen_video_save(video, out) == VGEN_STATUS_OK) {
        printf("wrote %s\n", out);
        rc = 0;
    } else {
        fprintf(stderr, "failed: %s\n", vgen_last_error());
    }
    vgen_video_free(video);
    vgen_engine_free(engine);
    return rc;
}
