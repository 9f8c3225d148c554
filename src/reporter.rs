//! The reporter thread: `PUT /nodes/status` with the probe's summary and the outbox, acknowledged through the writer.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{after, select, Receiver, Sender};

use crate::backend::{BackendClient, Metadata, StatusReport};
use crate::backoff::Backoff;
use crate::store::{self, StoreMsg};
use crate::thread::{ExitWatch, ThreadHandle};

#[derive(Debug, Clone)]
pub struct ReporterOptions {
    pub db_path: PathBuf,
    pub interval: Duration,
    pub batch_size: usize,
    pub region: Option<String>,
    pub probe_id: String,
    pub started: Instant,
}

enum Command {
    /// Make one last attempt, finishing before the deadline, then exit.
    Final { deadline: Instant },
}

pub struct ReporterHandle {
    commands: Option<Sender<Command>>,
    thread: ThreadHandle,
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How long the writer may take to confirm an acknowledgement.
const ACK_WAIT: Duration = Duration::from_secs(10);

impl ReporterHandle {
    /// Asks for one last report bounded by `budget` and joins the thread,
    /// waiting until `deadline` at most: a report already in flight when
    /// the stop came may hold the thread for its whole request timeout. False
    /// when the thread was left running (its request dies with the process;
    /// results it sent without a recorded acknowledgement go again next time).
    pub fn shutdown(mut self, budget: Duration, deadline: Instant) -> bool {
        if let Some(commands) = self.commands.take() {
            let _ = commands.send(Command::Final {
                deadline: (Instant::now() + budget).min(deadline),
            });
        }
        self.thread.join_by(deadline)
    }
}

pub fn spawn(
    client: BackendClient,
    options: ReporterOptions,
    store: Sender<StoreMsg>,
    watch: Option<&ExitWatch>,
) -> anyhow::Result<ReporterHandle> {
    let (commands, command_rx) = crossbeam_channel::unbounded();
    let thread = ThreadHandle::spawn("reporter", watch, move || {
        Reporter {
            client,
            options,
            store,
        }
        .run(command_rx)
    })?;
    Ok(ReporterHandle {
        commands: Some(commands),
        thread,
    })
}

struct Reporter {
    client: BackendClient,
    options: ReporterOptions,
    store: Sender<StoreMsg>,
}

/// What one report achieved.
struct Sent {
    results: usize,
}

impl Reporter {
    fn run(self, commands: Receiver<Command>) {
        let mut backoff = Backoff::new(FIRST_BACKOFF, self.options.interval);
        // The first report goes out at once: it tells the backend this probe is up.
        let mut next = Instant::now();
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            select! {
                recv(commands) -> cmd => {
                    if let Ok(Command::Final { deadline }) = cmd {
                        self.final_attempt(deadline);
                    }
                    return;
                },
                recv(after(wait)) -> _ => {}
            }
            // `select!` picks at random among ready arms: while a backlog
            // drains (`wait` is zero) a stop could lose that draw again and
            // again, each loss costing a whole report.
            if let Ok(Command::Final { deadline }) = commands.try_recv() {
                self.final_attempt(deadline);
                return;
            }
            match self.report_once(None) {
                Ok(sent) => {
                    backoff.reset();
                    // A full batch means more backlog: send the next one right away.
                    next = if sent.results >= self.options.batch_size {
                        Instant::now()
                    } else {
                        Instant::now() + self.options.interval
                    };
                }
                Err(e) => {
                    let auth = e
                        .downcast_ref::<crate::backend::BackendError>()
                        .is_some_and(|b| b.is_auth());
                    let delay = if auth {
                        self.options.interval
                    } else {
                        backoff.next_delay()
                    };
                    if auth {
                        log::error!(
                            "status report: {e:#}; results stay buffered, next try in {}s",
                            delay.as_secs()
                        );
                    } else {
                        log::warn!(
                            "status report failed: {e:#}; results stay buffered, retrying in {:.1}s",
                            delay.as_secs_f64()
                        );
                    }
                    next = Instant::now() + delay;
                }
            }
        }
    }

    /// On shutdown: send what is buffered until the deadline, one batch at a time.
    fn final_attempt(&self, deadline: Instant) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(100) {
                log::info!("final status report: out of time; unsent results stay in the database");
                return;
            }
            match self.report_once(Some(left)) {
                Ok(sent) if sent.results >= self.options.batch_size => continue,
                Ok(_) => return,
                Err(e) => {
                    log::warn!(
                        "final status report failed: {e:#}; unsent results stay in the database"
                    );
                    return;
                }
            }
        }
    }

    fn report_once(&self, timeout: Option<Duration>) -> anyhow::Result<Sent> {
        // A fresh read-only connection per report: cheap next to an HTTP
        // request, and it never holds a WAL snapshot between reports.
        let conn = store::open_ro(&self.options.db_path)?;
        let summary = store::summary(&conn)?;
        let results = store::outbox_batch(&conn, self.options.batch_size)?;
        drop(conn);
        let range = results
            .first()
            .map(|f| f.seq)
            .zip(results.last().map(|l| l.seq));
        let report = StatusReport {
            status: "Online",
            response_time: summary.mean_response_ms,
            metadata: Metadata {
                version: env!("CARGO_PKG_VERSION"),
                total_monitored_nodes: summary.total_monitored,
                healthy_nodes: summary.healthy,
                region: self.options.region.clone(),
                probe_id: self.options.probe_id.clone(),
                easytier_version: easytier::VERSION,
                uptime_seconds: self.options.started.elapsed().as_secs(),
                buffered_results: summary.buffered,
                dropped_results: summary.dropped,
                unsupported_peers: summary.unsupported,
            },
            results,
        };
        self.client.put_status(&report, timeout)?;
        let count = report.results.len();
        if let Some((first, last)) = range {
            let (done, confirmed) = crossbeam_channel::bounded(1);
            self.store
                .send_timeout(StoreMsg::Ack { first, last, done }, ACK_WAIT)
                .map_err(|_| anyhow::anyhow!("the store writer is gone or not keeping up"))?;
            let committed = confirmed
                .recv_timeout(ACK_WAIT)
                .context("the store writer did not confirm the acknowledgement")?;
            if !committed {
                // Delivered but not recorded: the batch goes again later
                // (the backend sees it twice, which `seq` lets it tell).
                anyhow::bail!("the database did not record the acknowledgement");
            }
            log::debug!("reported {count} results (seq {first}..={last})");
        }
        Ok(Sent { results: count })
    }
}
