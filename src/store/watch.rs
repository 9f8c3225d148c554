//! Read queries for watching the probe: the outbox figures /metrics shows, and the daemon's recorded state that `status` reads.

use rusqlite::Connection;

use super::schema::get_state;
use super::{KEY_DAEMON_STATE, KEY_DROPPED};
use crate::health::DaemonState;
use crate::metrics::StoreFigures;

/// The outbox and what left it without delivery. Cheap at any outbox size:
/// both counts use partial indexes, the oldest result is the first by `seq`.
pub fn store_figures(conn: &Connection) -> anyhow::Result<StoreFigures> {
    let (waiting, oldest_ms): (i64, Option<i64>) = conn.query_row(
        "SELECT (SELECT count(*) FROM results WHERE acked = 0),
                (SELECT checked_at_ms FROM results WHERE acked = 0 ORDER BY seq LIMIT 1)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    // acked = 2: set aside after the backend refused it for good.
    let set_aside = conn.query_row("SELECT count(*) FROM results WHERE acked = 2", [], |r| {
        r.get(0)
    })?;
    let dropped = get_state(conn, KEY_DROPPED)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(StoreFigures {
        waiting,
        oldest_ms,
        dropped,
        set_aside,
    })
}

/// What the daemon last recorded about itself; None when no daemon has run
/// with this version's recording (or the record is unreadable).
pub fn daemon_state(conn: &Connection) -> anyhow::Result<Option<DaemonState>> {
    Ok(get_state(conn, KEY_DAEMON_STATE)?.and_then(|text| serde_json::from_str(&text).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Status;
    use crate::clock;
    use crate::store::test_support::{distributed_writer, flush, result, stop, temp_db};
    use crate::store::{open_ro, open_rw, StoreMsg};

    #[test]
    fn figures_and_state_come_back_as_written() {
        let path = temp_db("watch-figures");
        let store = distributed_writer(open_rw(&path).unwrap(), 1_000);
        let sender = store.sender();
        let ro = open_ro(&path).unwrap();
        assert_eq!(store_figures(&ro).unwrap(), StoreFigures::default());
        assert_eq!(daemon_state(&ro).unwrap(), None);
        let now = clock::now_ms();
        for n in 0..3 {
            let r = result(1, Status::Online, now - 60_000 + n);
            sender.send(StoreMsg::Result(Box::new(r))).unwrap();
        }
        let state = DaemonState {
            mode: "distributed".into(),
            seen_ms: now,
            problems: vec!["stopping".into()],
            ..DaemonState::default()
        };
        sender
            .send(StoreMsg::SetState {
                key: KEY_DAEMON_STATE,
                value: serde_json::to_string(&state).unwrap(),
            })
            .unwrap();
        flush(&sender);
        let f = store_figures(&ro).unwrap();
        assert_eq!((f.waiting, f.oldest_ms), (3, Some(now - 60_000)));
        assert_eq!(daemon_state(&ro).unwrap(), Some(state));
        drop(sender);
        stop(store);
    }
}
