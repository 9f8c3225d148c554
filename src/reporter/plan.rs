//! What the next status report carries and what each answer changes: 413 halving, narrowing a refusal down, set-aside, the heartbeat.
//!
//! The contract (`backend-api.md`, section 2): 413 halves the batch (down
//! to one result) until a restart; 400/422 naming results sets those aside
//! and sends the rest again at once; 400/422 naming none is narrowed down
//! by halves, and only a result refused alone is set aside, once a report
//! without results has been accepted (when even that is refused, the backend
//! refuses the probe, not the data, and nothing is set aside). Whatever
//! happens to results, a report without them goes at least every interval.

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// What the next report carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// No results on purpose: the heartbeat while results fail, or the
    /// control that tells a refused result from a refused probe.
    Nothing,
    /// The oldest waiting results with a `seq` in `lo..=hi`, at most `limit`.
    Results { lo: i64, hi: i64, limit: usize },
}

/// How the backend answered, as far as the plan cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    /// 413; `reason` is what the answer said.
    TooLarge {
        reason: String,
    },
    /// 400 or 422; `named` are the results the answer names.
    Refused {
        named: Vec<i64>,
        reason: String,
    },
    /// 401 or 403.
    Auth,
    /// No answer, a timeout, 408, 429, 5xx, anything else.
    Failed {
        retry_after: Option<Duration>,
    },
}

/// When the next report goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Now,
    Interval,
    /// After the next backoff step, and not before `retry_after`.
    Backoff {
        retry_after: Option<Duration>,
    },
}

/// What follows from an answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub next: Next,
    /// Results to set aside, and the backend's reason.
    pub set_aside: Option<(Vec<i64>, String)>,
    /// The backoff starts again from its first step.
    pub reset_backoff: bool,
}

impl Step {
    fn new(next: Next) -> Step {
        Step {
            next,
            set_aside: None,
            reset_backoff: false,
        }
    }
}

pub struct Plan {
    interval: Duration,
    batch_size: usize,
    /// Seq ranges still to send while a refusal naming nothing is narrowed
    /// down, the one to send next last. Empty: the whole outbox.
    ranges: Vec<(i64, i64)>,
    /// A result refused alone, with the reason: set aside once a report
    /// without results is accepted.
    suspect: Option<(i64, String)>,
    /// Even a report without results was refused: only such reports go
    /// until one is accepted; the outbox waits.
    probe_refused: bool,
    /// The last report that carried results was not accepted.
    results_failing: bool,
    last_accepted: Option<Instant>,
}

impl Plan {
    pub fn new(interval: Duration, batch_size: usize) -> Plan {
        Plan {
            interval,
            batch_size: batch_size.max(1),
            ranges: Vec::new(),
            suspect: None,
            probe_refused: false,
            results_failing: false,
            last_accepted: None,
        }
    }

    pub fn carry(&self, now: Instant) -> Carry {
        let heartbeat_due = self
            .last_accepted
            .is_none_or(|t| now.saturating_duration_since(t) >= self.interval);
        if self.suspect.is_some() || self.probe_refused || (self.results_failing && heartbeat_due) {
            return Carry::Nothing;
        }
        let (lo, hi) = self.ranges.last().copied().unwrap_or((i64::MIN, i64::MAX));
        Carry::Results {
            lo,
            hi,
            limit: self.batch_size,
        }
    }

    /// The range being narrowed down holds no waiting result any more (all
    /// delivered or set aside): drops it. False when there was none.
    pub fn range_exhausted(&mut self) -> bool {
        self.ranges.pop().is_some()
    }

    /// Takes in the answer to a report that carried `carry`, with the
    /// results `sent` (oldest first).
    pub fn answer(&mut self, carry: Carry, sent: &[i64], answer: &Answer, now: Instant) -> Step {
        match answer {
            Answer::Accepted => self.accepted(carry, sent, now),
            Answer::TooLarge { reason } | Answer::Refused { reason, .. } if sent.is_empty() => {
                self.probe_is_refused(reason)
            }
            Answer::TooLarge { reason } => self.too_large(sent, reason),
            Answer::Refused { named, reason } => self.refused(sent, named, reason),
            Answer::Auth => Step::new(Next::Interval),
            Answer::Failed { retry_after } => {
                if !sent.is_empty() {
                    self.results_failing = true;
                }
                Step::new(Next::Backoff {
                    retry_after: *retry_after,
                })
            }
        }
    }

    fn accepted(&mut self, carry: Carry, sent: &[i64], now: Instant) -> Step {
        self.last_accepted = Some(now);
        if self.probe_refused {
            log::info!("the backend accepts this probe's reports again");
            self.probe_refused = false;
        }
        let Some(&last) = sent.last() else {
            if let Some((seq, reason)) = self.suspect.take() {
                // A report without results passes, the result alone does
                // not: the backend refuses the result.
                let mut step = Step::new(Next::Now);
                step.set_aside = Some((vec![seq], reason));
                return step;
            }
            if carry == Carry::Nothing && self.results_failing {
                // A heartbeat: the results go again now that the backend answers.
                return Step::new(Next::Now);
            }
            // Nothing was waiting.
            self.results_failing = false;
            let mut step = Step::new(Next::Interval);
            step.reset_backoff = true;
            return step;
        };
        self.results_failing = false;
        let narrowing = match self.ranges.last_mut() {
            Some(top) => {
                top.0 = last.saturating_add(1);
                if top.0 > top.1 {
                    self.ranges.pop();
                }
                true
            }
            None => false,
        };
        let more = narrowing || sent.len() >= self.batch_size;
        let mut step = Step::new(if more { Next::Now } else { Next::Interval });
        step.reset_backoff = true;
        step
    }

    fn too_large(&mut self, sent: &[i64], reason: &str) -> Step {
        self.results_failing = true;
        if let [only] = sent {
            self.suspect = Some((*only, reason.to_string()));
            return Step::new(Next::Now);
        }
        let smaller = (sent.len() / 2).max(1);
        if smaller < self.batch_size {
            log::warn!(
                "the backend refused a report of {} results as too large ({reason}): reports carry at most {smaller} results from now on, until a restart",
                sent.len()
            );
            self.batch_size = smaller;
        }
        Step::new(Next::Now)
    }

    fn refused(&mut self, sent: &[i64], named: &[i64], reason: &str) -> Step {
        self.results_failing = true;
        let named: HashSet<i64> = named.iter().copied().collect();
        let refused: Vec<i64> = sent.iter().copied().filter(|s| named.contains(s)).collect();
        if !refused.is_empty() {
            let mut step = Step::new(Next::Now);
            step.set_aside = Some((refused, reason.to_string()));
            return step;
        }
        if !named.is_empty() {
            log::warn!("the backend's refusal ({reason}) names no result of the report: finding the refused ones by halves");
        }
        if let [only] = sent {
            self.suspect = Some((*only, reason.to_string()));
            return Step::new(Next::Now);
        }
        self.split(sent, reason);
        Step::new(Next::Now)
    }

    /// Replaces the range `sent` came from by its two halves (and what of
    /// the range was not sent yet), the older half to go first.
    fn split(&mut self, sent: &[i64], reason: &str) {
        let (_, hi) = self.ranges.pop().unwrap_or((i64::MIN, i64::MAX));
        if self.ranges.is_empty() {
            log::warn!(
                "the backend refused a report of {} results for good ({reason}) without naming any: sending them in halves to find the refused ones",
                sent.len()
            );
        }
        let last = sent[sent.len() - 1];
        // Not for the whole outbox: once the halves are done, it is read
        // from its start again anyway.
        if hi != i64::MAX && last < hi {
            self.ranges.push((last + 1, hi));
        }
        let mid = sent.len() / 2;
        self.ranges.push((sent[mid], last));
        self.ranges.push((sent[0], sent[mid - 1]));
    }

    fn probe_is_refused(&mut self, reason: &str) -> Step {
        if let Some((seq, _)) = self.suspect.take() {
            log::info!(
                "seq {seq} is not set aside: the backend refuses reports without results too"
            );
        }
        if !self.probe_refused {
            log::error!(
                "the backend refuses even a report without results ({reason}): it refuses this probe, not its results; nothing is set aside and the results wait"
            );
            self.probe_refused = true;
        }
        Step::new(Next::Backoff { retry_after: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn refused(named: &[i64]) -> Answer {
        Answer::Refused {
            named: named.to_vec(),
            reason: "HTTP 422".into(),
        }
    }

    /// A backend that refuses `bad` results (without naming them when
    /// `named` is false) and more than `max` at once, against an outbox of
    /// `outbox` results: runs the plan to the end and returns what was
    /// delivered, what was set aside and how many reports it took.
    fn run(outbox: &[i64], bad: &[i64], named: bool, max: usize, batch: usize) -> Run {
        let mut plan = Plan::new(Duration::from_secs(60), batch);
        let mut waiting: Vec<i64> = outbox.to_vec();
        let mut out = Run::default();
        let now = Instant::now();
        for _ in 0..10_000 {
            let carry = plan.carry(now);
            let sent: Vec<i64> = match carry {
                Carry::Nothing => vec![],
                Carry::Results { lo, hi, limit } => {
                    let s: Vec<i64> = waiting
                        .iter()
                        .copied()
                        .filter(|s| (lo..=hi).contains(s))
                        .take(limit)
                        .collect();
                    if s.is_empty() && plan.range_exhausted() {
                        continue;
                    }
                    s
                }
            };
            out.reports += 1;
            out.sizes.push(sent.len());
            let refused_here: Vec<i64> = sent.iter().copied().filter(|s| bad.contains(s)).collect();
            let answer = if sent.len() > max {
                Answer::TooLarge {
                    reason: "HTTP 413".into(),
                }
            } else if refused_here.is_empty() {
                Answer::Accepted
            } else if named {
                refused(&refused_here)
            } else {
                refused(&[])
            };
            if answer == Answer::Accepted {
                out.delivered.extend(&sent);
                waiting.retain(|s| !sent.contains(s));
            }
            let step = plan.answer(carry, &sent, &answer, now);
            if let Some((seqs, _)) = &step.set_aside {
                out.set_aside.extend(seqs);
                waiting.retain(|s| !seqs.contains(s));
            }
            if step.next != Next::Now {
                return out;
            }
        }
        panic!("the plan never settles");
    }

    #[derive(Default, Debug)]
    struct Run {
        delivered: Vec<i64>,
        set_aside: Vec<i64>,
        reports: usize,
        sizes: Vec<usize>,
    }

    #[test]
    fn named_refusals_set_aside_exactly_those() {
        let outbox: Vec<i64> = (1..=10).collect();
        let r = run(&outbox, &[3, 7], true, usize::MAX, 4);
        assert_eq!(r.set_aside, vec![3, 7]);
        assert_eq!(r.delivered, vec![1, 2, 4, 5, 6, 8, 9, 10]);
    }

    #[test]
    fn unnamed_refusals_are_found_by_halves_and_confirmed() {
        let outbox: Vec<i64> = (1..=37).collect();
        let bad = [2, 3, 20, 37];
        let r = run(&outbox, &bad, false, usize::MAX, 16);
        let mut set_aside = r.set_aside.clone();
        set_aside.sort();
        assert_eq!(set_aside, bad.to_vec());
        let mut delivered = r.delivered.clone();
        delivered.sort();
        let good: Vec<i64> = outbox
            .iter()
            .copied()
            .filter(|s| !bad.contains(s))
            .collect();
        assert_eq!(delivered, good, "every good result delivered once");
        // Each result refused alone was followed by a report without results.
        let empties = r.sizes.iter().filter(|n| **n == 0).count();
        assert!(empties >= bad.len(), "{:?}", r.sizes);
        // Halving, not one by one: far fewer reports than results.
        assert!(r.reports < 40, "{} reports: {:?}", r.reports, r.sizes);
    }

    #[test]
    fn too_large_halves_down_to_one_and_keeps_it() {
        let outbox: Vec<i64> = (1..=20).collect();
        let r = run(&outbox, &[], false, 3, 16);
        assert_eq!(r.delivered, outbox);
        // 16, 8, 4 refused; then 2 at a time (between them, reports
        // without results: the heartbeat).
        let sizes: Vec<usize> = r.sizes.iter().copied().filter(|n| *n > 0).collect();
        assert_eq!(&sizes[..4], &[16, 8, 4, 2], "{:?}", r.sizes);
        assert!(sizes[3..].iter().all(|n| *n <= 2), "{:?}", r.sizes);
        // A single result too large for the backend is a result refused alone.
        let r = run(&[1, 2, 3], &[], false, 0, 4);
        assert_eq!(r.set_aside, vec![1, 2, 3]);
    }

    #[test]
    fn a_refused_empty_report_sets_nothing_aside() {
        let mut plan = Plan::new(60 * SEC, 4);
        let now = Instant::now();
        let carry = plan.carry(now);
        // One result refused alone, then the control is refused too.
        let step = plan.answer(carry, &[5], &refused(&[]), now);
        assert_eq!(step.next, Next::Now);
        assert_eq!(plan.carry(now), Carry::Nothing, "the control goes next");
        let step = plan.answer(Carry::Nothing, &[], &refused(&[]), now);
        assert_eq!(step.set_aside, None);
        assert!(matches!(step.next, Next::Backoff { .. }));
        assert_eq!(plan.carry(now), Carry::Nothing, "the outbox waits");
        // Names in a refusal of a report without results change nothing.
        let step = plan.answer(Carry::Nothing, &[], &refused(&[5]), now);
        assert_eq!(step.set_aside, None);
        // Accepted again: results go, seq 5 is tried again, not set aside.
        let step = plan.answer(Carry::Nothing, &[], &Answer::Accepted, now);
        assert_eq!(step.set_aside, None);
        assert!(matches!(plan.carry(now), Carry::Results { .. }));
    }

    #[test]
    fn the_heartbeat_goes_every_interval_while_results_fail() {
        let mut plan = Plan::new(10 * SEC, 4);
        let t0 = Instant::now();
        let carry = plan.carry(t0);
        assert!(matches!(carry, Carry::Results { .. }));
        plan.answer(carry, &[], &Answer::Accepted, t0);
        let failed = Answer::Failed { retry_after: None };
        let step = plan.answer(plan.carry(t0), &[1, 2], &failed, t0 + SEC);
        assert!(matches!(step.next, Next::Backoff { .. }));
        // Within the interval of the last accepted report: results again.
        assert!(matches!(plan.carry(t0 + 5 * SEC), Carry::Results { .. }));
        // An interval after it: a report without results.
        assert_eq!(plan.carry(t0 + 10 * SEC), Carry::Nothing);
        let step = plan.answer(Carry::Nothing, &[], &Answer::Accepted, t0 + 10 * SEC);
        assert_eq!(step.next, Next::Now, "results go again at once");
        assert!(!step.reset_backoff, "the results' backoff goes on");
        assert!(matches!(plan.carry(t0 + 10 * SEC), Carry::Results { .. }));
        // A report that finds nothing waiting ends the failing spell.
        let step = plan.answer(plan.carry(t0), &[], &Answer::Accepted, t0 + 11 * SEC);
        assert_eq!(step.next, Next::Interval);
        assert!(matches!(plan.carry(t0 + 30 * SEC), Carry::Results { .. }));
    }

    #[test]
    fn a_full_batch_or_a_narrowing_goes_on_at_once() {
        let mut plan = Plan::new(60 * SEC, 2);
        let now = Instant::now();
        let c = plan.carry(now);
        assert_eq!(
            plan.answer(c, &[1, 2], &Answer::Accepted, now).next,
            Next::Now
        );
        let c = plan.carry(now);
        assert_eq!(
            plan.answer(c, &[3], &Answer::Accepted, now).next,
            Next::Interval
        );
        let c = plan.carry(now);
        let step = plan.answer(c, &[], &Answer::Auth, now);
        assert_eq!(step.next, Next::Interval);
        let retry = Some(30 * SEC);
        let step = plan.answer(c, &[4], &Answer::Failed { retry_after: retry }, now);
        assert_eq!(step.next, Next::Backoff { retry_after: retry });
    }
}
