//! The Prometheus metrics: one process-wide registry, fed by one-line hooks from the threads that know, encoded by prometheus-client.
//!
//! Hooks: `check_finished` (a worker, after a verdict), `retain_peers` (the
//! main loop, after a new peer set), `backend_answer` (the backend client,
//! after each request), `scheduling` and `main_loop_turn` (the main loop).
//! Figures that live in the database (outbox, dropped, set aside) and in `health` are read when
//! /metrics is scraped. Names are listed in the README ("Watching the probe").

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::checker::{CheckResult, Status};
use crate::health::HEALTH;
use crate::peer::Peer;

/// The Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Check durations, in seconds: a refused port answers in milliseconds, a
/// healthy check in one to two seconds, a silent peer at the timeout.
/// A turn of the main loop over 0.1 s delays checks and the watchdog.
const TURN_BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

const DURATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];

type GaugeF64 = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    endpoint: &'static str,
    /// The HTTP status, or `none` when no answer came.
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    easytier_version: &'static str,
}

struct Metrics {
    registry: Registry,
    peers: Arc<PeerSeries>,
    check_duration: Histogram,
    main_loop_turn: Histogram,
    workers: Gauge,
    workers_busy: Gauge,
    peers_waiting: Gauge,
    peers_checked: Gauge,
    outbox_results: Gauge,
    outbox_oldest_age: GaugeF64,
    dropped: Counter,
    set_aside: Gauge,
    last_fetch: GaugeF64,
    last_report: GaugeF64,
    healthy: Gauge,
    start_time: GaugeF64,
    backend: Family<BackendLabels, Counter>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            peers: Arc::new(PeerSeries::default()),
            check_duration: Histogram::new(DURATION_BUCKETS),
            main_loop_turn: Histogram::new(TURN_BUCKETS),
            workers: Gauge::default(),
            workers_busy: Gauge::default(),
            peers_waiting: Gauge::default(),
            peers_checked: Gauge::default(),
            outbox_results: Gauge::default(),
            outbox_oldest_age: GaugeF64::default(),
            dropped: Counter::default(),
            set_aside: Gauge::default(),
            last_fetch: GaugeF64::default(),
            last_report: GaugeF64::default(),
            healthy: Gauge::default(),
            start_time: GaugeF64::default(),
            backend: Family::default(),
        };
        let mut registry = Registry::default();
        registry.register_with_unit(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Unit::Seconds,
            m.start_time.clone(),
        );
        let probe = registry.sub_registry_with_prefix("easytier_probe");
        m.register_checks(probe);
        m.register_delivery(probe);
        Metrics { registry, ..m }
    }

    /// The probe, its checks and its workers.
    fn register_checks(&self, p: &mut Registry) {
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                easytier_version: easytier::VERSION,
            })
            .set(1);
        p.register(
            "build_info",
            "Versions of the probe and of the EasyTier library it links (always 1)",
            build,
        );
        p.register(
            "healthy",
            "1 when /health answers 200, 0 when it answers 503",
            self.healthy.clone(),
        );
        p.register_with_unit(
            "check_duration",
            "Time from the start of a check to its verdict",
            Unit::Seconds,
            self.check_duration.clone(),
        );
        p.register_with_unit(
            "main_loop_turn",
            "Time the main loop spent on one event and the dispatch after it; over 0.1 s, checks and the watchdog wait",
            Unit::Seconds,
            self.main_loop_turn.clone(),
        );
        p.register(
            "workers",
            "Checks that can run at once (--workers)",
            self.workers.clone(),
        );
        p.register(
            "workers_busy",
            "Checks running or handed to a worker now",
            self.workers_busy.clone(),
        );
        p.register(
            "peers_waiting",
            "Peers due for a check but waiting for a free worker",
            self.peers_waiting.clone(),
        );
        p.register(
            "peers",
            "Peers being checked (unsupported ones excluded)",
            self.peers_checked.clone(),
        );
        p.register_collector(Box::new(self.peers.clone()));
    }

    /// What goes to the backend, and how it answers.
    fn register_delivery(&self, p: &mut Registry) {
        p.register(
            "outbox_results",
            "Results not yet acknowledged by the backend",
            self.outbox_results.clone(),
        );
        p.register_with_unit(
            "outbox_oldest_age",
            "Age of the oldest result not yet acknowledged (0 when none)",
            Unit::Seconds,
            self.outbox_oldest_age.clone(),
        );
        p.register(
            "results_dropped",
            "Unsent results dropped because the outbox was full (--max-buffered-results)",
            self.dropped.clone(),
        );
        p.register(
            "results_set_aside",
            "Results the backend refused for good, kept aside and not sent again",
            self.set_aside.clone(),
        );
        p.register_with_unit(
            "last_peer_fetch_timestamp",
            "Time of the last successful peer fetch (0: none yet; distributed mode)",
            Unit::Seconds,
            self.last_fetch.clone(),
        );
        p.register_with_unit(
            "last_report_timestamp",
            "Time of the last status report the backend accepted (0: none yet; distributed mode)",
            Unit::Seconds,
            self.last_report.clone(),
        );
        p.register(
            "backend_responses",
            "Answers from the backend by endpoint and HTTP status (code none: no answer)",
            self.backend.clone(),
        );
    }
}

/// What /metrics reads from the database when it is scraped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreFigures {
    /// Results not acknowledged by the backend.
    pub waiting: i64,
    /// When the oldest of them was checked (Unix ms).
    pub oldest_ms: Option<i64>,
    pub dropped: u64,
    pub set_aside: i64,
}

/// The whole exposition, in the Prometheus text format. `store` is None
/// when the database could not be read: those figures keep their last values.
pub fn render(store: Option<&StoreFigures>, now_ms: i64) -> String {
    let m = metrics();
    if let Some(s) = store {
        m.outbox_results.set(s.waiting);
        let age = s.oldest_ms.map_or(0, |t| (now_ms - t).max(0));
        m.outbox_oldest_age.set(age as f64 / 1000.0);
        // The database keeps the total across restarts; the counter follows it.
        let seen = m.dropped.get();
        if s.dropped > seen {
            m.dropped.inc_by(s.dropped - seen);
        }
        m.set_aside.set(s.set_aside);
    }
    let (fetch, report) = HEALTH.last_success_ms();
    m.last_fetch.set(fetch as f64 / 1000.0);
    m.last_report.set(report as f64 / 1000.0);
    m.start_time.set(HEALTH.started_ms() as f64 / 1000.0);
    m.healthy.set(i64::from(HEALTH.problems(now_ms).is_empty()));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &m.registry);
    text
}

// The hooks.

/// A worker recorded a verdict for `peer`.
pub fn check_finished(peer: &Peer, result: &CheckResult) {
    let m = metrics();
    m.check_duration.observe(result.duration_ms as f64 / 1000.0);
    m.peers.record(peer, result);
}

/// The peer set changed: series of peers no longer checked go away.
pub fn retain_peers(ids: Arc<HashSet<i64>>) {
    metrics().peers.retain(ids);
}

/// The backend answered `endpoint` (`peers`, `nodes_status`) with `status`,
/// or did not answer (None). `health` keeps the last one for `status`.
pub fn backend_answer(endpoint: &'static str, status: Option<u16>) {
    let code = status.map_or_else(|| "none".to_string(), |s| s.to_string());
    metrics()
        .backend
        .get_or_create(&BackendLabels { endpoint, code })
        .inc();
    let request = match endpoint {
        "peers" => "GET /peers",
        _ => "PUT /nodes/status",
    };
    HEALTH.backend_answer(request, status, crate::clock::now_ms());
}

/// `backend_answer` for a request's outcome, passed through unchanged.
// ureq's error is large; this only hands it on.
#[allow(clippy::result_large_err)]
pub fn backend_call(
    endpoint: &'static str,
    outcome: Result<ureq::Response, ureq::Error>,
) -> Result<ureq::Response, ureq::Error> {
    let status = match &outcome {
        Ok(response) => Some(response.status()),
        Err(ureq::Error::Status(status, _)) => Some(*status),
        Err(ureq::Error::Transport(_)) => None,
    };
    backend_answer(endpoint, status);
    outcome
}

/// One turn of the main loop took `seconds`.
pub fn main_loop_turn(seconds: f64) {
    metrics().main_loop_turn.observe(seconds);
}

/// The main loop's view of the schedule.
pub fn scheduling(workers: usize, busy: usize, waiting: usize, peers: usize) {
    let m = metrics();
    m.workers.set(workers as i64);
    m.workers_busy.set(busy.min(workers) as i64);
    m.peers_waiting.set(waiting as i64);
    m.peers_checked.set(peers as i64);
}

/// The per-peer series, kept here and encoded at each scrape, so that a
/// peer's series appear together and go away together.
#[derive(Debug, Default)]
struct PeerSeries {
    inner: Mutex<PeerMap>,
}

#[derive(Debug, Default)]
struct PeerMap {
    /// The peers of the current set; None before the first set.
    allowed: Option<Arc<HashSet<i64>>>,
    peers: BTreeMap<i64, PeerFigures>,
}

#[derive(Debug, Clone)]
struct PeerFigures {
    labels: Vec<(&'static str, String)>,
    up: bool,
    latency_us: Option<u64>,
    last_check_ms: i64,
    by_result: BTreeMap<&'static str, u64>,
    by_kind: BTreeMap<&'static str, u64>,
}

impl PeerSeries {
    fn record(&self, peer: &Peer, result: &CheckResult) {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if map.allowed.as_ref().is_some_and(|a| !a.contains(&peer.id)) {
            // Removed while its check ran.
            return;
        }
        let labels = vec![
            ("peer_id", peer.id.to_string()),
            ("name", peer.name.clone()),
            ("uri", result.uri.clone()),
            ("role", result.role.to_string()),
        ];
        let figures = map.peers.entry(peer.id).or_insert_with(|| PeerFigures {
            labels: labels.clone(),
            up: false,
            latency_us: None,
            last_check_ms: 0,
            by_result: BTreeMap::new(),
            by_kind: BTreeMap::new(),
        });
        if figures.labels != labels {
            // Renamed or moved: new series, counted from zero.
            figures.labels = labels;
            figures.by_result.clear();
            figures.by_kind.clear();
        }
        figures.up = result.status == Status::Online;
        figures.latency_us = result.latency_us;
        figures.last_check_ms = result.checked_at_ms;
        let outcome = match result.status {
            Status::Online => "online",
            Status::Offline => "offline",
        };
        *figures.by_result.entry(outcome).or_default() += 1;
        if let Some(kind) = result.error_kind {
            *figures.by_kind.entry(kind.as_str()).or_default() += 1;
        }
    }

    fn retain(&self, ids: Arc<HashSet<i64>>) {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        map.peers.retain(|id, _| ids.contains(id));
        map.allowed = Some(ids);
    }
}

impl Collector for PeerSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A copy, so that a worker recording a verdict never waits for the encoding.
        let copy: Vec<PeerFigures> = {
            let map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            map.peers.values().cloned().collect()
        };
        let peers: Vec<&PeerFigures> = copy.iter().collect();
        family(
            &mut encoder,
            ("peer_up", None, MetricType::Gauge),
            "1 when the latest verdict on the peer is Online, 0 when Offline",
            peers
                .iter()
                .map(|p| (plain(p), ConstGauge::new(i64::from(p.up)))),
        )?;
        family(
            &mut encoder,
            ("peer_latency", Some(Unit::Seconds), MetricType::Gauge),
            "Latency the latest check measured (peers whose latest verdict is Online)",
            peers.iter().filter_map(|p| {
                let us = p.latency_us?;
                Some((plain(p), ConstGauge::new(us as f64 / 1e6)))
            }),
        )?;
        family(
            &mut encoder,
            (
                "peer_last_check_timestamp",
                Some(Unit::Seconds),
                MetricType::Gauge,
            ),
            "Time of the latest verdict on the peer",
            peers
                .iter()
                .map(|p| (plain(p), ConstGauge::new(p.last_check_ms as f64 / 1000.0))),
        )?;
        family(
            &mut encoder,
            ("peer_checks", None, MetricType::Counter),
            "Verdicts on the peer by result (online, offline) since the start",
            peers.iter().flat_map(|p| {
                p.by_result.iter().map(|(r, n)| {
                    (
                        (p.labels.as_slice(), [("result", *r)]),
                        ConstCounter::new(*n),
                    )
                })
            }),
        )?;
        family(
            &mut encoder,
            ("peer_check_errors", None, MetricType::Counter),
            "Offline verdicts on the peer by error kind since the start",
            peers.iter().flat_map(|p| {
                p.by_kind
                    .iter()
                    .map(|(k, n)| ((p.labels.as_slice(), [("kind", *k)]), ConstCounter::new(*n)))
            }),
        )
    }
}

/// A peer's own labels, and no more.
type PlainLabels<'a> = (
    &'a [(&'static str, String)],
    [(&'static str, &'static str); 0],
);

fn plain(p: &PeerFigures) -> PlainLabels<'_> {
    (p.labels.as_slice(), [])
}

/// Encodes one metric family from its samples; nothing when there are none.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    (name, unit, metric_type): (&str, Option<Unit>, MetricType),
    help: &str,
    samples: impl Iterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, unit.as_ref(), metric_type)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::ErrorKind;
    use crate::store::test_support::result;

    fn peer(id: i64, name: &str) -> Peer {
        let mut p = crate::peer::peer_from_uri(&format!("tcp://127.0.0.1:{}", 1000 + id)).unwrap();
        p.id = id;
        p.name = name.into();
        p
    }

    #[test]
    fn peer_series_follow_verdicts_and_the_peer_set() {
        let series = Arc::new(PeerSeries::default());
        let (a, b) = (peer(1, "a"), peer(2, "b \"quoted\""));
        series.retain(Arc::new([1, 2].into_iter().collect()));
        series.record(&a, &result(1, Status::Online, 5_000));
        let mut off = result(2, Status::Offline, 6_000);
        off.error_kind = Some(ErrorKind::Timeout);
        series.record(&b, &off);
        series.record(&b, &off);
        let text = encode_collector(&series);
        assert!(text.contains("easytier_probe_peer_up{peer_id=\"1\",name=\"a\",uri=\"tcp://h:1\",role=\"member\"} 1"), "{text}");
        assert!(
            text.contains("name=\"b \\\"quoted\\\"\""),
            "label values are escaped: {text}"
        );
        assert!(
            text.contains("easytier_probe_peer_latency_seconds{peer_id=\"1\""),
            "{text}"
        );
        assert!(
            !text.contains("easytier_probe_peer_latency_seconds{peer_id=\"2\""),
            "{text}"
        );
        assert!(text.contains("result=\"offline\"} 2"), "{text}");
        assert!(text.contains("easytier_probe_peer_check_errors_total{peer_id=\"2\",name=\"b \\\"quoted\\\"\",uri=\"tcp://h:1\",role=\"member\",kind=\"timeout\"} 2"), "{text}");
        assert!(
            text.contains("easytier_probe_peer_last_check_timestamp_seconds{peer_id=\"2\""),
            "{text}"
        );
        // Peer 2 leaves the set; a late verdict for it does not bring it back.
        series.retain(Arc::new([1].into_iter().collect()));
        series.record(&b, &off);
        let text = encode_collector(&series);
        assert!(!text.contains("peer_id=\"2\""), "{text}");
        // A renamed peer starts new series.
        series.record(&peer(1, "a2"), &result(1, Status::Online, 7_000));
        let text = encode_collector(&series);
        assert!(!text.contains("name=\"a\""), "{text}");
        assert!(
            text.contains("name=\"a2\",uri=\"tcp://h:1\",role=\"member\",result=\"online\"} 1"),
            "{text}"
        );
    }

    fn encode_collector(series: &Arc<PeerSeries>) -> String {
        let mut registry = Registry::with_prefix("easytier_probe");
        registry.register_collector(Box::new(series.clone()));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }
}
