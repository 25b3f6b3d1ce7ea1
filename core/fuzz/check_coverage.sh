#!/usr/bin/env bash
# Fails unless each fuzz target, run once over its committed corpus, covers functions of the code it fuzzes: the
# guard against the fuzz build losing its instrumentation again (issue 39: with the release profile's thin LTO only
# the fuzz crate itself was instrumented, and the fuzzers mutated blind). `make fuzz` runs it before fuzzing.
#
#   core/fuzz/check_coverage.sh TARGET...      (from the repository root; cargo-fuzz and a nightly toolchain)
set -euo pipefail
min=${FUZZ_MIN_CORE_FUNCTIONS:-20}
for t in "$@"; do
    out=$(CARGO_PROFILE_RELEASE_LTO=false cargo +nightly fuzz run --fuzz-dir core/fuzz --features libfuzzer "$t" \
        "core/fuzz/corpus/$t" -- -runs=0 -print_coverage=1 2>&1) || { echo "$out" | tail -20; exit 1; }
    n=$(grep -c '^COVERED_FUNC:.*vgen_core' <<<"$out" || true)
    if [ "$n" -lt "$min" ]; then
        echo "fuzz target $t: its corpus covers $n vgen_core functions (fewer than $min): is vgen-core instrumented?"
        exit 1
    fi
    echo "fuzz target $t: its corpus covers $n vgen_core functions"
done
