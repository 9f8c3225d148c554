//! A real Prometheus scrapes a running probe: the per-peer up series of every peer, with the right values, through Prometheus' own HTTP API.

mod common;
mod http_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use http_support::*;
use serde_json::Value;

/// The Prometheus server (Debian package `prometheus`), killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Prometheus {
    /// Scrapes `target` every second.
    fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: easytier-probe\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package prometheus; `make deps` installs it)");
        let prometheus = Prometheus { child, addr };
        wait_for("Prometheus to be ready", Duration::from_secs(60), || {
            (try_get(addr, "/-/ready")?.status == 200).then_some(())
        });
        prometheus
    }

    /// The result vector of an instant query.
    fn query(&self, query: &str) -> Vec<Value> {
        let answer: Value = ureq::get(&format!("http://{}/api/v1/query", self.addr))
            .query("query", query)
            .call()
            .expect("Prometheus answers queries")
            .into_json()
            .unwrap();
        assert_eq!(answer["status"], "success", "{answer}");
        answer["data"]["result"].as_array().unwrap().clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of each series by its `peer_id` label.
fn by_peer(result: &[Value]) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = result
        .iter()
        .map(|s| {
            let m = &s["metric"];
            (
                m["peer_id"].as_str().unwrap_or("").to_string(),
                m["name"].as_str().unwrap_or("").to_string(),
                s["value"][1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn prometheus_scrapes_the_up_series_of_every_peer() {
    require_private_netns();
    let node = TargetNode::start("net-prom", "prom-secret-41", "prom-node");
    let refused = free_port();
    let dir = temp_dir("prometheus");
    let peers = write_peers_file(
        &dir,
        &[
            peer_json(
                1,
                "member",
                "127.0.0.1",
                node.tcp_port,
                "tcp",
                "net-prom",
                Some("prom-secret-41"),
            ),
            peer_json(2, "relay", "127.0.0.1", node.udp_port, "udp", "", None),
            peer_json(3, "refused", "127.0.0.1", refused, "tcp", "", None),
        ],
    );
    let args = [
        "--peers-file",
        peers.to_str().unwrap(),
        "--check-interval",
        "2",
        "--check-timeout",
        "5",
    ];
    let mut daemon = Daemon::start(&dir, &args.map(String::from), &[]);
    let probe = listen_addr(&daemon);
    let prometheus = Prometheus::start(&dir, probe);

    let expected = vec![
        ("1".to_string(), "member".to_string(), "1".to_string()),
        ("2".to_string(), "relay".to_string(), "1".to_string()),
        ("3".to_string(), "refused".to_string(), "0".to_string()),
    ];
    let mut seen = Vec::new();
    wait_for(
        "every peer's up series in Prometheus",
        Duration::from_secs(60),
        || {
            seen = by_peer(&prometheus.query("easytier_probe_peer_up"));
            (seen == expected).then_some(())
        },
    );
    let target = prometheus.query("up{job=\"easytier-probe\"}");
    assert_eq!(target.len(), 1, "{target:?}");
    assert_eq!(target[0]["value"][1], "1", "the scrape itself succeeded");
    let roles = prometheus.query("easytier_probe_peer_up{role=\"member\"}");
    assert_eq!(by_peer(&roles), expected[..1], "roles are labels");
    let latency = prometheus.query("easytier_probe_peer_latency_seconds > 0");
    let ids: Vec<String> = by_peer(&latency).into_iter().map(|r| r.0).collect();
    assert_eq!(ids, ["1", "2"], "latency of the Online peers only");
    let errors = prometheus.query("easytier_probe_peer_check_errors_total{kind=\"refused\"}");
    assert_eq!(by_peer(&errors).len(), 1, "{errors:?}");

    // The body Prometheus scrapes passes promtool's checks.
    let body = get(probe, "/metrics").body;
    promtool_check(&body);
    assert!(!body.contains("prom-secret-41"));

    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        daemon.log()
    );
}
