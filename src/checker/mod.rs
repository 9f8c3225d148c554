//! The blocking check: start a short-lived EasyTier instance, join the peer, read the verdict, tear down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use easytier::common::config::{ConfigLoader, NetworkIdentity, PeerConfig, TomlConfigLoader};
use easytier::launcher::NetworkInstance;
use serde::Serialize;

use crate::clock;
use crate::peer::{Peer, Role};

pub mod closed_conns;
mod resolve;
mod verdict;

pub use verdict::ErrorKind;
use verdict::{EventView, Expectation, Verdict};

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

/// How far a check goes before an Online verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// Until EasyTier's route table shows the node (about a second: its
    /// once-a-second refresh): round-trip latency, version and host name.
    Full,
    /// Until the handshake has held for `QUICK_GRACE`: the latency is the
    /// handshake's; version and host name are not observed.
    Quick,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Full => "full",
            CheckKind::Quick => "quick",
        }
    }
}

/// How long a completed handshake must hold before a quick check calls the
/// node Online. A 2.6 node that drops the guest (private mode, relay
/// whitelist) closed the connection at most 1.7 ms after its handshake
/// answer in 100 measured drops over tcp, ws and wss (BENCHMARKS.md): the
/// grace is that with a margin of about 60.
pub const QUICK_GRACE: Duration = Duration::from_millis(100);

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
    /// Full check: smallest measured round-trip of the connection; quick
    /// check: the handshake's time (dial to handshake); microseconds.
    pub latency_us: Option<u64>,
    /// `rtt` or `handshake`: which latency `latency_us` is.
    pub latency_kind: Option<&'static str>,
    /// `latency_us` rounded up to whole milliseconds (the backend's unit).
    pub response_time: Option<u64>,
    pub remote_version: Option<String>,
    pub remote_hostname: Option<String>,
    /// True when version and host name were observed by this check; false
    /// when a quick check carries over those of the last full one.
    pub version_observed: bool,
    pub check_kind: CheckKind,
    pub role: &'static str,
    /// Why the peer is Offline, in plain words. Never contains a secret.
    pub error: Option<String>,
    /// The same in one word, for machines; None when Online.
    pub error_kind: Option<ErrorKind>,
    /// Checks this verdict took: 2 when an Offline was confirmed by a second one.
    pub attempts: u32,
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

/// Whether a quick check can be trusted for this peer. A node that drops a
/// guest it does not relay (2.6 private mode, relay whitelist) closes a tcp,
/// ws or wss connection right after its handshake answer, which the probe
/// sees at once; over udp the drop shows only as a route that never comes
/// (measured against 2.6.4), so a udp (or quic) relay gets a full check.
/// A member's handshake completes only with the right network secret, on
/// every transport.
pub fn quick_applies(peer: &Peer) -> bool {
    use crate::peer::Protocol;
    peer.role() == Role::Member
        || matches!(peer.protocol, Protocol::Tcp | Protocol::Ws | Protocol::Wss)
}

/// A full check (see `CheckKind`).
pub fn check(peer: &Peer, opts: &CheckOptions) -> CheckResult {
    check_as(peer, opts, CheckKind::Full)
}

/// Checks one peer and blocks until there is a verdict: Online as soon as the
/// peer is seen connected in the expected role (at the handshake for a quick
/// check, in the route table for a full one), Offline as soon as a definitive
/// failure is reported, or Offline when `timeout` runs out.
pub fn check_as(peer: &Peer, opts: &CheckOptions, kind: CheckKind) -> CheckResult {
    let kind = match kind {
        CheckKind::Quick if !quick_applies(peer) => CheckKind::Full,
        kind => kind,
    };
    let started = Instant::now();
    let checked_at_ms = clock::now_ms();
    let role = peer.role();
    log::debug!(
        "checking peer {} ({}) as {}",
        peer.id,
        peer.uri(),
        role.as_str()
    );
    let joined_as = match role {
        Role::Member => peer.network_name.as_str(),
        Role::PublicServer => opts.probe_network_name.as_str(),
    };
    let expected = Expectation {
        role,
        peer,
        joined_as,
    };
    // The time to the verdict, without the instance's teardown.
    let (verdict, elapsed) = match resolve::resolve(peer, started + opts.timeout) {
        Ok(families) => match build_config(peer, opts) {
            Ok(config) => {
                let until = Until {
                    kind,
                    started,
                    timeout: opts.timeout,
                };
                run_instance(config, &expected, &families, &until)
            }
            Err(error) => (
                Verdict::offline(ErrorKind::Internal, error),
                started.elapsed(),
            ),
        },
        Err(error) => (Verdict::offline(ErrorKind::Dns, error), started.elapsed()),
    };
    let status = verdict.status.unwrap_or(Status::Offline);
    CheckResult {
        peer_id: peer.id,
        uri: peer.uri(),
        status,
        latency_us: verdict.latency_us,
        latency_kind: verdict.latency_us.map(|_| match kind {
            CheckKind::Full => "rtt",
            CheckKind::Quick => "handshake",
        }),
        response_time: verdict.latency_us.map(|us| us.div_ceil(1000)),
        version_observed: verdict.remote_version.is_some(),
        remote_version: verdict.remote_version,
        remote_hostname: verdict.remote_hostname,
        check_kind: kind,
        role: role.as_str(),
        error_kind: match status {
            Status::Online => None,
            Status::Offline => Some(verdict.error_kind.unwrap_or(ErrorKind::Internal)),
        },
        error: verdict.error,
        attempts: 1,
        checked_at: clock::rfc3339(checked_at_ms),
        checked_at_ms,
        duration_ms: elapsed.as_millis() as u64,
    }
}

/// Makes EasyTier dial a configured peer within 20 ms of start instead of on
/// its default 1 s reconnect tick: the connector waits one tick before its
/// first dial too, so the tick is part of every verdict (measured: a refused
/// port 120 ms with a 100 ms tick, 60 ms with 20 ms; quick checks likewise).
/// It also decides how fast a rejected peer is known. Process-wide,
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

const RECONNECT_INTERVAL_MS: u64 = 20;

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

/// When a check may stop: its kind, its start and its timeout.
struct Until {
    kind: CheckKind,
    started: Instant,
    timeout: Duration,
}

fn run_instance(
    config: TomlConfigLoader,
    expected: &Expectation,
    families: &[&'static str],
    until: &Until,
) -> (Verdict, Duration) {
    let started = until.started;
    let deadline = started + until.timeout;
    let mut instance = NetworkInstance::new(config);
    if let Err(e) = instance.start() {
        let error = format!("could not start the probe's EasyTier instance: {e:#}");
        return (
            Verdict::offline(ErrorKind::Internal, error),
            started.elapsed(),
        );
    }
    let verdict = loop {
        let mut view = EventView::default();
        if let Some(info) = instance.get_running_info() {
            if let Some(verdict) = verdict::judge_routes(&info, expected) {
                break verdict;
            }
            if let Some(error) = &info.error_msg {
                break Verdict::offline(
                    ErrorKind::Internal,
                    format!("the probe's EasyTier instance failed: {error}"),
                );
            }
            view = EventView::read(&info);
            let now_us = clock::now_us();
            if let Some(verdict) = view.verdict(expected, families, now_us) {
                break verdict;
            }
            if until.kind == CheckKind::Quick {
                let check_start_us = now_us - started.elapsed().as_micros() as i64;
                if let Some(verdict) = quick_online(&view, now_us, check_start_us) {
                    break verdict;
                }
            }
        }
        if Instant::now() >= deadline {
            break timed_out(&view, until.timeout);
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    let elapsed = started.elapsed();
    // Dropping the instance stops its runtime and joins its thread.
    drop(instance);
    (verdict, elapsed)
}

/// A quick check's Online: a handshake in the expected role (checked by
/// `EventView::verdict` first) that has held for `QUICK_GRACE`.
fn quick_online(view: &EventView, now_us: i64, check_start_us: i64) -> Option<Verdict> {
    let handshake = view.live_handshake(now_us, check_start_us)?;
    (handshake.up_us >= QUICK_GRACE.as_micros() as i64).then(|| Verdict {
        status: Some(Status::Online),
        latency_us: handshake.latency_us,
        ..Verdict::default()
    })
}

/// The verdict at the timeout, saying how far the check got.
fn timed_out(view: &EventView, timeout: Duration) -> Verdict {
    let secs = timeout.as_secs_f64();
    let text = match (&view.last_failure, view.connected()) {
        (_, true) => {
            format!("timed out after {secs:.1}s: connected, but the node never showed up as a peer")
        }
        (Some(failure), false) => {
            format!("timed out after {secs:.1}s; last error: {}", failure.text)
        }
        (None, false) => format!("timed out after {secs:.1}s without an answer from the node"),
    };
    Verdict::offline(ErrorKind::Timeout, text)
}
