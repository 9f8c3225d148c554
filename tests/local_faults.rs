//! Local faults: a second daemon on one database, a database deleted under the daemon, a thread that dies or is stuck.

mod common;

use std::time::Duration;

use common::backend::{ok_answer, peers_page, quick_distributed_args, FakeBackend, Response};
use common::*;

#[test]
fn a_second_daemon_on_one_database_exits_2_naming_the_first() {
    require_private_netns();
    let dir = temp_dir("second-daemon");
    let args = vec![
        "--peer".to_string(),
        format!("tcp://127.0.0.1:{}", free_port()),
        "--check-interval".to_string(),
        "1".to_string(),
    ];
    let first = Daemon::start(&dir, &args, &[]);
    wait_for(
        "the first daemon's first result",
        Duration::from_secs(20),
        || (first.db.exists() && count_results(&first.db) > 0).then_some(()),
    );
    let out = probe_bin()
        .arg("--db")
        .arg(&first.db)
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(first.db.to_str().unwrap())
            && err.contains(&format!("process {}", first.child.id())),
        "names the database and the holder: {err}"
    );
    // Read-only commands work beside the running daemon.
    assert_eq!(status_json(&first.db).len(), 1);
    let before = count_results(&first.db);
    wait_for("the first daemon goes on", Duration::from_secs(20), || {
        (count_results(&first.db) > before).then_some(())
    });
}

fn probe_id_and_max_seq(db: &std::path::Path) -> Option<(String, i64)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    let id: String = conn
        .query_row(
            "SELECT value FROM probe_state WHERE key = 'probe_id'",
            [],
            |r| r.get(0),
        )
        .ok()?;
    let seq: i64 = conn
        .query_row("SELECT coalesce(max(seq), 0) FROM results", [], |r| {
            r.get(0)
        })
        .ok()?;
    Some((id, seq))
}

#[test]
fn a_database_deleted_under_the_daemon_comes_back_with_its_identity() {
    require_private_netns();
    let dir = temp_dir("deleted-db");
    let args = vec![
        "--peer".to_string(),
        format!("tcp://127.0.0.1:{}", free_port()),
        "--check-interval".to_string(),
        "1".to_string(),
    ];
    let daemon = Daemon::start(&dir, &args, &[("CONFIRM_OFFLINE", "0".to_string())]);
    let (id, seq) = wait_for("two results", Duration::from_secs(20), || {
        probe_id_and_max_seq(&daemon.db).filter(|(_, seq)| *seq >= 2)
    });
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", daemon.db.display()));
    }
    let (id_after, seq_after) = wait_for(
        "the database back, with later results",
        Duration::from_secs(20),
        || probe_id_and_max_seq(&daemon.db).filter(|(_, s)| *s > seq + 1),
    );
    assert_eq!(id_after, id, "the same probe id");
    assert!(seq_after > seq, "seq goes on from {seq}: {seq_after}");
    let conn = rusqlite::Connection::open_with_flags(
        &daemon.db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let kept: i64 = conn
        .query_row("SELECT count(*) FROM results WHERE seq <= ?1", [seq], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(kept, seq, "the results from before the deletion are kept");
    assert!(
        daemon.log().contains("deleted or replaced"),
        "said at error level: {}",
        daemon.log()
    );
}

#[test]
fn a_thread_that_dies_stops_the_daemon_in_order_with_status_1() {
    require_private_netns();
    for thread in ["store-writer", "probe-0", "http"] {
        let dir = temp_dir(&format!("panic-{thread}"));
        let args = vec![
            "--peer".to_string(),
            format!("tcp://127.0.0.1:{}", free_port()),
            "--check-interval".to_string(),
            "1".to_string(),
        ];
        let mut daemon = Daemon::start(
            &dir,
            &args,
            &[("EASYTIER_PROBE_TEST_PANIC_THREAD", thread.to_string())],
        );
        let code = daemon.wait_exit(Duration::from_secs(30));
        let log = daemon.log();
        assert_eq!(code, Some(1), "{thread}: {log}");
        assert!(
            log.contains(&format!("the {thread} thread panicked unexpectedly")),
            "{thread}: said at error level: {log}"
        );
        assert!(
            log.contains("stopped") || log.contains("unexpectedly; stopped"),
            "{log}"
        );
    }
}

#[test]
fn a_stuck_thread_stops_the_daemon_in_order_with_status_1() {
    require_private_netns();
    let backend = FakeBackend::start(|r| match (r.method.as_str(), r.path()) {
        ("GET", "/api/peers") => Response::json(200, peers_page(vec![], false)),
        _ => Response::json(200, ok_answer()),
    });
    // Each thread's step: a check, a status report, a page of the list.
    // The three daemons run side by side.
    let cases = [
        ("probe-0", "a check"),
        ("reporter", "a status report"),
        ("peer-fetcher", "a page of GET /peers"),
    ];
    let mut running = Vec::new();
    for (thread, step) in cases {
        let dir = temp_dir(&format!("stuck-{thread}"));
        let args = match thread {
            "probe-0" => vec![
                "--check-interval".to_string(),
                "1".to_string(),
                "--peer".to_string(),
                format!("tcp://127.0.0.1:{}", free_port()),
            ],
            _ => quick_distributed_args(&backend, &dir),
        };
        let daemon = Daemon::start(
            &dir,
            &args,
            &[
                ("EASYTIER_PROBE_TEST_STALL_THREAD", thread.to_string()),
                ("EASYTIER_PROBE_STOP_BUDGET_SECS", "6".to_string()),
            ],
        );
        running.push((thread, step, daemon, dir));
    }
    for (thread, step, mut daemon, _dir) in running {
        let code = daemon.wait_exit(Duration::from_secs(40));
        let log = daemon.log();
        assert_eq!(code, Some(1), "{thread}: {log}");
        assert!(
            log.contains(&format!("the {thread} thread has been in {step} for"))
                && log.contains("stopping so that the service manager can restart the probe"),
            "{thread}: said at error level: {log}"
        );
    }
}
