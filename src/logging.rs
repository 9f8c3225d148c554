//! Logging: env_logger to stderr, `info` by default, dependencies quieter, and every known secret redacted.

use std::sync::RwLock;

use log::{Log, Metadata, Record};

/// Default filter when `RUST_LOG` is not set. EasyTier logs through `tracing`
/// (bridged to `log`) at info for every connection; at a thousand checks a
/// minute that would drown the probe's own lines.
const DEFAULT_FILTER: &str = "info,easytier=warn,tracing::span=warn,tokio=warn,quinn=warn,rustls=warn,tungstenite=warn,hickory_resolver=warn,boringtun=warn,ureq=warn";

/// Secrets the process knows (tokens, keys, network secrets). EasyTier prints
/// network identities, secret included, in its own info and debug lines, so
/// redaction happens here, for every line, whatever `RUST_LOG` allows.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

const REDACTED: &str = "<redacted>";

/// Registers a secret that must never be printed.
pub fn add_secret(secret: &str) {
    if secret.is_empty() {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| s == secret) {
        secrets.push(secret.to_string());
        // Longest first, so a secret that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Replaces every registered secret in `text`.
pub fn redact(text: &str) -> Option<String> {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out: Option<String> = None;
    for secret in secrets.iter() {
        let current = out.as_deref().unwrap_or(text);
        if current.contains(secret.as_str()) {
            out = Some(current.replace(secret.as_str(), REDACTED));
        }
    }
    out
}

struct RedactingLogger {
    inner: env_logger::Logger,
}

impl Log for RedactingLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.inner.matches(record) {
            return;
        }
        let message = record.args().to_string();
        match redact(&message) {
            None => self.inner.log(record),
            Some(clean) => self.inner.log(
                &Record::builder()
                    .args(format_args!("{clean}"))
                    .level(record.level())
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

pub fn init() {
    let env = env_logger::Env::default().default_filter_or(DEFAULT_FILTER);
    let inner = env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .build();
    let max_level = inner.filter();
    if log::set_boxed_logger(Box::new(RedactingLogger { inner })).is_ok() {
        log::set_max_level(max_level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_registered_secrets() {
        add_secret("hunter2");
        add_secret("hunter2-long");
        assert_eq!(redact("no secret here"), None);
        assert_eq!(
            redact("a=hunter2 b=hunter2-long").as_deref(),
            Some("a=<redacted> b=<redacted>")
        );
    }
}
