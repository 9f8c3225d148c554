//! Read queries: the cached peer list, `status` rows and the report summary.

use rusqlite::Connection;

use super::schema::get_state;
use super::KEY_DROPPED;
use crate::clock;
use crate::peer::{Peer, Protocol};

/// The active peers as last stored: the cached list used while the backend is unreachable.
pub fn load_active_peers(conn: &Connection) -> anyhow::Result<Vec<Peer>> {
    let mut stmt = conn.prepare(
        "SELECT id, name, host, port, protocol, network_name, network_secret
         FROM peers WHERE active = 1 ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, u16>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, Option<String>>(6)?,
        ))
    })?;
    let mut peers = Vec::new();
    for row in rows {
        let (id, name, host, port, protocol, network_name, network_secret) = row?;
        let Some(protocol) = Protocol::parse(&protocol) else {
            continue;
        };
        peers.push(Peer {
            id,
            name,
            host,
            port,
            protocol,
            network_name,
            network_secret,
        });
    }
    Ok(peers)
}

/// One row of `easytier-probe status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    pub id: i64,
    pub name: String,
    pub uri: String,
    /// Online, Offline, pending (not checked yet) or unsupported.
    pub status: String,
    pub latency_us: Option<i64>,
    pub remote_version: Option<String>,
    pub last_checked_at: Option<String>,
    pub checks_24h: i64,
    /// Percent of the last 24 hours' checks that found the peer Online.
    pub uptime_24h: Option<f64>,
    /// Why the latest check found the peer Offline, or why it is not
    /// checked (unsupported); null otherwise.
    pub error: Option<String>,
    /// The same in one word: an Offline result's kind, or `unsupported`.
    pub error_kind: Option<String>,
    /// Checks the latest verdict took (2 when an Offline was confirmed).
    pub attempts: Option<i64>,
    /// Results of this peer the backend refused for good, set aside
    /// (`easytier-probe requeue` queues them again).
    pub rejected: i64,
}

/// The 24-hour counts are exact and cheap: the whole hours of the window
/// come from the hourly rollups (`history`), only the part of its first
/// hour from raw results (at most an hour of them per peer).
pub fn peer_statuses(conn: &Connection, now_ms: i64) -> anyhow::Result<Vec<PeerStatus>> {
    let since = now_ms - 24 * 3600 * 1000;
    let first_whole_hour = (since + super::HOUR_MS - 1).div_euclid(super::HOUR_MS);
    let mut stmt = conn.prepare(
        "SELECT p.id, p.name, p.protocol, p.host, p.port, p.skip_reason,
                r.status, r.latency_us, r.remote_version, r.checked_at_ms,
                r.error, r.error_kind, r.attempts,
                (SELECT coalesce(sum(checks), 0) FROM rollups
                 WHERE peer_id = p.id AND hour >= ?2)
                + (SELECT count(*) FROM results WHERE peer_id = p.id
                   AND checked_at_ms >= ?1 AND checked_at_ms < ?3),
                (SELECT coalesce(sum(online), 0) FROM rollups
                 WHERE peer_id = p.id AND hour >= ?2)
                + (SELECT count(*) FROM results WHERE peer_id = p.id
                   AND checked_at_ms >= ?1 AND checked_at_ms < ?3 AND status = 'Online'),
                (SELECT count(*) FROM results WHERE peer_id = p.id AND acked = 2)
         FROM peers p
         LEFT JOIN results r ON r.seq = (SELECT seq FROM results WHERE peer_id = p.id
                                         ORDER BY checked_at_ms DESC, seq DESC LIMIT 1)
         WHERE p.active = 1
         ORDER BY p.id",
    )?;
    let window = [since, first_whole_hour, first_whole_hour * super::HOUR_MS];
    let rows = stmt.query_map(window, |r| {
        let protocol: String = r.get(2)?;
        let host: String = r.get(3)?;
        let port: u16 = r.get(4)?;
        let skip_reason: Option<String> = r.get(5)?;
        let last_status: Option<String> = r.get(6)?;
        let checks: i64 = r.get(13)?;
        let online: i64 = r.get(14)?;
        let uri = match Protocol::parse(&protocol) {
            Some(p) => crate::peer::format_uri(p, &host, port),
            None => format!("{protocol}://{host}:{port}"),
        };
        let (status, error, error_kind) = match (skip_reason, last_status) {
            (Some(reason), _) => (
                "unsupported".to_string(),
                Some(reason),
                Some("unsupported".to_string()),
            ),
            (None, Some(s)) => (s, r.get(10)?, r.get(11)?),
            (None, None) => ("pending".to_string(), None, None),
        };
        Ok(PeerStatus {
            id: r.get(0)?,
            name: r.get(1)?,
            uri,
            status,
            latency_us: r.get(7)?,
            remote_version: r.get(8)?,
            last_checked_at: r.get::<_, Option<i64>>(9)?.map(clock::rfc3339),
            checks_24h: checks,
            uptime_24h: (checks > 0)
                .then(|| (online as f64 * 1000.0 / checks as f64).round() / 10.0),
            error,
            error_kind,
            attempts: r.get(12)?,
            rejected: r.get(15)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The probe's own view for its status report.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub total_monitored: i64,
    pub healthy: i64,
    /// Mean response time (ms) of the peers whose latest check was Online.
    pub mean_response_ms: Option<i64>,
    pub buffered: i64,
    pub dropped: i64,
    /// Results set aside because the backend refused them for good.
    pub rejected: i64,
    /// Peers of the current list the probe cannot check, with the reason.
    pub unsupported: Vec<UnsupportedPeer>,
}

/// A peer the probe does not check, as the status report names it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnsupportedPeer {
    pub peer_id: i64,
    pub reason: String,
}

pub fn summary(conn: &Connection) -> anyhow::Result<Summary> {
    let (total, healthy, mean): (i64, i64, Option<f64>) = conn.query_row(
        "SELECT count(*),
                coalesce(sum(r.status = 'Online'), 0),
                avg(CASE WHEN r.status = 'Online' THEN r.response_time_ms END)
         FROM peers p
         LEFT JOIN results r ON r.seq = (SELECT seq FROM results WHERE peer_id = p.id
                                         ORDER BY checked_at_ms DESC, seq DESC LIMIT 1)
         WHERE p.active = 1 AND p.skip_reason IS NULL",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let buffered = conn.query_row("SELECT count(*) FROM results WHERE acked = 0", [], |r| {
        r.get(0)
    })?;
    let rejected = conn.query_row("SELECT count(*) FROM results WHERE acked = 2", [], |r| {
        r.get(0)
    })?;
    let dropped = get_state(conn, KEY_DROPPED)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut stmt = conn.prepare_cached(
        "SELECT id, skip_reason FROM peers
         WHERE active = 1 AND skip_reason IS NOT NULL ORDER BY id",
    )?;
    let unsupported = stmt
        .query_map([], |r| {
            Ok(UnsupportedPeer {
                peer_id: r.get(0)?,
                reason: r.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Summary {
        total_monitored: total,
        healthy,
        mean_response_ms: mean.map(|m| m.round() as i64),
        buffered,
        dropped,
        rejected,
        unsupported,
    })
}

/// A result set aside because the backend refused it for good.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RejectedResult {
    pub seq: i64,
    pub peer_id: i64,
    pub checked_at: String,
    pub rejected_at: Option<String>,
    pub reason: Option<String>,
}

/// The set-aside results, oldest first, at most `limit`.
pub fn rejected_results(conn: &Connection, limit: usize) -> anyhow::Result<Vec<RejectedResult>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, peer_id, checked_at_ms, rejected_at_ms, rejected_reason
         FROM results WHERE acked = 2 ORDER BY seq LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(RejectedResult {
            seq: r.get(0)?,
            peer_id: r.get(1)?,
            checked_at: clock::rfc3339(r.get(2)?),
            rejected_at: r.get::<_, Option<i64>>(3)?.map(clock::rfc3339),
            reason: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
