//! One daemon per database: an exclusive lock on `<db>.lock`, which names the process that holds it.
//!
//! Two daemons on one database would both check every peer and report
//! under one probe id with interleaved `seq` handling. The lock is a
//! `flock` on a file beside the database, not a SQLite lock, so `status`,
//! `requeue` and the reporter's read-only connections work as before. The
//! kernel drops it when the process ends, however it ends, and when the
//! daemon re-executes itself (the descriptor is close-on-exec), after
//! which the new image takes it again.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::UsageError;

/// Held for the life of the daemon; dropping it releases the lock.
pub struct DaemonLock {
    _file: File,
}

fn lock_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the lock for the database at `db_path`, or says who has it: a
/// usage error (exit 2) naming the database and the other daemon's PID.
pub fn acquire(db_path: &Path) -> anyhow::Result<DaemonLock> {
    let path = lock_path(db_path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the database directory {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory involved.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !taken {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let who = if holder.is_empty() {
            "another process".to_string()
        } else {
            format!("process {holder}")
        };
        return Err(UsageError(format!(
            "the database {} is in use by another easytier-probe daemon ({who}); one daemon per database (status and requeue work beside it)",
            db_path.display()
        ))
        .into());
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(DaemonLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_database_is_refused_with_the_holders_pid() {
        let dir = std::env::temp_dir().join(format!("etp-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("probe.db");
        let first = acquire(&db).unwrap();
        // flock locks belong to the open file description: a second open in
        // the same process conflicts like another process would.
        let e = acquire(&db).err().expect("refused while held");
        let text = format!("{e:#}");
        assert!(e.downcast_ref::<UsageError>().is_some(), "{text}");
        assert!(text.contains("probe.db"), "{text}");
        assert!(
            text.contains(&format!("process {}", std::process::id())),
            "{text}"
        );
        drop(first);
        let again = acquire(&db);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(again.is_ok(), "released with its holder");
    }
}
