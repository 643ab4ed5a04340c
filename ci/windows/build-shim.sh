#!/usr/bin/env bash
# Builds the ProcessPrng shim DLL (test setup only, see processprng.c) and copies it next to
# every directory of Windows executables under the given target directory, and into the Wine
# prefix's system32 when $WINEPREFIX is set up (for executables built elsewhere: doctests).
# Usage: ci/windows/build-shim.sh [TARGET_DIR]   (default: target)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target_dir="${1:-target}"
out="$target_dir/x86_64-pc-windows-gnu/shim"
mkdir -p "$out"
x86_64-w64-mingw32-gcc -shared -O2 -Wall -o "$out/bcryptprimitives.dll" \
    "$here/processprng.c" "$here/bcryptprimitives.def" -ladvapi32
for profile in debug release; do
    for sub in "" deps examples; do
        dir="$target_dir/x86_64-pc-windows-gnu/$profile/$sub"
        mkdir -p "$dir"
        cp "$out/bcryptprimitives.dll" "$dir/"
    done
done
if [[ -n "${WINEPREFIX:-}" && -d "$WINEPREFIX/drive_c/windows/system32" ]]; then
    cp "$out/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"
fi
echo "shim: $out/bcryptprimitives.dll"
