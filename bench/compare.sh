#!/usr/bin/env bash
# Compare ringport's example servers with peers built from crates.io, using
# ringport-load under both of its client styles (event loops; a blocking
# thread per connection):
#   - echo_server (io_uring and epoll backends) vs tokio and monoio echo servers;
#   - line_server vs tokio-util Framed + LinesCodec (bench/src/bin/tokio_lines.rs);
#   - packet_echo_server vs tokio-util Framed + LengthDelimitedCodec (tokio_packet.rs).
#
#   bench/compare.sh                     # everything, 3 rounds, 5 s per run
#   bench/compare.sh --quick             # 1 round, 2 s per run, a few scenarios
#   ROUNDS=5 SCENARIOS="pp50 pp500" SERVERS="ringport-uring ringport-uring~setup=coop" \
#     BASELINE=ringport-uring SECTION=exp-setup bench/compare.sh   # an A/B experiment
#
# Environment:
#   ROUNDS=3        rounds; servers run interleaved within each round
#   DURATION=5      seconds per throughput run (after WARMUP)
#   WARMUP=1        warm-up seconds per throughput run (samples discarded)
#   HOLD=3          seconds the 10k connections are held open (RSS scenario)
#   SETTLE=1        seconds into the hold the RSS is read (io_uring gives a quiet ring's pages
#                   back 100 ms after the last receive: RINGPORT_URING_TRIM)
#   CLIENTS="event blocking"  ringport-load client styles; every throughput scenario runs under
#                   each (pipelined scenarios only under `event`, rss10k only under `event`)
#   SERVERS="ringport-uring ringport-epoll tokio monoio"        echo scenarios
#   FRAMED_SERVERS="ringport-uring ringport-epoll tokio-util"   line and packet scenarios
#                   A ringport-uring name may carry io_uring experiment switches after `~`:
#                   `ringport-uring~setup=coop`, `ringport-uring~recv=single,cq=2`,
#                   `ringport-uring~ringfd=on,fixed=on,wait=min:8:50` (setup, recv, cq,
#                   ringfd, fixed, wait, balance, inc, trim: RINGPORT_URING_SETUP / _RECV / _CQ /
#                   _RINGFD / _FIXED / _WAIT / _BALANCE / _INC / _TRIM, see src/sys/uring/tuning.rs).
#   SCENARIOS="pp1 pp50 pp500 pp5000 big50 line50 line500 line50p line500p packet50 packet500
#              packet50p packet500p rss10k"   (`...p`: 16 messages in flight per connection)
#                   A ringport name may also carry `@LABEL` (before any `~`): its binaries
#                   are taken from the directory VARIANT_DIRS gives that label, e.g.
#                   VARIANT_DIRS="before=/tmp/main-examples" and `ringport-uring@before`
#                   (an older build kept aside, run interleaved with the current one).
#   BASELINE=       a server name: ratio columns are each server / BASELINE instead of
#                   ringport / each peer
#   PAIRS=          extra ratio columns, `a/b` server names separated by spaces (e.g.
#                   PAIRS="ringport-uring/ringport-uring@before")
#   TRACE_DIR=      keep each ringport server's stderr there, one file per run (with
#                   RINGPORT_URING_TRACE=1 set, its per-IO-thread loop-turn summaries)
#   BENCH_MD=<repo>/bench/results/compare-SECTION.md   file whose marked section is rewritten
#                   (created if missing; compare-latest.md without SECTION). BENCHMARKS.md is
#                   the report: copy the figures that decide something into it by hand.
#   SECTION=        name of that section (`<!-- compare.sh begin NAME -->`); empty: the main
#                   comparison section
#   NO_BUILD=1      skip the cargo builds (use binaries already built)
#   RINGPORT_BIN=   ringport echo_server binary (default: target/release/examples/echo_server;
#                   line_server and packet_echo_server are taken from the same directory)
#
# Servers run interleaved, their order rotated by one each round so that no server always
# runs first (runs recorded before this rotation used the listed order in every round). Each
# figure is the median over the rounds. Server CPU per message is read from
# /proc/PID/stat (utime, stime) before and after each run and split into user and
# system time. Client and server share the same machine (and its cores); that is
# expected and noted in the output. The script stops by itself and cleans up any
# server it started.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
QUICK=""
for arg in "$@"; do
    case $arg in
    --quick) QUICK=1 ;;
    *)
        echo "usage: bench/compare.sh [--quick]   (settings: environment, see the header)" >&2
        exit 2
        ;;
    esac
done
CALLER_SET=""
for v in HOLD CLIENTS SERVERS FRAMED_SERVERS SCENARIOS BASELINE PAIRS VARIANT_DIRS; do # recorded in the command line only when set by the caller
    if [ -n "${!v+x}" ]; then CALLER_SET="$CALLER_SET $v"; fi
done
if [ -n "$QUICK" ]; then
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-2}
    WARMUP=${WARMUP:-0.5}
    SCENARIOS=${SCENARIOS:-"pp1 pp50 pp500 line50 packet50p"}
fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
HOLD=${HOLD:-3}
SETTLE=${SETTLE:-1}
CLIENTS=${CLIENTS:-"event blocking"}
SERVERS=${SERVERS:-"ringport-uring ringport-epoll tokio monoio"}
FRAMED_SERVERS=${FRAMED_SERVERS:-"ringport-uring ringport-epoll tokio-util"}
SCENARIOS=${SCENARIOS:-"pp1 pp50 pp500 pp5000 big50 line50 line500 line50p line500p packet50 packet500 packet50p packet500p rss10k"}
BASELINE=${BASELINE:-}
PAIRS=${PAIRS:-}
VARIANT_DIRS=${VARIANT_DIRS:-}
TRACE_DIR=${TRACE_DIR:-}
SECTION=${SECTION:-}
BENCH_MD=${BENCH_MD:-$ROOT/bench/results/compare-${SECTION:-latest}.md}
COMMAND="ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP"
for v in $CALLER_SET; do
    COMMAND="$COMMAND $v=\"${!v}\""
done
COMMAND="$COMMAND bench/compare.sh${*:+ $*}"

WORK=$(mktemp -d /tmp/ringport-compare.XXXXXX)
RESULTS=$WORK/results.tsv # scenario@client, server, round, metric, value
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
    stop_pid "$pid" 5 || log "server $pid ignored SIGTERM for 5 s; killed it"
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
LOAD_BIN=$TARGET/release/ringport-load
BENCH_DIR=$TARGET/release
RINGPORT_BIN=${RINGPORT_BIN:-$TARGET/release/examples/echo_server}
RP_DIR=$(dirname "$RINGPORT_BIN")

if [ -z "${NO_BUILD:-}" ]; then
    log "building (release)..."
    cargo build --release -p ringport --example echo_server --example line_server \
        --example packet_echo_server >&2 ||
        note "ringport examples failed to build; ringport servers skipped"
    cargo build --release -p ringport-bench -p ringport-load >&2 || {
        log "building ringport-bench / ringport-load failed"
        exit 1
    }
fi
[ -x "$LOAD_BIN" ] || {
    log "no load client at $LOAD_BIN"
    exit 1
}

family() { # scenario -> echo | line | packet
    case $1 in
    line*) echo line ;;
    packet*) echo packet ;;
    *) echo echo ;;
    esac
}

# The experiment switches in a server name (`ringport-uring~setup=coop,recv=single`) as
# environment assignments for env(1); fails on an unknown switch.
server_env() {
    local spec=${1#*~} kv out=""
    [ "$spec" != "$1" ] || return 0
    for kv in ${spec//,/ }; do
        case ${kv%%=*} in
        setup) out="$out RINGPORT_URING_SETUP=${kv#*=}" ;;
        recv) out="$out RINGPORT_URING_RECV=${kv#*=}" ;;
        cq) out="$out RINGPORT_URING_CQ=${kv#*=}" ;;
        ringfd) out="$out RINGPORT_URING_RINGFD=${kv#*=}" ;;
        fixed) out="$out RINGPORT_URING_FIXED=${kv#*=}" ;;
        wait) out="$out RINGPORT_URING_WAIT=${kv#*=}" ;;
        balance) out="$out RINGPORT_URING_BALANCE=${kv#*=}" ;;
        inc) out="$out RINGPORT_URING_INC=${kv#*=}" ;;
        trim) out="$out RINGPORT_URING_TRIM=${kv#*=}" ;;
        *) return 1 ;;
        esac
    done
    echo "${out# }"
}

variant_dir() { # label -> its directory in VARIANT_DIRS (empty if none)
    local kv
    for kv in $VARIANT_DIRS; do
        [ "${kv%%=*}" = "$1" ] && echo "${kv#*=}" && return 0
    done
    return 0
}

server_cmd() { # family name -> command line (empty if its binary is missing)
    local base=${2%%~*} bin dir=$RP_DIR echo_bin=$RINGPORT_BIN
    if [[ $base == *@* ]]; then
        dir=$(variant_dir "${base#*@}")
        [ -n "$dir" ] || return 0
        echo_bin=$dir/echo_server
        base=${base%%@*}
    fi
    case $1 in
    echo) bin=$echo_bin ;;
    line) bin=$dir/line_server ;;
    packet) bin=$dir/packet_echo_server ;;
    esac
    case $1/$base in
    */ringport-uring) [ -x "$bin" ] && echo "env $(server_env "$2") $bin --listen 127.0.0.1:0 --backend uring" ;;
    */ringport-epoll) [ -x "$bin" ] && echo "$bin --listen 127.0.0.1:0 --backend epoll" ;;
    echo/tokio) [ -x "$BENCH_DIR/tokio_echo" ] && echo "$BENCH_DIR/tokio_echo --listen 127.0.0.1:0" ;;
    echo/monoio) [ -x "$BENCH_DIR/monoio_echo" ] && echo "$BENCH_DIR/monoio_echo --listen 127.0.0.1:0" ;;
    echo/std) [ -x "$BENCH_DIR/std_echo" ] && echo "$BENCH_DIR/std_echo --listen 127.0.0.1:0" ;;
    line/tokio-util) [ -x "$BENCH_DIR/tokio_lines" ] && echo "$BENCH_DIR/tokio_lines --listen 127.0.0.1:0" ;;
    packet/tokio-util) [ -x "$BENCH_DIR/tokio_packet" ] && echo "$BENCH_DIR/tokio_packet --listen 127.0.0.1:0" ;;
    *) return 1 ;;
    esac
}

servers_of() { # family -> the configured servers of that family
    if [ "$1" = echo ]; then echo "$SERVERS"; else echo "$FRAMED_SERVERS"; fi
}

active_servers() { # family -> the servers of that family whose binary exists
    local s out=""
    for s in $(servers_of "$1"); do
        [ -n "$(server_cmd "$1" "$s")" ] && out="$out $s"
    done
    echo "${out# }"
}

ACTIVE_ALL=""
for sc in $SCENARIOS; do
    fam=$(family "$sc")
    for s in $(servers_of "$fam"); do
        server_env "$s" >/dev/null || {
            log "server $s: unknown experiment switch (known: setup, recv, cq, ringfd, fixed, wait, balance, inc)"
            exit 2
        }
        if [ -z "$(server_cmd "$fam" "$s")" ]; then
            grep -qF -- "- server $s ($fam)" "$NOTES" || note "server $s ($fam): binary not found, skipped"
        elif [[ " $ACTIVE_ALL " != *" $s "* ]]; then
            ACTIVE_ALL="$ACTIVE_ALL $s"
        fi
    done
done
ACTIVE_ALL=${ACTIVE_ALL# }
[ -n "$ACTIVE_ALL" ] || {
    log "no server to benchmark"
    exit 1
}

# ---------------------------------------------------------------- running
PORT=""
start_server() { # family name -> sets SERVER_PID and PORT; fails if no listening line in 20 s
    local out=$WORK/server.out
    : >"$out"
    # `exec` so that SERVER_PID is the server itself (its /proc/PID/stat is read).
    # shellcheck disable=SC2046 # the command line is split on purpose
    (exec $(server_cmd "$1" "$2")) >"$out" 2>"$WORK/server.err" &
    SERVER_PID=$!
    PORT=""
    for _ in $(seq 200); do
        PORT=$(sed -n 's/^listening on .*:\([0-9][0-9]*\) (backend: .*)$/\1/p' "$out" | head -n1)
        [ -n "$PORT" ] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    note "server $2 did not print its listening line: $(head -c 300 "$WORK/server.err")"
    stop_server
    return 1
}

record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

# Extracts figures from the load client's JSON and records them.
record_json() { # scenario@client server round json-file exit-code [user-ticks sys-ticks run-secs]
    python3 - "$@" >>"$RESULTS" <<'EOF'
import json, os, sys
scenario, server, rnd, path, rc = sys.argv[1:6]
utime, stime, run_secs = (sys.argv[6:9] + [None] * 3)[:3]
try:
    d = json.load(open(path))
except Exception as e:
    print(f"{scenario}\t{server}\t{rnd}\tfailed\tbad JSON: {e}")
    sys.exit(1)
lat = d["latency_us"]
out = {
    "msgs": d["messages_per_sec"],
    "mbps": d["mb_per_sec_received"],
    "p50": lat["p50"],
    "p99": lat["p99"],
    "p999": lat["p999"],
    "errors": d["errors"],
}
cpu = ""
if utime is not None and d["messages_per_sec"]:
    # Server CPU per message, user and system time apart: the server's own cost, whatever
    # share of the cores the client took. Approximate: CPU over warm-up + run, messages at the
    # run's rate; clock ticks of 1/SC_CLK_TCK s.
    msgs = d["messages_per_sec"] * float(run_secs)
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    out["cpu_user_us"] = int(utime) * tick / msgs
    out["cpu_sys_us"] = int(stime) * tick / msgs
    out["cpu_us"] = out["cpu_user_us"] + out["cpu_sys_us"]
    cpu = (f", CPU {out['cpu_us']:.2f} us/msg (user {out['cpu_user_us']:.2f}, "
           f"sys {out['cpu_sys_us']:.2f})")
print(f"[compare]   {server}: {d['messages_per_sec']:,.0f} msg/s, p50 {lat['p50']} us, "
      f"p99 {lat['p99']} us, p99.9 {lat['p999']} us{cpu}, errors {d['errors']}", file=sys.stderr)
for k, v in out.items():
    print(f"{scenario}\t{server}\t{rnd}\t{k}\t{v}")
if d["errors"] or rc != "0" or (run_secs is not None and not d["messages"]):
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

scenario_args() { # scenario -> ringport-load mode and arguments
    case $1 in
    pp1) echo "echo -c 1 -l 128" ;;
    pp50) echo "echo -c 50 -l 128" ;;
    pp500) echo "echo -c 500 -l 128" ;;
    pp5000) echo "echo -c 5000 -l 128" ;;
    big50) echo "echo -c 50 -l 16384" ;;
    rss10k) echo "echo -c 10000 -l 64 -n 1" ;;
    line50) echo "line -c 50 -l 64" ;;
    line500) echo "line -c 500 -l 64" ;;
    line50p) echo "line -c 50 -l 64 --pipeline 16" ;;
    line500p) echo "line -c 500 -l 64 --pipeline 16" ;;
    packet50) echo "packet -c 50 -l 128" ;;
    packet500) echo "packet -c 500 -l 128" ;;
    packet50p) echo "packet -c 50 -l 128 --pipeline 16" ;;
    packet500p) echo "packet -c 500 -l 128 --pipeline 16" ;;
    *) return 1 ;;
    esac
}

# The servers in the order of one round: rotated by one each round, so that every server runs
# in every position (right after a given other server) equally often over ROUNDS = #servers.
rotated() { # round server...
    local r=$1 i out=""
    shift
    local list=("$@")
    for ((i = 0; i < ${#list[@]}; i++)); do
        out="$out ${list[$(((i + r - 1) % ${#list[@]}))]}"
    done
    echo "${out# }"
}

scenario_clients() { # scenario -> the client styles it runs under
    local c out=""
    for c in $CLIENTS; do
        case $1/$c in
        rss10k/blocking | *p/blocking) ;; # memory scenario; pipelining needs the event client
        *) out="$out $c" ;;
        esac
    done
    echo "${out# }"
}

cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat" 2>/dev/null || echo 0 0; }

# The server's threads' time waiting on a run queue (ns, schedstat's second field) and their
# involuntary context switches, summed over its threads.
sched_wait() {
    local ns nv
    ns=$(cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $2} END {print s + 0}')
    nv=$(cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^nonvoluntary_ctxt_switches/ {s += $2} END {print s + 0}')
    echo "$ns $nv"
}

run_throughput() { # scenario client server round
    local json=$WORK/load.json err=$WORK/load.err rc u0 s0 u1 s1 q0 n0 q1 n1 secs
    read -r u0 s0 <<<"$(cpu_ticks "$SERVER_PID")"
    read -r q0 n0 <<<"$(sched_wait "$SERVER_PID")"
    # shellcheck disable=SC2046
    run_load "$json" "$err" "$(awk "BEGIN { print $DURATION + $WARMUP + 120 }")" \
        $(scenario_args "$1") --client "$2" --target "127.0.0.1:$PORT" \
        -d "$DURATION" --warmup "$WARMUP"
    wait "$LOAD_PID"
    rc=$?
    LOAD_PID=""
    read -r u1 s1 <<<"$(cpu_ticks "$SERVER_PID")"
    read -r q1 n1 <<<"$(sched_wait "$SERVER_PID")"
    secs=$(awk "BEGIN { print $DURATION + $WARMUP }")
    record_json "$1@$2" "$3" "$4" "$json" "$rc" "$((u1 - u0))" "$((s1 - s0))" "$secs" ||
        log "  $3: no result (exit $rc): $(tail -c 300 "$err")"
    record "$1@$2" "$3" "$4" runq_ms "$(awk "BEGIN { print ($q1 - $q0) / 1e6 / $secs }")"
    record "$1@$2" "$3" "$4" nvcsw "$(awk "BEGIN { print ($n1 - $n0) / $secs }")"
}

run_rss() { # scenario server round
    local json=$WORK/load.json err=$WORK/load.err rc idle busy key=$1@event
    sleep 0.3
    idle=$(rss_kib "$SERVER_PID")
    # shellcheck disable=SC2046
    run_load "$json" "$err" "$(awk "BEGIN { print $HOLD + 180 }")" \
        $(scenario_args "$1") --target "127.0.0.1:$PORT" --hold "$HOLD"
    busy=""
    for _ in $(seq 1200); do # up to 120 s for the connect storm
        if grep -q "holding connections open" "$err" 2>/dev/null; then
            sleep "$SETTLE"
            busy=$(rss_kib "$SERVER_PID")
            break
        fi
        kill -0 "$LOAD_PID" 2>/dev/null || break
        sleep 0.1
    done
    wait "$LOAD_PID"
    rc=$?
    LOAD_PID=""
    record_json "$key" "$2" "$3" "$json" "$rc"
    if [ -n "$idle" ] && [ -n "$busy" ]; then
        record "$key" "$2" "$3" rss_idle_kib "$idle"
        record "$key" "$2" "$3" rss_conns_kib "$busy"
        record "$key" "$2" "$3" kib_per_conn "$(python3 -c "print(($busy - $idle) / 10000)")"
        log "  $2: idle ${idle} KiB, with 10k conns ${busy} KiB, $(python3 -c "print(round(($busy - $idle) / 10000, 2))") KiB/conn"
    else
        record "$key" "$2" "$3" failed "could not read RSS (exit $rc): $(tail -c 200 "$err")"
        log "  $2: could not read RSS (exit $rc)"
    fi
}

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
log "servers: $ACTIVE_ALL; scenarios: $SCENARIOS; clients: $CLIENTS; rounds: $ROUNDS; load average now: $LOADAVG"
for scenario in $SCENARIOS; do
    scenario_args "$scenario" >/dev/null || {
        note "unknown scenario $scenario skipped"
        continue
    }
    fam=$(family "$scenario")
    for client in $(scenario_clients "$scenario"); do
        for round in $(seq "$ROUNDS"); do
            log "$scenario, $client client: round $round/$ROUNDS"
            for server in $(rotated "$round" $(active_servers "$fam")); do
                start_server "$fam" "$server" || {
                    record "$scenario@$client" "$server" "$round" failed "server did not start"
                    continue
                }
                if [ "$scenario" = rss10k ]; then
                    run_rss "$scenario" "$server" "$round"
                else
                    run_throughput "$scenario" "$client" "$server" "$round"
                fi
                if ! kill -0 "$SERVER_PID" 2>/dev/null; then
                    note "server $server died during $scenario ($client client) round $round: $(tail -c 300 "$WORK/server.err")"
                    record "$scenario@$client" "$server" "$round" failed "server died"
                fi
                stop_server
                if [ -n "$TRACE_DIR" ] && [[ $server == ringport* ]]; then
                    mkdir -p "$TRACE_DIR"
                    cp "$WORK/server.err" "$TRACE_DIR/$scenario-$client-$server-r$round.err"
                fi
            done
        done
    done
done
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
MACHINE="$(nproc) cores ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM"
KERNEL=$(uname -r)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')

TABLE=$WORK/table.md
python3 - "$RESULTS" "$SERVERS" "$FRAMED_SERVERS" "$ACTIVE_ALL" "$SCENARIOS" "$CLIENTS" "$NOTES" "$BASELINE" "$PAIRS" >"$TABLE" <<'EOF'
import sys, statistics
from collections import defaultdict

(results, echo_servers, framed_servers, active_all, scenarios, clients, notes_path,
 baseline, extra_pairs) = sys.argv[1:10]
extra_pairs = [tuple(p.split("/", 1)) for p in extra_pairs.split() if "/" in p]
active_all = set(active_all.split())
scenarios, clients = scenarios.split(), clients.split()
vals = defaultdict(list)          # (scenario@client, server, metric) -> [float]
failures = defaultdict(list)      # (scenario@client, server) -> [str]
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
    "line50": "ECHO 64 B, 50 conns",
    "line500": "ECHO 64 B, 500 conns",
    "line50p": "ECHO 64 B, 50 conns, 16 in flight",
    "line500p": "ECHO 64 B, 500 conns, 16 in flight",
    "packet50": "128 B frames, 50 conns",
    "packet500": "128 B frames, 500 conns",
    "packet50p": "128 B frames, 50 conns, 16 in flight",
    "packet500p": "128 B frames, 500 conns, 16 in flight",
}
families = [
    ("echo", "echo_server vs tokio / monoio echo servers", echo_servers.split()),
    ("line", "line_server vs tokio-util `Framed` + `LinesCodec`", framed_servers.split()),
    ("packet", "packet_echo_server vs tokio-util `Framed` + `LengthDelimitedCodec`",
     framed_servers.split()),
]
def family(sc):
    return "line" if sc.startswith("line") else "packet" if sc.startswith("packet") else "echo"

cpu = [("cpu_us", "server CPU us/msg", 2), ("cpu_user_us", "  user us/msg", 2),
       ("cpu_sys_us", "  system us/msg", 2)]
metrics = {
    "rss10k": [("kib_per_conn", "server RSS KiB/conn", 2), ("rss_conns_kib", "server RSS with conns, MiB", -1),
               ("rss_idle_kib", "server RSS idle, MiB", -1)],
    "big50": [("msgs", "msg/s", 0), ("mbps", "MB/s echoed", 1)] + cpu + [("p50", "p50 us", 1), ("p99", "p99 us", 1)],
}
sched = [("runq_ms", "server run-queue wait ms/s", 1), ("nvcsw", "server preemptions /s", 0)]
default_metrics = [("msgs", "msg/s", 0)] + cpu + [("p50", "p50 us", 1), ("p99", "p99 us", 1),
                   ("p999", "p99.9 us", 1)] + sched
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

def client_list(sc):
    if sc == "rss10k":
        return ["event"] if "event" in clients else []
    return [c for c in clients if not (sc.endswith("p") and c == "blocking")]

first = True
for fam, heading, servers in families:
    fam_scen = [sc for sc in scenarios if sc in titles and family(sc) == fam]
    active = [s for s in servers if s in active_all]
    if not fam_scen or not active:
        continue
    if baseline and baseline in active:
        pairs = [(s, baseline) for s in active if s != baseline]
    else:
        ringports = [s for s in active if s.startswith("ringport")]
        peers = [s for s in active if not s.startswith("ringport")]
        pairs = [(r, p) for r in ringports for p in peers]
    pairs += [(a, b) for a, b in extra_pairs if a in active and b in active and (a, b) not in pairs]
    if not first:
        print()
    first = False
    print(f"### {heading}")
    print()
    head = ["scenario", "client", "metric"] + active + [f"{short(a)}/{short(b)}" for a, b in pairs]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
    for sc in fam_scen:
        for cl in client_list(sc):
            key = f"{sc}@{cl}"
            for metric, label, digits in metrics.get(sc, default_metrics):
                row = [titles[sc], cl, label]
                med = {}
                for sv in active:
                    m = median((key, sv, metric))
                    med[sv] = m
                    cell = fmt(m, digits)
                    if failures.get((key, sv)):
                        cell += " (!)"
                    row.append(cell)
                for a, b in pairs:
                    x, y = med.get(a), med.get(b)
                    row.append(f"{x / y:.2f}x" if x is not None and y else "-")
                print("| " + " | ".join(row) + " |")

print()
print("Medians of the rounds. Ratios: above 1 is better for msg/s and MB/s, below 1 is better "
      "for CPU, latency and RSS. Server CPU per message is the server process's user + system "
      "time (from /proc/PID/stat) over the warm-up and the run, divided by the messages at the "
      "run's rate. Latency is measured by the client from each message's send to its verified "
      "reply. Clients: `event` = ringport-load's event loops (2 threads, many connections each); "
      "`blocking` = a thread per connection, one message in flight (rust_echo_bench style). "
      "RSS is the server's VmRSS (user-space memory; kernel socket buffers are not included); "
      "KiB/conn = (RSS with the 10k connections open - RSS idle before) / 10000. "
      "Run-queue wait: milliseconds per second that the server's threads spent runnable but "
      "not running (/proc/PID/task/*/schedstat), over warm-up and run; preemptions: their "
      "involuntary context switches per second.")
fails = [(k, v) for k, v in failures.items() if v]
extra = open(notes_path).read().strip()
if fails or extra:
    print()
    print("Notes:")
    if extra:
        print(extra)
    for (sc, sv), msgs in sorted(fails):
        name, _, cl = sc.partition("@")
        for m in msgs:
            print(f"- (!) {sv}, {titles.get(name, name)} ({cl} client), {m}")
EOF

if [ -n "$SECTION" ]; then
    BEGIN_MARK="<!-- compare.sh begin $SECTION -->"
    END_MARK="<!-- compare.sh end $SECTION -->"
    HEADING="## bench/compare.sh: $SECTION"
else
    BEGIN_MARK="<!-- compare.sh begin -->"
    END_MARK="<!-- compare.sh end -->"
    HEADING="## Server comparison (both client styles)"
fi
SECTION_MD=$WORK/section.md
{
    echo "$BEGIN_MARK"
    echo "$HEADING"
    echo
    echo "- Date: $DATE"
    echo "- Machine: $MACHINE; load average at start: $LOADAVG, at end: $LOADAVG_END"
    echo "- Kernel: $KERNEL"
    echo "- Command: \`$COMMAND\` (${DURATION} s per run after ${WARMUP} s warm-up, $ROUNDS round(s), servers interleaved)"
    echo "- Client and servers run on the same machine and share its $(nproc) cores (the event client uses $(nproc) threads, the blocking client one per connection; each server its default thread count), over loopback: figures compare servers under identical conditions, not absolute capacity."
    echo
    cat "$TABLE"
    echo "$END_MARK"
} >"$SECTION_MD"

echo
cat "$TABLE"

python3 - "$BENCH_MD" "$SECTION_MD" "$BEGIN_MARK" "$END_MARK" <<'EOF'
import os, sys
path, section, begin, end = sys.argv[1], open(sys.argv[2]).read().rstrip("\n") + "\n", sys.argv[3], sys.argv[4]
if os.path.exists(path):
    text = open(path).read()
else:
    text = ("# Benchmarks\n\n"
            "Throughput, latency and memory of ringport's example servers against peers built "
            "on tokio, tokio-util and monoio, measured with `ringport-load` (`load/`). The "
            "sections between compare.sh markers are rewritten by `bench/compare.sh`.\n\n")
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
