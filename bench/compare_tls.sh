#!/usr/bin/env bash
# TLS comparison: ringport's echo_server with --tls-cert/--tls-key (io_uring and
# epoll) against the tokio-rustls peer (bench/src/bin/tokio_rustls_echo.rs), the
# same client (ringport-load --tls --insecure), servers interleaved per round.
#
#   bench/compare_tls.sh                      # 3 rounds, 5 s per run
#   ROUNDS=1 DURATION=3 CONNS_IDLE=2000 bench/compare_tls.sh
#   SCENARIOS="echo50 hs50" SERVERS="ringport-uring@path/to/old/echo_server ringport-uring tokio-rustls" \
#       RAW=bench/results/x.tsv bench/compare_tls.sh     # A/B of two builds, raw rows kept
#
# Scenarios (each figure is the median over the rounds):
#   echo50  1 KiB echo, 50 connections, pipeline 1: msg/s and server CPU us/msg
#   hs50    a new connection (TLS 1.3 handshake; the client resumes sessions when the
#           server issues tickets) per request, 50 at once: handshakes/s and server CPU us/hs
#   idle    CONNS_IDLE idle TLS connections (handshake done, one 16-byte echo each):
#           server RSS growth per connection, in KiB
# Prints a markdown table on stdout; progress on stderr. NO_BUILD=1 skips cargo.
# PIN=1: the server runs on CPU 0 with one thread (ringport `--io-threads 1`, tokio one worker),
# the client on CPU 1 with one thread (`taskset`), so that neither takes the other's core: the
# rates mean something on a 2-core machine, where unpinned they swing 0.15-1.9x per round.
set -uo pipefail
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS_IDLE=${CONNS_IDLE:-10000}
HOLD=${HOLD:-3}
# Seconds into the hold the idle RSS is read (io_uring gives a quiet ring's pages back 100 ms
# after the last receive: RINGPORT_URING_TRIM).
SETTLE=${SETTLE:-1}
SERVERS=${SERVERS:-"ringport-uring ringport-epoll tokio-rustls"}
SCENARIOS=${SCENARIOS:-"echo50 hs50 idle"}
SRV=() CLI=() ONE=() TOKIO_ONE=() CLIENT_THREADS=2
if [ "${PIN:-0}" = 1 ]; then
    SRV=(taskset -c 0) CLI=(taskset -c 1) ONE=(--io-threads 1) TOKIO_ONE=(--threads 1) CLIENT_THREADS=1
fi
has() { case " $SCENARIOS " in *" $1 "*) return 0 ;; esac; return 1; }
REL=$ROOT/target/release
WORK=$(mktemp -d /tmp/ringport-tls-bench.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
log() { printf '[tls-bench] %s\n' "$*" >&2; }

if [ -z "${NO_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release --example echo_server &&
        cargo build --release -p ringport-load -p ringport-bench --bin ringport-load --bin tokio_rustls_echo) >&2 ||
        { echo "compare_tls: build failed" >&2; exit 1; }
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null ||
    { echo "compare_tls: openssl req failed" >&2; exit 1; }
TLS=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem")

start() { # server[@echo_server binary] -> sets PID and ADDR
    local out=$WORK/server.out bin=$REL/examples/echo_server
    : >"$out"
    case $1 in *@*) bin=${1#*@} ;; esac
    case ${1%%@*} in
    ringport-uring) "${SRV[@]}" "$bin" --listen 127.0.0.1:0 --backend uring "${ONE[@]}" "${TLS[@]}" >"$out" 2>/dev/null & ;;
    ringport-epoll) "${SRV[@]}" "$bin" --listen 127.0.0.1:0 --backend epoll "${ONE[@]}" "${TLS[@]}" >"$out" 2>/dev/null & ;;
    tokio-rustls) "${SRV[@]}" "$REL/tokio_rustls_echo" --listen 127.0.0.1:0 "${TOKIO_ONE[@]}" "${TLS[@]}" >"$out" 2>/dev/null & ;;
    esac
    PID=$!
    for _ in $(seq 200); do
        ADDR=$(sed -n 's/^listening on \([^ ]*\) .*/\1/p' "$out")
        [ -n "$ADDR" ] && return 0
        sleep 0.05
    done
    echo "compare_tls: $1 did not start" >&2
    exit 1
}
stop() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; PID=""; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
load() { "${CLI[@]}" "$REL/ringport-load" "$@" --tls --insecure --json --threads "$CLIENT_THREADS"; }
HZ=$(getconf CLK_TCK)

RES=$WORK/results.tsv
: >"$RES"
for round in $(seq "$ROUNDS"); do
    for s in $SERVERS; do
        log "round $round: $s"
        if has echo50 || has hs50; then
        start "$s"
        fi
        if has echo50; then
        c0=$(cpu_ticks "$PID")
        j=$(load echo --target "$ADDR" -c 50 -l 1024 -d "$DURATION" --warmup 1)
        c1=$(cpu_ticks "$PID")
        m=$(echo "$j" | json "['messages']")
        mps=$(echo "$j" | json "['messages_per_sec']")
        printf 'echo50\t%s\tmsg/s\t%s\n' "$s" "$mps" >>"$RES"
        printf 'echo50\t%s\tcpu_us_per_msg\t%s\n' "$s" "$(python3 -c "print(round(($c1-$c0)/$HZ*1e6/max($m,1),2))")" >>"$RES"
        fi
        if has hs50; then
        c0=$(cpu_ticks "$PID")
        j=$(load echo --target "$ADDR" -c 50 -l 16 -d "$DURATION" --reconnect-every 1)
        c1=$(cpu_ticks "$PID")
        h=$(echo "$j" | json "['handshakes']")
        printf 'hs50\t%s\thandshakes/s\t%s\n' "$s" "$(echo "$j" | json "['handshakes_per_sec']")" >>"$RES"
        printf 'hs50\t%s\tcpu_us_per_hs\t%s\n' "$s" "$(python3 -c "print(round(($c1-$c0)/$HZ*1e6/max($h,1),2))")" >>"$RES"
        fi
        stop
        has idle || continue
        start "$s"
        r0=$(rss_kib "$PID")
        # A fresh log: the wait below must not find the previous run's "holding" (a race that
        # gave a 0.0 KiB sample: the background job truncates the file only once it runs).
        : >"$WORK/idle.err"
        "$REL/ringport-load" echo --target "$ADDR" -c "$CONNS_IDLE" -l 16 -n 1 --hold "$HOLD" \
            --tls --insecure --json --threads 2 >"$WORK/idle.json" 2>"$WORK/idle.err" &
        lp=$!
        for _ in $(seq 600); do grep -q "holding" "$WORK/idle.err" && break; sleep 0.1; done
        sleep "$SETTLE" # idle memory: read once the connections have been idle a moment
        r1=$(rss_kib "$PID")
        wait "$lp"
        open=$(json "['connections_open_at_end']" <"$WORK/idle.json")
        printf 'idle\t%s\tKiB/conn\t%s\n' "$s" "$(python3 -c "print(round(($r1-$r0)/max($open,1),2))")" >>"$RES"
        printf 'idle\t%s\topen\t%s\n' "$s" "$open" >>"$RES"
        stop
    done
done

[ -n "${RAW:-}" ] && cp "$RES" "$RAW"
python3 - "$RES" "$SERVERS" <<'PY'
import statistics, sys
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1]) if l.strip()]
servers = sys.argv[2].split()
metrics = [('echo50', 'msg/s'), ('echo50', 'cpu_us_per_msg'), ('hs50', 'handshakes/s'),
           ('hs50', 'cpu_us_per_hs'),
           ('idle', 'KiB/conn'), ('idle', 'open')]
print('| scenario | metric | ' + ' | '.join(servers) + ' |')
print('|---|---|' + '---|' * len(servers))
for sc, m in metrics:
    cells = []
    for s in servers:
        v = [float(r[3]) for r in rows if r[0] == sc and r[1] == s and r[2] == m]
        cells.append('%g' % round(statistics.median(v), 2) if v else '-')
    print(f'| {sc} | {m} | ' + ' | '.join(cells) + ' |')
PY
