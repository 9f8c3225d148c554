//! When each peer is due: checks spread evenly over the interval, never two at once for a peer.

use std::collections::{BTreeSet, HashMap, HashSet};
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
    /// Every entry's `(next_due, id)`, in due order: the main loop finds
    /// what is due, and when the next check is, without looking at every
    /// peer (a turn stays short at 100,000 peers).
    by_due: BTreeSet<(Instant, i64)>,
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
            by_due: BTreeSet::new(),
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
        let by_due = &mut self.by_due;
        self.entries.retain(|id, entry| {
            let keep = incoming.contains(id);
            if !keep {
                by_due.remove(&(entry.next_due, *id));
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
                    if self.running.contains(&peer.id) && entry.next_due > now {
                        // The job in hand is for the old address or
                        // network (the daemon cancels it if it has not
                        // started): check the new one as soon as it is
                        // over, not an interval later. At most one such
                        // peer per worker, so this is never a burst.
                        self.by_due.remove(&(entry.next_due, peer.id));
                        self.by_due.insert((now, peer.id));
                        entry.next_due = now;
                    }
                    changes.updated.push(peer.id);
                    retired.push(std::mem::replace(&mut entry.peer, peer));
                }
                None => new_peers.push(peer),
            }
        }
        // A stable order makes the spread reproducible from run to run.
        new_peers.sort_by_key(|p| p.id);
        // Every source gives unique ids; should one not, the first copy
        // wins rather than the index holding an id twice.
        new_peers.dedup_by_key(|p| p.id);
        changes.added = new_peers.len();
        self.entries.reserve(new_peers.len());
        let mut new_due = Vec::with_capacity(new_peers.len());
        for (k, peer) in new_peers.into_iter().enumerate() {
            let next_due = now + slot * k as u32;
            new_due.push((next_due, peer.id));
            self.entries.insert(peer.id, Entry { peer, next_due });
        }
        if new_due.len() > self.by_due.len() / 8 {
            // Many at once (the first list): built in bulk from sorted keys
            // and merged, not inserted one by one.
            self.by_due.append(&mut new_due.into_iter().collect());
        } else {
            self.by_due.extend(new_due);
        }
        debug_assert_eq!(self.by_due.len(), self.entries.len());
        changes
    }

    /// Moves a peer's next check, keeping the due-order index in step.
    fn set_due(&mut self, id: i64, next_due: Instant) {
        if let Some(entry) = self.entries.get_mut(&id) {
            self.by_due.remove(&(entry.next_due, id));
            self.by_due.insert((next_due, id));
            entry.next_due = next_due;
        }
    }

    /// Peers due by `now` and not running, in due order.
    fn due_ids(&self, now: Instant) -> impl Iterator<Item = i64> + '_ {
        self.by_due
            .range(..=(now, i64::MAX))
            .map(|(_, id)| *id)
            .filter(|id| !self.running.contains(id))
    }

    /// Up to `limit` peers whose check is due and not already running, most
    /// overdue first (the workers take no more than `limit` at once).
    pub fn due(&self, now: Instant, limit: usize) -> Vec<Arc<Peer>> {
        self.due_ids(now)
            .take(limit)
            .map(|id| self.entries[&id].peer.clone())
            .collect()
    }

    /// Every peer's next due time (for a seamless recycle).
    pub fn due_times(&self) -> impl Iterator<Item = (i64, Instant)> + '_ {
        self.entries.iter().map(|(id, e)| (*id, e.next_due))
    }

    /// Gives known peers the due times a previous image had for them; a
    /// time more than an interval ahead is not believed.
    pub fn restore_due(&mut self, due: &HashMap<i64, Instant>, now: Instant) {
        for (id, at) in due {
            if *at <= now + self.interval {
                self.set_due(*id, *at);
            }
        }
    }

    /// How many peers `due` would give, without building the list.
    pub fn due_count(&self, now: Instant) -> usize {
        self.due_ids(now).count()
    }

    /// Records that the peer's check was handed to a worker.
    pub fn dispatched(&mut self, id: i64, now: Instant) {
        if let Some(entry) = self.entries.get(&id) {
            self.running.insert(id);
            // Keep the phase: the next check is one interval after this one
            // was due, skipping slots already missed rather than catching up.
            let mut next = entry.next_due + self.interval;
            while next <= now {
                next += self.interval;
            }
            self.set_due(id, next);
        }
    }

    /// Records that the peer's check finished, whether or not the peer is still listed.
    pub fn finished(&mut self, id: i64) {
        self.running.remove(&id);
    }

    /// When the next peer that is not running becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        // Running peers were moved an interval on when dispatched: few, if
        // any, are skipped before the answer.
        self.by_due
            .iter()
            .find(|(_, id)| !self.running.contains(id))
            .map(|(at, _)| *at)
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
        assert_eq!(s.due(t0, usize::MAX).len(), 1);
        assert_eq!(s.due(t0 + Duration::from_secs(15), usize::MAX).len(), 2);
        assert_eq!(s.due(t0 + Duration::from_secs(45), usize::MAX).len(), 4);
    }

    #[test]
    fn a_peer_never_runs_twice_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(10));
        replace(&mut s, peers(&[1]), t0);
        s.dispatched(1, t0);
        // Still running a whole interval later: not due again.
        assert!(s.due(t0 + Duration::from_secs(25), usize::MAX).is_empty());
        s.finished(1);
        // Missed slots are skipped, not caught up in a burst.
        let late = t0 + Duration::from_secs(25);
        assert_eq!(s.due(late, usize::MAX).len(), 1);
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
        let due: Vec<i64> = s.due(t1, usize::MAX).iter().map(|p| p.id).collect();
        assert_eq!(
            due,
            vec![1],
            "peer 1 with its new address, peer 2 keeps its slot"
        );
        assert_eq!(s.due(t1, usize::MAX)[0].host, "moved.example");
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
        assert!(
            s.due(t0, usize::MAX).is_empty(),
            "not checked twice at once"
        );
        assert_eq!(s.next_due(), None);
        s.finished(1);
        assert_eq!(s.due(t0, usize::MAX).len(), 1);
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

    /// The index holds exactly each entry's due time, and `due` gives what
    /// a scan of every entry would, in the same order.
    fn assert_index_matches(s: &Schedule, now: Instant) {
        let expected: BTreeSet<(Instant, i64)> =
            s.entries.iter().map(|(id, e)| (e.next_due, *id)).collect();
        assert_eq!(s.by_due, expected);
        let mut scanned: Vec<(Instant, i64)> = s
            .entries
            .iter()
            .filter(|(id, e)| e.next_due <= now && !s.running.contains(id))
            .map(|(id, e)| (e.next_due, *id))
            .collect();
        scanned.sort();
        let due: Vec<i64> = s.due(now, usize::MAX).iter().map(|p| p.id).collect();
        assert_eq!(due, scanned.iter().map(|(_, id)| *id).collect::<Vec<_>>());
        assert_eq!(s.due_count(now), due.len());
        let next = s
            .entries
            .iter()
            .filter(|(id, _)| !s.running.contains(id))
            .map(|(_, e)| e.next_due)
            .min();
        assert_eq!(s.next_due(), next);
    }

    #[test]
    fn the_due_index_follows_every_change() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(60));
        replace(&mut s, peers(&(0..50).collect::<Vec<_>>()), t0);
        assert_index_matches(&s, t0 + Duration::from_secs(30));
        // Dispatch what is due, with a limit, most overdue first.
        let t1 = t0 + Duration::from_secs(30);
        let first: Vec<i64> = s.due(t1, 3).iter().map(|p| p.id).collect();
        assert_eq!(first, vec![0, 1, 2]);
        for id in &first {
            s.dispatched(*id, t1);
        }
        assert_index_matches(&s, t1);
        // A new list: some gone, some moved (one of them running), some new.
        let mut next = peers(&(2..60).collect::<Vec<_>>());
        Arc::make_mut(&mut next[0]).host = "moved.example".into();
        Arc::make_mut(&mut next[5]).host = "moved.example".into();
        replace(&mut s, next, t1);
        assert_index_matches(&s, t1);
        s.finished(2);
        assert_index_matches(&s, t1);
        // Due times carried over a recycle.
        let carried: HashMap<i64, Instant> = [(10, t0), (11, t0 + Duration::from_secs(600))]
            .into_iter()
            .collect();
        s.restore_due(&carried, t1);
        assert_index_matches(&s, t1);
        assert_eq!(s.due(t1, 1)[0].id, 10, "the most overdue first");
    }
}
