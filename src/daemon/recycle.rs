//! The recycle: re-executing the daemon in place to return the memory EasyTier 2.0.3 keeps per check.
//!
//! See `config::settings::RECYCLE_AFTER_CHECKS`. The old image has shut down
//! in order before this runs; everything lives in the database, which the
//! new image opens again.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use crossbeam_channel::Receiver;
use signal_hook::consts::{SIGINT, SIGTERM};

use super::signals::Signal;
use crate::sdnotify::Notifier;

/// Re-executes the probe unless a stop signal came during the shutdown
/// (a stop wins: the process exits instead of starting again). Returns only
/// when there is nothing to re-execute or the exec failed.
pub fn re_execute_unless_stopped(
    signals: &Receiver<Signal>,
    notifier: &Notifier,
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
        return Ok(());
    }
    notifier.watchdog();
    re_execute()
}

/// Replaces this process with a fresh copy of itself, same arguments and
/// environment, same PID (so systemd keeps tracking it).
fn re_execute() -> anyhow::Result<()> {
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
    let error = std::process::Command::new(exe).arg0(arg0).args(args).exec();
    Err(error).context("cannot re-execute the probe")
}
