//! The recycle: re-executing the daemon in place to return the memory EasyTier 2.0.3 keeps per check.
//!
//! See `config::settings::RECYCLE_AFTER_CHECKS`. The old image has shut down
//! in order before this runs; everything lives in the database, which the
//! new image opens again. What does not (when each peer is due next, when
//! the process started) goes in a small file beside the database, named to
//! the new image by `CARRIED_ENV`, so that a recycle is seamless: no peer
//! checked twice or left waiting, and `uptime_seconds` does not restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::Receiver;
use signal_hook::consts::{SIGINT, SIGTERM};

use super::signals::Signal;
use crate::clock;
use crate::schedule::Schedule;
use crate::sdnotify::Notifier;

/// Names the carried-state file to the re-executed image.
pub const CARRIED_ENV: &str = "EASYTIER_PROBE_CARRIED_STATE";
/// A file older than this is from another life (a crash between the save
/// and the exec) and is ignored.
const CARRIED_MAX_AGE: Duration = Duration::from_secs(300);

/// What one image hands the next.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Carried {
    /// When the first image started, in Unix milliseconds.
    pub started_unix_ms: i64,
    /// When the state was saved, in Unix milliseconds.
    pub saved_unix_ms: i64,
    /// When each peer is due next, in Unix milliseconds.
    pub due_unix_ms: HashMap<i64, i64>,
}

impl Carried {
    /// The process start as an `Instant` of this image.
    pub fn started(&self) -> Instant {
        let age = (clock::now_ms() - self.started_unix_ms).max(0) as u64;
        Instant::now()
            .checked_sub(Duration::from_millis(age))
            .unwrap_or_else(Instant::now)
    }

    /// Each carried peer's next due time as an `Instant` of this image.
    pub fn due(&self) -> HashMap<i64, Instant> {
        let (now, now_ms) = (Instant::now(), clock::now_ms());
        self.due_unix_ms
            .iter()
            .map(|(id, at)| {
                let due = if *at >= now_ms {
                    now + Duration::from_millis((*at - now_ms) as u64)
                } else {
                    now.checked_sub(Duration::from_millis((now_ms - at) as u64))
                        .unwrap_or(now)
                };
                (*id, due)
            })
            .collect()
    }
}

fn carried_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".recycle.json");
    PathBuf::from(name)
}

/// Saves what the next image needs, beside the database; its path goes to
/// the next image in `CARRIED_ENV`.
pub fn save(db_path: &Path, started: Instant, schedule: &Schedule) -> anyhow::Result<PathBuf> {
    let (now, now_ms) = (Instant::now(), clock::now_ms());
    let to_unix = |at: Instant| match at.checked_duration_since(now) {
        Some(ahead) => now_ms + ahead.as_millis() as i64,
        None => now_ms - now.duration_since(at).as_millis() as i64,
    };
    let carried = Carried {
        started_unix_ms: to_unix(started),
        saved_unix_ms: now_ms,
        due_unix_ms: schedule
            .due_times()
            .map(|(id, at)| (id, to_unix(at)))
            .collect(),
    };
    let path = carried_path(db_path);
    let staging = path.with_extension("json.new");
    std::fs::write(&staging, serde_json::to_vec(&carried)?)
        .with_context(|| format!("cannot write {}", staging.display()))?;
    std::fs::rename(&staging, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// What the previous image left, if this one is a recycle; the file is
/// removed either way. A missing or unreadable file means a fresh start.
pub fn take_carried() -> Option<Carried> {
    let path = std::env::var_os(CARRIED_ENV)?;
    // Not for a later re-execution of this image, nor its children.
    std::env::remove_var(CARRIED_ENV);
    let read = std::fs::read(&path);
    let _ = std::fs::remove_file(&path);
    let carried: Carried = match read.map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(carried)) => carried,
        Ok(Err(e)) => {
            log::warn!(
                "the state carried over the re-execution is unreadable ({e}); starting afresh"
            );
            return None;
        }
        Err(e) => {
            log::warn!("the state carried over the re-execution is gone ({e}); starting afresh");
            return None;
        }
    };
    let age = clock::now_ms() - carried.saved_unix_ms;
    (age >= 0 && age <= CARRIED_MAX_AGE.as_millis() as i64).then_some(carried)
}

/// Re-executes the probe unless a stop signal came during the shutdown
/// (a stop wins: the process exits instead of starting again). Returns only
/// when there is nothing to re-execute or the exec failed.
pub fn re_execute_unless_stopped(
    signals: &Receiver<Signal>,
    notifier: &Notifier,
    carried: Option<PathBuf>,
) -> anyhow::Result<()> {
    // From here on a stop signal ends the process at once (status 0:
    // everything is saved); one that came earlier is in `signals`. Without
    // this, a signal arriving between that look and the exec would be taken
    // by the old handler and lost.
    for signal in [SIGTERM, SIGINT] {
        let always = Arc::new(AtomicBool::new(true));
        signal_hook::flag::register_conditional_shutdown(signal, 0, always)
            .context("cannot arm the stop handler for the re-execution")?;
    }
    if signals.try_iter().any(|s| matches!(s, Signal::Stop(_))) {
        if let Some(path) = carried {
            let _ = std::fs::remove_file(path);
        }
        return Ok(());
    }
    notifier.watchdog();
    // A SIGHUP between the exec and the new image's handlers would kill the
    // process (the default action): ignored until then (an ignored signal
    // stays ignored across exec; the new image installs its handler).
    // SAFETY: setting a disposition to SIG_IGN runs no code in the handler.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    re_execute(carried)
}

/// Replaces this process with a fresh copy of itself, same arguments and
/// environment, same PID (so systemd keeps tracking it).
fn re_execute(carried: Option<PathBuf>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    // The path, not /proc/self/exe, so the process keeps its name (ps,
    // journald). After a package upgrade the path holds the new binary,
    // which is what a restart should run.
    let exe = std::env::current_exe()
        .map(|p| {
            let text = p.to_string_lossy();
            match text.strip_suffix(" (deleted)") {
                Some(original) => std::path::PathBuf::from(original),
                None => p.clone(),
            }
        })
        .unwrap_or_else(|_| "/proc/self/exe".into());
    let mut command = std::process::Command::new(exe);
    command.arg0(arg0).args(args);
    if let Some(path) = carried {
        command.env(CARRIED_ENV, path);
    }
    let error = command.exec();
    Err(error).context("cannot re-execute the probe")
}
