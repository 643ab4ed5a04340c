#!/usr/bin/env bash
# What the resp_server tests need beyond Rust: redis-server, redis-cli and redis-benchmark
# (Debian: redis-server, redis-tools) and redis-py. Idempotent; one clear line on failure.
set -uo pipefail

fail() {
    echo "install-resp: $*" >&2
    exit 1
}

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null \
    || ! command -v redis-benchmark >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || fail "apt-get update failed"
    apt-get install -y -qq redis-server redis-tools >/dev/null 2>&1 \
        || fail "apt-get install redis-server redis-tools failed"
fi
command -v redis-server >/dev/null || fail "redis-server still not on PATH after install"

if ! python3 -c 'import redis' 2>/dev/null; then
    # pip refuses a system-managed Python (PEP 668) unless told; Debian's python3-redis is the
    # last resort (older, but enough for the suite).
    python3 -m pip install -q redis >/dev/null 2>&1 \
        || python3 -m pip install -q --break-system-packages redis >/dev/null 2>&1 \
        || apt-get install -y -qq python3-redis >/dev/null 2>&1 \
        || fail "could not install redis-py (pip install redis)"
fi
python3 -c 'import redis' 2>/dev/null || fail "python3 cannot import redis after install"
echo "install-resp: $(redis-server --version | cut -d' ' -f1-3), redis-py $(python3 -c 'import redis; print(redis.__version__)')"
