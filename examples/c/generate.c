/* Makes a video through libvgen and checks the C ABI as a host sees it: errors with messages, polling, a
 * per-job callback whose finalizer runs exactly once, cancellation, the frames, saving, metrics. Exits non-zero
 * on the first thing that is wrong. Run by `make test`. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vgen.h"

#define CHECK(cond, ...)                                  \
    do {                                                  \
        if (!(cond)) {                                    \
            fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                 \
            fprintf(stderr, " (last error: %s)\n", vgen_last_error()); \
            exit(1);                                      \
        }                                                 \
    } while (0)

struct counts {
    int events;
    int finished;
    int finalized;
};

static void on_event(void *userdata, uint64_t job, const char *event_json) {
    struct counts *c = userdata;
    (void)job;
    c->events++;
    if (strstr(event_json, "\"type\":\"finished\"") != NULL) c->finished++;
}

static void on_release(void *userdata) {
    struct counts *c = userdata;
    c->finalized++;
}

int main(int argc, char **argv) {
    const char *out_path = argc > 1 ? argv[1] : "generate_c.mp4";
    vgen_engine *engine = NULL;
    vgen_status s;

    /* Bad configuration and bad requests are errors with a message, and write nothing. */
    s = vgen_engine_new("{\"devices\": [\"cpu\"], \"bogus\": 1}", &engine);
    CHECK(s == VGEN_STATUS_INVALID_ARGUMENT && engine == NULL, "unknown config field");
    CHECK(strstr(vgen_last_error(), "bogus") != NULL, "message names the field");
    CHECK(vgen_engine_new(NULL, NULL) == VGEN_STATUS_NULL_PARAMETER, "NULL out");

    s = vgen_engine_new("{\"devices\": [\"cpu\"], \"workers_per_device\": 1}", &engine);
    CHECK(s == VGEN_STATUS_OK && engine != NULL, "engine_new");

    uint64_t job = 0;
    s = vgen_engine_submit(engine, "{\"prompt\": \"x\", \"width\": 100}", NULL, &job);
    CHECK(s == VGEN_STATUS_INVALID_ARGUMENT && job == 0, "bad width");
    CHECK(strstr(vgen_last_error(), "96 or 112") != NULL, "says what to change");
    CHECK(!vgen_status_is_retryable(s), "invalid input is not retryable");
    CHECK(strcmp(vgen_status_name(s), "invalid_argument") == 0, "status name");
    CHECK(vgen_status_is_retryable(VGEN_STATUS_QUEUE_FULL), "a full queue is retryable");

    /* A real job with a callback. */
    struct counts counts = {0, 0, 0};
    vgen_callback cb = {on_event, &counts, on_release};
    s = vgen_engine_submit(engine, "{\"prompt\": \"a red circle moving right\", \"seed\": 5, \"preview_every\": 2}", &cb, &job);
    CHECK(s == VGEN_STATUS_OK && job != 0, "submit");

    vgen_job_status st = VGEN_JOB_STATUS_INIT;
    int polls = 0;
    do {
        s = vgen_job_poll(engine, job, &st);
        CHECK(s == VGEN_STATUS_OK, "poll");
        polls++;
    } while (st.state == VGEN_JOB_QUEUED || st.state == VGEN_JOB_RUNNING);
    CHECK(st.state == VGEN_JOB_SUCCEEDED, "succeeded, state %d", (int)st.state);
    CHECK(st.progress == 1.0 && st.step == st.steps && st.attempt == 1, "final status");

    vgen_video *video = NULL;
    CHECK(vgen_job_result(engine, job, &video) == VGEN_STATUS_OK, "result");
    const uint8_t *data = NULL;
    uint32_t frames = 0, height = 0, width = 0;
    double fps = 0;
    CHECK(vgen_video_frames(video, &data, &frames, &height, &width, &fps) == VGEN_STATUS_OK, "frames");
    CHECK(data != NULL && frames == 17 && height == 64 && width == 64 && fps == 8.0, "geometry %u %u %u", frames, height, width);
    char *meta = NULL;
    CHECK(vgen_video_metadata(video, &meta) == VGEN_STATUS_OK && strstr(meta, "\"seed\":5") != NULL, "metadata");
    vgen_string_free(meta);
    CHECK(vgen_video_save(video, out_path) == VGEN_STATUS_OK, "save");
    CHECK(vgen_video_save(video, "/nonexistent-dir/x.mp4") == VGEN_STATUS_IO, "unwritable path");
    vgen_video_free(video);
    vgen_video_free(NULL);

    char *events = NULL;
    CHECK(vgen_job_events(engine, job, 0, &events) == VGEN_STATUS_OK && strstr(events, "\"finished\"") != NULL, "events");
    vgen_string_free(events);

    /* Cancel a queued job behind a slow one. */
    uint64_t slow = 0, queued = 0;
    CHECK(vgen_engine_submit(engine, "{\"prompt\": \"slow\", \"steps\": 200, \"width\": 512, \"height\": 512, \"num_frames\": 65}", NULL, &slow) == VGEN_STATUS_OK, "submit slow");
    CHECK(vgen_engine_submit(engine, "{\"prompt\": \"queued\"}", NULL, &queued) == VGEN_STATUS_OK, "submit queued");
    bool cancelled = false;
    CHECK(vgen_job_cancel(engine, queued, &cancelled) == VGEN_STATUS_OK && cancelled, "cancel queued");
    CHECK(vgen_job_cancel(engine, slow, NULL) == VGEN_STATUS_OK, "cancel running");
    CHECK(vgen_job_wait(engine, slow, 30000, &st) == VGEN_STATUS_OK && st.state == VGEN_JOB_CANCELLED, "cancelled");
    CHECK(st.error == VGEN_STATUS_CANCELLED, "error code cancelled");
    CHECK(vgen_job_result(engine, slow, &video) == VGEN_STATUS_CANCELLED, "no result for a cancelled job");
    CHECK(vgen_job_poll(engine, 999999, &st) == VGEN_STATUS_NOT_FOUND, "unknown job");

    char *prom = NULL;
    CHECK(vgen_engine_metrics(engine, 1, &prom) == VGEN_STATUS_OK && strstr(prom, "vgen_jobs_succeeded_total 1") != NULL, "metrics");
    vgen_string_free(prom);
    char *devices = NULL;
    CHECK(vgen_engine_devices(engine, &devices) == VGEN_STATUS_OK && strstr(devices, "\"device\":\"cpu\"") != NULL &&
              strstr(devices, "\"breaker\":\"closed\"") != NULL,
          "devices: %s", devices ? devices : "(null)");
    vgen_string_free(devices);

    vgen_engine_free(engine);
    vgen_engine_free(NULL);
    /* After free every thread is joined: the callback saw the terminal event once and was released once. */
    CHECK(counts.finished == 1 && counts.finalized == 1 && counts.events > 5, "callback %d %d %d", counts.events, counts.finished, counts.finalized);
    printf("C ABI: ok (%d polls, %d events)\n", polls, counts.events);
    return 0;
}
