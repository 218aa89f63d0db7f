#!/usr/bin/env bash
# Builds a wheel of the dbha Python package that bundles libdbha.so, so that
# `pip install` works on a host with no Rust toolchain:
#   reader/python/build_wheel.sh [LIBDBHA] [OUTDIR]
# LIBDBHA defaults to target/release/libdbha.so (cargo build --release -p dbha-reader),
# OUTDIR to target/wheels. Needs a Python with pip and wheel (tests/setup.sh's .venv).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
lib=${1:-$root/target/release/libdbha.so}
out=${2:-$root/target/wheels}
python=${PYTHON:-$root/.venv/bin/python}
[ -f "$lib" ] || { echo "build_wheel.sh: $lib is missing: cargo build --release -p dbha-reader" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r "$here/pyproject.toml" "$here/README.md" "$here/dbha" "$stage/"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
install -m 0755 "$lib" "$stage/dbha/libdbha.so"
mkdir -p "$out"
"$python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$stage/dist" "$stage"
# The package holds a native library: tag the wheel for this platform. It uses
# ctypes, so it fits every Python 3 (py3-none).
platform=$("$python" -c 'import sysconfig; print(sysconfig.get_platform().replace("-", "_").replace(".", "_"))')
"$python" -m wheel tags --remove --python-tag py3 --abi-tag none --platform-tag "$platform" "$stage"/dist/dbha-*.whl >/dev/null
cp "$stage"/dist/dbha-*-py3-none-"$platform".whl "$out/"
ls "$out"/dbha-*-py3-none-"$platform".whl
