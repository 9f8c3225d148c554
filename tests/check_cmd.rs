//! `easytier-probe check` against real EasyTier nodes on loopback (private network namespace).

mod common;

use std::process::Output;

use common::*;
use serde_json::Value;

fn check(args: &[&str]) -> (Option<i32>, Value, Output) {
    let mut full = vec!["check", "--json"];
    full.extend_from_slice(args);
    let out = probe_bin().args(&full).output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), json, out)
}

#[test]
fn member_check_is_online_with_version_latency_and_host() {
    require_private_netns();
    let node = TargetNode::start("net-member", "s3cret-member", "member-node");
    let (code, r, out) = check(&[
        &node.tcp_uri(),
        "--network-name",
        "net-member",
        "--network-secret",
        "s3cret-member",
    ]);
    assert_eq!(
        code,
        Some(0),
        "{r} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["status"], "Online");
    assert_eq!(r["role"], "member");
    assert_eq!(r["remote_hostname"], "member-node");
    assert_eq!(r["remote_version"].as_str().unwrap(), easytier::VERSION);
    assert!(r["latency_us"].as_u64().unwrap() > 0, "{r}");
    assert!(r["response_time"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["error"].is_null());
    assert!(r["checked_at"].as_str().unwrap().ends_with('Z'));
    // The secret never appears in anything the probe prints.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret-member"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret-member"));
}

#[test]
fn relay_check_is_online_as_public_server() {
    require_private_netns();
    let node = TargetNode::start("net-relay", "relay-secret", "relay-node");
    let (code, r, _) = check(&[&node.tcp_uri()]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["status"], "Online");
    assert_eq!(r["role"], "public_server");
    assert_eq!(r["remote_hostname"], "PublicServer_relay-node");
}

#[test]
fn udp_peer_is_online() {
    require_private_netns();
    let node = TargetNode::start("net-udp", "udp-secret", "udp-node");
    let (code, r, _) = check(&[
        &node.udp_uri(),
        "--network-name",
        "net-udp",
        "--network-secret",
        "udp-secret",
    ]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["role"], "member");
    assert!(r["uri"].as_str().unwrap().starts_with("udp://"));
}

#[test]
fn refused_port_is_offline_long_before_the_timeout() {
    require_private_netns();
    let port = free_port(); // nothing listens there
    let uri = format!("tcp://127.0.0.1:{port}");
    let (code, r, _) = check(&[&uri, "--timeout", "30"]);
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(r["status"], "Offline");
    assert_eq!(r["error"], "connection refused");
    assert_eq!(r["error_kind"], "refused", "{r}");
    // Fail fast: decided by the refusal, not by the 30 s timeout.
    assert!(r["duration_ms"].as_u64().unwrap() < 10_000, "{r}");
    assert!(r["latency_us"].is_null() && r["response_time"].is_null());
}

#[test]
fn wrong_secret_is_offline_as_rejected() {
    require_private_netns();
    let node = TargetNode::start("net-secret", "right-secret", "secret-node");
    let dir = temp_dir("wrong-secret");
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, "wrong-secret\n").unwrap();
    let (code, r, out) = check(&[
        &node.tcp_uri(),
        "--network-name",
        "net-secret",
        "--network-secret-file",
        secret_file.to_str().unwrap(),
        "--timeout",
        "5",
    ]);
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(r["status"], "Offline");
    assert!(r["error"].as_str().unwrap().contains("rejected"), "{r}");
    assert_eq!(r["error_kind"], "rejected", "{r}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("wrong-secret"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("wrong-secret"));
}

#[test]
fn silent_peer_is_offline_at_the_timeout() {
    require_private_netns();
    let silent = SilentPeer::start();
    let (code, r, _) = check(&[&silent.uri, "--timeout", "2"]);
    assert_eq!(code, Some(1), "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("timed out after 2.0s"),
        "{r}"
    );
    assert_eq!(r["error_kind"], "timeout", "{r}");
    assert!(r["duration_ms"].as_u64().unwrap() >= 2000, "{r}");
}

#[test]
fn text_output_is_one_line() {
    require_private_netns();
    let port = free_port();
    let out = probe_bin()
        .args(["check", &format!("tcp://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("Offline") && text.contains("connection refused"),
        "{text}"
    );
}

#[test]
fn usage_errors_exit_2_and_name_the_problem() {
    for (args, needle) in [
        (vec!["check", "tcp://host"], "port"),
        (vec!["check", "smtp://host:25"], "unknown protocol"),
        (vec!["check", "tcp://host:99999"], "port"),
        (
            vec!["check", "tcp://host:1", "--timeout", "soon"],
            "--timeout",
        ),
        (vec!["check", "quic://host:1"], "--allow-quic"),
        (
            vec!["check", "tcp://host:1", "--network-secret", "x"],
            "--network-name",
        ),
        (
            vec![
                "check",
                "tcp://host:1",
                "--network-name",
                "n",
                "--network-secret-file",
                "/nonexistent",
            ],
            "--network-secret-file",
        ),
        (vec!["check", "tcp://host:1", "--bogus"], "--bogus"),
    ] {
        let out = probe_bin().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
