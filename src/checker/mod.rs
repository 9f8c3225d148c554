//! The blocking check: start a short-lived EasyTier instance, join the peer, read the verdict, tear down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use easytier::common::config::{ConfigLoader, NetworkIdentity, PeerConfig, TomlConfigLoader};
use easytier::common::global_ctx::GlobalCtxEvent;
use easytier::launcher::{NetworkInstance, NetworkInstanceRunningInfo};
use serde::Serialize;

use crate::clock;
use crate::peer::{Peer, Role};

/// How often the checker looks at the instance's state. EasyTier refreshes its
/// peer and route tables about once a second; events arrive at once, so a short
/// poll mostly serves the fail-fast path.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What every check shares: the probe's identity on the EasyTier network.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub timeout: Duration,
    /// Network name the probe uses as a guest of public relays (stable per probe).
    pub probe_network_name: String,
    /// Host name the probe announces to the peers it checks.
    pub hostname: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    Online,
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "Online",
            Status::Offline => "Offline",
        }
    }
}

/// The outcome of one check, in the shape of the backend's per-peer result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub peer_id: i64,
    pub uri: String,
    pub status: Status,
    /// Smallest measured round-trip of the connection, in microseconds.
    pub latency_us: Option<u64>,
    /// `latency_us` rounded up to whole milliseconds (the backend's unit).
    pub response_time: Option<u64>,
    pub remote_version: Option<String>,
    pub remote_hostname: Option<String>,
    pub role: &'static str,
    /// Why the peer is Offline, in plain words. Never contains a secret.
    pub error: Option<String>,
    pub checked_at: String,
    #[serde(skip)]
    pub checked_at_ms: i64,
    pub duration_ms: u64,
}

/// A latency as people read it: milliseconds with two decimals.
pub fn latency_text(latency_us: u64) -> String {
    format!("{:.2} ms", latency_us as f64 / 1000.0)
}

static INSTANCE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Checks one peer and blocks until there is a verdict: Online as soon as the
/// peer is seen connected in the expected role, Offline as soon as a definitive
/// failure is reported, or Offline when `timeout` runs out.
pub fn check(peer: &Peer, opts: &CheckOptions) -> CheckResult {
    let started = Instant::now();
    let checked_at_ms = clock::now_ms();
    let role = peer.role();
    log::debug!(
        "checking peer {} ({}) as {}",
        peer.id,
        peer.uri(),
        role.as_str()
    );
    let mut verdict = match resolve(peer, started + opts.timeout) {
        Ok(families) => match build_config(peer, opts) {
            Ok(config) => run_instance(config, role, peer, &families, started, opts.timeout),
            Err(error) => Verdict::offline(error),
        },
        Err(error) => Verdict::offline(error),
    };
    if verdict.elapsed.is_zero() {
        verdict.elapsed = started.elapsed();
    }
    CheckResult {
        peer_id: peer.id,
        uri: peer.uri(),
        status: verdict.status.unwrap_or(Status::Offline),
        latency_us: verdict.latency_us,
        response_time: verdict.latency_us.map(|us| us.div_ceil(1000)),
        remote_version: verdict.remote_version,
        remote_hostname: verdict.remote_hostname,
        role: role.as_str(),
        error: verdict.error,
        checked_at: clock::rfc3339(checked_at_ms),
        checked_at_ms,
        duration_ms: verdict.elapsed.as_millis() as u64,
    }
}

/// Makes EasyTier dial a configured peer within 100 ms of start instead of on
/// its default 1 s reconnect tick. That tick decides how fast a refused or
/// rejected peer is known; a check has nothing else to wait for. Process-wide,
/// so it is set once before the first check.
///
/// It also routes panics of EasyTier's own tasks to the log (see
/// `log_easytier_task_panics`).
pub fn tune_easytier_for_checks() {
    use easytier::common::constants::MANUAL_CONNECTOR_RECONNECT_INTERVAL_MS;
    *MANUAL_CONNECTOR_RECONNECT_INTERVAL_MS.blocking_lock() = RECONNECT_INTERVAL_MS;
    log_easytier_task_panics();
}

/// EasyTier's tasks run on the tokio worker threads of each instance, and
/// tokio catches their panics. One fires on most teardowns of a refused
/// check (a reconnect task sends its result to a channel already closed,
/// connector/manual.rs). The default hook would print it with a backtrace;
/// with RUST_BACKTRACE set, symbolising that backtrace maps the binary's
/// debug info, over 100 MB of resident memory for nothing. Such panics go
/// to the log as one line instead; every other panic keeps the default hook.
fn log_easytier_task_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let on_runtime = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("tokio-"));
            if !on_runtime {
                return default_hook(info);
            }
            let known_teardown = info
                .location()
                .is_some_and(|l| l.file().ends_with("connector/manual.rs"))
                && info.to_string().contains("SendError");
            if known_teardown {
                log::debug!(
                    "EasyTier task panicked during teardown (caught by its runtime): {info}"
                );
            } else {
                log::warn!("EasyTier task panicked (caught by its runtime): {info}");
            }
        }));
    });
}

const RECONNECT_INTERVAL_MS: u64 = 100;

/// How many handshakes the node must close before the probe calls it a
/// rejection (wrong secret, network not served) rather than a hiccup.
const REJECTIONS_FOR_VERDICT: usize = 2;

#[derive(Default)]
struct Verdict {
    /// Time from the start of the check to the verdict (teardown excluded).
    elapsed: Duration,
    status: Option<Status>,
    latency_us: Option<u64>,
    remote_version: Option<String>,
    remote_hostname: Option<String>,
    error: Option<String>,
}

impl Verdict {
    fn offline(error: String) -> Verdict {
        Verdict {
            status: Some(Status::Offline),
            error: Some(error),
            ..Verdict::default()
        }
    }
}

fn build_config(peer: &Peer, opts: &CheckOptions) -> Result<TomlConfigLoader, String> {
    let uri = peer.uri();
    let url: url::Url = uri
        .parse()
        .map_err(|e| format!("cannot form a URL from {uri}: {e}"))?;
    let config = TomlConfigLoader::default();
    let n = INSTANCE_COUNTER.fetch_add(1, Ordering::Relaxed);
    config.set_inst_name(format!("probe-{}-{n}", peer.id));
    config.set_hostname(Some(opts.hostname.clone()));
    let identity = match &peer.network_secret {
        Some(secret) => NetworkIdentity::new(peer.network_name.clone(), secret.clone()),
        None => NetworkIdentity::new(opts.probe_network_name.clone(), String::new()),
    };
    config.set_network_identity(identity);
    config.set_peers(vec![PeerConfig { uri: url }]);
    config.set_listeners(Vec::new());
    config.set_ipv4(None);
    config.set_dhcp(false);
    let mut flags = config.get_flags();
    // A check only needs the one direct connection: no hole punching, no
    // connections to the rest of the peer's network.
    //
    // `no_tun` stays false on purpose. With no_tun = true EasyTier starts its
    // user-space proxies, among them a raw ICMP socket whose receive thread
    // never ends: one leaked thread and socket per check whenever the process
    // has CAP_NET_RAW. With no_tun = false and neither a virtual IPv4 address
    // nor DHCP configured, EasyTier creates no TUN device and starts no proxy.
    flags.no_tun = false;
    flags.disable_p2p = true;
    flags.disable_udp_hole_punching = true;
    config.set_flags(flags);
    Ok(config)
}

fn run_instance(
    config: TomlConfigLoader,
    expected: Role,
    peer: &Peer,
    families: &[&'static str],
    started: Instant,
    timeout: Duration,
) -> Verdict {
    let deadline = started + timeout;
    let mut instance = NetworkInstance::new(config);
    if let Err(e) = instance.start() {
        return Verdict::offline(format!(
            "could not start the probe's EasyTier instance: {e:#}"
        ));
    }
    let mut verdict = loop {
        let mut last_failure: Option<Failure> = None;
        if let Some(info) = instance.get_running_info() {
            if let Some(verdict) = judge(&info, expected, peer) {
                break verdict;
            }
            if let Some(error) = info.error_msg {
                break Verdict::offline(format!("the probe's EasyTier instance failed: {error}"));
            }
            // EasyTier tries each address family in turn and reports a
            // ConnectError per family. The verdict is decided early only when
            // every family the name resolved to has failed definitively.
            let mut definitive_families: Vec<&str> = Vec::new();
            let mut rejections = 0;
            for (_, event) in &info.events {
                if let GlobalCtxEvent::ConnectError(_, family, message) = event {
                    let failure = classify_connect_error(message);
                    if failure.definitive && !definitive_families.contains(&family.as_str()) {
                        definitive_families.push(family.as_str());
                    }
                    if failure.rejected {
                        rejections += 1;
                    }
                    last_failure = Some(failure);
                }
            }
            if let Some(failure) = &last_failure {
                if (failure.definitive && families.iter().all(|f| definitive_families.contains(f)))
                    || (failure.rejected && rejections >= REJECTIONS_FOR_VERDICT)
                {
                    break Verdict::offline(failure.text.clone());
                }
            }
        }
        if Instant::now() >= deadline {
            let secs = timeout.as_secs_f64();
            break Verdict::offline(match last_failure {
                Some(failure) => {
                    format!("timed out after {secs:.1}s; last error: {}", failure.text)
                }
                None => format!("timed out after {secs:.1}s without an answer from the node"),
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    verdict.elapsed = started.elapsed();
    // Dropping the instance stops its runtime and joins its thread.
    drop(instance);
    verdict
}

/// Resolves the peer's host the way EasyTier will, so that an unknown name is
/// a fast verdict (EasyTier itself retries silently) and so that the checker
/// knows which address families EasyTier is going to try.
///
/// A name that does not exist is a verdict at once. A resolver that cannot
/// answer right now (EAI_AGAIN: no DNS server reachable, a timeout) says
/// nothing about the peer, so the lookup is retried until `deadline` rather
/// than reporting a peer Offline for one lost DNS packet.
fn resolve(peer: &Peer, deadline: Instant) -> Result<Vec<&'static str>, String> {
    use std::net::ToSocketAddrs;
    let mut pause = Duration::from_millis(250);
    let addrs = loop {
        match (peer.host.as_str(), peer.port).to_socket_addrs() {
            Ok(addrs) => break addrs,
            Err(e) if is_temporary_resolver_failure(&e) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "name not resolved: {} (the resolver kept failing until the timeout: {e})",
                        peer.host
                    ));
                }
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(format!("name not resolved: {} ({e})", peer.host)),
        }
    };
    let mut families = Vec::new();
    for addr in addrs {
        let family = if addr.is_ipv4() { "V4" } else { "V6" };
        if !families.contains(&family) {
            families.push(family);
        }
    }
    if families.is_empty() {
        return Err(format!("name not resolved: {} has no address", peer.host));
    }
    Ok(families)
}

/// std reports getaddrinfo failures only as text: `gai_strerror` of the
/// code. Rust programs never call `setlocale`, so the text is the C
/// locale's, and EAI_AGAIN reads as one of these (glibc, musl).
fn is_temporary_resolver_failure(error: &std::io::Error) -> bool {
    let text = error.to_string();
    [
        "Temporary failure in name resolution",
        "could not be resolved at this time",
    ]
    .iter()
    .any(|t| text.contains(t))
}

/// Looks for the peer among the directly connected ones.
fn judge(info: &NetworkInstanceRunningInfo, expected: Role, peer: &Peer) -> Option<Verdict> {
    for pair in &info.peer_route_pairs {
        let Some(conn_peer) = &pair.peer else {
            continue;
        };
        if conn_peer.conns.is_empty() {
            continue;
        }
        let is_public = pair
            .route
            .feature_flag
            .map(|f| f.is_public_server)
            .unwrap_or(false);
        let latency_us = conn_peer
            .conns
            .iter()
            .filter_map(|c| c.stats.as_ref().map(|s| s.latency_us))
            .filter(|us| *us > 0)
            .min();
        let answered_as = if is_public {
            Role::PublicServer
        } else {
            Role::Member
        };
        if answered_as != expected {
            let error = match expected {
                Role::Member => format!(
                    "the node answered as a public relay, not as a member of network {:?}",
                    peer.network_name
                ),
                Role::PublicServer => {
                    "the node answered as a network member, not as a public relay".to_string()
                }
            };
            return Some(Verdict::offline(error));
        }
        return Some(Verdict {
            status: Some(Status::Online),
            latency_us,
            remote_version: Some(pair.route.version.clone()).filter(|v| !v.is_empty()),
            remote_hostname: Some(pair.route.hostname.clone()).filter(|h| !h.is_empty()),
            error: None,
            elapsed: Duration::ZERO,
        });
    }
    None
}

struct Failure {
    text: String,
    /// Nothing will change before the timeout (refused, unreachable).
    definitive: bool,
    /// The node took the connection and closed it during the handshake.
    rejected: bool,
}

/// Turns EasyTier's connect error into plain words, and says whether it decides
/// the verdict at once (nothing will change before the timeout).
fn classify_connect_error(message: &str) -> Failure {
    let lower = message.to_ascii_lowercase();
    let definitive = |text: &str| Failure {
        text: text.to_string(),
        definitive: true,
        rejected: false,
    };
    if lower.contains("connection refused") {
        return definitive("connection refused");
    } else if lower.contains("network is unreachable") {
        return definitive("network unreachable");
    } else if lower.contains("no route to host") || lower.contains("host is unreachable") {
        return definitive("host unreachable");
    }
    if lower.contains("conn closed during wait handshake") || lower.contains("secret") {
        return Failure {
            text: "rejected by the node during the handshake (wrong network name or secret, or the node does not serve this network)".to_string(),
            definitive: false,
            rejected: true,
        };
    }
    let text =
        if lower.contains("timeout") || lower.contains("timed out") || lower.contains("elapsed") {
            "connection timed out".to_string()
        } else {
            format!("connection failed: {}", first_line(message))
        };
    Failure {
        text,
        definitive: false,
        rejected: false,
    }
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_connect_errors() {
        let refused = classify_connect_error("io error: Connection refused (os error 111)");
        assert_eq!(refused.text, "connection refused");
        assert!(refused.definitive);
        let timeout = classify_connect_error("connect timeout");
        assert!(!timeout.definitive);
    }
}
