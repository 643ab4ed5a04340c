#!/usr/bin/env bash
# Installs what the Windows leg (.ci/windows.sh) needs: the mingw-w64 linker, Wine, and the
# rustup targets x86_64-pc-windows-gnu (cross-build, run under Wine) and x86_64-apple-darwin
# (compile check only). Idempotent. Any failure ends with one clear line and exit 1.
set -uo pipefail

fail() {
    echo "install-windows: FAILED: $*" >&2
    exit 1
}

need_apt=()
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || need_apt+=(gcc-mingw-w64-x86-64)
{ command -v wine >/dev/null 2>&1 && command -v wineserver >/dev/null 2>&1; } || need_apt+=(wine wine64)
if ((${#need_apt[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1 || fail "apt-get update did not work"
    apt-get install -y -qq "${need_apt[@]}" >/dev/null 2>&1 \
        || fail "apt-get install ${need_apt[*]} did not work"
fi
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || fail "x86_64-w64-mingw32-gcc missing after install"
command -v wine >/dev/null 2>&1 || fail "wine missing after install"

for target in x86_64-pc-windows-gnu x86_64-apple-darwin; do
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        rustup target add "$target" >/dev/null 2>&1 || fail "rustup target add $target did not work"
    fi
done
echo "install-windows: mingw-w64 $(x86_64-w64-mingw32-gcc -dumpversion), $(wine --version 2>/dev/null), rustup targets ready"
