//! `make bench-scale`: the probe at 100, 300 and 1,000 peers per minute on this
//! machine, side by side with the always-connected design (one EasyTier
//! instance per peer, polled), all against real EasyTier nodes on loopback.
//!
//! Settings (environment): ETP_SCALE_SIZES (default 100,300,1000),
//! ETP_SCALE_INTERVAL seconds (default 60), ETP_SCALE_CYCLES (default 2),
//! ETP_SCALE_BASELINE_MAX (default 1000: the always-connected baseline is
//! skipped above this many peers; at 5,000 it would need about 6 GB and
//! 22,000 threads), ETP_SCALE_PROBE_ARGS (more daemon arguments, split at
//! spaces, e.g. "--workers 96").

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
    let baseline_max = env_or("ETP_SCALE_BASELINE_MAX", 1000usize);
    let extra_args: Vec<String> = std::env::var("ETP_SCALE_PROBE_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
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
        "scale: {NODES} EasyTier nodes on loopback, peers spread over them (member/relay x tcp/udp), interval {interval} s, {cycles} cycles, {} cores; daemon defaults{}{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if extra_args.is_empty() { "" } else { " plus " },
        extra_args.join(" ")
    );
    let mut rows = Vec::new();
    for &n in &sizes {
        let peers_file = write_peers(&dir, &nodes, n);
        let probe = run_probe(&dir, &peers_file, n, interval, cycles, &extra_args, &nodes);
        print_probe(n, interval, &probe);
        let baseline = if n <= baseline_max {
            let b = run_baseline_process(&peers_file, interval, cycles);
            print_baseline(n, &b);
            b
        } else {
            println!("always-connected baseline, {n} peers: skipped (ETP_SCALE_BASELINE_MAX={baseline_max})");
            BaselineRun::default()
        };
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
        if b.max_threads == 0 {
            println!(
                "{n:>6} | {:>11.1} {:>8} {:>9.2} {:>7.1} | {:^38} |",
                p.peak_rss_mb, p.max_threads, p.mean_cpu, p.cycle_secs, "skipped"
            );
            continue;
        }
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

/// The peer's kind as `write_peers` made it: 0 member/tcp, 1 member/udp,
/// 2 relay/tcp, 3 relay/udp (always checked fully).
fn peer_kind(peer_id: i64) -> usize {
    ((peer_id as usize - 1) / NODES) % 4
}

/// Online verdict times (ms) of one group of checks.
#[derive(Default)]
struct Times(Vec<f64>);

impl Times {
    fn line(&self) -> String {
        let v = sorted(self.0.clone());
        if v.is_empty() {
            return "none".into();
        }
        format!(
            "{} checks, p50 {:.3} s, p95 {:.3} s",
            v.len(),
            percentile(&v, 50.0) / 1000.0,
            percentile(&v, 95.0) / 1000.0
        )
    }
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
    /// Online verdicts: all, after the first cycle, by kind, and after the
    /// first cycle without the udp relays (the peers a quick check applies to).
    online_all: Times,
    online_steady: Times,
    online_quick: Times,
    online_full: Times,
    online_steady_no_udp_relay: Times,
    /// Checks started in each cycle (by time since the first check).
    checks_per_cycle: Vec<usize>,
    peers_per_cycle: Vec<usize>,
    full_per_cycle: Vec<usize>,
    /// Checks in their verdict phase at once (teardown not included): max, mean.
    max_concurrent: usize,
    mean_concurrent: f64,
    /// CPU seconds by thread group, read just before SIGTERM.
    cpu_by_group: Vec<(String, f64)>,
    /// Mean CPU of the four target nodes together over the run (cores).
    nodes_cpu: f64,
    exit: Option<i32>,
    stop_secs: f64,
}

/// CPU seconds of a process's live threads grouped by name, and of the
/// threads that already ended (total minus live).
fn cpu_by_thread_group(pid: &str) -> Vec<(String, f64)> {
    let ticks = |stat: &str| -> (String, u64) {
        let (head, after) = stat.rsplit_once(')').unwrap_or(("", ""));
        let name = head.split_once('(').map_or("", |(_, n)| n).to_string();
        let f: Vec<&str> = after.split_whitespace().collect();
        let t = f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        (name, t)
    };
    let total = ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default()).1;
    let mut groups: Vec<(String, u64)> = Vec::new();
    let mut live = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let tid = entry.file_name().to_string_lossy().to_string();
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (name, t) = ticks(&stat);
        live += t;
        let group = if tid == pid {
            "main loop".to_string()
        } else if name.starts_with("probe-") {
            "workers (probe-N: config, start, teardown)".to_string()
        } else if name.starts_with("tokio") {
            "EasyTier instances still running".to_string()
        } else {
            // http-0, http-1, ... together.
            name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
                .to_string()
        };
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, sum)) => *sum += t,
            None => groups.push((group, t)),
        }
    }
    groups.push((
        "threads already ended (EasyTier instances)".into(),
        total.saturating_sub(live),
    ));
    groups.sort_by_key(|g| std::cmp::Reverse(g.1));
    groups
        .into_iter()
        .map(|(g, t)| (g, t as f64 / 100.0))
        .collect()
}

fn run_probe(
    dir: &Path,
    peers_file: &Path,
    n: usize,
    interval: u64,
    cycles: u32,
    extra_args: &[String],
    nodes: &[NodeProcess],
) -> ProbeRun {
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
        .args(extra_args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let started = Instant::now();
    let run_for = Duration::from_secs(interval * cycles as u64 + 2);
    let mut run = ProbeRun::default();
    let node_pids: Vec<String> = nodes.iter().map(|n| n.child.id().to_string()).collect();
    let node_cpu = || -> f64 { node_pids.iter().map(|p| sample(p).cpu.as_secs_f64()).sum() };
    let nodes_first = node_cpu();
    let first = sample(&pid);
    let mut last = first;
    while started.elapsed() < run_for {
        std::thread::sleep(Duration::from_millis(500));
        last = sample(&pid);
        run.max_threads = run.max_threads.max(last.threads);
        run.peak_rss_mb = run.peak_rss_mb.max(last.peak_rss_kb as f64 / 1024.0);
    }
    run.mean_cpu = (last.cpu - first.cpu).as_secs_f64() / started.elapsed().as_secs_f64();
    run.nodes_cpu = (node_cpu() - nodes_first) / started.elapsed().as_secs_f64();
    run.cpu_by_group = cpu_by_thread_group(&pid);
    let stop = Instant::now();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    run.exit = child.wait().unwrap().code();
    run.stop_secs = stop.elapsed().as_secs_f64();

    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn
        .prepare("SELECT peer_id, checked_at_ms, status, duration_ms, check_kind FROM results ORDER BY checked_at_ms")
        .unwrap();
    let rows: Vec<(i64, i64, String, i64, String)> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let t0 = rows.first().map_or(0, |r| r.1);
    let mut per_peer: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut online = Vec::new();
    let cycle_of = |at: i64| ((at - t0) / (interval as i64 * 1000)) as usize;
    let n_cycles = cycles as usize;
    run.checks_per_cycle = vec![0; n_cycles];
    run.full_per_cycle = vec![0; n_cycles];
    let mut peers_in_cycle: Vec<std::collections::HashSet<i64>> =
        vec![Default::default(); n_cycles];
    let mut edges = Vec::new();
    for (peer, at, status, duration, kind) in &rows {
        per_peer.entry(*peer).or_default().push(*at);
        let c = cycle_of(*at).min(n_cycles - 1);
        run.checks_per_cycle[c] += 1;
        if kind == "full" {
            run.full_per_cycle[c] += 1;
        }
        peers_in_cycle[c].insert(*peer);
        edges.push((*at, 1i64));
        edges.push((*at + *duration, -1));
        if status == "Online" {
            let d = *duration as f64;
            online.push(d);
            run.online_all.0.push(d);
            if kind == "quick" {
                run.online_quick.0.push(d);
            } else {
                run.online_full.0.push(d);
            }
            if cycle_of(*at) >= 1 {
                run.online_steady.0.push(d);
                if peer_kind(*peer) != 3 {
                    run.online_steady_no_udp_relay.0.push(d);
                }
            }
        } else {
            run.offline += 1;
        }
    }
    run.peers_per_cycle = peers_in_cycle.iter().map(|s| s.len()).collect();
    edges.sort();
    let mut now = 0i64;
    for (_, delta) in &edges {
        now += delta;
        run.max_concurrent = run.max_concurrent.max(now as usize);
    }
    let span = rows.last().map_or(1, |r| r.1 + r.3 - t0).max(1);
    run.mean_concurrent = rows.iter().map(|r| r.3).sum::<i64>() as f64 / span as f64;
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

fn print_probe(n: usize, interval: u64, r: &ProbeRun) {
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
    for (c, ((checks, peers), full)) in r
        .checks_per_cycle
        .iter()
        .zip(&r.peers_per_cycle)
        .zip(&r.full_per_cycle)
        .enumerate()
    {
        println!(
            "  cycle {} ({}-{} s after the first check): {checks} checks ({full} full), {peers} of {n} peers",
            c + 1,
            c as u64 * interval,
            (c as u64 + 1) * interval
        );
    }
    println!(
        "  Online verdicts, all:                        {}",
        r.online_all.line()
    );
    println!(
        "  Online verdicts, after the first cycle:      {}",
        r.online_steady.line()
    );
    println!(
        "  Online verdicts, quick:                      {}",
        r.online_quick.line()
    );
    println!(
        "  Online verdicts, full:                       {}",
        r.online_full.line()
    );
    println!(
        "  Online verdicts, after the first cycle, without udp relays (always full): {}",
        r.online_steady_no_udp_relay.line()
    );
    println!(
        "  checks in their verdict phase at once: max {}, mean {:.1}",
        r.max_concurrent, r.mean_concurrent
    );
    println!(
        "  target nodes (4 processes) mean CPU {:.2} cores; probe CPU seconds by thread group:",
        r.nodes_cpu
    );
    for (group, secs) in &r.cpu_by_group {
        println!("    {secs:>8.1} s  {group}");
    }
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
