//! `cargo bench --bench page`: the status page and the API at 1,000 peers with 30 days of history, and the database size in steady state at 1,000 checks a minute, from a synthetic fill written straight into SQLite.
//!
//! The fill is what the retention leaves in steady state: acknowledged raw
//! results for the raw window (`--raw-retention-hours`, default 48: one
//! check a minute per peer, inserted through the real schema, so the
//! rollup trigger runs for each), and hourly rollups for the older hours
//! up to the history shown (`ETP_PAGE_DAYS`, default 30), then up to the
//! rollup retention (`--retention-days`, default 90) for the size.
//!
//! Settings (environment): ETP_PAGE_PEERS (default 1000), ETP_PAGE_DAYS
//! (30), ETP_PAGE_RAW_HOURS (48), ETP_PAGE_ROLLUP_DAYS (90), ETP_PAGE_RUNS
//! (10), ETP_PAGE_DIR (default a fresh directory under /tmp, removed after).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use easytier_probe::clock;
use easytier_probe::http::{route, Context, Request};
use easytier_probe::store;
use rusqlite::{params, Connection};

const HOUR_MS: i64 = 3_600_000;

fn env_or(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let peers = env_or("ETP_PAGE_PEERS", 1_000);
    let days = env_or("ETP_PAGE_DAYS", 30);
    let raw_hours = env_or("ETP_PAGE_RAW_HOURS", 48);
    let rollup_days = env_or("ETP_PAGE_ROLLUP_DAYS", 90);
    let runs = env_or("ETP_PAGE_RUNS", 10) as usize;
    let dir = match std::env::var_os("ETP_PAGE_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("etp-bench-page-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("probe.db");
    let _ = std::fs::remove_file(&db);
    let now = clock::now_ms();
    let conn = store::open_rw(&db).unwrap();
    let started = Instant::now();
    fill_peers(&conn, peers);
    fill_raw(&conn, now, raw_hours);
    let raw_fill = started.elapsed();
    fill_rollups(&conn, now, raw_hours, days * 24);
    println!(
        "fill: {peers} peers, {} raw results ({raw_hours} h, through the rollup trigger in {:.1} s), rollups {} days",
        count(&conn, "results"),
        raw_fill.as_secs_f64(),
        days
    );
    println!(
        "  rows: results {}, rollups {}",
        count(&conn, "results"),
        count(&conn, "rollups")
    );
    measure(&db, runs);
    size(&conn, &db, "shown history", days);
    fill_rollups(&conn, now, days * 24, rollup_days * 24);
    size(&conn, &db, "steady state", rollup_days);
    drop(conn);
    if std::env::var_os("ETP_PAGE_DIR").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn fill_peers(conn: &Connection, peers: i64) {
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO peers (id, name, host, port, protocol, network_name, network_secret,
                            active, updated_at_ms)
         SELECT i, 'relay-' || i, 'relay-' || i || '.example.net', 11010, 'tcp',
                'net-' || i, CASE WHEN i % 2 = 0 THEN 'secret-' || i END, 1, 0
         FROM n",
        [peers],
    )
    .unwrap();
}

/// One acknowledged result a minute per peer for the last `hours`, oldest
/// first as the writer inserts them; about 1% Offline.
fn fill_raw(conn: &Connection, now: i64, hours: i64) {
    conn.execute_batch("BEGIN").unwrap();
    conn.execute(
        "WITH RECURSIVE m(i) AS (SELECT ?2 UNION ALL SELECT i - 1 FROM m WHERE i > 1)
         INSERT INTO results (peer_id, checked_at_ms, status, response_time_ms, latency_us,
             remote_version, remote_hostname, role, error, duration_ms, acked, error_kind,
             attempts, check_kind, latency_kind, version_observed)
         SELECT p.id, ?1 - m.i * 60000 + p.id * 7,
                CASE WHEN (p.id * 31 + m.i) % 97 = 0 THEN 'Offline' ELSE 'Online' END,
                CASE WHEN (p.id * 31 + m.i) % 97 = 0 THEN NULL ELSE 1000 + m.i % 40 END,
                CASE WHEN (p.id * 31 + m.i) % 97 = 0 THEN NULL
                     ELSE 15000 + (p.id * 13 + m.i * 7) % 20000 END,
                '2.6.4-81487c36', 'PublicServer_relay-' || p.id, 'public_server',
                CASE WHEN (p.id * 31 + m.i) % 97 = 0 THEN 'connection refused' END,
                1000 + m.i % 40, 1,
                CASE WHEN (p.id * 31 + m.i) % 97 = 0 THEN 'refused' END,
                1, CASE WHEN m.i % 60 = 0 THEN 'full' ELSE 'quick' END,
                CASE WHEN (p.id * 31 + m.i) % 97 = 0 THEN NULL ELSE 'handshake' END,
                m.i % 60 = 0
         FROM m, peers p ORDER BY m.i DESC, p.id",
        params![now, hours * 60],
    )
    .unwrap();
    conn.execute_batch("COMMIT").unwrap();
}

/// Rollups of every peer for the hours `from_hours` to `to_hours` ago, as
/// the trigger would have left them (60 checks, a few Offline).
fn fill_rollups(conn: &Connection, now: i64, from_hours: i64, to_hours: i64) {
    let last = now.div_euclid(HOUR_MS) - from_hours;
    let first = now.div_euclid(HOUR_MS) - to_hours + 1;
    if first > last {
        return;
    }
    conn.execute(
        "WITH RECURSIVE h(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM h WHERE i < ?2)
         INSERT OR IGNORE INTO rollups (peer_id, hour, checks, online, latency_n,
             latency_sum_us, latency_min_us, latency_max_us, version_id)
         SELECT p.id, h.i, 60, 60 - (p.id + h.i) % 3 * ((p.id + h.i) % 7 = 0),
                59, 59 * 25000, 15012, 34987, (SELECT min(id) FROM versions)
         FROM h, peers p ORDER BY h.i, p.id",
        params![first, last],
    )
    .unwrap();
}

/// Times `/`, `/api/peers` and a 90-day history through the real routes,
/// each with its own read-only connection as a request has.
fn measure(db: &Path, runs: usize) {
    let context = Context {
        db_path: db.to_path_buf(),
    };
    for path in ["/", "/api/peers", "/api/peers/1/history?hours=2160"] {
        let request = Request::new("GET", path);
        let mut times = Vec::with_capacity(runs);
        let mut bytes = 0;
        for _ in 0..runs {
            let started = Instant::now();
            let response = route(&request, &context);
            times.push(started.elapsed());
            assert_eq!(response.status, 200, "{path}");
            bytes = response.body.len();
        }
        times.sort();
        println!(
            "{path:<34} median {:>7.1} ms, min {:>7.1} ms, max {:>7.1} ms ({runs} runs), {} KB",
            ms(times[runs / 2]),
            ms(times[0]),
            ms(times[runs - 1]),
            bytes / 1000
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The file's size (checkpointed), and what each table and index takes.
fn size(conn: &Connection, db: &Path, what: &str, days: i64) {
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let bytes = std::fs::metadata(db).unwrap().len();
    println!(
        "size, {what} ({days} days of rollups): {:.1} MB; results {} rows, rollups {} rows",
        bytes as f64 / 1e6,
        count(conn, "results"),
        count(conn, "rollups")
    );
    // dbstat exists only when SQLite was built with it.
    let Ok(mut stmt) =
        conn.prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
    else {
        return;
    };
    let parts: Vec<String> = match stmt.query_map([], |r| {
        Ok(format!(
            "{} {:.1} MB",
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)? as f64 / 1e6
        ))
    }) {
        Ok(rows) => rows.filter_map(Result::ok).take(6).collect(),
        Err(_) => Vec::new(),
    };
    if !parts.is_empty() {
        println!("  {}", parts.join(", "));
    }
}
