/* Misuse of the C ABI, which must give a status and a message, never a crash:
 * - NULL for every pointer parameter of every function, with outputs left untouched;
 * - malformed JSON, unknown fields, wrong types and bad values in the configuration and the request;
 * - unknown and stale (evicted) job ids;
 * - freeing an engine while jobs are queued and running: it returns promptly, every job ends once and every
 *   callback's finalizer runs exactly once, before the free returns;
 * - cancelling a job from another thread while that job's callback is running, and from inside the callback.
 * Run by `make test-c`, and under AddressSanitizer and valgrind by `make test-c-asan` and `make test-c-valgrind`. */
#include <pthread.h>
#include <stdbool.h>

#include "check.h"

static const char *CPU = "{\"devices\": [\"cpu\"]}";

static vgen_engine *new_engine(const char *config) {
    vgen_engine *e = NULL;
    EXPECT_OK(vgen_engine_new(config, &e));
    CHECK(e != NULL, "engine");
    return e;
}

static vgen_job_status wait_for(const vgen_engine *e, uint64_t job) {
    vgen_job_status st = VGEN_JOB_STATUS_INIT;
    EXPECT_OK(vgen_job_wait(e, job, 60000, &st));
    CHECK(is_terminal(st.state), "job %llu ended", (unsigned long long)job);
    return st;
}

static void check_tally(const struct tally *t, vgen_job_state state, const char *what) {
    CHECK(atomic_load(&t->finished) == 1, "%s: terminal event delivered %d times", what, atomic_load(&t->finished));
    CHECK(atomic_load(&t->finalized) == 1, "%s: finalizer ran %d times", what, atomic_load(&t->finalized));
    CHECK(atomic_load(&t->final_state) == 1 + (int)state, "%s: ended %d, expected %d", what,
          atomic_load(&t->final_state) - 1, (int)state);
}

/* --- NULL everywhere -------------------------------------------------------------------------------------- */

static void null_everywhere(void) {
    vgen_engine *e = new_engine(CPU);
    /* A finished job with a preview and a video, so that only the NULL argument is wrong in each call. The test card,
     * whatever the default model is where this runs: its preview is the whole video at most 32 pixels wide. */
    uint64_t job = 0;
    EXPECT_OK(vgen_engine_submit(e, "{\"prompt\": \"a blue square\", \"model\": \"testcard\", \"width\": 32, \"height\": 32, "
                                    "\"num_frames\": 5, \"steps\": 2, \"preview_every\": 1, \"seed\": 3}", NULL, &job));
    CHECK(wait_for(e, job).state == VGEN_JOB_SUCCEEDED, "job succeeded");
    vgen_video *video = NULL;
    EXPECT_OK(vgen_job_result(e, job, &video));

    /* Sentinels: a failing call must not write its outputs. */
    vgen_video *video_out = (vgen_video *)&job;
    char *string_out = (char *)&job;
    const uint8_t *data_out = (const uint8_t *)&job;
    uint64_t job_out = 4242;
    uint32_t n = 7, h = 7, w = 7, step = 7;
    double fps = 7.0;
    bool flag = true;
    vgen_job_status st = VGEN_JOB_STATUS_INIT;
    memset(&st, 0xab, sizeof st);
    const vgen_job_status st_before = st;

    EXPECT(vgen_engine_new(CPU, NULL), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_engine_new(NULL, NULL), VGEN_STATUS_NULL_PARAMETER);
    vgen_engine_free(NULL);

    struct tally t[3];
    memset(t, 0, sizeof t);
    vgen_callback cb = tally_callback(&t[0]);
    EXPECT(vgen_engine_submit(NULL, "{\"prompt\": \"x\"}", &cb, &job_out), VGEN_STATUS_NULL_PARAMETER);
    cb = tally_callback(&t[1]);
    EXPECT(vgen_engine_submit(e, NULL, &cb, &job_out), VGEN_STATUS_NULL_PARAMETER);
    cb = tally_callback(&t[2]);
    EXPECT(vgen_engine_submit(e, "{\"prompt\": \"x\"}", &cb, NULL), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_engine_submit(e, "{\"prompt\": \"x\"}", NULL, NULL), VGEN_STATUS_NULL_PARAMETER);
    CHECK(job_out == 4242, "job_out written on failure");
    for (int i = 0; i < 3; i++) {
        /* Released before submit returned, on this thread, and never called. */
        CHECK(atomic_load(&t[i].finalized) == 1 && atomic_load(&t[i].events) == 0, "failed submit %d released", i);
    }

    EXPECT(vgen_job_poll(NULL, job, &st), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_job_poll(e, job, NULL), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_job_wait(NULL, job, 0, &st), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_job_wait(e, job, 0, NULL), VGEN_STATUS_NULL_PARAMETER);
    CHECK(memcmp(&st, &st_before, sizeof st) == 0, "status written on failure");
    EXPECT(vgen_job_cancel(NULL, job, &flag), VGEN_STATUS_NULL_PARAMETER);
    CHECK(flag, "cancelled_out written on failure");
    EXPECT_OK(vgen_job_cancel(e, job, NULL)); /* documented as optional */
    EXPECT(vgen_job_release(NULL, job), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_engine_devices(NULL, &string_out), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_engine_devices(e, NULL), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_engine_models(NULL, &string_out), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_engine_models(e, NULL), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_job_events(NULL, job, 0, &string_out), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_job_events(e, job, 0, NULL), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_job_error_message(NULL, job, &string_out), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_job_error_message(e, job, NULL), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_engine_metrics(NULL, 0, &string_out), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_engine_metrics(e, 0, NULL), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_engine_metrics(e, 2, &string_out), VGEN_STATUS_INVALID_ARGUMENT);
    CHECK(string_out == (char *)&job, "string written on failure");
    EXPECT(vgen_job_result(NULL, job, &video_out), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_job_result(e, job, NULL), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_job_preview(NULL, job, &video_out, &step), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_job_preview(e, job, NULL, &step), VGEN_STATUS_NULL_PARAMETER);
    CHECK(video_out == (vgen_video *)&job && step == 7, "video written on failure");

    EXPECT(vgen_video_frames(NULL, &data_out, &n, &h, &w, &fps), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_video_frames(video, NULL, &n, &h, &w, &fps), VGEN_STATUS_NULL_PARAMETER);
    CHECK(data_out == (const uint8_t *)&job && n == 7 && h == 7 && w == 7 && fps == 7.0, "frames written on failure");
    EXPECT_OK(vgen_video_frames(video, &data_out, NULL, NULL, NULL, NULL)); /* sizes are optional */
    EXPECT(vgen_video_metadata(NULL, &string_out), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_video_metadata(video, NULL), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_video_save(NULL, "x.gif"), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_video_save(video, NULL), VGEN_STATUS_NULL_PARAMETER);
    EXPECT(vgen_video_save(video, "/tmp/\xff\xfe.gif"), VGEN_STATUS_INVALID_UTF8);
    vgen_video_free(NULL);
    vgen_string_free(NULL);

    /* The optional outputs really are optional on success. */
    vgen_video *preview = NULL;
    EXPECT_OK(vgen_job_preview(e, job, &preview, NULL));
    EXPECT_OK(vgen_video_frames(preview, &data_out, &n, &h, &w, NULL));
    /* A projection of the latents: the frames of the video, at most its size. */
    CHECK(n == 5 && h > 0 && h <= 32 && w > 0 && w <= 32, "preview geometry %u %u %u", n, h, w);
    vgen_video_free(preview);

    /* Statuses are plain numbers to these two: anything is safe. */
    CHECK(strcmp(vgen_status_name(999), "unknown") == 0, "unknown status name");
    CHECK(strcmp(vgen_status_name(UINT32_MAX), "unknown") == 0, "unknown status name");
    CHECK(!vgen_status_is_retryable(999), "unknown status not retryable");
    CHECK(strcmp(vgen_status_name(VGEN_STATUS_NULL_PARAMETER), "null_parameter") == 0, "null_parameter name");

    vgen_video_free(video);
    vgen_engine_free(e);
}

/* --- bad JSON ------------------------------------------------------------------------------------------- */

static void expect_bad_config(const char *config, vgen_status expected, const char *mentions) {
    vgen_engine *e = (vgen_engine *)&expected;
    EXPECT(vgen_engine_new(config, &e), expected);
    CHECK(e == (vgen_engine *)&expected, "engine written on failure for %s", config);
    CHECK(mentions == NULL || strstr(vgen_last_error(), mentions) != NULL, "message for %s names %s", config, mentions);
}

static void expect_bad_request(const vgen_engine *e, const char *request, vgen_status expected, const char *mentions) {
    uint64_t job = 4242;
    struct tally t;
    memset(&t, 0, sizeof t);
    vgen_callback cb = tally_callback(&t);
    EXPECT(vgen_engine_submit(e, request, &cb, &job), expected);
    CHECK(job == 4242, "job written on failure for %s", request);
    CHECK(mentions == NULL || strstr(vgen_last_error(), mentions) != NULL, "message for %s names %s", request, mentions);
    CHECK(atomic_load(&t.finalized) == 1 && atomic_load(&t.events) == 0, "callback released for %s", request);
}

static void bad_json(void) {
    expect_bad_config("{\"devices\": [\"cpu\"], \"bogus\": 1}", VGEN_STATUS_INVALID_ARGUMENT, "bogus");
    expect_bad_config("{\"workers_per_device\": \"two\"}", VGEN_STATUS_INVALID_ARGUMENT, "invalid type");
    expect_bad_config("{\"workers_per_device\": 0, \"devices\": [\"cpu\"]}", VGEN_STATUS_INVALID_ARGUMENT, "workers_per_device");
    expect_bad_config("{\"retry\": {\"max_attempts\": 2, \"tries\": 1}}", VGEN_STATUS_INVALID_ARGUMENT, "tries");
    expect_bad_config("{\"devices\": [\"tpu:0\"]}", VGEN_STATUS_INVALID_ARGUMENT, NULL);
    expect_bad_config("{\"devices\": [\"cpu\"]", VGEN_STATUS_INVALID_ARGUMENT, NULL);
    expect_bad_config("", VGEN_STATUS_INVALID_ARGUMENT, NULL);
    expect_bad_config("[1, 2]", VGEN_STATUS_INVALID_ARGUMENT, NULL);
    expect_bad_config("{\"devices\": [\"\xc3\x28\"]}", VGEN_STATUS_INVALID_UTF8, "UTF-8");

    vgen_engine *e = new_engine(CPU);
    expect_bad_request(e, "{\"prompt\": \"x\", \"colour\": \"red\"}", VGEN_STATUS_INVALID_ARGUMENT, "colour");
    expect_bad_request(e, "{\"prompt\": \"x\", \"steps\": \"many\"}", VGEN_STATUS_INVALID_ARGUMENT, "invalid type");
    expect_bad_request(e, "{\"prompt\": 5}", VGEN_STATUS_INVALID_ARGUMENT, NULL);
    expect_bad_request(e, "{\"prompt\": \"x\"", VGEN_STATUS_INVALID_ARGUMENT, NULL);
    expect_bad_request(e, "", VGEN_STATUS_INVALID_ARGUMENT, NULL);
    expect_bad_request(e, "null", VGEN_STATUS_INVALID_ARGUMENT, NULL);
    expect_bad_request(e, "{\"prompt\": \"\"}", VGEN_STATUS_INVALID_ARGUMENT, "prompt");
    expect_bad_request(e, "{\"prompt\": \"x\", \"width\": 100}", VGEN_STATUS_INVALID_ARGUMENT, "96 or 112");
    expect_bad_request(e, "{\"prompt\": \"x\", \"steps\": 100000}", VGEN_STATUS_INVALID_ARGUMENT, "steps");
    expect_bad_request(e, "{\"prompt\": \"x\", \"steps\": -1}", VGEN_STATUS_INVALID_ARGUMENT, NULL);
    expect_bad_request(e, "{\"prompt\": \"x\", \"model\": \"no-such-model\"}", VGEN_STATUS_NOT_FOUND, "no-such-model");
    expect_bad_request(e, "{\"prompt\": \"\xff\"}", VGEN_STATUS_INVALID_UTF8, "UTF-8");
    /* Nothing was queued by any of them. */
    char *metrics = NULL;
    EXPECT_OK(vgen_engine_metrics(e, 1, &metrics));
    CHECK(strstr(metrics, "vgen_jobs_submitted_total 0") != NULL, "nothing submitted:\n%s", metrics);
    vgen_string_free(metrics);
    vgen_engine_free(e);
}

/* --- unknown and stale job ids ---------------------------------------------------------------------------- */

static void expect_not_found(const vgen_engine *e, uint64_t job) {
    vgen_job_status st = VGEN_JOB_STATUS_INIT;
    bool flag = true;
    char *s = NULL;
    vgen_video *v = NULL;
    EXPECT(vgen_job_poll(e, job, &st), VGEN_STATUS_NOT_FOUND);
    EXPECT(vgen_job_wait(e, job, 0, &st), VGEN_STATUS_NOT_FOUND);
    EXPECT(vgen_job_wait(e, job, -1, &st), VGEN_STATUS_NOT_FOUND);
    EXPECT(vgen_job_cancel(e, job, &flag), VGEN_STATUS_NOT_FOUND);
    EXPECT(vgen_job_events(e, job, 0, &s), VGEN_STATUS_NOT_FOUND);
    EXPECT(vgen_job_error_message(e, job, &s), VGEN_STATUS_NOT_FOUND);
    EXPECT(vgen_job_result(e, job, &v), VGEN_STATUS_NOT_FOUND);
    EXPECT(vgen_job_preview(e, job, &v, NULL), VGEN_STATUS_NOT_FOUND);
    EXPECT(vgen_job_release(e, job), VGEN_STATUS_NOT_FOUND);
    CHECK(flag && s == NULL && v == NULL, "outputs written for an unknown job");
}

/* Releasing: refused while the job runs, then the id is forgotten at once; a video taken before stays valid. */
static void release_a_job(void) {
    vgen_engine *e = new_engine("{\"devices\": [\"cpu\"]}");
    uint64_t job = 0;
    EXPECT_OK(vgen_engine_submit(e, "{\"prompt\": \"!slow=20 slow\", \"model\": \"faulty\", \"steps\": 4, "
                                    "\"width\": 16, \"height\": 16, \"num_frames\": 1}", NULL, &job));
    EXPECT(vgen_job_release(e, job), VGEN_STATUS_INVALID_ARGUMENT);
    vgen_job_status st = VGEN_JOB_STATUS_INIT;
    EXPECT_OK(vgen_job_wait(e, job, -1, &st));
    CHECK(st.state == VGEN_JOB_SUCCEEDED, "the slow job succeeds");
    vgen_video *v = NULL;
    EXPECT_OK(vgen_job_result(e, job, &v));
    EXPECT_OK(vgen_job_release(e, job));
    expect_not_found(e, job);
    const uint8_t *data = NULL;
    uint32_t frames = 0;
    EXPECT_OK(vgen_video_frames(v, &data, &frames, NULL, NULL, NULL));
    CHECK(frames == 1 && data != NULL, "the video outlives its job");
    volatile uint8_t first = data[0]; /* a read ASan and valgrind would flag if the pixels had gone with the job */
    (void)first;
    vgen_video_free(v);
    vgen_engine_free(e);
}

static void unknown_and_stale_ids(void) {
    /* Finished jobs are forgotten at once (at the supervisor's next tick). */
    vgen_engine *e = new_engine("{\"devices\": [\"cpu\"], \"retention\": {\"max_jobs\": 0, \"ttl_ms\": 0}}");
    expect_not_found(e, 0);
    expect_not_found(e, 1);
    expect_not_found(e, UINT64_MAX);
    struct tally t;
    memset(&t, 0, sizeof t);
    vgen_callback cb = tally_callback(&t);
    uint64_t job = 0;
    EXPECT_OK(vgen_engine_submit(e, "{\"prompt\": \"x\", \"model\": \"noop\"}", &cb, &job));
    expect_not_found(e, job + 1);
    vgen_job_status st = VGEN_JOB_STATUS_INIT;
    vgen_status s;
    double until = now_ms() + 10000;
    while ((s = vgen_job_poll(e, job, &st)) == VGEN_STATUS_OK && now_ms() < until) sleep_ms(5);
    CHECK(s == VGEN_STATUS_NOT_FOUND, "job %llu was not evicted: %s", (unsigned long long)job, vgen_status_name(s));
    expect_not_found(e, job);
    vgen_engine_free(e);
    check_tally(&t, VGEN_JOB_SUCCEEDED, "evicted job");
}

/* --- freeing an engine with jobs in it -------------------------------------------------------------------- */

/* A callback that takes its time, so that events are still waiting for it when the engine is freed. */
static void slow_tally_event(void *userdata, uint64_t job, const char *event_json) {
    sleep_ms(20);
    tally_event(userdata, job, event_json);
}

static void free_with_jobs_running(void) {
    /* Cancelled: the drain timeout is short and the jobs are long (200 steps of 20 ms). */
    vgen_engine *e = new_engine("{\"devices\": [\"cpu\"], \"workers_per_device\": 1, \"shutdown_timeout_ms\": 100}");
    enum { JOBS = 6 };
    struct tally t[JOBS];
    memset(t, 0, sizeof t);
    uint64_t jobs[JOBS];
    for (int i = 0; i < JOBS; i++) {
        char request[160];
        snprintf(request, sizeof request, "{\"prompt\": \"!slow=20 job %d\", \"model\": \"faulty\", \"steps\": 200, \"seed\": %d}", i, i);
        vgen_callback cb = tally_callback(&t[i]);
        if (i % 2) cb.callback = slow_tally_event;
        EXPECT_OK(vgen_engine_submit(e, request, &cb, &jobs[i]));
    }
    vgen_job_status st = VGEN_JOB_STATUS_INIT;
    double until = now_ms() + 30000;
    do {
        EXPECT_OK(vgen_job_poll(e, jobs[0], &st));
        sleep_ms(1);
    } while (st.state != VGEN_JOB_RUNNING && now_ms() < until);
    CHECK(st.state == VGEN_JOB_RUNNING, "the first job runs");
    double start = now_ms();
    vgen_engine_free(e);
    double took = now_ms() - start;
    /* The drain timeout, one 20 ms step and the slow callbacks' last events: far less than one job's 4 s. */
    CHECK(took < 3000, "vgen_engine_free took %.0f ms", took);
    for (int i = 0; i < JOBS; i++) check_tally(&t[i], VGEN_JOB_CANCELLED, "job of a freed engine");

    /* Drained: short jobs finish within the default timeout. */
    e = new_engine("{\"devices\": [\"cpu\"], \"workers_per_device\": 1}");
    struct tally d[2];
    memset(d, 0, sizeof d);
    for (int i = 0; i < 2; i++) {
        char request[160];
        snprintf(request, sizeof request, "{\"prompt\": \"!slow=5 drained %d\", \"model\": \"faulty\", \"steps\": 10}", i);
        vgen_callback cb = tally_callback(&d[i]);
        uint64_t job;
        EXPECT_OK(vgen_engine_submit(e, request, &cb, &job));
    }
    vgen_engine_free(e);
    for (int i = 0; i < 2; i++) check_tally(&d[i], VGEN_JOB_SUCCEEDED, "drained job");
}

/* --- cancelling while a callback runs --------------------------------------------------------------------- */

struct blocked {
    const vgen_engine *engine;
    uint64_t job;
    atomic_int entered;   /* the callback is running and waiting */
    atomic_int go_on;     /* the other thread has cancelled: the callback may return */
    atomic_int events, finished, finalized;
    vgen_status cancel_status, wait_status;
    bool cancelled;
    vgen_job_status after;
};

static void blocked_event(void *userdata, uint64_t job, const char *event_json) {
    struct blocked *b = userdata;
    (void)job;
    atomic_fetch_add(&b->events, 1);
    if (strstr(event_json, "\"type\":\"finished\"")) {
        CHECK_IN_CALLBACK(state_named(event_json) == VGEN_JOB_CANCELLED);
        atomic_fetch_add(&b->finished, 1);
    }
    if (atomic_exchange(&b->entered, 1) == 0) {
        double until = now_ms() + 20000;
        while (!atomic_load(&b->go_on) && now_ms() < until) sleep_ms(1);
        CHECK_IN_CALLBACK(atomic_load(&b->go_on));
    }
}

static void blocked_release(void *userdata) {
    struct blocked *b = userdata;
    atomic_fetch_add(&b->finalized, 1);
}

static void *canceller(void *arg) {
    struct blocked *b = arg;
    double until = now_ms() + 20000;
    while (!atomic_load(&b->entered) && now_ms() < until) sleep_ms(1);
    b->cancel_status = vgen_job_cancel(b->engine, b->job, &b->cancelled);
    /* The job ends although its callback is still blocked: waiting does not depend on callbacks. */
    b->wait_status = vgen_job_wait(b->engine, b->job, 20000, &b->after);
    atomic_store(&b->go_on, 1);
    return NULL;
}

/* Cancels its own job from inside its callback, on the dispatcher thread, and reads it there too. */
struct self_cancel {
    const vgen_engine *engine;
    atomic_int cancels, finished, finalized;
};

static void self_cancel_event(void *userdata, uint64_t job, const char *event_json) {
    struct self_cancel *c = userdata;
    vgen_job_status st = VGEN_JOB_STATUS_INIT;
    CHECK_IN_CALLBACK(vgen_job_poll(c->engine, job, &st) == VGEN_STATUS_OK);
    char *events = NULL;
    CHECK_IN_CALLBACK(vgen_job_events(c->engine, job, 0, &events) == VGEN_STATUS_OK && events != NULL);
    vgen_string_free(events);
    if (strstr(event_json, "\"type\":\"progress\"") && atomic_fetch_add(&c->cancels, 1) == 0) {
        bool cancelled = false;
        CHECK_IN_CALLBACK(vgen_job_cancel(c->engine, job, &cancelled) == VGEN_STATUS_OK && cancelled);
    }
    if (strstr(event_json, "\"type\":\"finished\"")) {
        CHECK_IN_CALLBACK(is_terminal(st.state)); /* the state changed before the terminal event was sent */
        CHECK_IN_CALLBACK(state_named(event_json) == VGEN_JOB_CANCELLED);
        atomic_fetch_add(&c->finished, 1);
    }
}

static void self_cancel_release(void *userdata) {
    struct self_cancel *c = userdata;
    atomic_fetch_add(&c->finalized, 1);
}

static void cancel_during_callback(void) {
    vgen_engine *e = new_engine(CPU);
    struct blocked b;
    memset(&b, 0, sizeof b);
    b.engine = e;
    b.after.size = sizeof b.after;
    vgen_callback cb = {blocked_event, &b, blocked_release};
    EXPECT_OK(vgen_engine_submit(e, "{\"prompt\": \"!slow=10 blocked\", \"model\": \"faulty\", \"steps\": 200}", &cb, &b.job));
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, canceller, &b) == 0, "pthread_create");
    CHECK(pthread_join(thread, NULL) == 0, "pthread_join");
    CHECK(b.cancel_status == VGEN_STATUS_OK && b.cancelled, "cancel during the callback: %s", vgen_status_name(b.cancel_status));
    CHECK(b.wait_status == VGEN_STATUS_OK && b.after.state == VGEN_JOB_CANCELLED, "wait during the callback: %s",
          vgen_status_name(b.wait_status));

    struct self_cancel c;
    memset(&c, 0, sizeof c);
    c.engine = e;
    vgen_callback self = {self_cancel_event, &c, self_cancel_release};
    uint64_t job = 0;
    EXPECT_OK(vgen_engine_submit(e, "{\"prompt\": \"!slow=10 itself\", \"model\": \"faulty\", \"steps\": 200}", &self, &job));
    CHECK(wait_for(e, job).state == VGEN_JOB_CANCELLED, "cancelled from its callback");

    vgen_engine_free(e);
    CHECK(atomic_load(&b.finished) == 1 && atomic_load(&b.finalized) == 1, "blocked callback: %d finished, %d finalized",
          atomic_load(&b.finished), atomic_load(&b.finalized));
    CHECK(atomic_load(&c.finished) == 1 && atomic_load(&c.finalized) == 1, "self-cancelling callback: %d finished, %d finalized",
          atomic_load(&c.finished), atomic_load(&c.finalized));
}

int main(void) {
    double start = now_ms();
    null_everywhere();
    bad_json();
    unknown_and_stale_ids();
    release_a_job();
    free_with_jobs_running();
    cancel_during_callback();
    CHECK(atomic_load(&callback_failures) == 0, "%d checks failed in callbacks", atomic_load(&callback_failures));
    printf("misuse: ok (%.0f ms)\n", now_ms() - start);
    return 0;
}
