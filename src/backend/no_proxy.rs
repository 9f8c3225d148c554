//! `NO_PROXY` matching, as curl does it: hosts that are reached directly even when a proxy is set.
//!
//! The list is comma-separated (spaces around entries are ignored). An entry
//! is one of
//! - `*`: every host;
//! - a host name, with an optional leading `.` or `*.`: that name and every
//!   name under it (`example.net` and `.example.net` both match
//!   `example.net` and `api.example.net`, not `badexample.net`);
//! - an IP address (IPv6 with or without brackets): that address;
//! - a CIDR block (`10.0.0.0/8`, `fd00::/8`): every address in it;
//!
//! each optionally followed by `:PORT`, which then must be the URL's port
//! (explicit or the scheme's default). Names compare case-insensitively,
//! a trailing dot ignored. Loopback is not exempt unless listed.

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Everything,
    /// Lower case, without leading `*.`/`.` or trailing dot.
    Domain(String),
    Addr(IpAddr),
    Block(IpAddr, u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    pattern: Pattern,
    port: Option<u16>,
}

/// A parsed `NO_PROXY` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    entries: Vec<Entry>,
}

impl NoProxy {
    /// Parses a list; entries that are none of the forms above are ignored
    /// (as curl does), and so are empty ones.
    pub fn parse(list: &str) -> NoProxy {
        let entries = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .filter_map(entry)
            .collect();
        NoProxy { entries }
    }

    /// Whether a request to `host` (as in a URL: an IPv6 address may be in
    /// brackets) on `port` goes directly.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ip: Option<IpAddr> = host.parse().ok();
        self.entries.iter().any(|e| {
            e.port.is_none_or(|p| p == port)
                && match (&e.pattern, ip) {
                    (Pattern::Everything, _) => true,
                    (Pattern::Addr(a), Some(ip)) => *a == ip,
                    (Pattern::Block(net, bits), Some(ip)) => in_block(ip, *net, *bits),
                    (Pattern::Domain(d), None) => {
                        host == *d
                            || host
                                .strip_suffix(d.as_str())
                                .is_some_and(|rest| rest.ends_with('.'))
                    }
                    _ => false,
                }
        })
    }
}

fn entry(text: &str) -> Option<Entry> {
    if text == "*" {
        return Some(Entry {
            pattern: Pattern::Everything,
            port: None,
        });
    }
    let (host, port) = split_port(text)?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = if let Some((addr, bits)) = host.split_once('/') {
        let addr: IpAddr = addr.parse().ok()?;
        let bits: u8 = bits.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return None;
        }
        Pattern::Block(addr, bits)
    } else if let Ok(addr) = host.parse::<IpAddr>() {
        Pattern::Addr(addr)
    } else {
        let name = host
            .strip_prefix("*.")
            .or_else(|| host.strip_prefix('.'))
            .unwrap_or(&host);
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return None;
        }
        Pattern::Domain(name.to_string())
    };
    Some(Entry { pattern, port })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address (which
/// has no port: its colons are its own).
fn split_port(text: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match text.matches(':').count() {
        0 => Some((text, None)),
        1 => {
            let (host, port) = text.split_once(':')?;
            Some((host, Some(port.parse().ok()?)))
        }
        _ => Some((text, None)),
    }
}

fn in_block(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(list: &str, host: &str, port: u16) -> bool {
        NoProxy::parse(list).matches(host, port)
    }

    #[test]
    fn names_match_themselves_and_what_is_under_them() {
        for list in [
            "example.net",
            ".example.net",
            "*.example.net",
            "EXAMPLE.net.",
        ] {
            assert!(direct(list, "example.net", 443), "{list}");
            assert!(direct(list, "api.Example.NET", 443), "{list}");
            assert!(direct(list, "a.b.example.net.", 80), "{list}");
            assert!(!direct(list, "badexample.net", 443), "{list}");
            assert!(!direct(list, "example.net.evil", 443), "{list}");
        }
        assert!(!direct("api.example.net", "example.net", 443));
    }

    #[test]
    fn star_lists_and_spaces() {
        assert!(direct("*", "anything.example", 1));
        assert!(direct("*", "10.1.2.3", 1));
        let list = " other.example , 127.0.0.1,, monitor.example ";
        assert!(direct(list, "127.0.0.1", 8443));
        assert!(direct(list, "monitor.example", 443));
        assert!(!direct(list, "127.0.0.2", 8443));
        assert!(!direct("", "127.0.0.1", 80));
        // `*` inside a list entry is not a wildcard.
        assert!(!direct("*example.net", "api.example.net", 443));
    }

    #[test]
    fn ports_must_match_when_given() {
        assert!(direct("monitor.example:8443", "monitor.example", 8443));
        assert!(!direct("monitor.example:8443", "monitor.example", 443));
        assert!(direct("127.0.0.1:80", "127.0.0.1", 80));
        assert!(!direct("127.0.0.1:80", "127.0.0.1", 81));
        assert!(direct("[::1]:443", "[::1]", 443));
        assert!(!direct("[::1]:443", "[::1]", 8443));
        // A port that is not a number makes the entry void.
        assert!(!direct("monitor.example:https", "monitor.example", 443));
    }

    #[test]
    fn addresses_and_blocks() {
        assert!(direct("::1", "[::1]", 443));
        assert!(direct("[::1]", "[::1]", 443));
        assert!(direct("0:0::1", "[::1]", 443));
        assert!(direct("10.0.0.0/8", "10.200.3.4", 443));
        assert!(!direct("10.0.0.0/8", "11.0.0.1", 443));
        assert!(direct("192.168.1.0/24:8443", "192.168.1.9", 8443));
        assert!(!direct("192.168.1.0/24:8443", "192.168.1.9", 443));
        assert!(direct("0.0.0.0/0", "203.0.113.9", 80));
        assert!(direct("fd00::/8", "[fd12::5]", 443));
        assert!(!direct("fd00::/8", "[fe80::1]", 443));
        assert!(!direct("10.0.0.0/33", "10.0.0.1", 443));
        // Names are not addresses, nor the other way round.
        assert!(!direct("localhost", "127.0.0.1", 80));
        assert!(!direct("127.0.0.1", "localhost", 80));
        assert!(!direct("10.0.0.0/8", "ten.example", 80));
    }
}
