#!/usr/bin/env bash
# User-space instructions per message (valgrind --tool=callgrind) of echo_server alone and of
# tcp_proxy in front of it, on a fixed transfer: `ringport-load echo -c CONNS -l LEN -n MSGS`.
# The epoll backend (valgrind does not follow io_uring's shared rings), one IO thread.
#
#   bench/proxy_callgrind.sh                   # 10 conns x 64 KiB x 30 messages
#   LEN=128 MSGS=500 bench/proxy_callgrind.sh
#
# Prints instructions per message and the top functions; raw callgrind files to OUT_DIR.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."
CONNS=${CONNS:-10} LEN=${LEN:-65536} MSGS=${MSGS:-30}
BIN=${BIN_DIR:-target/release/examples}
OUT_DIR=${OUT_DIR:-bench/results/callgrind-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT_DIR"
total=$((CONNS * MSGS))

addr_of() { listening_addr "$1" 300; }

profile() { # label, then the profiled command (its upstream already in it, if any)
  local label=$1; shift
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT_DIR/$label.callgrind" "$@" \
    --listen 127.0.0.1:0 --backend epoll --io-threads 1 >"$OUT_DIR/$label.out" 2>"$OUT_DIR/$label.err" &
  local pid=$!
  local addr; addr=$(addr_of "$OUT_DIR/$label.out")
  # Start-up and a warm-up (pools) are not counted: collection starts after them.
  target/release/ringport-load echo --target "$addr" -c "$CONNS" -l "$LEN" -n 2 >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  target/release/ringport-load echo --target "$addr" -c "$CONNS" -l "$LEN" -n "$MSGS" >/dev/null
  kill -INT "$pid"; wait "$pid" || true
  local f="$OUT_DIR/$label.callgrind" # the measured transfer (and the shutdown)
  local ir; ir=$(callgrind_annotate "$f" 2>/dev/null | sed -n 's/^\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
  echo "| $label | $((ir / total)) |"
  callgrind_annotate --inclusive=no "$f" 2>/dev/null | sed -n '/file:function/,$p' | sed -n 2,12p >"$OUT_DIR/$label.top"
}

target/release/examples/echo_server --listen 127.0.0.1:0 --backend epoll >"$OUT_DIR/echo.out" 2>/dev/null &
echo_pid=$!
echo_addr=$(addr_of "$OUT_DIR/echo.out")
echo "$CONNS conns x $LEN B x $MSGS messages ($total), epoll, 1 IO thread; raw: $OUT_DIR"
echo "| profiled | instructions per message (user space) |"
echo "|---|---|"
profile echo_server "$BIN/echo_server"
profile tcp_proxy "$BIN/tcp_proxy" --upstream "$echo_addr"
kill "$echo_pid"; wait "$echo_pid" 2>/dev/null || true
for l in echo_server tcp_proxy; do echo "## $l"; cat "$OUT_DIR/$l.top"; done
