//! The SQLite store: messages to the single writer thread, its handle, and the modules behind it.
//!
//! One thread owns the only read-write connection and applies everything in
//! batched transactions (`writer`). Readers (`status`, the reporter) open
//! their own read-only connections (`schema::open_ro`); WAL mode lets them
//! read while the writer writes.

mod guard;
mod history;
pub mod lock;
mod outbox;
mod queries;
mod schema;
pub mod vacuum;
mod watch;
mod writer;

use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rusqlite::Connection;

use crate::checker::CheckResult;
use crate::peer::Peer;
use crate::thread::{ExitWatch, ThreadHandle};

pub use history::{
    hour_of, long_uptimes, peer_history, peer_known, percent, strips, HourBucket, LongUptimes,
    HOUR_MS,
};
pub use outbox::{outbox_batch, outbox_range, requeue, OutboxResult, Requeue, Requeued};
pub use queries::{
    load_active_peers, peer_statuses, rejected_results, summary, PeerStatus, RejectedResult,
    Summary, UnsupportedPeer,
};
pub use schema::{get_state, open_ro, open_rw, probe_id};
pub use watch::{daemon_state, store_figures};

/// Results queued between the workers and the writer. Bounded because it
/// carries bulk data; the writer never waits on anybody, so senders only ever
/// wait for it to catch up.
const CHANNEL_CAPACITY: usize = 16_384;

pub const KEY_PROBE_ID: &str = "probe_id";
pub const KEY_DROPPED: &str = "dropped_results";
pub const KEY_PEERS_ETAG: &str = "peers_etag";
/// Where the stored peer list came from (backend URL and region; absent for
/// a standalone list), so that neither it nor its ETag is reused elsewhere.
pub const KEY_PEERS_SOURCE: &str = "peers_source";
/// What the running daemon last recorded about itself for `status`
/// (`health::DaemonState`, as JSON).
pub const KEY_DAEMON_STATE: &str = "daemon_state";

/// A peer as the store keeps it: validated, with the reason it is not checked.
#[derive(Debug, Clone)]
pub struct StoredPeer {
    /// Shared with the schedule (see `peer_list`).
    pub peer: std::sync::Arc<Peer>,
    pub skip_reason: Option<String>,
}

/// What the writer thread is asked to do.
pub enum StoreMsg {
    Result(Box<CheckResult>),
    /// A complete new peer set. Peers missing from it become inactive; their history stays.
    ReplacePeers {
        peers: Vec<StoredPeer>,
        etag: Option<String>,
        /// See `KEY_PEERS_SOURCE`.
        source: Option<String>,
    },
    /// The backend acknowledged the results `seqs` (exactly those sent: a
    /// range could take in a result queued again meanwhile). `done` answers
    /// whether the acknowledgement is committed.
    Ack {
        seqs: Vec<i64>,
        done: Sender<bool>,
    },
    /// The backend refused the results `seqs` for good: set them aside
    /// (kept, never sent again unless the operator queues them again), with
    /// `reason`. `done` answers whether it is committed.
    SetAside {
        seqs: Vec<i64>,
        reason: String,
        done: Sender<bool>,
    },
    /// Sets a `probe_state` entry. Not retried when the database refuses
    /// it: whoever sends it sends a fresher value soon.
    SetState {
        key: &'static str,
        value: String,
    },
    /// Answers once everything sent before it is applied: true when it is
    /// committed, false when the database refused the write (kept for a retry).
    Flush(Sender<bool>),
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Mark results delivered at once (standalone mode: there is no backend).
    pub auto_ack: bool,
    /// How long the hourly rollups are kept (`--retention-days`).
    pub retention: Duration,
    /// How long delivered raw results are kept (`--raw-retention-hours`);
    /// results still waiting for the backend are always kept.
    pub raw_retention: Duration,
    /// Most unacknowledged results kept; the oldest beyond it are dropped.
    pub max_buffered: u64,
}

pub struct StoreHandle {
    // Field order matters: the sender must drop before the thread is joined.
    sender: Option<Sender<StoreMsg>>,
    thread: ThreadHandle,
}

impl StoreHandle {
    pub fn sender(&self) -> Sender<StoreMsg> {
        self.sender.clone().expect("store is running")
    }

    /// Drops this handle's sender and waits for the writer to commit and
    /// exit, until `deadline` at most: a database that refuses writes can
    /// keep the writer in a busy timeout. The writer exits once every sender
    /// (workers, reporter) is gone. False when it was left to end with the
    /// process (everything it committed is in the WAL; the next start picks
    /// the database up as it is).
    pub fn shutdown_by(mut self, deadline: Instant) -> bool {
        self.sender.take();
        self.thread.join_by(deadline)
    }
}

/// Starts the writer thread, which owns `conn` from now on.
pub fn spawn(
    conn: Connection,
    options: WriterOptions,
    watch: Option<&ExitWatch>,
) -> anyhow::Result<StoreHandle> {
    let (sender, receiver) = crossbeam_channel::bounded(CHANNEL_CAPACITY);
    let mut writer = writer::Writer::new(conn, options)?;
    let thread = ThreadHandle::spawn("store-writer", watch, move || writer.run(receiver))?;
    Ok(StoreHandle {
        sender: Some(sender),
        thread,
    })
}

/// What the store's tests share: results to write, a database in a
/// directory that is removed when the test ends (pass or fail), and a writer.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::checker::Status;
    use crate::clock;

    pub fn result(peer_id: i64, status: Status, at: i64) -> CheckResult {
        CheckResult {
            peer_id,
            uri: "tcp://h:1".into(),
            status,
            latency_us: (status == Status::Online).then_some(1500),
            response_time: (status == Status::Online).then_some(2),
            remote_version: None,
            remote_hostname: None,
            role: "member",
            error: (status == Status::Offline).then(|| "connection refused".into()),
            error_kind: (status == Status::Offline).then_some(crate::checker::ErrorKind::Refused),
            attempts: 1,
            check_kind: crate::checker::CheckKind::Full,
            latency_kind: None,
            version_observed: true,
            checked_at: clock::rfc3339(at),
            checked_at_ms: at,
            duration_ms: 5,
        }
    }

    /// A database path in a fresh directory; the directory goes with the value.
    pub struct TempDb {
        dir: std::path::PathBuf,
        path: std::path::PathBuf,
    }

    impl std::ops::Deref for TempDb {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.path
        }
    }

    impl AsRef<std::path::Path> for TempDb {
        fn as_ref(&self) -> &std::path::Path {
            &self.path
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    pub fn temp_db(name: &str) -> TempDb {
        let dir = std::env::temp_dir().join(format!("etp-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("probe.db");
        TempDb { dir, path }
    }

    pub fn flush(sender: &Sender<StoreMsg>) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        sender.send(StoreMsg::Flush(tx)).unwrap();
        assert!(rx.recv().unwrap(), "committed");
    }

    pub fn distributed_writer(conn: Connection, max_buffered: u64) -> StoreHandle {
        let options = WriterOptions {
            auto_ack: false,
            retention: Duration::from_secs(86_400),
            raw_retention: Duration::from_secs(86_400),
            max_buffered,
        };
        spawn(conn, options, None).unwrap()
    }

    pub fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM results", [], |r| r.get(0))
            .unwrap()
    }

    /// Stops the writer, waiting as long as it takes.
    pub fn stop(store: StoreHandle) {
        assert!(store.shutdown_by(Instant::now() + Duration::from_secs(60)));
    }
}
