//! The database file: creation, migrations, read-only opening, and the small key/value state table.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::KEY_PROBE_ID;

/// Schema migrations, applied in order up to `PRAGMA user_version`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../sql/001_init.sql"),
    include_str!("../../sql/002_error_kind_attempts.sql"),
    include_str!("../../sql/003_check_kind.sql"),
    include_str!("../../sql/004_rejected.sql"),
    include_str!("../../sql/005_rollups.sql"),
];

/// Opens (creating if needed) the database read-write and brings the schema up to date.
pub fn open_rw(path: &Path) -> anyhow::Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the database directory {}", dir.display()))?;
    }
    if !path.exists() {
        create_initialised(path)?;
    }
    let mut conn = Connection::open(path)
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    configure_rw(&mut conn, path)?;
    Ok(conn)
}

fn configure_rw(conn: &mut Connection, path: &Path) -> anyhow::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .context("cannot switch the database to WAL mode")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    super::vacuum::configure(conn)
        .with_context(|| format!("database {}: cannot set up auto-vacuum", path.display()))?;
    migrate(conn).with_context(|| format!("database {}", path.display()))
}

/// Builds a new database beside `path` and links it into place only once its
/// schema and probe id are written, so `status` (or a second daemon) started
/// at the same moment sees either no database or a complete one, never a file
/// with schema version 0.
fn create_initialised(path: &Path) -> anyhow::Result<()> {
    let mut staging = path.as_os_str().to_owned();
    staging.push(format!(".new-{}", std::process::id()));
    let staging = std::path::PathBuf::from(staging);
    let _ = std::fs::remove_file(&staging);
    let built = (|| -> anyhow::Result<()> {
        let mut conn = Connection::open(&staging)
            .with_context(|| format!("cannot create the database {}", staging.display()))?;
        // It holds network secrets: owner only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", staging.display()))?;
        configure_rw(&mut conn, path)?;
        // Closing checkpoints the WAL into the main file and removes it, so
        // the single file is the whole database.
        conn.close().map_err(|(_, e)| e)?;
        // A hard link does not replace: if another process created the
        // database meanwhile, theirs wins and ours is discarded.
        match std::fs::hard_link(&staging, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            // Filesystems without hard links: a rename is just as atomic.
            Err(_) => std::fs::rename(&staging, path)
                .with_context(|| format!("cannot create the database {}", path.display())),
        }
    })();
    let _ = std::fs::remove_file(&staging);
    built
}

/// Opens an existing database read-only (for `status` and the reporter).
pub fn open_ro(path: &Path) -> anyhow::Result<Connection> {
    if !path.exists() {
        bail!(
            "no database at {} (has the daemon run with this --db?)",
            path.display()
        );
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open the database {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        bail!(
            "the database {} has schema version {version}, newer than this binary knows ({}); use a newer easytier-probe",
            path.display(),
            MIGRATIONS.len()
        );
    }
    if version < MIGRATIONS.len() {
        bail!(
            "the database {} has schema version {version}; start the daemon once to upgrade it",
            path.display()
        );
    }
    Ok(conn)
}

/// Brings the schema up to date and makes sure the probe id exists, in one
/// transaction that takes the write lock at `BEGIN IMMEDIATE`.
///
/// Not a deferred transaction: that one reads `user_version` first and asks
/// for the write lock only when it writes, and SQLite never waits (busy
/// timeout) for a lock a transaction needs to upgrade from read to write; it
/// fails at once with "database is locked". Another connection does hold the
/// WAL write lock for a moment now and then: a read-only connection (`status`,
/// the reporter) that is the first to map the `-shm` index rebuilds it, and
/// holds the write lock while it does. `BEGIN IMMEDIATE` starts with no
/// snapshot, so it waits for that lock under the busy timeout.
fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        bail!(
            "schema version {version} is newer than this binary knows ({}); refusing to touch it, use a newer easytier-probe",
            MIGRATIONS.len()
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)
            .with_context(|| format!("migration {} failed", index + 1))?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    ensure_probe_id(&tx)?;
    tx.commit()?;
    Ok(())
}

fn ensure_probe_id(conn: &Connection) -> anyhow::Result<()> {
    if get_state(conn, KEY_PROBE_ID)?.is_none() {
        let mut bytes = [0u8; 8];
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .context("cannot read /dev/urandom for the probe id")?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        conn.execute(
            "INSERT INTO probe_state (key, value) VALUES (?1, ?2)",
            params![KEY_PROBE_ID, id],
        )?;
    }
    Ok(())
}

pub fn get_state(conn: &Connection, key: &str) -> anyhow::Result<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM probe_state WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

pub(super) fn set_state(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO probe_state (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map(|_| ())
}

pub(super) fn set_or_clear_state(
    conn: &Connection,
    key: &str,
    value: Option<&str>,
) -> rusqlite::Result<()> {
    match value {
        Some(value) => set_state(conn, key, value),
        None => conn
            .execute("DELETE FROM probe_state WHERE key = ?1", [key])
            .map(|_| ()),
    }
}

pub fn probe_id(conn: &Connection) -> anyhow::Result<String> {
    get_state(conn, KEY_PROBE_ID)?.context("the database has no probe id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_db;

    #[test]
    fn a_new_database_appears_complete_or_not_at_all() {
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        // A reader polls while the daemon creates the file, as `status` does
        // when started next to a fresh daemon: once the file exists it must
        // open with the current schema.
        for round in 0..20 {
            let path = temp_db(&format!("atomic-{round}"));
            let stop = Arc::new(AtomicBool::new(false));
            let reader = {
                let (path, stop) = (path.to_path_buf(), stop.clone());
                std::thread::spawn(move || {
                    let mut opened = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if path.exists() {
                            open_ro(&path).expect("an existing database is complete");
                            opened += 1;
                        }
                    }
                    opened
                })
            };
            let conn = open_rw(&path).unwrap();
            stop.store(true, Ordering::Relaxed);
            reader.join().unwrap();
            assert!(probe_id(&conn).unwrap().len() == 16);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "secrets inside: owner only");
            let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".new-"))
                .collect();
            assert!(leftovers.is_empty(), "staging files left: {leftovers:?}");
        }
    }

    /// The cause of the flaky test above, made deterministic: another
    /// connection holds the WAL write lock for a moment while the daemon
    /// opens the database (a read-only connection does that while it
    /// rebuilds the WAL index, which `status` or the reporter may do at
    /// any start). Opening must wait for it (busy timeout), not fail with
    /// "database is locked".
    #[test]
    fn opening_waits_for_a_connection_that_holds_the_write_lock() {
        let path = temp_db("write-lock");
        drop(open_rw(&path).unwrap());
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let holder = {
            let path = path.to_path_buf();
            std::thread::spawn(move || {
                let conn = Connection::open(&path).unwrap();
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                locked_tx.send(()).unwrap();
                // How long the lock is held, well under open_rw's 5 s busy timeout.
                std::thread::sleep(Duration::from_millis(300));
                conn.execute_batch("COMMIT").unwrap();
            })
        };
        locked_rx.recv().unwrap();
        let conn = open_rw(&path).expect("waits for the write lock instead of failing");
        assert_eq!(probe_id(&conn).unwrap().len(), 16);
        holder.join().unwrap();
    }

    #[test]
    fn refuses_a_newer_schema() {
        let path = temp_db("newer");
        drop(open_rw(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let e = open_rw(&path).unwrap_err();
        assert!(format!("{e:#}").contains("newer"), "{e:#}");
        assert!(format!("{:#}", open_ro(&path).unwrap_err()).contains("newer"));
    }
}
