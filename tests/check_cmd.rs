//! `easytier-probe check` against real EasyTier nodes on loopback.

mod common;

use std::process::Command;

use common::*;

fn probe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_easytier-probe"))
}

#[test]
fn explore() {
    require_private_netns();
    let node = TargetNode::start("net-a", "secret-a", "node-a");
    for args in [
        vec!["check".to_string(), node.tcp_uri(), "--network-name".into(), "net-a".into(), "--network-secret".into(), "secret-a".into(), "--json".into()],
        vec!["check".to_string(), node.tcp_uri(), "--json".into()],
        vec!["check".to_string(), node.udp_uri(), "--json".into()],
        vec!["check".to_string(), "tcp://127.0.0.1:1".into(), "--json".into()],
        vec!["check".to_string(), "udp://127.0.0.1:1".into(), "--json".into(), "--timeout".into(), "3".into()],
        vec!["check".to_string(), node.tcp_uri(), "--network-name".into(), "net-a".into(), "--network-secret".into(), "wrong".into(), "--json".into(), "--timeout".into(), "4".into()],
        vec!["check".to_string(), "tcp://no-such-host.invalid:11010".into(), "--json".into()],
    ] {
        let out = probe().args(&args).output().unwrap();
        eprintln!("{:?}: {} {}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
}
