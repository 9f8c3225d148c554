//! Verdicts the daemon records: confirmation before Offline, error kinds, unsupported peers, and the log lines a verdict change writes.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use easytier::common::config::{ConfigLoader, NetworkIdentity, TomlConfigLoader};
use easytier::launcher::NetworkInstance;

/// A real node listening on tcp://127.0.0.1:`port`, started on demand.
fn node_on(port: u16) -> NetworkInstance {
    let config = TomlConfigLoader::default();
    config.set_inst_name(format!("late-{port}"));
    config.set_hostname(Some("late-node".into()));
    config.set_network_identity(NetworkIdentity::new(
        "late-net".into(),
        "late-secret".into(),
    ));
    config.set_listeners(vec![format!("tcp://127.0.0.1:{port}").parse().unwrap()]);
    config.set_dhcp(false);
    let mut instance = NetworkInstance::new(config);
    instance.start().expect("start the late node");
    wait_for("the late node to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
    instance
}

/// The daemon with the given environment only (no RUST_LOG unless given),
/// stderr to `log`.
fn daemon(dir: &Path, peers_file: &Path, log: &Path, envs: &[(&str, String)]) -> Child {
    let mut cmd = probe_bin();
    cmd.arg("--db")
        .arg(dir.join("probe.db"))
        .arg("--peers-file")
        .arg(peers_file)
        .args(["--check-interval", "3", "--check-timeout", "3"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn stop(mut child: Child) {
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let status = wait_for("the daemon to exit", Duration::from_secs(30), || {
        child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0));
}

/// (status, error_kind, attempts) of a peer's results, oldest first.
fn results(db: &Path, peer: i64) -> Vec<(String, Option<String>, i64)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT status, error_kind, attempts FROM results WHERE peer_id = ?1 ORDER BY seq")
        .unwrap();
    stmt.query_map([peer], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_failure_is_confirmed_before_offline_and_a_recovery_in_the_pause_is_online() {
    require_private_netns();
    let dir = temp_dir("confirm");
    let (coming_back, down) = (free_port(), free_port());
    let peers_file = write_peers_file(
        &dir,
        &[
            peer_json(1, "coming-back", "127.0.0.1", coming_back, "tcp", "", None),
            peer_json(2, "down", "127.0.0.1", down, "tcp", "", None),
        ],
    );
    let log = dir.join("daemon.log");
    let child = daemon(
        &dir,
        &peers_file,
        &log,
        &[("RUST_LOG", "easytier_probe=debug".into())],
    );
    // Peer 1's first check is refused; the node starts during the pause
    // before the confirming check.
    wait_for(
        "the first failure of peer 1, waiting to be confirmed",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .any(|l| l.contains("peer 1 (") && l.contains("checking again to confirm"))
                .then_some(())
        },
    );
    let _node = node_on(coming_back);
    let db = dir.join("probe.db");
    wait_for(
        "a first verdict for peer 1 and three for peer 2",
        Duration::from_secs(40),
        || (!results(&db, 1).is_empty() && results(&db, 2).len() >= 3).then_some(()),
    );
    stop(child);

    let first = &results(&db, 1)[0];
    assert_eq!(
        (first.0.as_str(), first.1.as_deref(), first.2),
        ("Online", None, 2),
        "the node came back during the confirmation pause"
    );
    // Peer 2: its first failure was confirmed (two checks), then, already
    // Offline, it is checked once per cycle.
    let down_results = results(&db, 2);
    assert_eq!(
        down_results[0],
        ("Offline".to_string(), Some("refused".to_string()), 2),
        "{down_results:?}"
    );
    for later in &down_results[1..] {
        assert_eq!(
            later,
            &("Offline".to_string(), Some("refused".to_string()), 1),
            "an Offline peer is not re-confirmed: {down_results:?}"
        );
    }
    let rows = status_json(&db);
    let down_row = rows.iter().find(|r| r["id"] == 2).unwrap();
    assert_eq!(down_row["error_kind"], "refused", "{down_row}");
    assert_eq!(down_row["error"], "connection refused", "{down_row}");
}

#[test]
fn confirmation_can_be_turned_off() {
    require_private_netns();
    let dir = temp_dir("no-confirm");
    let peers_file = write_peers_file(
        &dir,
        &[peer_json(
            1,
            "down",
            "127.0.0.1",
            free_port(),
            "tcp",
            "",
            None,
        )],
    );
    let log = dir.join("daemon.log");
    let child = daemon(&dir, &peers_file, &log, &[("CONFIRM_OFFLINE", "0".into())]);
    let db = dir.join("probe.db");
    wait_for("a first result", Duration::from_secs(20), || {
        (db.exists() && !results(&db, 1).is_empty()).then_some(())
    });
    stop(child);
    assert_eq!(results(&db, 1)[0].2, 1, "recorded after one check");
}

#[test]
fn a_wg_relay_is_unsupported_never_offline() {
    require_private_netns();
    let dir = temp_dir("wg-relay");
    let refused = free_port();
    let peers_file = write_peers_file(
        &dir,
        &[
            peer_json(1, "wg-relay", "127.0.0.1", free_port(), "wg", "", None),
            peer_json(2, "refused", "127.0.0.1", refused, "tcp", "", None),
        ],
    );
    let log = dir.join("daemon.log");
    let child = daemon(&dir, &peers_file, &log, &[]);
    let db = dir.join("probe.db");
    wait_for(
        "the tcp peer checked twice",
        Duration::from_secs(30),
        || (db.exists() && results(&db, 2).len() >= 2).then_some(()),
    );
    stop(child);
    assert!(results(&db, 1).is_empty(), "the wg relay was never checked");
    let rows = status_json(&db);
    let wg = rows.iter().find(|r| r["id"] == 1).unwrap();
    assert_eq!(wg["status"], "unsupported", "{wg}");
    assert_eq!(wg["error_kind"], "unsupported", "{wg}");
    assert!(
        wg["error"].as_str().unwrap().contains("WireGuard"),
        "the reason in plain words: {wg}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("wg-relay") && text.contains("unsupported"),
        "one warning names the peer: {text}"
    );
}

#[test]
fn the_default_log_shows_the_probe_and_not_easytier() {
    require_private_netns();
    let node = TargetNode::start("log-net", "log-secret", "log-node");
    let dir = temp_dir("default-log");
    let down = free_port();
    let peers_file = write_peers_file(
        &dir,
        &[
            peer_json(
                1,
                "member",
                "127.0.0.1",
                node.tcp_port,
                "tcp",
                "log-net",
                Some("log-secret"),
            ),
            peer_json(2, "relay", "127.0.0.1", node.udp_port, "udp", "", None),
            peer_json(3, "down", "127.0.0.1", down, "tcp", "", None),
        ],
    );
    let log = dir.join("daemon.log");
    // No RUST_LOG: the default filter.
    let child = daemon(&dir, &peers_file, &log, &[]);
    let db = dir.join("probe.db");
    wait_for("two cycles of every peer", Duration::from_secs(40), || {
        (db.exists() && (1..=3).all(|p| results(&db, p).len() >= 2)).then_some(())
    });
    stop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("started in standalone mode"),
        "the start line at the default level: {text}"
    );
    assert!(text.contains("stopped after"), "the stop line: {text}");
    for line in text.lines() {
        // env_logger's default form: "[time LEVEL target] message".
        let target = line.split_whitespace().nth(2).unwrap_or("");
        assert!(
            target.starts_with("easytier_probe"),
            "a line not from the probe at the default level: {line}"
        );
    }
    // The Offline peer is one line, not one per check.
    let offline_lines = text.lines().filter(|l| l.contains("\"down\"")).count();
    assert_eq!(offline_lines, 1, "{text}");
    assert!(!text.contains("log-secret"));
}

#[test]
fn lines_carry_their_syslog_priority_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    require_private_netns();
    let dir = temp_dir("journal-log");
    let peers_file = write_peers_file(
        &dir,
        &[peer_json(
            1,
            "down",
            "127.0.0.1",
            free_port(),
            "tcp",
            "",
            None,
        )],
    );
    let log = dir.join("daemon.log");
    std::fs::File::create(&log).unwrap();
    // The journal names its stream by device and inode; here it is the file
    // the daemon's stderr goes to.
    let meta = std::fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let child = daemon(&dir, &peers_file, &log, &[("JOURNAL_STREAM", stream)]);
    let db = dir.join("probe.db");
    wait_for("a first result", Duration::from_secs(20), || {
        (db.exists() && !results(&db, 1).is_empty()).then_some(())
    });
    stop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    let start = text
        .lines()
        .find(|l| l.contains("started in standalone mode"))
        .unwrap_or_else(|| panic!("no start line: {text}"));
    assert!(
        start.starts_with("<6>easytier_probe"),
        "priority prefix, no timestamp: {start}"
    );
    assert!(
        text.lines().all(|l| l.starts_with('<')),
        "every line has a priority: {text}"
    );
}

/// (check_kind, status, remote_version, version_observed) of a peer's results.
fn kinds(db: &Path, peer: i64) -> Vec<(String, String, Option<String>, bool)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT check_kind, status, remote_version, version_observed
             FROM results WHERE peer_id = ?1 ORDER BY seq",
        )
        .unwrap();
    stmt.query_map([peer], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn quick_checks_follow_a_full_one_and_carry_its_version() {
    require_private_netns();
    let node = TargetNode::start("quick-net", "quick-secret", "quick-node");
    let dir = temp_dir("quick-daemon");
    let back_later = free_port();
    let peers_file = write_peers_file(
        &dir,
        &[
            peer_json(
                1,
                "member",
                "127.0.0.1",
                node.tcp_port,
                "tcp",
                "quick-net",
                Some("quick-secret"),
            ),
            peer_json(2, "relay-udp", "127.0.0.1", node.udp_port, "udp", "", None),
            peer_json(3, "back-later", "127.0.0.1", back_later, "tcp", "", None),
        ],
    );
    let log = dir.join("daemon.log");
    let child = daemon(&dir, &peers_file, &log, &[]);
    let db = dir.join("probe.db");
    // Peer 3 is Offline first (confirmed), then its node comes up.
    wait_for("peer 3 Offline", Duration::from_secs(20), || {
        (db.exists() && !results(&db, 3).is_empty()).then_some(())
    });
    let _late = node_on(back_later);
    wait_for(
        "three results for peers 1 and 2, two Online ones for peer 3",
        Duration::from_secs(40),
        || {
            let online3 = kinds(&db, 3).iter().filter(|k| k.1 == "Online").count();
            (kinds(&db, 1).len() >= 3 && kinds(&db, 2).len() >= 3 && online3 >= 2).then_some(())
        },
    );
    stop(child);
    let member = kinds(&db, 1);
    let version = Some(easytier::VERSION.to_string());
    assert_eq!(
        member[0],
        (
            "full".to_string(),
            "Online".to_string(),
            version.clone(),
            true
        ),
        "no version known yet: a full check first"
    );
    for later in &member[1..] {
        assert_eq!(
            later,
            &(
                "quick".to_string(),
                "Online".to_string(),
                version.clone(),
                false
            ),
            "then quick checks carrying the version: {member:?}"
        );
    }
    // A udp relay is always checked fully.
    assert!(
        kinds(&db, 2).iter().all(|k| k.0 == "full" && k.3),
        "{:?}",
        kinds(&db, 2)
    );
    // Back from Offline: a full check, then quick ones.
    let back = kinds(&db, 3);
    let first_online = back.iter().position(|k| k.1 == "Online").unwrap();
    assert_eq!(back[first_online].0, "full", "{back:?}");
    assert!(back[first_online].3, "{back:?}");
    assert_eq!(back[first_online + 1].0, "quick", "{back:?}");
}

#[test]
fn a_version_refresh_of_zero_makes_every_check_full() {
    require_private_netns();
    let node = TargetNode::start("full-net", "full-secret", "full-node");
    let dir = temp_dir("all-full");
    let peers_file = write_peers_file(
        &dir,
        &[peer_json(
            1,
            "member",
            "127.0.0.1",
            node.tcp_port,
            "tcp",
            "full-net",
            Some("full-secret"),
        )],
    );
    let log = dir.join("daemon.log");
    let child = daemon(&dir, &peers_file, &log, &[("VERSION_REFRESH", "0".into())]);
    let db = dir.join("probe.db");
    wait_for("three results", Duration::from_secs(30), || {
        (db.exists() && kinds(&db, 1).len() >= 3).then_some(())
    });
    stop(child);
    assert!(kinds(&db, 1).iter().all(|k| k.0 == "full" && k.3));
}

#[test]
fn a_peer_name_cannot_forge_log_lines_nor_a_short_secret_mangle_them() {
    require_private_netns();
    let dir = temp_dir("forged-log");
    let forged = "[2026-11-29T00:00:00.000Z INFO  easytier_probe::daemon] forged line";
    let peers_file = write_peers_file(
        &dir,
        &[
            peer_json(
                1,
                &format!("quic-peer\n{forged}"),
                "127.0.0.1",
                free_port(),
                "quic",
                "",
                None,
            ),
            // A one-letter network secret must not turn every "e" into <redacted>.
            peer_json(
                2,
                "member",
                "127.0.0.1",
                free_port(),
                "tcp",
                "short-net",
                Some("e"),
            ),
        ],
    );
    let log = dir.join("daemon.log");
    let child = daemon(&dir, &peers_file, &log, &[]);
    let db = dir.join("probe.db");
    wait_for("a result for peer 2", Duration::from_secs(20), || {
        (db.exists() && !results(&db, 2).is_empty()).then_some(())
    });
    stop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().all(|l| !l.starts_with(forged)),
        "a peer name started a log line of its own: {text}"
    );
    assert!(text.contains("quic-peer\\n"), "the name is escaped: {text}");
    assert!(
        text.contains("started in standalone mode") && !text.contains("<redacted>"),
        "the log is readable: {text}"
    );
}
