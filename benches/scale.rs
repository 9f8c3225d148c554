//! `make bench-scale`: the probe at 100, 300 and 1,000 peers per minute on this
//! machine, side by side with the always-connected design (one EasyTier
//! instance per peer, polled), all against real EasyTier nodes on loopback.
//!
//! Settings (environment): ETP_SCALE_SIZES (default 100,300,1000),
//! ETP_SCALE_INTERVAL seconds (default 60), ETP_SCALE_CYCLES (default 2).

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use easytier::common::config::{ConfigLoader, NetworkIdentity, PeerConfig, TomlConfigLoader};
use easytier::launcher::NetworkInstance;
use support::*;

const NODES: usize = 4;
const CHECK_TIMEOUT_SECS: u64 = 10;
const BASELINE_ENV: &str = "ETP_BENCH_BASELINE";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // As the daemon's main does: no backtrace capture in EasyTier's errors.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    if serve_node_if_asked() {
        return;
    }
    if let Ok(spec) = std::env::var(BASELINE_ENV) {
        run_baseline(&spec);
        return;
    }
    support::common::require_private_netns();
    let sizes: Vec<usize> = std::env::var("ETP_SCALE_SIZES")
        .unwrap_or_else(|_| "100,300,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let interval = env_or("ETP_SCALE_INTERVAL", 60u64);
    let cycles = env_or("ETP_SCALE_CYCLES", 2u32);
    let nodes: Vec<NodeProcess> = (0..NODES)
        .map(|i| {
            NodeProcess::spawn(
                &format!("scale-net-{i}"),
                &format!("scale-secret-{i}"),
                &format!("scale-node-{i}"),
            )
        })
        .collect();
    let dir = support::common::temp_dir("bench-scale");
    println!(
        "scale: {NODES} EasyTier nodes on loopback, peers spread over them (member/relay x tcp/udp), interval {interval} s, {cycles} cycles, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rows = Vec::new();
    for &n in &sizes {
        let peers_file = write_peers(&dir, &nodes, n);
        let probe = run_probe(&dir, &peers_file, n, interval, cycles);
        print_probe(n, &probe);
        let baseline = run_baseline_process(&peers_file, interval, cycles);
        print_baseline(n, &baseline);
        rows.push((n, probe, baseline));
    }
    println!();
    println!("side by side                 |        easytier-probe (check per peer)         |  always-connected (instance per peer)  | ratios (baseline / probe)");
    println!("peers  | peak RSS MB  threads  mean CPU  cycle s | peak RSS MB  threads  mean CPU  poll s | RSS    threads  CPU");
    for (n, p, b) in &rows {
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.1}x", a / b)
            } else {
                "-".into()
            }
        };
        println!(
            "{n:>6} | {:>11.1} {:>8} {:>9.2} {:>7.1} | {:>11.1} {:>8} {:>9.2} {:>6.1} | {:<6} {:<7} {}",
            p.peak_rss_mb,
            p.max_threads,
            p.mean_cpu,
            p.cycle_secs,
            b.peak_rss_mb,
            b.max_threads,
            b.mean_cpu,
            b.poll_secs,
            ratio(b.peak_rss_mb, p.peak_rss_mb),
            ratio(b.max_threads as f64, p.max_threads as f64),
            ratio(b.mean_cpu, p.mean_cpu),
        );
    }
}

/// Entry i: node i % 4; kinds rotate member-tcp, member-udp, relay-tcp, relay-udp.
fn write_peers(dir: &Path, nodes: &[NodeProcess], n: usize) -> PathBuf {
    let peers: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let node = &nodes[i % nodes.len()];
            let kind = (i / nodes.len()) % 4;
            let (port, protocol) = if kind % 2 == 0 {
                (node.tcp_port, "tcp")
            } else {
                (node.udp_port, "udp")
            };
            let secret = (kind < 2).then_some(node.secret.as_str());
            let network = if kind < 2 { node.network.as_str() } else { "" };
            support::common::peer_json(
                i as i64 + 1,
                &format!("peer-{i}"),
                "127.0.0.1",
                port,
                protocol,
                network,
                secret,
            )
        })
        .collect();
    let path = dir.join(format!("peers-{n}.json"));
    std::fs::write(&path, serde_json::to_string(&peers).unwrap()).unwrap();
    path
}

#[derive(Default)]
struct ProbeRun {
    peak_rss_mb: f64,
    max_threads: u64,
    mean_cpu: f64,
    /// Seconds from the start until every peer had been checked once.
    cycle_secs: f64,
    checks: usize,
    offline: usize,
    peers_every_cycle: usize,
    max_gap_secs: f64,
    online_p50: f64,
    online_p95: f64,
    exit: Option<i32>,
    stop_secs: f64,
}

fn run_probe(dir: &Path, peers_file: &Path, n: usize, interval: u64, cycles: u32) -> ProbeRun {
    let db = dir.join(format!("probe-{n}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let log = std::fs::File::create(dir.join(format!("probe-{n}.log"))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_easytier-probe"))
        .arg("--peers-file")
        .arg(peers_file)
        .args([
            "--check-interval",
            &interval.to_string(),
            "--check-timeout",
            &CHECK_TIMEOUT_SECS.to_string(),
        ])
        .arg("--db")
        .arg(&db)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let started = Instant::now();
    let run_for = Duration::from_secs(interval * cycles as u64 + 2);
    let mut run = ProbeRun::default();
    let first = sample(&pid);
    let mut last = first;
    while started.elapsed() < run_for {
        std::thread::sleep(Duration::from_millis(500));
        last = sample(&pid);
        run.max_threads = run.max_threads.max(last.threads);
        run.peak_rss_mb = run.peak_rss_mb.max(last.peak_rss_kb as f64 / 1024.0);
    }
    run.mean_cpu = (last.cpu - first.cpu).as_secs_f64() / started.elapsed().as_secs_f64();
    let stop = Instant::now();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    run.exit = child.wait().unwrap().code();
    run.stop_secs = stop.elapsed().as_secs_f64();

    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn.prepare("SELECT peer_id, checked_at_ms, status, duration_ms FROM results ORDER BY checked_at_ms").unwrap();
    let rows: Vec<(i64, i64, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let t0 = rows.first().map_or(0, |r| r.1);
    let mut per_peer: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut online = Vec::new();
    for (peer, at, status, duration) in &rows {
        per_peer.entry(*peer).or_default().push(*at);
        if status == "Online" {
            online.push(*duration as f64);
        } else {
            run.offline += 1;
        }
    }
    run.checks = rows.len();
    run.cycle_secs = per_peer.values().map(|v| v[0] - t0).max().unwrap_or(0) as f64 / 1000.0;
    run.peers_every_cycle = per_peer
        .values()
        .filter(|v| v.len() >= cycles as usize)
        .count();
    run.max_gap_secs = per_peer
        .values()
        .flat_map(|v| v.windows(2).map(|w| w[1] - w[0]))
        .max()
        .unwrap_or(0) as f64
        / 1000.0;
    let online = sorted(online);
    run.online_p50 = percentile(&online, 50.0) / 1000.0;
    run.online_p95 = percentile(&online, 95.0) / 1000.0;
    run
}

fn print_probe(n: usize, r: &ProbeRun) {
    println!();
    println!("easytier-probe, {n} peers:");
    println!(
        "  {} checks, {} Offline; {} of {n} peers checked in every cycle; longest gap between two checks of a peer {:.1} s",
        r.checks, r.offline, r.peers_every_cycle, r.max_gap_secs
    );
    println!(
        "  every peer checked once within {:.1} s of the start (checks spread over the interval)",
        r.cycle_secs
    );
    println!(
        "  Online verdict p50 {:.2} s, p95 {:.2} s",
        r.online_p50, r.online_p95
    );
    println!(
        "  peak RSS {:.1} MB, max threads {}, mean CPU {:.2} cores; SIGTERM -> exit {:?} in {:.1} s",
        r.peak_rss_mb, r.max_threads, r.mean_cpu, r.exit, r.stop_secs
    );
}

#[derive(Default)]
struct BaselineRun {
    peak_rss_mb: f64,
    max_threads: u64,
    mean_cpu: f64,
    /// Time to start every instance.
    start_secs: f64,
    /// Time of one polling round over all instances.
    poll_secs: f64,
    online: usize,
    survived: bool,
}

/// Runs the always-connected design in a child process and samples it.
fn run_baseline_process(peers_file: &Path, interval: u64, cycles: u32) -> BaselineRun {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(
            BASELINE_ENV,
            format!("{}:{interval}:{cycles}", peers_file.display()),
        )
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let (tx, rx) = crossbeam_channel::unbounded();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut run = BaselineRun::default();
    let mut first: Option<(Instant, ProcSample)> = None;
    let mut last = ProcSample::default();
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                if let Some(v) = line.strip_prefix("started ") {
                    run.start_secs = v.parse().unwrap_or(0.0);
                    // Steady state starts once every instance runs.
                    first = Some((Instant::now(), sample(&pid)));
                } else if let Some(v) = line.strip_prefix("round ") {
                    let mut it = v.split_whitespace();
                    run.online = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    run.poll_secs = it.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
                } else if line == "done" {
                    run.survived = true;
                    break;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
        let s = sample(&pid);
        if s.threads > 0 {
            last = s;
            run.max_threads = run.max_threads.max(s.threads);
            run.peak_rss_mb = run.peak_rss_mb.max(s.peak_rss_kb as f64 / 1024.0);
        }
    }
    if let Some((t, s)) = first {
        run.mean_cpu = (last.cpu.saturating_sub(s.cpu)).as_secs_f64() / t.elapsed().as_secs_f64();
    }
    let _ = child.kill();
    let _ = child.wait();
    run
}

fn print_baseline(n: usize, r: &BaselineRun) {
    println!("always-connected baseline, {n} peers:");
    if !r.survived {
        println!("  did not survive (ran out of a resource); figures up to the failure");
    }
    println!(
        "  start of all instances {:.1} s; last poll round {:.2} s, {} of {n} Online",
        r.start_secs, r.poll_secs, r.online
    );
    println!(
        "  peak RSS {:.1} MB, max threads {}, mean CPU {:.2} cores (steady state)",
        r.peak_rss_mb, r.max_threads, r.mean_cpu
    );
}

/// The baseline itself: one EasyTier instance per peer, kept connected, and
/// every interval a round that reads each instance's state.
fn run_baseline(spec: &str) {
    let mut parts = spec.rsplitn(3, ':');
    let cycles: u32 = parts.next().unwrap().parse().unwrap();
    let interval: u64 = parts.next().unwrap().parse().unwrap();
    let peers_file = parts.next().unwrap();
    let peers = easytier_probe::daemon::read_peers_file(Path::new(peers_file)).unwrap();
    let started = Instant::now();
    let mut instances = Vec::with_capacity(peers.len());
    for peer in &peers {
        let config = TomlConfigLoader::default();
        config.set_inst_name(format!("baseline-{}", peer.id));
        config.set_hostname(Some("baseline".into()));
        config.set_network_identity(match &peer.network_secret {
            Some(s) => NetworkIdentity::new(peer.network_name.clone(), s.clone()),
            None => NetworkIdentity::new("baseline-guest".into(), String::new()),
        });
        config.set_peers(vec![PeerConfig {
            uri: peer.uri().parse().unwrap(),
        }]);
        config.set_listeners(Vec::new());
        config.set_dhcp(false);
        let mut flags = config.get_flags();
        flags.disable_p2p = true;
        flags.disable_udp_hole_punching = true;
        config.set_flags(flags);
        let mut instance = NetworkInstance::new(config);
        instance.start().unwrap();
        instances.push(instance);
    }
    println!("started {:.2}", started.elapsed().as_secs_f64());
    for round in 0..cycles {
        if round > 0 {
            std::thread::sleep(Duration::from_secs(interval));
        } else {
            std::thread::sleep(Duration::from_secs(5));
        }
        let t = Instant::now();
        let online = instances
            .iter()
            .filter(|i| {
                i.get_running_info().is_some_and(|info| {
                    info.peer_route_pairs
                        .iter()
                        .any(|p| p.peer.as_ref().is_some_and(|p| !p.conns.is_empty()))
                })
            })
            .count();
        println!("round {online} {:.3}", t.elapsed().as_secs_f64());
    }
    println!("done");
    // Dropping a thousand instances takes over a minute; the process ends here.
    std::process::exit(0);
}
