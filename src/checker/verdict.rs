//! Reading a verdict from a running EasyTier instance: the route table for Online, its events for a fast and precise Offline.

use std::collections::{HashMap, HashSet};

use easytier::common::global_ctx::GlobalCtxEvent;
use easytier::launcher::NetworkInstanceRunningInfo;
use serde::Serialize;

use super::Status;
use crate::peer::{Peer, Role};

/// How many handshakes the node must close before the probe calls it a
/// rejection (wrong secret, network not served) rather than a hiccup.
const REJECTIONS_FOR_VERDICT: usize = 2;
/// After the node closed every connection it had accepted, how long no new
/// one may appear before the guest counts as dropped. The connector retries
/// every 100 ms, so a node that only hiccuped is back within this.
const DROP_GRACE_MS: i64 = 300;
/// A handshake that completed but whose peer has no route after this long:
/// the node dropped the probe, even when EasyTier missed the close (seen
/// against 2.6 nodes: the close can overtake `PeerConnAdded`, and the dead
/// peer then stays in EasyTier's tables). A healthy node is routed within
/// about a second (one refresh of EasyTier's tables) of the handshake.
const HANDSHAKE_WITHOUT_ROUTE_MS: i64 = 2_500;

/// Why a peer is Offline (or not checked), in one word; the backend's
/// `error_kind` (see the contract in README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The port refused the connection.
    Refused,
    /// No route to the node's network or host.
    Unreachable,
    /// The host name does not resolve.
    Dns,
    /// No verdict before the check timeout.
    Timeout,
    /// The node closed the handshake: wrong network name or secret.
    Rejected,
    /// The node took the connection but does not relay the probe's network.
    NotRelayed,
    /// A member check answered by a public relay, or the reverse.
    RoleMismatch,
    /// The probe itself failed (its EasyTier instance did not start).
    Internal,
    /// The probe cannot check this peer at all (transport, missing secret).
    Unsupported,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Refused,
        ErrorKind::Unreachable,
        ErrorKind::Dns,
        ErrorKind::Timeout,
        ErrorKind::Rejected,
        ErrorKind::NotRelayed,
        ErrorKind::RoleMismatch,
        ErrorKind::Internal,
        ErrorKind::Unsupported,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Dns => "dns",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Rejected => "rejected",
            ErrorKind::NotRelayed => "not_relayed",
            ErrorKind::RoleMismatch => "role_mismatch",
            ErrorKind::Internal => "internal",
            ErrorKind::Unsupported => "unsupported",
        }
    }

    pub fn parse(text: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// What a check found before teardown.
#[derive(Debug, Default)]
pub struct Verdict {
    pub status: Option<Status>,
    pub latency_us: Option<u64>,
    pub remote_version: Option<String>,
    pub remote_hostname: Option<String>,
    pub error: Option<String>,
    pub error_kind: Option<ErrorKind>,
}

impl Verdict {
    pub fn offline(kind: ErrorKind, error: impl Into<String>) -> Verdict {
        Verdict {
            status: Some(Status::Offline),
            error: Some(error.into()),
            error_kind: Some(kind),
            ..Verdict::default()
        }
    }
}

/// Who the check expects to answer, and under which network name.
pub struct Expectation<'a> {
    pub role: Role,
    pub peer: &'a Peer,
    /// The network name the probe joined with: the peer's own for a member
    /// check, the probe's guest name for a relay check.
    pub joined_as: &'a str,
}

/// Looks for the peer among the directly connected ones (EasyTier's route
/// table, refreshed once a second): Online in the expected role, or a role
/// mismatch.
pub fn judge_routes(info: &NetworkInstanceRunningInfo, expected: &Expectation) -> Option<Verdict> {
    for pair in &info.peer_route_pairs {
        let Some(conn_peer) = &pair.peer else {
            continue;
        };
        if conn_peer.conns.is_empty() {
            continue;
        }
        let is_public = pair
            .route
            .feature_flag
            .map(|f| f.is_public_server)
            .unwrap_or(false);
        let answered_as = if is_public {
            Role::PublicServer
        } else {
            Role::Member
        };
        if answered_as != expected.role {
            return Some(role_mismatch(expected));
        }
        let latency_us = conn_peer
            .conns
            .iter()
            .filter_map(|c| c.stats.as_ref().map(|s| s.latency_us))
            .filter(|us| *us > 0)
            .min();
        return Some(Verdict {
            status: Some(Status::Online),
            latency_us,
            remote_version: Some(pair.route.version.clone()).filter(|v| !v.is_empty()),
            remote_hostname: Some(pair.route.hostname.clone()).filter(|h| !h.is_empty()),
            ..Verdict::default()
        });
    }
    None
}

fn role_mismatch(expected: &Expectation) -> Verdict {
    let text = match expected.role {
        Role::Member => format!(
            "the node answered as a public relay, not as a member of network {:?}",
            expected.peer.network_name
        ),
        Role::PublicServer => {
            "the node answered as a network member, not as a public relay".to_string()
        }
    };
    Verdict::offline(ErrorKind::RoleMismatch, text)
}

/// A failed dial, in plain words.
pub struct Failure {
    pub text: String,
    pub kind: ErrorKind,
    /// Nothing will change before the timeout (refused, unreachable).
    pub definitive: bool,
}

/// What the instance's events say so far. Events are pushed as they happen
/// (not on the once-a-second refresh), each with its time.
#[derive(Default)]
pub struct EventView {
    /// Address families ("V4", "V6") whose dial failed definitively.
    definitive_families: HashSet<String>,
    rejections: usize,
    pub last_failure: Option<Failure>,
    /// Dial starts, in Unix microseconds.
    connecting: Vec<i64>,
    /// Connections whose handshake completed: conn id -> (time in Unix µs,
    /// the network name the node answered with).
    added: HashMap<String, (i64, String)>,
    /// Connections the node closed after the handshake, with the time (µs).
    removed: HashMap<String, i64>,
}

/// A handshake that completed and stayed up.
pub struct Handshake {
    /// From the dial's start to the completed handshake.
    pub latency_us: Option<u64>,
    /// How long the connection has been up.
    pub up_us: i64,
}

impl EventView {
    pub fn read(info: &NetworkInstanceRunningInfo) -> EventView {
        let mut view = EventView::default();
        for (time, event) in &info.events {
            let at = time.timestamp_micros();
            match event {
                GlobalCtxEvent::ConnectError(_, family, message) => {
                    let failure = classify_connect_error(message);
                    if failure.definitive {
                        view.definitive_families.insert(family.clone());
                    }
                    if failure.kind == ErrorKind::Rejected {
                        view.rejections += 1;
                    }
                    view.last_failure = Some(failure);
                }
                GlobalCtxEvent::Connecting(_) => view.connecting.push(at),
                GlobalCtxEvent::PeerConnAdded(conn) => {
                    view.added
                        .insert(conn.conn_id.clone(), (at, conn.network_name.clone()));
                }
                GlobalCtxEvent::PeerConnRemoved(conn) => {
                    view.removed.insert(conn.conn_id.clone(), at);
                }
                _ => {}
            }
        }
        // A close that overtook its PeerConnAdded (see `closed_conns`).
        for id in view.added.keys() {
            if !view.removed.contains_key(id) {
                if let Some(at) = super::closed_conns::closed_at(id) {
                    view.removed.insert(id.clone(), at);
                }
            }
        }
        view
    }

    /// True once a handshake has completed.
    pub fn connected(&self) -> bool {
        !self.added.is_empty()
    }

    /// The oldest connection still up at `now_us`, if any. `check_start_us`
    /// stands in for the dial's start when no `Connecting` event precedes
    /// the handshake (events are stamped when EasyTier's own subscriber
    /// takes them, and the log of 100 may have lost the oldest).
    pub fn live_handshake(&self, now_us: i64, check_start_us: i64) -> Option<Handshake> {
        let (_, (added_at, _)) = self
            .added
            .iter()
            .filter(|(id, _)| !self.removed.contains_key(*id))
            .min_by_key(|(_, (at, _))| *at)?;
        let dial_start = self
            .connecting
            .iter()
            .copied()
            .filter(|t| t <= added_at)
            .max()
            .unwrap_or(check_start_us);
        Some(Handshake {
            latency_us: Some((added_at - dial_start).max(1) as u64),
            up_us: now_us - added_at,
        })
    }

    /// An Offline verdict the events already justify, at `now_us`.
    pub fn verdict(
        &self,
        expected: &Expectation,
        families: &[&str],
        now_us: i64,
    ) -> Option<Verdict> {
        // The handshake says in which role the node took the probe: its
        // answer carries our network name for a member, its own for a guest.
        if let Some((_, answered)) = self.added.values().next() {
            let as_member = answered == expected.joined_as;
            if as_member != (expected.role == Role::Member) {
                return Some(role_mismatch(expected));
            }
        }
        if self.dropped(now_us) {
            for (id, (added_at, _)) in &self.added {
                if let Some(closed_at) = self.removed.get(id) {
                    log::debug!(
                        "connection {id} closed {} µs after its handshake",
                        closed_at - added_at
                    );
                }
            }
            return Some(dropped(expected));
        }
        let failure = self.last_failure.as_ref()?;
        let every_family_failed = families
            .iter()
            .all(|f| self.definitive_families.contains(*f));
        if (failure.definitive && every_family_failed)
            || (failure.kind == ErrorKind::Rejected && self.rejections >= REJECTIONS_FOR_VERDICT)
        {
            return Some(Verdict::offline(failure.kind, failure.text.clone()));
        }
        None
    }

    /// The node completed a handshake and then closed every connection, or
    /// never routed the probe after it. Called only while there is no
    /// Online verdict, that is no route to the node.
    fn dropped(&self, now_us: i64) -> bool {
        let Some(first_added) = self.added.values().map(|(t, _)| *t).min() else {
            return false;
        };
        let all_closed = self.added.keys().all(|id| self.removed.contains_key(id));
        if all_closed {
            let last_close = self.removed.values().copied().max().unwrap_or(now_us);
            if now_us - last_close >= DROP_GRACE_MS * 1000 {
                return true;
            }
        }
        now_us - first_added >= HANDSHAKE_WITHOUT_ROUTE_MS * 1000
    }
}

fn dropped(expected: &Expectation) -> Verdict {
    match expected.role {
        Role::PublicServer => Verdict::offline(
            ErrorKind::NotRelayed,
            format!(
                "the node accepted the connection but does not relay network {:?} (private mode, relay whitelist, or connection limit)",
                expected.joined_as
            ),
        ),
        Role::Member => Verdict::offline(
            ErrorKind::Rejected,
            "the node completed the handshake and then closed the connection",
        ),
    }
}

/// Turns EasyTier's connect error into plain words and a kind, and says
/// whether it decides the verdict at once.
pub fn classify_connect_error(message: &str) -> Failure {
    let lower = message.to_ascii_lowercase();
    let failure = |text: &str, kind, definitive| Failure {
        text: text.to_string(),
        kind,
        definitive,
    };
    if lower.contains("connection refused") {
        return failure("connection refused", ErrorKind::Refused, true);
    } else if lower.contains("network is unreachable") {
        return failure("network unreachable", ErrorKind::Unreachable, true);
    } else if lower.contains("no route to host") || lower.contains("host is unreachable") {
        return failure("host unreachable", ErrorKind::Unreachable, true);
    }
    if lower.contains("conn closed during wait handshake") || lower.contains("secret") {
        return failure(
            "rejected by the node during the handshake (wrong network name or secret, or the node does not serve this network)",
            ErrorKind::Rejected,
            false,
        );
    }
    if lower.contains("timeout") || lower.contains("timed out") || lower.contains("elapsed") {
        return failure("connection timed out", ErrorKind::Timeout, false);
    }
    let first_line = message.lines().next().unwrap_or("").trim();
    Failure {
        text: format!("connection failed: {first_line}"),
        kind: ErrorKind::Timeout,
        definitive: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_connect_errors() {
        let refused = classify_connect_error("io error: Connection refused (os error 111)");
        assert_eq!(refused.text, "connection refused");
        assert_eq!(refused.kind, ErrorKind::Refused);
        assert!(refused.definitive);
        let timeout = classify_connect_error("connect timeout");
        assert!(!timeout.definitive);
        assert_eq!(timeout.kind, ErrorKind::Timeout);
        let closed = classify_connect_error("conn closed during wait handshake response");
        assert_eq!(closed.kind, ErrorKind::Rejected);
        assert_eq!(
            classify_connect_error("No route to host").kind,
            ErrorKind::Unreachable
        );
    }

    #[test]
    fn error_kinds_round_trip_as_the_contract_spells_them() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.as_str().into())
            );
        }
        assert_eq!(ErrorKind::NotRelayed.as_str(), "not_relayed");
    }
}
