//! Reaching the backend: https with a private CA (`--backend-ca-file`), and
//! the proxy variables (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`), against a
//! TLS backend and an HTTP proxy on 127.0.0.1 made by the tests.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::backend::{ok_answer, peers_page, FakeBackend, Request, Response};
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "node-token-reach-4e1d";
const PROXY_USER: &str = "probe-eu";
const PROXY_PASSWORD: &str = "proxy-pw-93b1f0";
/// base64("probe-eu:proxy-pw-93b1f0")
const PROXY_BASIC: &str = "cHJvYmUtZXU6cHJveHktcHctOTNiMWYw";
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- the PKI

/// A CA made for the test, and a server certificate it signed for
/// 127.0.0.1 and localhost.
struct Pki {
    ca_pem: String,
    server_cert: Vec<u8>,
    server_key: Vec<u8>,
}

impl Pki {
    fn new(ca_name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new());
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca = rcgen::Certificate::from_params(params).unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "backend");
        let server = rcgen::Certificate::from_params(params).unwrap();
        Pki {
            ca_pem: ca.serialize_pem().unwrap(),
            server_cert: server.serialize_der_with_signer(&ca).unwrap(),
            server_key: server.serialize_private_key_der(),
        }
    }

    fn write_ca(&self, path: &Path) -> String {
        std::fs::write(path, &self.ca_pem).unwrap();
        path.to_str().unwrap().to_string()
    }
}

// ----------------------------------------------------- the backend answers

/// The contract's answers, as in tests/distributed.rs: an empty peer list
/// and "ok" for every status report, whose bodies are kept.
#[derive(Clone, Default)]
struct Answers {
    reports: Arc<Mutex<Vec<Value>>>,
}

impl Answers {
    fn handler(&self) -> impl Fn(&Request) -> Response + Send + Sync + 'static {
        let reports = self.reports.clone();
        move |req: &Request| match (req.method.as_str(), req.path()) {
            ("GET", "/api/peers") => Response::json(200, peers_page(vec![], false)),
            ("PUT", "/api/nodes/status") => {
                reports.lock().unwrap().push(req.json());
                Response::json(200, ok_answer())
            }
            _ => Response::json(404, json!({"code": 404})),
        }
    }

    fn reports(&self) -> usize {
        self.reports.lock().unwrap().len()
    }
}

// ------------------------------------------------------ the TLS backend

/// An https backend on 127.0.0.1: rustls in front of the same answers as
/// the fake backend, recording requests and failed handshakes.
struct TlsBackend {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    failed_handshakes: Arc<AtomicUsize>,
}

impl TlsBackend {
    fn start(
        pki: &Pki,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> TlsBackend {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.server_cert.clone().into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pki.server_key.clone().into()),
        )
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let (r, f) = (requests.clone(), failed_handshakes.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (config, r, f, h) = (config.clone(), r.clone(), f.clone(), handler.clone());
                std::thread::spawn(move || {
                    let mut conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tcp = tcp;
                    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    while conn.is_handshaking() {
                        if conn.complete_io(&mut tcp).is_err() {
                            f.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    let tls = rustls::StreamOwned::new(conn, tcp);
                    let _ = serve_http(tls, &r, &*h);
                });
            }
        });
        TlsBackend {
            port,
            requests,
            failed_handshakes,
        }
    }

    fn url(&self, host: &str) -> String {
        format!("https://{host}:{}/api", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn failed_handshakes(&self) -> usize {
        self.failed_handshakes.load(Ordering::SeqCst)
    }
}

/// A request line and its headers.
type Head = (String, Vec<(String, String)>);

/// A request line (or status line) and its headers, names in lower case;
/// None at the end of the stream.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut first = String::new();
    if reader.read_line(&mut first)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok(Some((first.trim_end().to_string(), headers)))
}

fn content_length(headers: &[(String, String)]) -> usize {
    headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn read_body(reader: &mut impl Read, headers: &[(String, String)]) -> std::io::Result<Vec<u8>> {
    let mut body = vec![0; content_length(headers)];
    reader.read_exact(&mut body)?;
    Ok(body)
}

/// HTTP/1.1 requests one after the other on one connection, answered by
/// `handler` (the fake backend's `serve`, over any stream).
fn serve_http<S: Read + Write>(
    stream: S,
    requests: &Mutex<Vec<Request>>,
    handler: &(dyn Fn(&Request) -> Response + Send + Sync),
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    while let Some((line, headers)) = read_head(&mut reader)? {
        let body = read_body(&mut reader, &headers)?;
        let mut parts = line.split_whitespace();
        let request = Request {
            method: parts.next().unwrap_or("").to_string(),
            target: parts.next().unwrap_or("").to_string(),
            headers: headers.into_iter().collect::<HashMap<_, _>>(),
            body,
        };
        requests.lock().unwrap().push(request.clone());
        let response = handler(&request);
        let mut head = format!("HTTP/1.1 {} Status\r\n", response.status);
        for (k, v) in &response.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", response.body.len()));
        let stream = reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(&response.body)?;
        stream.flush()?;
    }
    Ok(())
}

// ------------------------------------------------------------- the proxy

/// What went through the proxy: a CONNECT or an absolute-form request.
#[derive(Debug, Clone)]
struct Passed {
    method: String,
    /// `host:port` for CONNECT, the absolute URL otherwise.
    target: String,
    authorization: Option<String>,
}

/// A small HTTP proxy on 127.0.0.1: CONNECT tunnels (for https) and
/// absolute-form requests (for http), recording what passes. It wants the
/// test's credentials (407 without them).
struct HttpProxy {
    port: u16,
    passed: Arc<Mutex<Vec<Passed>>>,
}

impl HttpProxy {
    fn start() -> HttpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let passed = Arc::new(Mutex::new(Vec::new()));
        let p = passed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let p = p.clone();
                std::thread::spawn(move || {
                    let _ = proxy_connection(client, &p);
                });
            }
        });
        HttpProxy { port, passed }
    }

    /// The proxy URL, with credentials.
    fn url(&self) -> String {
        format!(
            "http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{}",
            self.port
        )
    }

    /// The proxy URL without credentials.
    fn bare_url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn passed(&self) -> Vec<Passed> {
        self.passed.lock().unwrap().clone()
    }
}

fn proxy_connection(client: TcpStream, passed: &Mutex<Vec<Passed>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    // One upstream connection per client connection (the backend's port).
    let mut upstream: Option<BufReader<TcpStream>> = None;
    while let Some((line, headers)) = read_head(&mut reader)? {
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let authorization = headers
            .iter()
            .find(|(k, _)| k == "proxy-authorization")
            .map(|(_, v)| v.clone());
        let allowed = authorization
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case(&format!("basic {PROXY_BASIC}")));
        passed.lock().unwrap().push(Passed {
            method: method.to_string(),
            target: target.to_string(),
            authorization,
        });
        if !allowed {
            read_body(&mut reader, &headers)?;
            client.write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                  Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n",
            )?;
            continue;
        }
        if method == "CONNECT" {
            let server = TcpStream::connect(target)?;
            client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
            let mut to_server = server.try_clone()?;
            to_server.write_all(reader.buffer())?;
            let mut from_client = reader.into_inner();
            let up = std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_client, &mut to_server);
                let _ = to_server.shutdown(std::net::Shutdown::Write);
            });
            let mut from_server = server;
            let _ = std::io::copy(&mut from_server, &mut client);
            let _ = client.shutdown(std::net::Shutdown::Write);
            let _ = up.join();
            return Ok(());
        }
        // Absolute form: http://host:port/path?query, sent on in origin form.
        let rest = target.strip_prefix("http://").unwrap_or(target);
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let body = read_body(&mut reader, &headers)?;
        if upstream.is_none() {
            upstream = Some(BufReader::new(TcpStream::connect(authority)?));
        }
        let server = upstream.as_mut().unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        for (k, v) in &headers {
            if !k.starts_with("proxy-") {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("\r\n");
        server.get_mut().write_all(head.as_bytes())?;
        server.get_mut().write_all(&body)?;
        let Some((status, answer_headers)) = read_head(server)? else {
            return Ok(());
        };
        let answer = if status.contains(" 304 ") {
            vec![]
        } else {
            read_body(server, &answer_headers)?
        };
        let mut head = format!("{status}\r\n");
        for (k, v) in &answer_headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        client.write_all(head.as_bytes())?;
        client.write_all(&answer)?;
        client.flush()?;
    }
    Ok(())
}

/// A proxy address where nothing listens: a request sent there fails.
fn dead_proxy() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

// ------------------------------------------------------------ the daemon

fn daemon_args(dir: &Path, url: &str, extra: &[&str]) -> Vec<String> {
    let token = dir.join("node-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut args: Vec<String> = [
        "--distributed-mode",
        "--backend-base-url",
        url,
        "--node-token-file",
        token.to_str().unwrap(),
        "--peer-fetch-interval",
        "1",
        "--status-report-interval",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn assert_no_proxy_secret(log: &str) {
    for secret in [PROXY_PASSWORD, PROXY_BASIC, TOKEN] {
        assert!(
            !log.contains(secret),
            "{secret:?} leaked into the log:\n{log}"
        );
    }
}

/// Fetches and at least two delivered reports.
fn wait_fetch_and_reports(
    what: &str,
    daemon: &Daemon,
    answers: &Answers,
    fetched: impl Fn() -> bool,
) {
    wait_for(
        &format!("{what}: a peer fetch and two reports"),
        WAIT,
        || (fetched() && answers.reports() >= 2).then_some(()),
    );
    let log = daemon.log();
    assert!(!log.contains("failed"), "{what}: a request failed:\n{log}");
}

// ------------------------------------------------------------- the tests

#[test]
fn an_https_backend_signed_by_the_ca_file_is_reached() {
    require_private_netns();
    let dir = temp_dir("reach-ca");
    let pki = Pki::new("etp test CA");
    let ca = pki.write_ca(&dir.join("ca.pem"));
    let answers = Answers::default();
    let backend = TlsBackend::start(&pki, answers.handler());

    // By flag, to the certificate's IP address.
    let args = daemon_args(&dir, &backend.url("127.0.0.1"), &["--backend-ca-file", &ca]);
    let daemon = Daemon::start(&dir, &args, &[]);
    let fetched = || {
        backend
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path() == "/api/peers")
    };
    wait_fetch_and_reports("--backend-ca-file", &daemon, &answers, fetched);
    let log = daemon.log();
    assert!(
        log.contains(
            "backend requests go directly, trusting the web PKI roots and 1 CA certificate(s) from"
        ),
        "{log}"
    );
    let report = answers.reports.lock().unwrap()[0].clone();
    assert!(report["metadata"]["probe_id"].is_string(), "{report}");
    let put = backend
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(put.header("x-node-token"), Some(TOKEN));
    assert_eq!(backend.failed_handshakes(), 0);
    drop(daemon);

    // By variable, to the certificate's name.
    let answers = Answers::default();
    let backend = TlsBackend::start(&pki, answers.handler());
    let dir = temp_dir("reach-ca-env");
    let args = daemon_args(&dir, &backend.url("localhost"), &[]);
    let daemon = Daemon::start(&dir, &args, &[("BACKEND_CA_FILE", ca.clone())]);
    let fetched = || backend.requests().iter().any(|r| r.method == "GET");
    wait_fetch_and_reports("BACKEND_CA_FILE", &daemon, &answers, fetched);
}

#[test]
fn without_the_ca_file_the_tls_error_is_logged_and_nothing_is_delivered() {
    require_private_netns();
    let dir = temp_dir("reach-no-ca");
    let pki = Pki::new("etp test CA");
    let answers = Answers::default();
    let backend = TlsBackend::start(&pki, answers.handler());
    let args = daemon_args(&dir, &backend.url("127.0.0.1"), &[]);
    let mut daemon = Daemon::start(&dir, &args, &[]);
    let log = wait_for("both TLS failures in the log", WAIT, || {
        let log = daemon.log();
        (log.contains("peer fetch failed") && log.contains("status report failed")).then_some(log)
    });
    for line in log.lines().filter(|l| l.contains("failed:")) {
        assert!(line.contains("invalid peer certificate"), "{line}");
        assert!(line.contains("UnknownIssuer"), "{line}");
        assert!(
            line.contains("a backend certificate from a private CA needs --backend-ca-file"),
            "{line}"
        );
    }
    assert!(backend.failed_handshakes() >= 2);
    assert!(backend.requests().is_empty(), "{:?}", backend.requests());
    assert_eq!(answers.reports(), 0);
    assert_eq!(
        daemon.child.try_wait().unwrap(),
        None,
        "the daemon stopped:\n{log}"
    );

    // A CA file with another CA: the same refusal, and the hint says so.
    drop(daemon);
    let dir = temp_dir("reach-other-ca");
    let other = Pki::new("another CA").write_ca(&dir.join("other.pem"));
    let args = daemon_args(
        &dir,
        &backend.url("127.0.0.1"),
        &["--backend-ca-file", &other],
    );
    daemon = Daemon::start(&dir, &args, &[]);
    let log = wait_for("the TLS failure in the log", WAIT, || {
        let log = daemon.log();
        log.contains("peer fetch failed").then_some(log)
    });
    assert!(
        log.contains("UnknownIssuer")
            && log.contains("signed neither by a CA of --backend-ca-file nor by a public CA"),
        "{log}"
    );
    assert!(backend.requests().is_empty());
    assert_eq!(answers.reports(), 0);
}

#[test]
fn a_bad_ca_file_is_exit_2_naming_the_flag_before_anything_starts() {
    let dir = temp_dir("reach-bad-ca");
    std::fs::write(dir.join("empty.pem"), b"").unwrap();
    std::fs::write(dir.join("text.pem"), b"this is not PEM\n").unwrap();
    std::fs::write(
        dir.join("broken.pem"),
        b"-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let url = "https://127.0.0.1:9/api";
    for (file, problem) in [
        (path("missing.pem"), "cannot read"),
        (dir.to_str().unwrap().to_string(), "cannot read"),
        (path("empty.pem"), "holds no PEM certificate"),
        (path("text.pem"), "holds no PEM certificate"),
        (path("broken.pem"), "is broken"),
    ] {
        for by_env in [false, true] {
            let mut cmd = probe_bin();
            cmd.arg("--db").arg(dir.join("probe.db"));
            if by_env {
                cmd.args(daemon_args(&dir, url, &[]));
                cmd.env("BACKEND_CA_FILE", &file);
            } else {
                cmd.args(daemon_args(&dir, url, &["--backend-ca-file", &file]));
            }
            let out = cmd.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
            let source = if by_env {
                "BACKEND_CA_FILE (from --backend-ca-file): "
            } else {
                "--backend-ca-file: "
            };
            assert!(stderr.contains(source), "{file}: {stderr}");
            assert!(
                stderr.contains(problem) && stderr.contains(&file),
                "{file}: {stderr}"
            );
            assert!(!dir.join("probe.db").exists(), "the database was opened");
        }
    }
    // Only with --distributed-mode.
    let out = probe_bin()
        .args(["--peer", "tcp://127.0.0.1:11010", "--backend-ca-file"])
        .arg(path("empty.pem"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--backend-ca-file needs --distributed-mode"),
        "{stderr}"
    );
    // A proxy variable the probe cannot use is named, its value is not.
    let out = probe_bin()
        .arg("--db")
        .arg(dir.join("probe.db"))
        .args(daemon_args(&dir, url, &[]))
        .env(
            "HTTPS_PROXY",
            format!("https://{PROXY_USER}:{PROXY_PASSWORD}@proxy.example:3128"),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("HTTPS_PROXY: a https:// proxy is not supported"),
        "{stderr}"
    );
    assert_no_proxy_secret(&stderr);
}

#[test]
fn an_https_backend_is_reached_through_https_proxy_with_connect() {
    require_private_netns();
    let dir = temp_dir("reach-connect");
    let pki = Pki::new("etp test CA");
    let ca = pki.write_ca(&dir.join("ca.pem"));
    let answers = Answers::default();
    let backend = TlsBackend::start(&pki, answers.handler());
    let proxy = HttpProxy::start();
    let args = daemon_args(&dir, &backend.url("127.0.0.1"), &["--backend-ca-file", &ca]);
    let envs = [
        ("HTTPS_PROXY", proxy.url()),
        // The http proxy is not for an https backend.
        ("HTTP_PROXY", dead_proxy()),
        ("RUST_LOG", "info,ureq=debug".to_string()),
    ];
    let daemon = Daemon::start(&dir, &args, &envs);
    let fetched = || backend.requests().iter().any(|r| r.method == "GET");
    wait_fetch_and_reports("HTTPS_PROXY", &daemon, &answers, fetched);
    let passed = proxy.passed();
    let tunnel = format!("127.0.0.1:{}", backend.port);
    assert!(!passed.is_empty());
    for p in &passed {
        assert_eq!(p.method, "CONNECT", "{p:?}");
        assert_eq!(p.target, tunnel, "{p:?}");
        assert_eq!(
            p.authorization.as_deref().map(str::to_ascii_lowercase),
            Some(format!("basic {PROXY_BASIC}").to_ascii_lowercase()),
            "{p:?}"
        );
    }
    // The proxy's credentials stay with the proxy, outside the tunnel, and
    // the requests inside are in origin form, as for a direct connection.
    for r in backend.requests() {
        assert!(r.header("proxy-authorization").is_none(), "{r:?}");
        assert!(r.target.starts_with("/api/"), "{r:?}");
    }
    let log = daemon.log();
    assert!(
        log.contains(&format!(
            "backend requests go through the proxy at 127.0.0.1:{} (from HTTPS_PROXY, with credentials)",
            proxy.port
        )),
        "{log}"
    );
    assert_no_proxy_secret(&log);
}

#[test]
fn an_http_backend_is_reached_through_http_proxy_in_absolute_form() {
    require_private_netns();
    let dir = temp_dir("reach-absolute");
    let answers = Answers::default();
    let backend = FakeBackend::start(answers.handler());
    let proxy = HttpProxy::start();
    let args = daemon_args(&dir, &format!("{}/api", backend.url()), &[]);
    let envs = [
        ("http_proxy", proxy.url()),
        ("HTTPS_PROXY", dead_proxy()),
        // ureq's debug lines show each request's head: the proxy's
        // credentials in it must be redacted.
        ("RUST_LOG", "info,ureq=debug".to_string()),
    ];
    let daemon = Daemon::start(&dir, &args, &envs);
    let fetched = || !backend.requests_to("GET", "/api/peers").is_empty();
    wait_fetch_and_reports("http_proxy", &daemon, &answers, fetched);
    let passed = proxy.passed();
    let base = format!("http://127.0.0.1:{}/api", backend.port);
    assert!(passed.iter().any(|p| p.method == "GET"), "{passed:?}");
    assert!(passed.iter().any(|p| p.method == "PUT"), "{passed:?}");
    for p in &passed {
        assert!(p.target.starts_with(&base), "{p:?}");
        assert_eq!(
            p.authorization.as_deref(),
            Some(format!("Basic {PROXY_BASIC}").as_str()),
            "{p:?}"
        );
    }
    // Everything the backend saw came through the proxy.
    let seen = backend.requests().len();
    assert!(
        seen <= proxy.passed().len(),
        "{seen} requests, not all proxied"
    );
    let log = daemon.log();
    assert!(
        log.contains("writing prelude"),
        "no ureq debug line:\n{log}"
    );
    assert!(log.contains("Proxy-Authorization: <redacted>"), "{log}");
    assert_no_proxy_secret(&log);
}

#[test]
fn no_proxy_sends_the_backend_directly() {
    require_private_netns();
    let pki = Pki::new("etp test CA");
    let proxy = HttpProxy::start();
    // https, with the port; then http, with a list.
    let dir = temp_dir("reach-no-proxy-https");
    let ca = pki.write_ca(&dir.join("ca.pem"));
    let answers = Answers::default();
    let tls = TlsBackend::start(&pki, answers.handler());
    let args = daemon_args(&dir, &tls.url("127.0.0.1"), &["--backend-ca-file", &ca]);
    let envs = [
        ("HTTPS_PROXY", proxy.url()),
        ("NO_PROXY", "127.0.0.1".to_string()),
    ];
    let daemon = Daemon::start(&dir, &args, &envs);
    let fetched = || tls.requests().iter().any(|r| r.method == "GET");
    wait_fetch_and_reports("NO_PROXY, https", &daemon, &answers, fetched);
    assert!(
        daemon.log().contains(
            "backend requests go directly (NO_PROXY matches the backend; HTTPS_PROXY not used)"
        ),
        "{}",
        daemon.log()
    );
    drop(daemon);

    let dir = temp_dir("reach-no-proxy-http");
    let answers = Answers::default();
    let plain = FakeBackend::start(answers.handler());
    let args = daemon_args(&dir, &format!("{}/api", plain.url()), &[]);
    let envs = [
        ("HTTP_PROXY", proxy.url()),
        (
            "no_proxy",
            format!("monitor.example, 127.0.0.1:{}", plain.port),
        ),
    ];
    let daemon = Daemon::start(&dir, &args, &envs);
    let fetched = || !plain.requests_to("GET", "/api/peers").is_empty();
    wait_fetch_and_reports("no_proxy, http", &daemon, &answers, fetched);
    assert!(proxy.passed().is_empty(), "{:?}", proxy.passed());
}

#[test]
fn a_proxy_that_wants_credentials_is_named_in_the_error() {
    require_private_netns();
    let pki = Pki::new("etp test CA");
    let proxy = HttpProxy::start();
    let dir = temp_dir("reach-407");
    let ca = pki.write_ca(&dir.join("ca.pem"));
    let answers = Answers::default();
    let tls = TlsBackend::start(&pki, answers.handler());
    let plain = FakeBackend::start(answers.handler());
    for (url, var) in [
        (tls.url("127.0.0.1"), "HTTPS_PROXY"),
        (format!("{}/api", plain.url()), "HTTP_PROXY"),
    ] {
        let args = daemon_args(&dir, &url, &["--backend-ca-file", &ca]);
        let daemon = Daemon::start(&dir, &args, &[(var, proxy.bare_url())]);
        let log = wait_for("both failures in the log", WAIT, || {
            let log = daemon.log();
            (log.contains("peer fetch failed") && log.contains("status report failed"))
                .then_some(log)
        });
        for line in log.lines().filter(|l| l.contains("failed:")) {
            assert!(
                line.contains("the proxy asks for credentials (HTTP 407)")
                    && line.contains(&format!("(through the proxy of {var})")),
                "{line}"
            );
        }
        assert!(proxy.passed().iter().all(|p| p.authorization.is_none()));
    }
    assert!(tls.requests().is_empty() && plain.requests().is_empty());
    assert_eq!(answers.reports(), 0);
}
