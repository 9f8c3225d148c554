//! What a new user meets first, against real EasyTier nodes on loopback
//! (private network namespace): a network name without a secret, and a
//! secret-bearing peers file handed over as a systemd credential.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Role and host name of the latest Online result of `peer_id`, read from the database.
fn online_as(db: &Path, peer_id: i64) -> Option<(String, String)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.busy_timeout(Duration::from_secs(5)).ok()?;
    conn.query_row(
        "SELECT role, remote_hostname FROM results
         WHERE peer_id = ?1 AND status = 'Online' ORDER BY seq DESC LIMIT 1",
        [peer_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

/// `check --network-name X` without a secret, X the node's own network: the
/// name is only a label, the check is a relay check under the probe's own
/// guest network name, and the node answers it.
#[test]
fn check_with_a_network_name_and_no_secret_is_an_online_relay_check() {
    require_private_netns();
    let node = TargetNode::start("net-label", "label-secret", "label-node");
    let out = probe_bin()
        .args(["check", &node.tcp_uri(), "--network-name", "net-label"])
        .args(["--json", "--timeout", "10"])
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{r} {stderr}");
    assert_eq!(r["status"], "Online", "{r}");
    assert_eq!(r["role"], "public_server", "a relay check: {r}");
    assert_eq!(r["remote_hostname"], "PublicServer_label-node", "{r}");
    assert!(r["error"].is_null(), "{r}");
}

/// The daemon gives a peer with a network name and no secret the same
/// meaning, from `--peer ...?network_name=X` and from a peers file entry.
#[test]
fn daemon_peers_with_a_network_name_and_no_secret_are_online_relay_checks() {
    require_private_netns();
    let node = TargetNode::start("net-label-d", "label-d-secret", "label-d-node");
    let dir = temp_dir("label-daemon");
    let peers_file = write_peers_file(
        &dir,
        &[peer_json(
            2,
            "from-file",
            "127.0.0.1",
            node.udp_port,
            "udp",
            "net-label-d",
            None,
        )],
    );
    let peer_flag = format!(
        "{}?network_name=net-label-d&name=from-flag&id=1",
        node.tcp_uri()
    );
    let mut daemon = Daemon::start(
        &dir,
        &[
            "--peer".into(),
            peer_flag,
            "--peers-file".into(),
            peers_file.to_str().unwrap().into(),
            "--check-interval".into(),
            "2".into(),
        ],
        &[],
    );
    for id in [1, 2] {
        let (role, host) = wait_for(
            &format!("an Online result for peer {id}"),
            Duration::from_secs(30),
            || online_as(&daemon.db, id),
        );
        assert_eq!(role, "public_server", "peer {id}: a relay check");
        assert_eq!(host, "PublicServer_label-d-node", "peer {id}");
    }
    let rows = daemon.status_json();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["status"] == "Online"), "{rows:?}");
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        daemon.log()
    );
}

/// A peers file with network secrets reaches the service as a systemd
/// credential: `LoadCredential=peers.json:/etc/easytier-probe/peers.json`
/// and `Environment=PEERS_FILE=%d/peers.json`. systemd gives the service a
/// read-only directory in `$CREDENTIALS_DIRECTORY` holding a 0400 copy of
/// the file. The daemon reads it there at start and again on SIGHUP.
#[test]
fn a_peers_file_in_a_credentials_directory_is_read_at_start_and_on_sighup() {
    require_private_netns();
    let first = TargetNode::start("net-cred-1", "cred-secret-one", "cred-node-1");
    let second = TargetNode::start("net-cred-2", "cred-secret-two", "cred-node-2");
    let dir = temp_dir("credentials");
    let credentials = dir.join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let peers_file = credentials.join("peers.json");
    let member = |id, node: &TargetNode| {
        peer_json(
            id,
            &format!("member-{id}"),
            "127.0.0.1",
            node.tcp_port,
            "tcp",
            &node.network_name,
            Some(&node.network_secret),
        )
    };
    // As systemd leaves it: the file owner-only and read-only, the directory
    // not writable. (Root writes it anyway, as systemd does before start.)
    let install = |peers: Value| {
        let staged = dir.join("peers.json.new");
        std::fs::write(&staged, peers.to_string()).unwrap();
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::rename(&staged, &peers_file).unwrap();
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o500)).unwrap();
    };
    install(json!([member(1, &first)]));
    let mode = std::fs::metadata(&peers_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o400);

    let mut daemon = Daemon::start(
        &dir,
        &["--check-interval".into(), "2".into()],
        &[
            (
                "CREDENTIALS_DIRECTORY",
                credentials.to_str().unwrap().to_string(),
            ),
            ("PEERS_FILE", peers_file.to_str().unwrap().to_string()),
        ],
    );
    let (role, _) = wait_for("peer 1 Online as a member", Duration::from_secs(30), || {
        online_as(&daemon.db, 1)
    });
    assert_eq!(role, "member", "the secret from the credential was used");

    install(json!([member(1, &first), member(2, &second)]));
    daemon.signal("HUP");
    let (role, host) = wait_for(
        "peer 2 Online as a member after SIGHUP",
        Duration::from_secs(30),
        || online_as(&daemon.db, 2),
    );
    assert_eq!((role.as_str(), host.as_str()), ("member", "cred-node-2"));

    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        daemon.log()
    );
    let log = daemon.log();
    for secret in ["cred-secret-one", "cred-secret-two"] {
        assert!(!log.contains(secret), "secret {secret:?} in the log: {log}");
    }
}

/// `/etc/default/easytier-probe` lists every setting, as its header and the
/// README say: each variable the daemon's `--help` names, each whole-number
/// setting with its default, and the default log filter as it is.
#[test]
fn the_packaged_defaults_file_lists_every_setting_with_its_default() {
    let defaults = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/easytier-probe.default"
    ))
    .unwrap();
    let assigned = |var: &str| {
        defaults
            .lines()
            .filter_map(|l| l.trim_start_matches('#').split_once('='))
            .filter(|(name, _)| *name == var)
            .map(|(_, value)| value.to_string())
            .collect::<Vec<_>>()
    };
    let out = probe_bin().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut vars: Vec<String> = help
        .split("[env ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    assert!(vars.len() > 15, "too few variables in --help: {vars:?}");
    vars.push("RUST_LOG".into());
    let missing: Vec<_> = vars.iter().filter(|v| assigned(v).is_empty()).collect();
    assert!(
        missing.is_empty(),
        "not in packaging/easytier-probe.default: {missing:?}"
    );
    for setting in easytier_probe::config::settings::ALL {
        assert_eq!(
            assigned(setting.var),
            vec![setting.default.to_string()],
            "#{}={} in packaging/easytier-probe.default",
            setting.var,
            setting.default
        );
    }
    assert_eq!(
        assigned("RUST_LOG"),
        vec![easytier_probe::logging::DEFAULT_FILTER.to_string()],
        "the default log filter as the probe has it"
    );
}

/// The example shipped as `/etc/easytier-probe/peers.json.example` is a
/// valid peers file: every entry is a peer, none is skipped.
#[test]
fn the_packaged_example_peers_file_is_valid() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/peers.json.example"
    ))
    .unwrap();
    let list: Vec<Value> = serde_json::from_str(&text).expect("a JSON array");
    let (peers, problems) = easytier_probe::peer::validate_list(list);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(peers.len(), 3);
    let roles: Vec<_> = peers.iter().map(|p| p.role()).collect();
    assert_eq!(
        roles,
        vec![
            easytier_probe::peer::Role::PublicServer,
            easytier_probe::peer::Role::PublicServer,
            easytier_probe::peer::Role::Member
        ],
        "a relay, a relay with a network name as a label, a member"
    );
}
