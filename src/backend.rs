//! The backend's HTTP API as the probe uses it: `GET /peers` and `PUT /nodes/status` over ureq.

use std::io::Read;
use std::time::Duration;

use serde::Serialize;

use crate::config::Secret;
use crate::peer::{self, Peer};

mod answer;
mod no_proxy;
mod reach;
mod tls;
mod tunnel;

pub use answer::shown;
pub use reach::Reach;

/// Larger answers are refused rather than read into memory.
pub const MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
/// A backend that keeps saying "next batch" forever is cut off here.
pub const MAX_PAGES: u32 = 1_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The whole-request timeout for a request repeated every `interval`: a
/// request may not outlive the next one's turn, within 2 to 20 seconds.
pub fn request_timeout(interval: Duration) -> Duration {
    interval.clamp(Duration::from_secs(2), Duration::from_secs(20))
}

pub fn user_agent() -> String {
    format!("easytier-probe/{}", env!("CARGO_PKG_VERSION"))
}

/// Why a request failed. Messages name headers, never their values.
#[derive(Debug)]
pub enum BackendError {
    /// 401 or 403: the credential in `header` was refused.
    Auth {
        status: u16,
        header: &'static str,
    },
    Status {
        status: u16,
        /// What `Retry-After` asked for (429 and 503 only), from the moment
        /// the answer came.
        retry_after: Option<Duration>,
    },
    /// 400, 413 or 422: the backend refuses the request for good, as it is.
    /// `message` is the answer's, shortened and escaped; `rejected_seq` the
    /// results it names (`data.rejected_seq`), if any.
    Refused {
        status: u16,
        message: String,
        rejected_seq: Vec<i64>,
    },
    Transport(String),
    BadAnswer(String),
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::Auth { status, header } => write!(
                f,
                "authentication failed (HTTP {status}): the backend refused the {header} header; check its value"
            ),
            BackendError::Status {
                status: status @ 300..=399,
                ..
            } => write!(
                f,
                "the backend answered HTTP {status} (a redirect, not followed: check the backend URL)"
            ),
            BackendError::Status {
                status,
                retry_after: Some(wait),
            } => write!(
                f,
                "the backend answered HTTP {status} and asked to retry after {}s",
                wait.as_secs()
            ),
            BackendError::Status { status, .. } => write!(f, "the backend answered HTTP {status}"),
            BackendError::Refused {
                status, message, ..
            } if message.is_empty() => write!(f, "the backend refused it (HTTP {status})"),
            BackendError::Refused {
                status, message, ..
            } => write!(f, "the backend refused it (HTTP {status}: \"{message}\")"),
            BackendError::Transport(e) => write!(f, "cannot reach the backend: {e}"),
            BackendError::BadAnswer(e) => write!(f, "the backend's answer is not usable: {e}"),
        }
    }
}

impl std::error::Error for BackendError {}

impl BackendError {
    pub fn is_auth(&self) -> bool {
        matches!(self, BackendError::Auth { .. })
    }

    /// The wait a 429 or 503 asked for with `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BackendError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One complete peer round.
pub enum FetchOutcome {
    /// 304: the list has not changed since `If-None-Match`.
    NotModified,
    Peers {
        peers: Vec<Peer>,
        etag: Option<String>,
        /// Entries skipped as invalid, described for a warning.
        problems: Vec<String>,
        pages: u32,
    },
}

#[derive(Clone)]
pub struct BackendClient {
    agent: ureq::Agent,
    base_url: String,
    node_token: Secret,
    api_key: Option<Secret>,
    region: Option<String>,
    /// Sent with every request of a plain-http backend reached through a
    /// proxy with credentials (absolute-form requests to the proxy; for
    /// https ureq sends it with CONNECT, and it must not go inside the tunnel).
    proxy_authorization: Option<Secret>,
    /// The proxy's variable, to name it in transport errors.
    proxy_var: Option<&'static str>,
    /// Whether `--backend-ca-file` is in use, for the certificate hint.
    custom_ca: bool,
    /// The whole-request timeout, and so each page's progress limit.
    timeout: Duration,
}

/// Beyond its request timeout, what a page may take before the fetcher
/// counts as stuck: a name lookup ignores the timeout (30 s with glibc's
/// defaults and three dead nameservers).
const PAGE_ALLOWANCE: Duration = Duration::from_secs(60);

impl BackendClient {
    /// A client that goes directly, trusting the web PKI roots only (the
    /// daemon uses `with_reach`, which honours the proxy variables and
    /// `--backend-ca-file`).
    pub fn new(
        base_url: &str,
        node_token: Secret,
        api_key: Option<Secret>,
        region: Option<String>,
        timeout: Duration,
    ) -> BackendClient {
        Self::with_reach(
            base_url,
            node_token,
            api_key,
            region,
            timeout,
            &Reach::default(),
        )
    }

    /// A client whose requests go as `reach` decided: through a proxy or
    /// directly, trusting the CA file's certificates too.
    pub fn with_reach(
        base_url: &str,
        node_token: Secret,
        api_key: Option<Secret>,
        region: Option<String>,
        timeout: Duration,
        reach: &Reach,
    ) -> BackendClient {
        let builder = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .user_agent(&user_agent())
            // A redirect would carry the node token or API key to another
            // address, and a PUT turned into a GET there could answer 200 for
            // results that were never delivered. The contract has no redirects.
            .redirects(0);
        for secret in reach.secrets() {
            crate::logging::add_secret(&secret);
        }
        let base_url = base_url.trim_end_matches('/').to_string();
        let plain_http = base_url.starts_with("http://");
        BackendClient {
            agent: reach.configure(builder, &base_url).build(),
            base_url,
            node_token,
            api_key,
            region,
            proxy_authorization: reach
                .proxy
                .as_ref()
                .filter(|_| plain_http)
                .and_then(|route| route.authorization.clone()),
            proxy_var: reach.proxy_var(),
            custom_ca: reach.ca_file.is_some(),
            timeout,
        }
    }

    /// For a plain-http backend behind a proxy that wants credentials.
    fn through_proxy(&self, request: ureq::Request) -> ureq::Request {
        match &self.proxy_authorization {
            Some(value) => request.set("Proxy-Authorization", value.expose()),
            None => request,
        }
    }

    /// Fetches every page of the peer list. Any failure part-way fails the
    /// whole round, so the caller keeps its last good list.
    pub fn fetch_peers(&self, etag: Option<&str>) -> Result<FetchOutcome, BackendError> {
        let mut all = Vec::new();
        let mut page = 1u32;
        let mut round_etag = None;
        loop {
            // Only the first page is conditional: the ETag is the round's.
            let offered = etag.filter(|_| page == 1);
            let _step =
                crate::progress::step("a page of GET /peers", self.timeout + PAGE_ALLOWANCE);
            let response =
                crate::metrics::backend_call("peers", self.peers_request(page, offered).call())
                    .map_err(|e| self.classify(e, "Authorization"))?;
            if response.status() == 304 {
                return match (page, offered) {
                    (1, Some(_)) => Ok(FetchOutcome::NotModified),
                    // "Unchanged" since nothing: the answer means nothing.
                    (1, None) => Err(BackendError::BadAnswer(
                        "304 Not Modified to a request without If-None-Match".into(),
                    )),
                    _ => Err(BackendError::BadAnswer(format!("304 for page {page}"))),
                };
            }
            require_success(&response)?;
            if page == 1 {
                round_etag = response.header("ETag").map(str::to_string);
            }
            let more = read_page(&read_json(response)?, &mut all)?;
            if !more {
                break;
            }
            if page >= MAX_PAGES {
                return Err(BackendError::BadAnswer(format!(
                    "more than {MAX_PAGES} pages; refusing to page further"
                )));
            }
            page += 1;
        }
        let (peers, problems) = peer::validate_list(all);
        if peers.is_empty() && !problems.is_empty() {
            // Every entry broken is a broken answer, not an empty fleet.
            return Err(BackendError::BadAnswer(format!(
                "every entry of the list is invalid ({})",
                peer::summarize_problems(&problems).unwrap_or_default()
            )));
        }
        Ok(FetchOutcome::Peers {
            peers,
            etag: round_etag,
            problems,
            pages: page,
        })
    }

    /// `GET {base}/peers` for one page, with region, page, API key and ETag.
    fn peers_request(&self, page: u32, etag: Option<&str>) -> ureq::Request {
        let mut request = self.through_proxy(self.agent.get(&format!("{}/peers", self.base_url)));
        if let Some(region) = &self.region {
            request = request.query("region", region);
        }
        if page > 1 {
            request = request.query("page", &page.to_string());
        }
        if let Some(key) = &self.api_key {
            request = request.set("Authorization", &format!("Bearer {}", key.expose()));
        }
        if let Some(etag) = etag {
            request = request.set("If-None-Match", etag);
        }
        request
    }

    /// Sends one status report; `Ok` only for 2xx with `code` 200.
    pub fn put_status(
        &self,
        report: &StatusReport,
        timeout: Option<Duration>,
    ) -> Result<(), BackendError> {
        let mut request = self
            .through_proxy(self.agent.put(&format!("{}/nodes/status", self.base_url)))
            .set("x-node-token", self.node_token.expose());
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let body =
            serde_json::to_vec(report).map_err(|e| BackendError::BadAnswer(e.to_string()))?;
        let sent = request
            .set("Content-Type", "application/json")
            .send_bytes(&body);
        let response = crate::metrics::backend_call("nodes_status", sent)
            .map_err(|e| self.classify(e, "x-node-token"))?;
        require_success(&response)?;
        require_code_200(&read_json(response)?)
    }
}

impl BackendClient {
    fn classify(&self, error: ureq::Error, auth_header: &'static str) -> BackendError {
        match (error, self.proxy_var) {
            (ureq::Error::Transport(t), _) => BackendError::Transport(self.transport_problem(&t)),
            // Through a proxy (plain http), a 407 is the proxy's answer.
            (ureq::Error::Status(407, _), Some(var)) => BackendError::Transport(format!(
                "the proxy asks for credentials (HTTP 407): give them in the proxy URL as user:password@ (through the proxy of {var})"
            )),
            (status, _) => classify(status, auth_header),
        }
    }

    /// ureq's words (the URL, what failed, why), with the proxy named by its
    /// variable, and a hint when the backend's certificate has an unknown issuer.
    fn transport_problem(&self, t: &ureq::Transport) -> String {
        let mut text = t.to_string();
        if let Some(var) = self.proxy_var {
            text.push_str(&format!(" (through the proxy of {var})"));
        }
        if tls::is_unknown_issuer(t) {
            text.push_str(if self.custom_ca {
                "; the certificate is signed neither by a CA of --backend-ca-file nor by a public CA"
            } else {
                "; a backend certificate from a private CA needs --backend-ca-file"
            });
        }
        text
    }
}

fn classify(error: ureq::Error, auth_header: &'static str) -> BackendError {
    match error {
        ureq::Error::Status(status @ (401 | 403), _) => BackendError::Auth {
            status,
            header: auth_header,
        },
        ureq::Error::Status(status @ (400 | 413 | 422), response) => {
            let (message, rejected_seq) = answer::refusal(response);
            BackendError::Refused {
                status,
                message,
                rejected_seq,
            }
        }
        ureq::Error::Status(status @ (429 | 503), response) => BackendError::Status {
            status,
            retry_after: response
                .header("Retry-After")
                .and_then(|v| answer::retry_after(v, std::time::SystemTime::now())),
        },
        ureq::Error::Status(status, _) => BackendError::Status {
            status,
            retry_after: None,
        },
        ureq::Error::Transport(t) => BackendError::Transport(t.to_string()),
    }
}

/// Errors come back from ureq as `Err`; what is left (1xx, 3xx with
/// redirects off) is not an answer the contract knows.
fn require_success(response: &ureq::Response) -> Result<(), BackendError> {
    match response.status() {
        200..=299 => Ok(()),
        status => Err(BackendError::Status {
            status,
            retry_after: None,
        }),
    }
}

/// The contract's success marker inside a 2xx answer.
fn require_code_200(body: &serde_json::Value) -> Result<(), BackendError> {
    match body.get("code") {
        Some(code) if code.as_i64() == Some(200) => Ok(()),
        other => Err(BackendError::BadAnswer(format!(
            "`code` is {} instead of 200",
            other.map_or_else(|| "missing".to_string(), |c| c.to_string())
        ))),
    }
}

/// Takes one page's peers into `all`; true when the backend has another page.
fn read_page(
    body: &serde_json::Value,
    all: &mut Vec<serde_json::Value>,
) -> Result<bool, BackendError> {
    require_code_200(body)?;
    let data = body
        .get("data")
        .ok_or_else(|| BackendError::BadAnswer("`data` is missing".into()))?;
    let peers = data
        .get("peers")
        .and_then(|p| p.as_array())
        .ok_or_else(|| BackendError::BadAnswer("`data.peers` is not a list".into()))?;
    all.extend(peers.iter().cloned());
    match data.get("next_batch_available") {
        None | Some(serde_json::Value::Null) => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(other) => Err(BackendError::BadAnswer(format!(
            "`data.next_batch_available` is {other}, not true or false"
        ))),
    }
}

fn read_json(response: ureq::Response) -> Result<serde_json::Value, BackendError> {
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(MAX_BODY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| BackendError::Transport(format!("reading the answer: {e}")))?;
    if bytes.len() as u64 > MAX_BODY_BYTES {
        return Err(BackendError::BadAnswer(format!(
            "the answer is larger than {} MiB",
            MAX_BODY_BYTES / 1024 / 1024
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| BackendError::BadAnswer(format!("not JSON: {e}")))
}

/// The body of `PUT /nodes/status`.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_time: Option<i64>,
    pub metadata: Metadata,
    pub results: Vec<crate::store::OutboxResult>,
}

#[derive(Debug, Serialize)]
pub struct Metadata {
    pub version: &'static str,
    pub total_monitored_nodes: i64,
    pub healthy_nodes: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub probe_id: String,
    pub easytier_version: &'static str,
    pub uptime_seconds: u64,
    pub buffered_results: i64,
    pub dropped_results: i64,
    /// Extension: results set aside because the backend refused them for good.
    pub rejected_results: i64,
    /// Extension: peers of the current list this probe cannot check, so a
    /// backend can tell "not checked" from "not reported".
    pub unsupported_peers: Vec<crate::store::UnsupportedPeer>,
}
