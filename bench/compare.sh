#!/usr/bin/env bash
# Compare ringport's echo_server (io_uring and epoll backends) with peer echo
# servers built from crates.io (tokio, monoio), using ringport-load.
#
#   bench/compare.sh                     # everything, 3 rounds, 5 s per run
#   ROUNDS=1 DURATION=2 bench/compare.sh # quicker
#
# Environment:
#   ROUNDS=3        rounds; servers run interleaved within each round
#   DURATION=5      seconds per throughput run (after WARMUP)
#   WARMUP=1        warm-up seconds per throughput run (samples discarded)
#   HOLD=3          seconds the 10k connections are held open (RSS scenario)
#   SERVERS="ringport-uring ringport-epoll tokio monoio"
#   SCENARIOS="pp1 pp50 pp500 pp5000 big50 rss10k"
#   BENCH_MD=<repo>/BENCHMARKS.md   file whose marked section is rewritten
#   NO_BUILD=1      skip the cargo builds (use binaries already built)
#   RINGPORT_BIN=   ringport echo_server binary (default: target/release/examples/echo_server)
#
# Each figure is the median over the rounds. Client and server share the
# same machine (and its cores); that is expected and noted in the output.
# The script stops by itself and cleans up any server it started.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CALLER_SET=""
for v in HOLD SERVERS SCENARIOS; do # recorded in the command line only when set by the caller
    if [ -n "${!v+x}" ]; then CALLER_SET="$CALLER_SET $v"; fi
done
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
HOLD=${HOLD:-3}
SERVERS=${SERVERS:-"ringport-uring ringport-epoll tokio monoio"}
SCENARIOS=${SCENARIOS:-"pp1 pp50 pp500 pp5000 big50 rss10k"}
BENCH_MD=${BENCH_MD:-$ROOT/BENCHMARKS.md}
COMMAND="ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP"
for v in $CALLER_SET; do
    COMMAND="$COMMAND $v=\"${!v}\""
done
COMMAND="$COMMAND bench/compare.sh${*:+ $*}"

WORK=$(mktemp -d /tmp/ringport-compare.XXXXXX)
RESULTS=$WORK/results.tsv # scenario, server, round, metric, value
NOTES=$WORK/notes.txt
: >"$RESULTS"
: >"$NOTES"

log() { printf '[compare] %s\n' "$*" >&2; }
note() {
    log "$*"
    printf -- '- %s\n' "$*" >>"$NOTES"
}

# ---------------------------------------------------------------- cleanup
SERVER_PID=""
LOAD_PID=""
stop_server() {
    local pid=$SERVER_PID
    SERVER_PID=""
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "server $pid ignored SIGTERM for 5 s; killing it"
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    return 0
}
cleanup() {
    if [ -n "$LOAD_PID" ]; then
        kill -TERM "$LOAD_PID" 2>/dev/null
        wait "$LOAD_PID" 2>/dev/null
    fi
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- build
cd "$ROOT" || exit 1
TARGET=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])') || TARGET=$ROOT/target
MEMBERS=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(" ".join(p["name"] for p in json.load(sys.stdin)["packages"]))')

# Until load/ and bench/ are workspace members they build standalone, each
# with its own target directory.
if [[ " $MEMBERS " == *" ringport-load "* ]]; then
    LOAD_BIN=$TARGET/release/ringport-load
    BENCH_DIR=$TARGET/release
    IN_WORKSPACE=1
else
    LOAD_BIN=${LOAD_TARGET:-/tmp/load-target}/release/ringport-load
    BENCH_DIR=${BENCH_TARGET:-/tmp/bench-target}/release
    IN_WORKSPACE=0
fi
RINGPORT_BIN=${RINGPORT_BIN:-$TARGET/release/examples/echo_server}

if [ -z "${NO_BUILD:-}" ]; then
    log "building (release)..."
    if [ -f "$ROOT/examples/echo_server.rs" ] || [ -d "$ROOT/examples/echo_server" ]; then
        cargo build --release --examples -p ringport >&2 ||
            note "ringport examples failed to build; ringport servers skipped"
    else
        note "examples/echo_server does not exist yet; ringport servers skipped"
    fi
    if [ "$IN_WORKSPACE" = 1 ]; then
        cargo build --release -p ringport-bench -p ringport-load >&2 || {
            log "building ringport-bench / ringport-load failed"
            exit 1
        }
    else
        CARGO_TARGET_DIR=${LOAD_TARGET:-/tmp/load-target} \
            cargo build --release --manifest-path "$ROOT/load/Cargo.toml" >&2 &&
            CARGO_TARGET_DIR=${BENCH_TARGET:-/tmp/bench-target} \
                cargo build --release --manifest-path "$ROOT/bench/Cargo.toml" >&2 || {
            log "building ringport-bench / ringport-load failed"
            exit 1
        }
    fi
fi
[ -x "$LOAD_BIN" ] || {
    log "no load client at $LOAD_BIN"
    exit 1
}

server_cmd() { # name -> command line (empty if its binary is missing)
    case $1 in
    ringport-uring) [ -x "$RINGPORT_BIN" ] && echo "$RINGPORT_BIN --listen 127.0.0.1:0 --backend uring" ;;
    ringport-epoll) [ -x "$RINGPORT_BIN" ] && echo "$RINGPORT_BIN --listen 127.0.0.1:0 --backend epoll" ;;
    tokio) [ -x "$BENCH_DIR/tokio_echo" ] && echo "$BENCH_DIR/tokio_echo --listen 127.0.0.1:0" ;;
    monoio) [ -x "$BENCH_DIR/monoio_echo" ] && echo "$BENCH_DIR/monoio_echo --listen 127.0.0.1:0" ;;
    std) [ -x "$BENCH_DIR/std_echo" ] && echo "$BENCH_DIR/std_echo --listen 127.0.0.1:0" ;;
    *) return 1 ;;
    esac
}

ACTIVE=""
for s in $SERVERS; do
    if [ -n "$(server_cmd "$s")" ]; then
        ACTIVE="$ACTIVE $s"
    else
        note "server $s: binary not found, skipped"
    fi
done
ACTIVE=${ACTIVE# }
[ -n "$ACTIVE" ] || {
    log "no server to benchmark"
    exit 1
}

# ---------------------------------------------------------------- running
PORT=""
start_server() { # name -> sets SERVER_PID and PORT; fails if no listening line in 20 s
    local out=$WORK/server.out
    : >"$out"
    # shellcheck disable=SC2046 # the command line is split on purpose
    $(server_cmd "$1") >"$out" 2>"$WORK/server.err" &
    SERVER_PID=$!
    PORT=""
    for _ in $(seq 200); do
        PORT=$(sed -n 's/^listening on .*:\([0-9][0-9]*\) (backend: .*)$/\1/p' "$out" | head -n1)
        [ -n "$PORT" ] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    note "server $1 did not print its listening line: $(head -c 300 "$WORK/server.err")"
    stop_server
    return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }

record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

# Extracts figures from the load client's JSON and records them.
record_json() { # scenario server round json-file exit-code [server-cpu-ticks run-secs]
    python3 - "$@" >>"$RESULTS" <<'EOF'
import json, os, sys
scenario, server, rnd, path, rc = sys.argv[1:6]
cpu_ticks, run_secs = (sys.argv[6:8] + [None, None])[:2]
try:
    d = json.load(open(path))
except Exception as e:
    print(f"{scenario}\t{server}\t{rnd}\tfailed\tbad JSON: {e}")
    sys.exit(1)
lat = d["latency_us"]
print(f"[compare]   {server}: {d['messages_per_sec']:,.0f} msg/s, p50 {lat['p50']} us, "
      f"p99 {lat['p99']} us, errors {d['errors']}", file=sys.stderr)
out = {
    "msgs": d["messages_per_sec"],
    "mbps": d["mb_per_sec_received"],
    "p50": d["latency_us"]["p50"],
    "p99": d["latency_us"]["p99"],
    "p999": d["latency_us"]["p999"],
    "errors": d["errors"],
}
if cpu_ticks and d["messages_per_sec"]:
    # Server CPU (user + system) per message: the server's own cost, whatever share of the
    # two cores the client took. Approximate: CPU over warm-up + run, messages at the run's rate.
    secs = int(cpu_ticks) / os.sysconf("SC_CLK_TCK")
    out["cpu_us"] = secs * 1e6 / (d["messages_per_sec"] * float(run_secs))
for k, v in out.items():
    print(f"{scenario}\t{server}\t{rnd}\t{k}\t{v}")
if d["errors"] or rc != "0":
    kinds = {k: v for k, v in d["error_kinds"].items() if v}
    print(f"{scenario}\t{server}\t{rnd}\tfailed\texit {rc}, errors {kinds}, "
          f"{d['connections']}/{d['connections_requested']} connected")
EOF
}

run_load() { # json-out err-out timeout args... ; runs in background, sets LOAD_PID
    local json=$1 err=$2 limit=$3
    shift 3
    timeout "$limit" "$LOAD_BIN" "$@" --json >"$json" 2>"$err" &
    LOAD_PID=$!
}

scenario_args() {
    case $1 in
    pp1) echo "-c 1 -l 128" ;;
    pp50) echo "-c 50 -l 128" ;;
    pp500) echo "-c 500 -l 128" ;;
    pp5000) echo "-c 5000 -l 128" ;;
    big50) echo "-c 50 -l 16384" ;;
    rss10k) echo "-c 10000 -l 64 -n 1" ;;
    *) return 1 ;;
    esac
}

scenario_title() {
    case $1 in
    pp1) echo "128 B ping-pong, 1 conn" ;;
    pp50) echo "128 B ping-pong, 50 conns" ;;
    pp500) echo "128 B ping-pong, 500 conns" ;;
    pp5000) echo "128 B ping-pong, 5000 conns" ;;
    big50) echo "16 KiB echo, 50 conns" ;;
    rss10k) echo "RSS, 10k idle conns (after 1x64 B echo each)" ;;
    esac
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

run_throughput() { # scenario server round
    local json=$WORK/load.json err=$WORK/load.err rc c0 c1
    c0=$(cpu_ticks "$SERVER_PID")
    # shellcheck disable=SC2046
    run_load "$json" "$err" "$(awk "BEGIN { print $DURATION + $WARMUP + 120 }")" \
        echo --target "127.0.0.1:$PORT" $(scenario_args "$1") -d "$DURATION" --warmup "$WARMUP"
    wait "$LOAD_PID"
    rc=$?
    LOAD_PID=""
    c1=$(cpu_ticks "$SERVER_PID")
    record_json "$1" "$2" "$3" "$json" "$rc" "$((c1 - c0))" "$(awk "BEGIN { print $DURATION + $WARMUP }")" || log "  $2: no result (exit $rc): $(tail -c 300 "$err")"
}

run_rss() { # scenario server round
    local json=$WORK/load.json err=$WORK/load.err rc idle busy
    sleep 0.3
    idle=$(rss_kib "$SERVER_PID")
    # shellcheck disable=SC2046
    run_load "$json" "$err" "$(awk "BEGIN { print $HOLD + 180 }")" \
        echo --target "127.0.0.1:$PORT" $(scenario_args "$1") --hold "$HOLD"
    busy=""
    for _ in $(seq 1200); do # up to 120 s for the connect storm
        if grep -q "holding connections open" "$err" 2>/dev/null; then
            sleep 0.5
            busy=$(rss_kib "$SERVER_PID")
            break
        fi
        kill -0 "$LOAD_PID" 2>/dev/null || break
        sleep 0.1
    done
    wait "$LOAD_PID"
    rc=$?
    LOAD_PID=""
    record_json "$1" "$2" "$3" "$json" "$rc"
    if [ -n "$idle" ] && [ -n "$busy" ]; then
        record "$1" "$2" "$3" rss_idle_kib "$idle"
        record "$1" "$2" "$3" rss_conns_kib "$busy"
        record "$1" "$2" "$3" kib_per_conn "$(python3 -c "print(($busy - $idle) / 10000)")"
        log "  $2: idle ${idle} KiB, with 10k conns ${busy} KiB, $(python3 -c "print(round(($busy - $idle) / 10000, 2))") KiB/conn"
    else
        record "$1" "$2" "$3" failed "could not read RSS (exit $rc): $(tail -c 200 "$err")"
        log "  $2: could not read RSS (exit $rc)"
    fi
}

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
log "servers: $ACTIVE; scenarios: $SCENARIOS; rounds: $ROUNDS; load average now: $LOADAVG"
for scenario in $SCENARIOS; do
    scenario_args "$scenario" >/dev/null || {
        note "unknown scenario $scenario skipped"
        continue
    }
    for round in $(seq "$ROUNDS"); do
        log "$(scenario_title "$scenario"): round $round/$ROUNDS"
        for server in $ACTIVE; do
            start_server "$server" || {
                record "$scenario" "$server" "$round" failed "server did not start"
                continue
            }
            if [ "$scenario" = rss10k ]; then
                run_rss "$scenario" "$server" "$round"
            else
                run_throughput "$scenario" "$server" "$round"
            fi
            if ! kill -0 "$SERVER_PID" 2>/dev/null; then
                note "server $server died during $scenario round $round: $(tail -c 300 "$WORK/server.err")"
                record "$scenario" "$server" "$round" failed "server died"
            fi
            stop_server
        done
    done
done

# ---------------------------------------------------------------- report
MACHINE="$(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM"
KERNEL=$(uname -r)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')

TABLE=$WORK/table.md
python3 - "$RESULTS" "$ACTIVE" "$SCENARIOS" "$NOTES" >"$TABLE" <<'EOF'
import sys, statistics
from collections import defaultdict

results, active, scenarios, notes_path = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4]
vals = defaultdict(list)          # (scenario, server, metric) -> [float]
failures = defaultdict(list)      # (scenario, server) -> [str]
for line in open(results):
    parts = line.rstrip("\n").split("\t")
    if len(parts) != 5:
        continue
    sc, sv, rnd, metric, value = parts
    if metric == "failed":
        failures[(sc, sv)].append(f"round {rnd}: {value}")
        continue
    try:
        vals[(sc, sv, metric)].append(float(value))
    except ValueError:
        pass

titles = {
    "pp1": "128 B ping-pong, 1 conn",
    "pp50": "128 B ping-pong, 50 conns",
    "pp500": "128 B ping-pong, 500 conns",
    "pp5000": "128 B ping-pong, 5000 conns",
    "big50": "16 KiB echo, 50 conns",
    "rss10k": "10k conns (1x64 B echo each, then held open)",
}
metrics = {
    "rss10k": [("kib_per_conn", "server RSS KiB/conn", 2), ("rss_conns_kib", "server RSS with conns, MiB", -1),
               ("rss_idle_kib", "server RSS idle, MiB", -1)],
    "big50": [("msgs", "msg/s", 0), ("mbps", "MB/s echoed", 1), ("cpu_us", "server CPU us/msg", 2), ("p50", "p50 us", 1), ("p99", "p99 us", 1)],
}
default_metrics = [("msgs", "msg/s", 0), ("cpu_us", "server CPU us/msg", 2), ("p50", "p50 us", 1),
                   ("p99", "p99 us", 1), ("p999", "p99.9 us", 1)]

ringports = [s for s in active if s.startswith("ringport")]
peers = [s for s in active if not s.startswith("ringport")]
pairs = [(r, p) for r in ringports for p in peers]
short = lambda s: s.replace("ringport-", "")

def fmt(v, digits):
    if v is None:
        return "-"
    if digits == -1:
        return f"{v / 1024:.1f}"
    return f"{v:,.{digits}f}"

def median(key):
    xs = vals.get(key)
    return statistics.median(xs) if xs else None

head = ["scenario", "metric"] + active + [f"{short(r)}/{p}" for r, p in pairs]
print("| " + " | ".join(head) + " |")
print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
for sc in scenarios:
    if sc not in titles:
        continue
    for metric, label, digits in metrics.get(sc, default_metrics):
        row = [titles[sc], label]
        med = {}
        for sv in active:
            m = median((sc, sv, metric))
            med[sv] = m
            cell = fmt(m, digits)
            if failures.get((sc, sv)):
                cell += " (!)"
            row.append(cell)
        for r, p in pairs:
            a, b = med.get(r), med.get(p)
            row.append(f"{a / b:.2f}x" if a is not None and b else "-")
        print("| " + " | ".join(row) + " |")

print()
print("Medians of the rounds. Ratios are ringport / peer: above 1 is better for msg/s and MB/s, "
      "below 1 is better for latency and RSS. Latency is measured by the client from each "
      "message's send to its verified reply (closed loop, 1 message outstanding per connection). "
      "RSS is the server's VmRSS (user-space memory; kernel socket buffers are not included); "
      "KiB/conn = (RSS with the 10k connections open - RSS idle before) / 10000.")
fails = [(k, v) for k, v in failures.items() if v]
extra = open(notes_path).read().strip()
if fails or extra:
    print()
    print("Notes:")
    if extra:
        print(extra)
    for (sc, sv), msgs in sorted(fails):
        for m in msgs:
            print(f"- (!) {sv}, {titles.get(sc, sc)}, {m}")
EOF

SECTION=$WORK/section.md
{
    echo "<!-- compare.sh begin -->"
    echo "## Echo server comparison"
    echo
    echo "- Date: $DATE"
    echo "- Machine: $MACHINE; load average at start: $LOADAVG"
    echo "- Kernel: $KERNEL"
    echo "- Command: \`$COMMAND\` (${DURATION} s per run after ${WARMUP} s warm-up, $ROUNDS round(s), servers interleaved)"
    echo "- Client and servers run on the same machine and share its $(nproc) cores (ringport-load uses $(nproc) threads, each server its default thread count), over loopback: figures compare servers under identical conditions, not absolute capacity."
    echo
    cat "$TABLE"
    echo "<!-- compare.sh end -->"
} >"$SECTION"

echo
cat "$TABLE"

python3 - "$BENCH_MD" "$SECTION" <<'EOF'
import os, sys
path, section = sys.argv[1], open(sys.argv[2]).read().rstrip("\n") + "\n"
begin, end = "<!-- compare.sh begin -->", "<!-- compare.sh end -->"
if os.path.exists(path):
    text = open(path).read()
else:
    text = ("# Benchmarks\n\n"
            "Throughput, latency and memory of ringport's `echo_server` example (io_uring and epoll "
            "backends) against echo servers built on tokio and monoio, measured with `ringport-load` "
            "(`load/`). The section below is rewritten by `bench/compare.sh`.\n\n")
if begin in text and end in text and text.index(begin) < text.index(end):
    pre = text[: text.index(begin)]
    post = text[text.index(end) + len(end):]
    text = pre + section.rstrip("\n") + post
else:
    text = text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
EOF
log "wrote $BENCH_MD"
if grep -q "$(printf '\tfailed\t')" "$RESULTS"; then
    log "some runs failed or reported errors (marked (!) in the table)"
    exit 1
fi
