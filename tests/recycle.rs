//! A seamless recycle: each peer keeps its phase across the re-execution, and the backend sees one uptime, not a restart.

mod common;

use std::path::Path;
use std::time::Duration;

use common::backend::{ok_answer, peers_page, quick_distributed_args, FakeBackend, Response};
use common::*;

/// Times (Unix ms) of a peer's checks, oldest first.
fn check_times(db: &Path, peer: i64) -> Vec<i64> {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let Ok(mut stmt) =
        conn.prepare("SELECT checked_at_ms FROM results WHERE peer_id = ?1 ORDER BY seq")
    else {
        return Vec::new();
    };
    stmt.query_map([peer], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn peers_keep_their_phase_across_a_recycle() {
    require_private_netns();
    let dir = temp_dir("recycle-phase");
    let ports = [free_port(), free_port(), free_port()];
    let mut args = Vec::new();
    for (id, port) in ports.iter().enumerate() {
        args.push("--peer".to_string());
        args.push(format!("tcp://127.0.0.1:{port}?id={}", id + 1));
    }
    args.extend(["--check-interval".to_string(), "3".to_string()]);
    // Four checks a life with three peers: each image stops right after a
    // peer's check, which a fresh schedule would check again at once.
    let daemon = Daemon::start(
        &dir,
        &args,
        &[
            ("EASYTIER_PROBE_RECYCLE_AFTER_CHECKS", "4".to_string()),
            ("CONFIRM_OFFLINE", "0".to_string()),
        ],
    );
    wait_for(
        "two recycles and six checks of every peer",
        Duration::from_secs(60),
        || {
            let recycled = daemon.log().matches("started in standalone mode").count() >= 3;
            let checked = (1..=3).all(|p| check_times(&daemon.db, p).len() >= 6);
            (recycled && checked).then_some(())
        },
    );
    for peer in 1..=3 {
        let times = check_times(&daemon.db, peer);
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                (2_250..=4_500).contains(&gap),
                "peer {peer}: a gap of {gap} ms between two checks every 3 s, across recycles: {times:?}\n{}",
                daemon.log()
            );
        }
    }
    assert!(
        !dir.join("probe.db.recycle.json").exists(),
        "the carried state is removed once read"
    );
}

#[test]
fn uptime_does_not_restart_at_a_recycle() {
    require_private_netns();
    let refused = free_port();
    let backend = FakeBackend::start(move |r| match (r.method.as_str(), r.path()) {
        ("GET", "/api/peers") => Response::json(
            200,
            peers_page(
                vec![peer_json(
                    1,
                    "refused",
                    "127.0.0.1",
                    refused,
                    "tcp",
                    "",
                    None,
                )],
                false,
            ),
        ),
        _ => Response::json(200, ok_answer()),
    });
    let dir = temp_dir("recycle-uptime");
    let args = quick_distributed_args(&backend, &dir);
    let daemon = Daemon::start(
        &dir,
        &args,
        &[
            ("EASYTIER_PROBE_RECYCLE_AFTER_CHECKS", "3".to_string()),
            ("CONFIRM_OFFLINE", "0".to_string()),
        ],
    );
    let uptimes = || -> Vec<u64> {
        backend
            .requests_to("PUT", "/api/nodes/status")
            .iter()
            .filter_map(|r| r.json()["metadata"]["uptime_seconds"].as_u64())
            .collect()
    };
    wait_for(
        "two recycles and reports after them",
        Duration::from_secs(60),
        || {
            let recycled = daemon.log().matches("started in distributed mode").count() >= 3;
            (recycled && uptimes().last().is_some_and(|u| *u >= 6)).then_some(())
        },
    );
    let seen = uptimes();
    assert!(
        seen.windows(2).all(|w| w[1] >= w[0]),
        "uptime_seconds went back at a recycle: {seen:?}"
    );
}
