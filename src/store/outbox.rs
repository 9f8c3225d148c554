//! The outbox: unacknowledged results, the cap on how many are kept, and the batches the reporter sends.

use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::schema::{get_state, set_state};
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

    /// Counts results written and acknowledged by a transaction.
    pub(super) fn record(&mut self, inserted: u64, acked: u64) {
        self.unacked = (self.unacked + inserted).saturating_sub(acked);
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
    let mut stmt = conn.prepare_cached(
        "SELECT seq, peer_id, checked_at_ms, status, response_time_ms, latency_us,
                remote_version, remote_hostname, role, error, error_kind, attempts
         FROM results WHERE acked = 0 ORDER BY seq LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Status;
    use crate::store::test_support::{flush, result, stop, temp_db};
    use crate::store::{
        get_state, open_ro, open_rw, peer_statuses, probe_id, spawn, summary, StoreMsg, StoredPeer,
        WriterOptions, KEY_PEERS_ETAG, KEY_PEERS_SOURCE,
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
                    peer,
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
                first: 4,
                last: 6,
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
}
