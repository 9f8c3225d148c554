#!/bin/sh
# Makes the Python virtualenv that runs tests/support/et26_node.py: a real
# EasyTier 2.6 node for tests, from the PyPI package easytier-pyo3 (it embeds
# the upstream core 2.6.4). Idempotent; quiet. The last line on stdout is the
# path of the venv's python.
#
#   ET26_VENV   where the venv lives (default ~/.cache/easytier-probe/et26-venv)
#   PYTHON      the interpreter that creates it (default python3)
#
# Creating the venv and installing the package needs PyPI; running the node
# afterwards needs no network (and must run inside `unshare --net`).
set -eu

pkg=easytier-pyo3
ver=0.1.3
venv="${ET26_VENV:-${HOME:-/root}/.cache/easytier-probe/et26-venv}"
py="$venv/bin/python"

# Fast path: the venv's python exists and the exact version is installed.
# Pure shell, no interpreter start-up.
if [ -x "$py" ]; then
    for d in "$venv"/lib/python3*/site-packages/easytier_pyo3-"$ver".dist-info; do
        if [ -d "$d" ]; then
            echo "$py"
            exit 0
        fi
    done
fi

base="${PYTHON:-python3}"
command -v "$base" >/dev/null 2>&1 || {
    echo "et26-venv: $base not found; install Python 3 (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
}

# `python3 -m venv` needs both venv and ensurepip (Debian ships ensurepip in
# python3-venv, apart from python3 itself).
if ! "$base" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "et26-venv: installing python3-venv" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        "$base" -c 'import venv, ensurepip' >/dev/null 2>&1 || {
            echo "et26-venv: $base still has no venv/ensurepip module after installing python3-venv; set PYTHON=/usr/bin/python3" >&2
            exit 1
        }
    else
        echo "et26-venv: $base lacks the venv module; install it with: sudo apt-get install python3-venv" >&2
        exit 1
    fi
fi

# A half-made venv (no python in it) is removed and made again.
if [ ! -x "$py" ]; then
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$base" -m venv "$venv" >&2
fi

echo "et26-venv: installing $pkg==$ver into $venv" >&2
"$py" -m pip install -q --disable-pip-version-check --no-input "$pkg==$ver" >&2 || {
    echo "et26-venv: pip install $pkg==$ver failed (it needs PyPI, and a wheel for this platform)" >&2
    exit 1
}
"$py" -c 'import easytier_pyo3' >&2 || {
    echo "et26-venv: $pkg installed but does not import" >&2
    exit 1
}
echo "$py"
