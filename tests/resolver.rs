//! Name resolution in checks, against a fake DNS server on loopback: a name
//! that does not exist is a verdict at once, a resolver that fails for a
//! moment is retried within the timeout.

mod common;

use std::sync::atomic::Ordering;

use common::dns::{with_fake_resolver, Answer, FakeDns};
use common::*;
use serde_json::Value;

/// Runs `easytier-probe check --json` with the fake resolver.
fn check(name: &str, args: &[&str]) -> (Option<i32>, Value) {
    let dir = temp_dir(name);
    let out = with_fake_resolver(&dir, probe_path())
        .args(["check", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        !out.stdout.is_empty(),
        "no result: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = serde_json::from_slice(&out.stdout).unwrap();
    (out.status.code(), json)
}

// One test function: the fake server owns 127.0.0.1:53 of this test
// binary's namespace, and the three cases need three answers in turn.
#[test]
fn lookups_decide_fast_only_when_the_name_does_not_exist() {
    require_private_netns();
    let policy = std::sync::Arc::new(std::sync::Mutex::new(Answer::NxDomain));
    let current = policy.clone();
    let dns = FakeDns::start(move |_| *current.lock().unwrap());

    // NXDOMAIN: the name does not exist; no point waiting for the timeout.
    let (code, r) = check(
        "dns-nxdomain",
        &["tcp://ghost.test:11010", "--timeout", "10"],
    );
    assert_eq!(code, Some(1), "{r}");
    let error = r["error"].as_str().unwrap();
    assert!(error.starts_with("name not resolved: ghost.test"), "{r}");
    assert_eq!(r["error_kind"], "dns", "{r}");
    assert!(r["duration_ms"].as_u64().unwrap() < 5_000, "{r}");
    assert!(
        dns.queries.load(Ordering::SeqCst) > 0,
        "the fake server was asked"
    );

    // SERVFAIL for a while, then the address: a resolver hiccup must not
    // make an Online peer Offline.
    let relay = TargetNode::start("net-dns", "dns-secret", "dns-relay");
    let failures_until = dns.queries.load(Ordering::SeqCst) + 4;
    let switch = policy.clone();
    *switch.lock().unwrap() = Answer::ServFail;
    let flip = {
        let queries = dns.queries.clone();
        std::thread::spawn(move || {
            wait_for(
                "four failed lookups",
                std::time::Duration::from_secs(20),
                || (queries.load(Ordering::SeqCst) >= failures_until).then_some(()),
            );
            *switch.lock().unwrap() = Answer::A([127, 0, 0, 1]);
        })
    };
    let uri = format!("tcp://relay.test:{}", relay.tcp_port);
    let (code, r) = check("dns-servfail-then-ok", &[&uri, "--timeout", "15"]);
    flip.join().unwrap();
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["status"], "Online");
    assert!(
        r["remote_hostname"]
            .as_str()
            .unwrap()
            .ends_with("dns-relay"),
        "{r}"
    );

    // A fully qualified name, with its trailing dot, as zone files write it.
    let uri = format!("tcp://relay.test.:{}", relay.tcp_port);
    let (code, r) = check("dns-fqdn", &[&uri, "--timeout", "10"]);
    assert_eq!(
        (code, &r["status"]),
        (Some(0), &Value::from("Online")),
        "{r}"
    );

    // A resolver that never recovers: Offline at the timeout, saying so.
    *policy.lock().unwrap() = Answer::ServFail;
    let (code, r) = check(
        "dns-servfail",
        &["tcp://relay.test:11010", "--timeout", "2"],
    );
    assert_eq!(code, Some(1), "{r}");
    let error = r["error"].as_str().unwrap();
    assert!(
        error.starts_with("name not resolved: relay.test (the resolver kept failing"),
        "{r}"
    );
    assert!(r["duration_ms"].as_u64().unwrap() >= 2_000, "{r}");
}
