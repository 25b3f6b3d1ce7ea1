/* Assertions and small helpers shared by the C test programs. A failed check prints where and why, with vgen's
 * last error on this thread, and exits with status 1. Callbacks run on vgen's dispatcher thread, where exiting
 * would race the test's own threads, so they count failures in `callback_failures` for main to check. */
#ifndef VGEN_TEST_CHECK_H
#define VGEN_TEST_CHECK_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vgen.h"

#define CHECK(cond, ...)                                                                \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond);           \
            fprintf(stderr, __VA_ARGS__);                                               \
            fprintf(stderr, " (last error: \"%s\")\n", vgen_last_error());              \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

/* A call that must return `expected`; a failing status must also leave a message. */
#define EXPECT(call, expected)                                                          \
    do {                                                                                \
        vgen_status got_ = (call);                                                      \
        CHECK(got_ == (expected), "%s returned %s, expected %s", #call,                 \
              vgen_status_name(got_), vgen_status_name(expected));                      \
        CHECK(got_ == VGEN_STATUS_OK || vgen_last_error()[0] != '\0', "no message for %s", #call); \
    } while (0)

#define EXPECT_OK(call) EXPECT(call, VGEN_STATUS_OK)

static atomic_int callback_failures;

/* A check inside a callback: counted, never fatal on the dispatcher thread. */
#define CHECK_IN_CALLBACK(cond)                                                         \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "FAILED in a callback %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            atomic_fetch_add(&callback_failures, 1);                                    \
        }                                                                               \
    } while (0)

static inline double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static inline void sleep_ms(double ms) {
    struct timespec t = {(time_t)(ms / 1e3), (long)((ms - (double)(time_t)(ms / 1e3) * 1e3) * 1e6)};
    nanosleep(&t, NULL);
}

static inline int is_terminal(vgen_job_state s) {
    return s == VGEN_JOB_SUCCEEDED || s == VGEN_JOB_FAILED || s == VGEN_JOB_CANCELLED;
}

/* What one job's callback saw, kept by the test (not by vgen) so that it can be checked after the engine is
 * freed. The callback's userdata is a separate allocation that the finalizer frees: a call after the finalizer
 * would then read freed memory, which AddressSanitizer and valgrind report. */
struct tally {
    atomic_int events;
    atomic_int finished;
    atomic_int finalized;
    /* The state named by the terminal event: 0 none yet, else 1 + vgen_job_state. */
    atomic_int final_state;
};

struct userdata {
    struct tally *tally;
    uint64_t magic;
};

#define USERDATA_MAGIC 0x76676e5f75736572ull

static inline vgen_job_state state_named(const char *event_json) {
    if (strstr(event_json, "\"state\":\"succeeded\"")) return VGEN_JOB_SUCCEEDED;
    if (strstr(event_json, "\"state\":\"failed\"")) return VGEN_JOB_FAILED;
    if (strstr(event_json, "\"state\":\"cancelled\"")) return VGEN_JOB_CANCELLED;
    return VGEN_JOB_QUEUED;
}

static inline void tally_event(void *userdata, uint64_t job, const char *event_json) {
    struct userdata *u = userdata;
    (void)job;
    CHECK_IN_CALLBACK(u->magic == USERDATA_MAGIC);
    CHECK_IN_CALLBACK(event_json != NULL && event_json[0] == '{');
    CHECK_IN_CALLBACK(atomic_load(&u->tally->finished) == 0); /* nothing after the terminal event */
    atomic_fetch_add(&u->tally->events, 1);
    if (strstr(event_json, "\"type\":\"finished\"") != NULL) {
        atomic_store(&u->tally->final_state, 1 + (int)state_named(event_json));
        atomic_fetch_add(&u->tally->finished, 1);
    }
}

static inline void tally_release(void *userdata) {
    struct userdata *u = userdata;
    CHECK_IN_CALLBACK(u->magic == USERDATA_MAGIC);
    atomic_fetch_add(&u->tally->finalized, 1);
    u->magic = 0;
    free(u);
}

/* A callback that records into `t`; its userdata is freed by its finalizer. */
static inline vgen_callback tally_callback(struct tally *t) {
    struct userdata *u = malloc(sizeof *u);
    CHECK(u != NULL, "malloc");
    u->tally = t;
    u->magic = USERDATA_MAGIC;
    vgen_callback cb = {tally_event, u, tally_release};
    return cb;
}

#endif /* VGEN_TEST_CHECK_H */
