//! One table of the whole-number settings: flag, environment variable, default and range.
//!
//! Parsing, the messages for bad values, the `--help` texts (checked by a
//! test below) and the man page (checked by `tests/man_page.rs`) all follow
//! this table, so a default is stated once.

use super::env::Env;
use super::{usage, Result};

/// A whole-number setting.
#[derive(Debug)]
pub struct Number {
    /// The flag without its dashes; None for a setting read from the
    /// environment only.
    pub flag: Option<&'static str>,
    pub var: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
}

pub const CHECK_INTERVAL: Number = Number {
    flag: Some("check-interval"),
    var: "HEALTH_CHECK_INTERVAL",
    default: 60,
    min: 1,
    max: 86_400,
};
pub const CHECK_TIMEOUT: Number = Number {
    flag: Some("check-timeout"),
    var: "HEALTH_CHECK_TIMEOUT",
    default: 10,
    min: 1,
    max: 3_600,
};
/// Chosen from the scale benchmark (see BENCHMARKS.md): enough for 1,000 peers
/// per minute with a 10 s timeout when a few percent of them are silent.
pub const WORKERS: Number = Number {
    flag: Some("workers"),
    var: "PROBE_WORKERS",
    default: 32,
    min: 1,
    max: 1_024,
};
/// More checks that must fail before a peer last seen Online (or never seen)
/// is recorded Offline; 0 records the first failure.
pub const CONFIRM_OFFLINE: Number = Number {
    flag: Some("confirm-offline"),
    var: "CONFIRM_OFFLINE",
    default: 1,
    min: 0,
    max: 5,
};
/// Seconds between two full checks of a peer that stays Online; quick
/// checks in between carry the version over. 0: every check is full.
pub const VERSION_REFRESH: Number = Number {
    flag: Some("version-refresh"),
    var: "VERSION_REFRESH",
    default: 3_600,
    min: 0,
    max: 604_800,
};
/// Days of history kept as hourly rollups (per peer: checks, Online,
/// latency, version); the page's 7 d and 30 d figures read them.
pub const RETENTION_DAYS: Number = Number {
    flag: Some("retention-days"),
    var: "RETENTION_DAYS",
    default: 90,
    min: 1,
    max: 36_500,
};
/// Hours a delivered raw result is kept; at least 24, so the 24 h uptime
/// is computed from raw results. Unacknowledged results are always kept.
pub const RAW_RETENTION_HOURS: Number = Number {
    flag: Some("raw-retention-hours"),
    var: "RAW_RETENTION_HOURS",
    default: 48,
    min: 24,
    max: 876_000,
};
pub const PEER_FETCH_INTERVAL: Number = Number {
    flag: Some("peer-fetch-interval"),
    var: "PEER_FETCH_INTERVAL",
    default: 60,
    min: 1,
    max: 86_400,
};
pub const STATUS_REPORT_INTERVAL: Number = Number {
    flag: Some("status-report-interval"),
    var: "STATUS_REPORT_INTERVAL",
    default: 30,
    min: 1,
    max: 86_400,
};
pub const REPORT_BATCH_SIZE: Number = Number {
    flag: Some("report-batch-size"),
    var: "REPORT_BATCH_SIZE",
    default: 500,
    min: 1,
    max: 100_000,
};
pub const MAX_BUFFERED_RESULTS: Number = Number {
    flag: Some("max-buffered-results"),
    var: "MAX_BUFFERED_RESULTS",
    default: 1_000_000,
    min: 1,
    max: 1_000_000_000,
};
/// Everything after a stop signal fits in this many seconds, below the
/// unit's TimeoutStopSec=30 with room for the process to exit. More than the
/// final report's 5 s budget, which it contains.
pub const STOP_BUDGET_SECS: Number = Number {
    flag: None,
    var: "EASYTIER_PROBE_STOP_BUDGET_SECS",
    default: 25,
    min: 6,
    max: 3_600,
};
/// EasyTier 2.0.3 keeps about 1 KB per instance for the life of the process
/// (a global map of peer-center data that is never cleaned). After this many
/// checks the daemon stops cleanly and re-executes itself, which returns that
/// memory: at 1,000 checks a minute, once every 100 minutes; about 110 MB at
/// most (BENCHMARKS.md).
pub const RECYCLE_AFTER_CHECKS: Number = Number {
    flag: None,
    var: "EASYTIER_PROBE_RECYCLE_AFTER_CHECKS",
    default: 100_000,
    min: 1,
    max: 1_000_000_000_000,
};

/// Every whole-number setting, for the documentation checks.
pub const ALL: &[&Number] = &[
    &CHECK_INTERVAL,
    &CHECK_TIMEOUT,
    &WORKERS,
    &CONFIRM_OFFLINE,
    &VERSION_REFRESH,
    &RETENTION_DAYS,
    &RAW_RETENTION_HOURS,
    &PEER_FETCH_INTERVAL,
    &STATUS_REPORT_INTERVAL,
    &REPORT_BATCH_SIZE,
    &MAX_BUFFERED_RESULTS,
    &STOP_BUDGET_SECS,
    &RECYCLE_AFTER_CHECKS,
];

impl Number {
    /// The flag's value if given, else the environment's, else the default.
    pub fn read(&self, flag_value: Option<String>, env: &dyn Env) -> Result<u64> {
        if let Some(value) = flag_value {
            let flag = self.flag.unwrap_or(self.var);
            return self.parse(&value, &format!("--{flag}"));
        }
        match env.get(self.var) {
            Some(value) => {
                let source = match self.flag {
                    Some(flag) => format!("{} (from --{flag})", self.var),
                    None => self.var.to_string(),
                };
                self.parse(&value, &source)
            }
            None => Ok(self.default),
        }
    }

    /// Parses a value given through `source` (named in the error).
    pub fn parse(&self, value: &str, source: &str) -> Result<u64> {
        match value.trim().parse::<u64>() {
            Ok(v) if (self.min..=self.max).contains(&v) => Ok(v),
            _ => usage(format!(
                "{source}: {value:?} is not a whole number from {} to {}",
                self.min, self.max
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ENV: [(&str, &str); 0] = [];

    #[test]
    fn help_texts_state_the_table_defaults_and_variables() {
        let args = ["easytier-probe".to_string(), "--help".to_string()];
        let help = match super::super::cli::parse_args(&args) {
            Err((0, text)) => text,
            _ => panic!("--help prints the help"),
        };
        // argh wraps descriptions: an entry runs until the next option.
        let words: Vec<&str> = help.split_whitespace().collect();
        for setting in ALL {
            let Some(flag) = setting.flag else { continue };
            let start = words
                .iter()
                .position(|w| *w == format!("--{flag}"))
                .unwrap_or_else(|| panic!("--{flag} is not in --help"));
            let end = words[start + 1..]
                .iter()
                .position(|w| w.starts_with('-') && w.len() > 1)
                .map_or(words.len(), |e| start + 1 + e);
            let line = words[start..end].join(" ");
            assert!(
                line.contains(&format!("env {}", setting.var))
                    && line.contains(&format!("default {}", setting.default)),
                "--help for --{flag} does not say env {} and default {}: {line}",
                setting.var,
                setting.default
            );
        }
    }

    #[test]
    fn values_are_read_from_flag_then_environment_then_default() {
        let env = [
            ("PROBE_WORKERS", "4"),
            ("EASYTIER_PROBE_STOP_BUDGET_SECS", "5"),
        ];
        assert_eq!(WORKERS.read(Some("8".into()), &env).unwrap(), 8);
        assert_eq!(WORKERS.read(None, &env).unwrap(), 4);
        assert_eq!(WORKERS.read(None, &NO_ENV).unwrap(), 32);
        let e = STOP_BUDGET_SECS.read(None, &env).unwrap_err();
        assert!(
            e.0.starts_with("EASYTIER_PROBE_STOP_BUDGET_SECS: \"5\""),
            "{e}"
        );
        let e = WORKERS.read(Some("lots".into()), &env).unwrap_err();
        assert!(e.0.starts_with("--workers: "), "{e}");
    }
}
