#!/bin/sh
# The probe's first run, on a machine with no EasyTier node of its own:
# builds the probe, starts a local EasyTier node (examples/demo_node.rs) in a
# private network namespace with only loopback, checks it with the real
# binary, prints the result and exits with the probe's own status:
# 0 Online, 1 Offline, 2 usage error. Any other status (3, or cargo's) means
# the demo could not run; the message above it says why.
#
#   sh scripts/demo.sh            # the check, one line
#   sh scripts/demo.sh --json     # extra arguments go to `easytier-probe check`
#
# Why a namespace: an EasyTier node binds to every interface and contacts
# public STUN servers; inside the namespace nothing leaves the machine. To
# check a node of your own, run the binary directly (no namespace needed):
#   ./target/release/easytier-probe check tcp://your-node.example.net:11010
set -eu
cd "$(dirname "$0")/.."

say() { printf 'demo: %s\n' "$*" >&2; }

# What the demo needs besides Rust: protoc to build the easytier crate,
# unshare and ip for the namespace.
missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need protoc protobuf-compiler
need unshare util-linux
need ip iproute2
command -v cargo >/dev/null 2>&1 || { say "cargo not found; install the Rust toolchain (https://rustup.rs)"; exit 3; }
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing$missing"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        say "missing Debian packages:$missing; install them with: sudo apt-get install$missing"
        exit 3
    fi
fi

# The first build takes about 5 minutes (target/ grows to about 6 GB).
say "building (cargo build --release; the first build takes about 5 minutes)"
cargo build --locked --release --bin easytier-probe --example demo_node >&2

# Inside the namespace: bring loopback up, start the node, wait (20 s at
# most) until it accepts connections, check it, stop it. Ctrl-C reaches the
# node too (same process group).
inner='
ip link set lo up || exit 3
ready=$(mktemp)
./target/release/examples/demo_node 11010 >"$ready" &
node=$!
tries=0
until grep -q listening "$ready"; do
    if ! kill -0 "$node" 2>/dev/null || [ "$tries" -ge 200 ]; then
        echo "demo: the local EasyTier node did not start" >&2
        exit 3
    fi
    tries=$((tries + 1))
    sleep 0.1
done
echo "demo: $(cat "$ready")" >&2
echo "demo: easytier-probe check tcp://127.0.0.1:11010${*:+ $*}" >&2
status=0
./target/release/easytier-probe check tcp://127.0.0.1:11010 "$@" || status=$?
kill "$node"
wait "$node" 2>/dev/null
rm -f "$ready"
exit "$status"
'
# As root `unshare --net` is enough; otherwise map the user to root in a new
# user namespace (as the Makefile does for the tests).
if [ "$(id -u)" = 0 ]; then
    set -- unshare --net sh -c "$inner" demo "$@"
else
    set -- unshare --net --map-root-user sh -c "$inner" demo "$@"
fi
status=0
"$@" || status=$?
exit "$status"
