//! When each peer is due: checks spread evenly over the interval, never two at once for a peer.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::peer::Peer;

struct Entry {
    peer: Peer,
    next_due: Instant,
}

/// The scheduler's state. Pure data: the daemon's main loop drives it with the clock.
pub struct Schedule {
    interval: Duration,
    entries: HashMap<i64, Entry>,
    /// Peers whose check is running. Kept apart from `entries` so that a
    /// peer removed while its check runs and added back at once is not
    /// checked a second time in parallel.
    running: HashSet<i64>,
}

/// What a new peer set changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
    pub updated: usize,
}

impl Schedule {
    pub fn new(interval: Duration) -> Schedule {
        Schedule {
            interval,
            entries: HashMap::new(),
            running: HashSet::new(),
        }
    }

    pub fn contains(&self, id: i64) -> bool {
        self.entries.contains_key(&id)
    }

    /// The peer as currently scheduled.
    pub fn peer(&self, id: i64) -> Option<&Peer> {
        self.entries.get(&id).map(|e| &e.peer)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Replaces the peer set. Known peers keep their phase; new peers are
    /// spread one slot (`interval / peers`) apart from now on, so that neither
    /// a start nor a big addition becomes a burst of simultaneous checks.
    pub fn replace(&mut self, peers: Vec<Peer>, now: Instant) -> Changes {
        let mut changes = Changes::default();
        let incoming: std::collections::HashSet<i64> = peers.iter().map(|p| p.id).collect();
        let before = self.entries.len();
        self.entries.retain(|id, _| incoming.contains(id));
        changes.removed = before - self.entries.len();
        let slot = self.interval / (peers.len().max(1) as u32);
        let mut new_peers: Vec<Peer> = Vec::new();
        for peer in peers {
            match self.entries.get_mut(&peer.id) {
                Some(entry) => {
                    if entry.peer != peer {
                        if self.running.contains(&peer.id) {
                            // The job in hand is for the old address or
                            // network (the daemon cancels it if it has not
                            // started): check the new one as soon as it is
                            // over, not an interval later. At most one such
                            // peer per worker, so this is never a burst.
                            entry.next_due = entry.next_due.min(now);
                        }
                        entry.peer = peer;
                        changes.updated += 1;
                    }
                }
                None => new_peers.push(peer),
            }
        }
        // A stable order makes the spread reproducible from run to run.
        new_peers.sort_by_key(|p| p.id);
        changes.added = new_peers.len();
        for (k, peer) in new_peers.into_iter().enumerate() {
            self.entries.insert(
                peer.id,
                Entry {
                    peer,
                    next_due: now + slot * k as u32,
                },
            );
        }
        changes
    }

    /// Peers whose check is due and not already running, most overdue first.
    pub fn due(&self, now: Instant) -> Vec<Peer> {
        let mut due: Vec<&Entry> = self
            .entries
            .values()
            .filter(|e| e.next_due <= now && !self.running.contains(&e.peer.id))
            .collect();
        due.sort_by_key(|e| (e.next_due, e.peer.id));
        due.into_iter().map(|e| e.peer.clone()).collect()
    }

    /// Every peer's next due time (for a seamless recycle).
    pub fn due_times(&self) -> impl Iterator<Item = (i64, Instant)> + '_ {
        self.entries.iter().map(|(id, e)| (*id, e.next_due))
    }

    /// Gives known peers the due times a previous image had for them; a
    /// time more than an interval ahead is not believed.
    pub fn restore_due(&mut self, due: &HashMap<i64, Instant>, now: Instant) {
        for (id, entry) in &mut self.entries {
            if let Some(at) = due.get(id) {
                if *at <= now + self.interval {
                    entry.next_due = *at;
                }
            }
        }
    }

    /// How many peers `due` would give, without building the list.
    pub fn due_count(&self, now: Instant) -> usize {
        self.entries
            .values()
            .filter(|e| e.next_due <= now && !self.running.contains(&e.peer.id))
            .count()
    }

    /// Records that the peer's check was handed to a worker.
    pub fn dispatched(&mut self, id: i64, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&id) {
            self.running.insert(id);
            // Keep the phase: the next check is one interval after this one
            // was due, skipping slots already missed rather than catching up.
            let mut next = entry.next_due + self.interval;
            while next <= now {
                next += self.interval;
            }
            entry.next_due = next;
        }
    }

    /// Records that the peer's check finished, whether or not the peer is still listed.
    pub fn finished(&mut self, id: i64) {
        self.running.remove(&id);
    }

    /// When the next peer that is not running becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| !self.running.contains(&e.peer.id))
            .map(|e| e.next_due)
            .min()
    }

    /// Checks running, including those of peers removed meanwhile.
    pub fn in_flight(&self) -> usize {
        self.running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(ids: &[i64]) -> Vec<Peer> {
        ids.iter()
            .map(|id| crate::peer::peer_from_uri(&format!("tcp://h:{}?id={id}", id + 1)).unwrap())
            .collect()
    }

    #[test]
    fn spreads_new_peers_over_the_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(60));
        assert_eq!(s.replace(peers(&[1, 2, 3, 4]), t0).added, 4);
        assert_eq!(s.due(t0).len(), 1);
        assert_eq!(s.due(t0 + Duration::from_secs(15)).len(), 2);
        assert_eq!(s.due(t0 + Duration::from_secs(45)).len(), 4);
    }

    #[test]
    fn a_peer_never_runs_twice_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(10));
        s.replace(peers(&[1]), t0);
        s.dispatched(1, t0);
        // Still running a whole interval later: not due again.
        assert!(s.due(t0 + Duration::from_secs(25)).is_empty());
        s.finished(1);
        // Missed slots are skipped, not caught up in a burst.
        let late = t0 + Duration::from_secs(25);
        assert_eq!(s.due(late).len(), 1);
        s.dispatched(1, late);
        assert_eq!(s.next_due(), None);
        s.finished(1);
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn replacing_keeps_known_peers_and_drops_missing_ones() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(60));
        s.replace(peers(&[1, 2]), t0);
        s.dispatched(1, t0);
        let c = s.replace(peers(&[1, 3]), t0 + Duration::from_secs(1));
        assert_eq!(
            c,
            Changes {
                added: 1,
                removed: 1,
                updated: 0
            }
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s.in_flight(), 1);
        s.finished(2); // a result for a removed peer is harmless
    }

    #[test]
    fn a_peer_changed_while_its_check_is_in_hand_is_checked_again_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(60));
        s.replace(peers(&[1, 2]), t0);
        s.dispatched(1, t0);
        let mut changed = peers(&[1, 2]);
        changed[0].host = "moved.example".into();
        changed[1].host = "moved.example".into();
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(s.replace(changed, t1).updated, 2);
        s.finished(1);
        let due: Vec<i64> = s.due(t1).iter().map(|p| p.id).collect();
        assert_eq!(
            due,
            vec![1],
            "peer 1 with its new address, peer 2 keeps its slot"
        );
        assert_eq!(s.due(t1)[0].host, "moved.example");
    }

    #[test]
    fn a_peer_removed_and_readded_while_running_waits_for_its_check() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(60));
        s.replace(peers(&[1]), t0);
        s.dispatched(1, t0);
        s.replace(peers(&[]), t0);
        assert_eq!(s.in_flight(), 1, "the running check is still counted");
        s.replace(peers(&[1]), t0);
        assert!(s.due(t0).is_empty(), "not checked twice at once");
        assert_eq!(s.next_due(), None);
        s.finished(1);
        assert_eq!(s.due(t0).len(), 1);
    }
}
