#!/usr/bin/env bash
# memcache_server against memcached under memcslap (libmemcached-tools), interleaved, short.
#
#   bench/memcache.sh                       # 3 rounds of set and get, 4 threads, 20000 ops each
#   ROUNDS=1 OPS=5000 bench/memcache.sh     # quicker
#
# Environment:
#   ROUNDS=3        rounds; within each, every (test, server) run follows the other
#   OPS=20000       memcslap --execute-number (operations per thread)
#   THREADS=4       memcslap --concurrency
#   TESTS="set get" memcslap --test values
#   NO_BUILD=1      use target/release/examples/memcache_server as it is
#   RINGPORT_BACKEND=epoll   the server's backend (default auto: io_uring where available)
#
# Measured per run: memcslap's "Time to <test> N keys by T threads" (wall time for THREADS x OPS operations) and
# the server's CPU time over the run (utime + stime, /proc/PID/stat, 10 ms ticks). Both
# servers run with one worker thread (memcached -t 1, ringport --io-threads 1) and 1 GiB of
# memory (-m 1024, --memory-limit 1024: every run's keys fit, nothing is evicted), on the same
# machine as the client; the load average is recorded, as other work skews every figure.
# Raw output: bench/results/memcache-<UTC time>.txt.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
ROUNDS=${ROUNDS:-3}
OPS=${OPS:-20000}
THREADS=${THREADS:-4}
TESTS=${TESTS:-"set get"}

SLAP=$(command -v memcslap || command -v memaslap || true)
for tool in memcached "$SLAP"; do
    [ -n "$tool" ] && command -v "$tool" >/dev/null || {
        echo "error: memcached or memcslap not found (.ci/install-memcache.sh)" >&2
        exit 1
    }
done

if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --example memcache_server --manifest-path "$ROOT/Cargo.toml" >&2 || exit 1
fi
BIN=$ROOT/target/release/examples/memcache_server

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "error: nothing listening on $1" >&2
    return 1
}

OUT_DIR=$ROOT/bench/results
mkdir -p "$OUT_DIR"
RAW=$OUT_DIR/memcache-$(date -u +%Y%m%dT%H%M%SZ).txt
{
    echo "# bench/memcache.sh ROUNDS=$ROUNDS OPS=$OPS THREADS=$THREADS TESTS=\"$TESTS\""
    echo "# $(date -u) $(uname -sr) nproc=$(nproc) load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# $(memcached -V) / $($SLAP --version 2>&1 | head -1)"
    echo "server test round seconds cpu_ms"
} >"$RAW"

PORT_R=$(free_port)
"$BIN" --listen "127.0.0.1:$PORT_R" --io-threads 1 --memory-limit 1024 >/dev/null 2>&1 &
PID_R=$!
PORT_M=$(free_port)
MC_USER=()
[ "$(id -u)" = 0 ] && MC_USER=(-u root)
memcached -p "$PORT_M" -U 0 -l 127.0.0.1 -t 1 -m 1024 "${MC_USER[@]}" >/dev/null 2>&1 &
PID_M=$!
trap 'kill $PID_R $PID_M 2>/dev/null' EXIT
wait_port "$PORT_R" && wait_port "$PORT_M" || exit 1

for round in $(seq "$ROUNDS"); do
    for test in $TESTS; do
        for server in ringport memcached; do
            if [ $server = ringport ]; then port=$PORT_R pid=$PID_R; else port=$PORT_M pid=$PID_M; fi
            before=$(cpu_ticks $pid)
            took=$("$SLAP" --servers="127.0.0.1:$port" --test="$test" --concurrency="$THREADS" \
                --execute-number="$OPS" 2>&1 | awk '/threads:/ && /keys by/ {print $(NF-1)}')
            after=$(cpu_ticks $pid)
            echo "$server $test $round ${took:-FAILED} $(( (after - before) * 10 ))" | tee -a "$RAW"
        done
    done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RAW"
echo "raw: $RAW" >&2
