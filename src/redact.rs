//! Secrets the process knows and the cleaning of every log line: secrets and EasyTier's secret digests redacted, control characters escaped.
//!
//! Two sets: the probe's own credentials (node token, API key, a `check`'s
//! network secret), kept for the life of the process, and the network
//! secrets of the peers being watched, replaced whenever the peer list is
//! (a peer no longer watched has its secret forgotten). One Aho-Corasick
//! automaton over both is rebuilt on each change, so registering 100,000
//! secrets is one build, and cleaning a line costs one pass over it, not one
//! search per secret.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};

const REDACTED: &str = "<redacted>";
/// A secret shorter than this is redacted only where it stands as a word of
/// its own: a one-letter secret "e" must not turn every "e" of every line
/// into `<redacted>` (which would also tell the reader what the secret is).
const SHORT_SECRET: usize = 8;

#[derive(Default)]
struct Registry {
    own: BTreeSet<String>,
    network: BTreeSet<String>,
    /// Over `own` and `network`, longest match first; None when both are empty.
    matcher: Option<Arc<AhoCorasick>>,
}

impl Registry {
    fn rebuild(&mut self) {
        let patterns: Vec<&String> = self.own.iter().chain(self.network.iter()).collect();
        self.matcher = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(patterns)
                .ok()
                .map(Arc::new)
        };
    }
}

static REGISTRY: RwLock<Option<Registry>> = RwLock::new(None);

fn update(change: impl FnOnce(&mut Registry) -> bool) {
    let mut guard = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    let registry = guard.get_or_insert_with(Registry::default);
    if change(registry) {
        registry.rebuild();
    }
}

/// Registers one of the probe's own secrets (token, key), for good.
pub fn add_secret(secret: &str) {
    if secret.is_empty() {
        return;
    }
    update(|r| r.own.insert(secret.to_string()));
}

/// Adds network secrets (from a list being read), in one rebuild.
pub fn add_network_secrets<'a>(secrets: impl IntoIterator<Item = &'a str>) {
    let mut new: Vec<String> = secrets
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if new.is_empty() {
        return;
    }
    update(|r| {
        let before = r.network.len();
        r.network.extend(new.drain(..));
        r.network.len() != before
    });
}

/// The network secrets of the peers watched now: those of peers no longer
/// watched are forgotten.
pub fn set_network_secrets<'a>(secrets: impl IntoIterator<Item = &'a str>) {
    let network: BTreeSet<String> = secrets
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    update(|r| {
        if r.network == network {
            return false;
        }
        r.network = network;
        true
    });
}

fn matcher() -> Option<Arc<AhoCorasick>> {
    let guard = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    guard.as_ref().and_then(|r| r.matcher.clone())
}

/// `text` with every known secret and every secret digest replaced, and
/// control characters escaped so that no value can forge a log line; None
/// when nothing needed changing.
pub fn clean(text: &str) -> Option<String> {
    let redacted = redact_secrets(text);
    let current = redacted.as_deref().unwrap_or(text);
    let digests = redact_digests(current);
    let current = digests.as_deref().unwrap_or(current);
    let escaped = escape_controls(current);
    escaped.or(digests).or(redacted)
}

fn redact_secrets(text: &str) -> Option<String> {
    let matcher = matcher()?;
    let mut out = String::new();
    let mut last = 0;
    for m in matcher.find_iter(text) {
        let short = m.end() - m.start() < SHORT_SECRET;
        let word_char = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        let before = text[..m.start()].chars().next_back();
        let after = text[m.end()..].chars().next();
        if short && (word_char(before) || word_char(after)) {
            continue;
        }
        out.push_str(&text[last..m.start()]);
        out.push_str(REDACTED);
        last = m.end();
    }
    if last == 0 {
        return None;
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// EasyTier prints `network_secret_digest: Some([..])`, an unkeyed hash from
/// which a short secret can be found by trying: the bytes go too.
fn redact_digests(text: &str) -> Option<String> {
    const KEY: &str = "network_secret_digest";
    if !text.contains(KEY) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(KEY) {
        let after_key = at + KEY.len();
        out.push_str(&rest[..after_key]);
        rest = &rest[after_key..];
        // The bytes follow within a few characters (`: Some([`, `=[`).
        let open = rest.char_indices().take(12).find(|(_, c)| *c == '[');
        if let Some((open, _)) = open {
            if let Some(close) = rest[open..].find(']') {
                out.push_str(&rest[..=open]);
                out.push_str(REDACTED);
                rest = &rest[open + close..];
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

/// Newlines and other control characters as escapes: a peer name with a
/// newline in it must not start a line of its own.
fn escape_controls(text: &str) -> Option<String> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push('\t'),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The registry is process-wide: one test drives it through its states.
    #[test]
    fn secrets_are_redacted_whole_forgotten_with_their_peers_and_never_mangle() {
        add_secret("hunter2-token");
        add_network_secrets(["s3cret-long-1", "e"]);
        assert_eq!(clean("nothing here"), None);
        assert_eq!(
            clean("a=hunter2-token b=s3cret-long-1").as_deref(),
            Some("a=<redacted> b=<redacted>")
        );
        // A one-letter secret: redacted where it stands alone, and nowhere
        // else ("peer" keeps its e's).
        assert_eq!(
            clean("peer network_secret: \"e\" here").as_deref(),
            Some("peer network_secret: \"<redacted>\" here")
        );
        assert_eq!(clean("every peer sees the tree"), None);
        // The list changes: the old peer's secret is forgotten, the token stays.
        set_network_secrets(["new-network-secret"]);
        assert_eq!(clean("s3cret-long-1"), None);
        assert_eq!(
            clean("hunter2-token new-network-secret").as_deref(),
            Some("<redacted> <redacted>")
        );
        // A hostile list's worth of secrets is one build, not one per secret.
        let bulk: Vec<String> = (0..100_000)
            .map(|i| format!("bulk-secret-{i:06}"))
            .collect();
        let started = std::time::Instant::now();
        add_network_secrets(bulk.iter().map(String::as_str));
        eprintln!("100,000 secrets registered in {:?}", started.elapsed());
        assert_eq!(
            clean("x bulk-secret-099999 y").as_deref(),
            Some("x <redacted> y")
        );
    }

    #[test]
    fn digests_go_and_control_characters_are_escaped() {
        let line =
            "NetworkIdentity { network_name: \"n\", network_secret_digest: Some([1, 2, 3]) }";
        assert_eq!(
            clean(line).as_deref(),
            Some("NetworkIdentity { network_name: \"n\", network_secret_digest: Some([<redacted>]) }")
        );
        assert_eq!(
            clean("peer \"evil\nFORGED line\"").as_deref(),
            Some("peer \"evil\\nFORGED line\"")
        );
        assert_eq!(clean("bell\u{7}").as_deref(), Some("bell\\u{7}"));
        assert_eq!(clean("tab\tstays"), None);
    }
}
