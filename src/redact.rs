//! Secrets the process knows and the cleaning of every log line: secrets and EasyTier's secret digests redacted, control characters escaped.
//!
//! Two sets: the probe's own credentials (node token, API key, a `check`'s
//! network secret), kept for the life of the process, and the network
//! secrets of the peers being watched, replaced whenever the peer list is
//! (a peer no longer watched has its secret forgotten). One Aho-Corasick
//! automaton over both cleans a line in one pass, however many secrets.
//!
//! Building the automaton for 100,000 secrets takes a tenth of a second or
//! more, so it is never built under the lock (every log line takes the lock
//! to read) nor on the main loop: a list's thread stages its secrets
//! ([`stage_network_secrets`]) and the main loop only swaps them in
//! ([`install_network_secrets`]). A generation number tells a swap whether
//! anything was registered since the staging; if so, the wider set stays.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};

const REDACTED: &str = "<redacted>";
/// A secret shorter than this is redacted only where it stands as a word of
/// its own: a one-letter secret "e" must not turn every "e" of every line
/// into `<redacted>` (which would also tell the reader what the secret is).
const SHORT_SECRET: usize = 8;

type Secrets = Arc<BTreeSet<String>>;

#[derive(Default)]
struct Registry {
    own: Secrets,
    network: Secrets,
    /// Over `own` and `network`, longest match first; None when both are empty.
    matcher: Option<Arc<AhoCorasick>>,
    /// Moves on every registration (even one that adds nothing new: a list
    /// read after a staging must keep its secrets) and every swap.
    generation: u64,
}

static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(Default::default);

fn build(own: &BTreeSet<String>, network: &BTreeSet<String>) -> Option<Arc<AhoCorasick>> {
    if own.is_empty() && network.is_empty() {
        return None;
    }
    AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(own.iter().chain(network.iter()))
        .ok()
        .map(Arc::new)
}

fn read() -> std::sync::RwLockReadGuard<'static, Registry> {
    REGISTRY.read().unwrap_or_else(|e| e.into_inner())
}

fn write() -> std::sync::RwLockWriteGuard<'static, Registry> {
    REGISTRY.write().unwrap_or_else(|e| e.into_inner())
}

/// Adds `own` and `network` secrets to what is registered: the new sets
/// and their automaton are built outside the lock, then swapped in if
/// nothing else registered meanwhile (otherwise built again from the newer
/// sets). The generation moves even when nothing was new.
fn register(own: &[&str], network: &[&str]) {
    loop {
        let (old_own, old_network, generation) = {
            let r = read();
            (r.own.clone(), r.network.clone(), r.generation)
        };
        let new_own = old_own.len() + own.iter().filter(|s| !old_own.contains(**s)).count();
        let new_network = old_network.len()
            + network
                .iter()
                .filter(|s| !old_network.contains(**s))
                .count();
        let changed = new_own != old_own.len() || new_network != old_network.len();
        let built = changed.then(|| {
            let grow = |old: &Secrets, more: &[&str]| {
                let mut set = (**old).clone();
                set.extend(more.iter().map(|s| s.to_string()));
                Arc::new(set)
            };
            let (own, network) = (grow(&old_own, own), grow(&old_network, network));
            let matcher = build(&own, &network);
            (own, network, matcher)
        });
        let mut r = write();
        if r.generation != generation {
            continue;
        }
        r.generation += 1;
        if let Some((own, network, matcher)) = built {
            r.own = own;
            r.network = network;
            r.matcher = matcher;
        }
        return;
    }
}

/// Registers one of the probe's own secrets (token, key), for good.
pub fn add_secret(secret: &str) {
    if !secret.is_empty() {
        register(&[secret], &[]);
    }
}

/// Adds network secrets (from a list being read), before anything about
/// the list can be printed: the secrets of the list in use stay too, since
/// its checks go on until the new list is applied.
pub fn add_network_secrets<'a>(secrets: impl IntoIterator<Item = &'a str>) {
    let new: Vec<&str> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
    register(&[], &new);
}

/// A list's network secrets and their automaton, built by the list's
/// thread for [`install_network_secrets`] to swap in.
pub struct StagedSecrets {
    generation: u64,
    network: Secrets,
    matcher: Option<Arc<AhoCorasick>>,
}

impl StagedSecrets {
    /// Whether `secret` stays redacted once this set is swapped in (an own
    /// secret always does).
    pub fn keeps(&self, secret: &str) -> bool {
        self.network.contains(secret) || read().own.contains(secret)
    }
}

/// Builds, on the calling thread, what redaction becomes once the list
/// with these network secrets is the one watched. Call it after
/// [`add_network_secrets`] for the same list.
pub fn stage_network_secrets<'a>(secrets: impl IntoIterator<Item = &'a str>) -> StagedSecrets {
    let network: BTreeSet<String> = secrets
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let (own, generation) = {
        let r = read();
        (r.own.clone(), r.generation)
    };
    let matcher = build(&own, &network);
    StagedSecrets {
        generation,
        network: Arc::new(network),
        matcher,
    }
}

/// What a swap let go (the replaced sets, or the staged ones when the swap
/// did not happen): large, so the caller frees it off the main loop.
pub struct RetiredSecrets {
    _network: Secrets,
    _matcher: Option<Arc<AhoCorasick>>,
}

/// A staged set that will never be swapped in (a newer list came first).
impl From<StagedSecrets> for RetiredSecrets {
    fn from(staged: StagedSecrets) -> RetiredSecrets {
        RetiredSecrets {
            _network: staged.network,
            _matcher: staged.matcher,
        }
    }
}

/// Makes a staged list's secrets the network secrets (those of peers no
/// longer watched are forgotten): a swap, cheap enough for the main loop.
/// When anything was registered since the staging (a newer list was read,
/// or an own secret added), the wider set registered now is kept instead,
/// until the next list: redacting too much is safe, too little is not.
/// Returns whether the staged set was swapped in, and what to free.
pub fn install_network_secrets(staged: StagedSecrets) -> (bool, RetiredSecrets) {
    let StagedSecrets {
        generation,
        mut network,
        mut matcher,
    } = staged;
    let mut r = write();
    let installed = r.generation == generation;
    if installed {
        r.generation += 1;
        std::mem::swap(&mut r.network, &mut network);
        std::mem::swap(&mut r.matcher, &mut matcher);
    }
    let retired = RetiredSecrets {
        _network: network,
        _matcher: matcher,
    };
    (installed, retired)
}

fn matcher() -> Option<Arc<AhoCorasick>> {
    read().matcher.clone()
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
        // The list changes: while the new list is read its secrets join the
        // old ones (checks of the old list still run)...
        add_network_secrets(["new-network-secret"]);
        let staged = stage_network_secrets(["new-network-secret"]);
        assert_eq!(clean("s3cret-long-1").as_deref(), Some("<redacted>"));
        // ...and once it is applied the old peer's secret is forgotten, the
        // token stays.
        assert!(install_network_secrets(staged).0);
        assert_eq!(clean("s3cret-long-1"), None);
        assert_eq!(
            clean("hunter2-token new-network-secret").as_deref(),
            Some("<redacted> <redacted>")
        );
        // A list read after another was staged: applying the older one must
        // not forget the newer list's secrets, even those already known.
        add_network_secrets(["list-b-secret"]);
        let staged_b = stage_network_secrets(["list-b-secret"]);
        add_network_secrets(["list-c-secret", "new-network-secret"]);
        let staged_c = stage_network_secrets(["list-c-secret", "new-network-secret"]);
        assert!(!install_network_secrets(staged_b).0);
        assert_eq!(
            clean("list-c-secret new-network-secret").as_deref(),
            Some("<redacted> <redacted>")
        );
        assert!(install_network_secrets(staged_c).0);
        assert_eq!(clean("list-b-secret"), None);
        assert_eq!(clean("list-c-secret").as_deref(), Some("<redacted>"));
        // An own secret registered after a staging is not lost by the swap.
        let staged_d = stage_network_secrets(["list-d-secret"]);
        add_secret("late-own-token");
        assert!(!install_network_secrets(staged_d).0);
        assert_eq!(clean("late-own-token").as_deref(), Some("<redacted>"));
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
