//! The outbox: unacknowledged results, the cap on how many are kept, and the batches the reporter sends.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

use super::schema::{get_state, open_ro, set_state};
use super::KEY_DROPPED;
use crate::clock;

const DROP_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Keeps the count of unsent results under `--max-buffered-results`.
#[derive(Clone)]
pub(super) struct OutboxCap {
    unacked: u64,
    max: u64,
    dropped_since_warning: u64,
    last_drop_warning: Option<Instant>,
}

impl OutboxCap {
    pub(super) fn new(unacked: u64, max: u64) -> OutboxCap {
        OutboxCap {
            unacked,
            max,
            dropped_since_warning: 0,
            last_drop_warning: None,
        }
    }

    /// Counts results written, and acknowledged or set aside, by a transaction.
    pub(super) fn record(&mut self, inserted: u64, left: u64) {
        self.unacked = (self.unacked + inserted).saturating_sub(left);
    }

    /// Takes the count from the database again, after another process
    /// changed it (`easytier-probe requeue`).
    pub(super) fn resync(&mut self, unacked: u64) {
        self.unacked = unacked;
    }

    /// Drops the oldest unsent results beyond the cap, within `tx`.
    pub(super) fn enforce(&mut self, tx: &rusqlite::Transaction) -> anyhow::Result<()> {
        if self.unacked <= self.max {
            return Ok(());
        }
        let excess = self.unacked - self.max;
        let dropped = tx.execute(
            "DELETE FROM results WHERE seq IN
               (SELECT seq FROM results WHERE acked = 0 ORDER BY seq LIMIT ?1)",
            [excess],
        )? as u64;
        self.unacked -= dropped;
        let total: u64 = get_state(tx, KEY_DROPPED)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        set_state(tx, KEY_DROPPED, &(total + dropped).to_string())?;
        self.dropped_since_warning += dropped;
        let due = self
            .last_drop_warning
            .is_none_or(|t| t.elapsed() >= DROP_WARNING_EVERY);
        if due {
            log::warn!(
                "outbox full ({} unsent results kept, --max-buffered-results): dropped the {} oldest unsent results",
                self.max,
                self.dropped_since_warning
            );
            self.dropped_since_warning = 0;
            self.last_drop_warning = Some(Instant::now());
        }
        Ok(())
    }
}

/// A result waiting in the outbox, in the backend's shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboxResult {
    pub seq: i64,
    pub peer_id: i64,
    pub checked_at: String,
    pub status: String,
    pub response_time: Option<i64>,
    pub latency_us: Option<i64>,
    pub remote_version: Option<String>,
    pub remote_hostname: Option<String>,
    pub role: String,
    pub error: Option<String>,
    /// Extension: the error in one word (null for Online).
    pub error_kind: Option<String>,
    /// Extension: 2 when a second check confirmed an Offline.
    pub attempts: i64,
}

/// The oldest unacknowledged results, at most `limit`.
pub fn outbox_batch(conn: &Connection, limit: usize) -> anyhow::Result<Vec<OutboxResult>> {
    outbox_range(conn, i64::MIN, i64::MAX, limit)
}

/// The oldest unacknowledged results with a `seq` in `lo..=hi`, at most `limit`.
pub fn outbox_range(
    conn: &Connection,
    lo: i64,
    hi: i64,
    limit: usize,
) -> anyhow::Result<Vec<OutboxResult>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, peer_id, checked_at_ms, status, response_time_ms, latency_us,
                remote_version, remote_hostname, role, error, error_kind, attempts
         FROM results WHERE acked = 0 AND seq BETWEEN ?1 AND ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![lo, hi, limit as i64], |r| {
        Ok(OutboxResult {
            seq: r.get(0)?,
            peer_id: r.get(1)?,
            checked_at: clock::rfc3339(r.get(2)?),
            status: r.get(3)?,
            response_time: r.get(4)?,
            latency_us: r.get(5)?,
            remote_version: r.get(6)?,
            remote_hostname: r.get(7)?,
            role: r.get(8)?,
            error: r.get(9)?,
            error_kind: r.get(10)?,
            attempts: r.get(11)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Which set-aside results `easytier-probe requeue` queues again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    All,
    Seqs(Vec<i64>),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Requeued {
    pub count: u64,
    /// Named results that were not set aside (delivered, waiting, or gone).
    pub not_set_aside: Vec<i64>,
}

/// Rows changed per transaction, so that the daemon's writer, which may be
/// waiting for the lock meanwhile, never waits long.
const REQUEUE_CHUNK: usize = 5_000;
/// How long `requeue` waits for the daemon's writer to let go of the lock.
const REQUEUE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Queues set-aside results again. Run by the `requeue` subcommand, beside a
/// running daemon or not: SQLite lets one writer in at a time, and each of
/// these short transactions waits for the daemon's writer (busy timeout)
/// like any other. The daemon's writer notices that another connection
/// changed the database and counts its outbox again; the reporter reads the
/// outbox afresh for every report, so the results go with the next one.
pub fn requeue(path: &Path, which: &Requeue) -> anyhow::Result<Requeued> {
    // Exists, with the current schema (never created or migrated from here).
    drop(open_ro(path)?);
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open the database {} for writing", path.display()))?;
    conn.busy_timeout(REQUEUE_BUSY_TIMEOUT)?;
    let mut done = Requeued::default();
    const CLEAR: &str = "acked = 0, rejected_at_ms = NULL, rejected_reason = NULL";
    match which {
        Requeue::All => loop {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                &format!(
                    "UPDATE results SET {CLEAR} WHERE seq IN
                       (SELECT seq FROM results WHERE acked = 2 ORDER BY seq LIMIT ?1)"
                ),
                [REQUEUE_CHUNK as i64],
            )?;
            tx.commit()?;
            done.count += n as u64;
            if n < REQUEUE_CHUNK {
                break;
            }
        },
        Requeue::Seqs(seqs) => {
            for chunk in seqs.chunks(REQUEUE_CHUNK) {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                {
                    let mut update = tx.prepare_cached(&format!(
                        "UPDATE results SET {CLEAR} WHERE seq = ?1 AND acked = 2"
                    ))?;
                    for &seq in chunk {
                        match update.execute([seq])? {
                            0 => done.not_set_aside.push(seq),
                            n => done.count += n as u64,
                        }
                    }
                }
                tx.commit()?;
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Status;
    use crate::store::test_support::{distributed_writer, flush, result, stop, temp_db};
    use crate::store::{
        get_state, open_ro, open_rw, peer_statuses, probe_id, rejected_results, spawn, summary,
        StoreMsg, StoredPeer, WriterOptions, KEY_PEERS_ETAG, KEY_PEERS_SOURCE,
    };

    #[test]
    fn outbox_caps_acks_and_summary() {
        let path = temp_db("outbox");
        let conn = open_rw(&path).unwrap();
        let id = probe_id(&conn).unwrap();
        let store = spawn(
            conn,
            WriterOptions {
                auto_ack: false,
                retention: Duration::from_secs(3600),
                raw_retention: Duration::from_secs(3600),
                max_buffered: 5,
            },
            None,
        )
        .unwrap();
        let sender = store.sender();
        let peer = crate::peer::peer_from_uri("tcp://h:1?id=7").unwrap();
        sender
            .send(StoreMsg::ReplacePeers {
                peers: vec![StoredPeer {
                    peer: peer.into(),
                    skip_reason: None,
                }],
                etag: Some("\"v1\"".into()),
                source: Some("http://b region=eu".into()),
            })
            .unwrap();
        let now = clock::now_ms();
        for i in 0..8 {
            let status = if i % 2 == 0 {
                Status::Online
            } else {
                Status::Offline
            };
            sender
                .send(StoreMsg::Result(Box::new(result(7, status, now + i))))
                .unwrap();
        }
        flush(&sender);
        let ro = open_ro(&path).unwrap();
        let batch = outbox_batch(&ro, 100).unwrap();
        // Eight written, five kept: the three oldest were dropped.
        assert_eq!(
            batch.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![4, 5, 6, 7, 8]
        );
        let s = summary(&ro).unwrap();
        assert_eq!(
            (s.total_monitored, s.healthy, s.buffered, s.dropped),
            (1, 0, 5, 3)
        );
        let (tx, rx) = crossbeam_channel::bounded(1);
        sender
            .send(StoreMsg::Ack {
                seqs: vec![4, 5, 6],
                done: tx,
            })
            .unwrap();
        assert!(rx.recv().unwrap(), "committed");
        assert_eq!(outbox_batch(&ro, 100).unwrap().len(), 2);
        assert_eq!(
            get_state(&ro, KEY_PEERS_ETAG).unwrap().as_deref(),
            Some("\"v1\"")
        );
        assert_eq!(
            get_state(&ro, KEY_PEERS_SOURCE).unwrap().as_deref(),
            Some("http://b region=eu")
        );
        let rows = peer_statuses(&ro, now + 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, "Offline");
        assert_eq!(rows[0].checks_24h, 5);
        assert_eq!(rows[0].uptime_24h, Some(40.0));
        drop(sender);
        stop(store);
        // The id survives a reopen.
        assert_eq!(probe_id(&open_rw(&path).unwrap()).unwrap(), id);
    }

    fn pending(ro: &Connection) -> Vec<i64> {
        outbox_batch(ro, 1_000)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect()
    }

    fn ask(
        sender: &crossbeam_channel::Sender<StoreMsg>,
        msg: impl FnOnce(crossbeam_channel::Sender<bool>) -> StoreMsg,
    ) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        sender.send(msg(tx)).unwrap();
        assert!(rx.recv().unwrap(), "committed");
    }

    #[test]
    fn set_aside_results_leave_the_outbox_until_queued_again() {
        let path = temp_db("set-aside");
        let store = distributed_writer(open_rw(&path).unwrap(), 2);
        let sender = store.sender();
        let now = clock::now_ms();
        let write = |n: i64| {
            for i in 0..n {
                let r = result(1, Status::Online, now + i);
                sender.send(StoreMsg::Result(Box::new(r))).unwrap();
            }
            flush(&sender);
        };
        write(2);
        let ro = open_ro(&path).unwrap();
        let reason = "HTTP 422: \"bad\"".to_string();
        ask(&sender, |done| StoreMsg::SetAside {
            seqs: vec![1, 2],
            reason: reason.clone(),
            done,
        });
        assert_eq!(pending(&ro), Vec::<i64>::new());
        let s = summary(&ro).unwrap();
        assert_eq!((s.buffered, s.rejected), (0, 2));
        let rejected = rejected_results(&ro, 10).unwrap();
        assert_eq!(
            rejected.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(rejected[0].reason.as_deref(), Some(reason.as_str()));
        assert!(rejected[0].rejected_at.is_some());
        // Set aside, they do not count against the cap of 2.
        write(2);
        assert_eq!(pending(&ro), vec![3, 4]);

        // The operator queues one again (and names two that are not set aside).
        let done = requeue(&path, &Requeue::Seqs(vec![2, 3, 99])).unwrap();
        assert_eq!(done.count, 1);
        assert_eq!(done.not_set_aside, vec![3, 99]);
        assert_eq!(pending(&ro), vec![2, 3, 4]);
        assert_eq!(summary(&ro).unwrap().rejected, 1);
        // An acknowledgement covers exactly what was sent: seq 3, between
        // the two, stays waiting.
        ask(&sender, |done| StoreMsg::Ack {
            seqs: vec![2, 4],
            done,
        });
        assert_eq!(pending(&ro), vec![3]);
        // Setting aside or acknowledging a result that no longer waits changes nothing.
        ask(&sender, |done| StoreMsg::SetAside {
            seqs: vec![2, 4],
            reason: "x".into(),
            done,
        });
        assert_eq!(summary(&ro).unwrap().rejected, 1);

        // Everything queued again: 1 and 3 wait, over nothing, within the cap.
        let done = requeue(&path, &Requeue::All).unwrap();
        assert_eq!((done.count, done.not_set_aside.len()), (1, 0));
        assert_eq!(pending(&ro), vec![1, 3]);
        assert_eq!(requeue(&path, &Requeue::All).unwrap().count, 0);

        // Over the cap because of a requeue: the writer notices that another
        // connection changed the outbox and counts it again, so the cap
        // holds. Set aside 1 and 3, write 2 more, then queue 1 and 3 again:
        // 4 wait, 2 allowed. A writer that kept its own count would believe
        // 2 and drop one per new result, never getting back under the cap.
        ask(&sender, |done| StoreMsg::SetAside {
            seqs: vec![1, 3],
            reason: "y".into(),
            done,
        });
        write(2);
        assert_eq!(requeue(&path, &Requeue::All).unwrap().count, 2);
        assert_eq!(pending(&ro).len(), 4);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pending(&ro).len() > 2 {
            assert!(
                Instant::now() < deadline,
                "the cap no longer holds: {:?}",
                pending(&ro)
            );
            write(1);
        }
        drop(sender);
        stop(store);
    }
}
