#!/usr/bin/env bash
# Tools of the TLS tests (tests/tls_examples.rs): openssl s_client/s_server, and Python 3's ssl
# module. Idempotent; run as root on Debian/Ubuntu.
set -euo pipefail

if ! command -v openssl >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; } \
        || { echo "install-tls: apt-get install openssl failed" >&2; exit 1; }
fi
openssl version >/dev/null || { echo "install-tls: openssl does not run" >&2; exit 1; }
python3 -c 'import ssl' || { echo "install-tls: python3 has no ssl module" >&2; exit 1; }
