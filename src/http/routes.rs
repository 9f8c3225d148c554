//! The routes: which path answers what (/metrics, /health, the status page `/` and `/api/*`).

use serde_json::json;

use super::{api, page, Context};
use crate::clock;
use crate::health::HEALTH;
use crate::metrics::{self, StoreFigures};
use crate::store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other(String),
}

/// A request as the routes see it: the head only (bodies are never read).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// What follows `?`, undecoded.
    pub query: Option<String>,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Request {
        let method = match method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            other => Method::Other(other.to_string()),
        };
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query.to_string())),
            None => (target, None),
        };
        Request {
            method,
            path: path.to_string(),
            query,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Beyond those every answer has (Date, Content-Type, Content-Length,
    /// Cache-Control: no-store, X-Content-Type-Options: nosniff,
    /// Connection: close).
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    pub fn text(status: u16, body: &str) -> Response {
        Response::new(
            status,
            "text/plain; charset=utf-8",
            body.as_bytes().to_vec(),
        )
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = value.to_string().into_bytes();
        body.push(b'\n');
        Response::new(status, "application/json", body)
    }

    /// An answer without a page: the status in words.
    pub fn error(status: u16) -> Response {
        let text = match status {
            400 => "bad request",
            408 => "the request did not arrive in time",
            431 => "the request head is too large",
            _ => "internal error",
        };
        Response::text(status, &format!("{text}\n"))
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

type Handler = fn(&Request, &Context) -> Response;

/// Every path served, matched exactly. A new page is one more line.
const ROUTES: &[(&str, Handler)] = &[
    ("/metrics", metrics_page),
    ("/health", health_page),
    ("/", page::page),
    ("/api/peers", api::peers),
];

/// The answer to `request`: 405 for anything but GET and HEAD, 404 for a
/// path not in `ROUTES`.
pub fn route(request: &Request, context: &Context) -> Response {
    if !matches!(request.method, Method::Get | Method::Head) {
        return Response::text(405, "only GET and HEAD are served here\n")
            .with_header("Allow", "GET, HEAD".into());
    }
    match ROUTES.iter().find(|(path, _)| *path == request.path) {
        Some((_, handler)) => handler(request, context),
        None => api::peer_path(request, context).unwrap_or_else(|| {
            Response::text(
                404,
                "not found; served here: /, /metrics, /health, /api/peers, /api/peers/ID/history\n",
            )
        }),
    }
}

/// The Prometheus exposition. The outbox figures come from the database;
/// when it cannot be read they keep their last values and a warning says why.
fn metrics_page(_: &Request, context: &Context) -> Response {
    let figures = store_figures(context)
        .map_err(|e| log::warn!("/metrics: cannot read the database: {e:#}"))
        .ok();
    let text = metrics::render(figures.as_ref(), clock::now_ms());
    Response::new(200, metrics::CONTENT_TYPE, text.into_bytes())
}

fn store_figures(context: &Context) -> anyhow::Result<StoreFigures> {
    let conn = store::open_ro(&context.db_path)?;
    store::store_figures(&conn)
}

/// 200 when healthy, 503 with the problems otherwise; small enough for a
/// load balancer or a container health check.
fn health_page(_: &Request, _: &Context) -> Response {
    let now = clock::now_ms();
    let state = HEALTH.state(now);
    let healthy = state.problems.is_empty();
    let mut body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "problems": state.problems,
        "mode": state.mode,
        "peers": state.peers,
        "offline": state.offline,
        "uptime_seconds": (now - state.started_ms).max(0) / 1000,
    });
    if state.mode == "distributed" {
        body["last_peer_fetch"] = json!(state.last_fetch_ms.map(clock::rfc3339));
        body["last_report"] = json!(state.last_report_ms.map(clock::rfc3339));
        body["outbox"] = json!(state.outbox);
    }
    Response::json(if healthy { 200 } else { 503 }, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_on_known_paths() {
        let context = Context {
            db_path: "/nonexistent/probe.db".into(),
        };
        let r = route(&Request::new("POST", "/metrics"), &context);
        assert_eq!(r.status, 405);
        assert_eq!(r.headers, [("Allow", "GET, HEAD".to_string())]);
        assert_eq!(route(&Request::new("GET", "/nope"), &context).status, 404);
        assert_eq!(
            route(&Request::new("GET", "/metrics/"), &context).status,
            404
        );
        // Without a database the exposition is still served.
        let r = route(&Request::new("HEAD", "/metrics?x"), &context);
        assert_eq!(r.status, 200);
        let text = String::from_utf8(r.body).unwrap();
        assert!(text.contains("easytier_probe_build_info{"), "{text}");
    }
}
