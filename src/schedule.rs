//! When each peer is due: checks spread evenly over the interval, never two at once for a peer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::peer::Peer;

struct Entry {
    /// Shared with the list it came from and with jobs: a new list or a
    /// dispatch copies a pointer, not the peer.
    peer: Arc<Peer>,
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
    /// Peers whose address or network changed: their next check is full.
    pub updated: Vec<i64>,
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
        self.entries.get(&id).map(|e| &*e.peer)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Replaces the peer set with `peers`, whose ids are `incoming`. Known
    /// peers keep their phase; new peers are spread one slot
    /// (`interval / peers`) apart from now on, so that neither a start nor a
    /// big addition becomes a burst of simultaneous checks. Every peer let go
    /// (removed, replaced, or the new copy of an unchanged one) goes to
    /// `retired`, for another thread to free.
    pub fn replace(
        &mut self,
        peers: Vec<Arc<Peer>>,
        incoming: &HashSet<i64>,
        now: Instant,
        retired: &mut Vec<Arc<Peer>>,
    ) -> Changes {
        let mut changes = Changes::default();
        let before = self.entries.len();
        self.entries.retain(|id, entry| {
            let keep = incoming.contains(id);
            if !keep {
                retired.push(entry.peer.clone());
            }
            keep
        });
        changes.removed = before - self.entries.len();
        let slot = self.interval / (peers.len().max(1) as u32);
        let mut new_peers: Vec<Arc<Peer>> = Vec::new();
        for peer in peers {
            match self.entries.get_mut(&peer.id) {
                // The list thread hands an unchanged peer over as the
                // same allocation: a pointer compare, no string compares.
                Some(entry) if Arc::ptr_eq(&entry.peer, &peer) => {}
                Some(entry) if entry.peer == peer => retired.push(peer),
                Some(entry) => {
                    if self.running.contains(&peer.id) {
                        // The job in hand is for the old address or
                        // network (the daemon cancels it if it has not
                        // started): check the new one as soon as it is
                        // over, not an interval later. At most one such
                        // peer per worker, so this is never a burst.
                        entry.next_due = entry.next_due.min(now);
                    }
                    changes.updated.push(peer.id);
                    retired.push(std::mem::replace(&mut entry.peer, peer));
                }
                None => new_peers.push(peer),
            }
        }
        // A stable order makes the spread reproducible from run to run.
        new_peers.sort_by_key(|p| p.id);
        changes.added = new_peers.len();
        self.entries.reserve(new_peers.len());
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
    pub fn due(&self, now: Instant) -> Vec<Arc<Peer>> {
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

    /// Replaces the schedule's peers, as the daemon does.
    fn replace(s: &mut Schedule, peers: Vec<Arc<Peer>>, now: Instant) -> Changes {
        let ids = peers.iter().map(|p| p.id).collect();
        s.replace(peers, &ids, now, &mut Vec::new())
    }

    fn peers(ids: &[i64]) -> Vec<Arc<Peer>> {
        ids.iter()
            .map(|id| {
                Arc::new(
                    crate::peer::peer_from_uri(&format!("tcp://h:{}?id={id}", id + 1)).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn spreads_new_peers_over_the_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(60));
        assert_eq!(replace(&mut s, peers(&[1, 2, 3, 4]), t0).added, 4);
        assert_eq!(s.due(t0).len(), 1);
        assert_eq!(s.due(t0 + Duration::from_secs(15)).len(), 2);
        assert_eq!(s.due(t0 + Duration::from_secs(45)).len(), 4);
    }

    #[test]
    fn a_peer_never_runs_twice_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(10));
        replace(&mut s, peers(&[1]), t0);
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
        replace(&mut s, peers(&[1, 2]), t0);
        s.dispatched(1, t0);
        let c = replace(&mut s, peers(&[1, 3]), t0 + Duration::from_secs(1));
        assert_eq!(
            c,
            Changes {
                added: 1,
                removed: 1,
                updated: vec![]
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
        replace(&mut s, peers(&[1, 2]), t0);
        s.dispatched(1, t0);
        let mut changed = peers(&[1, 2]);
        Arc::make_mut(&mut changed[0]).host = "moved.example".into();
        Arc::make_mut(&mut changed[1]).host = "moved.example".into();
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(replace(&mut s, changed, t1).updated, vec![1, 2]);
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
        replace(&mut s, peers(&[1]), t0);
        s.dispatched(1, t0);
        replace(&mut s, peers(&[]), t0);
        assert_eq!(s.in_flight(), 1, "the running check is still counted");
        replace(&mut s, peers(&[1]), t0);
        assert!(s.due(t0).is_empty(), "not checked twice at once");
        assert_eq!(s.next_due(), None);
        s.finished(1);
        assert_eq!(s.due(t0).len(), 1);
    }

    #[test]
    fn every_peer_let_go_is_handed_back_to_be_freed_elsewhere() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(60));
        let first = peers(&[1, 2, 3, 5]);
        replace(&mut s, first.clone(), t0);
        // 1 handed over again as the same allocation, 5 unchanged but a
        // new copy, 2 moved, 3 gone, 4 new.
        let mut next = peers(&[1, 2, 4, 5]);
        next[0] = first[0].clone();
        Arc::make_mut(&mut next[1]).host = "moved.example".into();
        let new_copy_of_5 = next[3].clone();
        let ids = next.iter().map(|p| p.id).collect();
        let mut retired = Vec::new();
        let changes = s.replace(next, &ids, t0, &mut retired);
        assert_eq!((changes.added, changes.removed), (1, 1));
        assert_eq!(changes.updated, vec![2]);
        let mut retired_ids: Vec<i64> = retired.iter().map(|p| p.id).collect();
        retired_ids.sort();
        assert_eq!(retired_ids, vec![2, 3, 5]);
        // The schedule keeps its own copy of an unchanged peer and lets the
        // new one go; the moved peer's old definition goes too.
        assert!(Arc::ptr_eq(&s.entries[&1].peer, &first[0]));
        assert!(Arc::ptr_eq(&s.entries[&5].peer, &first[3]));
        assert!(retired.iter().any(|p| Arc::ptr_eq(p, &new_copy_of_5)));
        assert!(retired.iter().any(|p| Arc::ptr_eq(p, &first[1])));
        assert_eq!(s.peer(2).unwrap().host, "moved.example");
    }
}
