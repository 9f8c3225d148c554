//! The daemon: wires the threads and channels, runs the scheduling loop, and shuts down in order.
//!
//! ```text
//! signals ─► main loop ◄─ fetcher (distributed)      workers ─► store writer ◄─ reporter
//!               └─ due peers ─► bounded job queue ─► workers ─► finished ─► main loop
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{after, never, select, tick, Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::backend::BackendClient;
use crate::checker::{self, CheckOptions, Status};
use crate::config::{DaemonConfig, UsageError};
use crate::fetcher::{self, PeerUpdate};
use crate::peer::{self, Peer, Protocol};
use crate::probe::{Finished, Job, ProbePool};
use crate::reporter::{self, ReporterOptions};
use crate::sdnotify::Notifier;
use crate::store::{self, StoreMsg, StoredPeer, WriterOptions};

/// Longest the main loop sleeps, so that it never depends on one wake-up source.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// Budget of the last status report on shutdown.
const FINAL_REPORT_BUDGET: Duration = Duration::from_secs(5);
/// Everything after a stop signal fits in this, below the unit's
/// TimeoutStopSec=30 with room for the process to exit.
const DEFAULT_STOP_BUDGET: Duration = Duration::from_secs(25);
/// Overrides the number above, in seconds (for a unit with another
/// TimeoutStopSec, and for tests).
pub const STOP_BUDGET_ENV: &str = "EASYTIER_PROBE_STOP_BUDGET_SECS";
/// EasyTier 2.0.3 keeps about 1 KB per instance for the life of the process
/// (a global map of peer-center data that is never cleaned). After this many
/// checks the daemon stops cleanly and re-executes itself, which returns that
/// memory: at 1,000 checks a minute, once every 100 minutes, ~100 MB at most.
const DEFAULT_RECYCLE_AFTER_CHECKS: u64 = 100_000;
/// Overrides the number above (for tests, and for operators who measure otherwise).
pub const RECYCLE_ENV: &str = "EASYTIER_PROBE_RECYCLE_AFTER_CHECKS";

/// Why the main loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Stop,
    Recycle,
}

#[derive(Debug, Clone, Copy)]
enum Signal {
    Stop(i32),
    Reload,
}

/// Registers the handlers and turns signals into events. A second stop
/// signal exits at once, for an operator who will not wait for running checks.
fn spawn_signal_thread() -> anyhow::Result<Receiver<Signal>> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stops = 0;
            for signal in signals.forever() {
                let event = if signal == SIGHUP {
                    Signal::Reload
                } else {
                    stops += 1;
                    if stops >= 2 {
                        eprintln!("easytier-probe: second stop signal, exiting at once");
                        std::process::exit(128 + signal);
                    }
                    Signal::Stop(signal)
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(rx)
}

/// Reads the peers file: an unreadable or malformed file is an error, an
/// invalid entry is a warning.
pub fn read_peers_file(path: &Path) -> anyhow::Result<Vec<Peer>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the peers file {}", path.display()))?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).with_context(|| {
        format!(
            "the peers file {} is not a JSON array of peer objects",
            path.display()
        )
    })?;
    let (peers, problems) = peer::validate_list(list);
    for problem in problems {
        log::warn!("peers file {}: skipped invalid {problem}", path.display());
    }
    Ok(peers)
}

/// The last good list from the backend, and its ETag, if they came from the
/// backend URL and region in use now: a list for another region must not be
/// checked and reported under this one, nor its ETag answered with 304.
fn cached_peers(
    conn: &rusqlite::Connection,
    source: Option<&str>,
) -> anyhow::Result<(Vec<Peer>, Option<String>)> {
    let cached = store::load_active_peers(conn)?;
    if cached.is_empty() {
        return Ok((cached, None));
    }
    if store::get_state(conn, store::KEY_PEERS_SOURCE)?.as_deref() != source {
        log::info!(
            "the stored list of {} peers came from another backend, region or the standalone mode; waiting for the backend's list",
            cached.len()
        );
        return Ok((Vec::new(), None));
    }
    log::info!(
        "checking {} peers from the last good list until the backend answers",
        cached.len()
    );
    Ok((cached, store::get_state(conn, store::KEY_PEERS_ETAG)?))
}

/// The standalone peer set: the file's peers, then `--peer` ones.
fn standalone_peers(config: &DaemonConfig) -> anyhow::Result<Vec<Peer>> {
    let mut peers = match &config.peers_file {
        Some(path) => read_peers_file(path)?,
        None => Vec::new(),
    };
    for peer in &config.cli_peers {
        if peers.iter().any(|p| p.id == peer.id) {
            log::warn!(
                "--peer {}: id {} is already in the peers file; skipped",
                peer.uri(),
                peer.id
            );
        } else {
            peers.push(peer.clone());
        }
    }
    Ok(peers)
}

pub fn run(config: DaemonConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    if let Some(d) = &config.distributed {
        crate::logging::add_secret(d.node_token.expose());
        if let Some(key) = &d.api_key {
            crate::logging::add_secret(key.expose());
        }
    }
    // A bad peers file is a usage error, found before any thread starts.
    let initial = match config.distributed {
        None => Some(
            standalone_peers(&config)
                .map_err(|e| UsageError(format!("{}: {e:#}", config.peers_file_source)))?,
        ),
        Some(_) => None,
    };
    // Before any other thread exists, so every thread inherits the handlers.
    let signals = spawn_signal_thread()?;

    checker::tune_easytier_for_checks();
    let conn = store::open_rw(&config.db_path)?;
    let probe_id = store::probe_id(&conn)?;
    let peers_source = config.distributed.as_ref().map(|d| {
        format!(
            "{} region={}",
            d.backend_base_url,
            d.region.as_deref().unwrap_or("")
        )
    });
    let (initial, etag) = match initial {
        Some(peers) => (peers, None),
        None => cached_peers(&conn, peers_source.as_deref())?,
    };
    let store = store::spawn(
        conn,
        WriterOptions {
            auto_ack: config.distributed.is_none(),
            retention: Duration::from_secs(u64::from(config.retention_days) * 86_400),
            max_buffered: config
                .distributed
                .as_ref()
                .map_or(u64::MAX, |d| d.max_buffered_results),
        },
    )?;
    let short_id = &probe_id[..probe_id.len().min(8)];
    let options = CheckOptions {
        timeout: config.check_timeout,
        probe_network_name: config
            .network_name
            .clone()
            .unwrap_or_else(|| format!("easytier-probe-{short_id}")),
        hostname: format!("easytier-probe-{short_id}"),
    };
    let (finished_tx, finished_rx) = crossbeam_channel::unbounded();
    let pool = ProbePool::spawn(config.workers, options, store.sender(), finished_tx)?;

    let mut main = MainLoop {
        schedule: crate::schedule::Schedule::new(config.check_interval),
        store: store.sender(),
        allow_quic: config.allow_quic,
        skipped: HashSet::new(),
        last_status: HashMap::new(),
        peers_source,
        jobs: HashMap::new(),
        cycle: CycleStats::default(),
        checks_done: 0,
    };
    // A cached list is stored again, with its ETag: while the backend
    // answers 304 no new list comes, and the stored skip reasons must follow
    // this run's settings (--allow-quic), or `status` would show them wrong.
    let persist = config.distributed.is_none() || !initial.is_empty();
    main.apply_peers(initial, etag.clone(), persist);

    let (updates_tx, updates_rx) = crossbeam_channel::unbounded::<PeerUpdate>();
    let (fetcher, reporter) = match &config.distributed {
        Some(d) => {
            let client = |interval| {
                BackendClient::new(
                    &d.backend_base_url,
                    d.node_token.clone(),
                    d.api_key.clone(),
                    d.region.clone(),
                    crate::backend::request_timeout(interval),
                )
            };
            let fetcher = fetcher::spawn(
                client(d.peer_fetch_interval),
                d.peer_fetch_interval,
                etag,
                updates_tx,
            )?;
            let reporter = reporter::spawn(
                client(d.status_report_interval),
                ReporterOptions {
                    db_path: config.db_path.clone(),
                    interval: d.status_report_interval,
                    batch_size: d.report_batch_size,
                    region: d.region.clone(),
                    probe_id: probe_id.clone(),
                    started,
                },
                store.sender(),
            )?;
            (Some(fetcher), Some(reporter))
        }
        None => {
            drop((updates_tx, etag));
            (None, None)
        }
    };

    let notifier = Notifier::new_from_env();
    let mode = if config.distributed.is_some() {
        "distributed"
    } else {
        "standalone"
    };
    log::info!(
        "easytier-probe {} started in {mode} mode: {} peers, every {}s, {} workers, timeout {}s, database {}",
        env!("CARGO_PKG_VERSION"),
        main.schedule.len(),
        config.check_interval.as_secs(),
        config.workers,
        config.check_timeout.as_secs(),
        config.db_path.display()
    );
    notifier.ready(&format!("watching {} peers", main.schedule.len()));
    // At once rather than half a watchdog period from now: after a recycle
    // the last ping came from the previous image, before its shutdown.
    notifier.watchdog();

    let watchdog = notifier.watchdog_interval().map(tick).unwrap_or_else(never);
    let summary_tick = tick(config.check_interval.max(Duration::from_secs(10)));
    let mut updates = if fetcher.is_some() {
        updates_rx
    } else {
        never()
    };
    // Read now: after a stop signal there is no time for surprises.
    let stop_budget = std::env::var(STOP_BUDGET_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .filter(|d| *d > FINAL_REPORT_BUDGET)
        .unwrap_or(DEFAULT_STOP_BUDGET);
    let recycle_after = std::env::var(RECYCLE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_RECYCLE_AFTER_CHECKS);
    let exit = loop {
        if main.checks_done >= recycle_after {
            log::info!(
                "{} checks done: re-executing to return the memory EasyTier keeps per check",
                main.checks_done
            );
            break Exit::Recycle;
        }
        let workers_busy = main.dispatch(&pool, Instant::now());
        // With every worker busy, due peers wait for a `Finished` event,
        // which wakes the loop; sleeping until `next_due` (already past)
        // would spin.
        let wait = if workers_busy {
            MAX_IDLE
        } else {
            main.schedule
                .next_due()
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(MAX_IDLE)
                .min(MAX_IDLE)
        };
        select! {
            recv(signals) -> signal => match signal {
                Ok(Signal::Stop(n)) => {
                    log::info!("signal {n}: stopping; {} checks still running", main.schedule.in_flight());
                    break Exit::Stop;
                }
                Ok(Signal::Reload) => match (&config.distributed, &fetcher) {
                    (None, _) => match standalone_peers(&config) {
                        Ok(peers) => main.apply_peers(peers, None, true),
                        Err(e) => log::warn!("SIGHUP: {e:#}; keeping the current peers"),
                    },
                    (Some(_), Some(f)) => {
                        log::info!("SIGHUP: fetching the peer list now");
                        f.fetch_now();
                    }
                    (Some(_), None) => {}
                },
                Err(_) => break Exit::Stop,
            },
            recv(finished_rx) -> f => if let Ok(f) = f { main.finished(f) },
            recv(updates) -> u => match u {
                Ok(u) => main.apply_peers(u.peers, u.etag, true),
                // Only if the fetcher thread died; checks go on with the
                // current list rather than spinning on a closed channel.
                Err(_) => {
                    log::error!("the peer fetcher stopped; checking the current list until restart");
                    updates = never();
                }
            },
            recv(watchdog) -> _ => notifier.watchdog(),
            recv(summary_tick) -> _ => main.log_cycle(),
            recv(after(wait)) -> _ => {}
        }
    };

    // Shutdown, in dependency order, all of it within the stop budget so that
    // systemd (TimeoutStopSec=30) never has to kill the probe.
    let stop_deadline = Instant::now() + stop_budget;
    match exit {
        // systemd stops watching once it hears STOPPING=1.
        Exit::Stop => notifier.stopping(),
        // A recycle is not a stop: the watchdog keeps running through the
        // shutdown (up to the stop budget) and the next start, so ping at
        // both ends of the shutdown.
        Exit::Recycle => notifier.watchdog(),
    }
    if let Some(f) = fetcher {
        f.shutdown(Duration::from_secs(1));
    }
    // Running checks may finish (each is bounded by the check timeout), but
    // leave the final report its budget.
    let workers_joined = pool.shutdown(stop_deadline - FINAL_REPORT_BUDGET);
    while let Ok(f) = finished_rx.try_recv() {
        main.finished(f);
    }
    if !workers_joined {
        log::warn!(
            "{} checks still running at the stop deadline; their results are not recorded",
            main.schedule.in_flight()
        );
    }
    let (done, flushed) = crossbeam_channel::bounded(1);
    let saved = main
        .store
        .send_deadline(StoreMsg::Flush(done), stop_deadline)
        .is_ok()
        && flushed.recv_deadline(stop_deadline) == Ok(true);
    if !saved {
        log::error!("the last results could not be saved before the exit");
    }
    let reporter_joined = match reporter {
        Some(r) => r.shutdown(FINAL_REPORT_BUDGET, stop_deadline),
        None => true,
    };
    drop(main);
    if workers_joined && reporter_joined {
        if !store.shutdown_by(stop_deadline) {
            log::warn!("the store writer did not finish by the stop deadline");
        }
    } else {
        // A thread left running still holds a store sender, so the writer
        // would wait for it. Everything sent before the flush is committed
        // (WAL); the next start picks the database up as it is.
        log::info!("not waiting for the store writer: a thread is still running");
        store.abandon();
    }
    if exit == Exit::Recycle {
        // A stop signal during a recycle wins: exit instead of starting
        // again. From here on a stop signal ends the process at once (status
        // 0: everything is saved); one that came earlier is in `signals`.
        // Without this, a signal arriving between that look and the exec
        // would be taken by the old handler and lost.
        for signal in [SIGTERM, SIGINT] {
            let always = Arc::new(AtomicBool::new(true));
            signal_hook::flag::register_conditional_shutdown(signal, 0, always)
                .context("cannot arm the stop handler for the re-execution")?;
        }
        if !signals.try_iter().any(|s| matches!(s, Signal::Stop(_))) {
            notifier.watchdog();
            return re_execute();
        }
    }
    log::info!("stopped after {}s", started.elapsed().as_secs());
    Ok(())
}

/// Replaces this process with a fresh copy of itself, same arguments and
/// environment, same PID (so systemd keeps tracking it). Everything lives in
/// the database, which the new process opens again.
fn re_execute() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    // The path, not /proc/self/exe, so the process keeps its name (ps,
    // journald). After a package upgrade the path holds the new binary,
    // which is what a restart should run.
    let exe = std::env::current_exe()
        .map(|p| {
            let text = p.to_string_lossy();
            match text.strip_suffix(" (deleted)") {
                Some(original) => std::path::PathBuf::from(original),
                None => p.clone(),
            }
        })
        .unwrap_or_else(|_| "/proc/self/exe".into());
    let error = std::process::Command::new(exe).arg0(arg0).args(args).exec();
    Err(error).context("cannot re-execute the probe")
}

#[derive(Default)]
struct CycleStats {
    online: u64,
    offline: u64,
}

struct MainLoop {
    schedule: crate::schedule::Schedule,
    store: Sender<StoreMsg>,
    allow_quic: bool,
    /// Peers not checked (unsupported transport), to warn once per change.
    skipped: HashSet<i64>,
    last_status: HashMap<i64, Status>,
    /// Stored with each list (see `store::KEY_PEERS_SOURCE`).
    peers_source: Option<String>,
    /// Jobs handed to the pool and not finished: the peer as dispatched and
    /// its cancel flag, set when the peer is removed or changed meanwhile.
    jobs: HashMap<i64, (Peer, Arc<AtomicBool>)>,
    cycle: CycleStats,
    /// Checks finished by this process, for the recycle.
    checks_done: u64,
}

impl MainLoop {
    /// Takes a complete peer set: stores it, warns about skipped peers, reschedules.
    fn apply_peers(&mut self, peers: Vec<Peer>, etag: Option<String>, persist: bool) {
        let mut checkable = Vec::with_capacity(peers.len());
        let mut stored = Vec::with_capacity(peers.len());
        let mut skipped = Vec::new();
        for peer in peers {
            if let Some(secret) = &peer.network_secret {
                crate::logging::add_secret(secret);
            }
            let skip_reason = (peer.protocol == Protocol::Quic && !self.allow_quic).then(|| {
                "quic checks give false Offline verdicts against 2.6.x nodes (see --allow-quic)"
                    .to_string()
            });
            if skip_reason.is_some() {
                skipped.push(peer.clone());
            } else {
                checkable.push(peer.clone());
            }
            stored.push(StoredPeer { peer, skip_reason });
        }
        let skipped_ids: HashSet<i64> = skipped.iter().map(|p| p.id).collect();
        if !skipped.is_empty() && skipped_ids != self.skipped {
            let names: Vec<String> = skipped
                .iter()
                .map(|p| format!("{} ({})", p.name, p.uri()))
                .collect();
            log::warn!(
                "not checking {} quic peer(s), shown as unsupported: quic checks give false Offline verdicts against current (2.6.x) nodes; pass --allow-quic for nodes running 2.0.x: {}",
                skipped.len(),
                names.join(", ")
            );
        }
        self.skipped = skipped_ids;
        if persist
            && self
                .store
                .send(StoreMsg::ReplacePeers {
                    peers: stored,
                    etag,
                    source: self.peers_source.clone(),
                })
                .is_err()
        {
            log::error!("the store writer is gone; the new peer list is not saved");
        }
        let changes = self.schedule.replace(checkable, Instant::now());
        let schedule = &self.schedule;
        self.last_status.retain(|id, _| schedule.contains(*id));
        for (id, (peer, cancelled)) in &self.jobs {
            if schedule.peer(*id) != Some(peer) {
                // A queued job is dropped; one already running finishes.
                cancelled.store(true, Ordering::Relaxed);
            }
        }
        // An unchanged list (every fetch without ETag support) is not news.
        let level = if changes == Default::default() {
            log::Level::Debug
        } else {
            log::Level::Info
        };
        log::log!(
            level,
            "peer set: {} checked ({} added, {} removed, {} changed), {} skipped",
            self.schedule.len(),
            changes.added,
            changes.removed,
            changes.updated,
            self.skipped.len()
        );
    }

    /// Hands due checks to idle workers. True when a due check found every
    /// worker busy: it waits for a worker to finish.
    fn dispatch(&mut self, pool: &ProbePool, now: Instant) -> bool {
        for peer in self.schedule.due(now) {
            let id = peer.id;
            let cancelled = Arc::new(AtomicBool::new(false));
            let job = Job {
                peer: peer.clone(),
                cancelled: cancelled.clone(),
            };
            if !pool.try_submit(job) {
                return true;
            }
            self.schedule.dispatched(id, now);
            self.jobs.insert(id, (peer, cancelled));
        }
        false
    }

    fn finished(&mut self, f: Finished) {
        self.schedule.finished(f.peer_id);
        self.jobs.remove(&f.peer_id);
        let Some(status) = f.status else { return };
        self.checks_done += 1;
        match status {
            Status::Online => self.cycle.online += 1,
            Status::Offline => self.cycle.offline += 1,
        }
        let previous = self.last_status.insert(f.peer_id, status);
        if previous.is_some_and(|p| p != status) {
            match status {
                Status::Online => log::info!("peer {} is Online again", f.peer_id),
                Status::Offline => log::info!(
                    "peer {} went Offline: {}",
                    f.peer_id,
                    f.error.as_deref().unwrap_or("unknown error")
                ),
            }
        }
    }

    fn log_cycle(&mut self) {
        let c = std::mem::take(&mut self.cycle);
        log::info!(
            "since the last summary: {} checks, {} Online, {} Offline; {} peers watched, {} running now",
            c.online + c.offline,
            c.online,
            c.offline,
            self.schedule.len(),
            self.schedule.in_flight()
        );
    }
}
