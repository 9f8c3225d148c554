//! The peer list thread: `GET /peers` rounds (distributed) or the peers file again on SIGHUP (standalone); each complete list is prepared here and handed to the main loop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{after, select, Receiver, Sender};

use crate::backend::{BackendClient, FetchOutcome};
use crate::backoff::Backoff;
use crate::peer::{self, Peer};
use crate::peer_list::{PeerList, Preparer, Retired};
use crate::thread::{ExitWatch, ThreadHandle};

/// Where the peer lists come from.
pub enum ListSource {
    /// The backend, polled every `interval`; `etag` is the stored list's.
    Backend {
        client: BackendClient,
        interval: Duration,
        etag: Option<String>,
    },
    /// The peers file (if any) and the `--peer` flags, read when asked.
    Standalone {
        peers_file: Option<PathBuf>,
        cli_peers: Vec<Peer>,
    },
}

pub enum Command {
    /// Fetch, or read the file, at once (SIGHUP).
    FetchNow,
}

pub struct FetcherHandle {
    commands: Option<Sender<Command>>,
    /// What applying a list let go, freed on this thread (see `Retired`).
    retired: Option<Sender<Retired>>,
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

    /// Hands what applying a list let go to this thread, to be freed here.
    pub fn free(&self, retired: Retired) {
        if let Some(r) = &self.retired {
            let _ = r.send(retired);
        }
    }

    /// Stops the thread. A request or read in flight is not waited for
    /// beyond `grace`: the thread writes nothing, so leaving it to die with
    /// the process loses nothing and keeps shutdown fast.
    pub fn shutdown(mut self, grace: Duration) {
        self.commands.take();
        self.retired.take();
        self.thread.join_by(Instant::now() + grace);
    }
}

/// Starts the list thread; `preparer` (which prepared the first list, if
/// any) prepares the next ones.
pub fn spawn(
    source: ListSource,
    preparer: Preparer,
    updates: Sender<PeerList>,
    watch: Option<&ExitWatch>,
) -> anyhow::Result<FetcherHandle> {
    let (commands, command_rx) = crossbeam_channel::unbounded();
    let (retired, retired_rx) = crossbeam_channel::unbounded();
    let channels = Channels {
        commands: command_rx,
        retired: retired_rx,
        updates,
    };
    let thread = match source {
        ListSource::Backend {
            client,
            interval,
            etag,
        } => ThreadHandle::spawn("peer-fetcher", watch, move || {
            run(client, interval, etag, preparer, channels)
        })?,
        ListSource::Standalone {
            peers_file,
            cli_peers,
        } => ThreadHandle::spawn("peers-reader", watch, move || {
            reread_on_request(peers_file, cli_peers, preparer, channels)
        })?,
    };
    Ok(FetcherHandle {
        commands: Some(commands),
        retired: Some(retired),
        thread,
    })
}

/// The list thread's channels with the main loop.
struct Channels {
    commands: Receiver<Command>,
    retired: Receiver<Retired>,
    updates: Sender<PeerList>,
}

/// What ended a wait of the list thread.
enum Wake {
    /// A fetch or read was asked for (SIGHUP).
    Asked,
    /// The wait's time is up.
    Due,
    /// The main loop is gone: the thread ends.
    Closed,
}

impl Channels {
    /// Waits until a request comes or `until` (never when None), freeing
    /// whatever the main loop hands back meanwhile.
    fn wait(&self, until: Option<Instant>) -> Wake {
        loop {
            let timeout = match until {
                Some(at) => after(at.saturating_duration_since(Instant::now())),
                None => crossbeam_channel::never(),
            };
            select! {
                recv(self.commands) -> cmd => return match cmd {
                    Ok(Command::FetchNow) => Wake::Asked,
                    Err(_) => Wake::Closed,
                },
                recv(self.retired) -> r => match r {
                    Ok(r) => drop(r),
                    Err(_) => return Wake::Closed,
                },
                recv(timeout) -> _ => return Wake::Due,
            }
        }
    }
}

/// Reads the peers file: an unreadable or malformed file is an error, an
/// invalid entry is a warning.
pub fn read_peers_file(path: &Path) -> anyhow::Result<Vec<Peer>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the peers file {}", path.display()))?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).with_context(|| {
        format!(
            "the peers file {} is not a JSON array of peer objects",
            path.display()
        )
    })?;
    let (peers, problems) = peer::validate_list(list);
    if let Some(summary) = peer::summarize_problems(&problems) {
        log::warn!("peers file {}: {summary}", path.display());
    }
    Ok(peers)
}

/// The standalone peer set: the file's peers, then `--peer` ones.
pub fn standalone_peers(
    peers_file: Option<&Path>,
    cli_peers: &[Peer],
) -> anyhow::Result<Vec<Peer>> {
    let mut peers = match peers_file {
        Some(path) => read_peers_file(path)?,
        None => Vec::new(),
    };
    let file_ids: std::collections::HashSet<i64> = peers.iter().map(|p| p.id).collect();
    for peer in cli_peers {
        if file_ids.contains(&peer.id) {
            log::warn!(
                "--peer {}: id {} is already in the peers file; skipped",
                peer.uri(),
                peer.id
            );
        } else {
            peers.push(peer.clone());
        }
    }
    Ok(peers)
}

/// Standalone: each request (SIGHUP) reads the peers again, off the main
/// loop; requests that came while a read ran collapse into the next one.
fn reread_on_request(
    peers_file: Option<PathBuf>,
    cli_peers: Vec<Peer>,
    mut preparer: Preparer,
    channels: Channels,
) {
    while let Wake::Asked = channels.wait(None) {
        let collapsed = channels.commands.try_iter().count();
        if collapsed > 0 {
            log::debug!("{collapsed} more SIGHUP(s) collapsed into this read");
        }
        match standalone_peers(peers_file.as_deref(), &cli_peers) {
            Ok(peers) => {
                if channels
                    .updates
                    .send(preparer.prepare(peers, None))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => log::warn!("SIGHUP: {e:#}; keeping the current peers"),
        }
    }
}

fn run(
    client: BackendClient,
    interval: Duration,
    mut etag: Option<String>,
    mut preparer: Preparer,
    channels: Channels,
) {
    let mut backoff = Backoff::new(FIRST_BACKOFF, interval);
    let mut next = Instant::now();
    // The earliest moment a fetch asked for (SIGHUP) may go: the end of the
    // current backoff, `Retry-After` or authentication wait; after a good
    // round, `MIN_ASKED_GAP` after it.
    let mut not_before = Instant::now();
    loop {
        match channels.wait(Some(next)) {
            Wake::Asked => {
                next = asked_fetch(&channels.commands, next, not_before);
                continue;
            }
            Wake::Closed => return,
            Wake::Due => {}
        }
        let delay = match client.fetch_peers(etag.as_deref()) {
            Ok(outcome) => {
                if let FetchOutcome::Peers { etag: new_etag, .. } = &outcome {
                    etag = new_etag.clone();
                }
                if !hand_over(outcome, &mut preparer, &channels.updates) {
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
fn hand_over(outcome: FetchOutcome, preparer: &mut Preparer, updates: &Sender<PeerList>) -> bool {
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
    updates.send(preparer.prepare(peers, etag)).is_ok()
}
