# shellcheck shell=bash
# What the bench scripts share: probes of a server process (/proc), a free port, the waits for
# a server to come up, stopping one, a throw-away certificate. Source it from a script:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Every function is safe under `set -euo pipefail` and prints nothing but its result.

# A free TCP port on 127.0.0.1 (bound, then released for the caller's server).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Resident set size of process $1 in KiB (empty once it is gone).
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }

# Nanoseconds process $1 spent on a CPU, summed over its threads (schedstat; finer than the
# 10 ms ticks of /proc/PID/stat).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ t += $1 } END { print t }'; }

# Waits until a RESP server on port $1 answers PING, $2 tries 0.1 s apart (default 100);
# fails after the last.
wait_redis() {
    local i
    for ((i = 0; i < ${2:-100}; i++)); do
        [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ] && return 0
        sleep 0.1
    done
    return 1
}

# The address in the `listening on ADDR (...)` line a server wrote to file $1, once there: $2
# tries 0.1 s apart (default 100); fails, saying so on stderr, after the last.
listening_addr() {
    local a i
    for ((i = 0; i < ${2:-100}; i++)); do
        a=$(sed -n 's/.*listening on \([^ ]*\) .*/\1/p' "$1" | head -1)
        [ -n "$a" ] && { echo "$a"; return 0; }
        sleep 0.1
    done
    echo "no listening line in $1" >&2
    return 1
}

# Stops process $1 (a child of this shell): SIGTERM, up to $2 seconds to exit, then SIGKILL;
# reaps it. Returns 1 when it had to be killed. An empty or finished $1 is nothing to do.
stop_pid() {
    local pid=$1 secs=$2 i killed=0
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        killed=1
    fi
    wait "$pid" 2>/dev/null || true
    return $killed
}

# A self-signed P-256 certificate for localhost and 127.0.0.1, valid 2 days: $1/cert.pem and
# its key $1/key.pem.
self_signed_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$1/key.pem" -out "$1/cert.pem" -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null
}
