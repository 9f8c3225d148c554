//! Interop: `easytier-probe check` against real EasyTier 2.0.3 and 2.6 nodes, every transport, member and relay.
//!
//! Every cell runs twice: as a full check (`check`) and as a quick one
//! (`check --quick`), which must reach the same verdict at the handshake.
//!
//! The 2.0.3 node runs in-process, the 2.6 node is easytier-pyo3 in a child
//! process (common::et26). Besides the {tcp, udp, ws, wss, wg} x {member,
//! relay} matrix: private mode, relay whitelist, wrong secret, closed port
//! and role mismatch. Each test function starts its nodes once and runs its cells one after the
//! other; a failing cell does not stop the others: the test fails at the end
//! with every failing cell named. Runs only in a private network namespace.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::et26::Node26;
use common::*;
use serde_json::{json, Value};

/// `--timeout` of every check, in seconds. Online cells take 1–2 s.
const TIMEOUT_SECS: u64 = 10;
const PROTOCOLS: [&str; 5] = ["tcp", "udp", "ws", "wss", "wg"];
/// Every key of the `check --json` object.
const KEYS: [&str; 10] = [
    "uri",
    "status",
    "role",
    "error",
    "error_kind",
    "latency_us",
    "remote_version",
    "remote_hostname",
    "duration_ms",
    "attempts",
];

/// Who the probe is to the node.
#[derive(Clone, Copy)]
enum Join<'a> {
    /// A member check: the node's own network name and a secret.
    Member { network: &'a str, secret: &'a str },
    /// A relay check: no secret, the probe joins under its guest network
    /// name (`probe_guest_network()`).
    Relay,
}

/// The guest network name of a relay check: `easytier-probe-<host name>`,
/// as the binary makes it (`--network-name` without a secret is only a label).
fn probe_guest_network() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("easytier-probe-{host}")
}

/// What a cell must show.
enum Expect<'a> {
    /// Online in `role` ("member" or "public_server"); `version` is a prefix
    /// of remote_version; `hostname` is the node's own host name.
    Online {
        role: &'a str,
        version: &'a str,
        hostname: &'a str,
    },
    /// Offline with this error_kind; `fast`: decided before half the timeout.
    Offline { kind: &'a str, fast: bool },
    /// Not checkable at all: status and error_kind "unsupported", exit 2, at once.
    Unsupported,
}

/// One test function's cells and their failures.
struct Cells {
    dir: TempDir,
    failures: Vec<String>,
    count: usize,
    /// Quick checks (`--quick`) instead of full ones.
    quick: bool,
}

/// Both kinds of check, full first.
const KINDS: [bool; 2] = [false, true];

impl Cells {
    fn new(name: &str, quick: bool) -> Cells {
        let kind = if quick { "quick" } else { "full" };
        Cells {
            dir: temp_dir(&format!("interop-{name}-{kind}")),
            failures: Vec::new(),
            count: 0,
            quick,
        }
    }

    /// Runs `easytier-probe check URI ... --json --timeout 10` and checks the
    /// outcome against `expect`; a mismatch is recorded under `cell`.
    fn run(&mut self, cell: &str, uri: &str, join: Join, expect: Expect) {
        static SECRET_FILES: AtomicU64 = AtomicU64::new(0);
        self.count += 1;
        let mut cmd = probe_bin();
        cmd.args([
            "check",
            uri,
            "--json",
            "--timeout",
            &TIMEOUT_SECS.to_string(),
        ]);
        if self.quick {
            cmd.arg("--quick");
        }
        match join {
            Join::Member { network, secret } => {
                let file = self.dir.join(format!(
                    "secret-{}",
                    SECRET_FILES.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&file, format!("{secret}\n")).unwrap();
                cmd.args(["--network-name", network, "--network-secret-file"])
                    .arg(&file);
            }
            Join::Relay => {}
        }
        let started = Instant::now();
        let out = cmd.output().expect("run easytier-probe check");
        let wall = started.elapsed();
        let code = out.status.code();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut problems = match serde_json::from_str::<Value>(stdout.trim()) {
            Ok(r) if r.is_object() => judge(&r, code, uri, wall, &expect, self.quick),
            _ => vec!["stdout is not one JSON object".to_string()],
        };
        if let Join::Member { secret, .. } = join {
            if stdout.contains(secret) || stderr.contains(secret) {
                problems.push("the network secret appears in the output".to_string());
            }
        }
        if !problems.is_empty() {
            let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            self.failures.push(format!(
                "cell {cell}{} ({uri}): {}\n    exit {code:?} in {} ms, stdout: {}\n    stderr tail: {}",
                if self.quick { " quick" } else { "" },
                problems.join("; "),
                wall.as_millis(),
                stdout.trim(),
                tail.join("\n        ")
            ));
        }
    }

    /// Fails the test if any cell failed, naming every failing cell.
    fn finish(self, what: &str) {
        assert!(
            self.failures.is_empty(),
            "{what}: {} of {} cells failed:\n{}",
            self.failures.len(),
            self.count,
            self.failures.join("\n")
        );
    }
}

/// The differences between one check's outcome and `expect`.
fn judge(
    r: &Value,
    code: Option<i32>,
    uri: &str,
    wall: Duration,
    expect: &Expect,
    quick: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut want = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let missing: Vec<&str> = KEYS
        .iter()
        .copied()
        .filter(|k| r.get(*k).is_none())
        .collect();
    want(missing.is_empty(), format!("keys missing: {missing:?}"));
    want(
        r["uri"]
            .as_str()
            .is_some_and(|u| u.trim_end_matches('/') == uri),
        format!("uri {} is not {uri}", r["uri"]),
    );
    let duration_ms = r["duration_ms"].as_u64();
    match expect {
        Expect::Online {
            role,
            version,
            hostname,
        } => {
            want(code == Some(0), format!("exit {code:?}, want 0"));
            want(
                r["status"] == "Online",
                format!("status {}, want Online", r["status"]),
            );
            want(
                r["role"] == *role,
                format!("role {}, want {role}", r["role"]),
            );
            want(
                r["error"].is_null(),
                format!("error {} on Online", r["error"]),
            );
            want(
                r["error_kind"].is_null(),
                format!("error_kind {} on Online", r["error_kind"]),
            );
            // A udp relay gets a full check even when a quick one is asked.
            let udp_relay = uri.starts_with("udp:") && *role == "public_server";
            if quick && !udp_relay {
                // At the handshake: no version yet, the handshake's latency.
                want(
                    r["check_kind"] == "quick" && r["latency_kind"] == "handshake",
                    format!(
                        "check_kind {} latency_kind {}",
                        r["check_kind"], r["latency_kind"]
                    ),
                );
                want(
                    r["remote_version"].is_null() && r["version_observed"] == false,
                    format!("a quick check observed version {}", r["remote_version"]),
                );
                want(
                    r["latency_us"].as_u64().is_some_and(|us| us > 0),
                    format!("handshake latency {}", r["latency_us"]),
                );
                want(
                    duration_ms.is_some_and(|d| d < 1000),
                    format!("quick Online took duration_ms {duration_ms:?}"),
                );
                return problems;
            }
            want(
                r["check_kind"] == "full" && r["latency_kind"] == "rtt",
                format!(
                    "check_kind {} latency_kind {}",
                    r["check_kind"], r["latency_kind"]
                ),
            );
            want(
                r["remote_version"]
                    .as_str()
                    .is_some_and(|v| v.starts_with(version)),
                format!("remote_version {}, want {version}*", r["remote_version"]),
            );
            // A relay answers as "PublicServer_<host name>".
            let host = if *role == "public_server" {
                format!("PublicServer_{hostname}")
            } else {
                hostname.to_string()
            };
            want(
                r["remote_hostname"] == host.as_str(),
                format!("remote_hostname {}, want {host}", r["remote_hostname"]),
            );
        }
        Expect::Offline { kind, fast } => {
            want(code == Some(1), format!("exit {code:?}, want 1"));
            want(
                r["status"] == "Offline",
                format!("status {}, want Offline", r["status"]),
            );
            want(
                r["error_kind"] == *kind,
                format!("error_kind {}, want {kind}", r["error_kind"]),
            );
            want(
                r["error"].as_str().is_some_and(|e| !e.is_empty()),
                format!("error {} on Offline", r["error"]),
            );
            if *fast {
                let half = TIMEOUT_SECS * 1000 / 2;
                want(
                    duration_ms.is_some_and(|d| d < half),
                    format!(
                        "duration_ms {duration_ms:?}, want < {half} (a verdict, not the timeout)"
                    ),
                );
            }
        }
        Expect::Unsupported => {
            want(code == Some(2), format!("exit {code:?}, want 2"));
            want(
                r["status"] == "unsupported",
                format!("status {}, want unsupported", r["status"]),
            );
            want(
                r["error_kind"] == "unsupported",
                format!("error_kind {}, want unsupported", r["error_kind"]),
            );
            // At once: no instance, no wait for the timeout.
            want(
                duration_ms.is_some_and(|d| d < 1000) && wall < Duration::from_secs(3),
                format!(
                    "took duration_ms {duration_ms:?} ({} ms wall), want at once",
                    wall.as_millis()
                ),
            );
        }
    }
    problems
}

/// The ten cells {tcp, udp, ws, wss, wg} x {member, relay} against one node
/// of `network`/`secret` named `hostname`, whose version starts with `version`.
fn run_matrix(
    cells: &mut Cells,
    label: &str,
    uri: impl Fn(&str) -> String,
    network: &str,
    secret: &str,
    hostname: &str,
    version: &str,
) {
    for proto in PROTOCOLS {
        cells.run(
            &format!("{label} {proto} member"),
            &uri(proto),
            Join::Member { network, secret },
            Expect::Online {
                role: "member",
                version,
                hostname,
            },
        );
        let relay_expect = if proto == "wg" {
            // WireGuard keys come from the node's own network secret: a
            // guest can never finish the handshake.
            Expect::Unsupported
        } else {
            Expect::Online {
                role: "public_server",
                version,
                hostname,
            }
        };
        cells.run(
            &format!("{label} {proto} relay"),
            &uri(proto),
            Join::Relay,
            relay_expect,
        );
    }
}

/// A 2.6 node config with the given listeners on loopback (port 0: any).
fn config26(network: &str, secret: &str, hostname: &str, protocols: &[&str]) -> Value {
    let listeners: Vec<String> = protocols
        .iter()
        .map(|p| {
            let path = if p.starts_with("ws") { "/" } else { "" };
            format!("{p}://127.0.0.1:0{path}")
        })
        .collect();
    json!({
        "instance_name": hostname,
        "hostname": hostname,
        "network_name": network,
        "network_secret": secret,
        "listeners": listeners,
    })
}

#[test]
fn matrix_against_easytier_2_0_3() {
    require_private_netns();
    let node = AllTransportsNode::start("interop-203", "secret-203", "node-203");
    for quick in KINDS {
        let mut cells = Cells::new("matrix-203", quick);
        run_matrix(
            &mut cells,
            "2.0.3",
            |p| node.uri(p),
            "interop-203",
            "secret-203",
            "node-203",
            easytier::VERSION,
        );
        // A member check of a network the node does not have: the node serves
        // the probe as a public relay instead.
        cells.run(
            "2.0.3 tcp member of another network",
            &node.uri("tcp"),
            Join::Member {
                network: "not-interop-203",
                secret: "secret-203",
            },
            Expect::Offline {
                kind: "role_mismatch",
                fast: false,
            },
        );
        // The reverse: a relay check of a node whose own network is the probe's
        // guest network with an empty secret joins it as a member.
        let open = TargetNode::start(&probe_guest_network(), "", "open-203");
        cells.run(
            "2.0.3 tcp relay to a node of the guest network with an empty secret",
            &open.tcp_uri(),
            Join::Relay,
            Expect::Offline {
                kind: "role_mismatch",
                fast: false,
            },
        );
        cells.finish("2.0.3 node");
    }
}

#[test]
fn matrix_against_easytier_2_6() {
    require_private_netns();
    let node = Node26::start(config26("interop-26", "secret-26", "node-26", &PROTOCOLS));
    assert!(
        node.version.starts_with("2.6."),
        "2.6 node version {}",
        node.version
    );
    for quick in KINDS {
        let mut cells = Cells::new("matrix-26", quick);
        run_matrix(
            &mut cells,
            "2.6",
            |p| node.uri(p),
            "interop-26",
            "secret-26",
            "node-26",
            "2.6.",
        );
        cells.finish("2.6 matrix");
    }
}

#[test]
fn private_mode_2_6_node_does_not_relay() {
    require_private_netns();
    let mut config = config26("private-26", "secret-p26", "private-26", &["tcp", "udp"]);
    config["private_mode"] = json!(true);
    let node = Node26::start(config);
    for quick in KINDS {
        let mut cells = Cells::new("private-26", quick);
        for proto in ["tcp", "udp"] {
            cells.run(
                &format!("2.6 private_mode {proto} relay"),
                &node.uri(proto),
                Join::Relay,
                Expect::Offline {
                    kind: "not_relayed",
                    fast: true,
                },
            );
        }
        // Private mode keeps serving the node's own network.
        cells.run(
            "2.6 private_mode tcp member",
            &node.uri("tcp"),
            Join::Member {
                network: "private-26",
                secret: "secret-p26",
            },
            Expect::Online {
                role: "member",
                version: "2.6.",
                hostname: "private-26",
            },
        );
        cells.finish("2.6 private mode");
    }
}

#[test]
fn relay_whitelist_2_6_node_relays_only_listed_networks() {
    require_private_netns();
    let mut config = config26("wl-26", "secret-wl26", "wl-26", &["tcp", "ws"]);
    config["relay_network_whitelist"] = json!("listed-guest another-guest");
    let unlisted = Node26::start(config);
    // Whitelist entries may be wildcards.
    let mut config = config26("wl2-26", "secret-wl226", "wl2-26", &["tcp", "ws"]);
    config["relay_network_whitelist"] = json!("listed-guest easytier-probe-*");
    let listed = Node26::start(config);
    for quick in KINDS {
        let mut cells = Cells::new("whitelist-26", quick);
        for proto in ["tcp", "ws"] {
            cells.run(
                &format!("2.6 whitelist without the probe, {proto} relay"),
                &unlisted.uri(proto),
                Join::Relay,
                Expect::Offline {
                    kind: "not_relayed",
                    fast: true,
                },
            );
            cells.run(
                &format!("2.6 whitelist with easytier-probe-*, {proto} relay"),
                &listed.uri(proto),
                Join::Relay,
                Expect::Online {
                    role: "public_server",
                    version: "2.6.",
                    hostname: "wl2-26",
                },
            );
        }
        cells.finish("2.6 relay whitelist");
    }
}

#[test]
fn wrong_secret_and_closed_port_on_2_6_node() {
    require_private_netns();
    let mut node = Node26::start(config26(
        "secret-net-26",
        "right-secret-26",
        "secret-26",
        &["tcp", "udp"],
    ));
    for quick in KINDS {
        let mut cells = Cells::new("secret-26", quick);
        for proto in ["tcp", "udp"] {
            cells.run(
                &format!("2.6 {proto} member with wrong secret"),
                &node.uri(proto),
                Join::Member {
                    network: "secret-net-26",
                    secret: "wrong-secret-26",
                },
                Expect::Offline {
                    kind: "rejected",
                    fast: false,
                },
            );
        }
        cells.finish("2.6 wrong secret");
    }
    // The node stops: its tcp port now refuses connections.
    let tcp = node.uri("tcp");
    node.stop();
    for quick in KINDS {
        let mut cells = Cells::new("closed-26", quick);
        cells.run(
            "2.6 tcp relay after the node stopped",
            &tcp,
            Join::Relay,
            Expect::Offline {
                kind: "refused",
                fast: true,
            },
        );
        cells.finish("2.6 closed port");
    }
}

#[test]
fn role_mismatch_against_2_6_node() {
    require_private_netns();
    let node = Node26::start(config26("own-26", "own-secret-26", "own-26", &["tcp"]));
    // A node whose own network is the probe's guest network, with an empty
    // secret: 2.6 lets the guest in as a member of that network. (With a
    // non-empty secret the same guest is rejected instead.)
    let open = Node26::start(config26(&probe_guest_network(), "", "open-26", &["tcp"]));
    for quick in KINDS {
        let mut cells = Cells::new("role-26", quick);
        cells.run(
            "2.6 tcp member of a network the node does not have",
            &node.uri("tcp"),
            Join::Member {
                network: "not-own-26",
                secret: "own-secret-26",
            },
            Expect::Offline {
                kind: "role_mismatch",
                fast: false,
            },
        );
        cells.run(
            "2.6 tcp relay to a node of the guest network with an empty secret",
            &open.uri("tcp"),
            Join::Relay,
            Expect::Offline {
                kind: "role_mismatch",
                fast: false,
            },
        );
        cells.finish("2.6 role mismatch");
    }
}
