//! One handle for every long-lived thread: named spawn, exit seen by the main loop, join by a deadline, panic re-raised.
//!
//! Each role (store writer, workers, fetcher, reporter) used to hand-roll
//! the same four things; they live here once. A thread holds an exit guard
//! for its whole life. When the thread ends, by returning or by unwinding,
//! the guard disconnects the handle's `exited` channel (so a join can wait
//! with a deadline) and, when a watcher was given, tells the main loop which
//! thread ended and whether it panicked.

use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// A long-lived thread ended. During normal operation none should: the main
/// loop treats this as a failure of the whole daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadExit {
    pub name: String,
    pub panicked: bool,
}

/// Where thread exits are reported: the main loop's receiving end.
pub type ExitWatch = Sender<ThreadExit>;

/// Dropped when the thread ends, whichever way it ends.
struct ExitGuard {
    name: String,
    watch: Option<ExitWatch>,
    // Never sent on: dropping it disconnects the handle's receiver.
    _alive: Sender<()>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if let Some(watch) = &self.watch {
            crate::health::thread_ended(&self.name);
            // The main loop may be gone already (shutdown): nothing to tell.
            let _ = watch.send(ThreadExit {
                name: self.name.clone(),
                panicked: std::thread::panicking(),
            });
        }
    }
}

/// A running thread. Dropping the handle detaches the thread.
pub struct ThreadHandle {
    name: String,
    /// Disconnects when the thread ends (its guard holds the only sender).
    exited: Receiver<()>,
    thread: Option<JoinHandle<()>>,
    /// Its end goes to a watcher (the main loop), which logs a panic and
    /// stops the daemon in order: joining it then must not raise it again.
    watched: bool,
}

/// A test-only hook, in debug builds only (the tests' binary): the thread
/// of this name panics as it starts, so that tests can see what the daemon
/// does when one of its threads dies.
pub const TEST_PANIC_ENV: &str = "EASYTIER_PROBE_TEST_PANIC_THREAD";

impl ThreadHandle {
    /// Starts a thread named `name` running `body`. With `watch`, its end is
    /// reported there.
    pub fn spawn<F>(name: &str, watch: Option<&ExitWatch>, body: F) -> anyhow::Result<ThreadHandle>
    where
        F: FnOnce() + Send + 'static,
    {
        let (alive, exited) = crossbeam_channel::bounded::<()>(0);
        let guard = ExitGuard {
            name: name.to_string(),
            watch: watch.cloned(),
            _alive: alive,
        };
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let _guard = guard;
                if cfg!(debug_assertions)
                    && std::env::var(TEST_PANIC_ENV)
                        .is_ok_and(|n| n == *std::thread::current().name().unwrap_or(""))
                {
                    panic!("{TEST_PANIC_ENV}: this thread panics on purpose");
                }
                body()
            })
            .with_context(|| format!("cannot start the {name} thread"))?;
        Ok(ThreadHandle {
            name: name.to_string(),
            exited,
            thread: Some(thread),
            watched: watch.is_some(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True once the thread has ended.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.exited.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Waits for the thread to end, until `deadline` at most. True when it
    /// ended and was joined; a panic of the thread is raised again here, so
    /// that it is never hidden. False when it still runs at the deadline: it
    /// is left to end with the process.
    pub fn join_by(mut self, deadline: Instant) -> bool {
        if let Err(RecvTimeoutError::Timeout) = self.exited.recv_deadline(deadline) {
            self.thread.take();
            return false;
        }
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                if self.watched {
                    // Already seen and logged by the main loop, which is
                    // stopping the daemon in order because of it.
                    log::debug!("the {} thread had panicked", self.name);
                } else {
                    std::panic::resume_unwind(panic);
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_ended_thread_is_reported_and_joined() {
        let (watch, exits) = crossbeam_channel::unbounded();
        let handle = ThreadHandle::spawn("quick", Some(&watch), || {}).unwrap();
        let exit = exits.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            exit,
            ThreadExit {
                name: "quick".into(),
                panicked: false
            }
        );
        assert!(handle.is_finished());
        assert!(handle.join_by(Instant::now() + Duration::from_secs(5)));
    }

    #[test]
    fn a_thread_still_running_at_the_deadline_is_left_alone() {
        let (release, wait) = crossbeam_channel::bounded::<()>(0);
        let handle = ThreadHandle::spawn("slow", None, move || {
            let _ = wait.recv();
        })
        .unwrap();
        assert!(!handle.is_finished());
        assert_eq!(handle.name(), "slow");
        assert!(!handle.join_by(Instant::now() + Duration::from_millis(50)));
        drop(release);
    }

    #[test]
    fn a_panic_is_reported_and_raised_again_on_join_when_no_one_saw_it() {
        // Watched: the watcher hears of it, and the join does not raise it
        // again (the main loop is already stopping because of it).
        let (watch, exits) = crossbeam_channel::unbounded();
        let handle = ThreadHandle::spawn("doomed", Some(&watch), || panic!("on purpose")).unwrap();
        let exit = exits.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(exit.panicked, "{exit:?}");
        assert!(handle.join_by(Instant::now() + Duration::from_secs(5)));
        // Unwatched: the join raises it, so that it is never hidden.
        let handle = ThreadHandle::spawn("doomed-alone", None, || panic!("on purpose")).unwrap();
        let joined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handle.join_by(Instant::now() + Duration::from_secs(5))
        }));
        let panic = joined.expect_err("the panic is raised again");
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"on purpose"));
    }

    #[test]
    fn the_thread_has_its_name() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let handle = ThreadHandle::spawn("named-one", None, move || {
            let _ = tx.send(std::thread::current().name().map(str::to_string));
        })
        .unwrap();
        assert_eq!(rx.recv().unwrap().as_deref(), Some("named-one"));
        assert!(handle.join_by(Instant::now() + Duration::from_secs(5)));
    }
}
