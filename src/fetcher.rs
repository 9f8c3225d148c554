//! The peer fetcher thread: polls `GET /peers`, backs off on failure, hands complete lists to the main loop.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{after, select, Receiver, Sender};

use crate::backend::{BackendClient, FetchOutcome};
use crate::peer::Peer;

/// A complete, validated peer round.
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
    exited: Receiver<()>,
    thread: Option<JoinHandle<()>>,
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
        if self.exited.recv_timeout(grace).is_ok() {
            if let Some(thread) = self.thread.take() {
                if let Err(panic) = thread.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

pub fn spawn(
    client: BackendClient,
    interval: Duration,
    etag: Option<String>,
    updates: Sender<PeerUpdate>,
) -> anyhow::Result<FetcherHandle> {
    let (commands, command_rx) = crossbeam_channel::unbounded();
    let (exited_tx, exited) = crossbeam_channel::bounded(1);
    let thread = std::thread::Builder::new()
        .name("peer-fetcher".into())
        .spawn(move || {
            run(client, interval, etag, command_rx, updates);
            let _ = exited_tx.send(());
        })
        .context("cannot start the peer fetcher thread")?;
    Ok(FetcherHandle {
        commands: Some(commands),
        exited,
        thread: Some(thread),
    })
}

fn run(
    client: BackendClient,
    interval: Duration,
    mut etag: Option<String>,
    commands: Receiver<Command>,
    updates: Sender<PeerUpdate>,
) {
    let mut backoff = FIRST_BACKOFF;
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
                backoff = FIRST_BACKOFF;
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
                backoff = FIRST_BACKOFF;
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
                let delay = jitter(backoff.min(interval));
                log::warn!(
                    "peer fetch failed: {e}; keeping the last good peer list, retrying in {:.1}s",
                    delay.as_secs_f64()
                );
                backoff = (backoff * 2).min(interval);
                next = Instant::now() + delay;
            }
        }
    }
}

/// Spreads retries of a fleet of probes: a random delay between 50 % and 100 % of `d`.
pub fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    // Mix the clock's low bits with the thread id; enough randomness for jitter.
    let mut x = u64::from(nanos) ^ (std::process::id() as u64).rotate_left(32);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    let fraction = 0.5 + (x % 1000) as f64 / 2000.0;
    d.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_full() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(5) && j <= Duration::from_secs(10),
                "{j:?}"
            );
        }
    }
}
