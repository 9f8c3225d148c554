//! Signals as events: SIGTERM/SIGINT stop, SIGHUP reloads; a second stop signal exits at once.

use anyhow::Context;
use crossbeam_channel::Receiver;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

#[derive(Debug, Clone, Copy)]
pub enum Signal {
    Stop(i32),
    Reload,
}

/// Registers the handlers and starts the thread that turns signals into
/// events. Called before any other thread starts, so that every thread
/// inherits the handlers. The thread lives as long as the process.
pub fn spawn() -> anyhow::Result<Receiver<Signal>> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stops = 0;
            for signal in signals.forever() {
                let event = if signal == SIGHUP {
                    Signal::Reload
                } else {
                    stops += 1;
                    if stops >= 2 {
                        // For an operator who will not wait for running checks.
                        eprintln!("easytier-probe: second stop signal, exiting at once");
                        std::process::exit(128 + signal);
                    }
                    Signal::Stop(signal)
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(rx)
}
