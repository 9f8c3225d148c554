//! Applying a peer list on the main loop, the cached backend list at start, and the warning about peers not checked.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::event::MainLoop;
use crate::config::DaemonConfig;
use crate::peer::Peer;
use crate::peer_list::{PeerList, Retired};
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

impl MainLoop {
    /// Takes a complete peer set, prepared off the loop (`PeerList`):
    /// stores it, warns about skipped peers, reschedules. Nothing here
    /// builds, copies or frees anything in proportion to the list but the
    /// schedule's own entries (`benches/lists.rs` measures the stall); what
    /// the list replaced is returned, for the list thread to free.
    pub fn apply_peers(&mut self, list: PeerList, persist: bool) -> Retired {
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
        // longer watched are forgotten.
        let (installed, retired_secrets) = crate::redact::install_network_secrets(secrets);
        if !installed {
            log::debug!("a newer peer list was read meanwhile: its secrets stay redacted too");
        }
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
        let mut retired = Retired {
            peers: Vec::new(),
            secrets: Some(retired_secrets),
        };
        let changes = self.schedule.replace(
            checkable,
            &checkable_ids,
            Instant::now(),
            &mut retired.peers,
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
        retired
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
