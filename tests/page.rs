//! The status page in a real browser (headless Chromium: one row per peer, its status, escaping, no CSP violation) and the JSON API (/api/peers, history, 404s), never showing a secret.

mod common;
mod http_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use http_support::*;
use serde_json::{json, Value};

const SECRET: &str = "page-secret-31";
const HOSTILE: &str = "<script>alert(\"x\")</script>";

fn stop(mut daemon: Daemon) {
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        daemon.log()
    );
}

/// Runs Chromium headless on `url` with `extra` arguments and a fresh
/// profile; killed if it has not finished within a minute.
fn chromium(dir: &Path, extra: &[String], url: &str) -> Output {
    let profile = dir.join(format!("chromium-profile-{}", extra.len()));
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium (Debian package chromium; scripts/deps.sh installs it)");
    let pid = child.id();
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output().unwrap();
        let _ = done_tx.send(());
        out
    });
    if done_rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("chromium did not finish within 60 s");
    }
    waiter.join().unwrap()
}

/// `(peer id, status)` of every row of the page, from the DOM.
fn rows(dom: &str) -> Vec<(i64, String)> {
    dom.split("<tr class=\"peer\"")
        .skip(1)
        .map(|row| {
            let attr = |name: &str| {
                let start = row.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                row[start..].split('"').next().unwrap().to_string()
            };
            (attr("data-peer-id").parse().unwrap(), attr("data-status"))
        })
        .collect()
}

fn standalone_daemon(dir: &Path, node: &TargetNode) -> Daemon {
    let refused = [free_port(), free_port()];
    let peers = json!([
        peer_json(
            1,
            "tokyo-1",
            "127.0.0.1",
            node.tcp_port,
            "tcp",
            "net-page",
            Some(SECRET)
        ),
        peer_json(
            2,
            "public-relay",
            "127.0.0.1",
            node.udp_port,
            "udp",
            "",
            None
        ),
        peer_json(3, HOSTILE, "127.0.0.1", refused[0], "tcp", "", None),
        peer_json(4, "frankfurt-2", "127.0.0.1", refused[1], "tcp", "", None),
        peer_json(5, "paris-1", "127.0.0.1", node.tcp_port, "tcp", "", None),
    ]);
    let path = dir.join("peers.json");
    std::fs::write(&path, peers.to_string()).unwrap();
    let args = [
        "--peers-file",
        path.to_str().unwrap(),
        "--check-interval",
        "2",
    ];
    Daemon::start(dir, &args.map(String::from), &[])
}

/// Waits until every peer has a verdict, as `/api/peers` says.
fn wait_verdicts(addr: SocketAddr, peers: usize) -> Vec<Value> {
    wait_for("a verdict on every peer", Duration::from_secs(60), || {
        let a = try_get(addr, "/api/peers")?;
        let rows = a.json().as_array()?.clone();
        let done = rows.len() == peers
            && rows
                .iter()
                .all(|r| r["status"] == "Online" || r["status"] == "Offline");
        done.then_some(rows)
    })
}

#[test]
fn chromium_shows_one_row_per_peer_with_its_status() {
    require_private_netns();
    let node = TargetNode::start("net-page", SECRET, "page-node");
    let dir = temp_dir("page-chromium");
    let daemon = standalone_daemon(&dir, &node);
    let addr = listen_addr(&daemon);
    let api = wait_verdicts(addr, 5);
    let want: Vec<(i64, String)> = [(3, "Offline"), (4, "Offline"), (1, "Online")]
        .into_iter()
        .chain([(2, "Online"), (5, "Online")])
        .map(|(id, s)| (id, s.to_string()))
        .collect();
    let mut from_api: Vec<(i64, String)> = api
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap(),
                r["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    from_api.sort();
    let mut sorted_want = want.clone();
    sorted_want.sort();
    assert_eq!(from_api, sorted_want, "the verdicts themselves");

    let url = format!("http://{addr}/");
    let out = chromium(&dir, &["--dump-dom".into()], &url);
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {log}");
    assert_eq!(rows(&dom), want, "Offline first, then by id: {dom}");
    // The hostile name is text, not an element; nothing broke the policy.
    assert!(!dom.contains("<script"), "{dom}");
    assert!(
        dom.contains("&lt;script&gt;alert(\"x\")&lt;/script&gt;"),
        "{dom}"
    );
    assert!(!log.contains("Content Security Policy"), "{log}");
    assert_eq!(
        dom.matches("</span>").count(),
        5 * 48,
        "a 48-hour strip per row"
    );
    assert!(dom.contains("title=\""), "tooltips on the strip");
    assert!(!dom.contains(SECRET));

    let shot = dir.join("page.png");
    let args = [
        format!("--screenshot={}", shot.display()),
        "--window-size=1000,800".into(),
    ];
    let out = chromium(&dir, &args, &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    // `ETP_PAGE_SCREENSHOT=docs/status-page.png` keeps it (for the README).
    if let Some(keep) = std::env::var_os("ETP_PAGE_SCREENSHOT") {
        let keep = PathBuf::from(keep);
        std::fs::write(&keep, &png).unwrap();
        eprintln!("screenshot saved as {}", keep.display());
    }
    stop(daemon);
}

#[test]
fn api_and_page_never_show_credentials_and_unknown_paths_are_404() {
    use common::backend::{ok_answer, peers_page, FakeBackend, Response};
    require_private_netns();
    const TOKEN: &str = "node-token-page-123";
    const KEY: &str = "api-key-page-789";
    let refused = free_port();
    let backend = FakeBackend::start(move |req| match (req.method.as_str(), req.path()) {
        ("GET", "/api/peers") => {
            let peer = peer_json(
                4,
                HOSTILE,
                "127.0.0.1",
                refused,
                "tcp",
                "net-d",
                Some(SECRET),
            );
            Response::json(200, peers_page(vec![peer], false))
        }
        ("PUT", "/api/nodes/status") => Response::json(200, ok_answer()),
        _ => Response::json(404, json!({"code": 404})),
    });
    let dir = temp_dir("page-distributed");
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
        "eu-page".into(),
        "--check-interval".into(),
        "1".into(),
        "--status-report-interval".into(),
        "1".into(),
    ];
    let daemon = Daemon::start(&dir, &args, &[]);
    let addr = listen_addr(&daemon);
    let peers = wait_verdicts(addr, 1);
    assert_eq!(peers[0]["status"], "Offline");
    assert_eq!(peers[0]["name"], HOSTILE, "JSON carries the name as it is");

    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    let csp = page.header("Content-Security-Policy").unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(page
        .header("Content-Type")
        .unwrap()
        .starts_with("text/html"));
    assert!(!page.body.contains("<script"), "{}", page.body);
    assert!(page.body.contains("eu-page") && page.body.contains("distributed"));
    assert!(page
        .body
        .contains("<meta http-equiv=\"refresh\" content=\"60\">"));

    let history = get(addr, "/api/peers/4/history?hours=3");
    assert_eq!(history.status, 200, "{}", history.body);
    let buckets = history.json()["buckets"].as_array().unwrap().clone();
    assert_eq!(buckets.len(), 3);
    let current = &buckets[2];
    assert!(current["checks"].as_i64().unwrap() >= 1, "{current}");
    assert_eq!(current["online"], 0);
    assert_eq!(
        get(addr, "/api/peers/4/history").json()["buckets"]
            .as_array()
            .unwrap()
            .len(),
        48
    );

    for path in [
        "/api",
        "/api/",
        "/api/nope",
        "/api/peers/",
        "/api/peers/4",
        "/api/peers/4/history/",
        "/api/peers/four/history",
        "/api/peers/999/history",
        "/index.html",
    ] {
        assert_eq!(get(addr, path).status, 404, "{path}");
    }
    for query in ["hours=0", "hours=2161", "hours=x"] {
        let a = get(addr, &format!("/api/peers/4/history?{query}"));
        assert_eq!(a.status, 400, "{query}");
    }

    let api = get(addr, "/api/peers");
    for body in [&page.body, &api.body, &history.body] {
        for secret in [TOKEN, KEY, SECRET] {
            assert!(!body.contains(secret), "{secret} shown in {body}");
        }
    }
    stop(daemon);
}
