#!/usr/bin/env bash
# What the memcache_server tests and bench/memcache.sh need beyond Rust: memcached (the
# reference server), memcslap / memaslap (Debian: libmemcached-tools) and pymemcache.
# Idempotent; one clear line on failure.
set -uo pipefail

fail() {
    echo "install-memcache: $*" >&2
    exit 1
}

if ! command -v memcached >/dev/null \
    || ! { command -v memcslap >/dev/null || command -v memaslap >/dev/null; }; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || fail "apt-get update failed"
    apt-get install -y -qq memcached libmemcached-tools >/dev/null 2>&1 \
        || fail "apt-get install memcached libmemcached-tools failed"
fi
command -v memcached >/dev/null || fail "memcached still not on PATH after install"

if ! python3 -c 'import pymemcache' 2>/dev/null; then
    # pip refuses a system-managed Python (PEP 668) unless told; Debian's package is the
    # last resort.
    python3 -m pip install -q pymemcache >/dev/null 2>&1 \
        || python3 -m pip install -q --break-system-packages pymemcache >/dev/null 2>&1 \
        || apt-get install -y -qq python3-pymemcache >/dev/null 2>&1 \
        || fail "could not install pymemcache (pip install pymemcache)"
fi
python3 -c 'import pymemcache' 2>/dev/null || fail "python3 cannot import pymemcache after install"
echo "install-memcache: $(memcached -V), pymemcache $(python3 -c 'import pymemcache; print(pymemcache.__version__)')"
