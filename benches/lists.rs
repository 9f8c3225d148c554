//! `cargo bench --bench lists`: how long the main loop stalls on a hostile peer list (100,000 peers, each with its own network secret).
//!
//! The real daemon in standalone mode reads a peers file of `ETP_LISTS_PEERS`
//! (default 100,000) peers with distinct secrets, then a changed file on
//! SIGHUP (a tenth of the peers moved, a tenth new, a tenth gone). The
//! daemon logs how long each peer set took to apply on the main loop
//! ("applied in N ms"); the check interval is a day, so the checks spread
//! over it do not compete. Runs in the private namespace (the peers point
//! at a loopback port nobody listens on).

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
        .args(["--check-interval", "86400", "--listen", "off"])
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
    let started = Instant::now();
    let first = wait_lines(1);
    let to_first = started.elapsed();
    // A tenth gone, a tenth new, a tenth (every tenth peer) moved.
    std::fs::write(&file, peers(n, port + 2, n / 10)).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    let second = wait_lines(2);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    println!("hostile peer list, {n} peers with distinct network secrets (standalone daemon, release build)");
    println!(
        "  start to the first peer set applied: {:.1} s",
        to_first.as_secs_f64()
    );
    println!(
        "  first list:  {}",
        first[0].split("peer set:").nth(1).unwrap_or("").trim()
    );
    println!(
        "  after SIGHUP: {}",
        second[1].split("peer set:").nth(1).unwrap_or("").trim()
    );
}
