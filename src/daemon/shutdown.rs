//! The ordered shutdown, all of it within the stop budget so that systemd (TimeoutStopSec=30) never has to kill the probe.
//!
//! Dependency order: the list thread (fetcher or peers reader) stops; the job queue closes, so the workers
//! finish their running checks and exit; the writer commits; the reporter
//! makes its last attempt; the writer exits when its last sender is gone.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::event::{Exit, MainLoop};
use super::Threads;
use crate::pool::Finished;
use crate::sdnotify::Notifier;
use crate::store::StoreMsg;

/// Budget of the last status report on shutdown.
pub const FINAL_REPORT_BUDGET: Duration = Duration::from_secs(5);
/// How long a fetch in flight may delay the stop: it writes nothing, so it
/// can be left to die with the process.
const FETCHER_GRACE: Duration = Duration::from_secs(1);

pub fn shutdown(
    mut main: MainLoop,
    threads: Threads,
    finished: &Receiver<Finished>,
    exit: &Exit,
    notifier: &Notifier,
    stop_budget: Duration,
) {
    let stop_deadline = Instant::now() + stop_budget;
    crate::health::stopping();
    match exit {
        // A recycle is not a stop: the watchdog keeps running through the
        // shutdown (up to the stop budget) and the next start, so ping at
        // both ends of the shutdown.
        Exit::Recycle => notifier.watchdog(),
        // systemd stops watching once it hears STOPPING=1.
        Exit::Stop | Exit::Failed(_) => notifier.stopping(),
    }
    let Threads {
        pool,
        store,
        fetcher,
        reporter,
    } = threads;
    fetcher.shutdown(FETCHER_GRACE);
    // Running checks may finish (each is bounded by the check timeout), but
    // leave the final report its budget.
    let workers_joined = pool.shutdown(stop_deadline - FINAL_REPORT_BUDGET);
    while let Ok(f) = finished.try_recv() {
        main.finished(f);
    }
    if !workers_joined {
        log::warn!(
            "{} checks still running at the stop deadline; their results are not recorded",
            main.schedule.in_flight()
        );
    }
    // Committed by the flush below: `status` sees the daemon stopped.
    main.record_state(crate::clock::now_ms());
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
    if !workers_joined || !reporter_joined {
        // A thread left running still holds a store sender, so the writer
        // would wait for it. Everything sent before the flush is committed
        // (WAL); the next start picks the database up as it is.
        log::info!("not waiting for the store writer: a thread is still running");
    } else if !store.shutdown_by(stop_deadline) {
        log::warn!("the store writer did not finish by the stop deadline");
    }
}
