#!/bin/sh
# Checks the tools the build and the tests need besides the Rust toolchain.
# As root on Debian it installs what is missing; otherwise it says how.
set -eu

missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need protoc protobuf-compiler      # easytier's build runs prost-build
need unshare util-linux            # private network namespace for tests
need ip iproute2                   # `ip link set lo up` inside it
need mandoc mandoc                 # man page lint
need dpkg-shlibdeps dpkg-dev       # `make deb` (cargo-deb computes Depends with it)
command -v cargo >/dev/null 2>&1 || { echo "deps: cargo not found; install the Rust toolchain (https://rustup.rs)" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true

if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "deps: installing$missing"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        echo "deps: missing Debian packages:$missing" >&2
        echo "deps: install them with: sudo apt-get install$missing" >&2
        exit 1
    fi
fi

# A real Prometheus server and promtool for tests/prometheus.rs and
# tests/http.rs. Without the recommended exporters: node-exporter would be
# installed (and, under systemd, started) on the host.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "deps: installing prometheus (server and promtool, for the tests)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "deps: missing Debian package: prometheus (for the tests)" >&2
        echo "deps: install it with: sudo apt-get install --no-install-recommends prometheus" >&2
        exit 1
    fi
fi

# Headless Chromium for tests/page.rs (the status page in a real browser).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "deps: installing chromium (headless, for the status page test)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    else
        echo "deps: missing Debian package: chromium (for the tests)" >&2
        echo "deps: install it with: sudo apt-get install --no-install-recommends chromium" >&2
        exit 1
    fi
fi

# A real EasyTier 2.6 node for the interop tests: the easytier-pyo3 package
# (upstream core 2.6.4) in a virtual environment, installed from PyPI here,
# outside the tests' network namespace. Quiet and instant once installed.
sh "$(dirname "$0")/et26-venv.sh" >/dev/null
