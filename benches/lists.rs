//! `cargo bench --bench lists`: how long the main loop stalls on a hostile peer list (100,000 peers, each with its own network secret).
//!
//! The real daemon in standalone mode reads a peers file of `ETP_LISTS_PEERS`
//! (default 100,000) peers with distinct secrets, then on SIGHUP a changed
//! file (a tenth of the peers gone, a tenth new, the rest at a new port),
//! then the same file again (an unchanged list). For each list the daemon
//! logs how long it took to apply on the main loop ("applied in N ms"); the
//! `easytier_probe_main_loop_turn_seconds` histogram, scraped after each
//! list, counts every turn of the loop, including the ones a list causes
//! (reading and preparing it happen on the list thread). The check
//! interval is a day, so the checks spread over it do not compete. Runs in
//! the private namespace (the peers point at a loopback port nobody
//! listens on).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::common::{
    free_port, peer_json, probe_path, require_private_netns, temp_dir, PROBE_ENV_VARS,
};

fn peers(n: usize, port: u16, shift: usize) -> String {
    let list: Vec<serde_json::Value> = (shift..n + shift)
        .map(|i| {
            let host_port = if i % 10 == 0 { port + 1 } else { port };
            peer_json(
                i as i64,
                &format!("peer-{i}"),
                "127.0.0.1",
                host_port,
                "tcp",
                &format!("net-{i}"),
                Some(&format!("secret-{i:08}")),
            )
        })
        .collect();
    serde_json::to_string(&list).unwrap()
}

/// The main loop's turns so far: (over 0.05 s, over 0.1 s, all).
fn turns(metrics_port: u16) -> (u64, u64, u64) {
    let body = ureq::get(&format!("http://127.0.0.1:{metrics_port}/metrics"))
        .call()
        .expect("scrape /metrics")
        .into_string()
        .unwrap();
    let bucket = |le: &str| -> u64 {
        let prefix = format!("easytier_probe_main_loop_turn_seconds_bucket{{le=\"{le}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no turn bucket {le} in /metrics"))
    };
    let all = bucket("+Inf");
    (all - bucket("0.05"), all - bucket("0.1"), all)
}

fn applied_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("peer set:"))
        .map(str::to_string)
        .collect()
}

fn main() {
    require_private_netns();
    let n: usize = std::env::var("ETP_LISTS_PEERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = temp_dir("bench-lists");
    let port = free_port();
    let metrics_port = free_port();
    let file = dir.join("peers.json");
    std::fs::write(&file, peers(n, port, 0)).unwrap();
    let log_path = dir.join("daemon.log");
    let mut cmd = Command::new(probe_path());
    for var in PROBE_ENV_VARS {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .arg("--db")
        .arg(dir.join("probe.db"))
        .arg("--peers-file")
        .arg(&file)
        .args(["--check-interval", "86400", "--listen"])
        .arg(format!("127.0.0.1:{metrics_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let wait_lines = |count: usize| {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let lines = applied_lines(&std::fs::read_to_string(&log_path).unwrap_or_default());
            if lines.len() >= count {
                return lines;
            }
            assert!(Instant::now() < deadline, "no peer set line after 300 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let hup = || {
        let _ = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status();
    };
    let started = Instant::now();
    let first = wait_lines(1);
    let to_first = started.elapsed();
    let after_first = turns(metrics_port);
    // A tenth gone, a tenth new, the rest moved to another port.
    std::fs::write(&file, peers(n, port + 2, n / 10)).unwrap();
    hup();
    let second = wait_lines(2);
    let after_second = turns(metrics_port);
    // The same file again: an unchanged list (logged at debug level, so
    // its line is not waited for; the turn counts show it).
    hup();
    std::thread::sleep(Duration::from_secs(5));
    let after_third = turns(metrics_port);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let slow: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the main loop was busy"))
        .collect();
    println!("hostile peer list, {n} peers with distinct network secrets (standalone daemon, release build)");
    println!(
        "  start to the first peer set applied: {:.1} s",
        to_first.as_secs_f64()
    );
    println!(
        "  first list:   {}",
        first[0].split("peer set:").nth(1).unwrap_or("").trim()
    );
    println!(
        "  after SIGHUP: {}",
        second[1].split("peer set:").nth(1).unwrap_or("").trim()
    );
    for (what, (over_50, over_100, all)) in [
        ("start and first list", after_first),
        ("through the changed list", after_second),
        ("through the unchanged list", after_third),
    ] {
        println!(
            "  main loop turns, {what}: {all} in all, {over_50} over 50 ms, {over_100} over 100 ms"
        );
    }
    println!("  slow-turn warnings in the log: {}", slow.len());
    for line in slow {
        println!("    {line}");
    }
}
