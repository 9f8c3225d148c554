//! Hostile peer lists from the backend: a round of nothing but invalid entries, a 304 to a request that offered no ETag, and many invalid entries in one round.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::backend::{ok_answer, peers_page, quick_distributed_args, FakeBackend, Response};
use common::*;
use serde_json::json;

fn results_of(db: &Path, peer: i64) -> i64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    conn.query_row(
        "SELECT count(*) FROM results WHERE peer_id = ?1",
        [peer],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

/// For `wait_for`: the daemon's first log line that holds `part`.
fn log_line<'a>(daemon: &'a Daemon, part: &'a str) -> impl FnMut() -> Option<String> + 'a {
    move || {
        daemon
            .log()
            .lines()
            .find(|l| l.contains(part))
            .map(str::to_string)
    }
}

fn invalid_entries(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| peer_json(100 + i as i64, "broken", "127.0.0.1", 0, "tcp", "", None))
        .collect()
}

#[test]
fn a_round_of_only_invalid_entries_keeps_the_last_good_list() {
    require_private_netns();
    let refused = free_port();
    let broken = Arc::new(AtomicUsize::new(0));
    let mode = broken.clone();
    let backend = FakeBackend::start(move |r| match (r.method.as_str(), r.path()) {
        ("GET", "/api/peers") if mode.load(Ordering::SeqCst) == 0 => Response::json(
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
        ("GET", "/api/peers") => Response::json(200, peers_page(invalid_entries(5), false)),
        _ => Response::json(200, ok_answer()),
    });
    let dir = temp_dir("all-invalid");
    let daemon = Daemon::start(&dir, &quick_distributed_args(&backend, &dir), &[]);
    wait_for("a result for peer 1", Duration::from_secs(20), || {
        (results_of(&daemon.db, 1) > 0).then_some(())
    });
    broken.store(1, Ordering::SeqCst);
    let gets = backend.requests_to("GET", "/api/peers").len();
    let before = results_of(&daemon.db, 1);
    wait_for(
        "two broken rounds and more checks of peer 1",
        Duration::from_secs(30),
        || {
            let rounds = backend.requests_to("GET", "/api/peers").len() >= gets + 2;
            (rounds && results_of(&daemon.db, 1) > before + 1).then_some(())
        },
    );
    let rows = daemon.status_json();
    assert_eq!(rows.len(), 1, "the last good list is kept: {rows:?}");
    assert_eq!(rows[0]["id"], 1);
    let log = daemon.log();
    assert!(
        log.contains("every entry of the list is invalid"),
        "said once per round: {log}"
    );
}

#[test]
fn a_304_to_a_request_without_an_etag_is_a_protocol_error() {
    require_private_netns();
    let backend = FakeBackend::start(|r| match (r.method.as_str(), r.path()) {
        ("GET", "/api/peers") => Response::raw(304, b""),
        _ => Response::json(200, ok_answer()),
    });
    let dir = temp_dir("304-no-etag");
    let daemon = Daemon::start(&dir, &quick_distributed_args(&backend, &dir), &[]);
    wait_for(
        "the protocol error in the log",
        Duration::from_secs(20),
        || {
            daemon
                .log()
                .contains("304 Not Modified to a request without If-None-Match")
                .then_some(())
        },
    );
    assert!(backend
        .requests_to("GET", "/api/peers")
        .iter()
        .all(|g| g.header("if-none-match").is_none()));
}

#[test]
fn many_invalid_entries_are_one_short_warning_per_round() {
    require_private_netns();
    let refused = free_port();
    let backend = FakeBackend::start(move |r| match (r.method.as_str(), r.path()) {
        ("GET", "/api/peers") => {
            let mut peers = vec![peer_json(1, "ok", "127.0.0.1", refused, "tcp", "", None)];
            peers.extend(invalid_entries(10));
            // One entry with a huge value: cut short in the warning.
            peers.push(json!({"id": 500, "host": "h".repeat(5_000), "port": 1, "protocol": "tcp"}));
            Response::json(200, peers_page(peers, false))
        }
        _ => Response::json(200, ok_answer()),
    });
    let dir = temp_dir("many-invalid");
    let daemon = Daemon::start(&dir, &quick_distributed_args(&backend, &dir), &[]);
    wait_for("three rounds", Duration::from_secs(20), || {
        (backend.requests_to("GET", "/api/peers").len() >= 3).then_some(())
    });
    let log = daemon.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("invalid entries skipped"))
        .collect();
    assert!(!warnings.is_empty(), "{log}");
    assert!(
        warnings
            .iter()
            .all(|w| w.contains("11 invalid entries skipped")
                && w.contains("and 8 more")
                && w.len() < 1_000),
        "{warnings:?}"
    );
    assert!(
        !log.contains("entry 9 (id 107)"),
        "one line per entry: {log}"
    );
}

#[test]
fn a_new_list_makes_its_secrets_redacted_and_forgets_the_old_ones() {
    require_private_netns();
    // Quic peers are not checked (so no check of theirs is ever in hand),
    // and the warning about them names them: a name holding a secret shows
    // what the redaction knows when the list is applied.
    let quic = |id: i64, name: &str, secret: &str| {
        peer_json(id, name, "127.0.0.1", 1, "quic", "net", Some(secret))
    };
    let second = Arc::new(AtomicUsize::new(0));
    let mode = second.clone();
    let backend = FakeBackend::start(move |r| match (r.method.as_str(), r.path()) {
        ("GET", "/api/peers") if mode.load(Ordering::SeqCst) == 0 => Response::json(
            200,
            peers_page(
                vec![quic(10, "one: first-list-secret .", "first-list-secret")],
                false,
            ),
        ),
        ("GET", "/api/peers") => Response::json(
            200,
            peers_page(
                vec![quic(
                    11,
                    "two: first-list-secret second-list-secret .",
                    "second-list-secret",
                )],
                false,
            ),
        ),
        _ => Response::json(200, ok_answer()),
    });
    let dir = temp_dir("secrets-follow-lists");
    let daemon = Daemon::start(&dir, &quick_distributed_args(&backend, &dir), &[]);
    let first = wait_for(
        "the first list's warning",
        Duration::from_secs(20),
        log_line(&daemon, "one: "),
    );
    assert!(first.contains("one: <redacted> ."), "{first}");
    second.store(1, Ordering::SeqCst);
    let next = wait_for(
        "the second list's warning",
        Duration::from_secs(20),
        log_line(&daemon, "two: "),
    );
    // Applied: the new list's secret is known, the old one forgotten.
    assert!(
        next.contains("two: first-list-secret <redacted> ."),
        "{next}"
    );
}

#[test]
fn a_dropped_peers_secret_stays_redacted_while_its_check_runs() {
    require_private_netns();
    // A node that accepts and never answers: the check of peer 1 stays in
    // hand until its timeout, while the list that drops peer 1 comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (seen, ended) = (accepted.clone(), closed.clone());
    std::thread::spawn(move || {
        for mut stream in silent.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let ended = ended.clone();
            // The probe closes the connection when its check is over.
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut stream, &mut std::io::sink());
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let member = peer_json(
        1,
        "member",
        "127.0.0.1",
        silent_port,
        "tcp",
        "net",
        Some("dropped-peer-secret"),
    );
    let quic = |id: i64, name: &str| peer_json(id, name, "127.0.0.1", 1, "quic", "", None);
    let round = Arc::new(AtomicUsize::new(1));
    let mode = round.clone();
    let fetches = Arc::new(AtomicUsize::new(0));
    let backend = FakeBackend::start(move |r| match (r.method.as_str(), r.path()) {
        ("GET", "/api/peers") => {
            let n = fetches.fetch_add(1, Ordering::SeqCst) as i64;
            let peers = match mode.load(Ordering::SeqCst) {
                1 => vec![member.clone()],
                2 => vec![quic(11, "two: dropped-peer-secret .")],
                // A new skipped peer every round, so every round warns.
                _ => vec![quic(100 + n, "three: dropped-peer-secret .")],
            };
            Response::json(200, peers_page(peers, false))
        }
        _ => Response::json(200, ok_answer()),
    });
    let dir = temp_dir("secret-of-a-running-check");
    let mut args = quick_distributed_args(&backend, &dir);
    args.extend(["--check-timeout", "4"].map(str::to_string));
    let daemon = Daemon::start(&dir, &args, &[]);
    wait_for(
        "the check of peer 1 in hand",
        Duration::from_secs(20),
        || (accepted.load(Ordering::SeqCst) > 0).then_some(()),
    );
    round.store(2, Ordering::SeqCst);
    let two = wait_for(
        "the second list, while the check runs",
        Duration::from_secs(20),
        log_line(&daemon, "two: "),
    );
    assert!(two.contains("two: <redacted> ."), "{two}");
    assert_eq!(
        closed.load(Ordering::SeqCst),
        0,
        "the check was still in hand"
    );
    // Once the check is over, the dropped peer's secret is forgotten.
    wait_for("the end of the check", Duration::from_secs(30), || {
        (closed.load(Ordering::SeqCst) >= accepted.load(Ordering::SeqCst)).then_some(())
    });
    round.store(3, Ordering::SeqCst);
    wait_for(
        "a later list printing the forgotten secret",
        Duration::from_secs(20),
        log_line(&daemon, "three: dropped-peer-secret ."),
    );
}
