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
#   MUTANTS_FILES="src/codec/line.rs src/pool/queue.rs" bench/mutants.sh   # a subset
#   bench/mutants.sh --list          # extra arguments go to cargo-mutants
#   bench/mutants.sh --in-place --baseline skip   # reuse target/ (no cold build of a copy);
#                                    # the tree is mutated meanwhile: build nothing else in it
#   (to keep working in the tree meanwhile: `cp -a` it elsewhere, which keeps target/ and its
#   timestamps warm, and run `--in-place` there; cargo-mutants' own copy with
#   --copy-target=true rebuilt every dependency here, the build scripts' outputs being newer)
#
# Three tiers (how to fit 3,000 mutants on 2 cores); each later tier runs only what the tier
# before it did not catch, so a mutant is missed only if every tier misses it:
# Give each shard its own MUTANTS_DIR (a tier's results of one shard are overwritten by the next):
#   MUTANTS_TIER=0 MUTANTS_DIR=mut/s0 bench/mutants.sh 0/8    # tier 0: the library's unit tests only (the machine,
#                      # layers, codecs, backends' socket tests), proptest at PROPTEST_CASES=64:
#                      # ~2 s build + ~4 s test per mutant here. Output: $MUTANTS_DIR/tier0/.
#   MUTANTS_TIER=1 bench/mutants.sh 0/8    # tier 1: the in-process integration tests too (no
#                      # example build), for tier 0's missed and timed-out mutants of the same
#                      # shard: ~70 s per mutant. Output: $MUTANTS_DIR/tier1/.
#   MUTANTS_TIER=2 bench/mutants.sh        # tier 2: what tier 1 missed, against the whole suite.
#                      # Output: $MUTANTS_DIR/tier2/.
#   (Tier 1 without tier-0 results runs every mutant of the shard, as before tier 0 existed.)
# Shards are round-robin (mutant i runs in shard i % n), so each shard is a uniform sample
# across the files; `--list` with the same shard shows which mutants it holds.
# Exclusions (non-unix code, Debug impls) are in .cargo/mutants.toml, with reasons in TESTING.md.
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
tier="${MUTANTS_TIER:-}"
base="${MUTANTS_DIR:-.}"
case "$tier" in
    "") outdir="$base" ;;
    0 | 1 | 2) outdir="$base/tier$tier" ;;
    *)
        echo "mutants: MUTANTS_TIER must be 0, 1 or 2" >&2
        exit 1
        ;;
esac
mkdir -p "$outdir"

# Issue 21's scope: the machine, the layers, the handler, the engine, the Linux backends, the
# codecs (exclusions with their reasons in .cargo/mutants.toml).
files="${MUTANTS_FILES:-src/machine/*.rs src/layer/*.rs src/codec/*.rs src/core.rs src/conn.rs src/handler.rs src/handler/*.rs src/handle.rs src/relay.rs src/engine/*.rs src/sys/*.rs src/sys/uring/*.rs}"
args=(
    --package ringport
    --timeout "${MUTANTS_TIMEOUT:-$(case "$tier" in 0) echo 60 ;; 1) echo 240 ;; *) echo 600 ;; esac)}"
    --build-timeout "${MUTANTS_BUILD_TIMEOUT:-900}"
    --output "$outdir"
)
for f in $files; do
    args+=(--file "$f")
done
# One mutant at a time (2 cores); --in-place allows no other value and refuses the flag.
case " $* " in
    *" --in-place "*) ;;
    *) args+=(--jobs 1) ;;
esac

# Tiers 1 and 2: select exactly the mutants the tier before did not catch, by their names.
prev=""
case "$tier" in
    1) [ -f "$base/tier0/mutants.out/missed.txt" ] && prev="$base/tier0/mutants.out" ;;
    2)
        prev="$base/tier1/mutants.out"
        if [ ! -f "$prev/missed.txt" ]; then
            echo "mutants: no tier-1 results in $prev (run MUTANTS_TIER=1 first)" >&2
            exit 1
        fi
        ;;
esac
if [ -n "$prev" ]; then
    n=0
    while IFS= read -r name; do
        [ -n "$name" ] || continue
        args+=(--re "^$(printf '%s' "$name" | sed 's/[][\\.^$*+?(){}|]/\\&/g')\$")
        n=$((n + 1))
    done < <(cat "$prev/missed.txt" "$prev/timeout.txt" 2>/dev/null)
    if [ "$n" = 0 ]; then
        echo "mutants: the tier before caught every mutant it ran; nothing for tier $tier"
        exit 0
    fi
    echo "mutants: tier $tier re-runs $n mutants the tier before did not catch"
fi
# The names select tier 1's and 2's mutants: the shard the tier before ran is not applied again.
if [ -n "$shard" ] && [ -z "$prev" ]; then
    args+=(--shard "$shard" --sharding round-robin)
fi
# Tier 1's test targets: the in-process tests (no example build). `--cargo-arg` goes to the
# build (`cargo test --no-run`) as well as the test run, so only these targets are rebuilt
# per mutant (arguments after `--` would reach the test run only, and every test binary and
# example would still be linked for each mutant).
if [ "$tier" = 0 ]; then
    args+=("--cargo-arg=--lib")
    export PROPTEST_CASES="${PROPTEST_CASES:-64}"
fi
if [ "$tier" = 1 ]; then
    for t in --lib --test=limits --test=gateway --test=handles --test=handler_panic \
        --test=outgoing_connect --test=signals --test=accept_spread; do
        args+=("--cargo-arg=$t")
    done
fi

echo "mutants: $(cargo mutants --version) on $(git rev-parse --short HEAD) files: $files ${shard:+shard $shard}"
# CI's rules: io_uring must run (a skipped uring test would hide mutants of the uring path).
export RINGPORT_TEST_REQUIRE_URING="${RINGPORT_TEST_REQUIRE_URING:-1}"
status=0
cargo mutants "${args[@]}" "$@" || status=$?
# cargo-mutants exits 2 when mutants were missed, 3 on timeouts: a figure, not a failure here.
out="$outdir/mutants.out"
if [ -d "$out" ]; then
    for k in caught missed timeout unviable; do
        printf '%-9s %s\n' "$k" "$( (cat "$out/$k.txt" 2>/dev/null || true) | grep -c . || true)"
    done
fi
case $status in
    0 | 2 | 3) exit 0 ;;
    *) exit "$status" ;;
esac
