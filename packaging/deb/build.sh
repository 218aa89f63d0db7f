#!/bin/sh
# Builds the Debian package:  packaging/deb/build.sh [OUTPUT_DIR]
# (target/debian by default). Needs cargo-deb (`cargo install cargo-deb`) and
# dpkg-dev. The package holds the agent, its unit and example configuration, and
# libdbha for the applications: libdbha.so with its soname links, libdbha.a,
# dbha.h and dbha.pc, in Debian's multiarch library directory.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${1:-$root/target/debian}
target=${CARGO_TARGET_DIR:-$root/target}/release

cargo build --release --locked -p dbha-agent -p dbha-reader

# The library files are staged under target/release/deb-stage, the tree they
# take in the package; the agent's Cargo.toml lists that tree as one asset.
tuple=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
stage=$target/deb-stage
rm -rf "$stage"
DESTDIR=$stage DBHA_PROFILE=release reader/install.sh /usr "lib/$tuple" >/dev/null
# Debug information stays in the build tree (cargo deb --strip strips the rest).
strip --strip-debug "$stage/usr/lib/$tuple/libdbha.a"

mkdir -p "$out"
# --strip: the release profile keeps line tables for backtraces in the build tree.
cargo deb -p dbha-agent --no-build --strip --output "$out"
