//! Progress deadlines: a thread marks each bounded step it takes (a check, a status report, a page of the peer list) with its limit; a step past its limit means the thread is stuck.
//!
//! A thread that is alive but stuck (an EasyTier teardown that never
//! returns, a name lookup that hangs past every timeout) does no work and
//! says nothing. Each step names its own limit, from the settings that bound
//! it, with room to spare: being past it is never a slow network, only a
//! thread that will not come back. `health` reads the steps for the
//! watchdog and `/health`, and the main loop stops the daemon (exit status
//! 1, so that the service manager restarts it) when one is overdue.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A test-only hook, in debug builds only (the tests' binary): the thread
/// of this name stops for good inside its next step, so that tests can see
/// what the daemon does with a stuck thread. That step's limit is one
/// second, so that a test need not wait out a real one.
pub const TEST_STALL_ENV: &str = "EASYTIER_PROBE_TEST_STALL_THREAD";
const TEST_STALL_LIMIT: Duration = Duration::from_secs(1);

struct OpenStep {
    /// The monotonic clock: a wall clock set forward (NTP after a boot
    /// without a hardware clock, a resumed VM) must not make a step overdue.
    began: Instant,
    limit: Duration,
}

/// The steps under way, by thread name and what the step is.
static STEPS: Mutex<BTreeMap<(String, &'static str), OpenStep>> = Mutex::new(BTreeMap::new());

fn steps() -> std::sync::MutexGuard<'static, BTreeMap<(String, &'static str), OpenStep>> {
    STEPS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The step ends when this is dropped (a panic inside it ends it too: the
/// thread's end is reported on its own).
#[must_use = "the step ends when the guard is dropped"]
pub struct Step {
    key: (String, &'static str),
}

impl Drop for Step {
    fn drop(&mut self) {
        steps().remove(&self.key);
    }
}

/// Marks the calling thread as inside `what` (a few words: "a check")
/// until the returned guard is dropped; past `limit` it counts as stuck.
pub fn step(what: &'static str, limit: Duration) -> Step {
    let thread = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string();
    let stall =
        cfg!(debug_assertions) && std::env::var(TEST_STALL_ENV).is_ok_and(|name| name == thread);
    let key = (thread, what);
    steps().insert(
        key.clone(),
        OpenStep {
            began: Instant::now(),
            limit: if stall { TEST_STALL_LIMIT } else { limit },
        },
    );
    if stall {
        log::debug!("{TEST_STALL_ENV}: the {} thread stops here", key.0);
        loop {
            std::thread::park();
        }
    }
    Step { key }
}

/// The first step past its limit now, in words; None when every thread is
/// within its limits.
pub fn overdue() -> Option<String> {
    overdue_at(Instant::now())
}

fn overdue_at(now: Instant) -> Option<String> {
    steps().iter().find_map(|((thread, what), step)| {
        let spent = now.saturating_duration_since(step.began);
        (spent > step.limit).then(|| {
            format!(
                "the {thread} thread has been in {what} for {} s (its limit is {} s)",
                spent.as_secs(),
                step.limit.as_secs()
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_overdue_only_past_its_limit_and_ends_with_its_guard() {
        let guard = std::thread::Builder::new()
            .name("progress-test".into())
            .spawn(|| step("a test step", Duration::from_secs(10)))
            .unwrap()
            .join()
            .unwrap();
        let now = Instant::now();
        let mine = |text: Option<String>| text.filter(|t| t.contains("progress-test"));
        assert_eq!(mine(overdue_at(now + Duration::from_secs(9))), None);
        let late =
            mine(overdue_at(now + Duration::from_secs(12))).expect("overdue after its limit");
        assert!(
            late.contains("the progress-test thread has been in a test step for 1")
                && late.contains("its limit is 10 s"),
            "{late}"
        );
        drop(guard);
        assert_eq!(
            mine(overdue_at(now + Duration::from_secs(60))),
            None,
            "ended with its guard"
        );
    }
}
