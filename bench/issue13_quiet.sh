#!/usr/bin/env bash
# The issue-13 measurements for a quiet machine, in the order they were taken (about 21
# minutes; build the release binaries first, this script does not build):
#   1. ring setup: the default (SINGLE_ISSUER+DEFER_TASKRUN) vs no flags vs COOP_TASKRUN, with
#      tokio and monoio, at 50 and 500 connections under both client styles;
#   2. the newer switches against the default: registered ring fd, direct descriptors, the
#      wait with min_wait_usec batching, the wait without iowait accounting;
#   3. one connection against tokio and monoio (p50/p99/p99.9);
#   4. (only when asked: STEPS=4 COMBO=...) a combination of the winners against the default;
#   5. line_server against tokio-util's LinesCodec, pipelined (16 in flight), 50 and 500
#      connections (the loaded run had 0.71x at 500).
# Second quiet window (memchr in Lines::decode, and the tail at 50 connections):
#   6. line_server with memchr against the build before it (BEFORE_DIR: a directory holding
#      that build's line_server, e.g. main's target/release/examples copied aside) and
#      tokio-util, 50 and 500 connections, pipelined 16 and not, both client styles
#      (pipelined: event client only);
#   7. the tail: echo_server at 50 and 500 connections, both clients, the default against
#      `wait=min:8:50` (the quiet run of step 2 gave it 0.46x / 0.81x p99.9 at 50), against
#      `balance=on` (connections spread round robin over the IO threads) and tokio;
#   8. the same three ringport variants with loop-turn tracing on (RINGPORT_URING_TRACE=1;
#      the per-thread summaries land in TRACE_DIR, default /tmp/ringport-trace), 2 rounds;
#   9. step 7 again at 50 connections, default vs `wait=min:8:50` vs tokio (a repeat).
# Third quiet window (the adaptive wait, and receives into per-connection buffers):
#  10. echo_server at 1, 50 and 500 connections, both clients: the wait of the time
#      (`wait=one`) against `wait=adapt:8:50` (the min-wait only after a turn that reaped 8
#      completions) and `recv=own` (single-shot receives into per-connection buffers), with
#      tokio and monoio;
#  11. line_server and packet_echo_server, 50 and 500 connections, pipelined 16 and not: the
#      same two waits against tokio-util (3 rounds);
#  12. memory at 10k idle connections: the default against `recv=own` (1 round);
#  13. the adaptive wait's two numbers at 1 and 50 connections, both clients: `adapt:8:50`
#      against a shorter batch wait (`adapt:8:20`) and a higher bar (`adapt:16:50`), with
#      `wait=one` and tokio;
#  14. a repeat of step 11's two worst ratios for `adapt:8:50` (line and packet at 50
#      connections, event client: 0.85x and 0.74x msg/s), 5 rounds;
#  15. completion-queue size: `cq=1` and `cq=16` (CQ entries per SQ entry) against the
#      default 4, at 50 and 500 connections, both clients.
# Each step rewrites its own file, bench/results/compare-SECTION.md; `uptime` before and after each step is
# printed (and recorded by compare.sh as the load average).
#
#   cargo build --release -p ringport --example echo_server --example line_server \
#       --example packet_echo_server && cargo build --release -p ringport-bench -p ringport-load
#   bench/issue13_quiet.sh            # steps 1, 2, 3 and 5
#   STEPS="2 3" bench/issue13_quiet.sh
#   STEPS="6 7 8 9" BEFORE_DIR=/tmp/before-examples bench/issue13_quiet.sh   # second window
#   STEPS="10 11 12 13 14 15" bench/issue13_quiet.sh                           # third window

set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STEPS=${STEPS:-"1 2 3 5"}
export NO_BUILD=1 ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-3} WARMUP=${WARMUP:-1}
status=0

step() { # number, then VAR=value settings for compare.sh
    local n=$1
    shift
    echo "== step $n at $(date -u '+%H:%M:%S') UTC; uptime: $(uptime)" >&2
    env "$@" "$ROOT/bench/compare.sh" || status=1
    echo "== step $n done at $(date -u '+%H:%M:%S') UTC; uptime: $(uptime)" >&2
}

for s in $STEPS; do
    case $s in
    1) step 1 SECTION=issue13-quiet-setup SCENARIOS="pp50 pp500" BASELINE=ringport-uring \
        SERVERS="ringport-uring ringport-uring~setup=plain ringport-uring~setup=coop monoio tokio" ;;
    2) step 2 SECTION=issue13-quiet-switches SCENARIOS="pp50 pp500" BASELINE=ringport-uring \
        SERVERS="ringport-uring ringport-uring~ringfd=on ringport-uring~fixed=on ringport-uring~wait=min:8:50 ringport-uring~wait=noiowait" ;;
    3) step 3 SECTION=issue13-quiet-1conn SCENARIOS="pp1" \
        SERVERS="ringport-uring tokio monoio" ;;
    4) # a combination chosen from steps 1 and 2, e.g. COMBO="ringport-uring~setup=plain,fixed=on"
        step 4 SECTION=issue13-quiet-combo SCENARIOS="pp50 pp500" BASELINE=ringport-uring \
            ROUNDS=${COMBO_ROUNDS:-3} SERVERS="ringport-uring ${COMBO:?set COMBO}" ;;
    5) step 5 SECTION=issue13-quiet-lines SCENARIOS="line50p line500p" CLIENTS=event \
        FRAMED_SERVERS="ringport-uring tokio-util" ;;
    6) step 6 SECTION=issue13-quiet-memchr SCENARIOS="line50 line500 line50p line500p" \
        VARIANT_DIRS="before=${BEFORE_DIR:?set BEFORE_DIR}" \
        FRAMED_SERVERS="ringport-uring ringport-uring@before tokio-util" \
        PAIRS="ringport-uring/ringport-uring@before" ;;
    7) step 7 SECTION=issue13-quiet-tail SCENARIOS="pp50 pp500" ROUNDS=${TAIL_ROUNDS:-4} \
        SERVERS="ringport-uring ringport-uring~wait=min:8:50 ringport-uring~balance=on tokio" \
        PAIRS="ringport-uring~wait=min:8:50/ringport-uring ringport-uring~balance=on/ringport-uring" ;;
    8) step 8 SECTION=issue13-quiet-trace SCENARIOS="pp50" ROUNDS=${TRACE_ROUNDS:-2} \
        RINGPORT_URING_TRACE=1 TRACE_DIR=${TRACE_DIR:-/tmp/ringport-trace} \
        SERVERS="ringport-uring ringport-uring~wait=min:8:50 ringport-uring~balance=on" \
        BASELINE=ringport-uring ;;
    9) step 9 SECTION=issue13-quiet-tail-repeat SCENARIOS="pp50" ROUNDS=${TAIL_ROUNDS:-4} \
        SERVERS="ringport-uring ringport-uring~wait=min:8:50 tokio" \
        PAIRS="ringport-uring~wait=min:8:50/ringport-uring" ;;
    10) step 10 SECTION=issue13-quiet-adapt SCENARIOS="pp1 pp50 pp500" \
        SERVERS="ringport-uring~wait=one ringport-uring~wait=adapt:8:50 ringport-uring~recv=own tokio monoio" \
        PAIRS="ringport-uring~wait=adapt:8:50/ringport-uring~wait=one ringport-uring~recv=own/ringport-uring~wait=one" ;;
    11) step 11 SECTION=issue13-quiet-adapt-framed ROUNDS=${FRAMED_ROUNDS:-3} \
        SCENARIOS="line50 line500 line50p line500p packet50 packet500 packet50p packet500p" \
        FRAMED_SERVERS="ringport-uring~wait=one ringport-uring~wait=adapt:8:50 tokio-util" \
        PAIRS="ringport-uring~wait=adapt:8:50/ringport-uring~wait=one" ;;
    12) step 12 SECTION=issue13-quiet-own-rss SCENARIOS="rss10k" ROUNDS=1 \
        SERVERS="ringport-uring~wait=one ringport-uring~recv=own" ;;
    13) step 13 SECTION=issue13-quiet-adapt-tune SCENARIOS="pp1 pp50" \
        SERVERS="ringport-uring~wait=one ringport-uring~wait=adapt:8:50 ringport-uring~wait=adapt:8:20 ringport-uring~wait=adapt:16:50 tokio" \
        PAIRS="ringport-uring~wait=adapt:8:50/ringport-uring~wait=one ringport-uring~wait=adapt:8:20/ringport-uring~wait=one ringport-uring~wait=adapt:16:50/ringport-uring~wait=one" ;;
    14) step 14 SECTION=issue13-quiet-adapt-framed-repeat SCENARIOS="line50 packet50" CLIENTS=event \
        FRAMED_SERVERS="ringport-uring~wait=one ringport-uring~wait=adapt:8:50 tokio-util" \
        PAIRS="ringport-uring~wait=adapt:8:50/ringport-uring~wait=one" ;;
    15) step 15 SECTION=issue13-quiet-cq SCENARIOS="pp50 pp500" BASELINE=ringport-uring \
        SERVERS="ringport-uring ringport-uring~cq=1 ringport-uring~cq=16" ;;
    *) echo "unknown step $s" >&2 ;;
    esac
done
exit $status
