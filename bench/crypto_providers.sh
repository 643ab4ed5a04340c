#!/usr/bin/env bash
# ring vs aws-lc-rs under rustls, in memory (client and server in one process, no sockets):
# process CPU for 520 handshakes (20 warm-up) per mode, both providers interleaved, ROUNDS
# times; KX=x25519 restricts both providers to X25519 (by default each uses its own default
# groups: aws-lc-rs puts X25519MLKEM768 first). Modes: 0 full handshake (no resumption),
# 1 resumed (stateful cache, 2 tickets), 2 resumed (stateful, 1 ticket), 3 resumed (stateless
# tickets, 1 ticket). Prints "provider mode cpu user sys" lines.
#   bench/crypto_providers.sh            KX=x25519 ROUNDS=2 bench/crypto_providers.sh
set -euo pipefail
DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/crypto_providers" && pwd)
ROUNDS=${ROUNDS:-2}
WORK=$(mktemp -d /tmp/ringport-crypto.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
(cd "$DIR" && cargo build --release) >&2
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost" 2>/dev/null
for _ in $(seq "$ROUNDS"); do
    for mode in 0 1 2 3; do
        for p in ring aws-lc-rs; do
            /usr/bin/time -f "$p ${KX:-default} mode$mode cpu %U %S" \
                "$DIR/target/release/crypto-providers" "$WORK/cert.pem" "$WORK/key.pem" 500 "$p" "$mode" 2>&1 | grep cpu
        done
    done
done
