#!/usr/bin/env bash
# Memory-leak soak for large_packet_echo_server (the classic large-packet sample leaked).
#
#   bench/soak_large_packet.sh                      # 60 s per backend, uring then epoll
#   SOAK_SECS=20 BACKENDS=epoll bench/soak_large_packet.sh
#
# Per backend: start large_packet_echo_server (defaults: --io-buffer 1024, --max-frame 65536)
# on 127.0.0.1:0, then run two ringport-load clients in packet mode at the same time for
# SOAK_SECS: CONNS_EACH connections with SMALL_LEN-byte payloads (echoed on the IO threads)
# and CONNS_EACH with LARGE_LEN-byte payloads (transfer buffers + worker pool). The server's
# VmRSS (/proc/PID/status) is sampled every INTERVAL seconds from the clients' start.
# Reported: the table of samples, start (the first sample, after INTERVAL s of warm-up),
# max, end (the last sample taken while the clients ran) and the growth from the 10 s
# sample to the end, plus one sample after the clients closed their connections.
#
# Environment:
#   SOAK_SECS=60          load duration per backend (seconds)
#   BACKENDS="uring epoll"
#   CONNS_EACH=50         connections per client (two clients)
#   SMALL_LEN=200         payload bytes of the small-frame client
#   LARGE_LEN=30000       payload bytes of the large-frame client
#   PIPELINE=1            messages outstanding per connection (both clients)
#   INTERVAL=5            seconds between RSS samples
#   MAX_GROWTH_PCT=10     fail if RSS grows more than this from the 10 s sample to the end
#   NO_BUILD=1            skip `cargo build --release --examples --bins`
#   SERVER_BIN=, LOAD_BIN= override the binaries (default: target/release/...)
#
# Markdown (commands, tables, verdicts) goes to stdout; progress goes to stderr.
# Exit status: 0 if every backend passed; 1 if any client reported errors or failed, the
# RSS grew more than MAX_GROWTH_PCT, or the server died or did not exit 0 on SIGTERM;
# 2 on a setup error. All load stays on loopback; every process started is stopped on exit.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
SOAK_SECS=${SOAK_SECS:-60}
BACKENDS=${BACKENDS:-"uring epoll"}
CONNS_EACH=${CONNS_EACH:-50}
SMALL_LEN=${SMALL_LEN:-200}
LARGE_LEN=${LARGE_LEN:-30000}
PIPELINE=${PIPELINE:-1}
INTERVAL=${INTERVAL:-5}
MAX_GROWTH_PCT=${MAX_GROWTH_PCT:-10}
SERVER_BIN=${SERVER_BIN:-$ROOT/target/release/examples/large_packet_echo_server}
LOAD_BIN=${LOAD_BIN:-$ROOT/target/release/ringport-load}

log() { printf '[soak] %s\n' "$*" >&2; }

WORK=$(mktemp -d /tmp/ringport-soak.XXXXXX)
SERVER_PID=""
CLIENT_PIDS=()

stop_server() {
    local pid=$SERVER_PID
    SERVER_PID=""
    stop_pid "$pid" 10 || log "server $pid still running 10 s after SIGTERM; killed it"
}
# shellcheck disable=SC2329 # invoked by the EXIT trap
cleanup() {
    local pid
    for pid in "${CLIENT_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

cd "$ROOT"
if [ -z "${NO_BUILD:-}" ]; then
    log "building: cargo build --release --examples --bins"
    cargo build --release --examples --bins >&2 || {
        log "build failed"
        exit 2
    }
fi
for bin in "$SERVER_BIN" "$LOAD_BIN"; do
    [ -x "$bin" ] || {
        log "missing binary: $bin"
        exit 2
    }
done

hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }
now_ms() { # wall-clock milliseconds (bash 5 EPOCHREALTIME)
    local t=${EPOCHREALTIME/[.,]/}
    echo $((t / 1000))
}
any_alive() {
    local pid
    for pid in "$@"; do
        kill -0 "$pid" 2>/dev/null && return 0
    done
    return 1
}
# "errors msgs/s p50 p99 max" from a client's --json output ("- - - - -" if unreadable).
client_summary() {
    python3 - "$1" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    lat = d["latency_us"]
    print(d["errors"], round(d["messages_per_sec"]), lat["p50"], lat["p99"], lat["max"])
except Exception:
    print("- - - - -")
EOF
}

rel_server=${SERVER_BIN#"$ROOT"/}
rel_load=${LOAD_BIN#"$ROOT"/}
OVERALL=0

echo "## large_packet_echo_server soak"
echo
echo "Script: \`SOAK_SECS=$SOAK_SECS BACKENDS=\"$BACKENDS\" bench/soak_large_packet.sh\`" \
    "(CONNS_EACH=$CONNS_EACH SMALL_LEN=$SMALL_LEN LARGE_LEN=$LARGE_LEN PIPELINE=$PIPELINE" \
    "INTERVAL=$INTERVAL MAX_GROWTH_PCT=$MAX_GROWTH_PCT)"
echo

for backend in $BACKENDS; do
    out=$WORK/$backend.server.out
    err=$WORK/$backend.server.err
    server_cmd=("$SERVER_BIN" --listen 127.0.0.1:0 --backend "$backend")
    echo "### backend: $backend"
    echo
    echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (nproc $(nproc))"
    log "[$backend] starting server"
    "${server_cmd[@]}" >"$out" 2>"$err" &
    SERVER_PID=$!
    port=""
    for _ in $(seq 200); do
        port=$(sed -n 's/^listening on .*:\([0-9][0-9]*\) (backend: .*)$/\1/p' "$out" | head -n1)
        [ -n "$port" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$port" ]; then
        echo "- **FAIL**: the server printed no listening line; stderr tail:"
        echo
        echo '```'
        tail -n 20 "$err"
        echo '```'
        echo
        stop_server
        OVERALL=1
        continue
    fi
    small_cmd=("$LOAD_BIN" packet --target "127.0.0.1:$port" -c "$CONNS_EACH" -l "$SMALL_LEN"
        -d "$SOAK_SECS" --pipeline "$PIPELINE" --json)
    large_cmd=("$LOAD_BIN" packet --target "127.0.0.1:$port" -c "$CONNS_EACH" -l "$LARGE_LEN"
        -d "$SOAK_SECS" --pipeline "$PIPELINE" --json)
    echo "- server: \`${rel_server} --listen 127.0.0.1:0 --backend $backend\` (pid $SERVER_PID, port $port)"
    echo "- small:  \`${rel_load} ${small_cmd[*]:1}\`"
    echo "- large:  \`${rel_load} ${large_cmd[*]:1}\`"
    echo

    "${small_cmd[@]}" >"$WORK/$backend.small.json" 2>"$WORK/$backend.small.err" &
    small_pid=$!
    "${large_cmd[@]}" >"$WORK/$backend.large.json" 2>"$WORK/$backend.large.err" &
    large_pid=$!
    CLIENT_PIDS=("$small_pid" "$large_pid")
    t0=$(now_ms)
    log "[$backend] clients started (pids $small_pid $large_pid), sampling RSS every ${INTERVAL}s"

    # Samples at INTERVAL, 2*INTERVAL, ... up to SOAK_SECS, while the clients run.
    samples=() # "t rss"
    server_died=0
    t=$INTERVAL
    while [ "$t" -le "$SOAK_SECS" ]; do
        wait_ms=$((t0 + t * 1000 - $(now_ms)))
        if [ "$wait_ms" -gt 0 ]; then
            sleep "$((wait_ms / 1000)).$(printf '%03d' $((wait_ms % 1000)))"
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            server_died=1
            log "[$backend] server died at t=${t}s"
            break
        fi
        if ! any_alive "$small_pid" "$large_pid"; then
            log "[$backend] clients finished before t=${t}s"
            break
        fi
        rss=$(rss_kib "$SERVER_PID")
        samples+=("$t $rss")
        log "[$backend] t=${t}s RSS ${rss} KiB"
        t=$((t + INTERVAL))
    done

    small_rc=0
    large_rc=0
    wait "$small_pid" || small_rc=$?
    wait "$large_pid" || large_rc=$?
    CLIENT_PIDS=()
    post_rss=""
    hwm=""
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        sleep 2 # let the server close the connections the clients dropped
        post_rss=$(rss_kib "$SERVER_PID")
        hwm=$(hwm_kib "$SERVER_PID")
    else
        server_died=1
    fi

    # Graceful stop: SIGTERM must end the server with status 0.
    server_rc=""
    if [ "$server_died" = 0 ]; then
        pid=$SERVER_PID
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
            server_rc="killed (no exit 10 s after SIGTERM)"
        fi
        rc=0
        wait "$pid" || rc=$?
        [ -n "$server_rc" ] || server_rc=$rc
        SERVER_PID=""
    else
        rc=0
        wait "$SERVER_PID" || rc=$?
        server_rc="died during the soak (status $rc)"
        SERVER_PID=""
    fi

    # ---- report
    echo "| t (s) | server RSS (KiB) |"
    echo "|---:|---:|"
    rss10=""
    start=""
    end=""
    max=0
    for s in "${samples[@]}"; do
        read -r st sr <<<"$s"
        echo "| $st | $sr |"
        [ -n "$start" ] || start=$sr
        [ "$st" = 10 ] && rss10=$sr
        end=$sr
        [ "$sr" -gt "$max" ] && max=$sr
    done
    [ -z "$post_rss" ] || echo "| after load (+2 s) | $post_rss |"
    echo

    fail_reasons=()
    read -r s_err s_mps s_p50 s_p99 s_max <<<"$(client_summary "$WORK/$backend.small.json")"
    read -r l_err l_mps l_p50 l_p99 l_max <<<"$(client_summary "$WORK/$backend.large.json")"
    echo "| client | exit | errors | msg/s | p50 (us) | p99 (us) | max (us) |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    echo "| ${CONNS_EACH} conns x ${SMALL_LEN} B | $small_rc | $s_err | $s_mps | $s_p50 | $s_p99 | $s_max |"
    echo "| ${CONNS_EACH} conns x ${LARGE_LEN} B | $large_rc | $l_err | $l_mps | $l_p50 | $l_p99 | $l_max |"
    echo
    [ "$small_rc" = 0 ] || fail_reasons+=("small client exited $small_rc")
    [ "$large_rc" = 0 ] || fail_reasons+=("large client exited $large_rc")
    [ "$s_err" = 0 ] || fail_reasons+=("small client errors: $s_err")
    [ "$l_err" = 0 ] || fail_reasons+=("large client errors: $l_err")
    [ "$server_rc" = 0 ] || fail_reasons+=("server exit on SIGTERM: $server_rc")

    if [ -n "$rss10" ] && [ -n "$end" ]; then
        growth=$(awk -v a="$rss10" -v b="$end" 'BEGIN { printf "%.1f", (b - a) * 100 / a }')
        echo "- RSS start (t=${INTERVAL}s) $start KiB, max $max KiB, end $end KiB;" \
            "growth 10 s -> end: $((end - rss10)) KiB (${growth}%; limit ${MAX_GROWTH_PCT}%)"
        [ -z "$hwm" ] || echo "- VmHWM (peak RSS) $hwm KiB; after load $post_rss KiB"
        if awk -v g="$growth" -v m="$MAX_GROWTH_PCT" 'BEGIN { exit !(g > m) }'; then
            fail_reasons+=("RSS grew ${growth}% from the 10 s sample to the end")
        fi
    else
        fail_reasons+=("too few RSS samples (need the 10 s sample and a later one)")
    fi

    if [ "${#fail_reasons[@]}" -eq 0 ]; then
        echo "- **PASS** (server exit status on SIGTERM: 0)"
        echo
    else
        OVERALL=1
        echo "- **FAIL**: $(printf '%s; ' "${fail_reasons[@]}")"
        for side in small large; do
            if [ -s "$WORK/$backend.$side.err" ]; then
                echo "- $side client stderr tail:"
                echo
                echo '```'
                tail -n 10 "$WORK/$backend.$side.err"
                echo '```'
            fi
        done
        echo "- server stderr tail:"
        echo
        echo '```'
        tail -n 30 "$err"
        echo '```'
        echo
    fi
    log "[$backend] done: ${#fail_reasons[@]} problem(s)"
done

exit "$OVERALL"
