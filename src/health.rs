//! The daemon's own health: what its threads report (heartbeat, database writes, backend answers), judged for /health, systemd's STATUS= and `status --check`.
//!
//! The threads call small functions here (one line each, where they learn
//! something); the HTTP thread and the main loop read the verdict. Nothing
//! here blocks: atomics, and two short-lived locks. The main loop also
//! records a snapshot (`DaemonState`) in the database every few seconds, so
//! that `easytier-probe status`, another process, sees the same verdict.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock;
use crate::config::DaemonConfig;

/// The main loop turns at least once a second; this long without a turn
/// means it is stuck.
const MAIN_LOOP_STUCK: Duration = Duration::from_secs(30);

/// How often the daemon records its state (`DaemonState`) for `status`.
/// A writer that has not gone round its loop (it wakes every second) for
/// this long is stuck: a busy timeout is 5 s, a big batch a few more.
pub const WRITER_STUCK: Duration = Duration::from_secs(60);

pub const STATE_EVERY: Duration = Duration::from_secs(10);
/// `status --check` counts a daemon whose record is older than this as not
/// running (three records missed).
pub const STATE_STALE: Duration = Duration::from_secs(30);

/// How old the last successful fetch or report may be before the probe is
/// unhealthy: three intervals (a failure backs off up to one interval) and
/// 10 s for the request itself.
pub fn stale_limit(interval: Duration) -> Duration {
    interval * 3 + Duration::from_secs(10)
}

/// What the daemon is, fixed at its start.
#[derive(Debug, Clone)]
struct Settings {
    mode: &'static str,
    region: Option<String>,
    backend: Option<String>,
    fetch_limit: Option<Duration>,
    report_limit: Option<Duration>,
}

/// The last answer (or absence of one) from the backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendAnswer {
    /// `GET /peers` or `PUT /nodes/status`.
    pub request: String,
    /// The HTTP status; None when no answer came (connection failed, timeout).
    pub status: Option<u16>,
    pub at_ms: i64,
}

/// Everything the threads report. One process-wide instance (`HEALTH`);
/// tests make their own.
pub struct Health {
    settings: OnceLock<Settings>,
    listen: OnceLock<String>,
    started_ms: AtomicI64,
    main_loop_ms: AtomicI64,
    /// When the writer's current failure spell began; 0 while it writes.
    refusing_since_ms: AtomicI64,
    /// When the writer last went round its loop (it does every second).
    writer_beat_ms: AtomicI64,
    last_fetch_ms: AtomicI64,
    last_report_ms: AtomicI64,
    /// Unsent results as the reporter last counted them; -1 unknown.
    outbox: AtomicI64,
    peers: AtomicUsize,
    offline: AtomicUsize,
    stopping: AtomicBool,
    ended: Mutex<Vec<String>>,
    /// The last answer to each kind of request.
    backend: Mutex<Vec<BackendAnswer>>,
}

pub static HEALTH: Health = Health::new();

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub const fn new() -> Health {
        Health {
            settings: OnceLock::new(),
            listen: OnceLock::new(),
            started_ms: AtomicI64::new(0),
            main_loop_ms: AtomicI64::new(0),
            refusing_since_ms: AtomicI64::new(0),
            writer_beat_ms: AtomicI64::new(0),
            last_fetch_ms: AtomicI64::new(0),
            last_report_ms: AtomicI64::new(0),
            outbox: AtomicI64::new(-1),
            peers: AtomicUsize::new(0),
            offline: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            ended: Mutex::new(Vec::new()),
            backend: Mutex::new(Vec::new()),
        }
    }

    /// The daemon starts: its mode and the limits that follow from it.
    pub fn init(&self, config: &DaemonConfig, now_ms: i64) {
        let d = config.distributed.as_ref();
        let _ = self.settings.set(Settings {
            mode: if d.is_some() {
                "distributed"
            } else {
                "standalone"
            },
            region: d.and_then(|d| d.region.clone()),
            backend: d.map(|d| d.backend_base_url.clone()),
            fetch_limit: d.map(|d| stale_limit(d.peer_fetch_interval)),
            report_limit: d.map(|d| stale_limit(d.status_report_interval)),
        });
        self.started_ms.store(now_ms, Ordering::Relaxed);
        self.main_loop_ms.store(now_ms, Ordering::Relaxed);
        self.writer_beat_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Whether systemd's watchdog may be fed: every thread is alive, none
    /// is stuck in a step past its limit (`progress`), and the writer,
    /// which every result goes through, has gone round its loop within
    /// `WRITER_STUCK`. The backend's state plays no part: an outage there
    /// is no reason for a restart. Why not, when not.
    pub fn watchdog_refusal(&self, now_ms: i64) -> Option<String> {
        if let Some(name) = lock(&self.ended).first() {
            return Some(format!("the {name} thread has ended"));
        }
        if let Some(stuck) = crate::progress::overdue() {
            return Some(stuck);
        }
        let idle = secs_between(self.writer_beat_ms.load(Ordering::Relaxed), now_ms);
        (idle > WRITER_STUCK.as_secs())
            .then(|| format!("the store writer has made no progress for {idle} s"))
    }

    /// Why the probe is unhealthy at `now_ms`; empty when it is healthy.
    pub fn problems(&self, now_ms: i64) -> Vec<String> {
        let mut problems = Vec::new();
        if self.stopping.load(Ordering::Relaxed) {
            problems.push("stopping".to_string());
        }
        for name in lock(&self.ended).iter() {
            problems.push(format!("the {name} thread has ended"));
        }
        let idle = secs_between(self.main_loop_ms.load(Ordering::Relaxed), now_ms);
        if idle > MAIN_LOOP_STUCK.as_secs() {
            problems.push(format!("the main loop has not run for {idle} s"));
        }
        if let Some(stuck) = self
            .watchdog_refusal(now_ms)
            .filter(|p| !p.ends_with("has ended"))
        {
            problems.push(stuck);
        }
        let refusing = self.refusing_since_ms.load(Ordering::Relaxed);
        if refusing > 0 {
            problems.push(format!(
                "the database refuses writes (for {} s)",
                secs_between(refusing, now_ms)
            ));
        }
        if let Some(s) = self.settings.get() {
            let started = self.started_ms.load(Ordering::Relaxed);
            let late = [
                ("peer fetch", &self.last_fetch_ms, s.fetch_limit),
                ("status report", &self.last_report_ms, s.report_limit),
            ];
            for (what, last, limit) in late {
                let Some(limit) = limit else { continue };
                let last = last.load(Ordering::Relaxed);
                let age = secs_between(if last > 0 { last } else { started }, now_ms);
                if age > limit.as_secs() {
                    problems.push(match last {
                        0 => format!(
                            "no successful {what} since the start {age} s ago (limit {} s)",
                            limit.as_secs()
                        ),
                        _ => format!(
                            "no successful {what} for {age} s (limit {} s)",
                            limit.as_secs()
                        ),
                    });
                }
            }
        }
        problems
    }

    /// The snapshot the main loop records for `status`.
    pub fn state(&self, now_ms: i64) -> DaemonState {
        let settings = self.settings.get();
        let at = |a: &AtomicI64| Some(a.load(Ordering::Relaxed)).filter(|ms| *ms > 0);
        DaemonState {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            mode: settings.map_or("standalone", |s| s.mode).to_string(),
            region: settings.and_then(|s| s.region.clone()),
            backend: settings.and_then(|s| s.backend.clone()),
            listen: self.listen.get().cloned(),
            started_ms: self.started_ms.load(Ordering::Relaxed),
            seen_ms: now_ms,
            stopped: self.stopping.load(Ordering::Relaxed),
            peers: self.peers.load(Ordering::Relaxed),
            offline: self.offline.load(Ordering::Relaxed),
            outbox: Some(self.outbox.load(Ordering::Relaxed)).filter(|n| *n >= 0),
            last_fetch_ms: at(&self.last_fetch_ms),
            last_report_ms: at(&self.last_report_ms),
            backend_answers: lock(&self.backend).clone(),
            problems: self.problems(now_ms),
        }
    }

    pub fn mode(&self) -> &'static str {
        self.settings.get().map_or("standalone", |s| s.mode)
    }

    pub fn started_ms(&self) -> i64 {
        self.started_ms.load(Ordering::Relaxed)
    }

    /// Unix milliseconds of the last successful peer fetch and status report (0: never).
    pub fn last_success_ms(&self) -> (i64, i64) {
        (
            self.last_fetch_ms.load(Ordering::Relaxed),
            self.last_report_ms.load(Ordering::Relaxed),
        )
    }

    pub fn thread_ended(&self, name: &str) {
        lock(&self.ended).push(name.to_string());
    }

    pub fn writer_refusing(&self, refusing: bool, now_ms: i64) {
        let since = if refusing { now_ms.max(1) } else { 0 };
        self.refusing_since_ms.store(since, Ordering::Relaxed);
    }

    pub fn backend_answer(&self, request: &str, status: Option<u16>, now_ms: i64) {
        let answer = BackendAnswer {
            request: request.to_string(),
            status,
            at_ms: now_ms,
        };
        let mut answers = lock(&self.backend);
        match answers.iter_mut().find(|a| a.request == request) {
            Some(last) => *last = answer,
            None => answers.push(answer),
        }
    }
}

/// The daemon as `status` sees it: recorded by the main loop in the
/// database (`store::KEY_DAEMON_STATE`) every few seconds and at the stop.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonState {
    pub pid: u32,
    pub version: String,
    pub mode: String,
    pub region: Option<String>,
    /// The backend's base URL (it never holds credentials: see `config`).
    pub backend: Option<String>,
    /// Where the HTTP listener listens, if it does.
    pub listen: Option<String>,
    pub started_ms: i64,
    /// When the daemon recorded this (it does every `STATE_EVERY`).
    pub seen_ms: i64,
    /// Recorded by a daemon that was stopping.
    pub stopped: bool,
    pub peers: usize,
    pub offline: usize,
    pub outbox: Option<i64>,
    pub last_fetch_ms: Option<i64>,
    pub last_report_ms: Option<i64>,
    /// The last answer to each kind of request (`GET /peers`, `PUT /nodes/status`).
    pub backend_answers: Vec<BackendAnswer>,
    /// Why the daemon found itself unhealthy; empty when healthy.
    pub problems: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn secs_between(from_ms: i64, to_ms: i64) -> u64 {
    (to_ms - from_ms).max(0) as u64 / 1000
}

// The hooks the threads call, one line each, on the process-wide instance.

/// The daemon starts (`daemon::run`).
pub fn init(config: &DaemonConfig) {
    HEALTH.init(config, clock::now_ms());
}

/// The HTTP listener is bound (its port may have been chosen by the system).
pub fn listening(addr: &str) {
    let _ = HEALTH.listen.set(addr.to_string());
}

/// The main loop turned; `peers` are checked, `offline` of them Offline now.
/// The store writer went round its loop.
pub fn writer_beat() {
    HEALTH
        .writer_beat_ms
        .store(crate::clock::now_ms(), Ordering::Relaxed);
}

pub fn main_loop_turned(peers: usize, offline: usize) {
    HEALTH
        .main_loop_ms
        .store(clock::now_ms(), Ordering::Relaxed);
    HEALTH.peers.store(peers, Ordering::Relaxed);
    HEALTH.offline.store(offline, Ordering::Relaxed);
}

/// A long-lived thread ended (`thread::ExitGuard`).
pub fn thread_ended(name: &str) {
    HEALTH.thread_ended(name);
}

/// The store writer starts or stops failing to write.
pub fn writer_refusing(refusing: bool) {
    HEALTH.writer_refusing(refusing, clock::now_ms());
}

/// A complete peer list came (or the backend said it is unchanged).
pub fn fetch_succeeded() {
    HEALTH
        .last_fetch_ms
        .store(clock::now_ms(), Ordering::Relaxed);
}

/// The backend accepted a status report.
pub fn report_succeeded() {
    HEALTH
        .last_report_ms
        .store(clock::now_ms(), Ordering::Relaxed);
}

/// The reporter counted the unsent results.
pub fn outbox_counted(waiting: i64) {
    HEALTH.outbox.store(waiting, Ordering::Relaxed);
}

/// The daemon begins its ordered stop.
pub fn stopping() {
    HEALTH.stopping.store(true, Ordering::Relaxed);
}

/// The line systemd shows (`systemctl status`): peers, Offline, outbox, problems.
pub fn status_line(now_ms: i64) -> String {
    let h = &HEALTH;
    let mut line = format!(
        "{} peers, {} Offline",
        h.peers.load(Ordering::Relaxed),
        h.offline.load(Ordering::Relaxed)
    );
    let outbox = h.outbox.load(Ordering::Relaxed);
    line.push_str(&format!(", outbox {}", outbox.max(0)));
    let problems = h.problems(now_ms);
    if !problems.is_empty() {
        line.push_str(&format!("; unhealthy: {}", problems.join("; ")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(args: &[&str]) -> DaemonConfig {
        let mut v = vec!["easytier-probe".to_string()];
        v.extend(args.iter().map(|s| s.to_string()));
        let env: [(&str, &str); 0] = [];
        match crate::config::parse_args(&v)
            .unwrap()
            .into_config(&env)
            .unwrap()
        {
            Config::Daemon(d) => *d,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_fresh_standalone_daemon_is_healthy_until_something_fails() {
        let h = Health::new();
        h.init(&config(&["--peer", "tcp://h:1"]), 1_000_000);
        assert!(h.problems(1_005_000).is_empty());
        h.writer_refusing(true, 1_010_000);
        assert_eq!(
            h.problems(1_022_000),
            ["the database refuses writes (for 12 s)"]
        );
        h.writer_refusing(false, 1_023_000);
        assert!(h.problems(1_024_000).is_empty());
        // The main loop turns at least once a second.
        assert_eq!(
            h.problems(1_000_000 + 31_000),
            ["the main loop has not run for 31 s"]
        );
        h.thread_ended("probe-3");
        h.stopping.store(true, Ordering::Relaxed);
        let p = h.problems(1_001_000);
        assert_eq!(p, ["stopping", "the probe-3 thread has ended"]);
    }

    #[test]
    fn the_watchdog_is_fed_only_while_threads_live_and_the_writer_moves() {
        let h = Health::new();
        h.init(&config(&["--peer", "tcp://h:1"]), 1_000_000);
        assert_eq!(h.watchdog_refusal(1_030_000), None);
        // No beat from the writer for over a minute: stuck.
        let why = h.watchdog_refusal(1_061_000).expect("a stuck writer");
        assert!(why.contains("store writer"), "{why}");
        h.writer_beat_ms.store(1_060_000, Ordering::Relaxed);
        assert_eq!(h.watchdog_refusal(1_061_000), None);
        h.thread_ended("reporter");
        let why = h.watchdog_refusal(1_061_000).expect("a thread gone");
        assert!(why.contains("reporter"), "{why}");
    }

    #[test]
    fn distributed_mode_wants_recent_fetches_and_reports() {
        let h = Health::new();
        let c = config(&[
            "--distributed-mode",
            "--backend-base-url",
            "http://b.example/api",
            "--node-token",
            "t",
            "--peer-fetch-interval",
            "5",
            "--status-report-interval",
            "10",
        ]);
        h.init(&c, 0);
        // Limits: 3 * 5 + 10 = 25 s for the fetch, 3 * 10 + 10 = 40 s for reports.
        assert!(h.problems(25_000).is_empty());
        let p = h.problems(26_000);
        assert_eq!(
            p,
            ["no successful peer fetch since the start 26 s ago (limit 25 s)"]
        );
        h.last_fetch_ms.store(20_000, Ordering::Relaxed);
        h.last_report_ms.store(1_000, Ordering::Relaxed);
        let now = 42_000;
        h.main_loop_ms.store(now, Ordering::Relaxed);
        assert_eq!(
            h.problems(now),
            ["no successful status report for 41 s (limit 40 s)"]
        );
        let state = h.state(now);
        assert_eq!(state.mode, "distributed");
        assert_eq!(state.backend.as_deref(), Some("http://b.example/api"));
        assert_eq!(state.last_fetch_ms, Some(20_000));
        assert!(!format!("{state:?}").contains("\"t\""), "no token");
    }
}
