//! A peer list made ready off the main loop: shared peers, skip reasons, the store's copy and the secrets' automaton, so that applying it is a few swaps.
//!
//! A hostile list holds 100,000 peers, each with its own network secret.
//! Everything about it that costs time in proportion to its size (copying
//! the peers for the store, the skip reasons, the ids, and above all the
//! redaction automaton) is done by the thread that read the list (the
//! fetcher, the peers-file reader, or the start before the loop runs), so
//! that the main loop, which dispatches checks and feeds the watchdog, is
//! never held up by a list (`benches/lists.rs`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::peer::Peer;
use crate::redact::{self, RetiredSecrets, StagedSecrets};
use crate::store::StoredPeer;

/// A complete, validated peer set, ready to apply.
pub struct PeerList {
    /// Every peer with the reason it is not checked, for the store.
    pub stored: Vec<StoredPeer>,
    /// The peers to check (shared with `stored`, not copied).
    pub checkable: Vec<Arc<Peer>>,
    /// Their ids: what the schedule and the metrics keep.
    pub checkable_ids: Arc<HashSet<i64>>,
    /// The peers not checked (unsupported transport), with the reason.
    pub skipped: Vec<(Arc<Peer>, &'static str)>,
    pub etag: Option<String>,
    /// The redaction of these peers' secrets, built for a swap.
    pub secrets: StagedSecrets,
}

// Hand-written: a list is logged by its size, never by its peers.
impl fmt::Debug for PeerList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerList")
            .field("peers", &self.stored.len())
            .field("skipped", &self.skipped.len())
            .field("etag", &self.etag)
            .finish()
    }
}

/// What applying a list let go: the peers it replaced and the redaction
/// sets it swapped out. For 100,000 peers that is half a million small
/// allocations, about 25 ms to free, so the main loop hands it back to the
/// list thread (which also allocated it) instead of freeing it.
#[derive(Default)]
pub struct Retired {
    pub peers: Vec<Arc<Peer>>,
    pub secrets: Vec<RetiredSecrets>,
}

impl Retired {
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.secrets.is_empty()
    }
}

impl fmt::Debug for Retired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retired({} peers)", self.peers.len())
    }
}

/// Prepares the lists of one source, on the thread that reads them.
pub struct Preparer {
    /// Whether quic peers are checked (`--allow-quic`).
    allow_quic: bool,
    /// The peers of the last list handed to the main loop: a peer that did
    /// not change is handed over again as the same allocation, so the
    /// schedule sees it unchanged by comparing pointers, not strings (an
    /// unchanged 100,000-peer list, fetched every interval from a backend
    /// without ETags, costs the main loop a few milliseconds).
    handed_over: HashMap<i64, Arc<Peer>>,
}

impl Preparer {
    pub fn new(allow_quic: bool) -> Preparer {
        Preparer {
            allow_quic,
            handed_over: HashMap::new(),
        }
    }

    /// Prepares `peers` on the calling thread. Their secrets are registered
    /// for redaction at once (the list's checks may start as soon as it is
    /// applied) and staged, so that applying the list forgets the secrets
    /// of peers no longer watched without building anything.
    pub fn prepare(&mut self, peers: Vec<Peer>, etag: Option<String>) -> PeerList {
        let secrets = || peers.iter().filter_map(|p| p.network_secret.as_deref());
        // A list from the backend or a file was registered as it was
        // validated (before any entry could be printed); this covers the
        // cached list and `--peer` flags, and builds nothing when no secret
        // is new.
        redact::add_network_secrets(secrets());
        let staged = redact::stage_network_secrets(secrets());
        let mut stored = Vec::with_capacity(peers.len());
        let mut checkable = Vec::with_capacity(peers.len());
        let mut skipped = Vec::new();
        let mut now_handed = HashMap::with_capacity(peers.len());
        for peer in peers {
            let peer = match self.handed_over.get(&peer.id) {
                Some(known) if **known == peer => known.clone(),
                _ => Arc::new(peer),
            };
            now_handed.insert(peer.id, peer.clone());
            let reason = peer.unsupported_reason(self.allow_quic);
            match reason {
                Some(reason) => skipped.push((peer.clone(), reason)),
                None => checkable.push(peer.clone()),
            }
            stored.push(StoredPeer {
                peer,
                skip_reason: reason.map(str::to_string),
            });
        }
        self.handed_over = now_handed;
        let checkable_ids = Arc::new(checkable.iter().map(|p| p.id).collect());
        PeerList {
            stored,
            checkable,
            checkable_ids,
            skipped,
            etag,
            secrets: staged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_into_checked_and_skipped_and_shares_its_peers() {
        let mut wg = crate::peer::peer_from_uri("wg://relay.example:11011?id=2").unwrap();
        wg.network_secret = None;
        let tcp = crate::peer::peer_from_uri("tcp://node.example:11010?id=1").unwrap();
        let mut preparer = Preparer::new(false);
        let list = preparer.prepare(vec![tcp.clone(), wg.clone()], Some("\"v1\"".into()));
        assert_eq!(list.stored.len(), 2);
        assert_eq!(list.checkable.len(), 1);
        assert_eq!(list.checkable[0].id, 1);
        assert!(Arc::ptr_eq(&list.checkable[0], &list.stored[0].peer));
        assert_eq!(list.skipped.len(), 1);
        assert_eq!(list.skipped[0].0.id, 2);
        assert_eq!(
            list.stored[1].skip_reason.as_deref(),
            Some(list.skipped[0].1)
        );
        assert!(list.checkable_ids.contains(&1) && !list.checkable_ids.contains(&2));
        // Debug never shows a peer.
        assert!(!format!("{list:?}").contains("node.example"));
        // The next list: the unchanged peer is the same allocation, the
        // changed one a new one.
        let mut moved = wg;
        moved.port += 1;
        let next = preparer.prepare(vec![tcp, moved], None);
        assert!(Arc::ptr_eq(&next.stored[0].peer, &list.stored[0].peer));
        assert!(!Arc::ptr_eq(&next.stored[1].peer, &list.stored[1].peer));
        assert_eq!(next.stored[1].peer.port, list.stored[1].peer.port + 1);
    }
}
