#!/usr/bin/env bash
# Installs what the test legs need beyond the Rust toolchains: cargo-fuzz (for .ci/fuzz.sh).
# Idempotent; fails loudly with one line if an install fails. (The nightly toolchain itself
# comes with the CI image: it cannot be downloaded here.)
set -euo pipefail

if ! cargo fuzz --version >/dev/null 2>&1; then
    if ! cargo install cargo-fuzz --locked --quiet; then
        echo "install-tests: FAILED: cargo install cargo-fuzz" >&2
        exit 1
    fi
fi
echo "install-tests: $(cargo fuzz --version)"
