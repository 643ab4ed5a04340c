#!/usr/bin/env bash
# Tools the deploy tests drive (issue 12): promtool (Debian `prometheus`),
# systemd-socket-activate (Debian `systemd`), haproxy, and socat (an outside client of the
# Unix socket tests). Idempotent; fails loudly with one line.
set -uo pipefail

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-socket-activate >/dev/null 2>&1 || need+=(systemd)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v socat >/dev/null 2>&1 || need+=(socat)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >/tmp/install-deploy.log 2>&1; then
    echo "install-deploy: apt-get install ${need[*]} failed (see /tmp/install-deploy.log)" >&2
    exit 1
fi
