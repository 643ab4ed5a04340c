#!/usr/bin/env bash
# Fuzz leg: builds every cargo-fuzz target (fuzz/fuzz_targets/) with nightly on every run, then
# runs each for RINGPORT_FUZZ_SECONDS (default 60) seconds. Without nightly or cargo-fuzz it
# prints a `skipped:` line and succeeds, unless RINGPORT_TEST_REQUIRE_TOOLS=1 (CI), where a
# missing tool fails the leg.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${RINGPORT_FUZZ_SECONDS:-60}"

missing() {
    if [ "${RINGPORT_TEST_REQUIRE_TOOLS:-0}" != "0" ]; then
        echo "fuzz: FAILED: $1 (required: RINGPORT_TEST_REQUIRE_TOOLS=1)" >&2
        exit 1
    fi
    echo "skipped: $1"
    exit 0
}

rustup run nightly rustc --version >/dev/null 2>&1 ||
    missing "nightly toolchain not installed (cargo-fuzz needs it)"
cargo fuzz --version >/dev/null 2>&1 ||
    missing "cargo-fuzz not installed (bash .ci/install-tests.sh)"

targets=$(cargo +nightly fuzz list)
[ -n "$targets" ] || { echo "fuzz: FAILED: no fuzz target found" >&2; exit 1; }

# Build all of them first: a target that no longer compiles fails the leg even if running is
# skipped by RINGPORT_FUZZ_SECONDS=0.
cargo +nightly fuzz build
for t in $targets; do
    if [ "$secs" -gt 0 ]; then
        echo "fuzz: running $t for ${secs}s"
        # A target's seed inputs (fuzz/seeds/<target>, committed) join its working corpus
        # (fuzz/corpus/<target>, where new inputs go). One input running 10 s is a hang: a
        # failure (the layer stack's input loop once went round forever).
        corpus=()
        if [ -d "fuzz/seeds/$t" ]; then
            mkdir -p "fuzz/corpus/$t"
            corpus=("fuzz/corpus/$t" "fuzz/seeds/$t")
        fi
        cargo +nightly fuzz run "$t" ${corpus[@]+"${corpus[@]}"} -- -max_total_time="$secs" -timeout=10 \
            -rss_limit_mb=4096 -print_final_stats=1
    fi
done
echo "fuzz: ok ($(echo "$targets" | wc -w) target(s), ${secs}s each)"
