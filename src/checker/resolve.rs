//! Name resolution before a check: an unknown name is a verdict at once, a resolver that cannot answer is asked again.

use std::time::{Duration, Instant};

use crate::peer::Peer;

/// Resolves the peer's host the way EasyTier will, so that an unknown name is
/// a fast verdict (EasyTier itself retries silently) and so that the checker
/// knows which address families EasyTier is going to try.
///
/// A name that does not exist is a verdict at once. A resolver that cannot
/// answer right now (EAI_AGAIN: no DNS server reachable, a timeout) says
/// nothing about the peer, so the lookup is retried until `deadline` rather
/// than reporting a peer Offline for one lost DNS packet.
pub fn resolve(peer: &Peer, deadline: Instant) -> Result<Vec<&'static str>, String> {
    use std::net::ToSocketAddrs;
    let mut pause = Duration::from_millis(250);
    let addrs = loop {
        match (peer.host.as_str(), peer.port).to_socket_addrs() {
            Ok(addrs) => break addrs,
            Err(e) if is_temporary_resolver_failure(&e) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "name not resolved: {} (the resolver kept failing until the timeout: {e})",
                        peer.host
                    ));
                }
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(format!("name not resolved: {} ({e})", peer.host)),
        }
    };
    let mut families = Vec::new();
    for addr in addrs {
        let family = if addr.is_ipv4() { "V4" } else { "V6" };
        if !families.contains(&family) {
            families.push(family);
        }
    }
    if families.is_empty() {
        return Err(format!("name not resolved: {} has no address", peer.host));
    }
    Ok(families)
}

/// std reports getaddrinfo failures only as text: `gai_strerror` of the
/// code. Rust programs never call `setlocale`, so the text is the C
/// locale's, and EAI_AGAIN reads as one of these (glibc, musl).
fn is_temporary_resolver_failure(error: &std::io::Error) -> bool {
    let text = error.to_string();
    [
        "Temporary failure in name resolution",
        "could not be resolved at this time",
    ]
    .iter()
    .any(|t| text.contains(t))
}
