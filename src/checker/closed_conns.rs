//! Connections EasyTier saw closed, as its own log says: the close that can overtake `PeerConnAdded`.
//!
//! EasyTier 2.0.3 starts a connection's receive loop before it adds the
//! connection to the peer (peers/peer.rs `add_peer_conn`). A node that
//! answers the handshake and closes at once (2.6 in private mode, or with a
//! relay whitelist) can therefore have its close handled before the add: no
//! `PeerConnRemoved` event ever comes, and the dead connection stays in the
//! peer's table. The close handler logs "notified that peer conn is closed"
//! with the connection's id before it looks the connection up, so the
//! probe's logger hands those lines here (`logging`), whatever the filter,
//! and a check asks whether its connection is among them.

use std::collections::VecDeque;
use std::sync::Mutex;

/// EasyTier's log target and message of the close handler.
pub const TARGET: &str = "easytier::peers::peer";
pub const MESSAGE: &str = "notified that peer conn is closed";

/// Enough for every check running at once, many times over.
const REMEMBERED: usize = 4_096;

/// Connection ids, each with when the close was logged (Unix µs).
static CLOSED: Mutex<VecDeque<(String, i64)>> = Mutex::new(VecDeque::new());

/// Takes one of EasyTier's close lines: `... ret=<connection id> ...`.
pub fn note(message: &str) {
    let Some(id) = message
        .split_whitespace()
        .find_map(|field| field.strip_prefix("ret="))
    else {
        return;
    };
    let mut closed = CLOSED.lock().unwrap_or_else(|e| e.into_inner());
    if closed.len() >= REMEMBERED {
        closed.pop_front();
    }
    let id = id.trim_matches(['"', ',']).to_ascii_lowercase();
    closed.push_back((id, crate::clock::now_us()));
}

/// When EasyTier reported the connection `conn_id` closed (Unix µs), if it did.
pub fn closed_at(conn_id: &str) -> Option<i64> {
    let closed = CLOSED.lock().unwrap_or_else(|e| e.into_inner());
    closed
        .iter()
        .find(|(id, _)| id.eq_ignore_ascii_case(conn_id))
        .map(|(_, at)| *at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_connection_id_from_the_close_line() {
        note("notified that peer conn is closed peer_node_id=3412 ret=6f9619ff-8b86-d011-b42d-00c04fc964ff");
        assert!(closed_at("6f9619ff-8b86-d011-b42d-00c04fc964ff").is_some());
        assert!(closed_at("00000000-8b86-d011-b42d-00c04fc964ff").is_none());
        note("notified that peer conn is closed without an id");
    }
}
