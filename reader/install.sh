#!/bin/sh
# Installs libdbha (shared and static), dbha.h and dbha.pc under a prefix:
#   reader/install.sh [--build] PREFIX [LIBDIR]
# Expects `cargo build --release -p dbha-reader` to have run (or pass --build).
# CARGO_TARGET_DIR and DBHA_PROFILE (release by default) say where the build is.
# DESTDIR, as in make install: the files go under $DESTDIR$PREFIX while dbha.pc
# names PREFIX (packaging/deb/build.sh stages the .deb's files this way).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
if [ "${1:-}" = "--build" ]; then
    shift
    cargo build --release -p dbha-reader --manifest-path "$root/Cargo.toml"
fi
prefix=${1:?usage: install.sh [--build] PREFIX [LIBDIR]}
libdir=${2:-lib}
dest=${DESTDIR:-}$prefix
profile=${DBHA_PROFILE:-release}
target=${CARGO_TARGET_DIR:-$root/target}/$profile
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
major=${version%%.*}

for f in libdbha.so libdbha.a; do
    [ -f "$target/$f" ] || { echo "install.sh: $target/$f is missing: run cargo build --release -p dbha-reader first" >&2; exit 1; }
done
install -d "$dest/$libdir/pkgconfig" "$dest/include"
install -m 0755 "$target/libdbha.so" "$dest/$libdir/libdbha.so.$version"
ln -sf "libdbha.so.$version" "$dest/$libdir/libdbha.so.$major"
ln -sf "libdbha.so.$major" "$dest/$libdir/libdbha.so"
install -m 0644 "$target/libdbha.a" "$dest/$libdir/libdbha.a"
install -m 0644 "$here/include/dbha.h" "$dest/include/dbha.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@LIBDIR@|$libdir|" -e "s|@VERSION@|$version|" \
    "$here/dbha.pc.in" > "$dest/$libdir/pkgconfig/dbha.pc"
echo "installed libdbha $version under $dest"
