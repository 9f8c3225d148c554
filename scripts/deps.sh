#!/bin/sh
# Checks the tools the build and the tests need besides the Rust toolchain.
# As root on Debian it installs what is missing; otherwise it says how.
set -eu

# Installs Debian packages as root, or says how and stops.
# $1: extra apt-get options ("" for none), $2: what they are for, then the packages.
apt_install() {
    options=$1 purpose=$2
    shift 2
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "deps: installing $* ($purpose)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $options "$@" >/dev/null
    else
        echo "deps: missing Debian packages: $* ($purpose)" >&2
        echo "deps: install them with: sudo apt-get install $options${options:+ }$*" >&2
        exit 1
    fi
}

missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need protoc protobuf-compiler      # easytier's build runs prost-build
need unshare util-linux            # private network namespace for tests
need ip iproute2                   # `ip link set lo up` inside it
need mandoc mandoc                 # man page lint
need dpkg-shlibdeps dpkg-dev       # `make deb` (cargo-deb computes Depends with it)
command -v cargo >/dev/null 2>&1 || { echo "deps: cargo not found; install the Rust toolchain (https://rustup.rs)" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true

# shellcheck disable=SC2086 # the list is words
[ -z "$missing" ] || apt_install "" "the build and the tests" $missing

# A real Prometheus server and promtool for tests/prometheus.rs and
# tests/http.rs. Without the recommended exporters: node-exporter would be
# installed (and, under systemd, started) on the host.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    apt_install --no-install-recommends "server and promtool, for the tests" prometheus
fi

# Headless Chromium for tests/page.rs (the status page in a real browser).
command -v chromium >/dev/null 2>&1 ||
    apt_install --no-install-recommends "headless, for the status page test" chromium

# A real EasyTier 2.6 node for the interop tests: the easytier-pyo3 package
# (upstream core 2.6.4) in a virtual environment, installed from PyPI here,
# outside the tests' network namespace. Quiet and instant once installed.
sh "$(dirname "$0")/et26-venv.sh" >/dev/null
