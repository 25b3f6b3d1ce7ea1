/* Eight threads submit, poll and cancel on one engine at once, each with its own mix of jobs:
 * - `noop` jobs, several identical across threads (so single-flight and the result cache are shared);
 * - small `testcard` jobs, whose videos are read back;
 * - `faulty` jobs that fail for good (`!fail=invalid_argument`), fail once and are retried (`!fail=internal`),
 *   or panic once and are retried (`!panic`);
 * - slow `faulty` jobs that the submitting thread cancels part-way, some while queued, some while running.
 * Every job must reach the terminal state its kind implies, the engine's counters must agree with the count of
 * each, and every callback must see its terminal event once and be finalized exactly once. Run by `make test-c`,
 * and under AddressSanitizer and valgrind. */
#include <pthread.h>
#include <stdbool.h>

#include "check.h"

enum { THREADS = 8, JOBS_PER_THREAD = 24 };

enum kind { NOOP, SHARED_NOOP, TESTCARD, FAILS, RETRIED, PANICS, CANCELLED_EARLY, CANCELLED_LATE, KINDS };

struct job {
    enum kind kind;
    uint64_t id;
    struct tally tally;
    bool cancel_sent, cancelled;
    vgen_job_status last;
    int events_logged; /* the event log's length once the job has ended */
};

struct worker {
    const vgen_engine *engine;
    int index;
    struct job jobs[JOBS_PER_THREAD];
    int polls;
};

static void request_for(char *out, size_t size, enum kind kind, int thread, int i) {
    int seed = thread * 1000 + i;
    switch (kind) {
    case NOOP:
        snprintf(out, size, "{\"prompt\": \"noop %d\", \"model\": \"noop\", \"steps\": %d, \"seed\": %d}", seed, 1 + i % 5, seed);
        break;
    case SHARED_NOOP: /* the same request from every thread */
        snprintf(out, size, "{\"prompt\": \"shared\", \"model\": \"noop\", \"steps\": 3, \"seed\": 1}");
        break;
    case TESTCARD:
        /* The same few requests across threads: some share an execution, some are served from the cache. */
        snprintf(out, size, "{\"prompt\": \"card %d\", \"model\": \"testcard\", \"width\": 32, \"height\": 16, \"num_frames\": 5, \"steps\": 2, \"seed\": %d}",
                 i % 2, seed % 3);
        break;
    case FAILS:
        snprintf(out, size, "{\"prompt\": \"!fail=invalid_argument x\", \"model\": \"faulty\", \"steps\": 1, \"seed\": %d}", seed);
        break;
    case RETRIED:
        snprintf(out, size, "{\"prompt\": \"!fail=internal x\", \"model\": \"faulty\", \"steps\": 1, \"seed\": %d}", seed);
        break;
    case PANICS:
        snprintf(out, size, "{\"prompt\": \"!panic x\", \"model\": \"faulty\", \"steps\": 1, \"seed\": %d}", seed);
        break;
    case CANCELLED_EARLY: /* low priority: usually still queued when cancelled */
        snprintf(out, size, "{\"prompt\": \"!slow=50 early\", \"model\": \"faulty\", \"steps\": 200, \"seed\": %d, \"priority\": -5}", seed);
        break;
    case CANCELLED_LATE: /* high priority, cancelled once it has made progress */
        snprintf(out, size, "{\"prompt\": \"!slow=5 late\", \"model\": \"faulty\", \"steps\": 100, \"seed\": %d, \"priority\": 5}", seed);
        break;
    default:
        out[0] = '\0';
    }
}

static void *run(void *arg) {
    struct worker *w = arg;
    char request[256];
    for (int i = 0; i < JOBS_PER_THREAD; i++) {
        struct job *j = &w->jobs[i];
        j->kind = (enum kind)((i + w->index) % KINDS);
        j->last.size = sizeof j->last;
        /* Two panics in all: each prints Rust's panic message, and core's tests cover panics in bulk. */
        if (j->kind == PANICS && (w->index >= 2 || i >= KINDS)) j->kind = RETRIED;
        request_for(request, sizeof request, j->kind, w->index, i);
        vgen_callback cb = tally_callback(&j->tally);
        EXPECT_OK(vgen_engine_submit(w->engine, request, &cb, &j->id));
        CHECK(j->id != 0, "job id");
    }
    /* Poll everything until it has all ended, cancelling the cancellable kinds along the way. */
    double until = now_ms() + 120000;
    for (;;) {
        int live = 0;
        for (int i = 0; i < JOBS_PER_THREAD; i++) {
            struct job *j = &w->jobs[i];
            EXPECT_OK(vgen_job_poll(w->engine, j->id, &j->last));
            w->polls++;
            CHECK(j->last.progress >= 0.0 && j->last.progress <= 1.0, "progress %f", j->last.progress);
            bool cancel = !j->cancel_sent && ((j->kind == CANCELLED_EARLY) ||
                                              (j->kind == CANCELLED_LATE && (j->last.step >= 2 || is_terminal(j->last.state))));
            if (cancel) {
                EXPECT_OK(vgen_job_cancel(w->engine, j->id, &j->cancelled));
                j->cancel_sent = true;
                EXPECT_OK(vgen_job_poll(w->engine, j->id, &j->last));
            }
            if (!is_terminal(j->last.state)) live++;
        }
        if (live == 0) break;
        CHECK(now_ms() < until, "%d jobs of thread %d still running after 120 s", live, w->index);
        sleep_ms(2);
    }
    for (int i = 0; i < JOBS_PER_THREAD; i++) {
        struct job *j = &w->jobs[i];
        vgen_job_status st = VGEN_JOB_STATUS_INIT;
        EXPECT_OK(vgen_job_wait(w->engine, j->id, 0, &st));
        CHECK(st.state == j->last.state, "a terminal state never changes");
        char *events = NULL;
        EXPECT_OK(vgen_job_events(w->engine, j->id, 0, &events));
        for (const char *p = events; (p = strstr(p, "\"seq\":")) != NULL; p++) j->events_logged++;
        vgen_string_free(events);
        if (st.state == VGEN_JOB_SUCCEEDED) {
            vgen_video *video = NULL;
            EXPECT_OK(vgen_job_result(w->engine, j->id, &video));
            uint32_t frames = 0, height = 0, width = 0;
            const uint8_t *data = NULL;
            EXPECT_OK(vgen_video_frames(video, &data, &frames, &height, &width, NULL));
            if (j->kind == TESTCARD) CHECK(frames == 5 && height == 16 && width == 32, "testcard geometry");
            volatile uint8_t last = data[(size_t)frames * height * width * 3 - 1]; /* readable to the end */
            (void)last;
            vgen_video_free(video);
        }
    }
    return NULL;
}

/* The value of a metric in Prometheus text: the line that starts with its name. */
static int prometheus(const char *text, const char *name) {
    char line[128];
    snprintf(line, sizeof line, "\n%s ", name);
    const char *p = strstr(text, line);
    CHECK(p != NULL, "metric %s", name);
    int v = -1;
    CHECK(sscanf(p + strlen(line), "%d", &v) == 1, "metric %s value", name);
    return v;
}

int main(void) {
    double start = now_ms();
    vgen_engine *engine = NULL;
    EXPECT_OK(vgen_engine_new("{\"devices\": [\"cpu\"], \"workers_per_device\": 2, "
                              "\"retry\": {\"max_attempts\": 3, \"base_delay_ms\": 5, \"max_delay_ms\": 20}, "
                              /* the injected failures must not take the only device out of rotation */
                              "\"breaker\": {\"failure_threshold\": 100000}}",
                              &engine));
    static struct worker workers[THREADS];
    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++) {
        workers[t].engine = engine;
        workers[t].index = t;
        CHECK(pthread_create(&threads[t], NULL, run, &workers[t]) == 0, "pthread_create");
    }
    for (int t = 0; t < THREADS; t++) CHECK(pthread_join(threads[t], NULL) == 0, "pthread_join");

    int expected[5] = {0}, polls = 0, retried = 0;
    for (int t = 0; t < THREADS; t++) {
        polls += workers[t].polls;
        for (int i = 0; i < JOBS_PER_THREAD; i++) {
            const struct job *j = &workers[t].jobs[i];
            const vgen_job_status *st = &j->last;
            switch (j->kind) {
            case FAILS:
                CHECK(st->state == VGEN_JOB_FAILED && st->error == VGEN_STATUS_INVALID_ARGUMENT && st->attempt == 1,
                      "a permanent failure is not retried: state %d error %d attempt %u", (int)st->state, (int)st->error, st->attempt);
                break;
            case RETRIED:
            case PANICS:
                retried++;
                CHECK(st->state == VGEN_JOB_SUCCEEDED && st->attempt == 2, "retried once: state %d attempt %u", (int)st->state, st->attempt);
                break;
            case CANCELLED_EARLY:
            case CANCELLED_LATE:
                /* Cancelled if the cancel came first, which it does unless the job had already ended. */
                CHECK(j->cancelled ? st->state == VGEN_JOB_CANCELLED && st->error == VGEN_STATUS_CANCELLED
                                   : st->state == VGEN_JOB_SUCCEEDED,
                      "cancel said %d, state %d", (int)j->cancelled, (int)st->state);
                CHECK(j->kind == CANCELLED_LATE || j->cancelled, "an early cancel wins");
                break;
            default:
                CHECK(st->state == VGEN_JOB_SUCCEEDED && st->error == VGEN_STATUS_OK, "kind %d: state %d", (int)j->kind, (int)st->state);
            }
            expected[st->state]++;
        }
    }

    char *metrics = NULL;
    EXPECT_OK(vgen_engine_metrics(engine, 1, &metrics));
    CHECK(prometheus(metrics, "vgen_jobs_submitted_total") == THREADS * JOBS_PER_THREAD, "submitted");
    CHECK(prometheus(metrics, "vgen_jobs_succeeded_total") == expected[VGEN_JOB_SUCCEEDED], "succeeded");
    CHECK(prometheus(metrics, "vgen_jobs_failed_total") == expected[VGEN_JOB_FAILED], "failed");
    CHECK(prometheus(metrics, "vgen_jobs_cancelled_total") == expected[VGEN_JOB_CANCELLED], "cancelled");
    const int shared = prometheus(metrics, "vgen_cache_hits_total") + prometheus(metrics, "vgen_deduplicated_total");
    CHECK(shared > 0, "identical requests shared an execution or the cache");
    /* RETRIED and PANICS jobs fail their first attempt once each; nothing else is retried. */
    CHECK(prometheus(metrics, "vgen_retries_total") == retried, "retries %d, expected %d", prometheus(metrics, "vgen_retries_total"), retried);
    vgen_string_free(metrics);

    vgen_engine_free(engine);
    /* Every thread is joined now: each callback has had all its events and been released, once. */
    for (int t = 0; t < THREADS; t++) {
        for (int i = 0; i < JOBS_PER_THREAD; i++) {
            const struct job *j = &workers[t].jobs[i];
            CHECK(atomic_load(&j->tally.finished) == 1, "job %llu: %d terminal events", (unsigned long long)j->id,
                  atomic_load(&j->tally.finished));
            CHECK(atomic_load(&j->tally.finalized) == 1, "job %llu: finalized %d times", (unsigned long long)j->id,
                  atomic_load(&j->tally.finalized));
            CHECK(atomic_load(&j->tally.final_state) == 1 + (int)j->last.state, "job %llu: the terminal event agrees with poll",
                  (unsigned long long)j->id);
            CHECK(atomic_load(&j->tally.events) == j->events_logged, "job %llu: %d events delivered, %d logged",
                  (unsigned long long)j->id, atomic_load(&j->tally.events), j->events_logged);
        }
    }
    CHECK(atomic_load(&callback_failures) == 0, "%d checks failed in callbacks", atomic_load(&callback_failures));
    printf("concurrency: ok (%d threads, %d jobs: %d succeeded, %d failed, %d cancelled, %d shared; %d polls; %.0f ms)\n",
           THREADS, THREADS * JOBS_PER_THREAD, expected[VGEN_JOB_SUCCEEDED], expected[VGEN_JOB_FAILED],
           expected[VGEN_JOB_CANCELLED], shared, polls, now_ms() - start);
    return 0;
}
