//! Delivery against a backend that misbehaves on purpose: refusals named and not, 413, Retry-After, a refused probe, SIGHUP bursts, kill -9 during a replay.
//!
//! Every test checks what was delivered, by `seq`, and that nothing the
//! database records as acknowledged was not delivered.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::backend::{peers_page, FakeBackend, ReportAttempt, ReportSink, Request, Response};
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "node-token-d3l1v3ry";
const API_KEY: &str = "api-key-9e7c51";

/// A backend whose reports side is a `ReportSink` and whose peer list can
/// be throttled with `Retry-After`.
/// A status code and a Retry-After value to answer GET /peers with, if any.
type Throttle = Arc<Mutex<Option<(u16, fn() -> String)>>>;

struct Backend {
    server: FakeBackend,
    reports: Arc<ReportSink>,
    /// Answer GET /peers with this status and `Retry-After` (made by the function).
    fetch_throttle: Throttle,
    /// When each GET /peers came, and the status it was answered with.
    fetches: Arc<Mutex<Vec<(Instant, u16)>>>,
}

impl Backend {
    fn start(peers: Vec<Value>) -> Backend {
        let reports = Arc::new(ReportSink::default());
        let fetch_throttle: Throttle = Arc::default();
        let fetches: Arc<Mutex<Vec<(Instant, u16)>>> = Arc::default();
        let (r, t, f) = (reports.clone(), fetch_throttle.clone(), fetches.clone());
        let server =
            FakeBackend::start(
                move |req: &Request| match (req.method.as_str(), req.path()) {
                    ("GET", "/api/peers") => {
                        let response = match *t.lock().unwrap() {
                            Some((status, retry_after)) => {
                                Response::json(status, json!({"code": status}))
                                    .with_header("Retry-After", &retry_after())
                            }
                            None => Response::json(200, peers_page(peers.clone(), false)),
                        };
                        f.lock().unwrap().push((Instant::now(), response.status));
                        response
                    }
                    ("PUT", "/api/nodes/status") => r.answer(req),
                    _ => Response::json(404, json!({"code": 404})),
                },
            );
        Backend {
            server,
            reports,
            fetch_throttle,
            fetches,
        }
    }

    fn url(&self) -> String {
        format!("{}/api", self.server.url())
    }

    fn fetches(&self) -> Vec<Instant> {
        self.fetches.lock().unwrap().iter().map(|f| f.0).collect()
    }

    /// When the GET /peers answered with `status` came.
    fn fetches_answered(&self, status: u16) -> Vec<Instant> {
        let fetches = self.fetches.lock().unwrap();
        fetches
            .iter()
            .filter(|f| f.1 == status)
            .map(|f| f.0)
            .collect()
    }

    /// When the reports answered with `status` came.
    fn reports_answered(&self, status: u16) -> Vec<Instant> {
        let attempts = self.reports.attempts();
        attempts
            .iter()
            .filter(|a| a.status == status)
            .map(|a| a.at)
            .collect()
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

fn daemon_args(backend: &Backend, dir: &Path, extra: &[&str]) -> Vec<String> {
    let token = dir.join("node-token");
    let key = dir.join("api-key");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::write(&key, API_KEY).unwrap();
    let mut args: Vec<String> = [
        "--distributed-mode",
        "--backend-base-url",
        &backend.url(),
        "--node-token-file",
        token.to_str().unwrap(),
        "--api-key-file",
        key.to_str().unwrap(),
        "--check-interval",
        "1",
        "--check-timeout",
        "3",
        "--peer-fetch-interval",
        "1",
        "--status-report-interval",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // `extra` is flag/value pairs: a flag given above gets the new value.
    for pair in extra.chunks(2) {
        match args.iter().position(|a| a == pair[0]) {
            Some(i) => args[i + 1] = pair[1].to_string(),
            None => args.extend(pair.iter().map(|s| s.to_string())),
        }
    }
    args
}

/// Seqs of the rows matching `condition`; empty while the database does not exist.
fn seqs_where(db: &Path, condition: &str) -> BTreeSet<i64> {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return BTreeSet::new();
    };
    let Ok(mut stmt) = conn.prepare(&format!("SELECT seq FROM results WHERE {condition}")) else {
        return BTreeSet::new();
    };
    let seqs = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    seqs
}

fn all_seqs(db: &Path) -> BTreeSet<i64> {
    seqs_where(db, "1")
}

fn assert_contiguous(seqs: &BTreeSet<i64>) {
    let (first, last) = (*seqs.first().unwrap(), *seqs.last().unwrap());
    assert_eq!(first, 1, "seq starts at 1");
    assert_eq!(seqs.len() as i64, last - first + 1, "gaps in seq: {seqs:?}");
}

/// What the database holds as acknowledged was delivered; nothing stored is lost.
fn assert_nothing_acked_lost(db: &Path, backend: &Backend) {
    let acked = seqs_where(db, "acked = 1");
    let delivered = backend.reports.delivered_seqs();
    let missing: Vec<_> = acked.difference(&delivered).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    assert_contiguous(&all_seqs(db));
}

fn assert_no_secret(text: &str) {
    for secret in [TOKEN, API_KEY] {
        assert!(!text.contains(secret), "secret {secret:?} leaked");
    }
}

fn stop(daemon: &mut Daemon) {
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), Some(0));
}

/// Seqs of results of `peer` in the database.
fn peer_seqs(db: &Path, peer: i64) -> BTreeSet<i64> {
    seqs_where(db, &format!("peer_id = {peer}"))
}

fn requeue(db: &Path, args: &[&str]) -> std::process::Output {
    probe_bin()
        .arg("requeue")
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn named_refusals_are_set_aside_shown_and_requeued_while_running() {
    require_private_netns();
    let backend = two_refused_peers();
    backend.reports.set(|f| {
        f.refuse = Some(|r| r["peer_id"] == 2);
        f.name_refused = true;
    });
    let dir = temp_dir("named");
    let args = daemon_args(&backend, &dir, &["--report-batch-size", "4"]);
    let mut daemon = Daemon::start(&dir, &args, &[]);
    let db = daemon.db.clone();
    wait_for(
        "results of both peers delivered or set aside",
        Duration::from_secs(40),
        || {
            let peer1 = peer_seqs(&db, 1);
            let delivered = backend.reports.delivered_seqs();
            (seqs_where(&db, "acked = 2").len() >= 4 && peer1.intersection(&delivered).count() >= 4)
                .then_some(())
        },
    );
    // Only peer 2's results are set aside, and none of them was accepted.
    let set_aside = seqs_where(&db, "acked = 2");
    assert!(set_aside.is_subset(&peer_seqs(&db, 2)), "{set_aside:?}");
    assert!(backend
        .reports
        .delivered_seqs()
        .is_disjoint(&peer_seqs(&db, 2)));
    // Visible: in status, and in the reports' metadata.
    let rows = daemon.status_json();
    let rejected = |id: i64| {
        rows.iter().find(|r| r["id"] == id).unwrap()["rejected"]
            .as_i64()
            .unwrap()
    };
    assert!(rejected(2) >= 4, "{rows:?}");
    assert_eq!(rejected(1), 0);
    let text = probe_bin()
        .args(["status", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("set aside") && text.contains("requeue"),
        "{text}"
    );
    wait_for(
        "rejected_results in a report",
        Duration::from_secs(10),
        || {
            let last = backend.reports.accepted().last()?.clone();
            (last["metadata"]["rejected_results"].as_i64()? >= 4).then_some(())
        },
    );
    // The backend's message is escaped: no forged log line.
    let log = daemon.log();
    assert!(log.contains("set aside seq"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("forged line")), "{log}");

    // The backend takes peer 2's results again. Once a report with one of
    // them is accepted, no refusal is in flight any more: queue them again.
    backend.reports.set(|f| f.refuse = None);
    wait_for(
        "a result of peer 2 accepted",
        Duration::from_secs(20),
        || {
            (!backend
                .reports
                .delivered_seqs()
                .is_disjoint(&peer_seqs(&db, 2)))
            .then_some(())
        },
    );
    let set_aside = seqs_where(&db, "acked = 2");
    let out = requeue(&db, &["--all"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("queued {} set-aside", set_aside.len())),
        "{said}"
    );
    wait_for(
        "the queued results delivered",
        Duration::from_secs(20),
        || {
            backend
                .reports
                .delivered_seqs()
                .is_superset(&set_aside)
                .then_some(())
        },
    );
    stop(&mut daemon);
    assert!(seqs_where(&db, "acked = 2").is_empty());
    assert_eq!(backend.reports.delivered_seqs(), all_seqs(&db));
    assert_nothing_acked_lost(&db, &backend);
    assert_no_secret(&daemon.log());
}

/// A backend listing two peers on one port where nothing listens: every
/// check is a quick Offline, so results pile up fast.
fn two_refused_peers() -> Backend {
    let port = free_port();
    Backend::start(vec![refused_peer(1, port), refused_peer(2, port)])
}

/// Waits until the outbox holds at least `n` results while reports with
/// results fail (500), then returns them.
fn build_backlog(backend: &Backend, db: &Path, n: usize) -> BTreeSet<i64> {
    backend.reports.set(|f| f.fail_results = true);
    wait_for("a backlog", Duration::from_secs(60), || {
        let waiting = seqs_where(db, "acked = 0");
        (waiting.len() >= n).then_some(waiting)
    })
}

#[test]
fn unnamed_refusals_are_found_by_halves_and_only_lone_ones_set_aside() {
    require_private_netns();
    let backend = two_refused_peers();
    let dir = temp_dir("unnamed");
    let args = daemon_args(&backend, &dir, &["--report-batch-size", "8"]);
    let mut daemon = Daemon::start(&dir, &args, &[]);
    let db = daemon.db.clone();
    let backlog = build_backlog(&backend, &db, 12);
    let before = backend.reports.attempts().len();
    backend.reports.set(|f| {
        f.fail_results = false;
        f.refuse = Some(|r| r["peer_id"] == 2);
        f.name_refused = false;
    });
    wait_for(
        "the backlog delivered or set aside",
        Duration::from_secs(60),
        || {
            let done: BTreeSet<i64> = backend
                .reports
                .delivered_seqs()
                .union(&seqs_where(&db, "acked = 2"))
                .copied()
                .collect();
            done.is_superset(&backlog).then_some(())
        },
    );
    stop(&mut daemon);
    let peer2 = peer_seqs(&db, 2);
    let set_aside = seqs_where(&db, "acked = 2");
    let delivered = backend.reports.delivered_seqs();
    // Exactly the refused results of the backlog are set aside; the others delivered.
    for seq in &backlog {
        assert_eq!(set_aside.contains(seq), peer2.contains(seq), "seq {seq}");
        assert_eq!(delivered.contains(seq), !peer2.contains(seq), "seq {seq}");
    }
    assert!(set_aside.is_subset(&peer2));
    assert!(delivered.is_disjoint(&peer2));
    // Each set-aside result was refused alone, and the report without
    // results right after it was accepted.
    let attempts: Vec<ReportAttempt> = backend.reports.attempts()[before..].to_vec();
    for seq in &set_aside {
        let alone = attempts
            .iter()
            .position(|a| a.seqs == [*seq] && a.status == 400)
            .unwrap_or_else(|| panic!("seq {seq} set aside without being refused alone"));
        let control = &attempts[alone + 1];
        assert!(
            control.seqs.is_empty() && control.status == 200,
            "{control:?}"
        );
    }
    // By halves: no refused report larger than a batch, and far fewer
    // reports than a one-by-one search of the backlog would need.
    assert!(attempts.iter().all(|a| a.seqs.len() <= 8));
    assert!(
        daemon.log().contains("sending them in halves"),
        "{}",
        daemon.log()
    );
    assert_nothing_acked_lost(&db, &backend);
}

#[test]
fn a_413_halves_the_batch_and_the_smaller_size_stays() {
    require_private_netns();
    let backend = two_refused_peers();
    let dir = temp_dir("too-large");
    let args = daemon_args(&backend, &dir, &["--report-batch-size", "16"]);
    let mut daemon = Daemon::start(&dir, &args, &[]);
    let db = daemon.db.clone();
    let backlog = build_backlog(&backend, &db, 20);
    let before = backend.reports.attempts().len();
    backend.reports.set(|f| {
        f.fail_results = false;
        f.max_results = Some(3);
    });
    wait_for("the backlog delivered", Duration::from_secs(40), || {
        backend
            .reports
            .delivered_seqs()
            .is_superset(&backlog)
            .then_some(())
    });
    stop(&mut daemon);
    let attempts: Vec<ReportAttempt> = backend.reports.attempts()[before..]
        .iter()
        .filter(|a| !a.seqs.is_empty() && a.status != 500)
        .cloned()
        .collect();
    let sizes: Vec<(usize, u16)> = attempts.iter().map(|a| (a.seqs.len(), a.status)).collect();
    assert_eq!(
        &sizes[..4],
        &[(16, 413), (8, 413), (4, 413), (2, 200)],
        "{sizes:?}"
    );
    assert!(
        sizes[3..]
            .iter()
            .all(|(n, status)| *n <= 2 && *status == 200),
        "the smaller size stays: {sizes:?}"
    );
    assert!(seqs_where(&db, "acked = 2").is_empty(), "nothing set aside");
    assert_eq!(backend.reports.delivered_seqs(), all_seqs(&db));
    assert_nothing_acked_lost(&db, &backend);
}

#[test]
fn a_probe_refused_even_without_results_sets_nothing_aside() {
    require_private_netns();
    let port = free_port();
    let backend = Backend::start(vec![refused_peer(1, port)]);
    backend.reports.set(|f| f.refuse_probe = true);
    let dir = temp_dir("refused-probe");
    let args = daemon_args(&backend, &dir, &["--report-batch-size", "4"]);
    let mut daemon = Daemon::start(&dir, &args, &[]);
    let db = daemon.db.clone();
    wait_for(
        "results and refused reports without results",
        Duration::from_secs(40),
        || {
            let empties = backend
                .reports
                .attempts()
                .iter()
                .filter(|a| a.seqs.is_empty() && a.status == 400)
                .count();
            (empties >= 3 && all_seqs(&db).len() >= 4).then_some(())
        },
    );
    assert!(
        seqs_where(&db, "acked = 2").is_empty(),
        "the probe is refused, not its results"
    );
    assert!(backend.reports.delivered_seqs().is_empty());
    assert!(
        daemon
            .log()
            .contains("refuses even a report without results"),
        "{}",
        daemon.log()
    );
    backend.reports.set(|f| f.refuse_probe = false);
    let stored = all_seqs(&db);
    wait_for("everything delivered", Duration::from_secs(30), || {
        backend
            .reports
            .delivered_seqs()
            .is_superset(&stored)
            .then_some(())
    });
    stop(&mut daemon);
    assert!(seqs_where(&db, "acked = 2").is_empty());
    assert_eq!(backend.reports.delivered_seqs(), all_seqs(&db));
    assert_nothing_acked_lost(&db, &backend);
}

#[test]
fn the_heartbeat_goes_on_while_results_fail() {
    require_private_netns();
    let port = free_port();
    let backend = Backend::start(vec![refused_peer(1, port)]);
    backend.reports.set(|f| f.fail_results = true);
    let dir = temp_dir("heartbeat");
    let args = daemon_args(&backend, &dir, &[]);
    let mut daemon = Daemon::start(&dir, &args, &[]);
    let db = daemon.db.clone();
    wait_for("results waiting", Duration::from_secs(30), || {
        (seqs_where(&db, "acked = 0").len() >= 2).then_some(())
    });
    // While every report with results fails, reports without them are
    // accepted about once an interval (1 s): at least 4 in 8 s.
    let start = backend.reports.attempts().len();
    wait_for("heartbeats", Duration::from_secs(8), || {
        let beats = backend.reports.attempts()[start..]
            .iter()
            .filter(|a| a.seqs.is_empty() && a.status == 200)
            .count();
        (beats >= 4).then_some(())
    });
    let accepted = backend.reports.accepted();
    let last = accepted.last().unwrap();
    assert!(
        last["metadata"]["buffered_results"].as_i64().unwrap() >= 2,
        "{last}"
    );
    backend.reports.set(|f| f.fail_results = false);
    stop(&mut daemon);
    assert_eq!(backend.reports.delivered_seqs(), all_seqs(&db));
    assert_nothing_acked_lost(&db, &backend);
}

/// An HTTP date (IMF-fixdate) `secs` from now.
fn http_date_in(secs: u64) -> String {
    let t = (SystemTime::now() + Duration::from_secs(secs))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, of_day) = (t / 86_400, t % 86_400);
    // Days to civil date (Howard Hinnant).
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{weekday}, {d:02} {month} {y} {:02}:{:02}:{:02} GMT",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The gaps between consecutive instants.
fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[test]
fn retry_after_is_honoured_and_capped_on_both_endpoints() {
    require_private_netns();
    let port = free_port();
    let backend = Backend::start(vec![refused_peer(1, port)]);
    let dir = temp_dir("retry-after");
    let args = daemon_args(&backend, &dir, &[]);
    let mut daemon = Daemon::start(&dir, &args, &[]);
    let db = daemon.db.clone();
    wait_for("a result delivered", Duration::from_secs(30), || {
        (!backend.reports.delivered_seqs().is_empty()).then_some(())
    });
    // Reports: 429 with seconds; fetches: 503 with an HTTP date. With 1 s
    // intervals, the backoff alone would retry within a second.
    backend
        .reports
        .set(|f| f.throttle = Some((429, "3".into())));
    *backend.fetch_throttle.lock().unwrap() = Some((503, || http_date_in(4)));
    wait_for(
        "4 throttled reports and fetches",
        Duration::from_secs(40),
        || {
            (backend.reports_answered(429).len() >= 4 && backend.fetches_answered(503).len() >= 4)
                .then_some(())
        },
    );
    for gap in gaps(&backend.reports_answered(429)[..4]) {
        assert!(
            gap >= Duration::from_millis(2_900),
            "report retried after {gap:?}"
        );
    }
    // The date has whole seconds: at least 3 s of the 4 asked for.
    for gap in gaps(&backend.fetches_answered(503)[..4]) {
        assert!(
            gap >= Duration::from_millis(2_900),
            "fetch retried after {gap:?}"
        );
    }
    // An hour asked for: capped at ten intervals (10 s here).
    backend
        .reports
        .set(|f| f.throttle = Some((503, "3600".into())));
    *backend.fetch_throttle.lock().unwrap() = Some((429, || "3600".to_string()));
    wait_for("capped waits", Duration::from_secs(60), || {
        (backend.reports_answered(503).len() >= 3 && backend.fetches_answered(429).len() >= 3)
            .then_some(())
    });
    for gap in gaps(&backend.reports_answered(503)[..3])
        .into_iter()
        .chain(gaps(&backend.fetches_answered(429)[..3]))
    {
        assert!(
            gap >= Duration::from_millis(9_500) && gap <= Duration::from_secs(13),
            "waited {gap:?} for a Retry-After of an hour, capped at 10 s"
        );
    }
    backend.reports.set(|f| f.throttle = None);
    *backend.fetch_throttle.lock().unwrap() = None;
    let stored = all_seqs(&db);
    wait_for("everything delivered", Duration::from_secs(30), || {
        backend
            .reports
            .delivered_seqs()
            .is_superset(&stored)
            .then_some(())
    });
    stop(&mut daemon);
    assert!(
        daemon.log().contains("asked to retry after"),
        "{}",
        daemon.log()
    );
    assert_eq!(backend.reports.delivered_seqs(), all_seqs(&db));
    assert_nothing_acked_lost(&db, &backend);
}

#[test]
fn sighup_bursts_collapse_into_one_fetch_and_wait_for_the_backoff() {
    require_private_netns();
    let port = free_port();
    let backend = Backend::start(vec![refused_peer(1, port)]);
    *backend.fetch_throttle.lock().unwrap() = Some((503, || "4".to_string()));
    let dir = temp_dir("sighup");
    // Scheduled fetches once a minute: every fetch in this test is a retry
    // or asked for.
    let args = daemon_args(&backend, &dir, &["--peer-fetch-interval", "60"]);
    let mut daemon = Daemon::start(&dir, &args, &[]);
    let fetches = || backend.fetches();
    wait_for("the first fetch", Duration::from_secs(20), || {
        (!fetches().is_empty()).then_some(())
    });
    // During the Retry-After wait: 20 signals ask for one fetch, which
    // waits for the end of the backoff.
    for _ in 0..20 {
        daemon.signal("HUP");
    }
    wait_for("the retry", Duration::from_secs(20), || {
        (fetches().len() >= 2).then_some(())
    });
    // The lifted throttle answers the next one; the collapsed signals add
    // no fetch of their own.
    *backend.fetch_throttle.lock().unwrap() = None;
    wait_for("the retry after that", Duration::from_secs(20), || {
        (fetches().len() >= 3).then_some(())
    });
    let f = fetches();
    assert!(
        f[1] - f[0] >= Duration::from_millis(3_900),
        "{:?}",
        gaps(&f)
    );
    assert!(
        f[2] - f[1] >= Duration::from_millis(3_900),
        "{:?}",
        gaps(&f)
    );
    // After a good round: a burst asks for one fetch, within the 2 s that
    // asked fetches keep between them, not twenty.
    let before = fetches().len();
    let t0 = Instant::now();
    for _ in 0..20 {
        daemon.signal("HUP");
    }
    wait_for("the asked fetch", Duration::from_secs(10), || {
        (fetches().len() > before).then_some(())
    });
    assert!(fetches()[before] - t0 < Duration::from_secs(3));
    // Nothing else is due for a minute: wait a little to see no more come.
    std::thread::sleep(Duration::from_secs(3));
    let after = fetches().len() - before;
    assert_eq!(after, 1, "fetches for one burst");
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "SIGHUP killed it"
    );
    stop(&mut daemon);
    let db = daemon.db.clone();
    assert_eq!(backend.reports.delivered_seqs(), all_seqs(&db));
    assert_nothing_acked_lost(&db, &backend);
}

#[test]
fn kill_9_at_several_points_of_a_replay_loses_nothing_acknowledged() {
    require_private_netns();
    let backend = two_refused_peers();
    let dir = temp_dir("kill9-replay");
    let args = daemon_args(&backend, &dir, &["--report-batch-size", "2"]);
    for (round, advance) in [1usize, 3, 6].into_iter().enumerate() {
        let mut daemon = Daemon::start(&dir, &args, &[]);
        let db = daemon.db.clone();
        build_backlog(&backend, &db, 12 + round * 4);
        // Slow acknowledgements: the replay takes a while; kill it after
        // `advance` more reports were delivered, a different point each round.
        let delivered_before = backend.reports.delivered_seqs().len();
        backend.reports.set(|f| {
            f.fail_results = false;
            f.accept_delay = Duration::from_millis(250);
        });
        wait_for("the replay under way", Duration::from_secs(30), || {
            (backend.reports.delivered_seqs().len() >= delivered_before + 2 * advance).then_some(())
        });
        daemon.signal("KILL");
        let _ = daemon.wait_exit(Duration::from_secs(10));
        let conn = rusqlite::Connection::open(&db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        drop(conn);
        assert!(
            !seqs_where(&db, "acked = 0").is_empty(),
            "round {round}: killed during the replay"
        );
        assert_nothing_acked_lost(&db, &backend);
        assert!(backend.reports.delivered_seqs().is_subset(&all_seqs(&db)));
    }
    backend.reports.set(|f| f.accept_delay = Duration::ZERO);
    let mut daemon = Daemon::start(&dir, &args, &[]);
    let db = daemon.db.clone();
    let stored = all_seqs(&db);
    wait_for("the rest delivered", Duration::from_secs(40), || {
        backend
            .reports
            .delivered_seqs()
            .is_superset(&stored)
            .then_some(())
    });
    stop(&mut daemon);
    assert_eq!(backend.reports.delivered_seqs(), all_seqs(&db));
    assert_nothing_acked_lost(&db, &backend);
}

#[test]
fn requeue_says_what_it_did_and_refuses_bad_usage() {
    let dir = temp_dir("requeue-usage");
    let db = dir.join("probe.db");
    // No database: an error, nothing created.
    let out = requeue(&db, &["--all"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!db.exists());
    drop(easytier_probe::store::open_rw(&db).unwrap());
    for (args, needle) in [
        (&[][..], "--seq N"),
        (&["--all", "--seq", "3"][..], "not both"),
        (&["--seq", "x"][..], "--seq"),
    ] {
        let out = requeue(&db, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = requeue(&db, &["--all"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no set-aside results"));
    // A seq that is not set aside is named, and the exit status says so.
    let out = requeue(&db, &["--seq", "7", "--seq", "9"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("seq 7, 9"));
}
