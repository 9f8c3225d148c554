//! `cargo bench --bench vacuum`: the database file after a backlog of 1,000,000 results was written, delivered and pruned.
//!
//! Writes `ETP_VACUUM_RESULTS` (default 1,000,000) results in the schema the
//! daemon uses (`store::open_rw`), marks them delivered, deletes them as
//! pruning does, then lets the writer's step (`store::vacuum::step`, 256
//! pages at a time) give the space back, and prints the file's size at each
//! stage and the longest single step.

use std::time::{Duration, Instant};

use easytier_probe::store;

fn size_mb(path: &std::path::Path) -> f64 {
    let main = std::fs::metadata(path).map_or(0, |m| m.len());
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::fs::metadata(&wal).map_or(0, |m| m.len());
    (main + wal) as f64 / 1_048_576.0
}

fn main() {
    let n: i64 = std::env::var("ETP_VACUUM_RESULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("etp-bench-vacuum-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("probe.db");
    let conn = store::open_rw(&path).unwrap();
    let empty = size_mb(&path);
    let started = Instant::now();
    conn.execute_batch(&format!(
        "BEGIN;
         WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {n})
         INSERT INTO results (peer_id, checked_at_ms, status, response_time_ms, latency_us,
                              remote_version, remote_hostname, role, duration_ms, acked)
         SELECT i % 1000, 1700000000000 + i, 'Online', 12, 11873, '2.6.4-81487c36',
                'node-' || (i % 1000), 'member', 1040, 0 FROM k;
         COMMIT;"
    ))
    .unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let full = size_mb(&path);
    let written = started.elapsed();
    conn.execute_batch("UPDATE results SET acked = 1; DELETE FROM results WHERE acked = 1;")
        .unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let pruned = size_mb(&path);
    let mut steps = 0;
    let mut longest = Duration::ZERO;
    let vacuum_started = Instant::now();
    loop {
        let step = Instant::now();
        let freed = store::vacuum::step(&conn).unwrap();
        longest = longest.max(step.elapsed());
        if freed == 0 {
            break;
        }
        steps += 1;
    }
    let vacuumed_in = vacuum_started.elapsed();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let after = size_mb(&path);
    println!("database file (main + WAL) for a backlog of {n} results");
    println!("  new database:                   {empty:.1} MB");
    println!(
        "  written ({:.1} s):              {full:.1} MB",
        written.as_secs_f64()
    );
    println!("  delivered and pruned:           {pruned:.1} MB (space freed inside the file only)");
    println!(
        "  after {steps} vacuum steps ({:.1} s in all, the longest {:.1} ms; the writer takes one a second): {after:.1} MB",
        vacuumed_in.as_secs_f64(),
        longest.as_secs_f64() * 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
