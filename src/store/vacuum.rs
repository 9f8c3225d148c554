//! Giving disk space back: incremental auto-vacuum in small steps, and a bounded WAL.
//!
//! A backlog of a million results that drained and was pruned left the file
//! at its peak size for good. New databases are created with
//! `auto_vacuum = INCREMENTAL`; an older one is converted once, at start
//! (a `VACUUM`, logged). The writer then frees a few hundred pages per
//! second (`step`), so no single step holds it up for long, and the WAL
//! is truncated to `journal_size_limit` after each checkpoint.

use rusqlite::Connection;

/// Largest WAL kept between checkpoints.
pub const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
/// Pages freed per step (4 KiB each: 8 MiB a step at most; BENCHMARKS.md
/// has the longest step).
const PAGES_PER_STEP: i64 = 2_048;
/// `PRAGMA auto_vacuum` value of incremental mode.
const INCREMENTAL: i64 = 2;

/// Sets what every read-write connection needs; converts an old database.
/// Runs before the schema exists on a new database (auto_vacuum must be set
/// before the first table), and outside any transaction.
pub fn configure(conn: &Connection) -> anyhow::Result<()> {
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    conn.pragma_update(None, "auto_vacuum", INCREMENTAL)?;
    if tables > 0 {
        log::info!("converting the database to incremental auto-vacuum (once; a VACUUM)");
        conn.execute_batch("VACUUM")?;
    }
    Ok(())
}

/// Frees up to `PAGES_PER_STEP` unused pages; the number freed.
pub fn step(conn: &Connection) -> rusqlite::Result<i64> {
    let free: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    if free == 0 {
        return Ok(0);
    }
    let pages = free.min(PAGES_PER_STEP);
    // The pragma frees one page per step of its statement: all of them
    // must be stepped through (execute_batch would stop after one).
    let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    let left: i64 = conn.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    Ok(free - left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_rw;
    use crate::store::test_support::temp_db;

    fn pages(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_drained_backlog_gives_its_space_back_in_steps() {
        let path = temp_db("vacuum");
        let conn = open_rw(&path).unwrap();
        let mode: i64 = conn
            .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, INCREMENTAL, "a new database is incremental");
        let empty = pages(&conn);
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60000)
             INSERT INTO results (peer_id, checked_at_ms, status, role, error, duration_ms, acked)
             SELECT 1, i, 'Offline', 'member', printf('%.200c', 'x'), 1, 1 FROM n;",
        )
        .unwrap();
        let full = pages(&conn);
        assert!(full > empty + 500, "{empty} -> {full}");
        conn.execute_batch("DELETE FROM results").unwrap();
        assert_eq!(pages(&conn), full, "deleting alone frees nothing");
        let mut steps = 0;
        loop {
            let freed = step(&conn).unwrap();
            assert!(freed <= PAGES_PER_STEP, "{freed} pages in one step");
            if freed == 0 {
                break;
            }
            steps += 1;
            assert!(steps < 10_000);
        }
        assert!(steps > 1, "in several small steps");
        // Each step frees a whole step's worth, not a page.
        assert!(
            steps <= (full - empty) / PAGES_PER_STEP + 2,
            "{steps} steps for {} pages",
            full - empty
        );
        assert!(
            pages(&conn) < empty + 50,
            "back near {empty}: {}",
            pages(&conn)
        );
    }
}
