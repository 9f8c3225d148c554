//! Peers to watch: the backend's peer entry, its validation, and `proto://host:port` URIs.

use std::fmt;

use anyhow::{bail, Context};
use serde::Deserialize;

/// EasyTier transports the probe knows how to dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Ws,
    Wss,
    Wg,
    Quic,
}

impl Protocol {
    pub const ALL: [Protocol; 6] = [
        Protocol::Tcp,
        Protocol::Udp,
        Protocol::Ws,
        Protocol::Wss,
        Protocol::Wg,
        Protocol::Quic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Ws => "ws",
            Protocol::Wss => "wss",
            Protocol::Wg => "wg",
            Protocol::Quic => "quic",
        }
    }

    /// "tcp, udp, ws, wss, wg or quic", for messages.
    pub fn names() -> String {
        let names: Vec<&str> = Protocol::ALL.iter().map(|p| p.as_str()).collect();
        let (last, rest) = names.split_last().expect("at least one protocol");
        format!("{} or {last}", rest.join(", "))
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A peer entry exactly as the backend (and the peers file) spells it.
/// Unknown fields are ignored; `status`/`response_time` are the backend's own view.
#[derive(Debug, Clone, Deserialize)]
pub struct RawPeer {
    pub id: Option<serde_json::Value>,
    pub name: Option<String>,
    pub host: Option<String>,
    pub port: Option<serde_json::Value>,
    pub protocol: Option<String>,
    pub network_name: Option<String>,
    pub network_secret: Option<String>,
}

/// A validated peer: what the scheduler checks and the store keeps.
#[derive(Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: i64,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    pub network_name: String,
    /// Known secret: the probe joins the peer's own network. Never logged.
    pub network_secret: Option<String>,
}

// Hand-written so that a stray `{:?}` can never print a network secret.
impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("uri", &self.uri())
            .field("network_name", &self.network_name)
            .field(
                "network_secret",
                &self.network_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Peer {
    /// `proto://host:port`, with IPv6 literals bracketed.
    pub fn uri(&self) -> String {
        format_uri(self.protocol, &self.host, self.port)
    }

    /// How the peer is checked: as a member of its own network, or as a public relay.
    pub fn role(&self) -> Role {
        if self.network_secret.is_some() {
            Role::Member
        } else {
            Role::PublicServer
        }
    }

    /// Why the probe cannot check this peer, in plain words; None when it can.
    /// Such a peer is shown as `unsupported`, never as Offline.
    pub fn unsupported_reason(&self, allow_quic: bool) -> Option<&'static str> {
        match self.protocol {
            Protocol::Quic if !allow_quic => Some(QUIC_UNSUPPORTED),
            Protocol::Wg if self.network_secret.is_none() => Some(WG_RELAY_UNSUPPORTED),
            _ => None,
        }
    }

    /// Validates one entry of a peer list. The error names the field in plain words
    /// and never repeats the secret.
    pub fn from_raw(raw: RawPeer) -> anyhow::Result<Peer> {
        let id = match raw.id {
            Some(serde_json::Value::Number(n)) => n
                .as_i64()
                .filter(|id| *id >= 0)
                .context("`id` must be a non-negative integer")?,
            Some(_) => bail!("`id` must be a non-negative integer"),
            None => bail!("`id` is missing"),
        };
        let host = raw.host.unwrap_or_default().trim().to_string();
        if host.is_empty() {
            bail!("peer {id}: `host` is empty");
        }
        check_host(&host).with_context(|| format!("peer {id}"))?;
        let port = match raw.port {
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .filter(|p| (1..=65535).contains(p))
                .with_context(|| format!("peer {id}: `port` must be 1..65535, got {n}"))?
                as u16,
            Some(other) => bail!("peer {id}: `port` must be a number, got {other}"),
            None => bail!("peer {id}: `port` is missing"),
        };
        let protocol_text = raw.protocol.unwrap_or_default();
        let protocol = Protocol::parse(protocol_text.trim()).with_context(|| {
            format!(
                "peer {id}: unknown `protocol` {protocol_text:?} (expected {})",
                Protocol::names()
            )
        })?;
        let network_secret = raw.network_secret.filter(|s| !s.is_empty());
        let network_name = raw.network_name.unwrap_or_default().trim().to_string();
        if network_secret.is_some() && network_name.is_empty() {
            bail!("peer {id}: `network_secret` is set but `network_name` is empty");
        }
        let name = raw
            .name
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("peer-{id}"));
        Ok(Peer {
            id,
            name,
            host,
            port,
            protocol,
            network_name,
            network_secret,
        })
    }
}

/// Why quic peers are not checked by default.
pub const QUIC_UNSUPPORTED: &str = "quic is not checked: EasyTier 2.6 replaced the QUIC TLS layer with its own packet protection, so this probe's EasyTier 2.0 cannot talk to a current node and every check would be a false Offline (--allow-quic checks nodes that run 2.0.x)";
/// Why a wg peer without a network secret cannot be checked.
pub const WG_RELAY_UNSUPPORTED: &str = "a wg relay check is impossible: a WireGuard listener derives its keys from the node's own network name and secret, so a guest without them can never finish the handshake (give the network secret to check it as a member)";

/// How the probe joined the peer, and what it expects the peer to answer as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Member,
    PublicServer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::PublicServer => "public_server",
        }
    }
}

pub fn format_uri(protocol: Protocol, host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("{protocol}://[{host}]:{port}")
    } else {
        format!("{protocol}://{host}:{port}")
    }
}

fn check_host(host: &str) -> anyhow::Result<()> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    // One trailing dot marks a fully qualified name ("relay.example.org."),
    // as written in DNS zone files; the resolver takes it as it is.
    let name = host.strip_suffix('.').unwrap_or(host);
    let valid = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !valid {
        bail!("`host` {host:?} is neither an IP address nor a DNS name");
    }
    Ok(())
}

/// A target parsed from `proto://host:port[?network_name=..&name=..&id=..]`.
#[derive(Debug)]
pub struct ParsedUri {
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub network_name: Option<String>,
    pub name: Option<String>,
    pub id: Option<i64>,
}

/// Parses the URI form used by `check` and `--peer`, with the `url` crate
/// (so `?name=` values may be percent-encoded). Secrets are deliberately not
/// accepted here: a URI shows up in `ps`.
pub fn parse_uri(text: &str) -> anyhow::Result<ParsedUri> {
    let (scheme, _) = text
        .split_once("://")
        .with_context(|| format!("{text:?} is not a URI like tcp://host:port"))?;
    let protocol = Protocol::parse(scheme).with_context(|| {
        format!(
            "unknown protocol {scheme:?} in {text:?} (expected {})",
            Protocol::names()
        )
    })?;
    let url = url::Url::parse(text)
        .map_err(|e| anyhow::anyhow!("{text:?} is not a URI like tcp://host:port ({e})"))?;
    if !url.username().is_empty() || url.password().is_some() {
        bail!("{text:?}: a peer URI has no user name or password");
    }
    let host = match url.host() {
        Some(url::Host::Domain(name)) => name.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => String::new(),
    };
    if host.is_empty() {
        bail!("{text:?}: the host is empty");
    }
    check_host(&host).with_context(|| format!("in {text:?}"))?;
    let port = url
        .port()
        .with_context(|| format!("{text:?}: the port is missing (host:port)"))?;
    if port == 0 {
        bail!("{text:?}: port 0 is not in 1..65535");
    }
    if !matches!(url.path(), "" | "/") {
        bail!(
            "{text:?}: a peer URI has no path (found {:?}); give proto://host:port",
            url.path()
        );
    }
    if url.fragment().is_some() {
        bail!("{text:?}: a peer URI has no #fragment");
    }
    let mut parsed = ParsedUri {
        protocol,
        host,
        port,
        network_name: None,
        name: None,
        id: None,
    };
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "network_name" => parsed.network_name = Some(value.into_owned()),
            "name" => parsed.name = Some(value.into_owned()),
            "id" => {
                parsed.id = Some(
                    value
                        .parse::<i64>()
                        .ok()
                        .filter(|id| *id >= 0)
                        .with_context(|| format!("{text:?}: id {value:?} is not a non-negative integer"))?,
                )
            }
            "network_secret" => bail!(
                "{text:?}: network secrets are not accepted in a URI (they would show in `ps`); use a peers file or --network-secret-file"
            ),
            other => bail!("{text:?}: unknown URI parameter {other:?} (known: network_name, name, id)"),
        }
    }
    Ok(parsed)
}

/// A peer from `--peer URI`. Without `id=`, the id is a stable hash of the URI so
/// that its history survives restarts; it lives above 2^40 to stay clear of
/// backend-assigned ids.
pub fn peer_from_uri(text: &str) -> anyhow::Result<Peer> {
    let parsed = parse_uri(text)?;
    let uri = format_uri(parsed.protocol, &parsed.host, parsed.port);
    let id = parsed.id.unwrap_or_else(|| {
        let mut hash: u64 = 0xcbf29ce484222325;
        for byte in uri.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x100000001b3);
        }
        ((1u64 << 40) | (hash & ((1u64 << 52) - 1))) as i64
    });
    Ok(Peer {
        id,
        name: parsed.name.unwrap_or_else(|| uri.clone()),
        host: parsed.host,
        port: parsed.port,
        protocol: parsed.protocol,
        network_name: parsed.network_name.unwrap_or_default(),
        network_secret: None,
    })
}

/// Parses a JSON peer list (the peers file, or `data.peers` of a backend answer).
/// Invalid entries and duplicate ids are skipped and described in the second
/// element, so the caller can warn without losing the rest of the list.
pub fn validate_list(raw: Vec<serde_json::Value>) -> (Vec<Peer>, Vec<String>) {
    let mut peers: Vec<Peer> = Vec::with_capacity(raw.len());
    // Each id, with the (1-based) entry that has it.
    let mut seen = std::collections::HashMap::new();
    let mut problems = Vec::new();
    // Known before anything can print them, whatever shape the entries
    // have: registered in one go, before the entries are looked at.
    let secrets: Vec<String> = raw
        .iter()
        .filter_map(|value| match value.get("network_secret") {
            Some(serde_json::Value::String(secret)) => Some(secret.clone()),
            Some(serde_json::Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        })
        .collect();
    crate::redact::add_network_secrets(secrets.iter().map(String::as_str));
    for (index, value) in raw.into_iter().enumerate() {
        // Entries are counted from 1, as a person reading the file counts
        // them; the id, when there is one, says which peer it is.
        let entry = index + 1;
        let id = value.get("id").and_then(serde_json::Value::as_i64);
        let label = match id {
            Some(id) => format!("entry {entry} (id {id})"),
            None => format!("entry {entry}"),
        };
        let parsed = serde_json::from_value::<RawPeer>(value)
            .map_err(|e| anyhow::anyhow!("not a peer object: {e}"))
            .and_then(Peer::from_raw);
        match parsed {
            Ok(peer) => match seen.entry(peer.id) {
                std::collections::hash_map::Entry::Occupied(first) => problems.push(format!(
                    "{label}: the id is already used by entry {}",
                    first.get()
                )),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(entry);
                    peers.push(peer);
                }
            },
            Err(e) => {
                // `from_raw` names the peer by id; the label already does.
                let text = format!("{e:#}");
                let text = id
                    .and_then(|id| text.strip_prefix(&format!("peer {id}: ")))
                    .unwrap_or(&text);
                problems.push(format!("{label}: {text}"))
            }
        }
    }
    (peers, problems)
}

/// How many invalid entries a warning names; the rest are counted.
const PROBLEMS_NAMED: usize = 3;
/// Longest text of one invalid entry in a warning (values come from the
/// backend or a file: a huge one must not flood the log).
const PROBLEM_CHARS: usize = 120;

/// One line for a round's invalid entries: the count and the first few,
/// each cut short. None when there are none.
pub fn summarize_problems(problems: &[String]) -> Option<String> {
    if problems.is_empty() {
        return None;
    }
    let named: Vec<String> = problems
        .iter()
        .take(PROBLEMS_NAMED)
        .map(|p| match p.char_indices().nth(PROBLEM_CHARS) {
            Some((cut, _)) => format!("{}…", &p[..cut]),
            None => p.clone(),
        })
        .collect();
    let more = problems.len().saturating_sub(PROBLEMS_NAMED);
    Some(format!(
        "{} invalid entr{} skipped: {}{}",
        problems.len(),
        if problems.len() == 1 { "y" } else { "ies" },
        named.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_uris() {
        let p = parse_uri("udp://[::1]:11010?network_name=main&name=x").unwrap();
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.host, "::1");
        assert_eq!(p.port, 11010);
        assert_eq!(p.network_name.as_deref(), Some("main"));
        assert!(parse_uri("tcp://host").is_err());
        assert!(parse_uri("foo://host:1").is_err());
        assert!(parse_uri("tcp://host:0").is_err());
        assert!(parse_uri("tcp://host:70000").is_err());
        assert!(parse_uri("tcp://:80").is_err());
        assert!(parse_uri("tcp://h:1?network_secret=s").is_err());
        // A fully qualified name may end in one dot, not two.
        assert_eq!(
            parse_uri("tcp://relay.example.org.:1").unwrap().host,
            "relay.example.org."
        );
        assert!(parse_uri("tcp://relay.example.org..:1").is_err());
        assert!(parse_uri("tcp://.:1").is_err());
    }

    #[test]
    fn uri_parameters_are_percent_decoded_and_paths_named() {
        let p = parse_uri("tcp://h:1?name=Tokyo%20relay%231&network_name=a%26b").unwrap();
        assert_eq!(p.name.as_deref(), Some("Tokyo relay#1"));
        assert_eq!(p.network_name.as_deref(), Some("a&b"));
        assert_eq!(parse_uri("tcp://h:11010/").unwrap().port, 11010);
        let e = format!("{:#}", parse_uri("tcp://h:11010/path").unwrap_err());
        assert!(e.contains("no path") && e.contains("/path"), "{e}");
        assert!(!e.contains("11010/path\" is not"), "{e}");
        assert_eq!(Protocol::names(), "tcp, udp, ws, wss, wg or quic");
    }

    #[test]
    fn uri_peer_ids_are_stable_and_distinct() {
        let a = peer_from_uri("tcp://127.0.0.1:11010").unwrap();
        let b = peer_from_uri("tcp://127.0.0.1:11010").unwrap();
        let c = peer_from_uri("tcp://127.0.0.1:11011").unwrap();
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert!(a.id >= 1 << 40);
        assert_eq!(peer_from_uri("tcp://h:1?id=7").unwrap().id, 7);
    }

    #[test]
    fn list_validation_skips_bad_entries() {
        let (peers, problems) = validate_list(vec![
            json!({"id": 1, "name": "a", "host": "h", "port": 1, "protocol": "tcp", "network_name": "n"}),
            json!({"id": 2, "name": "b", "host": "", "port": 1, "protocol": "tcp"}),
            json!({"id": 3, "name": "c", "host": "h", "port": 0, "protocol": "tcp"}),
            json!({"id": 4, "name": "d", "host": "h", "port": 1, "protocol": "smtp"}),
            json!({"id": 1, "name": "dup", "host": "h", "port": 2, "protocol": "tcp"}),
            json!({"id": 5, "name": "e", "host": "h", "port": 2, "protocol": "UDP", "network_secret": null, "extra": true}),
            json!("nonsense"),
        ]);
        assert_eq!(peers.iter().map(|p| p.id).collect::<Vec<_>>(), vec![1, 5]);
        // Entries counted from 1, each with its id when it has one, and the
        // id said once.
        assert_eq!(
            problems,
            vec![
                "entry 2 (id 2): `host` is empty".to_string(),
                "entry 3 (id 3): `port` must be 1..65535, got 0".to_string(),
                format!(
                    "entry 4 (id 4): unknown `protocol` \"smtp\" (expected {})",
                    Protocol::names()
                ),
                "entry 5 (id 1): the id is already used by entry 1".to_string(),
                format!(
                    "entry 7: not a peer object: {}",
                    serde_json::from_value::<RawPeer>(json!("nonsense")).unwrap_err()
                ),
            ]
        );
        assert_eq!(peers[1].protocol, Protocol::Udp);
        assert_eq!(peers[1].role(), Role::PublicServer);
    }

    #[test]
    fn wg_relays_and_quic_are_unsupported_not_offline() {
        let wg = peer_from_uri("wg://h:1").unwrap();
        assert_eq!(wg.unsupported_reason(true), Some(WG_RELAY_UNSUPPORTED));
        let mut member = wg.clone();
        member.network_name = "n".into();
        member.network_secret = Some("s".into());
        assert_eq!(member.unsupported_reason(false), None);
        let quic = peer_from_uri("quic://h:1").unwrap();
        assert_eq!(quic.unsupported_reason(false), Some(QUIC_UNSUPPORTED));
        assert_eq!(quic.unsupported_reason(true), None);
        assert_eq!(
            peer_from_uri("tcp://h:1")
                .unwrap()
                .unsupported_reason(false),
            None
        );
    }

    #[test]
    fn a_rounds_invalid_entries_are_one_short_line() {
        assert_eq!(summarize_problems(&[]), None);
        let problems: Vec<String> = (1..=5)
            .map(|i| format!("entry {i}: `host` {:?} is neither", "x".repeat(500)))
            .collect();
        let line = summarize_problems(&problems).unwrap();
        assert!(
            line.starts_with("5 invalid entries skipped: entry 1"),
            "{line}"
        );
        assert!(line.ends_with("; and 2 more"), "{line}");
        assert!(!line.contains("entry 4"), "{line}");
        assert!(line.chars().count() < 3 * 130 + 60, "{}", line.len());
    }

    #[test]
    fn debug_never_shows_secret() {
        let (peers, _) = validate_list(vec![
            json!({"id": 1, "host": "h", "port": 1, "protocol": "tcp", "network_name": "n", "network_secret": "hunter2"}),
        ]);
        let text = format!("{:?}", peers[0]);
        assert!(!text.contains("hunter2"));
        assert_eq!(peers[0].role(), Role::Member);
    }
}
