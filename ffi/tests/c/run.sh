#!/usr/bin/env bash
# Builds the C and C++ examples and the C test programs strictly against include/ and libvgen.so, then runs each
# one and checks what it printed. `make test-c`, `make test-c-asan` and `make test-c-valgrind` call it.
#
#   ffi/tests/c/run.sh MODE [PROGRAM...]      (PROGRAM: names from PROGRAMS below; all of them by default)
#
# MODE
#   plain     -Wall -Wextra -Wpedantic -Werror, run as they are.
#   asan      The same with AddressSanitizer, LeakSanitizer and UBSan compiled into the C and C++ side.
#             libvgen and libtorch are not instrumented, but Rust allocates through the system malloc, which ASan
#             replaces, so every block vgen hands to C (strings, videos) or C hands to vgen (callback userdata) is
#             checked for overflows, use after free, double free and leaks. Needs no suppressions: the
#             allocations libtorch makes once and keeps stay reachable from its globals, which LeakSanitizer
#             does not report.
#   valgrind  The plain programs (with -g) under memcheck: no memory errors and no definite leaks. Slow: loading
#             libtorch alone takes about 25 s under valgrind, each program 35 to 55 s. Needs no suppressions
#             either: libtorch, OpenMP and the CUDA loader leave only reachable blocks, which are not errors.
#
# Environment: TARGET_DIR (cargo's target folder; default target/), CC, CXX.
set -euo pipefail

mode=${1:?usage: ffi/tests/c/run.sh plain|asan|valgrind [PROGRAM...]}
shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
target=$(cd "$root" && realpath -m "${TARGET_DIR:-target}")
lib=$target/debug
out=$target/c/$mode
cc=${CC:-cc}
cxx=${CXX:-c++}
mkdir -p "$out"

# name, source, arguments, and an extended regex the output must match.
PROGRAMS=(
    "hello_c         examples/c/hello.c           -                    ^vgen .* on libtorch 2\.11"
    "hello_cpp       examples/cpp/hello.cc        -                    ^vgen .* on libtorch 2\.11"
    "generate_c      examples/c/generate.c        @/generate_c.mp4     ^C ABI: ok"
    "hello_video     examples/c/hello_video.c     @/hello_video.mp4    ^wrote "
    "hello_video_cpp examples/cpp/hello_video.cc  @/hello_video_cpp.mp4 ^wrote "
    "game_loop       examples/c/game_loop.c       BUDGET               ^game loop: "
    "game_loop_redis examples/c/game_loop.c       REDIS                ^game loop: "
    "misuse          ffi/tests/c/misuse.c         -                    ^misuse: ok"
    "concurrency     ffi/tests/c/concurrency.c    -                    ^concurrency: ok"
    "wrapper         ffi/tests/c/wrapper.cc       -                    ^C\+\+ wrapper: ok"
)

warnings=(-Wall -Wextra -Wpedantic -Werror)
link=(-I"$root/include" -L"$lib" -lvgen -Wl,-rpath,"$lib" -pthread)
run=()
budget=1 # the game loop's per-frame budget in vgen calls, in milliseconds
case $mode in
    plain) ;;
    asan)
        warnings+=(-g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all)
        # halt_on_error: the first error fails the run. detect_leaks is the default on x86-64; said here so that
        # no environment turns it off.
        export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1
        export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
        budget=5
        ;;
    valgrind)
        warnings+=(-g)
        # Valgrind runs one thread at a time; --fair-sched hands the CPU round-robin, so that the tests' polling
        # threads do not starve vgen's workers.
        run=(valgrind -q --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite
             --error-exitcode=99 --fair-sched=yes)
        budget=1000
        ;;
    *)
        echo "unknown mode $mode: plain, asan or valgrind" >&2
        exit 2
        ;;
esac

# A redis-server of this run's own on loopback, for the game loop on the Redis backend: started on first use,
# stopped when the script exits.
redis_port=""
start_redis() {
    [[ -n $redis_port ]] && return
    redis_port=$((20000 + RANDOM % 20000))
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
        --pidfile "$out/redis.pid" --logfile "$out/redis.log" --dir "$out"
    trap 'kill "$(cat "$out/redis.pid" 2>/dev/null)" 2>/dev/null || true' EXIT
    for _ in $(seq 100); do
        [[ $(redis-cli -p "$redis_port" ping 2>/dev/null) == PONG ]] && return
        sleep 0.05
    done
    echo "redis-server did not start on port $redis_port (see $out/redis.log)" >&2
    exit 1
}

selected=("$@")
for entry in "${PROGRAMS[@]}"; do
    read -r name source args pattern <<<"$entry"
    if ((${#selected[@]})) && [[ " ${selected[*]} " != *" $name "* ]]; then
        continue
    fi
    case $source in
        *.c) "$cc" "${warnings[@]}" -std=c11 -D_POSIX_C_SOURCE=200809L "$root/$source" "${link[@]}" -o "$out/$name" ;;
        *.cc) "$cxx" "${warnings[@]}" -std=c++17 "$root/$source" "${link[@]}" -o "$out/$name" ;;
    esac
    argv=()
    case $args in
        -) ;;
        BUDGET) argv=("$budget") ;;
        REDIS)
            start_redis
            argv=("$budget" "{\"devices\": [\"cpu\"], \"backend\": {\"redis\": {\"url\": \"redis://127.0.0.1:$redis_port/0\",
                \"namespace\": \"game-loop-$$\", \"role\": \"both\", \"results_dir\": \"$out/redis-results\"}}}")
            ;;
        @/*) argv=("$out/${args#@/}") ;;
    esac
    start=$(date +%s.%N)
    status=0
    # A hung program fails the run instead of hanging it.
    timeout 900 "${run[@]}" "$out/$name" "${argv[@]}" >"$out/$name.log" 2>&1 || status=$?
    seconds=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    if ((status != 0)) || ! grep -Eq "$pattern" "$out/$name.log"; then
        cat "$out/$name.log"
        echo "$mode $name: FAILED (exit status $status, ${seconds} s; output above, also in $out/$name.log)" >&2
        exit 1
    fi
    echo "$mode $name: ok (${seconds} s) $(grep -E "$pattern" "$out/$name.log" | tail -1)"
done
