/* A video player that plays a clip while vgen makes it: the previews first, then each frame as soon as it is
 * decoded, copied straight into an SDL streaming texture's memory (vgen_video_copy_frame with the texture's pitch).
 * The window never waits on vgen: every call in the loop returns at once.
 *
 *   player [--prompt TEXT] [--seed N] [--size W H] [--scale N] [--check]
 *
 * --check (what `make test-player` runs, with SDL's offscreen driver): once the clip has played to its end, read
 * the window's pixels back and compare them with the video's last frame; print "player: ok" when they match.
 */
#include <SDL.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vgen.h"

static int fail(const char *what) {
    fprintf(stderr, "player: %s: %s\n", what, vgen_last_error());
    return 1;
}

/* Shows frame `index` of `video`: copied by vgen straight into the locked streaming texture (made again when the
 * video's size changes: previews are smaller than the frames), then drawn over the whole window. */
static bool show(SDL_Renderer *renderer, SDL_Texture **texture, const vgen_video *video, uint32_t index) {
    const uint8_t *data = NULL;
    uint32_t n = 0, h = 0, w = 0;
    if (vgen_video_frames(video, &data, &n, &h, &w, NULL) != VGEN_STATUS_OK) return false;
    int tw = 0, th = 0;
    if (*texture == NULL || SDL_QueryTexture(*texture, NULL, NULL, &tw, &th) != 0 || tw != (int)w || th != (int)h) {
        if (*texture) SDL_DestroyTexture(*texture);
        *texture = SDL_CreateTexture(renderer, SDL_PIXELFORMAT_RGBA32, SDL_TEXTUREACCESS_STREAMING, (int)w, (int)h);
        if (*texture == NULL) return false;
    }
    void *pixels = NULL;
    int pitch = 0;
    if (SDL_LockTexture(*texture, NULL, &pixels, &pitch) != 0) return false;
    const vgen_status s = vgen_video_copy_frame(video, index, VGEN_PIXELS_RGBA8, pixels, (size_t)pitch);
    SDL_UnlockTexture(*texture);
    if (s != VGEN_STATUS_OK) return false;
    SDL_RenderClear(renderer);
    SDL_RenderCopy(renderer, *texture, NULL, NULL);
    SDL_RenderPresent(renderer);
    return true;
}

int main(int argc, char **argv) {
    const char *prompt = "a red circle moving right";
    unsigned long seed = 1, scale = 4, width = 64, height = 64;
    bool check = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--prompt") && i + 1 < argc) prompt = argv[++i];
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--scale") && i + 1 < argc) scale = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--size") && i + 2 < argc) {
            width = strtoul(argv[++i], NULL, 10);
            height = strtoul(argv[++i], NULL, 10);
        }
        else if (!strcmp(argv[i], "--check")) check = true;
        else {
            fprintf(stderr, "usage: player [--prompt TEXT] [--seed N] [--size W H] [--scale N] [--check]\n");
            return 2;
        }
    }
    if (scale < 1 || scale > 16) scale = 4;

    /* Inference on one core, so that the window keeps the other. */
    vgen_engine *engine = NULL;
    if (vgen_engine_new("{\"cpu_threads\": 1}", &engine) != VGEN_STATUS_OK) return fail("vgen_engine_new");
    char request[512];
    snprintf(request, sizeof request,
             "{\"prompt\": \"%s\", \"seed\": %lu, \"width\": %lu, \"height\": %lu, \"preview_every\": 1}", prompt, seed,
             width, height);
    uint64_t job = 0;
    if (vgen_engine_submit(engine, request, NULL, &job) != VGEN_STATUS_OK) {
        vgen_engine_free(engine);
        return fail("vgen_engine_submit");
    }

    if (SDL_Init(SDL_INIT_VIDEO) != 0) {
        fprintf(stderr, "player: SDL_Init: %s\n", SDL_GetError());
        vgen_engine_free(engine);
        return 1;
    }
    SDL_SetHint(SDL_HINT_RENDER_SCALE_QUALITY, "0"); /* nearest: each video pixel a scale x scale block */
    const int window_w = (int)(width * scale), window_h = (int)(height * scale);
    SDL_Window *window = SDL_CreateWindow("vgen player", SDL_WINDOWPOS_UNDEFINED, SDL_WINDOWPOS_UNDEFINED, window_w,
                                          window_h, 0);
    SDL_Renderer *renderer = window ? SDL_CreateRenderer(window, -1, SDL_RENDERER_SOFTWARE) : NULL;
    SDL_Texture *texture = NULL;
    int status = 1;
    if (renderer == NULL) {
        fprintf(stderr, "player: SDL: %s\n", SDL_GetError());
        goto out;
    }

    vgen_job_status st = VGEN_JOB_STATUS_INIT;
    uint64_t preview_seen = 0;
    uint32_t frames_ready = 0, shown = 0, previews = 0, chunks = 0;
    vgen_video *frames = NULL; /* the frames decoded so far */
    double fps = 8, started_playing = -1;
    bool running = true, done = false;
    while (running) {
        SDL_Event ev;
        while (SDL_PollEvent(&ev)) {
            if (ev.type == SDL_QUIT) running = false;
        }
        if (vgen_job_poll(engine, job, &st) != VGEN_STATUS_OK) {
            fail("vgen_job_poll");
            goto out;
        }
        if (st.state == VGEN_JOB_FAILED || st.state == VGEN_JOB_CANCELLED) {
            char *message = NULL;
            vgen_job_error_message(engine, job, &message);
            fprintf(stderr, "player: the job ended without a video: %s\n", message ? message : "");
            vgen_string_free(message);
            goto out;
        }
        if (st.frames_ready > frames_ready) { /* a new chunk: take the frames so far */
            vgen_video *next = NULL;
            if (vgen_job_frames(engine, job, &next) == VGEN_STATUS_OK) {
                vgen_video_free(frames);
                frames = next;
                frames_ready = st.frames_ready;
                chunks++;
            }
        }
        /* Until the first frame is decoded, the latest preview. */
        if (frames == NULL && st.preview_seq != preview_seen) {
            vgen_video *preview = NULL;
            uint32_t step = 0;
            if (vgen_job_preview(engine, job, &preview, &step) == VGEN_STATUS_OK) {
                const uint8_t *data = NULL;
                uint32_t n = 0;
                preview_seen = st.preview_seq;
                bool ok = vgen_video_frames(preview, &data, &n, NULL, NULL, NULL) == VGEN_STATUS_OK &&
                          show(renderer, &texture, preview, n - 1);
                vgen_video_free(preview);
                if (!ok) {
                    fail("showing a preview");
                    goto out;
                }
                previews++;
            }
        }
        /* The frames, at the video's frame rate, as far as they are decoded. */
        if (frames != NULL) {
            const double now = SDL_GetTicks() / 1000.0;
            if (started_playing < 0) started_playing = now;
            uint32_t due = (uint32_t)((now - started_playing) * fps);
            if (due >= frames_ready) due = frames_ready - 1;
            uint32_t first = 0;
            vgen_video_first_frame(frames, &first);
            if (due + 1 > shown) {
                if (!show(renderer, &texture, frames, due - first)) {
                    fail("showing a frame");
                    goto out;
                }
                shown = due + 1;
            }
            if (st.state == VGEN_JOB_SUCCEEDED && frames_ready == st.frames_ready && shown == frames_ready) done = true;
        }
        if (done) running = false;
        SDL_Delay(4);
    }

    if (done) {
        status = 0;
        printf("player: %u previews, then %u frames in %u chunks, played as they decoded\n", previews, shown, chunks);
    }
    if (done && check) {
        /* The window's pixels now are the last frame, each pixel scale x scale times. */
        uint8_t *window_pixels = malloc((size_t)window_w * (size_t)window_h * 4);
        uint8_t *last = malloc((size_t)width * height * 4);
        status = 1;
        if (window_pixels && last &&
            SDL_RenderReadPixels(renderer, NULL, SDL_PIXELFORMAT_RGBA32, window_pixels, window_w * 4) == 0 &&
            vgen_video_copy_frame(frames, frames_ready - 1, VGEN_PIXELS_RGBA8, last, (size_t)width * 4) == VGEN_STATUS_OK) {
            long differ = 0;
            for (int y = 0; y < window_h; y++)
                for (int x = 0; x < window_w; x++)
                    differ += memcmp(window_pixels + ((size_t)y * window_w + x) * 4,
                                     last + ((size_t)(y / (int)scale) * width + x / (int)scale) * 4, 3) != 0;
            printf("player: the window shows the video's last frame: %ld of %d pixels differ\n", differ,
                   window_w * window_h);
            if (differ == 0) {
                printf("player: ok\n");
                status = 0;
            }
        }
        free(window_pixels);
        free(last);
    }
out:
    vgen_video_free(frames);
    if (texture) SDL_DestroyTexture(texture);
    if (renderer) SDL_DestroyRenderer(renderer);
    if (window) SDL_DestroyWindow(window);
    SDL_Quit();
    /* Start the shutdown at once; freeing waits only for it. */
    vgen_engine_shutdown(engine, 0);
    vgen_engine_free(engine);
    return status;
}
