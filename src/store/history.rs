//! Long-view reads from the hourly rollups (sql/005_rollups.sql): per-peer hourly buckets and uptime over days.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use crate::clock;

pub const HOUR_MS: i64 = 3_600_000;

/// Uptime (percent) over 7 and 30 days, by peer id.
pub type LongUptimes = HashMap<i64, (Option<f64>, Option<f64>)>;

/// One hour of one peer's checks.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct HourBucket {
    /// The hour's start (UTC).
    pub hour: String,
    pub checks: i64,
    pub online: i64,
    /// Mean latency of the hour's checks that had one (Online), in ms.
    pub latency_mean_ms: Option<f64>,
    pub latency_min_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub version: Option<String>,
}

impl HourBucket {
    /// Percent of the hour's checks that found the peer Online.
    pub fn uptime(&self) -> Option<f64> {
        percent(self.online, self.checks)
    }
}

/// `online` of `checks` in percent, to one decimal; None without checks.
pub fn percent(online: i64, checks: i64) -> Option<f64> {
    (checks > 0).then(|| (online as f64 * 1000.0 / checks as f64).round() / 10.0)
}

/// The hour `now_ms` falls in, as stored in `rollups.hour`.
pub fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS)
}

/// Whether the peer is known (active or not).
pub fn peer_known(conn: &Connection, peer_id: i64) -> anyhow::Result<bool> {
    let found = conn
        .query_row("SELECT 1 FROM peers WHERE id = ?1", [peer_id], |_| Ok(()))
        .optional()?;
    Ok(found.is_some())
}

/// The last `hours` hours of one peer, oldest first, the current hour last;
/// an hour without checks is a bucket with `checks` 0.
pub fn peer_history(
    conn: &Connection,
    peer_id: i64,
    now_ms: i64,
    hours: i64,
) -> anyhow::Result<Vec<HourBucket>> {
    let last = hour_of(now_ms);
    let first = last - hours + 1;
    let mut buckets: Vec<HourBucket> = (first..=last)
        .map(|h| HourBucket {
            hour: clock::rfc3339(h * HOUR_MS),
            ..HourBucket::default()
        })
        .collect();
    let mut stmt = conn.prepare_cached(
        "SELECT r.hour, r.checks, r.online, r.latency_n, r.latency_sum_us,
                r.latency_min_us, r.latency_max_us, v.name
         FROM rollups r LEFT JOIN versions v ON v.id = r.version_id
         WHERE r.peer_id = ?1 AND r.hour BETWEEN ?2 AND ?3",
    )?;
    let mut rows = stmt.query(params![peer_id, first, last])?;
    while let Some(r) = rows.next()? {
        let hour: i64 = r.get(0)?;
        let n: i64 = r.get(3)?;
        let sum: i64 = r.get(4)?;
        let ms = |us: Option<i64>| us.map(|us| us as f64 / 1000.0);
        let b = &mut buckets[(hour - first) as usize];
        b.checks = r.get(1)?;
        b.online = r.get(2)?;
        b.latency_mean_ms = (n > 0).then(|| sum as f64 / n as f64 / 1000.0);
        b.latency_min_ms = ms(r.get(5)?);
        b.latency_max_ms = ms(r.get(6)?);
        b.version = r.get(7)?;
    }
    Ok(buckets)
}

/// Uptime (percent) of every active peer over the last 7 and 30 days, from
/// the rollups: whole hours, the current one included.
pub fn long_uptimes(conn: &Connection, now_ms: i64) -> anyhow::Result<LongUptimes> {
    let last = hour_of(now_ms);
    let mut stmt = conn.prepare_cached(
        "SELECT p.id,
                total(CASE WHEN r.hour > ?1 THEN r.checks END),
                total(CASE WHEN r.hour > ?1 THEN r.online END),
                total(r.checks), total(r.online)
         FROM peers p JOIN rollups r ON r.peer_id = p.id AND r.hour > ?2
         WHERE p.active = 1 GROUP BY p.id",
    )?;
    let rows = stmt.query_map(params![last - 7 * 24, last - 30 * 24], |r| {
        let f = |i| r.get::<_, f64>(i).map(|v| v as i64);
        Ok((r.get(0)?, (f(1)?, f(2)?, f(3)?, f(4)?)))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (id, (c7, o7, c30, o30)) = row?;
        out.insert(id, (percent(o7, c7), percent(o30, c30)));
    }
    Ok(out)
}

/// The checks and Online checks of each hour of the last `hours`, per
/// active peer: `[oldest .. current hour]`, `(0, 0)` for an hour without checks.
pub fn strips(
    conn: &Connection,
    now_ms: i64,
    hours: i64,
) -> anyhow::Result<HashMap<i64, Vec<(i64, i64)>>> {
    let last = hour_of(now_ms);
    let first = last - hours + 1;
    let mut stmt = conn.prepare_cached(
        "SELECT r.peer_id, r.hour, r.checks, r.online
         FROM peers p JOIN rollups r ON r.peer_id = p.id AND r.hour BETWEEN ?1 AND ?2
         WHERE p.active = 1",
    )?;
    let mut out: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
    let mut rows = stmt.query(params![first, last])?;
    while let Some(r) = rows.next()? {
        let (peer, hour): (i64, i64) = (r.get(0)?, r.get(1)?);
        let strip = out
            .entry(peer)
            .or_insert_with(|| vec![(0, 0); hours as usize]);
        strip[(hour - first) as usize] = (r.get(2)?, r.get(3)?);
    }
    Ok(out)
}

/// Deletes the rollups older than `retention`, one peer at a time (each a
/// primary-key range), so no index on `hour` alone is needed.
pub(super) fn prune_rollups(
    conn: &Connection,
    now_ms: i64,
    retention: std::time::Duration,
) -> anyhow::Result<()> {
    let cutoff = hour_of(now_ms - retention.as_millis() as i64);
    let peers: Vec<i64> = conn
        .prepare_cached("SELECT DISTINCT peer_id FROM rollups")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let tx = conn.unchecked_transaction()?;
    let mut deleted = 0;
    {
        let mut delete =
            tx.prepare_cached("DELETE FROM rollups WHERE peer_id = ?1 AND hour < ?2")?;
        for peer in peers {
            deleted += delete.execute(params![peer, cutoff])?;
        }
    }
    tx.commit()?;
    if deleted > 0 {
        log::debug!("pruned {deleted} hourly rollups older than the retention");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Status;
    use crate::store::test_support::{flush, result, stop, temp_db};
    use crate::store::{open_ro, open_rw, spawn, StoreMsg, WriterOptions};
    use std::time::Duration;

    #[test]
    fn rollups_follow_inserts_and_migration_folds_old_results() {
        let path = temp_db("rollups");
        let conn = open_rw(&path).unwrap();
        // Results from before version 5: drop the trigger and the rollups,
        // insert, then run the migration's SQL again as an upgrade would.
        conn.execute_batch(
            "DROP TRIGGER results_rollup; DROP TRIGGER results_dropped;
             DROP TABLE rollups; DROP TABLE versions;
             CREATE INDEX results_by_time ON results (checked_at_ms);",
        )
        .unwrap();
        let now = clock::now_ms();
        let hour_start = hour_of(now) * HOUR_MS;
        let insert = |at: i64, online: bool, latency: Option<i64>, version: &str| {
            conn.execute(
                "INSERT INTO results (peer_id, checked_at_ms, status, latency_us,
                    remote_version, role, duration_ms, acked)
                 VALUES (7, ?1, ?2, ?3, ?4, 'member', 1, 1)",
                params![
                    at,
                    if online { "Online" } else { "Offline" },
                    latency,
                    version
                ],
            )
            .unwrap();
        };
        insert(hour_start - HOUR_MS + 10, true, Some(2_000), "2.0.1");
        insert(hour_start - HOUR_MS + 20, false, None, "2.0.2");
        conn.execute_batch(include_str!("../../sql/005_rollups.sql"))
            .unwrap();
        // And one through the trigger, in the current hour.
        insert(hour_start + 5, true, Some(4_000), "2.0.3");
        insert(hour_start + 6, true, Some(1_000), "2.0.4");
        conn.execute(
            "INSERT INTO peers (id, name, host, port, protocol, network_name, updated_at_ms)
             VALUES (7, 'p', 'h', 1, 'tcp', '', 0)",
            [],
        )
        .unwrap();
        let h = peer_history(&conn, 7, now, 3).unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].checks, 0);
        assert_eq!((h[1].checks, h[1].online), (2, 1));
        assert_eq!(h[1].latency_mean_ms, Some(2.0));
        assert_eq!(h[1].version.as_deref(), Some("2.0.2"));
        assert_eq!((h[2].checks, h[2].online), (2, 2));
        assert_eq!(
            (
                h[2].latency_min_ms,
                h[2].latency_mean_ms,
                h[2].latency_max_ms
            ),
            (Some(1.0), Some(2.5), Some(4.0))
        );
        assert_eq!(h[2].version.as_deref(), Some("2.0.4"));
        assert_eq!(h[2].uptime(), Some(100.0));
        let up = long_uptimes(&conn, now).unwrap();
        assert_eq!(up[&7], (Some(75.0), Some(75.0)));
        let s = strips(&conn, now, 2).unwrap();
        assert_eq!(s[&7], vec![(2, 1), (2, 2)]);
    }

    #[test]
    fn the_24_hour_counts_from_rollups_and_raw_results_match_the_raw_count() {
        let path = temp_db("rollups-24h");
        let conn = open_rw(&path).unwrap();
        conn.execute(
            "INSERT INTO peers (id, name, host, port, protocol, network_name, updated_at_ms)
             VALUES (3, 'p', 'h', 1, 'tcp', '', 0)",
            [],
        )
        .unwrap();
        let now = clock::now_ms();
        // Every 7 minutes for 26 hours, one in five Offline.
        for n in 0..(26 * 60 / 7) {
            conn.execute(
                "INSERT INTO results (peer_id, checked_at_ms, status, role, duration_ms, acked)
                 VALUES (3, ?1, ?2, 'member', 1, 1)",
                params![
                    now - n * 7 * 60_000,
                    if n % 5 == 0 { "Offline" } else { "Online" }
                ],
            )
            .unwrap();
        }
        let since = now - 24 * HOUR_MS;
        let raw = |extra: &str| -> i64 {
            let sql = format!("SELECT count(*) FROM results WHERE checked_at_ms >= ?1 {extra}");
            conn.query_row(&sql, [since], |r| r.get(0)).unwrap()
        };
        let (checks, online) = (raw(""), raw("AND status = 'Online'"));
        let row = &crate::store::peer_statuses(&conn, now).unwrap()[0];
        assert_eq!(row.checks_24h, checks);
        assert_eq!(row.uptime_24h, percent(online, checks));
    }

    #[test]
    fn the_writer_prunes_raw_results_and_old_rollups_by_their_own_windows() {
        let path = temp_db("rollup-prune");
        let store = spawn(
            open_rw(&path).unwrap(),
            WriterOptions {
                auto_ack: true,
                retention: Duration::from_secs(10 * 86_400),
                raw_retention: Duration::from_secs(48 * 3600),
                max_buffered: u64::MAX,
            },
            None,
        )
        .unwrap();
        let sender = store.sender();
        let now = clock::now_ms();
        for at in [now - 20 * 86_400_000, now - 3 * 86_400_000, now] {
            let r = result(1, Status::Online, at);
            sender.send(StoreMsg::Result(Box::new(r))).unwrap();
        }
        flush(&sender);
        let ro = open_ro(&path).unwrap();
        let count = |sql: &str| -> i64 { ro.query_row(sql, [], |r| r.get(0)).unwrap() };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while count("SELECT count(*) FROM results") > 1 || count("SELECT count(*) FROM rollups") > 2
        {
            assert!(std::time::Instant::now() < deadline, "not pruned");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(count("SELECT count(*) FROM results"), 1, "the recent one");
        assert_eq!(count("SELECT count(*) FROM rollups"), 2, "3 days and now");
        drop(sender);
        stop(store);
    }
}
