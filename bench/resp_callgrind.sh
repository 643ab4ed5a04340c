#!/usr/bin/env bash
# Instructions per request of resp_server (one IO thread) or redis-server, under callgrind:
# deterministic enough to compare two builds on a loaded machine, where CPU times are noise.
#
#   bench/resp_callgrind.sh ringport 16 20000 /tmp/rp-p16    # -P 16, 20,000 SETs + 20,000 GETs
#   bench/resp_callgrind.sh redis 1 5000 /tmp/rd-p1
#   RINGPORT_BIN=/tmp/old/resp_server bench/resp_callgrind.sh ringport 1 5000 /tmp/old-p1
#   TESTS=get bench/resp_callgrind.sh ringport 16 20000 /tmp/rp-get    # one command's path
#
# Arguments: ringport|redis, redis-benchmark -P, requests per test (-n), output prefix; more
# arguments go to the server. The server starts under valgrind with instrumentation off; 2,000
# SETs create the keys; instrumentation is switched on for `redis-benchmark -t $TESTS -c 50`
# only (TESTS: set,get unless set; `ping` runs two tests, PING_INLINE and PING_MBULK), then
# the profile is dumped (PREFIX.cg.1: open it with callgrind_annotate). Prints the
# program's instructions divided by the requests. User space only: the kernel's share (most of
# the CPU at -P 1) is not counted; bench/resp_compare.sh measures the whole CPU time.

set -u
TESTS=${TESTS:-set,get}
server=$1 pipeline=$2 n=$3 out=$4
shift 4
for tool in valgrind callgrind_control callgrind_annotate redis-benchmark redis-cli python3; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool not found" >&2
        exit 1
    }
done
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
BIN=${RINGPORT_BIN:-$ROOT/target/release/examples/resp_server}
port=$(free_port)
dir=$(mktemp -d /tmp/ringport-resp-callgrind.XXXXXX)
trap 'rm -rf "$dir"' EXIT
case $server in
ringport) valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out.cg" \
    "$BIN" --listen "127.0.0.1:$port" --io-threads 1 "$@" >"$out.log" 2>&1 & ;;
redis) valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out.cg" \
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" "$@" \
    >"$out.log" 2>&1 & ;;
*)
    echo "usage: $0 ringport|redis PIPELINE REQUESTS OUT_PREFIX [server args]" >&2
    exit 2
    ;;
esac
pid=$!
wait_redis "$port" 300
redis-benchmark -p "$port" -t set -n 2000 -c 50 -P 16 -q >/dev/null 2>&1
callgrind_control -i on "$pid" >/dev/null
redis-benchmark -p "$port" -t "$TESTS" -n "$n" -c 50 -P "$pipeline" -q >"$out.bench" 2>&1
callgrind_control -i off "$pid" >/dev/null
callgrind_control -d "$pid" >/dev/null
# Under valgrind the server may take long to drain: give it 20 s, then kill it.
kill -INT "$pid"
for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
done
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
total=$(callgrind_annotate "$out.cg.1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
# Tests run: one line each in redis-benchmark's quiet output.
tests=$(tr '\r' '\n' <"$out.bench" | grep -c 'requests per second')
[ "$tests" -gt 0 ] || tests=1
echo "$server -t $TESTS -P $pipeline -n $n: $total instructions, $((total / (tests * n))) per request ($tests tests, $out.cg.1)"
