//! The HTTP listener over real HTTP against a running daemon: /metrics, /health, bad requests and limits, `status --check`, systemd's STATUS=, and no secret in any answer.

mod common;
mod http_support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use common::*;
use http_support::*;
use serde_json::json;

const SECRET: &str = "http-secret-77";

/// A member peer (with a secret) and a relay peer on a real node, and a
/// port where nothing listens.
fn peers_file(dir: &Path, node: &TargetNode, refused: u16) -> String {
    let path = write_peers_file(
        dir,
        &[
            peer_json(
                1,
                "member",
                "127.0.0.1",
                node.tcp_port,
                "tcp",
                "net-http",
                Some(SECRET),
            ),
            peer_json(2, "relay", "127.0.0.1", node.udp_port, "udp", "", None),
            peer_json(3, "refused", "127.0.0.1", refused, "tcp", "", None),
        ],
    );
    path.to_str().unwrap().to_string()
}

fn daemon_with(dir: &Path, peers_file: &str, envs: &[(&str, String)]) -> Daemon {
    let args = [
        "--peers-file",
        peers_file,
        "--check-interval",
        "2",
        "--check-timeout",
        "5",
    ];
    Daemon::start(dir, &args.map(String::from), envs)
}

/// A daemon watching one peer where nothing listens: a fast Offline per
/// second. The directory goes when the returned one is dropped.
fn refused_daemon(name: &str) -> (TempDir, Daemon, SocketAddr) {
    let dir = temp_dir(name);
    let args = [
        "--peer".to_string(),
        format!("tcp://127.0.0.1:{}?name=refused&id=9", free_port()),
        "--check-interval".into(),
        "1".into(),
    ];
    let daemon = Daemon::start(&dir, &args, &[]);
    let addr = listen_addr(&daemon);
    (dir, daemon, addr)
}

fn stop(mut daemon: Daemon) {
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        daemon.log()
    );
}

#[test]
fn metrics_and_health_describe_every_peer() {
    require_private_netns();
    let node = TargetNode::start("net-http", SECRET, "http-node");
    let dir = temp_dir("http-metrics");
    let file = peers_file(&dir, &node, free_port());
    let daemon = daemon_with(&dir, &file, &[]);
    let addr = listen_addr(&daemon);
    let up = |body: &str, id: i64| {
        sample(
            body,
            "easytier_probe_peer_up",
            &[&format!("peer_id=\"{id}\"")],
        )
    };
    let metrics = wait_for("a verdict on every peer", Duration::from_secs(40), || {
        let a = get(addr, "/metrics");
        [1, 2, 3]
            .iter()
            .all(|id| up(&a.body, *id).is_some())
            .then_some(a)
    });
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let body = &metrics.body;
    assert_eq!(up(body, 1), Some(1.0), "{body}");
    assert_eq!(up(body, 2), Some(1.0), "{body}");
    assert_eq!(up(body, 3), Some(0.0), "{body}");
    let member = ["peer_id=\"1\"", "name=\"member\"", "role=\"member\""];
    assert!(sample(body, "easytier_probe_peer_latency_seconds", &member).unwrap() > 0.0);
    assert!(sample(
        body,
        "easytier_probe_peer_up",
        &["peer_id=\"2\"", "role=\"public_server\""]
    )
    .is_some());
    let refused = ["peer_id=\"3\"", "kind=\"refused\""];
    assert!(sample(body, "easytier_probe_peer_check_errors_total", &refused).unwrap() >= 1.0);
    let offline = ["peer_id=\"3\"", "result=\"offline\""];
    assert!(sample(body, "easytier_probe_peer_checks_total", &offline).unwrap() >= 1.0);
    assert!(sample(body, "easytier_probe_check_duration_seconds_count", &[]).unwrap() >= 3.0);
    // Each turn of the main loop is timed (the checks' results were turns).
    assert!(sample(body, "easytier_probe_main_loop_turn_seconds_count", &[]).unwrap() >= 3.0);
    assert_eq!(sample(body, "easytier_probe_workers", &[]), Some(32.0));
    assert_eq!(sample(body, "easytier_probe_healthy", &[]), Some(1.0));
    let build = [&*format!("easytier_version=\"{}\"", easytier::VERSION)];
    assert_eq!(sample(body, "easytier_probe_build_info", &build), Some(1.0));
    promtool_check(body);

    // The main loop publishes its counts once a second.
    let health = wait_for(
        "/health counting the Offline peer",
        Duration::from_secs(10),
        || {
            let a = get(addr, "/health");
            (a.json()["offline"] == 1).then_some(a)
        },
    );
    assert_eq!(health.status, 200, "{}", health.body);
    let h = health.json();
    assert_eq!(
        (h["status"].as_str(), h["mode"].as_str()),
        (Some("ok"), Some("standalone"))
    );
    assert_eq!(h["peers"], 3, "{h}");

    let head = request(addr, "HEAD", "/metrics");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body: {}", head.body);
    assert!(
        head.header("Content-Length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 1000
    );

    for answer in [&metrics, &health, &get(addr, "/nope")] {
        assert!(!answer.body.contains(SECRET), "secret in {}", answer.body);
    }
    stop(daemon);
}

#[test]
fn bad_requests_get_their_status_and_the_daemon_lives_on() {
    require_private_netns();
    let (_dir, daemon, addr) = refused_daemon("http-bad");
    assert_eq!(get(addr, "/nope").status, 404);
    assert_eq!(get(addr, "/metrics/").status, 404);
    let post = request(addr, "POST", "/metrics");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("Allow"), Some("GET, HEAD"));
    // A declared body far larger than memory: answered, never read.
    let huge = exchange(
        addr,
        b"PUT /health HTTP/1.1\r\nHost: probe\r\nContent-Length: 100000000000000\r\n\r\nsome",
    );
    assert_eq!(huge.status, 405);
    let big_head = format!(
        "GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "y".repeat(9000)
    );
    assert_eq!(exchange(addr, big_head.as_bytes()).status, 431);
    assert_eq!(exchange(addr, b"HELLO\r\n\r\n").status, 400);
    // A client that says nothing gets 408 when the head's time is up.
    let started = std::time::Instant::now();
    assert_eq!(exchange(addr, b"GET /health HT").status, 408);
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Connections beyond those served and queued are turned away at once.
    let idle: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let busy = wait_for("a busy answer", Duration::from_secs(10), || {
        let a = get(addr, "/health");
        (a.status == 503).then_some(a)
    });
    assert!(busy.body.contains("busy"), "{}", busy.body);
    drop(idle);
    wait_for("served again", Duration::from_secs(10), || {
        (get(addr, "/health").status == 200).then_some(())
    });
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
    stop(daemon);
}

#[test]
fn health_is_503_while_the_database_refuses_writes() {
    require_private_netns();
    let (_dir, daemon, addr) = refused_daemon("http-refusing");
    wait_for("healthy", Duration::from_secs(20), || {
        (get(addr, "/health").status == 200).then_some(())
    });
    // Another connection holds the write lock past the writer's busy timeout.
    let side = rusqlite::Connection::open(&daemon.db).unwrap();
    side.busy_timeout(Duration::from_secs(10)).unwrap();
    side.execute_batch("BEGIN IMMEDIATE").unwrap();
    let sick = wait_for("503 from /health", Duration::from_secs(30), || {
        let a = get(addr, "/health");
        (a.status == 503).then_some(a)
    });
    let problems = sick.json()["problems"].to_string();
    assert!(
        problems.contains("the database refuses writes"),
        "{problems}"
    );
    // Reads go on: /metrics answers, and says the probe is unhealthy.
    let metrics = get(addr, "/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(
        sample(&metrics.body, "easytier_probe_healthy", &[]),
        Some(0.0)
    );
    side.execute_batch("ROLLBACK").unwrap();
    wait_for("healthy again", Duration::from_secs(30), || {
        (get(addr, "/health").status == 200).then_some(())
    });
    stop(daemon);
}

#[test]
fn a_listen_address_in_use_is_exit_2_naming_the_flag() {
    require_private_netns();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = temp_dir("http-in-use");
    let args = [
        "--peer".to_string(),
        format!("tcp://127.0.0.1:{}", free_port()),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
    ];
    let mut daemon = Daemon::start(&dir, &args, &[]);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(2));
    let log = daemon.log();
    assert!(
        log.contains("--listen") && log.contains(&port.to_string()),
        "{log}"
    );
    assert!(!dir.join("probe.db").exists(), "nothing started");
    // Off: no listener, and no line saying there is one.
    let args = [
        "--peer".to_string(),
        format!("tcp://127.0.0.1:{}", free_port()),
        "--listen".into(),
        "off".into(),
    ];
    let daemon = Daemon::start(&dir, &args, &[]);
    wait_for("the start line", Duration::from_secs(20), || {
        daemon
            .log()
            .contains("started in standalone mode")
            .then_some(())
    });
    assert!(!daemon.log().contains("listening on"), "{}", daemon.log());
    stop(daemon);
}

#[test]
fn status_check_and_systemd_say_how_the_probe_is() {
    require_private_netns();
    let node = TargetNode::start("net-http", SECRET, "status-node");
    let dir = temp_dir("http-status");
    let file = peers_file(&dir, &node, free_port());
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let envs = [("NOTIFY_SOCKET", notify_path.to_str().unwrap().to_string())];
    let daemon = daemon_with(&dir, &file, &envs);
    let db = daemon.db.clone();
    let status = |check: bool| {
        let mut cmd = probe_bin();
        cmd.args(["status", "--db"]).arg(&db);
        if check {
            cmd.arg("--check");
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The summary every 10 s tells systemd.
    let line = wait_for(
        "STATUS= with every peer checked",
        Duration::from_secs(60),
        || {
            let mut buf = [0u8; 512];
            let len = notify.recv(&mut buf).ok()?;
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            (text == "STATUS=3 peers, 1 Offline, outbox 0").then_some(text)
        },
    );
    assert!(!line.contains(SECRET));
    let (code, text, err) = wait_for(
        "status --check: a peer Offline",
        Duration::from_secs(30),
        || {
            let s = status(true);
            (s.0 == Some(1)).then_some(s)
        },
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("1 peer(s) Offline"), "{err}");
    assert!(
        text.contains("standalone mode") && text.contains("healthy"),
        "{text}"
    );
    assert!(
        text.contains(&format!("http://{}", listen_addr(&daemon))),
        "{text}"
    );
    assert!(!text.contains(SECRET), "{text}");
    // Without the Offline peer all is well (SIGHUP re-reads the file).
    let only_online = json!([peer_json(
        2,
        "relay",
        "127.0.0.1",
        node.udp_port,
        "udp",
        "",
        None
    )]);
    std::fs::write(&file, only_online.to_string()).unwrap();
    daemon.signal("HUP");
    wait_for("status --check: all good", Duration::from_secs(30), || {
        (status(true).0 == Some(0)).then_some(())
    });
    assert_eq!(status(false).0, Some(0));
    stop(daemon);
    let (code, text, err) = status(true);
    assert_eq!(code, Some(2), "{text}{err}");
    assert!(err.contains("the daemon stopped at"), "{err}");
    assert!(text.contains("stopped at"), "{text}");
    // No database at all: the probe is not running.
    let out = probe_bin()
        .args(["status", "--check", "--db"])
        .arg(db.with_file_name("missing.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn distributed_health_follows_fetches_and_reports_without_showing_credentials() {
    use common::backend::{ok_answer, peers_page, FakeBackend, Response};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    require_private_netns();
    const TOKEN: &str = "node-token-abc123";
    const KEY: &str = "api-key-xyz789";
    let refused = free_port();
    let failing = Arc::new(AtomicBool::new(false));
    let reports_fail = failing.clone();
    let backend = FakeBackend::start(move |req| match (req.method.as_str(), req.path()) {
        ("GET", "/api/peers") => {
            let peer = peer_json(
                4,
                "hidden",
                "127.0.0.1",
                refused,
                "tcp",
                "net-d",
                Some(SECRET),
            );
            Response::json(200, peers_page(vec![peer], false))
        }
        ("PUT", "/api/nodes/status") if reports_fail.load(Ordering::Relaxed) => {
            Response::json(503, json!({"code": 503, "message": "maintenance"}))
        }
        ("PUT", "/api/nodes/status") => Response::json(200, ok_answer()),
        _ => Response::json(404, json!({"code": 404})),
    });
    let dir = temp_dir("http-distributed");
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    std::fs::write(dir.join("key"), KEY).unwrap();
    let args = [
        "--distributed-mode".to_string(),
        "--backend-base-url".into(),
        format!("{}/api", backend.url()),
        "--node-token-file".into(),
        dir.join("token").to_str().unwrap().into(),
        "--api-key-file".into(),
        dir.join("key").to_str().unwrap().into(),
        "--region".into(),
        "eu-test".into(),
        "--peer-fetch-interval".into(),
        "1".into(),
        "--status-report-interval".into(),
        "1".into(),
        "--check-interval".into(),
        "1".into(),
    ];
    let daemon = Daemon::start(&dir, &args, &[]);
    let addr = listen_addr(&daemon);
    let health = wait_for("a report accepted", Duration::from_secs(30), || {
        let a = get(addr, "/health");
        (a.status == 200 && a.json()["last_report"].is_string()).then_some(a)
    });
    assert_eq!(health.json()["mode"], "distributed");
    let metrics = wait_for("the peer's verdict", Duration::from_secs(30), || {
        let a = get(addr, "/metrics");
        sample(&a.body, "easytier_probe_peer_up", &["peer_id=\"4\""]).map(|_| a)
    });
    let ok = ["endpoint=\"nodes_status\"", "code=\"200\""];
    assert!(sample(&metrics.body, "easytier_probe_backend_responses_total", &ok).unwrap() >= 1.0);
    let fetched = ["endpoint=\"peers\"", "code=\"200\""];
    assert!(sample(
        &metrics.body,
        "easytier_probe_backend_responses_total",
        &fetched
    )
    .is_some());
    assert!(
        sample(
            &metrics.body,
            "easytier_probe_last_report_timestamp_seconds",
            &[]
        )
        .unwrap()
            > 1e9
    );
    assert!(
        sample(
            &metrics.body,
            "easytier_probe_last_peer_fetch_timestamp_seconds",
            &[]
        )
        .unwrap()
            > 1e9
    );
    promtool_check(&metrics.body);

    failing.store(true, Ordering::Relaxed);
    // Reports every second: stale after 3 intervals and 10 s.
    let sick = wait_for("503 once reports fail", Duration::from_secs(40), || {
        let a = get(addr, "/health");
        (a.status == 503).then_some(a)
    });
    assert!(
        sick.body.contains("no successful status report"),
        "{}",
        sick.body
    );
    let (code, text) = wait_for("status --check: unhealthy", Duration::from_secs(30), || {
        let out = probe_bin()
            .args(["status", "--check", "--db"])
            .arg(&daemon.db)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code() == Some(2)).then_some((out.status.code(), text))
    });
    assert_eq!(code, Some(2));
    assert!(
        text.contains("region eu-test") && text.contains("HTTP 503"),
        "{text}"
    );
    let metrics = get(addr, "/metrics");
    let refused = ["endpoint=\"nodes_status\"", "code=\"503\""];
    assert!(sample(
        &metrics.body,
        "easytier_probe_backend_responses_total",
        &refused
    )
    .is_some());
    for body in [&metrics.body, &sick.body, &health.body, &text] {
        for secret in [TOKEN, KEY, SECRET] {
            assert!(!body.contains(secret), "{secret} shown in {body}");
        }
    }
    stop(daemon);
}
