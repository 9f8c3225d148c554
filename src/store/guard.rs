//! The database file under the daemon: noticed when it is deleted or replaced, and written back from the open connection.
//!
//! An open SQLite connection keeps the file it opened, even once that file
//! is unlinked: reports would then read a path that no longer exists,
//! results would go where no one can read them, and the next start would
//! make a new probe id and begin `seq` at 1. The writer looks once a second
//! (`check`) whether the path still names the file it opened; when it does
//! not, the open connection writes a complete copy of itself to the path
//! (`VACUUM INTO`: probe id, `seq` counter, outbox, history) and the writer
//! carries on with it. Nothing committed is lost that way.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rusqlite::Connection;

/// What the path named when the writer opened it.
pub struct FileGuard {
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl FileGuard {
    /// Watches the main database file of `conn` (none for an in-memory one).
    pub fn new(conn: &Connection) -> FileGuard {
        let path = PathBuf::from(conn.path().unwrap_or_default());
        FileGuard {
            identity: identity(&path),
            path,
        }
    }

    /// True when the path still names the file `conn` has open.
    fn intact(&self) -> bool {
        self.identity.is_none() || identity(&self.path) == self.identity
    }

    /// Puts the database back under its path if it was deleted or replaced,
    /// and switches `conn` to it. True when it did.
    pub fn check(&mut self, conn: &mut Connection) -> anyhow::Result<bool> {
        if self.intact() {
            return Ok(false);
        }
        log::error!(
            "the database {} was deleted or replaced under the running daemon; writing it back from the open copy (same probe id, next seq)",
            self.path.display()
        );
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut staging = self.path.as_os_str().to_owned();
        staging.push(format!(".restore-{}", std::process::id()));
        let staging = PathBuf::from(staging);
        let _ = std::fs::remove_file(&staging);
        conn.execute("VACUUM INTO ?1", [staging.to_string_lossy()])
            .context("cannot copy the open database")?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staging, &self.path)
            .with_context(|| format!("cannot put back {}", self.path.display()))?;
        *conn = super::open_rw(&self.path)?;
        self.identity = identity(&self.path);
        log::info!("the database {} is back", self.path.display());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_db;
    use crate::store::{open_rw, probe_id};

    #[test]
    fn a_deleted_database_is_written_back_with_its_identity() {
        let path = temp_db("guard");
        let mut conn = open_rw(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO results (peer_id, checked_at_ms, status, role, duration_ms)
             VALUES (1, 1, 'Online', 'member', 1), (1, 2, 'Online', 'member', 1);",
        )
        .unwrap();
        let id = probe_id(&conn).unwrap();
        let mut guard = FileGuard::new(&conn);
        assert!(!guard.check(&mut conn).unwrap(), "nothing to do");
        std::fs::remove_file(&*path).unwrap();
        assert!(guard.check(&mut conn).unwrap());
        assert!(path.exists());
        assert_eq!(probe_id(&conn).unwrap(), id, "same probe id");
        conn.execute(
            "INSERT INTO results (peer_id, checked_at_ms, status, role, duration_ms)
             VALUES (1, 3, 'Online', 'member', 1)",
            [],
        )
        .unwrap();
        let seq: i64 = conn
            .query_row("SELECT max(seq) FROM results", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seq, 3, "seq goes on");
        assert!(!guard.check(&mut conn).unwrap(), "watching the new file");
    }
}
