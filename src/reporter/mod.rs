//! The reporter thread: `PUT /nodes/status` with the probe's summary and the outbox, acknowledged through the writer.
//!
//! What each report carries and what an answer changes is decided by
//! `plan`; this module reads the outbox, sends, and has the writer record
//! acknowledgements and set-aside results.

mod plan;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{after, select, Receiver, Sender};

use crate::backend::{BackendClient, BackendError, Metadata, StatusReport};
use crate::backoff::Backoff;
use crate::store::{self, OutboxResult, StoreMsg};
use crate::thread::{ExitWatch, ThreadHandle};
use plan::{Answer, Carry, Next, Plan, Step};

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
/// A `Retry-After` is honoured up to this many report intervals.
const RETRY_AFTER_CAP_INTERVALS: u32 = 10;
/// Beyond its request and the writer's confirmations, what a report may
/// take before the reporter counts as stuck (a name lookup cannot be cut
/// short: 30 s with glibc's defaults and three dead nameservers).
const STEP_ALLOWANCE: Duration = Duration::from_secs(60);
/// Set-aside results named in one log line.
const SEQS_SHOWN: usize = 10;

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
        let plan = Plan::new(options.interval, options.batch_size);
        Reporter {
            client,
            options,
            store,
            plan,
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
    plan: Plan,
}

/// One report as it goes out.
struct Prepared {
    carry: Carry,
    report: StatusReport,
}

impl Prepared {
    fn seqs(&self) -> Vec<i64> {
        self.report.results.iter().map(|r| r.seq).collect()
    }
}

impl Reporter {
    fn run(mut self, commands: Receiver<Command>) {
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
            let (step, problem) = self.attempt(None);
            let delay = self.delay(&step, &mut backoff);
            if let Some(problem) = problem {
                log_failure(&problem, &step, delay);
            }
            next = Instant::now() + delay;
        }
    }

    /// The longest one report may take: its request, the writer's
    /// confirmations, and room for reading the outbox.
    fn attempt_limit(&self) -> Duration {
        crate::backend::request_timeout(self.options.interval) + 2 * ACK_WAIT + STEP_ALLOWANCE
    }

    /// How long to wait before the next report after `step`.
    fn delay(&self, step: &Step, backoff: &mut Backoff) -> Duration {
        if step.reset_backoff {
            backoff.reset();
        }
        match step.next {
            Next::Now => Duration::ZERO,
            Next::Interval => self.options.interval,
            Next::Backoff { retry_after } => {
                let delay = backoff.next_delay();
                let cap = self.options.interval * RETRY_AFTER_CAP_INTERVALS;
                retry_after.map_or(delay, |asked| delay.max(asked.min(cap)))
            }
        }
    }

    /// On shutdown: send what is buffered until the deadline, one batch at a time.
    fn final_attempt(&mut self, deadline: Instant) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(100) {
                log::info!("final status report: out of time; unsent results stay in the database");
                return;
            }
            let (step, problem) = self.attempt(Some(left));
            if let Some(problem) = problem {
                log::warn!(
                    "final status report failed: {problem}; unsent results stay in the database"
                );
                return;
            }
            if step.next != Next::Now {
                return;
            }
        }
    }

    /// Sends one report and records what its answer means. Returns the
    /// step and, when it failed, why (to log with the delay).
    fn attempt(&mut self, timeout: Option<Duration>) -> (Step, Option<String>) {
        let _step = crate::progress::step("a status report", self.attempt_limit());
        let prepared = match self.prepare() {
            Ok(p) => p,
            Err(e) => return (backoff_step(), Some(format!("{e:#}"))),
        };
        let sent = prepared.seqs();
        let (answer, problem) = match self.client.put_status(&prepared.report, timeout) {
            Ok(()) => (Answer::Accepted, None),
            Err(e) => answer_of(e),
        };
        if answer == Answer::Accepted {
            crate::health::report_succeeded();
        }
        let mut step = self
            .plan
            .answer(prepared.carry, &sent, &answer, Instant::now());
        if answer == Answer::Accepted && !sent.is_empty() {
            if let Err(e) = self.commit(|done| StoreMsg::Ack {
                seqs: sent.clone(),
                done,
            }) {
                // Delivered but not recorded: the batch goes again later
                // (the backend sees it twice, which `seq` lets it tell).
                return (backoff_step(), Some(format!("{e:#}")));
            }
            log::debug!("reported {} results (seq {:?})", sent.len(), sent.first());
        }
        if let Some((seqs, reason)) = step.set_aside.take() {
            self.set_aside(seqs, reason);
        }
        (step, problem)
    }

    /// Reads what the plan says the next report carries, and the summary.
    fn prepare(&mut self) -> anyhow::Result<Prepared> {
        // A fresh read-only connection per report: cheap next to an HTTP
        // request, and it never holds a WAL snapshot between reports.
        let conn = store::open_ro(&self.options.db_path)?;
        let summary = store::summary(&conn)?;
        crate::health::outbox_counted(summary.buffered);
        let (carry, results) = loop {
            let carry = self.plan.carry(Instant::now());
            let results: Vec<OutboxResult> = match carry {
                Carry::Nothing => Vec::new(),
                Carry::Results { lo, hi, limit } => store::outbox_range(&conn, lo, hi, limit)?,
            };
            if results.is_empty() && carry != Carry::Nothing && self.plan.range_exhausted() {
                continue;
            }
            break (carry, results);
        };
        drop(conn);
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
                rejected_results: summary.rejected,
                unsupported_peers: summary.unsupported,
            },
            results,
        };
        Ok(Prepared { carry, report })
    }

    fn set_aside(&self, seqs: Vec<i64>, reason: String) {
        let shown: Vec<String> = seqs.iter().take(SEQS_SHOWN).map(i64::to_string).collect();
        let more = match seqs.len().saturating_sub(SEQS_SHOWN) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        let count = seqs.len();
        match self.commit(|done| StoreMsg::SetAside { seqs, reason: reason.clone(), done }) {
            Ok(()) => log::warn!(
                "the backend refused {count} result(s) for good ({reason}): set aside seq {}{more}; `easytier-probe requeue` queues them again",
                shown.join(", ")
            ),
            // Still waiting in the outbox: refused again, set aside then.
            Err(e) => log::warn!("setting aside refused results failed: {e:#}"),
        }
    }

    /// Has the writer apply `msg` and waits until it is committed.
    fn commit(&self, msg: impl FnOnce(Sender<bool>) -> StoreMsg) -> anyhow::Result<()> {
        let (done, confirmed) = crossbeam_channel::bounded(1);
        self.store
            .send_timeout(msg(done), ACK_WAIT)
            .map_err(|_| anyhow::anyhow!("the store writer is gone or not keeping up"))?;
        let committed = confirmed
            .recv_timeout(ACK_WAIT)
            .context("the store writer did not confirm the update")?;
        anyhow::ensure!(committed, "the database did not record the update");
        Ok(())
    }
}

fn backoff_step() -> Step {
    Step {
        next: Next::Backoff { retry_after: None },
        set_aside: None,
        reset_backoff: false,
    }
}

/// The plan's view of a failed request, and the failure to log (refusals
/// are the plan's to log).
fn answer_of(error: BackendError) -> (Answer, Option<String>) {
    let answer = match &error {
        BackendError::Refused {
            status,
            message,
            rejected_seq,
        } => {
            let reason = if message.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: \"{message}\"")
            };
            if *status == 413 {
                Answer::TooLarge { reason }
            } else {
                Answer::Refused {
                    named: rejected_seq.clone(),
                    reason,
                }
            }
        }
        BackendError::Auth { .. } => Answer::Auth,
        other => Answer::Failed {
            retry_after: other.retry_after(),
        },
    };
    let problem = match answer {
        Answer::TooLarge { .. } | Answer::Refused { .. } => None,
        _ => Some(error.to_string()),
    };
    (answer, problem)
}

fn log_failure(problem: &str, step: &Step, delay: Duration) {
    if step.next == Next::Interval {
        // 401/403: not a tight loop; a wrong token stays wrong until fixed.
        log::error!(
            "status report: {problem}; results stay buffered, next try in {}s",
            delay.as_secs()
        );
    } else {
        log::warn!(
            "status report failed: {problem}; results stay buffered, retrying in {:.1}s",
            delay.as_secs_f64()
        );
    }
}
