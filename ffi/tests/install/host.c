/* A C host of an installed vgen, built from outside the source tree by ffi/tests/install/run.sh: it lists the
 * engine's models, then generates a clip with the default model and prints what ran. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "vgen.h"

int main(int argc, char **argv) {
    const char *out = argc > 1 ? argv[1] : "host.mp4";
    vgen_engine *engine = NULL;
    if (vgen_engine_new("{\"devices\": [\"cpu\"]}", &engine) != VGEN_STATUS_OK) {
        fprintf(stderr, "engine: %s\n", vgen_last_error());
        return 1;
    }
    char *models = NULL;
    if (vgen_engine_models(engine, &models) != VGEN_STATUS_OK) {
        fprintf(stderr, "models: %s\n", vgen_last_error());
        vgen_engine_free(engine);
        return 1;
    }
    printf("models: %s\n", models);
    vgen_string_free(models);
    uint64_t job = 0;
    vgen_job_status st = VGEN_JOB_STATUS_INIT;
    vgen_video *video = NULL;
    char *metadata = NULL;
    int rc = 1;
    if (vgen_engine_submit(engine, "{\"prompt\": \"a red circle moving right\", \"seed\": 1}", NULL, &job) ==
            VGEN_STATUS_OK &&
        vgen_job_wait(engine, job, -1, &st) == VGEN_STATUS_OK && st.state == VGEN_JOB_SUCCEEDED &&
        vgen_job_result(engine, job, &video) == VGEN_STATUS_OK && vgen_video_save(video, out) == VGEN_STATUS_OK &&
        vgen_video_metadata(video, &metadata) == VGEN_STATUS_OK) {
        printf("metadata: %s\n", metadata);
        printf("wrote %s\n", out);
        rc = 0;
    } else {
        fprintf(stderr, "failed: %s\n", vgen_last_error());
    }
    vgen_string_free(metadata);
    vgen_video_free(video);
    vgen_engine_free(engine);
    return rc;
}
