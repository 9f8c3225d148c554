//! The peer fetcher thread: polls `GET /peers`, backs off on failure, hands complete lists to the main loop.

use std::time::{Duration, Instant};

use crossbeam_channel::{after, select, Receiver, Sender};

use crate::backend::{BackendClient, FetchOutcome};
use crate::backoff::Backoff;
use crate::peer::Peer;
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
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        select! {
            recv(commands) -> cmd => match cmd {
                Ok(Command::FetchNow) => {}
                Err(_) => return,
            },
            recv(after(wait)) -> _ => {}
        }
        match client.fetch_peers(etag.as_deref()) {
            Ok(FetchOutcome::NotModified) => {
                log::debug!("peer list unchanged (304)");
                backoff.reset();
                next = Instant::now() + interval;
            }
            Ok(FetchOutcome::Peers {
                peers,
                etag: new_etag,
                problems,
                pages,
            }) => {
                for problem in &problems {
                    log::warn!("backend peer list: skipped invalid entry: {problem}");
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
                etag = new_etag.clone();
                if updates
                    .send(PeerUpdate {
                        peers,
                        etag: new_etag,
                    })
                    .is_err()
                {
                    return;
                }
                backoff.reset();
                next = Instant::now() + interval;
            }
            Err(e) if e.is_auth() => {
                // Not a tight loop: a wrong key stays wrong until someone fixes it.
                log::error!(
                    "peer fetch: {e}; keeping the last good peer list, next try in {}s",
                    interval.as_secs()
                );
                next = Instant::now() + interval;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                log::warn!(
                    "peer fetch failed: {e}; keeping the last good peer list, retrying in {:.1}s",
                    delay.as_secs_f64()
                );
                next = Instant::now() + delay;
            }
        }
    }
}
