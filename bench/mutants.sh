#!/usr/bin/env bash
# Mutation testing of the engine, connection, handle, pool and codec sources with cargo-mutants
# (https://mutants.rs): each mutant (a function body replaced, an operator flipped, ...) is
# built in a copy of the tree and the whole ringport test suite (unit tests and every
# integration test, both backends, io_uring required) is run against it. A mutant the suite
# does not fail on is "missed". Results go to $MUTANTS_DIR/mutants.out/ (default ./mutants.out):
# caught.txt, missed.txt, timeout.txt, unviable.txt, outcomes.json.
#
# Usage:
#   bench/mutants.sh                 # every mutant of the files below (many hours on 2 cores)
#   bench/mutants.sh 3/8             # shard 3 of 8 (0-based): run the shards on separate days
#   MUTANTS_FILES="src/codec/line.rs src/pool.rs" bench/mutants.sh   # a subset
#   bench/mutants.sh --list          # extra arguments go to cargo-mutants
#   bench/mutants.sh --in-place --baseline skip   # reuse target/ (no cold build of a copy);
#                                    # the tree is mutated meanwhile: build nothing else in it
#
# Time: one mutant costs an incremental build of the library, examples and test binaries plus,
# when it is missed, a full suite run (~2 min on this machine); a caught mutant usually stops
# at the first failing test binary. Expect 1-3 min per mutant: shard to fit the time you have.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo mutants --version >/dev/null 2>&1; then
    if [ "${RINGPORT_TEST_REQUIRE_TOOLS:-0}" != "0" ]; then
        echo "mutants: FAILED: cargo-mutants not installed (cargo install cargo-mutants --locked)" >&2
        exit 1
    fi
    echo "skipped: cargo-mutants not installed (cargo install cargo-mutants --locked)"
    exit 0
fi

shard=""
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+/[0-9]+$ ]]; then
    shard="$1"
    shift
fi

# The engine may be one file or a folder of them; globs are cargo-mutants' own.
files="${MUTANTS_FILES:-src/engine.rs src/engine/*.rs src/conn.rs src/conn/*.rs src/handle.rs src/pool.rs src/codec/mod.rs src/codec/length.rs src/codec/line.rs}"
args=(
    --package ringport
    --timeout "${MUTANTS_TIMEOUT:-600}"
    --build-timeout "${MUTANTS_BUILD_TIMEOUT:-900}"
    --output "${MUTANTS_DIR:-.}"
)
for f in $files; do
    args+=(--file "$f")
done
# One mutant at a time (2 cores); --in-place allows no other value and refuses the flag.
case " $* " in
    *" --in-place "*) ;;
    *) args+=(--jobs 1) ;;
esac
if [ -n "$shard" ]; then
    args+=(--shard "$shard")
fi

echo "mutants: $(cargo mutants --version) on $(git rev-parse --short HEAD) files: $files ${shard:+shard $shard}"
# CI's rules: io_uring must run (a skipped uring test would hide mutants of the uring path).
export RINGPORT_TEST_REQUIRE_URING="${RINGPORT_TEST_REQUIRE_URING:-1}"
status=0
cargo mutants "${args[@]}" "$@" || status=$?
# cargo-mutants exits 2 when mutants were missed, 3 on timeouts: a figure, not a failure here.
out="${MUTANTS_DIR:-.}/mutants.out"
if [ -d "$out" ]; then
    for k in caught missed timeout unviable; do
        printf '%-9s %s\n' "$k" "$( (cat "$out/$k.txt" 2>/dev/null || true) | grep -c . || true)"
    done
fi
case $status in
    0 | 2 | 3) exit 0 ;;
    *) exit "$status" ;;
esac
