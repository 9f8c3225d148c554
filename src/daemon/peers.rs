//! Peer sources and the transport policy: the peers file and `--peer` flags, the cached backend list, and which peers are not checked.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;

use super::event::MainLoop;
use crate::config::DaemonConfig;
use crate::peer::{self, Peer};
use crate::store::{self, StoreMsg, StoredPeer};

/// Reads the peers file: an unreadable or malformed file is an error, an
/// invalid entry is a warning.
pub fn read_peers_file(path: &Path) -> anyhow::Result<Vec<Peer>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the peers file {}", path.display()))?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).with_context(|| {
        format!(
            "the peers file {} is not a JSON array of peer objects",
            path.display()
        )
    })?;
    let (peers, problems) = peer::validate_list(list);
    if let Some(summary) = peer::summarize_problems(&problems) {
        log::warn!("peers file {}: {summary}", path.display());
    }
    Ok(peers)
}

/// The standalone peer set: the file's peers, then `--peer` ones.
pub fn standalone_peers(config: &DaemonConfig) -> anyhow::Result<Vec<Peer>> {
    let mut peers = match &config.peers_file {
        Some(path) => read_peers_file(path)?,
        None => Vec::new(),
    };
    for peer in &config.cli_peers {
        if peers.iter().any(|p| p.id == peer.id) {
            log::warn!(
                "--peer {}: id {} is already in the peers file; skipped",
                peer.uri(),
                peer.id
            );
        } else {
            peers.push(peer.clone());
        }
    }
    Ok(peers)
}

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
    /// Takes a complete peer set: stores it, warns about skipped peers, reschedules.
    pub fn apply_peers(&mut self, peers: Vec<Peer>, etag: Option<String>, persist: bool) {
        // The main loop's whole stall for a new list (benches/lists.rs).
        let started = Instant::now();
        let mut checkable = Vec::with_capacity(peers.len());
        let mut stored = Vec::with_capacity(peers.len());
        let mut skipped = Vec::new();
        // The secrets of the peers watched from now on; those of peers no
        // longer watched are forgotten.
        crate::redact::set_network_secrets(
            peers.iter().filter_map(|p| p.network_secret.as_deref()),
        );
        for peer in peers {
            let skip_reason = peer.unsupported_reason(self.allow_quic).map(str::to_string);
            if skip_reason.is_some() {
                skipped.push(peer.clone());
            } else {
                checkable.push(peer.clone());
            }
            stored.push(StoredPeer { peer, skip_reason });
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
        // A peer whose address or network changed may be another node:
        // its next check is full.
        for peer in &checkable {
            if self.schedule.peer(peer.id).is_some_and(|p| p != peer) {
                self.observed.remove(&peer.id);
            }
        }
        let checkable_ids: Vec<i64> = checkable.iter().map(|p| p.id).collect();
        let changes = self.schedule.replace(checkable, Instant::now());
        let schedule = &self.schedule;
        self.last_status.retain(|id, _| schedule.contains(*id));
        self.observed.retain(|id, _| schedule.contains(*id));
        crate::metrics::retain_peers(checkable_ids);
        for (id, (peer, cancelled)) in &self.jobs {
            if schedule.peer(*id) != Some(peer) {
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
            changes.updated,
            self.skipped.len(),
            started.elapsed().as_millis()
        );
    }

    /// One warning when the set of skipped peers changes, not one per list.
    fn warn_skipped(&mut self, skipped: &[Peer]) {
        let skipped_ids: HashSet<i64> = skipped.iter().map(|p| p.id).collect();
        if !skipped.is_empty() && skipped_ids != self.skipped {
            let names: Vec<String> = skipped
                .iter()
                .map(|p| {
                    let reason = p.unsupported_reason(self.allow_quic).unwrap_or_default();
                    format!("{} ({}): {reason}", p.name, p.uri())
                })
                .collect();
            log::warn!(
                "not checking {} peer(s), shown as unsupported: {}",
                skipped.len(),
                names.join("; ")
            );
        }
        self.skipped = skipped_ids;
    }
}
