#!/usr/bin/env bash
# The Windows leg: cross-build for x86_64-pc-windows-gnu, clippy for that target, a compile
# check for macOS, the library-level tests under Wine (every test on iocp and on poll), and
# every example server under Wine driven from Linux (ci/windows/check_servers.py).
# Called from .ci/run after the Linux legs (it reuses the Linux ringport-load binary).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

bash .ci/install-windows.sh

T=x86_64-pc-windows-gnu
TD="${CARGO_TARGET_DIR:-target}"
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
export WINEDEBUG=-all
mkdir -p "$TD"
export WINEPREFIX="${WINEPREFIX:-$(cd "$TD" && pwd)/wineprefix}"
# The engine tests must run on the backend they name (iocp, poll): no skip on Windows.
export RINGPORT_TEST_REQUIRE_URING=1
export RINGPORT_TEST_REQUIRE_TOOLS=1

cargo clippy --target "$T" --workspace --all-targets -- -D warnings
# macOS: the library compiles (poll is kqueue there); not run. Without the `tls` feature: ring's C
# code needs an Apple C toolchain, which this Linux machine does not have.
cargo check --target x86_64-apple-darwin -p ringport --lib --no-default-features

# Wine's server kept running for the whole leg (a fresh prefix's first start is slow).
wineserver -p 600 || true # "already running" is fine
trap 'wineserver -k 2>/dev/null || true' EXIT
wineboot -i >/dev/null 2>&1 || true

# ringport-bench has no tests (its peers are Linux benchmarks): clippy above covers it.
cargo test --target "$T" --workspace --exclude ringport-bench --no-run
ci/windows/build-shim.sh "$TD" # the ProcessPrng shim, next to the test executables
# Wine's own server can die under the socket tests ("wine client error: ... recvmsg:
# Connection reset by peer": the next test executable cannot even start). That is Wine's
# failure, not a test's: the tests then run once more on a fresh wineserver, and the run says
# so. A test that fails on its own fails the leg at once.
wine_tests() {
    cargo test --target "$T" --workspace --exclude ringport-bench 2>&1 | tee "$TD/wine-tests.log"
    return "${PIPESTATUS[0]}"
}
if ! wine_tests; then
    grep -q "wine client error" "$TD/wine-tests.log" || exit 1
    echo "windows leg: Wine's server was lost during the tests (wine client error); restarting it and running the tests once more"
    wineserver -k 2>/dev/null || true
    wineserver -p 600 || true
    wineboot -i >/dev/null 2>&1 || true
    wine_tests
fi

cargo build -p ringport-load
python3 ci/windows/check_servers.py \
    --exe-dir "$TD/$T/debug/examples" --load "$TD/debug/ringport-load"

echo "windows leg: $(($(date +%s) - start)) s"
