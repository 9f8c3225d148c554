//! The standalone daemon against real EasyTier nodes: cycles, status, signals, bad input.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn row(rows: &[Value], id: i64) -> &Value {
    rows.iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no row for peer {id} in {rows:?}"))
}

#[test]
fn watches_peers_over_several_cycles_and_stops_cleanly() {
    require_private_netns();
    let member = TargetNode::start("net-sa", "sa-secret-123", "sa-member");
    let relay = TargetNode::start("net-sa-relay", "relay-secret", "sa-relay");
    let refused_port = free_port();
    let dir = temp_dir("cycles");
    let peers_file = write_peers_file(
        &dir,
        &[
            peer_json(
                1,
                "member",
                "127.0.0.1",
                member.tcp_port,
                "tcp",
                "net-sa",
                Some("sa-secret-123"),
            ),
            peer_json(2, "relay-udp", "127.0.0.1", relay.udp_port, "udp", "", None),
            peer_json(3, "refused", "127.0.0.1", refused_port, "tcp", "", None),
            peer_json(4, "old-quic", "127.0.0.1", 11012, "quic", "", None),
            peer_json(5, "bad-port", "127.0.0.1", 0, "tcp", "", None),
        ],
    );
    let mut daemon = Daemon::start(
        &dir,
        &[
            "--peers-file".into(),
            peers_file.to_str().unwrap().into(),
            "--check-interval".into(),
            "2".into(),
            "--check-timeout".into(),
            "3".into(),
            "--workers".into(),
            "3".into(),
        ],
        &[],
    );
    // Several cycles: every checked peer has at least three results.
    let rows = wait_for(
        "three cycles in status --json",
        Duration::from_secs(40),
        || {
            let rows = if daemon.db.exists() {
                daemon.status_json()
            } else {
                return None;
            };
            let done = [1, 2, 3].iter().all(|id| {
                rows.iter()
                    .any(|r| r["id"] == *id && r["checks_24h"].as_i64().unwrap_or(0) >= 3)
            });
            done.then_some(rows)
        },
    );
    assert_eq!(rows.len(), 4, "the invalid entry is skipped: {rows:?}");
    let m = row(&rows, 1);
    assert_eq!(m["status"], "Online");
    assert_eq!(m["uri"], format!("tcp://127.0.0.1:{}", member.tcp_port));
    assert_eq!(m["remote_version"].as_str().unwrap(), easytier::VERSION);
    assert!(m["latency_us"].as_i64().unwrap() > 0);
    assert_eq!(m["uptime_24h"], 100.0);
    assert_eq!(row(&rows, 2)["status"], "Online");
    let r = row(&rows, 3);
    assert_eq!(r["status"], "Offline");
    assert_eq!(r["uptime_24h"], 0.0);
    let q = row(&rows, 4);
    assert_eq!(q["status"], "unsupported");
    assert_eq!(q["checks_24h"], 0);
    let keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = vec![
        "id",
        "name",
        "uri",
        "status",
        "latency_us",
        "remote_version",
        "last_checked_at",
        "checks_24h",
        "uptime_24h",
        "error",
        "error_kind",
        "attempts",
        "rejected",
    ];
    expected.sort();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort();
    assert_eq!(keys_sorted, expected);

    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(
        log.contains("entry 5 (id 5)") && log.contains("port"),
        "invalid entry warned about: {log}"
    );
    assert!(
        log.contains("old-quic"),
        "quic peer named in a warning: {log}"
    );
    assert!(!log.contains("sa-secret-123"), "secret leaked into the log");
    // Everything written is there after the exit, and the database reopens.
    let rows_after = status_json(&daemon.db);
    let total: i64 = rows_after
        .iter()
        .map(|r| r["checks_24h"].as_i64().unwrap())
        .sum();
    assert_eq!(total, count_results(&daemon.db));
    assert!(total >= 9);
    // Spread, not burst: the peers were not all checked in the same instant.
    let conn = rusqlite::Connection::open(&daemon.db).unwrap();
    let firsts: Vec<i64> = conn
        .prepare("SELECT min(checked_at_ms) FROM results GROUP BY peer_id ORDER BY 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        firsts.last().unwrap() - firsts.first().unwrap() >= 500,
        "first checks were a burst: {firsts:?}"
    );
}

#[test]
fn sighup_rereads_the_peers_file_and_keeps_it_when_broken() {
    require_private_netns();
    let dir = temp_dir("sighup");
    let (p1, p2) = (free_port(), free_port());
    let peers_file = write_peers_file(
        &dir,
        &[peer_json(1, "one", "127.0.0.1", p1, "tcp", "", None)],
    );
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut daemon = Daemon::start(
        &dir,
        &[
            "--peers-file".into(),
            peers_file.to_str().unwrap().into(),
            "--check-interval".into(),
            "1".into(),
        ],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap().to_string())],
    );
    let mut buf = [0u8; 512];
    // Before READY=1 the daemon may ask for more start time (a migration).
    loop {
        let len = notify.recv(&mut buf).expect("READY=1 from the daemon");
        let state = String::from_utf8_lossy(&buf[..len]).into_owned();
        if state.starts_with("READY=1") {
            break;
        }
        assert!(state.starts_with("EXTEND_TIMEOUT_USEC="), "{state:?}");
    }

    std::fs::write(
        &peers_file,
        json!([
            peer_json(1, "one", "127.0.0.1", p1, "tcp", "", None),
            peer_json(2, "two", "127.0.0.1", p2, "tcp", "", None)
        ])
        .to_string(),
    )
    .unwrap();
    daemon.signal("HUP");
    wait_for(
        "peer 2 checked after SIGHUP",
        Duration::from_secs(20),
        || {
            let rows = daemon.status_json();
            (rows.len() == 2 && rows.iter().all(|r| r["checks_24h"].as_i64().unwrap() > 0))
                .then_some(())
        },
    );
    std::fs::write(&peers_file, "[{\"id\": 1, ").unwrap();
    daemon.signal("HUP");
    wait_for(
        "a warning about the broken file",
        Duration::from_secs(10),
        || {
            daemon
                .log()
                .contains("keeping the current peers")
                .then_some(())
        },
    );
    assert_eq!(
        daemon.status_json().len(),
        2,
        "the last good peer set is kept"
    );

    daemon.signal("TERM");
    // The summary's STATUS= line (every 10 s) may come first.
    let state = loop {
        let len = notify.recv(&mut buf).expect("STOPPING=1 from the daemon");
        let state = String::from_utf8_lossy(&buf[..len]).into_owned();
        if !state.starts_with("STATUS=") {
            break state;
        }
    };
    assert!(state.starts_with("STOPPING=1"), "{state}");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_second_stop_signal_exits_at_once() {
    require_private_netns();
    let dir = temp_dir("second-signal");
    // A peer that never answers keeps a check running for the whole timeout.
    let silent = SilentPeer::start();
    let mut daemon = Daemon::start(
        &dir,
        &[
            "--peer".into(),
            silent.uri.clone(),
            "--check-timeout".into(),
            "120".into(),
        ],
        &[],
    );
    wait_for("the check to start", Duration::from_secs(20), || {
        daemon
            .log()
            .contains("started in standalone mode")
            .then_some(())
    });
    daemon.signal("TERM");
    wait_for("the stop to be seen", Duration::from_secs(10), || {
        daemon.log().contains("stopping").then_some(())
    });
    // The first signal waits for the running check (120 s); the second does not.
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(128 + 15));
}

#[test]
fn a_stop_finishes_within_its_budget_even_with_a_long_check_running() {
    require_private_netns();
    let dir = temp_dir("stop-budget");
    let silent = SilentPeer::start();
    let mut daemon = Daemon::start(
        &dir,
        &[
            "--peer".into(),
            silent.uri.clone(),
            "--check-timeout".into(),
            "120".into(),
        ],
        &[
            ("EASYTIER_PROBE_STOP_BUDGET_SECS", "8".to_string()),
            ("RUST_LOG", "info,easytier_probe::checker=debug".to_string()),
        ],
    );
    wait_for("the check to start", Duration::from_secs(20), || {
        daemon.log().contains("checking peer").then_some(())
    });
    daemon.signal("TERM");
    // The check would run for 120 s; the stop budget is 8 s (a unit's
    // TimeoutStopSec would kill the probe otherwise).
    assert_eq!(daemon.wait_exit(Duration::from_secs(15)), Some(0));
    let log = daemon.log();
    assert!(log.contains("still running at the stop deadline"), "{log}");
    assert!(log.contains("stopped after"), "{log}");
}

#[test]
fn bad_input_exits_2_before_any_work() {
    let dir = temp_dir("bad-input");
    let malformed = dir.join("malformed.json");
    std::fs::write(&malformed, "{ not json").unwrap();
    let not_array = dir.join("object.json");
    std::fs::write(&not_array, "{\"peers\": []}").unwrap();
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--peers-file".into(), malformed.to_str().unwrap().into()],
            vec![],
            "--peers-file: the peers file",
        ),
        (
            vec!["--peers-file".into(), not_array.to_str().unwrap().into()],
            vec![],
            "not a JSON array",
        ),
        (
            vec![
                "--peers-file".into(),
                dir.join("missing.json").to_str().unwrap().into(),
            ],
            vec![],
            "--peers-file: cannot read",
        ),
        (
            vec![
                "--peer".into(),
                "tcp://h:1".into(),
                "--workers".into(),
                "many".into(),
            ],
            vec![],
            "--workers",
        ),
        (
            vec![],
            vec![("PEERS_FILE", "/nonexistent/peers.json")],
            "PEERS_FILE: cannot read",
        ),
        (
            vec!["--peer".into(), "tcp://h:1".into()],
            vec![("HEALTH_CHECK_INTERVAL", "0")],
            "HEALTH_CHECK_INTERVAL",
        ),
        (vec!["--peer".into(), "tcp://h".into()], vec![], "--peer"),
        (vec![], vec![], "nothing to watch"),
        (
            vec![
                "--peer".into(),
                "tcp://h:1".into(),
                "--region".into(),
                "eu".into(),
            ],
            vec![],
            "--distributed-mode",
        ),
    ];
    for (i, (args, envs, needle)) in cases.into_iter().enumerate() {
        let db = dir.join(format!("probe-{i}.db"));
        let mut cmd = probe_bin();
        cmd.arg("--db").arg(&db).args(&args);
        for (k, v) in &envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {envs:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            !db.exists(),
            "{args:?}: the database was created before the input was checked"
        );
    }
}

#[test]
fn version_names_both_versions() {
    let out = probe_bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(env!("CARGO_PKG_VERSION")) && text.contains(easytier::VERSION),
        "{text}"
    );
}

#[test]
fn recycles_itself_after_many_checks_and_keeps_going() {
    require_private_netns();
    let dir = temp_dir("recycle");
    let (p1, p2) = (free_port(), free_port());
    // systemd's watchdog keeps running through a recycle. Its period here is
    // far longer than the test, so every ping seen comes from the recycle
    // path, not from the periodic timer.
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut daemon = Daemon::start(
        &dir,
        &[
            "--peer".into(),
            format!("tcp://127.0.0.1:{p1}"),
            "--peer".into(),
            format!("tcp://127.0.0.1:{p2}"),
            "--check-interval".into(),
            "1".into(),
        ],
        &[
            ("EASYTIER_PROBE_RECYCLE_AFTER_CHECKS", "4".to_string()),
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap().to_string()),
            ("WATCHDOG_USEC", "600000000".to_string()),
        ],
    );
    let pid = daemon.child.id();
    // Two re-executions: the same process (PID) starts three times.
    wait_for("two recycles", Duration::from_secs(40), || {
        (daemon.log().matches("started in standalone mode").count() >= 3).then_some(())
    });
    assert!(daemon.child.try_wait().unwrap().is_none(), "still running");
    assert!(daemon.log().contains("re-executing"));
    // The watchdog hears from the old image right before the exec and from
    // the new one right after its READY=1, so a recycle never leaves a gap
    // of a whole watchdog period plus the shutdown.
    let mut states = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(len) = notify.recv(&mut buf) {
        states.push(String::from_utf8_lossy(&buf[..len]).into_owned());
    }
    let readies: Vec<usize> = (0..states.len())
        .filter(|&i| states[i].starts_with("READY=1"))
        .collect();
    assert!(readies.len() >= 3, "{states:?}");
    for &i in &readies {
        assert_eq!(
            states.get(i + 1).map(String::as_str),
            Some("WATCHDOG=1"),
            "{states:?}"
        );
    }
    // Between two starts: the ping after READY=1, one as the shutdown
    // begins and one right before the exec (the periodic ping is 300 s away).
    for pair in readies.windows(2) {
        let pings = states[pair[0]..pair[1]]
            .iter()
            .filter(|s| *s == "WATCHDOG=1")
            .count();
        assert!(pings >= 3, "no ping around the shutdown: {states:?}");
    }
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "easytier-probe"
    );
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        daemon.log()
    );
    // Nothing lost across the recycles: seq has no gaps, every check is there.
    let conn = rusqlite::Connection::open(&daemon.db).unwrap();
    let (count, max): (i64, i64) = conn
        .query_row("SELECT count(*), max(seq) FROM results", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(count, max);
    assert!(count >= 8, "{count} results");
}

/// CPU time of one thread of `pid`, in clock ticks (utime + stime).
fn thread_cpu_ticks(pid: u32, tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    // Fields after the parenthesised name; utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn due_peers_waiting_for_a_busy_worker_do_not_make_the_loop_spin() {
    require_private_netns();
    let dir = temp_dir("busy-workers");
    // One worker, three peers that never answer (each check takes the whole
    // timeout) and a 1 s interval: peers are overdue all the time.
    let silent: Vec<SilentPeer> = (0..3).map(|_| SilentPeer::start()).collect();
    let mut args: Vec<String> = vec![
        "--workers".into(),
        "1".into(),
        "--check-interval".into(),
        "1".into(),
        "--check-timeout".into(),
        "3".into(),
    ];
    for s in &silent {
        args.push("--peer".into());
        args.push(s.uri.clone());
    }
    let mut daemon = Daemon::start(&dir, &args, &[]);
    wait_for("the first check to finish", Duration::from_secs(20), || {
        (daemon.db.exists() && count_results(&daemon.db) >= 1).then_some(())
    });
    // The main thread's tid is the process id. Over a window of 3 s with
    // peers overdue the whole time, a loop that waits for its worker uses
    // next to no CPU; one that polls uses the whole window.
    let pid = daemon.child.id();
    let (ticks_before, t0) = (thread_cpu_ticks(pid, pid), std::time::Instant::now());
    let window = Duration::from_secs(3);
    wait_for("the measuring window", window * 2, || {
        (t0.elapsed() >= window).then_some(())
    });
    let used = thread_cpu_ticks(pid, pid) - ticks_before;
    let elapsed_ticks = t0.elapsed().as_secs_f64() * 100.0;
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(
        (used as f64) < elapsed_ticks * 0.2,
        "the main loop used {used} ticks of CPU in {elapsed_ticks:.0} ticks of time"
    );
}
