//! One exponential backoff with jitter, shared by the peer fetcher and the reporter.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Retry delays that double from `first` up to `max`, each one jittered, so
/// that a fleet of probes that lost the backend at the same moment does not
/// come back at the same moment.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let first = first.min(max);
        Backoff {
            first,
            max,
            current: first,
        }
    }

    /// The delay before the next retry: the current step, jittered; the step
    /// then doubles (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let delay = jitter(self.current);
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// After a success: the next failure starts again from `first`.
    pub fn reset(&mut self) {
        self.current = self.first;
    }
}

/// A random delay between 50 % and 100 % of `d`.
pub fn jitter(d: Duration) -> Duration {
    // std's RandomState is seeded from the OS once per process and varies
    // per instance: random enough for jitter, without a crate for it.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(d.as_nanos());
    let fraction = 0.5 + (hasher.finish() % 1001) as f64 / 2000.0;
    d.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_full_and_varies() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(10));
            assert!(
                j >= Duration::from_secs(5) && j <= Duration::from_secs(10),
                "{j:?}"
            );
            seen.insert(j);
        }
        assert!(seen.len() > 10, "jitter does not vary: {seen:?}");
    }

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let steps: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        let caps = [1, 2, 4, 5, 5].map(Duration::from_secs);
        for (delay, cap) in steps.iter().zip(caps) {
            assert!(
                *delay <= cap && *delay >= cap / 2,
                "{delay:?} for step {cap:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn a_first_step_above_the_cap_is_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(3));
        assert!(b.next_delay() <= Duration::from_secs(3));
    }
}
