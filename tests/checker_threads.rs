//! Every check tears its EasyTier instance down: no thread outlives a check.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use easytier_probe::checker::{self, CheckOptions, Status};
use easytier_probe::peer::peer_from_uri;

fn thread_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// Not a test of its own: the target node's process when this binary is
/// re-executed by the test below, so that the node's own threads (its
/// runtime grows and shrinks as it serves) do not blur the probe's count.
#[test]
#[ignore = "helper process for thread_count_returns_to_baseline_after_dozens_of_checks"]
fn target_node_process() {
    let Ok(name) = std::env::var("ETP_TARGET_NODE") else {
        return;
    };
    let node = TargetNode::start(&name, "threads-secret", "threads-node");
    println!("\nport {}", node.tcp_port);
    // Serve until the parent closes our stdin.
    let _ = std::io::stdin().read_line(&mut String::new());
}

#[test]
fn thread_count_returns_to_baseline_after_dozens_of_checks() {
    require_private_netns();
    checker::tune_easytier_for_checks();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "target_node_process",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("ETP_TARGET_NODE", "net-threads")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = lines
        .find_map(|l| l.ok()?.strip_prefix("port ")?.trim().parse().ok())
        .expect("the target node process prints its port");
    let online = peer_from_uri(&format!("tcp://127.0.0.1:{port}")).unwrap();
    let refused = peer_from_uri(&format!("tcp://127.0.0.1:{}", free_port())).unwrap();
    let options = CheckOptions {
        timeout: Duration::from_secs(5),
        probe_network_name: "threads-probe".into(),
        hostname: "threads-probe".into(),
    };
    let baseline = thread_names();
    for i in 0..30 {
        let (peer, expected) = if i % 2 == 0 {
            (&online, Status::Online)
        } else {
            (&refused, Status::Offline)
        };
        let result = checker::check(peer, &options);
        assert_eq!(result.status, expected, "check {i}: {result:?}");
    }
    let after = thread_names();
    drop(child.stdin.take());
    let _ = child.wait();
    // Dropping an instance joins its thread and runtime, so nothing lingers.
    assert_eq!(
        after, baseline,
        "threads after 30 checks differ from before"
    );
}
