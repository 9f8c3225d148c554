//! Logging: env_logger to stderr, the probe at `info`, EasyTier off, journal priorities, and every line cleaned (`redact`).

use log::{Log, Metadata, Record};

/// Default filter when `RUST_LOG` is not set: the probe's own lines at info,
/// other libraries' warnings, and none of EasyTier's. EasyTier (through
/// `tracing`, bridged to `log`) logs ordinary connection events at WARN and
/// even ERROR, about ten lines per check: at a thousand checks a minute that
/// is gigabytes of journal a day saying nothing the probe's own verdict lines
/// do not. env_logger matches targets by prefix and the longest directive
/// wins, so `easytier_probe=info` must stand beside `easytier=off` (which
/// alone would also silence `easytier_probe`). `RUST_LOG` replaces all of it.
pub const DEFAULT_FILTER: &str = "warn,easytier=off,tracing::span=off,easytier_probe=info";

pub use crate::redact::add_secret;

struct RedactingLogger {
    inner: env_logger::Logger,
}

/// EasyTier's "connection closed" line, which the checker needs whatever
/// the filter (see `checker::closed_conns`).
fn is_close_line(metadata: &Metadata) -> bool {
    use crate::checker::closed_conns;
    metadata.level() == log::Level::Warn && metadata.target() == closed_conns::TARGET
}

impl Log for RedactingLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata) || is_close_line(metadata)
    }

    fn log(&self, record: &Record) {
        if is_close_line(record.metadata()) {
            let message = record.args().to_string();
            if message.contains(crate::checker::closed_conns::MESSAGE) {
                crate::checker::closed_conns::note(&message);
            }
        }
        if !self.inner.matches(record) {
            return;
        }
        let message = record.args().to_string();
        match crate::redact::clean(&message) {
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

/// True when stderr is the systemd journal's stream for this service
/// (`JOURNAL_STREAM` names its device and inode), so that lines can carry
/// their syslog priority and leave the timestamp to the journal.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(meta) => dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino()),
        Err(_) => false,
    }
}

/// The `<N>` prefix systemd reads as a line's syslog priority.
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

pub fn init() {
    use std::io::Write;
    let env = env_logger::Env::default().default_filter_or(DEFAULT_FILTER);
    let mut builder = env_logger::Builder::from_env(env);
    if stderr_is_journal() {
        builder.format(|buf, record| {
            writeln!(
                buf,
                "<{}>{}: {}",
                syslog_priority(record.level()),
                record.target(),
                record.args()
            )
        });
    } else {
        builder.format_timestamp_millis();
    }
    let inner = builder.build();
    // At least Warn, for EasyTier's close lines (see `is_close_line`).
    let max_level = inner.filter().max(log::LevelFilter::Warn);
    if log::set_boxed_logger(Box::new(RedactingLogger { inner })).is_ok() {
        log::set_max_level(max_level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_filter_keeps_the_probe_and_silences_easytier() {
        let filter = env_logger::Builder::new()
            .parse_filters(DEFAULT_FILTER)
            .build();
        let enabled = |target: &str, level| {
            filter.enabled(&log::Metadata::builder().target(target).level(level).build())
        };
        assert!(enabled("easytier_probe::daemon", log::Level::Info));
        assert!(enabled("easytier_probe", log::Level::Info));
        assert!(!enabled("easytier_probe::pool", log::Level::Debug));
        assert!(!enabled("easytier::peers::peer_manager", log::Level::Error));
        assert!(!enabled("easytier", log::Level::Warn));
        assert!(enabled("ureq::unit", log::Level::Warn));
        assert!(!enabled("ureq::unit", log::Level::Info));
    }

    #[test]
    fn syslog_priorities_follow_the_levels() {
        assert_eq!(syslog_priority(log::Level::Error), 3);
        assert_eq!(syslog_priority(log::Level::Warn), 4);
        assert_eq!(syslog_priority(log::Level::Info), 6);
        assert_eq!(syslog_priority(log::Level::Debug), 7);
    }
}
