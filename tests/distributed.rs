//! Distributed mode against a fake backend on 127.0.0.1 and real EasyTier nodes.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::backend::{ok_answer, peers_page, FakeBackend, Request, Response};
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "node-token-7f3a9c";
const API_KEY: &str = "api-key-5b81de";
const SECRET: &str = "member-secret-c0ffee";

/// What the fake backend does; tests flip these while the daemon runs.
#[derive(Clone)]
struct Mode {
    peers: Vec<Value>,
    /// Answer for GET /peers instead of the peer list.
    peers_override: Option<fn() -> Response>,
    /// Answer 503 to PUT /nodes/status.
    reports_down: bool,
    /// Answer PUT /nodes/status with a redirect to a GET that says "ok".
    reports_redirect: bool,
    etag: Option<&'static str>,
    page_size: usize,
}

struct Backend {
    server: FakeBackend,
    mode: Arc<Mutex<Mode>>,
    /// Bodies of the status reports answered with 200.
    delivered: Arc<Mutex<Vec<Value>>>,
}

impl Backend {
    fn start(peers: Vec<Value>) -> Backend {
        let mode = Arc::new(Mutex::new(Mode {
            peers,
            peers_override: None,
            reports_down: false,
            reports_redirect: false,
            etag: None,
            page_size: 100,
        }));
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let (m, d) = (mode.clone(), delivered.clone());
        let server = FakeBackend::start(move |req: &Request| {
            let mode = m.lock().unwrap().clone();
            match (req.method.as_str(), req.path()) {
                ("GET", "/api/peers") => {
                    if let Some(answer) = mode.peers_override {
                        return answer();
                    }
                    if let (Some(etag), Some(sent)) = (mode.etag, req.header("if-none-match")) {
                        if sent == etag {
                            return Response::raw(304, b"");
                        }
                    }
                    let page: usize = req.query("page").and_then(|p| p.parse().ok()).unwrap_or(1);
                    let chunks: Vec<Vec<Value>> = mode
                        .peers
                        .chunks(mode.page_size)
                        .map(<[Value]>::to_vec)
                        .collect();
                    let chunk = chunks.get(page - 1).cloned().unwrap_or_default();
                    let response = Response::json(200, peers_page(chunk, page < chunks.len()));
                    match mode.etag {
                        Some(etag) if page == 1 => response.with_header("ETag", etag),
                        _ => response,
                    }
                }
                ("PUT", "/api/nodes/status") => {
                    if mode.reports_redirect {
                        return Response::raw(302, b"").with_header("Location", "/api/elsewhere");
                    }
                    if mode.reports_down {
                        return Response::json(503, json!({"code": 503, "message": "maintenance"}));
                    }
                    d.lock().unwrap().push(req.json());
                    Response::json(200, ok_answer())
                }
                ("GET", "/api/elsewhere") => Response::json(200, ok_answer()),
                _ => Response::json(404, json!({"code": 404})),
            }
        });
        Backend {
            server,
            mode,
            delivered,
        }
    }

    fn url(&self) -> String {
        format!("{}/api", self.server.url())
    }

    fn set(&self, change: impl FnOnce(&mut Mode)) {
        change(&mut self.mode.lock().unwrap());
    }

    fn delivered_results(&self) -> Vec<Value> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b["results"].as_array().unwrap().clone())
            .collect()
    }

    fn delivered_seqs(&self) -> BTreeSet<i64> {
        self.delivered_results()
            .iter()
            .map(|r| r["seq"].as_i64().unwrap())
            .collect()
    }

    fn gets(&self) -> usize {
        self.server.requests_to("GET", "/api/peers").len()
    }
}

/// A relay peer on a port where nothing listens: each check is a fast Offline.
fn refused_peer(id: i64, port: u16) -> Value {
    peer_json(
        id,
        &format!("peer-{id}"),
        "127.0.0.1",
        port,
        "tcp",
        "",
        None,
    )
}

fn secret_files(dir: &Path) -> (String, String) {
    let token = dir.join("node-token");
    let key = dir.join("api-key");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::write(&key, API_KEY).unwrap();
    (token.to_str().unwrap().into(), key.to_str().unwrap().into())
}

fn daemon_args(backend: &Backend, dir: &Path, extra: &[&str]) -> Vec<String> {
    let (token, key) = secret_files(dir);
    let mut args: Vec<String> = vec![
        "--distributed-mode".into(),
        "--backend-base-url".into(),
        backend.url(),
        "--node-token-file".into(),
        token,
        "--api-key-file".into(),
        key,
        "--check-interval".into(),
        "1".into(),
        "--check-timeout".into(),
        "3".into(),
        "--peer-fetch-interval".into(),
        "1".into(),
        "--status-report-interval".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Unsent results; 0 while the daemon has not created its schema yet.
fn unacked(db: &Path) -> i64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    conn.query_row("SELECT count(*) FROM results WHERE acked = 0", [], |r| {
        r.get(0)
    })
    .unwrap_or(0)
}

fn all_seqs(db: &Path) -> BTreeSet<i64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn.prepare("SELECT seq FROM results").unwrap();
    let seqs = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    seqs
}

fn assert_contiguous(seqs: &BTreeSet<i64>) {
    let (first, last) = (*seqs.first().unwrap(), *seqs.last().unwrap());
    assert_eq!(first, 1, "seq starts at 1");
    assert_eq!(seqs.len() as i64, last - first + 1, "gaps in seq: {seqs:?}");
}

fn assert_no_secret(text: &str) {
    for secret in [TOKEN, API_KEY, SECRET] {
        assert!(!text.contains(secret), "secret {secret:?} leaked");
    }
}

#[test]
fn pages_headers_and_reports_follow_the_contract() {
    require_private_netns();
    let node = TargetNode::start("net-dist", SECRET, "dist-node");
    let backend = Backend::start(vec![
        peer_json(
            1,
            "member",
            "127.0.0.1",
            node.tcp_port,
            "tcp",
            "net-dist",
            Some(SECRET),
        ),
        peer_json(2, "relay", "127.0.0.1", node.udp_port, "udp", "", None),
        peer_json(3, "broken", "", 11010, "tcp", "", None),
    ]);
    backend.set(|m| {
        m.page_size = 2;
        m.etag = Some("\"list-v1\"");
    });
    let dir = temp_dir("contract");
    let args = daemon_args(&backend, &dir, &["--region", "eu west"]);
    let mut daemon = Daemon::start(&dir, &args, &[]);
    // The token and key came from files: not on the command line.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", daemon.child.id())).unwrap_or_default();
    assert_no_secret(&String::from_utf8_lossy(&cmdline));

    wait_for(
        "Online results for both peers",
        Duration::from_secs(30),
        || {
            let results = backend.delivered_results();
            let online = |id: i64| {
                results
                    .iter()
                    .any(|r| r["peer_id"] == id && r["status"] == "Online")
            };
            (online(1) && online(2)).then_some(())
        },
    );
    // Later rounds send the ETag and get 304: the list stays in use.
    let gets_before = backend.gets();
    wait_for("more fetches", Duration::from_secs(10), || {
        (backend.gets() >= gets_before + 2).then_some(())
    });
    let delivered_before = backend.delivered_results().len();
    wait_for("more results after 304s", Duration::from_secs(10), || {
        (backend.delivered_results().len() >= delivered_before + 4).then_some(())
    });
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), Some(0));

    let gets = backend.server.requests_to("GET", "/api/peers");
    assert_eq!(
        gets[0].query("page"),
        None,
        "the first page has no page parameter"
    );
    assert_eq!(gets[1].query("page").as_deref(), Some("2"));
    assert!(
        matches!(
            gets[0].query("region").as_deref(),
            Some("eu%20west" | "eu+west")
        ),
        "{:?}",
        gets[0].target
    );
    for g in &gets {
        assert_eq!(
            g.header("authorization"),
            Some(format!("Bearer {API_KEY}").as_str())
        );
        assert!(g
            .header("user-agent")
            .unwrap()
            .starts_with("easytier-probe/"));
    }
    assert!(
        gets[2..]
            .iter()
            .any(|g| g.header("if-none-match") == Some("\"list-v1\"")),
        "If-None-Match sent"
    );

    let puts = backend.server.requests_to("PUT", "/api/nodes/status");
    for p in &puts {
        assert_eq!(p.header("x-node-token"), Some(TOKEN));
        assert!(p
            .header("content-type")
            .unwrap()
            .starts_with("application/json"));
    }
    let last = backend.delivered.lock().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "Online");
    let meta = &last["metadata"];
    assert_eq!(meta["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        meta["total_monitored_nodes"], 2,
        "the broken entry is skipped: {meta}"
    );
    assert_eq!(meta["healthy_nodes"], 2);
    assert_eq!(meta["region"], "eu west");
    assert_eq!(meta["easytier_version"], easytier::VERSION);
    assert!(meta["probe_id"].as_str().unwrap().len() >= 8);
    for key in ["uptime_seconds", "buffered_results", "dropped_results"] {
        assert!(meta[key].is_u64(), "{key} in {meta}");
    }
    assert!(
        last["response_time"].is_i64() || last["response_time"].is_u64(),
        "{last}"
    );
    let r = backend
        .delivered_results()
        .into_iter()
        .find(|r| r["peer_id"] == 1)
        .unwrap();
    for key in [
        "seq",
        "peer_id",
        "checked_at",
        "status",
        "response_time",
        "latency_us",
        "remote_version",
        "remote_hostname",
        "role",
        "error",
        "error_kind",
        "attempts",
    ] {
        assert!(r.get(key).is_some(), "{key} missing in {r}");
    }
    assert_eq!(r["role"], "member");
    assert!(r["error_kind"].is_null(), "null for Online: {r}");
    assert_eq!(r["attempts"], 1, "{r}");
    assert_eq!(meta["unsupported_peers"], serde_json::json!([]), "{meta}");
    assert_contiguous(&backend.delivered_seqs());
    assert_eq!(
        backend.delivered_seqs(),
        all_seqs(&daemon.db),
        "every stored result was delivered"
    );
    let log = daemon.log();
    assert!(
        log.contains("entry 3 (id 3)"),
        "the invalid entry is warned about: {log}"
    );
    assert_no_secret(&log);
    assert_no_secret(
        &backend
            .server
            .requests()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect::<String>(),
    );
}

fn bad_401() -> Response {
    Response::json(401, json!({"code": 401, "message": "bad key"}))
}
fn bad_500() -> Response {
    Response::json(500, json!({"code": 500}))
}
fn bad_json() -> Response {
    Response::raw(200, b"{\"code\": 200, \"data\": {\"peers\": [")
}
fn bad_shape() -> Response {
    Response::json(200, json!({"code": 200, "data": {"nodes": []}}))
}
fn bad_code() -> Response {
    Response::json(
        200,
        json!({"code": 500, "message": "db down", "data": {"peers": []}}),
    )
}
fn bad_slow() -> Response {
    Response::json(200, peers_page(vec![], false)).delayed(Duration::from_secs(4))
}
fn bad_huge() -> Response {
    // 17 MiB of valid JSON: refused by size, not parsed.
    let mut body = b"{\"code\":200,\"data\":{\"peers\":[],\"pad\":\"".to_vec();
    body.extend(std::iter::repeat_n(b'x', 17 * 1024 * 1024));
    body.extend(b"\"}}");
    Response::raw(200, &body)
}

#[test]
fn bad_backend_answers_keep_the_last_good_list() {
    require_private_netns();
    let refused = free_port();
    let backend = Backend::start(vec![refused_peer(7, refused)]);
    let dir = temp_dir("bad-answers");
    let args = daemon_args(&backend, &dir, &[]);
    let mut daemon = Daemon::start(&dir, &args, &[]);
    wait_for("the first list in use", Duration::from_secs(20), || {
        (daemon.db.exists()
            && daemon
                .status_json()
                .iter()
                .any(|r| r["id"] == 7 && r["checks_24h"].as_i64().unwrap() > 0))
        .then_some(())
    });
    type Answer = fn() -> Response;
    let answers: [(&str, Answer); 7] = [
        ("401", bad_401),
        ("500", bad_500),
        ("malformed JSON", bad_json),
        ("wrong shape", bad_shape),
        ("code 500", bad_code),
        ("slow answer", bad_slow),
        ("oversized body", bad_huge),
    ];
    for (what, answer) in answers {
        let seen = backend.gets();
        backend.set(|m| m.peers_override = Some(answer));
        wait_for(
            &format!("a fetch answered with {what}"),
            Duration::from_secs(30),
            || (backend.gets() > seen + 1).then_some(()),
        );
        let checks_before = daemon.status_json()[0]["checks_24h"].as_i64().unwrap();
        wait_for(
            &format!("checks going on after {what}"),
            Duration::from_secs(20),
            || {
                let rows = daemon.status_json();
                (rows.len() == 1
                    && rows[0]["id"] == 7
                    && rows[0]["checks_24h"].as_i64().unwrap() > checks_before)
                    .then_some(())
            },
        );
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "the daemon died after {what}"
        );
    }
    let log = daemon.log();
    assert!(
        log.contains("authentication failed") && log.contains("Authorization header"),
        "{log}"
    );
    assert!(log.contains("larger than 16 MiB"), "{log}");
    assert_no_secret(&log);

    // A complete new round replaces the set: peer 7 goes, peer 8 comes, history stays.
    backend.set(|m| {
        m.peers_override = None;
        m.peers = vec![refused_peer(8, refused)];
    });
    wait_for("peer 8 replacing peer 7", Duration::from_secs(20), || {
        let rows = daemon.status_json();
        (rows.len() == 1 && rows[0]["id"] == 8 && rows[0]["checks_24h"].as_i64().unwrap() > 0)
            .then_some(())
    });
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), Some(0));
    let conn = rusqlite::Connection::open(&daemon.db).unwrap();
    let kept: i64 = conn
        .query_row("SELECT count(*) FROM results WHERE peer_id = 7", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(kept > 0, "the removed peer's history stays");
}

#[test]
fn outage_then_recovery_delivers_everything_and_drains_fast() {
    require_private_netns();
    let refused = free_port();
    let backend = Backend::start((1..=4).map(|id| refused_peer(id, refused)).collect());
    backend.set(|m| m.reports_down = true);
    let dir = temp_dir("outage");
    let mut args = daemon_args(&backend, &dir, &["--report-batch-size", "4"]);
    // Reports every 30 s: draining five or more batches well within that
    // shows that a backlog does not wait one interval per batch.
    let i = args
        .iter()
        .position(|a| a == "--status-report-interval")
        .unwrap();
    args[i + 1] = "30".into();
    let mut daemon = Daemon::start(&dir, &args, &[]);
    wait_for("a backlog of 20 results", Duration::from_secs(60), || {
        (daemon.db.exists() && unacked(&daemon.db) >= 20).then_some(())
    });
    backend.set(|m| m.reports_down = false);
    // The retry after the outage comes within the backoff (< 16 s here), the
    // rest of the backlog right after it; one batch per interval would take
    // over two minutes.
    wait_for("the backlog delivered", Duration::from_secs(25), || {
        (backend.delivered.lock().unwrap().len() >= 5).then_some(())
    });
    let bodies = backend.delivered.lock().unwrap().clone();
    assert!(bodies.len() >= 5, "delivered in batches of at most 4");
    assert!(bodies
        .iter()
        .all(|b| b["results"].as_array().unwrap().len() <= 4));
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), Some(0));
    let failures = backend.server.requests_to("PUT", "/api/nodes/status").len() - bodies.len();
    assert!(failures >= 2, "reports were retried during the outage");
    assert_contiguous(&backend.delivered_seqs());
    assert_eq!(backend.delivered_seqs(), all_seqs(&daemon.db));
    assert!(daemon.log().contains("results stay buffered"));
}

#[test]
fn a_redirected_report_is_not_taken_as_delivered() {
    require_private_netns();
    let refused = free_port();
    let backend = Backend::start(vec![refused_peer(3, refused)]);
    backend.set(|m| m.reports_redirect = true);
    let dir = temp_dir("redirect");
    let args = daemon_args(&backend, &dir, &[]);
    let mut daemon = Daemon::start(&dir, &args, &[]);
    // A result first (a refused peer's Offline is confirmed, 2 s), then
    // three reports that should carry it.
    wait_for("a stored result", Duration::from_secs(30), || {
        (daemon.db.exists() && unacked(&daemon.db) > 0).then_some(())
    });
    let puts_before = backend.server.requests_to("PUT", "/api/nodes/status").len();
    wait_for("three redirected reports", Duration::from_secs(30), || {
        (backend.server.requests_to("PUT", "/api/nodes/status").len() >= puts_before + 3)
            .then_some(())
    });
    // Followed, the redirect would have sent the node token to another
    // address and turned a 200 from a GET into a false acknowledgement.
    assert!(
        backend
            .server
            .requests_to("GET", "/api/elsewhere")
            .is_empty(),
        "the redirect was followed"
    );
    assert!(backend.delivered_seqs().is_empty());
    assert!(
        unacked(&daemon.db) > 0,
        "results are kept for a later report"
    );
    assert!(
        daemon.log().contains("redirect, not followed"),
        "{}",
        daemon.log()
    );

    backend.set(|m| m.reports_redirect = false);
    wait_for("everything delivered", Duration::from_secs(30), || {
        (unacked(&daemon.db) == 0).then_some(())
    });
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), Some(0));
    assert_contiguous(&backend.delivered_seqs());
    assert_no_secret(&daemon.log());
}

#[test]
fn restart_during_outage_checks_from_cache_and_delivers_later() {
    require_private_netns();
    let refused = free_port();
    let backend = Backend::start(vec![refused_peer(5, refused)]);
    let dir = temp_dir("restart");
    let args = daemon_args(&backend, &dir, &[]);
    let mut first = Daemon::start(&dir, &args, &[]);
    wait_for("first results delivered", Duration::from_secs(20), || {
        (!backend.delivered_seqs().is_empty()).then_some(())
    });
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(30)), Some(0));
    let seqs_first_run = all_seqs(&first.db);

    // The backend goes down for everything, then the probe restarts.
    backend.set(|m| {
        m.peers_override = Some(bad_500);
        m.reports_down = true;
    });
    let mut second = Daemon::start(&dir, &args, &[]);
    wait_for(
        "checks from the cached list",
        Duration::from_secs(20),
        || (all_seqs(&second.db).len() >= seqs_first_run.len() + 3).then_some(()),
    );
    assert!(
        second.log().contains("from the last good list"),
        "{}",
        second.log()
    );
    backend.set(|m| {
        m.peers_override = None;
        m.reports_down = false;
    });
    wait_for("everything delivered", Duration::from_secs(30), || {
        (unacked(&second.db) == 0).then_some(())
    });
    second.signal("TERM");
    assert_eq!(second.wait_exit(Duration::from_secs(30)), Some(0));
    assert_contiguous(&backend.delivered_seqs());
    assert_eq!(backend.delivered_seqs(), all_seqs(&second.db));
}

#[test]
fn a_list_cached_for_another_region_is_not_reused() {
    require_private_netns();
    let refused = free_port();
    let backend = Backend::start(vec![refused_peer(6, refused)]);
    backend.set(|m| m.etag = Some("\"eu-v1\""));
    let dir = temp_dir("region-change");
    let eu = daemon_args(&backend, &dir, &["--region", "eu"]);
    let mut first = Daemon::start(&dir, &eu, &[]);
    wait_for("results for the eu list", Duration::from_secs(20), || {
        (!backend.delivered_seqs().is_empty()).then_some(())
    });
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(30)), Some(0));
    let results_eu = all_seqs(&first.db).len();

    // Same database, now for region "us", and the backend is down: the eu
    // list must not be checked and reported as the us list, and its ETag
    // must not be offered (a 304 would make the eu list the us list).
    backend.set(|m| m.peers_override = Some(bad_500));
    // The us list has a tag of its own: only the eu one must never be offered.
    backend.set(|m| m.etag = Some("\"us-v1\""));
    let gets_before = backend.gets();
    let us = daemon_args(&backend, &dir, &["--region", "us"]);
    let mut second = Daemon::start(&dir, &us, &[]);
    wait_for("two fetches for us", Duration::from_secs(20), || {
        (backend.gets() >= gets_before + 2).then_some(())
    });
    assert!(
        second.log().contains("came from another backend, region"),
        "{}",
        second.log()
    );
    // Fetches are at least 1 s apart and checks run every second: two
    // fetches leave time for a check of a reused list.
    assert_eq!(
        all_seqs(&second.db).len(),
        results_eu,
        "no check of the eu list"
    );
    // Once the backend answers, the us list is checked.
    backend.set(|m| m.peers_override = None);
    wait_for("results for the us list", Duration::from_secs(20), || {
        (all_seqs(&second.db).len() > results_eu).then_some(())
    });
    second.signal("TERM");
    assert_eq!(second.wait_exit(Duration::from_secs(30)), Some(0));
    let gets = backend.server.requests_to("GET", "/api/peers");
    for g in &gets[gets_before..] {
        assert_eq!(g.query("region").as_deref(), Some("us"));
        assert_ne!(
            g.header("if-none-match"),
            Some("\"eu-v1\""),
            "the eu ETag was offered"
        );
    }
    // Back to eu after us answered: the stored list is the us one now, so
    // nothing is reused either; the eu list comes fresh.
    let mut third = Daemon::start(&dir, &eu, &[]);
    wait_for("an eu fetch", Duration::from_secs(20), || {
        (backend.gets() > gets.len()).then_some(())
    });
    third.signal("TERM");
    assert_eq!(third.wait_exit(Duration::from_secs(30)), Some(0));
    let gets = backend.server.requests_to("GET", "/api/peers");
    assert_eq!(gets.last().unwrap().header("if-none-match"), None);
}

#[test]
fn a_cached_list_follows_this_runs_settings_behind_a_304() {
    require_private_netns();
    let backend = Backend::start(vec![
        refused_peer(1, free_port()),
        peer_json(2, "quic-relay", "127.0.0.1", free_port(), "quic", "", None),
    ]);
    backend.set(|m| m.etag = Some("\"v1\""));
    let dir = temp_dir("cache-settings");
    let mut first = Daemon::start(&dir, &daemon_args(&backend, &dir, &[]), &[]);
    wait_for(
        "the quic peer shown as unsupported",
        Duration::from_secs(20),
        || {
            let rows = if first.db.exists() {
                first.status_json()
            } else {
                Vec::new()
            };
            rows.iter()
                .any(|r| r["id"] == 2 && r["status"] == "unsupported")
                .then_some(())
        },
    );
    wait_for(
        "a confirmed Offline for the refused peer delivered",
        Duration::from_secs(20),
        || {
            backend
                .delivered_results()
                .into_iter()
                .find(|r| r["peer_id"] == 1)
        },
    );
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(30)), Some(0));
    let refused = backend
        .delivered_results()
        .into_iter()
        .find(|r| r["peer_id"] == 1)
        .unwrap();
    assert_eq!(refused["status"], "Offline", "{refused}");
    assert_eq!(refused["error_kind"], "refused", "{refused}");
    assert_eq!(
        refused["attempts"], 2,
        "confirmed by a second check: {refused}"
    );
    let last = backend.delivered.lock().unwrap().last().unwrap().clone();
    let unsupported = &last["metadata"]["unsupported_peers"];
    assert_eq!(unsupported[0]["peer_id"], 2, "{unsupported}");
    assert!(
        unsupported[0]["reason"].as_str().unwrap().contains("quic"),
        "{unsupported}"
    );

    // Same list, same ETag: every fetch of the second run is a 304, so the
    // list the second run checks is the cached one.
    let gets_before = backend.gets();
    let args = daemon_args(&backend, &dir, &["--allow-quic"]);
    let mut second = Daemon::start(&dir, &args, &[]);
    wait_for(
        "the quic peer checked and shown so",
        Duration::from_secs(30),
        || {
            let rows = second.status_json();
            let quic = rows.iter().find(|r| r["id"] == 2)?;
            (quic["checks_24h"].as_i64()? > 0 && backend.gets() > gets_before).then_some(())
        },
    );
    let rows = second.status_json();
    let quic = rows.iter().find(|r| r["id"] == 2).unwrap();
    assert_ne!(quic["status"], "unsupported", "{quic}");
    second.signal("TERM");
    assert_eq!(second.wait_exit(Duration::from_secs(30)), Some(0));
    let gets = backend.server.requests_to("GET", "/api/peers");
    assert!(
        gets[gets_before..]
            .iter()
            .all(|g| g.header("if-none-match") == Some("\"v1\"")),
        "the second run answered from its cache with the stored ETag"
    );
}

#[test]
fn sigterm_during_a_replay_loses_nothing() {
    require_private_netns();
    let refused = free_port();
    let backend = Backend::start(vec![refused_peer(1, refused), refused_peer(2, refused)]);
    backend.set(|m| m.reports_down = true);
    let dir = temp_dir("replay-term");
    let args = daemon_args(&backend, &dir, &["--report-batch-size", "2"]);
    let mut daemon = Daemon::start(&dir, &args, &[]);
    wait_for("a backlog", Duration::from_secs(60), || {
        (daemon.db.exists() && unacked(&daemon.db) >= 30).then_some(())
    });
    // Slow acknowledgements make the replay last long enough to interrupt
    // it: 2 results per 0.6 s drain barely faster than 2 peers a second add,
    // so the 30-result backlog outlasts the final report's 5 s budget.
    let reports = |delay: Duration| {
        let delivered = backend.delivered.clone();
        move |req: &Request| {
            if req.method == "PUT" {
                delivered.lock().unwrap().push(req.json());
                Response::json(200, ok_answer()).delayed(delay)
            } else {
                Response::json(503, json!({"code": 503}))
            }
        }
    };
    backend
        .server
        .set_handler(reports(Duration::from_millis(600)));
    wait_for("the replay under way", Duration::from_secs(20), || {
        (backend.delivered_seqs().len() >= 4).then_some(())
    });
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), Some(0));
    let stored = all_seqs(&daemon.db);
    let left = unacked(&daemon.db);
    assert!(
        left > 0,
        "the replay was interrupted, some results are still buffered"
    );
    // Nothing acknowledged without being delivered, nothing lost from the database.
    let conn = rusqlite::Connection::open(&daemon.db).unwrap();
    let acked: BTreeSet<i64> = conn
        .prepare("SELECT seq FROM results WHERE acked = 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(acked.is_subset(&backend.delivered_seqs()));
    assert_contiguous(&stored);
    // The next start delivers the rest. (The backend may already hold some of
    // it: a request cut short by the shutdown budget is resent, at least once.)
    backend.server.set_handler(reports(Duration::ZERO));
    let mut again = Daemon::start(&dir, &args, &[]);
    wait_for(
        "the rest delivered and acknowledged",
        Duration::from_secs(30),
        || {
            (unacked(&again.db) == 0 && again.log().contains("started in distributed mode"))
                .then_some(())
        },
    );
    assert!(backend.delivered_seqs().is_superset(&stored));
    again.signal("TERM");
    assert_eq!(again.wait_exit(Duration::from_secs(30)), Some(0));
    assert_contiguous(&backend.delivered_seqs());
}

#[test]
fn kill_9_loses_no_written_result() {
    require_private_netns();
    let refused = free_port();
    let backend = Backend::start(vec![
        refused_peer(1, refused),
        peer_json(2, "b", "127.0.0.1", refused, "udp", "", None),
    ]);
    let dir = temp_dir("kill9");
    let args = daemon_args(&backend, &dir, &["--report-batch-size", "3"]);
    let mut daemon = Daemon::start(&dir, &args, &[]);
    wait_for("some results delivered", Duration::from_secs(30), || {
        (backend.delivered_seqs().len() >= 3).then_some(())
    });
    // A moment that depends on the clock, not chosen by the test.
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis() as u64
        % 1500;
    std::thread::sleep(Duration::from_millis(jitter));
    daemon.signal("KILL");
    let _ = daemon.wait_exit(Duration::from_secs(10));
    let conn = rusqlite::Connection::open(&daemon.db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    let stored = all_seqs(&daemon.db);
    assert_contiguous(&stored);
    // Everything the backend has seen is in the database.
    assert!(backend.delivered_seqs().is_subset(&stored));
    let mut again = Daemon::start(&dir, &args, &[]);
    wait_for(
        "everything delivered after the restart",
        Duration::from_secs(30),
        || {
            (backend.delivered_seqs().is_superset(&stored)
                && again.log().contains("started in distributed mode"))
            .then_some(())
        },
    );
    again.signal("TERM");
    assert_eq!(again.wait_exit(Duration::from_secs(30)), Some(0));
    assert_contiguous(&backend.delivered_seqs());
}

#[test]
fn distributed_settings_are_checked_before_start() {
    let dir = temp_dir("dist-usage");
    let cases: [(&[&str], &str); 4] = [
        (&["--distributed-mode"], "--backend-base-url"),
        (
            &["--distributed-mode", "--backend-base-url", "ftp://x"],
            "--backend-base-url",
        ),
        (
            &[
                "--distributed-mode",
                "--backend-base-url",
                "http://127.0.0.1:9",
            ],
            "--node-token",
        ),
        (
            &[
                "--distributed-mode",
                "--backend-base-url",
                "http://127.0.0.1:9",
                "--node-token-file",
                "/nonexistent/t",
            ],
            "--node-token-file",
        ),
    ];
    for (args, needle) in cases {
        let out = probe_bin()
            .arg("--db")
            .arg(dir.join("p.db"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(!dir.join("p.db").exists());
}
