//! The probe worker pool: N named threads, each taking check jobs from a bounded channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use crossbeam_channel::{Sender, TrySendError};

use crate::checker::{self, CheckOptions, Status};
use crate::peer::Peer;
use crate::store::StoreMsg;

/// Sent to the main loop when a check ends, so the peer can be scheduled again.
#[derive(Debug, Clone)]
pub struct Finished {
    pub peer_id: i64,
    /// None when the check was not run (shutdown).
    pub status: Option<Status>,
    pub error: Option<String>,
}

pub struct ProbePool {
    // Drop order: the job sender goes first so that workers see the end of the queue.
    jobs: Option<Sender<Peer>>,
    stopping: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
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
    ) -> anyhow::Result<ProbePool> {
        let (jobs, queue) = crossbeam_channel::bounded::<Peer>(count);
        let stopping = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(count);
        for n in 0..count {
            let queue = queue.clone();
            let results = results.clone();
            let finished = finished.clone();
            let options = options.clone();
            let stopping = stopping.clone();
            let worker = std::thread::Builder::new()
                .name(format!("probe-{n}"))
                .spawn(move || {
                    for peer in queue {
                        // After a stop request, queued checks are not started.
                        if stopping.load(Ordering::Relaxed) {
                            let _ = finished.send(Finished {
                                peer_id: peer.id,
                                status: None,
                                error: None,
                            });
                            continue;
                        }
                        let result = checker::check(&peer, &options);
                        log::debug!(
                            "checked {} ({}): {} {}",
                            peer.name,
                            result.uri,
                            result.status.as_str(),
                            result.error.as_deref().unwrap_or("")
                        );
                        let status = result.status;
                        let error = result.error.clone();
                        // The store outlives the workers; a send error means it died.
                        if results.send(StoreMsg::Result(Box::new(result))).is_err() {
                            log::error!(
                                "the store writer is gone; result for peer {} lost",
                                peer.id
                            );
                        }
                        let _ = finished.send(Finished {
                            peer_id: peer.id,
                            status: Some(status),
                            error,
                        });
                    }
                })
                .context("cannot start a probe worker thread")?;
            workers.push(worker);
        }
        Ok(ProbePool {
            jobs: Some(jobs),
            stopping,
            workers,
        })
    }

    /// Hands a check to a worker without waiting; gives the peer back when all are busy.
    pub fn try_submit(&self, peer: Peer) -> Result<(), Peer> {
        match self.jobs.as_ref().map(|j| j.try_send(peer)) {
            Some(Ok(())) => Ok(()),
            Some(Err(TrySendError::Full(peer) | TrySendError::Disconnected(peer))) => Err(peer),
            None => unreachable!("pool used after shutdown"),
        }
    }

    /// Lets running checks finish (each is bounded by the check timeout),
    /// drops queued ones, and joins every worker. A worker panic is re-raised.
    pub fn shutdown(mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.jobs.take();
        for worker in self.workers.drain(..) {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}
