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
