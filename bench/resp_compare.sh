#!/usr/bin/env bash
# Compare ringport's resp_server with redis-server 7 under redis-benchmark, interleaved.
#
#   bench/resp_compare.sh                   # 3 rounds, -n 100000, 1M keys for the RSS figure
#   ROUNDS=1 REQUESTS=20000 KEYS=100000 bench/resp_compare.sh   # quicker
#
# Environment:
#   ROUNDS=3          rounds; within each, every (pipeline, server) run follows the other
#   REQUESTS=100000   requests per test per run (redis-benchmark -n)
#   CLIENTS=50        connections (redis-benchmark -c)
#   PIPELINES="1 16"  redis-benchmark -P values
#   KEYS=1000000      small keys loaded (redis-cli --pipe) for the memory figure
#   BENCH_MD=<repo>/bench/results/resp-compare.md   file whose marked section is rewritten ("-": don't)
#   NO_BUILD=1        use target/release/examples/resp_server as it is
#   RINGPORT_BIN=path another resp_server binary (e.g. an older build, for a before/after); implies NO_BUILD
#   RINGPORT_BACKEND=epoll   the server's backend (default auto: io_uring where available)
#   RINGPORT_ARGS="--io-threads 1"   more resp_server flags (default none: one IO thread per CPU)
#   PIN=1             both servers on CPU 0 (resp_server with --io-threads 1, as redis serves
#                     commands on one thread), redis-benchmark on CPU 1 (`taskset`): neither
#                     takes the other's core, so context switches and wake-ups are the servers'
#
# Measured per test: requests/s, p50 and p99 latency (redis-benchmark --csv), and the server's
# CPU time divided by the requests of that test: the sum over the server's threads of the time
# on a CPU (user + system) in /proc/PID/task/*/schedstat, in nanoseconds (utime + stime from
# /proc/PID/stat count 10 ms ticks, too coarse for a -P 16 run of a few hundred ms). Memory: RSS
# (VmRSS) before and after loading KEYS keys of 16-byte names and 3-byte values (the shape
# redis-benchmark uses). Figures are medians over the rounds. Client and servers share the
# machine; its load average is recorded because other work on it skews every figure.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-100000}
CLIENTS=${CLIENTS:-50}
PIPELINES=${PIPELINES:-"1 16"}
KEYS=${KEYS:-1000000}
BENCH_MD=${BENCH_MD:-$ROOT/bench/results/resp-compare.md}
TESTS="ping,set,get"
SRV=() CLI=()
if [ "${PIN:-0}" = 1 ]; then
    SRV=(taskset -c 0) CLI=(taskset -c 1) RINGPORT_ARGS="--io-threads 1 ${RINGPORT_ARGS:-}"
fi
COMMAND="${PIN:+PIN=$PIN }${RINGPORT_ARGS:+RINGPORT_ARGS=\"$RINGPORT_ARGS\" }ROUNDS=$ROUNDS REQUESTS=$REQUESTS CLIENTS=$CLIENTS PIPELINES=\"$PIPELINES\" KEYS=$KEYS bench/resp_compare.sh"

for tool in redis-server redis-benchmark redis-cli python3; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool not found (apt-get install redis-server redis-tools)" >&2
        exit 1
    }
done

WORK=$(mktemp -d /tmp/ringport-resp-compare.XXXXXX)
RESULTS=$WORK/results.tsv # server, pipeline, round, test, rps, p50, p99, cpu_us_per_req
MEMORY=$WORK/memory.tsv   # server, rss_before_kib, rss_after_kib, keys
: >"$RESULTS"
: >"$MEMORY"
log() { printf '[resp-compare] %s\n' "$*" >&2; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${NO_BUILD:-}" ] && [ -z "${RINGPORT_BIN:-}" ]; then
    log "building resp_server (release)"
    (cd "$ROOT" && cargo build --release --example resp_server -q) || exit 1
fi
RINGPORT_BIN=${RINGPORT_BIN:-$ROOT/target/release/examples/resp_server}

# start_server NAME PORT -> echoes the pid once the server answers PING
start_server() {
    local name=$1 port=$2 pid
    case $name in
    ringport) "${SRV[@]}" "$RINGPORT_BIN" --listen "127.0.0.1:$port" ${RINGPORT_ARGS:-} >"$WORK/$name.out" 2>"$WORK/$name.err" & ;;
    redis) "${SRV[@]}" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$WORK" >"$WORK/$name.out" 2>&1 & ;;
    esac
    pid=$!
    if wait_redis "$port" 100; then
        echo "$pid"
        return 0
    fi
    log "$name did not start"
    return 1
}

PORT_RINGPORT=$(free_port)
PORT_REDIS=$(free_port)
PID_RINGPORT=$(start_server ringport "$PORT_RINGPORT") || exit 1
PIDS+=("$PID_RINGPORT")
PID_REDIS=$(start_server redis "$PORT_REDIS") || exit 1
PIDS+=("$PID_REDIS")
BACKEND=$(sed -n 's/.*(backend: \(.*\))/\1/p' "$WORK/ringport.out")
REDIS_VERSION=$(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p')
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "ringport (backend $BACKEND) on $PORT_RINGPORT, redis $REDIS_VERSION on $PORT_REDIS; load $LOAD_BEFORE"

# run_bench SERVER PORT PID PIPELINE ROUND: one redis-benchmark per test, so that the server's
# CPU time can be divided by that test's requests (`-t ping` runs PING_INLINE and PING_MBULK).
run_bench() {
    local server=$1 port=$2 pid=$3 pipeline=$4 round=$5 test before after out ntests cpu_us
    for test in ${TESTS//,/ }; do
        before=$(cpu_ns "$pid")
        out=$("${CLI[@]}" redis-benchmark -h 127.0.0.1 -p "$port" -t "$test" -n "$REQUESTS" -c "$CLIENTS" \
            -P "$pipeline" --csv 2>"$WORK/bench.err") || {
            log "redis-benchmark failed against $server: $(cat "$WORK/bench.err")"
            return 1
        }
        after=$(cpu_ns "$pid")
        ntests=$(printf '%s\n' "$out" | grep -c '^"[A-Z]')
        cpu_us=$(python3 -c "print(($after - $before) / 1e3 / ($REQUESTS * $ntests))")
        printf '%s\n' "$out" | python3 -c '
import csv, sys
server, pipeline, rnd, cpu = sys.argv[1:5]
for row in csv.reader(sys.stdin):
    if row and row[0] != "test":
        print("\t".join([server, pipeline, rnd, row[0], row[1], row[4], row[6], cpu]))
' "$server" "$pipeline" "$round" "$cpu_us" >>"$RESULTS"
    done
}

for round in $(seq "$ROUNDS"); do
    for pipeline in $PIPELINES; do
        # Alternate which server goes first, so neither always runs on a warmer machine.
        if [ $((round % 2)) -eq 1 ]; then order="ringport redis"; else order="redis ringport"; fi
        for server in $order; do
            if [ "$server" = ringport ]; then
                run_bench ringport "$PORT_RINGPORT" "$PID_RINGPORT" "$pipeline" "$round" || exit 1
            else
                run_bench redis "$PORT_REDIS" "$PID_REDIS" "$pipeline" "$round" || exit 1
            fi
            log "round $round -P $pipeline $server done"
        done
    done
done

# Memory: KEYS keys named like redis-benchmark's ("key:" + 12 digits), 3-byte values.
python3 -c '
import sys
n = int(sys.argv[1])
out = sys.stdout.buffer
for i in range(n):
    k = b"key:%012d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$16\r\n" + k + b"\r\n$3\r\nxxx\r\n")
' "$KEYS" >"$WORK/keys.resp"
for server in ringport redis; do
    if [ "$server" = ringport ]; then port=$PORT_RINGPORT pid=$PID_RINGPORT; else port=$PORT_REDIS pid=$PID_REDIS; fi
    redis-cli -p "$port" FLUSHALL >/dev/null
    before=$(rss_kib "$pid")
    report=$(redis-cli -p "$port" --pipe <"$WORK/keys.resp" 2>&1)
    case $report in *"errors: 0, replies: $KEYS"*) ;; *)
        log "loading keys into $server failed: $report"
        exit 1
        ;;
    esac
    size=$(redis-cli -p "$port" DBSIZE)
    after=$(rss_kib "$pid")
    printf '%s\t%s\t%s\t%s\n' "$server" "$before" "$after" "$size" >>"$MEMORY"
    log "$server: $size keys, RSS $before -> $after KiB"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

TABLE=$WORK/table.md
python3 - "$RESULTS" "$MEMORY" >"$TABLE" <<'EOF'
import statistics, sys
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1]):
    server, pipeline, rnd, test, rps, p50, p99, cpu = line.rstrip("\n").split("\t")
    runs[(test, int(pipeline), server)].append((float(rps), float(p50), float(p99), float(cpu)))

def med(xs):
    return statistics.median(xs)

print("| test | -P | server | requests/s | p50 ms | p99 ms | server CPU µs/request | ringport / redis (rps) | ringport / redis (CPU per request) |")
print("|---|---|---|---|---|---|---|---|---|")
tests = sorted({t for (t, _, _) in runs}, key=["PING_INLINE", "PING_MBULK", "SET", "GET"].index)
for pipeline in sorted({p for (_, p, _) in runs}):
    for test in tests:
        rps, cpu = {}, {}
        for server in ("ringport", "redis"):
            r = runs.get((test, pipeline, server))
            if not r:
                continue
            rps[server] = med([x[0] for x in r])
            cpu[server] = med([x[3] for x in r])
        for server in ("ringport", "redis"):
            r = runs.get((test, pipeline, server))
            if not r:
                continue
            ratio = cpu_ratio = ""
            if server == "ringport" and rps.get("redis"):
                ratio = f"**{rps['ringport'] / rps['redis']:.2f}x**"
            if server == "ringport" and cpu.get("redis"):
                cpu_ratio = f"**{cpu['ringport'] / cpu['redis']:.2f}x**"
            print(f"| {test} | {pipeline} | {server} | {med([x[0] for x in r]):,.0f} | "
                  f"{med([x[1] for x in r]):.3f} | {med([x[2] for x in r]):.3f} | "
                  f"{med([x[3] for x in r]):.2f} | {ratio} | {cpu_ratio} |")
print()
# The issue's figure: server CPU per request over SET and GET together, per round (the ratio of
# the two servers' sums in the same round), then the median and the spread over the rounds.
print("| -P | SET+GET CPU per request, ringport / redis: median | min | max | rounds |")
print("|---|---|---|---|---|")
per_round = defaultdict(dict)
for line in open(sys.argv[1]):
    server, pipeline, rnd, test, rps_, p50, p99, c = line.rstrip("\n").split("\t")
    if test in ("SET", "GET"):
        per_round[(int(pipeline), rnd)][(server, test)] = float(c)
for pipeline in sorted({p for (p, _) in per_round}):
    ratios = []
    for (p, rnd), d in sorted(per_round.items()):
        if p != pipeline:
            continue
        try:
            ours = d[("ringport", "SET")] + d[("ringport", "GET")]
            theirs = d[("redis", "SET")] + d[("redis", "GET")]
        except KeyError:
            continue
        ratios.append(ours / theirs)
    if ratios:
        print(f"| {pipeline} | **{med(ratios):.2f}x** | {min(ratios):.2f}x | {max(ratios):.2f}x | {len(ratios)} |")
print()
print("| server | keys | RSS before | RSS after | bytes per key | ringport / redis |")
print("|---|---|---|---|---|---|")
mem = {}
for line in open(sys.argv[2]):
    server, before, after, keys = line.split()
    mem[server] = (int(before), int(after), int(keys))
for server in ("ringport", "redis"):
    if server not in mem:
        continue
    before, after, keys = mem[server]
    per_key = (after - before) * 1024 / keys
    ratio = ""
    if server == "ringport" and "redis" in mem:
        rb, ra, rk = mem["redis"]
        ratio = f"**{per_key / ((ra - rb) * 1024 / rk):.2f}x**"
    print(f"| {server} | {keys:,} | {before / 1024:.1f} MiB | {after / 1024:.1f} MiB | {per_key:.0f} | {ratio} |")
EOF

CPU_MODEL=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
SECTION=$WORK/section.md
{
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') with \`$COMMAND\`: ringport \`resp_server\`"
    echo "(release, backend $BACKEND, flags: \`${RINGPORT_ARGS:-none}\`, IO threads: one per CPU unless set there) and redis-server $REDIS_VERSION (no persistence),"
    echo "both started once, runs interleaved, redis-benchmark \`-t $TESTS -c $CLIENTS -n $REQUESTS\`,"
    echo "medians over $ROUNDS rounds. Machine: $(nproc) CPUs ($CPU_MODEL), shared by client, both servers"
    echo "and other work: load average $LOAD_BEFORE before, $LOAD_AFTER after. **The figures are noisy**;"
    echo "compare the ratios within one run, not the absolute numbers across machines."
    echo
    cat "$TABLE"
} >"$SECTION"
cat "$SECTION"

if [ "$BENCH_MD" != "-" ] && [ -f "$BENCH_MD" ]; then
    python3 - "$BENCH_MD" "$SECTION" <<'EOF'
import sys
path, section = sys.argv[1], open(sys.argv[2]).read()
start, end = "<!-- resp-compare:start -->", "<!-- resp-compare:end -->"
doc = open(path).read()
if start in doc and end in doc:
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    doc = head + start + "\n" + section + end + tail
    open(path, "w").write(doc)
    print(f"[resp-compare] {path} updated", file=sys.stderr)
else:
    print(f"[resp-compare] no resp-compare markers in {path}; not updated", file=sys.stderr)
EOF
fi
