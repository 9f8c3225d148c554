//! The worker pool: N named threads, each taking check jobs from a bounded channel and running one check at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::checker::{self, CheckKind, CheckOptions, Status};
use crate::peer::Peer;
use crate::store::StoreMsg;
use crate::thread::{ExitWatch, ThreadHandle};

/// Sent to the main loop when a check ends, so the peer can be scheduled again.
#[derive(Debug, Clone)]
pub struct Finished {
    pub peer_id: i64,
    /// None when the check was not run (shutdown).
    pub status: Option<Status>,
    pub error: Option<String>,
    /// What a full check that found the peer Online saw, for the quick
    /// checks that follow.
    pub observed: Option<Observed>,
}

/// A peer's version and host name, as a full check saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub version: Option<String>,
    pub hostname: Option<String>,
}

/// How a job checks its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A full check: waits for the route table, sees version and host name.
    Full,
    /// A quick check, carrying over what the last full check saw.
    Quick(Observed),
}

/// A check handed to a worker. The main loop keeps `cancelled` and sets it
/// when the peer is removed or changed while the job waits in the queue, so
/// that a stale definition is never checked.
pub struct Job {
    pub peer: Arc<Peer>,
    pub cancelled: Arc<AtomicBool>,
    /// How many more checks confirm a failure before Offline is recorded
    /// (`--confirm-offline`; 0 for a peer already Offline).
    pub confirm: u32,
    pub plan: Plan,
}

/// The pause before a failed check is checked again: long enough for a lost
/// packet or a momentary drop to pass, short next to the check interval.
pub const CONFIRM_PAUSE: Duration = Duration::from_secs(2);

/// Beyond its timeout, what one attempt may take before its worker counts
/// as stuck: a name lookup cannot be cut short (with glibc's defaults and
/// three dead nameservers one takes 30 s) and the EasyTier instance is torn
/// down after the verdict (10-100 ms measured).
const ATTEMPT_ALLOWANCE: Duration = Duration::from_secs(60);

/// The longest a job may take: each attempt its timeout and teardown, and
/// the pauses between attempts.
fn job_limit(timeout: Duration, confirm: u32) -> Duration {
    (timeout + ATTEMPT_ALLOWANCE) * (confirm + 1) + CONFIRM_PAUSE * confirm
}

pub struct ProbePool {
    // Drop order: the job sender goes first so that workers see the end of the queue.
    jobs: Option<Sender<Job>>,
    /// Never sent on: dropping it tells every worker to stop (it also ends a
    /// confirmation pause at once).
    stop: Option<Sender<()>>,
    workers: Vec<ThreadHandle>,
}

impl ProbePool {
    /// Starts `count` workers. Results go to the store; `finished` tells the
    /// main loop. The job queue holds at most one waiting job per worker, so
    /// the scheduler, not the queue, decides what runs next.
    pub fn spawn(
        count: usize,
        options: CheckOptions,
        results: Sender<StoreMsg>,
        finished: Sender<Finished>,
        watch: Option<&ExitWatch>,
    ) -> anyhow::Result<ProbePool> {
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(count);
        let (stop, stopping) = crossbeam_channel::bounded::<()>(0);
        let mut workers = Vec::with_capacity(count);
        for n in 0..count {
            let queue = queue.clone();
            let results = results.clone();
            let finished = finished.clone();
            let options = options.clone();
            let stopping = stopping.clone();
            let worker = ThreadHandle::spawn(&format!("probe-{n}"), watch, move || {
                for job in queue {
                    let peer_id = job.peer.id;
                    let outcome = run_job(job, &options, &stopping, &results);
                    // Always answered, even after a panic: otherwise the
                    // peer would count as running and never be checked again.
                    let _ = finished.send(outcome.unwrap_or(Finished {
                        peer_id,
                        status: None,
                        error: None,
                        observed: None,
                    }));
                }
            })?;
            workers.push(worker);
        }
        Ok(ProbePool {
            jobs: Some(jobs),
            stop: Some(stop),
            workers,
        })
    }

    /// How many checks can be in hand at once: one running and one queued
    /// per worker.
    pub fn capacity(&self) -> usize {
        2 * self.workers.len()
    }

    /// Hands a check to a worker without waiting; false when all are busy
    /// (the job is dropped: the schedule still has the peer).
    pub fn try_submit(&self, job: Job) -> bool {
        let jobs = self.jobs.as_ref().expect("pool used after shutdown");
        jobs.try_send(job).is_ok()
    }

    /// Lets running checks finish, drops queued ones, and joins every
    /// worker, waiting until `deadline` at most. False when checks were
    /// still running then: their threads are left to end with the process
    /// (and still hold store senders). A worker panic is re-raised.
    pub fn shutdown(mut self, deadline: Instant) -> bool {
        self.stop.take();
        self.jobs.take();
        let mut all_joined = true;
        for worker in self.workers.drain(..) {
            all_joined &= worker.join_by(deadline);
        }
        all_joined
    }
}

/// Runs one check, confirms a failure if asked, and stores the result.
/// `None` when no verdict was recorded: stopping, cancelled, or the check
/// panicked (logged; the peer is checked again next time).
fn run_job(
    job: Job,
    options: &CheckOptions,
    stopping: &Receiver<()>,
    results: &Sender<StoreMsg>,
) -> Option<Finished> {
    let abandoned = || stopped(stopping) || job.cancelled.load(Ordering::Relaxed);
    // After a stop request, queued checks are not started.
    if abandoned() {
        return None;
    }
    let _step = crate::progress::step("a check", job_limit(options.timeout, job.confirm));
    let peer = &job.peer;
    let kind = match job.plan {
        Plan::Full => CheckKind::Full,
        Plan::Quick(_) => CheckKind::Quick,
    };
    let mut result = check_caught(peer, options, kind)?;
    let mut attempts = 1;
    while result.status == Status::Offline && attempts <= job.confirm {
        log::debug!(
            "peer {} ({}): {}; checking again to confirm in {} s",
            peer.id,
            result.uri,
            result.error.as_deref().unwrap_or("failed"),
            CONFIRM_PAUSE.as_secs()
        );
        // An unconfirmed failure is no verdict: a stop during the pause
        // records nothing, and the peer is checked again after the restart.
        if let Err(RecvTimeoutError::Disconnected) = stopping.recv_timeout(CONFIRM_PAUSE) {
            return None;
        }
        if abandoned() {
            return None;
        }
        // A full check confirms: a second opinion that also sees the
        // version if the node is back.
        result = check_caught(peer, options, CheckKind::Full)?;
        attempts += 1;
    }
    result.attempts = attempts;
    if let (Plan::Quick(carried), CheckKind::Quick) = (&job.plan, result.check_kind) {
        result.remote_version = carried.version.clone();
        result.remote_hostname = carried.hostname.clone();
    }
    let observed = (result.status == Status::Online && result.version_observed).then(|| Observed {
        version: result.remote_version.clone(),
        hostname: result.remote_hostname.clone(),
    });
    log::debug!(
        "checked {} ({}): {} {}",
        peer.name,
        result.uri,
        result.status.as_str(),
        result.error.as_deref().unwrap_or("")
    );
    crate::metrics::check_finished(peer, &result);
    let finished = Finished {
        peer_id: peer.id,
        status: Some(result.status),
        error: result.error.clone(),
        observed,
    };
    // The store outlives the workers; a send error means it died.
    if results.send(StoreMsg::Result(Box::new(result))).is_err() {
        log::error!("the store writer is gone; result for peer {} lost", peer.id);
    }
    Some(finished)
}

fn stopped(stopping: &Receiver<()>) -> bool {
    matches!(stopping.try_recv(), Err(TryRecvError::Disconnected))
}

/// One check; a panic inside it is logged and yields no result.
fn check_caught(
    peer: &Peer,
    options: &CheckOptions,
    kind: CheckKind,
) -> Option<checker::CheckResult> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        checker::check_as(peer, options, kind)
    })) {
        Ok(result) => Some(result),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log::error!(
                "the check of peer {} ({}) failed inside the probe: {what}; no result recorded, it is checked again next time",
                peer.id,
                peer.uri()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_job_is_answered_without_a_check() {
        let (results_tx, results) = crossbeam_channel::unbounded();
        let (finished_tx, finished) = crossbeam_channel::unbounded();
        let options = CheckOptions {
            timeout: std::time::Duration::from_secs(1),
            probe_network_name: "test".into(),
            hostname: "test".into(),
        };
        let pool = ProbePool::spawn(1, options, results_tx, finished_tx, None).unwrap();
        // Loopback: should cancellation break, the check stays on the machine.
        let peer = crate::peer::peer_from_uri("tcp://127.0.0.1:1").unwrap();
        let job = Job {
            peer: Arc::new(peer.clone()),
            cancelled: Arc::new(AtomicBool::new(true)),
            confirm: 1,
            plan: Plan::Full,
        };
        assert!(pool.try_submit(job));
        let f = finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        assert_eq!(f.peer_id, peer.id);
        assert!(f.status.is_none(), "no check ran");
        assert!(pool.shutdown(Instant::now() + std::time::Duration::from_secs(10)));
        assert!(results.try_recv().is_err(), "no result stored");
    }
}
