#!/usr/bin/env bash
# System calls (strace -c -f) per message of echo_server alone, and of tcp_proxy and the
# fwd_proxy references in front of it, on a fixed transfer:
# `ringport-load echo -c CONNS -l LEN -n MSGS` (every connection sends MSGS messages).
#
#   bench/proxy_syscalls.sh                    # uring, 10 conns x 64 KiB x 200 messages
#   BACKEND=epoll LEN=128 MSGS=2000 bench/proxy_syscalls.sh
#   REFS="copy splice" bench/proxy_syscalls.sh # fwd_proxy modes to trace as well
#
# Prints, per traced process, the calls per message and the top calls; the raw strace
# summaries go to OUT_DIR (default bench/results/syscalls-<date>/).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."
BACKEND=${BACKEND:-uring} CONNS=${CONNS:-10} LEN=${LEN:-65536} MSGS=${MSGS:-200}
REFS=${REFS:-} PROXY_ENV=${PROXY_ENV:-}
BIN=${BIN_DIR:-target/release/examples}
OUT_DIR=${OUT_DIR:-bench/results/syscalls-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT_DIR"
total=$((CONNS * MSGS))

addr_of() { listening_addr "$1" 100; } # wait for the "listening on ADDR " line in $1

run() { # label, then the command of the traced forwarder (or "" for echo_server alone)
  local label=$1; shift
  target/release/examples/echo_server --listen 127.0.0.1:0 --backend "$BACKEND" \
    >"$OUT_DIR/echo.out" 2>/dev/null &
  local echo_pid=$!
  local echo_addr; echo_addr=$(addr_of "$OUT_DIR/echo.out")
  local traced_pid target
  if [ "$label" = direct ]; then
    kill "$echo_pid"; wait "$echo_pid" 2>/dev/null || true
    strace -c -f -o "$OUT_DIR/$label.strace" target/release/examples/echo_server \
      --listen 127.0.0.1:0 --backend "$BACKEND" >"$OUT_DIR/echo.out" 2>/dev/null &
    traced_pid=$!; echo_pid=
    target=$(addr_of "$OUT_DIR/echo.out")
  else
    strace -c -f -o "$OUT_DIR/$label.strace" env $PROXY_ENV "$@" --upstream "$echo_addr" \
      --listen 127.0.0.1:0 --backend "$BACKEND" >"$OUT_DIR/$label.out" 2>/dev/null &
    traced_pid=$!
    target=$(addr_of "$OUT_DIR/$label.out")
  fi
  target/release/ringport-load echo --target "$target" -c "$CONNS" -l "$LEN" -n "$MSGS" --json \
    >"$OUT_DIR/$label.load.json"
  kill -INT $(pgrep -P "$traced_pid") 2>/dev/null || true # ringport: a graceful stop
  sleep 0.5; kill -TERM $(pgrep -P "$traced_pid") 2>/dev/null || true # fwd_proxy (INT is ignored in a background job)
  wait "$traced_pid" 2>/dev/null || true
  [ -n "$echo_pid" ] && { kill "$echo_pid"; wait "$echo_pid" 2>/dev/null || true; }
  python3 - "$OUT_DIR/$label.strace" "$label" "$total" <<'PY'
import sys, re
path, label, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = []
for line in open(path):
    f = line.split()
    if len(f) >= 5 and re.match(r"^[\d.]+$", f[0]) and f[-1] != "total":
        calls = int(f[3]); name = f[-1]
        rows.append((calls, name))
rows.sort(reverse=True)
allc = sum(c for c, _ in rows)
top = ", ".join(f"{n} {c / total:.2f}" for c, n in rows[:5])
print(f"| {label} | {allc / total:.2f} | {top} |")
PY
}

echo "$CONNS conns x $LEN B x $MSGS messages ($total), $BACKEND; raw: $OUT_DIR"
echo "| traced | calls per message | top calls per message |"
echo "|---|---|---|"
run direct
run tcp_proxy "$BIN/tcp_proxy"
for m in $REFS; do run "fwd-$m" target/release/fwd_proxy --mode "$m"; done
