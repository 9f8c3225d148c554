//! A fake backend for the tests: a real HTTP/1.1 server on 127.0.0.1 that records requests.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path with the query string.
    pub target: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == key).then(|| v.to_string())
        })
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering (a slow backend).
    pub delay: Duration,
}

impl Response {
    pub fn json(status: u16, value: serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: value.to_string().into_bytes(),
            delay: Duration::ZERO,
        }
    }
    pub fn raw(status: u16, body: &[u8]) -> Response {
        Response {
            status,
            headers: vec![],
            body: body.to_vec(),
            delay: Duration::ZERO,
        }
    }
    pub fn with_header(mut self, k: &str, v: &str) -> Response {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn delayed(mut self, d: Duration) -> Response {
        self.delay = d;
        self
    }
}

type Handler = Box<dyn Fn(&Request) -> Response + Send + Sync>;

pub struct FakeBackend {
    pub port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    handler: Arc<Mutex<Handler>>,
}

impl FakeBackend {
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Mutex<Handler>> = Arc::new(Mutex::new(Box::new(handler)));
        let (r, h) = (requests.clone(), handler.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, h) = (r.clone(), h.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &r, &h);
                });
            }
        });
        FakeBackend {
            port,
            requests,
            handler,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_handler(&self, handler: impl Fn(&Request) -> Response + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Box::new(handler);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn requests_to(&self, method: &str, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path() == path)
            .collect()
    }
}

fn serve(
    stream: TcpStream,
    requests: &Mutex<Vec<Request>>,
    handler: &Mutex<Handler>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let request = Request {
            method,
            target,
            headers,
            body,
        };
        requests.lock().unwrap().push(request.clone());
        let response = (handler.lock().unwrap())(&request);
        std::thread::sleep(response.delay);
        let reason = match response.status {
            200 => "OK",
            304 => "Not Modified",
            401 => "Unauthorized",
            _ => "Status",
        };
        let mut head = format!("HTTP/1.1 {} {reason}\r\n", response.status);
        for (k, v) in &response.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if response.status != 304 {
            head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        if response.status != 304 {
            stream.write_all(&response.body)?;
        }
        stream.flush()?;
    }
}

/// A `GET /peers` page in the contract's shape.
pub fn peers_page(peers: Vec<serde_json::Value>, next: bool) -> serde_json::Value {
    serde_json::json!({
        "code": 200, "message": "ok",
        "data": { "total_available": peers.len(), "next_batch_available": next, "peers": peers }
    })
}

pub fn ok_answer() -> serde_json::Value {
    serde_json::json!({"code": 200, "message": "ok"})
}

/// What a misbehaving backend does with status reports; tests change it
/// while the daemon runs (`ReportSink::set`).
#[derive(Clone, Default)]
pub struct ReportFaults {
    /// Results the backend refuses for good (400/422).
    pub refuse: Option<fn(&serde_json::Value) -> bool>,
    /// Name the refused results in `data.rejected_seq` (422); otherwise
    /// answer 400 without names.
    pub name_refused: bool,
    /// 413 for a report with more than this many results.
    pub max_results: Option<usize>,
    /// Answer every report with this status (429, 503) and `Retry-After` value.
    pub throttle: Option<(u16, String)>,
    /// 400 for every report, even one without results: the probe is refused.
    pub refuse_probe: bool,
    /// 500 for every report that carries results.
    pub fail_results: bool,
    /// Wait this long before answering an accepted report.
    pub accept_delay: Duration,
}

/// One `PUT /nodes/status` as the backend saw and answered it.
#[derive(Clone, Debug)]
pub struct ReportAttempt {
    pub at: std::time::Instant,
    pub status: u16,
    pub seqs: Vec<i64>,
    pub body: serde_json::Value,
}

/// The status-report side of a fake backend: answers by `ReportFaults`,
/// records every attempt and the bodies it accepted.
#[derive(Default)]
pub struct ReportSink {
    faults: Mutex<ReportFaults>,
    attempts: Mutex<Vec<ReportAttempt>>,
}

impl ReportSink {
    pub fn set(&self, change: impl FnOnce(&mut ReportFaults)) {
        change(&mut self.faults.lock().unwrap());
    }

    pub fn answer(&self, req: &Request) -> Response {
        let faults = self.faults.lock().unwrap().clone();
        let body = req.json();
        let results = body["results"].as_array().cloned().unwrap_or_default();
        let seqs: Vec<i64> = results.iter().filter_map(|r| r["seq"].as_i64()).collect();
        let refused: Vec<i64> = match faults.refuse {
            Some(refuse) => results
                .iter()
                .filter(|r| refuse(r))
                .filter_map(|r| r["seq"].as_i64())
                .collect(),
            None => vec![],
        };
        let response = if let Some((status, retry_after)) = &faults.throttle {
            Response::json(
                *status,
                serde_json::json!({"code": status, "message": "slow down"}),
            )
            .with_header("Retry-After", retry_after)
        } else if faults.refuse_probe {
            Response::json(
                400,
                serde_json::json!({"code": 400, "message": "unknown probe"}),
            )
        } else if faults.max_results.is_some_and(|max| results.len() > max) {
            Response::json(
                413,
                serde_json::json!({"code": 413, "message": "too large"}),
            )
        } else if faults.fail_results && !results.is_empty() {
            Response::json(500, serde_json::json!({"code": 500, "message": "oops"}))
        } else if !refused.is_empty() && faults.name_refused {
            Response::json(
                422,
                serde_json::json!({"code": 422, "message": "invalid result\nforged line",
                                   "data": {"rejected_seq": refused}}),
            )
        } else if !refused.is_empty() {
            Response::json(
                400,
                serde_json::json!({"code": 400, "message": "bad batch"}),
            )
        } else {
            Response::json(200, ok_answer()).delayed(faults.accept_delay)
        };
        self.attempts.lock().unwrap().push(ReportAttempt {
            at: std::time::Instant::now(),
            status: response.status,
            seqs,
            body,
        });
        response
    }

    pub fn attempts(&self) -> Vec<ReportAttempt> {
        self.attempts.lock().unwrap().clone()
    }

    /// Bodies of the reports answered 200, in order.
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.attempts()
            .into_iter()
            .filter(|a| a.status == 200)
            .map(|a| a.body)
            .collect()
    }

    /// Every seq the backend accepted.
    pub fn delivered_seqs(&self) -> std::collections::BTreeSet<i64> {
        self.attempts()
            .iter()
            .filter(|a| a.status == 200)
            .flat_map(|a| a.seqs.clone())
            .collect()
    }
}

/// Daemon flags for distributed mode against `backend` (its `/api`), with a
/// node token file written in `dir` and every interval at one second.
pub fn quick_distributed_args(backend: &FakeBackend, dir: &std::path::Path) -> Vec<String> {
    let token = dir.join("token");
    std::fs::write(&token, "test-node-token\n").unwrap();
    [
        "--distributed-mode",
        "--backend-base-url",
        &format!("{}/api", backend.url()),
        "--node-token-file",
        token.to_str().unwrap(),
        "--check-interval",
        "1",
        "--peer-fetch-interval",
        "1",
        "--status-report-interval",
        "1",
    ]
    .map(str::to_string)
    .to_vec()
}
