#!/usr/bin/env bash
# A/B of two resp_server builds: both started once, redis-benchmark SET+GET against each in
# turn, ROUNDS times; prints the server CPU per request (µs: the threads' schedstat, user +
# system) of every run. For a before/after where the difference is smaller than the noise of
# a ratio to redis-server.
#
#   bench/resp_ab.sh OLD_BINARY NEW_BINARY
#   P=16 N=100000 ARGS="--io-threads 1" ROUNDS=6 bench/resp_ab.sh /tmp/old/resp_server target/release/examples/resp_server
set -u
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
A=$1 B=$2
P=${P:-1} N=${N:-20000} ROUNDS=${ROUNDS:-6} ARGS=${ARGS:-}
port_a=$(free_port)
port_b=$(free_port)
# shellcheck disable=SC2086 # ARGS is a list of flags
"$A" --listen "127.0.0.1:$port_a" $ARGS >/dev/null 2>&1 &
pid_a=$!
# shellcheck disable=SC2086
"$B" --listen "127.0.0.1:$port_b" $ARGS >/dev/null 2>&1 &
pid_b=$!
trap 'kill $pid_a $pid_b 2>/dev/null; wait' EXIT
for port in "$port_a" "$port_b"; do
    wait_redis "$port" 100
done
echo "# -P $P -n $N, flags '${ARGS}', load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# round build cpu_us_per_request"
for round in $(seq "$ROUNDS"); do
    for which in A B; do
        if [ $which = A ]; then pid=$pid_a port=$port_a; else pid=$pid_b port=$port_b; fi
        before=$(cpu_ns "$pid")
        redis-benchmark -p "$port" -t set,get -n "$N" -c 50 -P "$P" -q >/dev/null 2>&1
        after=$(cpu_ns "$pid")
        echo "$round $which $(python3 -c "print(round(($after - $before) / 1e3 / (2 * $N), 3))")"
    done
done
