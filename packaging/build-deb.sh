#!/usr/bin/env bash
# Builds the Debian package of easytier-probe with cargo-deb.
#
#   bash packaging/build-deb.sh
#
# Run from anywhere; it works in the repository root. Respects
# CARGO_TARGET_DIR: the package is written to
# ${CARGO_TARGET_DIR:-target}/debian/easytier-probe_<version>_<arch>.deb
# and its path is printed as the last line of output.
# Needs protoc (Debian package protobuf-compiler) for the EasyTier crate, and
# dpkg-dev for dpkg-shlibdeps (the package's Depends line).
set -euo pipefail

cd "$(dirname "$0")/.."

log() { printf 'build-deb: %s\n' "$*" >&2; }

# cargo-deb 3.x is what this packaging was written for; any recent one works.
if ! cargo deb --version >/dev/null 2>&1; then
    log "cargo-deb is missing: installing it with 'cargo install cargo-deb --locked'"
    cargo install cargo-deb --locked
fi
log "using $(cargo deb --version)"

for tool in protoc dpkg-shlibdeps; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "$tool not found: install it with 'apt-get install protobuf-compiler dpkg-dev'"
        exit 1
    fi
done

target_dir=$(cargo metadata --no-deps --format-version 1 \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ -z "$target_dir" ]; then
    log "cannot find the cargo target directory"
    exit 1
fi

log "building the release binary in $target_dir"
cargo build --release --locked

# --no-build: package the binary built above, as it is. --strip: the release
# profile keeps some debug info for profiling; a package ships stripped
# binaries (lintian: unstripped-binary-or-object).
log "packaging"
# cargo deb prints the package path on stdout; this script prints it once, last.
cargo deb --no-build --locked --strip --output "$target_dir/debian/" >/dev/null

# cargo pkgid prints e.g. path+file:///src/easytier-probe#easytier-probe@0.1.0
pkgid=$(cargo pkgid)
version=${pkgid##*[#@]}
arch=$(dpkg --print-architecture)
deb="$target_dir/debian/easytier-probe_${version}_${arch}.deb"
if [ ! -f "$deb" ]; then
    log "expected $deb, but it is not there"
    ls -l "$target_dir/debian/" >&2 || true
    exit 1
fi
echo "$deb"
