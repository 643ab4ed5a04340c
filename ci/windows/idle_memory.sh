#!/usr/bin/env bash
# Memory per idle connection under Wine: echo_server.exe (one IO thread) on BACKEND, 10 000
# connections opened from Linux by ringport-load and held idle; the RSS of the server process
# and of wineserver (which keeps Wine's side of every socket) before and while held.
# Usage: ci/windows/idle_memory.sh EXE LOAD [BACKEND] [CONNECTIONS]
set -euo pipefail
exe=$1 load=$2 backend=${3:-iocp} n=${4:-10000}
export WINEDEBUG=-all
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
out=$(mktemp)
wine "$exe" --backend "$backend" --io-threads 1 --max-connections $((n * 2)) \
    --listen 127.0.0.1:0 >"$out" 2>/dev/null &
srv=$!
trap 'kill -INT $srv 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 300); do grep -q listening "$out" && break; sleep 0.1; done
addr=$(sed -n 's/^listening on \([0-9.:]*\) .*/\1/p' "$out")
ws=$(pgrep -x wineserver | head -1 || pgrep wineserver | head -1)
sleep 1
s0=$(rss $srv) w0=$(rss "$ws")
"$load" echo --target "$addr" -c "$n" -l 16 -n 1 --hold 8 --connect-batch 200 --timeout 120 \
    --json >"$out.json" 2>"$out.load" &
ld=$!
for _ in $(seq 1200); do grep -q 'holding connections open' "$out.load" && break; sleep 0.1; done
sleep 3
s1=$(rss $srv) w1=$(rss "$ws")
wait $ld || true
served=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["connections"], "connections,", j["messages"], "echoes,", j["errors"], "errors")' "$out.json")
rm -f "$out.load" "$out.json"
echo "load: $served"
echo "$backend: $n idle connections: server RSS $s0 -> $s1 KiB ($(( (s1 - s0) * 1024 / n )) B/conn)," \
     "wineserver RSS $w0 -> $w1 KiB ($(( (w1 - w0) * 1024 / n )) B/conn)"
