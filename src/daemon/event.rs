//! The main loop: one `enum Event`, `next_event` (the only `select!`), and `MainLoop::handle`, one arm per event.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, never, select, Receiver, Sender};

use super::peers;
use super::signals::Signal;
use super::Threads;
use crate::checker::Status;
use crate::config::DaemonConfig;
use crate::peer::Peer;
use crate::peer_list::{PeerList, Retired};
use crate::pool::{Finished, Job, Observed, Plan};
use crate::redact::StagedSecrets;
use crate::schedule::Schedule;
use crate::sdnotify::Notifier;
use crate::store::StoreMsg;
use crate::thread::ThreadExit;

/// Longest the main loop sleeps, so that it never depends on one wake-up source.
const MAX_IDLE: Duration = Duration::from_secs(1);

/// Everything the main loop reacts to.
#[derive(Debug)]
pub enum Event {
    Signal(Signal),
    /// A check ended (or was not run); its peer can be scheduled again.
    Finished(Finished),
    /// A complete peer list from the list thread, prepared off the loop.
    Peers(PeerList),
    /// The list thread's channel closed: it is ending.
    FetcherGone,
    /// A long-lived thread ended while the daemon runs.
    ThreadExited(ThreadExit),
    WatchdogTick,
    /// Time to look for a thread stuck in a step past its limit.
    ProgressTick,
    SummaryTick,
    /// A check may be due, or the idle wake-up.
    Wake,
}

impl Event {
    /// What the event is, in words, for a slow-turn warning.
    pub fn describe(&self) -> &'static str {
        match self {
            Event::Signal(_) => "a signal",
            Event::Finished(_) => "a finished check",
            Event::Peers(_) => "a new peer list",
            Event::FetcherGone => "the end of the list thread",
            Event::ThreadExited(_) => "a thread's end",
            Event::WatchdogTick => "the watchdog",
            Event::ProgressTick => "the progress check",
            Event::SummaryTick => "the cycle summary",
            Event::Wake => "dispatching due checks",
        }
    }
}

/// Why the main loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// A stop signal.
    Stop,
    /// Enough checks for a re-execution.
    Recycle,
    /// A thread ended unexpectedly: stop in order, then exit non-zero.
    Failed(String),
}

/// The channels the main loop waits on. A source that is off is `never()`.
pub struct Sources {
    pub signals: Receiver<Signal>,
    pub finished: Receiver<Finished>,
    pub updates: Receiver<PeerList>,
    pub exits: Receiver<ThreadExit>,
    pub watchdog: Receiver<Instant>,
    pub progress: Receiver<Instant>,
    pub summary: Receiver<Instant>,
}

/// Waits for the next event, for `wait` at most.
pub fn next_event(sources: &Sources, wait: Duration) -> Event {
    select! {
        recv(sources.signals) -> s => match s {
            Ok(signal) => Event::Signal(signal),
            // The signal thread never ends; if it did, stopping is safest.
            Err(_) => Event::Signal(Signal::Stop(0)),
        },
        recv(sources.exits) -> e => match e {
            Ok(exit) => Event::ThreadExited(exit),
            Err(_) => Event::Wake,
        },
        recv(sources.finished) -> f => match f {
            Ok(f) => Event::Finished(f),
            Err(_) => Event::Wake,
        },
        recv(sources.updates) -> u => match u {
            Ok(u) => Event::Peers(u),
            Err(_) => Event::FetcherGone,
        },
        recv(sources.watchdog) -> _ => Event::WatchdogTick,
        recv(sources.progress) -> _ => Event::ProgressTick,
        recv(sources.summary) -> _ => Event::SummaryTick,
        recv(after(wait)) -> _ => Event::Wake,
    }
}

#[derive(Default)]
struct CycleStats {
    online: u64,
    offline: u64,
}

/// The scheduling state the main loop owns.
pub struct MainLoop {
    pub schedule: Schedule,
    pub store: Sender<StoreMsg>,
    confirm_offline: u32,
    version_refresh: Duration,
    /// What the last full check of each Online peer saw, and when.
    pub observed: HashMap<i64, (Observed, Instant)>,
    /// Peers not checked (unsupported transport), to warn once per change.
    pub skipped: HashSet<i64>,
    pub last_status: HashMap<i64, Status>,
    /// Stored with each list (see `store::KEY_PEERS_SOURCE`).
    pub peers_source: Option<String>,
    /// Jobs handed to the pool and not finished: the peer as dispatched and
    /// its cancel flag, set when the peer is removed or changed meanwhile.
    pub jobs: HashMap<i64, (Arc<Peer>, Arc<AtomicBool>)>,
    cycle: CycleStats,
    /// Checks finished by this process, for the recycle.
    checks_done: u64,
    /// The last list's redaction, waiting for the checks in hand that
    /// still need a secret it would forget.
    pub pending_secrets: Option<StagedSecrets>,
    /// What the loop let go, handed to the list thread after each event.
    pub to_free: Retired,
}

impl MainLoop {
    pub fn new(config: &DaemonConfig, store: Sender<StoreMsg>) -> MainLoop {
        MainLoop {
            schedule: Schedule::new(config.check_interval),
            store,
            confirm_offline: config.confirm_offline,
            version_refresh: config.version_refresh,
            observed: HashMap::new(),
            skipped: HashSet::new(),
            last_status: HashMap::new(),
            peers_source: peers::source_key(config),
            jobs: HashMap::new(),
            cycle: CycleStats::default(),
            checks_done: 0,
            pending_secrets: None,
            to_free: Retired::default(),
        }
    }

    /// Runs until a stop, a recycle or a failure.
    pub fn run(
        &mut self,
        config: &DaemonConfig,
        threads: &Threads,
        sources: &mut Sources,
        notifier: &Notifier,
    ) -> Exit {
        // The event being handled and when its turn began.
        let mut turn: Option<(&'static str, Instant)> = None;
        loop {
            if self.checks_done >= config.recycle_after_checks {
                log::info!(
                    "{} checks done: re-executing to return the memory EasyTier keeps per check",
                    self.checks_done
                );
                return Exit::Recycle;
            }
            let wait = self.dispatch(threads, Instant::now());
            self.publish(config);
            if let Some((event, began)) = turn.take() {
                super::watch::turn_ended(event, began.elapsed());
            }
            let event = next_event(sources, wait);
            turn = Some((event.describe(), Instant::now()));
            let exit = self.handle(event, config, threads, sources, notifier);
            if !self.to_free.is_empty() {
                threads.fetcher.free(std::mem::take(&mut self.to_free));
            }
            if let Some(exit) = exit {
                return exit;
            }
        }
    }

    fn handle(
        &mut self,
        event: Event,
        config: &DaemonConfig,
        threads: &Threads,
        sources: &mut Sources,
        notifier: &Notifier,
    ) -> Option<Exit> {
        match event {
            Event::Signal(Signal::Stop(n)) => {
                log::info!(
                    "signal {n}: stopping; {} checks still running",
                    self.schedule.in_flight()
                );
                return Some(Exit::Stop);
            }
            Event::Signal(Signal::Reload) => self.reload(config, threads),
            Event::Finished(f) => self.finished(f),
            Event::Peers(list) => self.apply_peers(list, true),
            // The thread's own exit event follows and decides.
            Event::FetcherGone => sources.updates = never(),
            Event::ThreadExited(exit) => {
                let how = if exit.panicked { "panicked" } else { "ended" };
                log::error!(
                    "the {} thread {how} unexpectedly; stopping so that the service manager can restart the probe",
                    exit.name
                );
                return Some(Exit::Failed(format!(
                    "the {} thread {how} unexpectedly",
                    exit.name
                )));
            }
            // Fed only while every thread is alive and the writer makes
            // progress: otherwise systemd's WatchdogSec restarts the probe.
            Event::WatchdogTick => {
                match crate::health::HEALTH.watchdog_refusal(crate::clock::now_ms()) {
                    None => notifier.watchdog(),
                    Some(why) => log::error!("not feeding the watchdog: {why}"),
                }
            }
            // A stuck thread is treated as a dead one: stop in order, exit
            // status 1, and the service manager starts a fresh probe.
            Event::ProgressTick => {
                if let Some(stuck) = crate::progress::overdue() {
                    log::error!(
                        "{stuck}; stopping so that the service manager can restart the probe"
                    );
                    return Some(Exit::Failed(stuck));
                }
            }
            Event::SummaryTick => {
                self.log_cycle();
                notifier.status(&crate::health::status_line(crate::clock::now_ms()));
            }
            Event::Wake => {}
        }
        None
    }

    /// SIGHUP: the list thread re-reads the peers (standalone) or fetches
    /// the list now (distributed); the list comes back as `Event::Peers`.
    fn reload(&mut self, config: &DaemonConfig, threads: &Threads) {
        if config.distributed.is_some() {
            log::info!("SIGHUP: fetching the peer list now");
        } else {
            log::info!("SIGHUP: reading the peers again");
        }
        threads.fetcher.fetch_now();
    }

    /// Hands due checks to idle workers and says how long the loop may
    /// sleep. With every worker busy, due peers wait for a `Finished`
    /// event, which wakes the loop; sleeping until `next_due` (already
    /// past) would spin.
    fn dispatch(&mut self, threads: &Threads, now: Instant) -> Duration {
        for peer in self.schedule.due(now, threads.pool.capacity()) {
            let id = peer.id;
            let cancelled = Arc::new(AtomicBool::new(false));
            // A peer already Offline is not confirmed again: no doubled
            // load on a node that is down for long.
            let confirm = match self.last_status.get(&id) {
                Some(Status::Offline) => 0,
                _ => self.confirm_offline,
            };
            let job = Job {
                peer: peer.clone(),
                cancelled: cancelled.clone(),
                confirm,
                plan: self.plan(id, now),
            };
            if !threads.pool.try_submit(job) {
                return MAX_IDLE;
            }
            self.schedule.dispatched(id, now);
            self.jobs.insert(id, (peer, cancelled));
        }
        self.schedule
            .next_due()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(MAX_IDLE)
            .min(MAX_IDLE)
    }

    /// Quick, carrying the version over, while the peer stays Online and
    /// its last full check is recent; full for a peer without one, one
    /// that was Offline (it may come back with another version), or one
    /// whose version is older than `--version-refresh`.
    fn plan(&self, id: i64, now: Instant) -> Plan {
        let quick = self
            .schedule
            .peer(id)
            .is_some_and(crate::checker::quick_applies);
        match (self.last_status.get(&id), self.observed.get(&id)) {
            (Some(Status::Online), Some((observed, at)))
                if quick && now.saturating_duration_since(*at) < self.version_refresh =>
            {
                Plan::Quick(observed.clone())
            }
            _ => Plan::Full,
        }
    }

    pub fn finished(&mut self, f: Finished) {
        self.schedule.finished(f.peer_id);
        let job = self.jobs.remove(&f.peer_id);
        if self.pending_secrets.is_some() {
            self.install_pending_secrets();
        }
        let Some(status) = f.status else { return };
        if let Some(observed) = f.observed {
            self.observed.insert(f.peer_id, (observed, Instant::now()));
        }
        self.checks_done += 1;
        match status {
            Status::Online => self.cycle.online += 1,
            Status::Offline => self.cycle.offline += 1,
        }
        // One line per change of verdict (and for a first Offline); an
        // ordinary check writes nothing at the default level.
        let previous = self.last_status.insert(f.peer_id, status);
        if previous == Some(status) || (previous.is_none() && status == Status::Online) {
            return;
        }
        let who = match &job {
            Some((peer, _)) => format!("peer {} {:?} ({})", peer.id, peer.name, peer.uri()),
            None => format!("peer {}", f.peer_id),
        };
        match status {
            Status::Online => log::info!("{who} is Online again"),
            Status::Offline => log::info!(
                "{who} {}: {}",
                if previous.is_some() {
                    "went Offline"
                } else {
                    "is Offline"
                },
                f.error.as_deref().unwrap_or("unknown error")
            ),
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
