//! Applying a peer list on the main loop, the cached backend list at start, and the warning about peers not checked.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::event::MainLoop;
use crate::config::DaemonConfig;
use crate::peer::Peer;
use crate::peer_list::PeerList;
use crate::redact::StagedSecrets;
use crate::store::{self, StoreMsg};

/// What the stored list and its ETag are tied to: the backend URL and
/// region (None for a standalone list). See `store::KEY_PEERS_SOURCE`.
pub fn source_key(config: &DaemonConfig) -> Option<String> {
    config.distributed.as_ref().map(|d| {
        format!(
            "{} region={}",
            d.backend_base_url,
            d.region.as_deref().unwrap_or("")
        )
    })
}

/// The last good list from the backend, and its ETag, if they came from the
/// backend URL and region in use now: a list for another region must not be
/// checked and reported under this one, nor its ETag answered with 304.
pub fn cached_peers(
    conn: &rusqlite::Connection,
    source: Option<&str>,
) -> anyhow::Result<(Vec<Peer>, Option<String>)> {
    let cached = store::load_active_peers(conn)?;
    if cached.is_empty() {
        return Ok((cached, None));
    }
    if store::get_state(conn, store::KEY_PEERS_SOURCE)?.as_deref() != source {
        log::info!(
            "the stored list of {} peers came from another backend, region or the standalone mode; waiting for the backend's list",
            cached.len()
        );
        return Ok((Vec::new(), None));
    }
    log::info!(
        "checking {} peers from the last good list until the backend answers",
        cached.len()
    );
    Ok((cached, store::get_state(conn, store::KEY_PEERS_ETAG)?))
}

/// Whether a check in hand (`dispatched`, the peers as they were sent to
/// the workers) has a network secret that `staged` would forget.
fn needed_by_checks_in_hand<'a>(
    staged: &StagedSecrets,
    mut dispatched: impl Iterator<Item = &'a Peer>,
) -> bool {
    dispatched.any(|peer| {
        peer.network_secret
            .as_deref()
            .is_some_and(|secret| !staged.keeps(secret))
    })
}

impl MainLoop {
    /// Takes a complete peer set, prepared off the loop (`PeerList`):
    /// stores it, warns about skipped peers, reschedules. The work here is
    /// a lookup per peer (the schedule, the per-peer maps) and no building,
    /// copying or freeing of the list itself (`benches/lists.rs` measures
    /// the stall); what the list replaced goes to `to_free`, for the list
    /// thread to free.
    pub fn apply_peers(&mut self, list: PeerList, persist: bool) {
        let started = Instant::now();
        let PeerList {
            stored,
            checkable,
            checkable_ids,
            skipped,
            etag,
            secrets,
        } = list;
        // The secrets of the peers watched from now on; those of peers no
        // longer watched are forgotten, once no check of theirs runs (the
        // new list's own are known since it was read). A list still waiting
        // for its checks is superseded: never swapped in.
        if let Some(older) = self.pending_secrets.replace(secrets) {
            self.to_free.secrets.push(older.into());
        }
        self.install_pending_secrets();
        self.warn_skipped(&skipped);
        if persist {
            let msg = StoreMsg::ReplacePeers {
                peers: stored,
                etag,
                source: self.peers_source.clone(),
            };
            if self.store.send(msg).is_err() {
                log::error!("the store writer is gone; the new peer list is not saved");
            }
        }
        let changes = self.schedule.replace(
            checkable,
            &checkable_ids,
            Instant::now(),
            &mut self.to_free.peers,
        );
        // A peer whose address or network changed may be another node:
        // its next check is full.
        for id in &changes.updated {
            self.observed.remove(id);
        }
        self.last_status.retain(|id, _| checkable_ids.contains(id));
        self.observed.retain(|id, _| checkable_ids.contains(id));
        crate::metrics::retain_peers(checkable_ids);
        let schedule = &self.schedule;
        for (id, (peer, cancelled)) in &self.jobs {
            if schedule.peer(*id) != Some(&**peer) {
                // A queued job is dropped; one already running finishes.
                cancelled.store(true, Ordering::Relaxed);
            }
        }
        // An unchanged list (every fetch without ETag support) is not news.
        let level = if changes == Default::default() {
            log::Level::Debug
        } else {
            log::Level::Info
        };
        log::log!(
            level,
            "peer set: {} checked ({} added, {} removed, {} changed), {} skipped; applied in {} ms",
            self.schedule.len(),
            changes.added,
            changes.removed,
            changes.updated.len(),
            self.skipped.len(),
            started.elapsed().as_millis()
        );
    }

    /// Swaps in the last list's secrets unless a check still in hand would
    /// lose its peer's (a peer removed or changed while its check runs):
    /// then at that check's end (`finished` calls this again).
    pub fn install_pending_secrets(&mut self) {
        let Some(staged) = self.pending_secrets.take() else {
            return;
        };
        let dispatched = self.jobs.values().map(|(peer, _)| &**peer);
        if needed_by_checks_in_hand(&staged, dispatched) {
            self.pending_secrets = Some(staged);
            return;
        }
        let (installed, retired) = crate::redact::install_network_secrets(staged);
        if !installed {
            log::debug!("a newer peer list was read meanwhile: its secrets stay redacted too");
        }
        self.to_free.secrets.push(retired);
    }

    /// One warning when the set of skipped peers changes, not one per list;
    /// it names the first few (a hostile list may skip thousands).
    fn warn_skipped(&mut self, skipped: &[(Arc<Peer>, &'static str)]) {
        const NAMED: usize = 5;
        let skipped_ids: HashSet<i64> = skipped.iter().map(|(p, _)| p.id).collect();
        if !skipped.is_empty() && skipped_ids != self.skipped {
            let names: Vec<String> = skipped
                .iter()
                .take(NAMED)
                .map(|(p, reason)| format!("{} ({}): {reason}", p.name, p.uri()))
                .collect();
            let more = match skipped.len().saturating_sub(NAMED) {
                0 => String::new(),
                n => format!("; and {n} more"),
            };
            log::warn!(
                "not checking {} peer(s), shown as unsupported: {}{more}",
                skipped.len(),
                names.join("; ")
            );
        }
        self.skipped = skipped_ids;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: i64, secret: Option<&str>) -> Peer {
        let mut peer = crate::peer::peer_from_uri(&format!("tcp://h:{}?id={id}", id + 1)).unwrap();
        peer.network_secret = secret.map(str::to_string);
        peer
    }

    #[test]
    fn a_check_in_hand_keeps_its_peers_secret_until_it_ends() {
        crate::redact::add_network_secrets(["kept-secret-1", "removed-secret-1"]);
        let staged = crate::redact::stage_network_secrets(["kept-secret-1"]);
        let removed = peer(1, Some("removed-secret-1"));
        let kept = peer(2, Some("kept-secret-1"));
        let relay = peer(3, None);
        assert!(needed_by_checks_in_hand(
            &staged,
            [&kept, &removed].into_iter()
        ));
        assert!(!needed_by_checks_in_hand(
            &staged,
            [&kept, &relay].into_iter()
        ));
        assert!(!needed_by_checks_in_hand(&staged, std::iter::empty()));
    }
}
