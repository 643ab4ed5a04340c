#!/usr/bin/env bash
# Server user-space instructions per TLS echo message and per handshake, under callgrind
# (deterministic: unaffected by the machine's load, unlike CPU time). echo_server with
# --tls-cert/--tls-key, --backend epoll --io-threads 1; client ringport-load --tls --insecure.
#
#   bench/tls_callgrind.sh                          # this tree's release echo_server
#   BINS="base@/path/to/old/echo_server new@target/release/examples/echo_server" bench/tls_callgrind.sh
#
# Per binary, three runs (a fresh server under callgrind each):
#   T1   50 connections, one 1 KiB message each        (50 handshakes, 50 messages)
#   T201 50 connections, 201 messages each             (50 handshakes, 10,050 messages)
#   H    50 connections, 3 messages each, --reconnect-every 1 (150 handshakes, 150 messages)
# per message = (T201 - T1) / 10,000; per handshake = (H - T1 - 100 x per message) / 100.
# Prints a markdown table on stdout; progress on stderr. Needs valgrind; NO_BUILD=1 skips cargo.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
REL=$ROOT/target/release
BINS=${BINS:-"this@$REL/examples/echo_server"}
WORK=$(mktemp -d /tmp/ringport-tls-callgrind.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
log() { printf '[tls-callgrind] %s\n' "$*" >&2; }
command -v valgrind >/dev/null || { echo "tls_callgrind: valgrind is not installed" >&2; exit 1; }
if [ -z "${NO_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release --example echo_server &&
        cargo build --release -p ringport-load --bin ringport-load) >&2 ||
        { echo "tls_callgrind: build failed" >&2; exit 1; }
fi
self_signed_cert "$WORK" || { echo "tls_callgrind: openssl req failed" >&2; exit 1; }

run() { # binary, load args... -> prints the server's total instructions
    local bin=$1 out=$WORK/server.out cg=$WORK/cg.out
    shift
    : >"$out"
    rm -f "$cg"
    valgrind --tool=callgrind --callgrind-out-file="$cg" "$bin" --listen 127.0.0.1:0 \
        --backend epoll --io-threads 1 --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" \
        >"$out" 2>"$WORK/valgrind.err" &
    PID=$!
    local addr
    addr=$(listening_addr "$out" 600) || { echo "tls_callgrind: $bin did not start" >&2; exit 1; }
    "$REL/ringport-load" echo --target "$addr" -l 1024 --tls --insecure --threads 1 --json "$@" \
        >"$WORK/load.json" 2>/dev/null || { echo "tls_callgrind: load failed: $*" >&2; exit 1; }
    kill -TERM "$PID"
    wait "$PID" 2>/dev/null
    PID=""
    sed -n 's/^summary: *//p; s/^totals: *//p' "$cg" | head -1
}

printf '| build | T1 | T201 | H | instructions per message | instructions per handshake |\n|---|---|---|---|---|---|\n'
for spec in $BINS; do
    name=${spec%%@*} bin=${spec#*@}
    log "$name: T1";   t1=$(run "$bin" -c 50 -n 1)
    log "$name: T201"; t201=$(run "$bin" -c 50 -n 201)
    log "$name: H";    h=$(run "$bin" -c 50 -n 3 --reconnect-every 1)
    python3 - "$name" "$t1" "$t201" "$h" <<'PY'
import sys
name, t1, t201, h = sys.argv[1], *map(int, sys.argv[2:])
msg = (t201 - t1) / 10000
hs = (h - t1 - 100 * msg) / 100
print(f'| {name} | {t1:,} | {t201:,} | {h:,} | {msg:,.0f} | {hs:,.0f} |')
PY
done
