//! `make bench`: time to verdict, CPU and memory per check, threads after 200 checks,
//! the store writer's insert rate, and the time to drain 100,000 buffered results.

mod support;

use std::time::{Duration, Instant};

use easytier_probe::backend::BackendClient;
use easytier_probe::checker::{self, CheckOptions, Status};
use easytier_probe::config::Secret;
use easytier_probe::peer::{peer_from_uri, Peer};
use easytier_probe::reporter::{self, ReporterOptions};
use easytier_probe::store::{self, StoreMsg, WriterOptions};
use support::common::backend::{ok_answer, FakeBackend, Response};
use support::*;

const CHECKS_PER_KIND: usize = 100;
const STORE_RESULTS: usize = 100_000;

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
    store_and_drain();
}

fn checks() {
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
        for _ in 0..CHECKS_PER_KIND {
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
    let n = (2 * CHECKS_PER_KIND) as f64;

    println!();
    println!("checks against a real EasyTier node on loopback ({CHECKS_PER_KIND} of each, one at a time)");
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
        2 * CHECKS_PER_KIND,
        before.rss_kb as f64 / 1024.0,
        after.rss_kb as f64 / 1024.0,
        after.peak_rss_kb as f64 / 1024.0
    );
    println!(
        "  threads before / after {} checks: {} / {}",
        2 * CHECKS_PER_KIND,
        before.threads,
        after.threads
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
