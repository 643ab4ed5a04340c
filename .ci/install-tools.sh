#!/usr/bin/env bash
# Installs every outside tool the test suite uses (openssl, redis, haproxy, promtool, wine, ...):
# runs each .ci/install-<topic>.sh in turn. Needs root (apt-get) and the package registries.
# With these installed, `RINGPORT_TEST_REQUIRE_TOOLS=1 cargo test --workspace` skips nothing.
set -euo pipefail
cd "$(dirname "$0")"
for script in install-*.sh; do
    [ "$script" = "install-tools.sh" ] && continue
    echo "== $script"
    bash "$script"
done
