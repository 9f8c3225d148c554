//! The daemon: start the threads, run the main loop, shut down in order, and re-execute when it is time.
//!
//! ```text
//! signals ─► main loop ◄─ list thread (fetcher or peers reader)   workers ─► store writer ◄─ reporter
//!               └─ due peers ─► bounded job queue ─► workers ─► finished ─► main loop
//! every thread's end, or a step past its limit (progress.rs) ─► main loop: stop in order, exit status 1
//! ```

mod event;
mod peers;
mod recycle;
mod shutdown;
mod signals;
mod watch;

use std::time::{Duration, Instant};

use crossbeam_channel::{never, tick, Receiver, Sender};

use crate::backend::BackendClient;
use crate::checker::{self, CheckOptions};
use crate::config::{DaemonConfig, DistributedConfig, UsageError};
use crate::fetcher::{self, FetcherHandle, ListSource};
use crate::peer_list::{PeerList, Preparer};
use crate::pool::{Finished, ProbePool};
use crate::reporter::{self, ReporterHandle, ReporterOptions};
use crate::sdnotify::Notifier;
use crate::store::{self, StoreHandle, WriterOptions};
use crate::thread::ExitWatch;
use event::{Exit, MainLoop, Sources};

pub use crate::fetcher::read_peers_file;

/// How often the main loop looks for a thread stuck past its step's limit.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The long-lived threads the main loop drives and the shutdown stops.
pub struct Threads {
    pool: ProbePool,
    store: StoreHandle,
    /// The list thread: the fetcher, or the peers-file reader.
    fetcher: FetcherHandle,
    reporter: Option<ReporterHandle>,
}

pub fn run(config: DaemonConfig) -> anyhow::Result<()> {
    // After a recycle, the previous image's start and schedule.
    let carried = recycle::take_carried();
    let started = carried
        .as_ref()
        .map_or_else(Instant::now, recycle::Carried::started);
    crate::health::init(&config);
    if let Some(d) = &config.distributed {
        crate::logging::add_secret(d.node_token.expose());
        if let Some(key) = &d.api_key {
            crate::logging::add_secret(key.expose());
        }
    }
    // A bad peers file is a usage error, found before any thread starts.
    let standalone = match config.distributed {
        None => Some(
            fetcher::standalone_peers(config.peers_file.as_deref(), &config.cli_peers)
                .map_err(|e| UsageError(format!("{}: {e:#}", config.peers_file_source)))?,
        ),
        Some(_) => None,
    };
    // One daemon per database; like a bad flag, a usage error before any
    // thread starts. Held until the process ends (or re-executes).
    let _lock = store::lock::acquire(&config.db_path)?;
    // Like the peers file: an address that cannot be bound stops the start.
    let listener = crate::http::bind(config.listen)?;
    // Before any other thread exists, so every thread inherits the handlers.
    let signals = signals::spawn()?;
    checker::tune_easytier_for_checks();

    let (exit_watch, exits) = crossbeam_channel::unbounded();
    let (mut main, threads, finished, updates) = start(&config, standalone, &exit_watch, started)?;
    if let Some(carried) = &carried {
        main.schedule.restore_due(&carried.due(), Instant::now());
    }
    let _http = crate::http::start(listener, &config, &exit_watch)?;
    let notifier = Notifier::new_from_env();
    announce_start(&config, &main, &notifier);
    let mut sources = Sources {
        signals: signals.clone(),
        finished: finished.clone(),
        updates,
        exits,
        watchdog: notifier.watchdog_interval().map(tick).unwrap_or_else(never),
        progress: tick(PROGRESS_EVERY),
        summary: tick(config.check_interval.max(Duration::from_secs(10))),
    };
    let exit = main.run(&config, &threads, &mut sources, &notifier);
    // Taken before the shutdown, while the schedule is the loop's.
    let carried_path = match exit {
        Exit::Recycle => recycle::save(&config.db_path, started, &main.schedule)
            .map_err(|e| log::warn!("the recycle starts the schedule afresh: {e:#}"))
            .ok(),
        _ => None,
    };
    drop(exit_watch);
    shutdown::shutdown(
        main,
        threads,
        &finished,
        &exit,
        &notifier,
        config.stop_budget,
    );
    match exit {
        Exit::Failed(what) => anyhow::bail!("{what}; stopped"),
        Exit::Recycle => recycle::re_execute_unless_stopped(&signals, &notifier, carried_path)?,
        Exit::Stop => {}
    }
    log::info!("stopped after {}s", started.elapsed().as_secs());
    Ok(())
}

/// Opens the store and starts every thread; the main loop gets the first
/// peer set (the standalone one, or the cached backend list). Returns the
/// loop, the threads, and the channels of finished checks and peer lists.
fn start(
    config: &DaemonConfig,
    standalone: Option<Vec<crate::peer::Peer>>,
    exit_watch: &ExitWatch,
    started: Instant,
) -> anyhow::Result<(MainLoop, Threads, Receiver<Finished>, Receiver<PeerList>)> {
    // The first start after an upgrade may migrate a large database (40 s
    // for 4 million results): more than the unit's TimeoutStartSec=60.
    Notifier::new_from_env().extend_start(
        Duration::from_secs(30 * 60),
        "opening the database (a first start after an upgrade migrates it)",
    );
    let conn = store::open_rw(&config.db_path)?;
    let probe_id = store::probe_id(&conn)?;
    let (initial, etag) = match standalone {
        Some(peers) => (peers, None),
        None => peers::cached_peers(&conn, peers::source_key(config).as_deref())?,
    };
    let store = store::spawn(conn, writer_options(config), Some(exit_watch))?;
    let (finished_tx, finished) = crossbeam_channel::unbounded();
    let pool = ProbePool::spawn(
        config.workers,
        check_options(config, &probe_id),
        store.sender(),
        finished_tx,
        Some(exit_watch),
    )?;
    let mut main = MainLoop::new(config, store.sender());
    // A cached list is stored again, with its ETag: while the backend
    // answers 304 no new list comes, and the stored skip reasons must follow
    // this run's settings (--allow-quic), or `status` would show them wrong.
    let persist = config.distributed.is_none() || !initial.is_empty();
    // Before the loop runs (what this lets go is handed to the list thread
    // after the loop's first event).
    let mut preparer = Preparer::new(config.allow_quic);
    main.apply_peers(preparer.prepare(initial, etag.clone()), persist);
    let (updates_tx, updates) = crossbeam_channel::unbounded();
    let (fetcher, reporter) = match &config.distributed {
        None => {
            let source = ListSource::Standalone {
                peers_file: config.peers_file.clone(),
                cli_peers: config.cli_peers.clone(),
            };
            let reader = fetcher::spawn(source, preparer, updates_tx, Some(exit_watch))?;
            (reader, None)
        }
        Some(d) => {
            let (fetcher, reporter) = spawn_distributed(
                d, config, &probe_id, etag, preparer, &store, updates_tx, exit_watch, started,
            )?;
            (fetcher, Some(reporter))
        }
    };
    let threads = Threads {
        pool,
        store,
        fetcher,
        reporter,
    };
    Ok((main, threads, finished, updates))
}

/// The fetcher and the reporter, each with its own client (their request
/// timeouts follow their own intervals).
#[allow(clippy::too_many_arguments)]
fn spawn_distributed(
    d: &DistributedConfig,
    config: &DaemonConfig,
    probe_id: &str,
    etag: Option<String>,
    preparer: Preparer,
    store: &StoreHandle,
    updates: Sender<PeerList>,
    exit_watch: &ExitWatch,
    started: Instant,
) -> anyhow::Result<(FetcherHandle, ReporterHandle)> {
    log::info!("backend requests go {}", d.reach.describe());
    let client = |interval| {
        BackendClient::with_reach(
            &d.backend_base_url,
            d.node_token.clone(),
            d.api_key.clone(),
            d.region.clone(),
            crate::backend::request_timeout(interval),
            &d.reach,
        )
    };
    let source = ListSource::Backend {
        client: client(d.peer_fetch_interval),
        interval: d.peer_fetch_interval,
        etag,
    };
    let fetcher = fetcher::spawn(source, preparer, updates, Some(exit_watch))?;
    let options = ReporterOptions {
        db_path: config.db_path.clone(),
        interval: d.status_report_interval,
        batch_size: d.report_batch_size,
        region: d.region.clone(),
        probe_id: probe_id.to_string(),
        started,
    };
    let reporter = reporter::spawn(
        client(d.status_report_interval),
        options,
        store.sender(),
        Some(exit_watch),
    )?;
    Ok((fetcher, reporter))
}

fn writer_options(config: &DaemonConfig) -> WriterOptions {
    WriterOptions {
        auto_ack: config.distributed.is_none(),
        retention: Duration::from_secs(u64::from(config.retention_days) * 86_400),
        raw_retention: Duration::from_secs(u64::from(config.raw_retention_hours) * 3_600),
        max_buffered: config
            .distributed
            .as_ref()
            .map_or(u64::MAX, |d| d.max_buffered_results),
    }
}

/// The probe's identity on the EasyTier network, derived from its stable id.
fn check_options(config: &DaemonConfig, probe_id: &str) -> CheckOptions {
    let short_id = &probe_id[..probe_id.len().min(8)];
    CheckOptions {
        timeout: config.check_timeout,
        probe_network_name: config
            .network_name
            .clone()
            .unwrap_or_else(|| format!("easytier-probe-{short_id}")),
        hostname: format!("easytier-probe-{short_id}"),
    }
}

fn announce_start(config: &DaemonConfig, main: &MainLoop, notifier: &Notifier) {
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
}
