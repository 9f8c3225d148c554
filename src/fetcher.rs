//! The peer fetcher thread: polls `GET /peers`, backs off on failure, hands complete lists to the main loop.

use std::time::{Duration, Instant};

use crossbeam_channel::{after, select, Receiver, Sender};

use crate::backend::{BackendClient, FetchOutcome};
use crate::backoff::Backoff;
use crate::peer::{self, Peer};
use crate::thread::{ExitWatch, ThreadHandle};

/// A complete, validated peer round.
#[derive(Debug)]
pub struct PeerUpdate {
    pub peers: Vec<Peer>,
    pub etag: Option<String>,
}

pub enum Command {
    /// Fetch at once (SIGHUP).
    FetchNow,
}

pub struct FetcherHandle {
    commands: Option<Sender<Command>>,
    thread: ThreadHandle,
}

/// First retry delay after a failure; doubles up to the fetch interval.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// A fetch asked for (SIGHUP) comes at least this long after a good round,
/// so a burst of signals is one fetch however it is spread.
const MIN_ASKED_GAP: Duration = Duration::from_secs(2);
/// A `Retry-After` is honoured up to this many fetch intervals.
const RETRY_AFTER_CAP_INTERVALS: u32 = 10;

impl FetcherHandle {
    pub fn fetch_now(&self) {
        if let Some(c) = &self.commands {
            let _ = c.send(Command::FetchNow);
        }
    }

    /// Stops the fetcher. A request in flight is not waited for beyond
    /// `grace`: the fetcher writes nothing, so leaving it to die with the
    /// process loses nothing and keeps shutdown fast.
    pub fn shutdown(mut self, grace: Duration) {
        self.commands.take();
        self.thread.join_by(Instant::now() + grace);
    }
}

pub fn spawn(
    client: BackendClient,
    interval: Duration,
    etag: Option<String>,
    updates: Sender<PeerUpdate>,
    watch: Option<&ExitWatch>,
) -> anyhow::Result<FetcherHandle> {
    let (commands, command_rx) = crossbeam_channel::unbounded();
    let thread = ThreadHandle::spawn("peer-fetcher", watch, move || {
        run(client, interval, etag, command_rx, updates)
    })?;
    Ok(FetcherHandle {
        commands: Some(commands),
        thread,
    })
}

fn run(
    client: BackendClient,
    interval: Duration,
    mut etag: Option<String>,
    commands: Receiver<Command>,
    updates: Sender<PeerUpdate>,
) {
    let mut backoff = Backoff::new(FIRST_BACKOFF, interval);
    let mut next = Instant::now();
    // The earliest moment a fetch asked for (SIGHUP) may go: the end of the
    // current backoff, `Retry-After` or authentication wait; after a good
    // round, `MIN_ASKED_GAP` after it.
    let mut not_before = Instant::now();
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        select! {
            recv(commands) -> cmd => match cmd {
                Ok(Command::FetchNow) => {
                    next = asked_fetch(&commands, next, not_before);
                    continue;
                }
                Err(_) => return,
            },
            recv(after(wait)) -> _ => {}
        }
        let delay = match client.fetch_peers(etag.as_deref()) {
            Ok(outcome) => {
                if let FetchOutcome::Peers { etag: new_etag, .. } = &outcome {
                    etag = new_etag.clone();
                }
                if !hand_over(outcome, &updates) {
                    return;
                }
                crate::health::fetch_succeeded();
                backoff.reset();
                not_before = Instant::now() + MIN_ASKED_GAP;
                next = Instant::now() + interval;
                continue;
            }
            Err(e) if e.is_auth() => {
                // Not a tight loop: a wrong key stays wrong until someone fixes it.
                log::error!(
                    "peer fetch: {e}; keeping the last good peer list, next try in {}s",
                    interval.as_secs()
                );
                interval
            }
            Err(e) => {
                let delay = backoff.next_delay();
                let cap = interval * RETRY_AFTER_CAP_INTERVALS;
                let delay = e
                    .retry_after()
                    .map_or(delay, |asked| delay.max(asked.min(cap)));
                log::warn!(
                    "peer fetch failed: {e}; keeping the last good peer list, retrying in {:.1}s",
                    delay.as_secs_f64()
                );
                delay
            }
        };
        next = Instant::now() + delay;
        not_before = next;
    }
}

/// SIGHUP: one fetch as soon as the backoff allows. Signals that came
/// meanwhile, or while a fetch is already due, collapse into it. Returns
/// the new time of the next fetch.
fn asked_fetch(commands: &Receiver<Command>, next: Instant, not_before: Instant) -> Instant {
    let collapsed = commands.try_iter().count();
    let asked = not_before.max(Instant::now());
    if asked < next {
        let wait = asked.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            log::info!("fetching the peer list now, as asked");
        } else {
            log::info!(
                "fetching the peer list in {:.1}s, as asked, when the backoff ends",
                wait.as_secs_f64()
            );
        }
        asked
    } else {
        log::debug!(
            "a fetch is already due; {} more request(s) collapsed into it",
            collapsed + 1
        );
        next
    }
}

/// Hands a complete round to the main loop; false when the loop is gone.
fn hand_over(outcome: FetchOutcome, updates: &Sender<PeerUpdate>) -> bool {
    let FetchOutcome::Peers {
        peers,
        etag,
        problems,
        pages,
    } = outcome
    else {
        log::debug!("peer list unchanged (304)");
        return true;
    };
    if let Some(summary) = peer::summarize_problems(&problems) {
        log::warn!("backend peer list: {summary}");
    }
    log::debug!(
        "fetched {} peers in {pages} page(s){}",
        peers.len(),
        if problems.is_empty() {
            String::new()
        } else {
            format!(", {} invalid skipped", problems.len())
        }
    );
    updates.send(PeerUpdate { peers, etag }).is_ok()
}
