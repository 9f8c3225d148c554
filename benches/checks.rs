//! `make bench`: time to verdict, CPU and memory per check, threads after 200 checks,
//! quick and full checks side by side against a 2.0.3 and a 2.6.4 node (time to
//! verdict, instance-seconds per check), the store writer's insert rate, and the
//! time to drain 100,000 buffered results.
//!
//! Settings (environment): ETP_BENCH_CHECKS Online and refused checks for
//! CPU, RSS and threads (default 100 of each), ETP_BENCH_MATRIX_CHECKS checks per cell of the
//! quick/full matrix (default 40; 0 skips it), ETP_BENCH_RSS_CHECKS (memory only).

mod support;

use std::time::{Duration, Instant};

use easytier_probe::backend::BackendClient;
use easytier_probe::checker::{self, CheckKind, CheckOptions, Status};
use easytier_probe::config::Secret;
use easytier_probe::peer::{peer_from_uri, Peer};
use easytier_probe::reporter::{self, ReporterOptions};
use easytier_probe::store::{self, StoreMsg, WriterOptions};
use support::common::backend::{ok_answer, FakeBackend, Response};
use support::*;

const STORE_RESULTS: usize = 100_000;
/// Seconds between two checks of a peer, for the instance-seconds comparison.
const INTERVAL_SECS: f64 = 60.0;
/// The daemon's default `--version-refresh`: one full check per hour per peer.
const VERSION_REFRESH_SECS: f64 = 3600.0;

fn main() {
    // As the daemon's main does: no backtrace capture in EasyTier's errors.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    if serve_node_if_asked() {
        return;
    }
    support::common::require_private_netns();
    if let Ok(n) = std::env::var("ETP_BENCH_RSS_CHECKS") {
        rss_growth(n.parse().unwrap());
        return;
    }
    println!(
        "easytier-probe {} benchmark (EasyTier {})",
        env!("CARGO_PKG_VERSION"),
        easytier::VERSION
    );
    checks();
    let matrix_checks = std::env::var("ETP_BENCH_MATRIX_CHECKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40usize);
    if matrix_checks > 0 {
        quick_and_full(matrix_checks);
    }
    store_and_drain();
}

fn checks() {
    let checks_per_kind: usize = std::env::var("ETP_BENCH_CHECKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    checker::tune_easytier_for_checks();
    let node = NodeProcess::spawn("bench-net", "bench-secret", "bench-node");
    let mut member = peer_from_uri(&format!("tcp://127.0.0.1:{}", node.tcp_port)).unwrap();
    member.network_name = node.network.clone();
    member.network_secret = Some(node.secret.clone());
    let refused =
        peer_from_uri(&format!("tcp://127.0.0.1:{}", support::common::free_port())).unwrap();
    let options = CheckOptions {
        timeout: Duration::from_secs(10),
        probe_network_name: "bench-probe".into(),
        hostname: "bench-probe".into(),
    };
    // Warm-up: lazily initialised process-wide state belongs in the baseline.
    assert_eq!(checker::check(&member, &options).status, Status::Online);
    let me = std::process::id().to_string();
    let before = sample(&me);

    let run = |peer: &Peer, expected: Status| -> (Vec<f64>, Vec<f64>) {
        let mut verdict = Vec::new();
        let mut whole = Vec::new();
        for _ in 0..checks_per_kind {
            let started = Instant::now();
            let r = checker::check(peer, &options);
            whole.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(r.status, expected, "{r:?}");
            verdict.push(r.duration_ms as f64);
        }
        (sorted(verdict), sorted(whole))
    };
    let (online, online_whole) = run(&member, Status::Online);
    let (refused_v, refused_whole) = run(&refused, Status::Offline);
    let after = sample(&me);
    let n = (2 * checks_per_kind) as f64;

    println!();
    println!("checks against a real EasyTier node on loopback ({checks_per_kind} of each, one at a time)");
    println!("  verdict              p50 ms   p95 ms   max ms   p50 incl. teardown ms");
    for (name, v, w) in [
        ("Online (member)", &online, &online_whole),
        ("refused port", &refused_v, &refused_whole),
    ] {
        println!(
            "  {name:<18} {:>8.0} {:>8.0} {:>8.0} {:>12.0}",
            percentile(v, 50.0),
            percentile(v, 95.0),
            v.last().unwrap(),
            percentile(w, 50.0)
        );
    }
    println!(
        "  CPU per check:          {:.1} ms",
        (after.cpu - before.cpu).as_secs_f64() * 1000.0 / n
    );
    println!(
        "  RSS before / after {} checks: {:.1} / {:.1} MB (peak {:.1} MB)",
        2 * checks_per_kind,
        before.rss_kb as f64 / 1024.0,
        after.rss_kb as f64 / 1024.0,
        after.peak_rss_kb as f64 / 1024.0
    );
    println!(
        "  threads before / after {} checks: {} / {}",
        2 * checks_per_kind,
        before.threads,
        after.threads
    );
}

/// One cell of the quick/full matrix.
#[derive(Default)]
struct Cell {
    /// Time to verdict (the result's duration_ms).
    verdict: Vec<f64>,
    /// From the check's start to the end of its teardown: how long an
    /// EasyTier instance, and its connection to the node, existed.
    whole: Vec<f64>,
    latency_ms: Vec<f64>,
    latency_kind: Option<&'static str>,
    version: Option<String>,
    cpu: Duration,
    not_online: usize,
}

/// Quick and full checks, member and relay over tcp, against a 2.0.3 node
/// (NodeProcess) and a 2.6.4 node (Node26), interleaved round-robin so that
/// every cell sees the same machine.
fn quick_and_full(n: usize) {
    let node20 = NodeProcess::spawn("bench20-net", "bench20-secret", "bench20-node");
    let node26 = support::common::et26::Node26::start(serde_json::json!({
        "instance_name": "bench26",
        "hostname": "bench26-node",
        "network_name": "bench26-net",
        "network_secret": "bench26-secret",
        "listeners": ["tcp://127.0.0.1:0"],
    }));
    let peer = |uri: String, member: Option<(&str, &str)>| -> Peer {
        let mut p = peer_from_uri(&uri).unwrap();
        if let Some((network, secret)) = member {
            p.network_name = network.into();
            p.network_secret = Some(secret.into());
        }
        p
    };
    let uri20 = format!("tcp://127.0.0.1:{}", node20.tcp_port);
    let uri26 = node26.uri("tcp");
    let targets: Vec<(&str, &str, Peer)> = vec![
        (
            "2.0.3",
            "member",
            peer(uri20.clone(), Some(("bench20-net", "bench20-secret"))),
        ),
        ("2.0.3", "relay", peer(uri20, None)),
        (
            "2.6.4",
            "member",
            peer(uri26.clone(), Some(("bench26-net", "bench26-secret"))),
        ),
        ("2.6.4", "relay", peer(uri26, None)),
    ];
    let options = CheckOptions {
        timeout: Duration::from_secs(10),
        probe_network_name: "bench-probe".into(),
        hostname: "bench-probe".into(),
    };
    let kinds = [CheckKind::Quick, CheckKind::Full];
    let mut cells: Vec<Cell> = (0..targets.len() * kinds.len())
        .map(|_| Cell::default())
        .collect();
    let me = std::process::id().to_string();
    // Warm-up of each target (not counted).
    for (_, _, p) in &targets {
        checker::check_as(p, &options, CheckKind::Quick);
    }
    for _ in 0..n {
        for (t, (_, _, p)) in targets.iter().enumerate() {
            for (k, kind) in kinds.iter().enumerate() {
                let cell = &mut cells[t * kinds.len() + k];
                let cpu = sample(&me).cpu;
                let started = Instant::now();
                let r = checker::check_as(p, &options, *kind);
                cell.whole.push(started.elapsed().as_secs_f64() * 1000.0);
                cell.cpu += sample(&me).cpu.saturating_sub(cpu);
                assert_eq!(r.check_kind, *kind, "{r:?}");
                if r.status != Status::Online {
                    cell.not_online += 1;
                    continue;
                }
                cell.verdict.push(r.duration_ms as f64);
                if let Some(us) = r.latency_us {
                    cell.latency_ms.push(us as f64 / 1000.0);
                }
                cell.latency_kind = r.latency_kind;
                if r.remote_version.is_some() {
                    cell.version = r.remote_version;
                }
            }
        }
    }
    drop(node26);
    drop(node20);

    println!();
    println!(
        "quick and full checks over tcp, {n} of each cell, interleaved; 2.0.3 node (this crate) and 2.6.4 node (easytier-pyo3)"
    );
    println!("  node   role    kind   | verdict p50 ms  p95 ms  max ms | instance held p50 ms  mean ms | latency p50 ms (kind) | CPU/check ms | version seen   | not Online");
    let mut mean_whole = [0.0f64; 2];
    for (t, (version, role, _)) in targets.iter().enumerate() {
        for (k, kind) in kinds.iter().enumerate() {
            let c = &mut cells[t * kinds.len() + k];
            c.verdict = sorted(std::mem::take(&mut c.verdict));
            c.whole = sorted(std::mem::take(&mut c.whole));
            c.latency_ms = sorted(std::mem::take(&mut c.latency_ms));
            let mean = c.whole.iter().sum::<f64>() / c.whole.len().max(1) as f64;
            mean_whole[k] += mean / targets.len() as f64;
            println!(
                "  {version:<6} {role:<7} {:<6} | {:>14.0} {:>7.0} {:>7.0} | {:>20.0} {:>8.0} | {:>9.2} ({:<9}) | {:>12.1} | {:<14} | {}",
                kind.as_str(),
                percentile(&c.verdict, 50.0),
                percentile(&c.verdict, 95.0),
                c.verdict.last().copied().unwrap_or(f64::NAN),
                percentile(&c.whole, 50.0),
                mean,
                percentile(&c.latency_ms, 50.0),
                c.latency_kind.unwrap_or("-"),
                c.cpu.as_secs_f64() * 1000.0 / n as f64,
                c.version.as_deref().unwrap_or("-"),
                c.not_online,
            );
        }
    }
    // Instance-seconds: how long an EasyTier instance, and so a connection
    // slot on the node, is held per check and per peer-minute.
    let (quick, full) = (mean_whole[0] / 1000.0, mean_whole[1] / 1000.0);
    let checks_per_refresh = VERSION_REFRESH_SECS / INTERVAL_SECS;
    let daemon_mix = (full + (checks_per_refresh - 1.0) * quick) / checks_per_refresh;
    println!();
    println!(
        "instance-seconds per check (check start to end of teardown, mean over the four targets), {INTERVAL_SECS:.0} s interval"
    );
    println!("  design                                   instance-s per check   per peer-hour   always-connected ÷ this");
    for (name, per_check) in [
        ("quick check", quick),
        ("full check", full),
        ("daemon default mix (1 full per hour)", daemon_mix),
        ("always-connected (held the whole interval)", INTERVAL_SECS),
    ] {
        println!(
            "  {name:<42} {:>8.3} s {:>14.1} s {:>14.0}x",
            per_check,
            per_check * 3600.0 / INTERVAL_SECS,
            INTERVAL_SECS / per_check
        );
    }
    println!(
        "  (a udp relay is always checked fully: {full:.3} s per check, always-connected holds {:.0}x that)",
        INTERVAL_SECS / full
    );
}

fn store_and_drain() {
    let dir = support::common::temp_dir("bench-store");
    let db = dir.join("probe.db");
    let conn = store::open_rw(&db).unwrap();
    let handle = store::spawn(
        conn,
        WriterOptions {
            auto_ack: false,
            retention: Duration::from_secs(86_400),
            raw_retention: Duration::from_secs(86_400),
            max_buffered: u64::MAX,
        },
        None,
    )
    .unwrap();
    let sender = handle.sender();
    let template = checker::CheckResult {
        peer_id: 1,
        uri: "tcp://127.0.0.1:11010".into(),
        status: Status::Online,
        latency_us: Some(11_873),
        response_time: Some(12),
        remote_version: Some("2.6.4-81487c36".into()),
        remote_hostname: Some("node-1".into()),
        role: "member",
        error: None,
        error_kind: None,
        attempts: 1,
        check_kind: checker::CheckKind::Full,
        latency_kind: Some("rtt"),
        version_observed: true,
        checked_at: easytier_probe::clock::rfc3339(easytier_probe::clock::now_ms()),
        checked_at_ms: easytier_probe::clock::now_ms(),
        duration_ms: 1040,
    };
    let started = Instant::now();
    for i in 0..STORE_RESULTS {
        let mut r = template.clone();
        r.peer_id = (i % 1000) as i64;
        sender.send(StoreMsg::Result(Box::new(r))).unwrap();
    }
    let (done, flushed) = crossbeam_channel::bounded(1);
    sender.send(StoreMsg::Flush(done)).unwrap();
    flushed.recv().unwrap();
    let insert = started.elapsed();

    let backend = FakeBackend::start(|_| Response::json(200, ok_answer()));
    let client = BackendClient::new(
        &backend.url(),
        Secret::new("bench-token"),
        None,
        None,
        Duration::from_secs(20),
    );
    let started = Instant::now();
    let reporter = reporter::spawn(
        client,
        ReporterOptions {
            db_path: db.clone(),
            interval: Duration::from_secs(30),
            batch_size: 500,
            region: None,
            probe_id: "bench".into(),
            started,
        },
        sender.clone(),
        None,
    )
    .unwrap();
    let ro = store::open_ro(&db).unwrap();
    loop {
        let left: i64 = ro
            .query_row("SELECT count(*) FROM results WHERE acked = 0", [], |r| {
                r.get(0)
            })
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "drain stalled with {left} left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let drain = started.elapsed();
    reporter.shutdown(
        Duration::from_secs(1),
        Instant::now() + Duration::from_secs(30),
    );
    drop(sender);
    handle.shutdown_by(Instant::now() + Duration::from_secs(600));
    println!();
    println!("store and outbox ({STORE_RESULTS} results)");
    println!(
        "  writer insert rate:     {:.0} results/s ({:.2} s)",
        STORE_RESULTS as f64 / insert.as_secs_f64(),
        insert.as_secs_f64()
    );
    println!(
        "  drain to a local backend (batches of 500): {:.2} s ({:.0} results/s, {} requests)",
        drain.as_secs_f64(),
        STORE_RESULTS as f64 / drain.as_secs_f64(),
        backend.requests().len()
    );
}

/// Memory over many refused checks (the cheapest kind), sampled every 100.
fn rss_growth(n: usize) {
    checker::tune_easytier_for_checks();
    let refused =
        peer_from_uri(&format!("tcp://127.0.0.1:{}", support::common::free_port())).unwrap();
    let options = CheckOptions {
        timeout: Duration::from_secs(10),
        probe_network_name: "bench-probe".into(),
        hostname: "bench-probe".into(),
    };
    let me = std::process::id().to_string();
    for i in 0..=n {
        if i % 10 == 0 {
            let s = sample(&me);
            println!(
                "after {i:>5} checks: RSS {:.1} MB, threads {}",
                s.rss_kb as f64 / 1024.0,
                s.threads
            );
        }
        if i < n {
            checker::check(&refused, &options);
        }
    }
}
