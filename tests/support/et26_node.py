#!/usr/bin/env python3
"""Runs one real EasyTier 2.6 node for tests (easytier-pyo3 0.1.3, core 2.6.4).

Run it with the python that scripts/et26-venv.sh prints, and only inside a
private network namespace with loopback only, e.g.

    py=$(sh scripts/et26-venv.sh)
    unshare --net sh -c 'ip link set lo up && exec "$0" tests/support/et26_node.py cfg.json' "$py"

Input: a JSON object in the file named by argv[1], or on stdin when there is
no argument (or it is "-"); on stdin it ends at the first line where the text
so far parses, and the rest of stdin stays open as the node's lifeline.

    instance_name            str, default "et26"
    hostname                 str, default instance_name
    network_name             str, required
    network_secret           str, default ""
    listeners                list of URIs: tcp://127.0.0.1:P, udp://.., ws://..:P/,
                             wss://..:P/, wg://..; port 0 picks a free port (READY
                             tells which)
    private_mode             bool, default false
    relay_network_whitelist  str (space-separated network names; EasyTier's
                             default is "*"), or a list of names (joined)
    flags                    dict, more EasyTier [flags] merged over ours
                             (unknown flag names make the config fail)
    config                   dict, more top-level EasyTier config keys merged
                             over ours (unknown keys are ignored by EasyTier)
    ready_timeout            seconds to wait for the listeners, default 10
    log_events               bool: print each node event to stderr as
                             "EVENT <json>", default false
    wait_stdin               bool, default true: stop at EOF on stdin; when
                             false only SIGTERM/SIGINT stop the node
    allow_network            bool, default false: without it the script refuses
                             to start when any interface other than "lo" exists

Output on stdout, exactly one line:
    READY {"version": .., "listeners": [..], "instance_id": .., "peer_id": ..,
           "network_name": .., "hostname": .., "pid": .., "start_ms": ..}
or  ERROR <message>   (exit 1)
After READY it runs until EOF on stdin or SIGTERM/SIGINT, stops the node and
exits 0. Diagnostics go to stderr.
"""

import json
import os
import select
import signal
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

STREAM_SCHEMES = {"tcp", "ws", "wss"}  # accept a plain TCP connection when ready


class Fail(Exception):
    pass


def read_config():
    if len(sys.argv) > 2:
        raise Fail("usage: et26_node.py [CONFIG.json | -]")
    if len(sys.argv) == 2 and sys.argv[1] != "-":
        try:
            with open(sys.argv[1], encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise Fail(f"cannot read config {sys.argv[1]}: {e}") from e
    # From stdin: read line by line until the text parses, so that the rest
    # of stdin stays unread (its EOF is the stop signal).
    text = ""
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        text += line
        try:
            return json.loads(text)
        except ValueError:
            continue
    try:
        return json.loads(text)
    except ValueError as e:
        raise Fail(f"no JSON config on stdin: {e}") from e


def check_isolated(spec):
    if spec.get("allow_network") or os.environ.get("ET26_ALLOW_NETWORK") == "1":
        return
    others = [name for _, name in socket.if_nameindex() if name != "lo"]
    if others:
        raise Fail(
            "refusing to start an EasyTier node outside a loopback-only network "
            f"namespace (interfaces: {', '.join(others)}); run it under "
            "`unshare --net sh -c 'ip link set lo up && ...'`"
        )


def build_node_config(spec):
    if not isinstance(spec, dict):
        raise Fail("config must be a JSON object")
    name = spec.get("network_name")
    if not isinstance(name, str) or not name:
        raise Fail("network_name is required")
    listeners = spec.get("listeners", [])
    if not isinstance(listeners, list) or not all(isinstance(u, str) for u in listeners):
        raise Fail("listeners must be a list of URI strings")
    instance = spec.get("instance_name", "et26")
    flags = {
        "no_tun": True,
        "bind_device": False,
        "disable_upnp": True,
        "private_mode": bool(spec.get("private_mode", False)),
    }
    wl = spec.get("relay_network_whitelist")
    if wl is not None:
        # EasyTier takes a string here; a list makes "failed to parse flags".
        flags["relay_network_whitelist"] = " ".join(wl) if isinstance(wl, list) else str(wl)
    flags.update(spec.get("flags") or {})
    cfg = {
        "instance_name": instance,
        "hostname": spec.get("hostname", instance),
        "network_identity": {
            "network_name": name,
            "network_secret": spec.get("network_secret", ""),
        },
        "listeners": listeners,
        # No STUN servers: nothing to reach in the namespace anyway.
        "stun_servers": [],
        "tcp_stun_servers": [],
        "stun_servers_v6": [],
        "flags": flags,
    }
    cfg.update(spec.get("config") or {})
    return cfg


def port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_ready(node, wanted, timeout):
    """Waits until running_listeners() lists `wanted` listeners and every
    TCP-based one accepts a connection. Returns the running listeners (with
    the real ports where the config said 0)."""
    deadline = time.monotonic() + timeout
    while True:
        running = [u for u in node.running_listeners() if not u.startswith("ring://")]
        pending = []
        if len(running) < wanted:
            pending.append(f"{len(running)} of {wanted} listeners running")
        else:
            for uri in running:
                u = urlsplit(uri)
                if u.scheme in STREAM_SCHEMES and not port_open(u.hostname, u.port):
                    pending.append(f"{uri} does not accept connections")
        if not pending:
            return running
        state = node.state()
        if state not in ("Starting", "Running"):
            raise Fail(f"node is {state}: {node.latest_error()}")
        if time.monotonic() > deadline:
            raise Fail(f"not ready after {timeout}s: {'; '.join(pending)}")
        time.sleep(0.02)


def main():
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    node = None
    try:
        spec = read_config()
        cfg = build_node_config(spec)
        check_isolated(spec)
        try:
            from easytier_pyo3 import Node, version
        except ImportError as e:
            raise Fail(f"easytier_pyo3 not importable (use the python from scripts/et26-venv.sh): {e}") from e

        t0 = time.monotonic()
        try:
            node = Node(cfg)
            node.start()
        except Exception as e:  # ValueError: bad config; RuntimeError: start failed
            raise Fail(f"{type(e).__name__}: {e}") from e
        listeners = wait_ready(node, len(cfg["listeners"]), float(spec.get("ready_timeout", 10)))
        start_ms = round((time.monotonic() - t0) * 1000, 1)

        pump = None
        if spec.get("log_events"):
            def pump_events():
                while not stop.is_set():
                    ev = node.next_event(timeout=0.2)
                    if ev is not None:
                        print("EVENT " + json.dumps(ev, default=str), file=sys.stderr, flush=True)
            pump = threading.Thread(target=pump_events, name="events")
            pump.start()

        ready = {
            "version": version(),
            "listeners": listeners,
            "instance_id": node.instance_id(),
            "peer_id": node.peer_id(),
            "network_name": cfg["network_identity"]["network_name"],
            "hostname": cfg["hostname"],
            "pid": os.getpid(),
            "start_ms": start_ms,
        }
        sys.stdout.write("READY " + json.dumps(ready) + "\n")
        sys.stdout.flush()

        # Wait on fd 0 with poll in this thread (no reader thread: one
        # blocked in stdin at exit aborts the interpreter).
        poller = None
        if spec.get("wait_stdin", True):
            poller = select.poll()
            poller.register(0, select.POLLIN | select.POLLHUP | select.POLLERR)
        while not stop.is_set():
            if poller is None:
                stop.wait(0.5)
                continue
            if poller.poll(500):
                try:
                    if not os.read(0, 65536):
                        break  # EOF
                except OSError:
                    break
        stop.set()
        if pump is not None:
            pump.join()
        node.stop()
        return 0
    except Exception as e:
        stop.set()  # ends the event pump, if any
        if node is not None:
            try:
                node.stop()
            except Exception:
                pass
        msg = str(e) if isinstance(e, Fail) else f"{type(e).__name__}: {e}"
        msg = " ".join(msg.split())
        sys.stdout.write(f"ERROR {msg}\n")
        sys.stdout.flush()
        return 1


if __name__ == "__main__":
    sys.exit(main())
