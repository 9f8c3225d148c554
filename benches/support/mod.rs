//! Benchmark support: target nodes in child processes, /proc sampling, percentiles.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[path = "../../tests/common/mod.rs"]
pub mod common;

/// Environment variable that turns the benchmark binary into a target node.
const NODE_ENV: &str = "ETP_BENCH_NODE";

/// Call first in `main`: when this process was started as a target node,
/// serve until stdin closes and return true.
pub fn serve_node_if_asked() -> bool {
    let Ok(spec) = std::env::var(NODE_ENV) else {
        return false;
    };
    let mut parts = spec.splitn(3, ':');
    let (network, secret, hostname) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let node = common::TargetNode::start(network, secret, hostname);
    println!("ports {} {}", node.tcp_port, node.udp_port);
    let _ = std::io::stdin().read_line(&mut String::new());
    true
}

/// An EasyTier node in a child process, so that its CPU, memory and threads
/// are not counted as the probe's.
pub struct NodeProcess {
    pub child: Child,
    pub tcp_port: u16,
    pub udp_port: u16,
    pub network: String,
    pub secret: String,
}

impl NodeProcess {
    pub fn spawn(network: &str, secret: &str, hostname: &str) -> NodeProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(NODE_ENV, format!("{network}:{secret}:{hostname}"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().expect("node process output").unwrap();
        let mut ports = line
            .strip_prefix("ports ")
            .unwrap()
            .split(' ')
            .map(|p| p.parse::<u16>().unwrap());
        NodeProcess {
            child,
            tcp_port: ports.next().unwrap(),
            udp_port: ports.next().unwrap(),
            network: network.into(),
            secret: secret.into(),
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A process's counters from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User + system CPU time.
    pub cpu: Duration,
    pub rss_kb: u64,
    pub peak_rss_kb: u64,
    pub threads: u64,
}

pub fn sample(pid: &str) -> ProcSample {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    ProcSample {
        // USER_HZ is 100 on Linux.
        cpu: Duration::from_millis(ticks * 10),
        rss_kb: field("VmRSS:"),
        peak_rss_kb: field("VmHWM:"),
        threads: field("Threads:"),
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}
