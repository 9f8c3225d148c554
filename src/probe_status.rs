//! The probe's own section of `status` (mode, id, daemon, backend, last fetch and report, outbox, database) and the exit status of `status --check`.
//!
//! `status` is another process: it knows the daemon through what the daemon
//! records in the database every few seconds (`health::DaemonState`), read
//! through a read-only connection like the rest of `status`.

use std::path::Path;
use std::process::ExitCode;

use rusqlite::Connection;

use crate::clock;
use crate::health::{DaemonState, STATE_STALE};
use crate::metrics::StoreFigures;
use crate::store::{self, PeerStatus};

pub struct ProbeStatus {
    probe_id: String,
    state: Option<DaemonState>,
    figures: StoreFigures,
    db_path: String,
    db_bytes: u64,
    now_ms: i64,
}

impl ProbeStatus {
    pub fn read(conn: &Connection, db_path: &Path, now_ms: i64) -> anyhow::Result<ProbeStatus> {
        // The write-ahead log holds recent writes until a checkpoint.
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut wal = db_path.as_os_str().to_owned();
        wal.push("-wal");
        Ok(ProbeStatus {
            probe_id: store::probe_id(conn)?,
            state: store::daemon_state(conn)?,
            figures: store::store_figures(conn)?,
            db_path: db_path.display().to_string(),
            db_bytes: size(db_path) + size(Path::new(&wal)),
            now_ms,
        })
    }

    /// Why the probe itself is unhealthy; empty when it is healthy.
    pub fn problems(&self) -> Vec<String> {
        let Some(s) = &self.state else {
            return vec!["no daemon has recorded its state in this database yet".into()];
        };
        if s.stopped {
            return vec![format!(
                "the daemon stopped at {}",
                clock::rfc3339(s.seen_ms)
            )];
        }
        let silent = self.ago(s.seen_ms);
        if silent > STATE_STALE.as_secs() {
            return vec![format!(
                "the daemon has not recorded its state for {silent} s (is it running?)"
            )];
        }
        s.problems.clone()
    }

    /// The section printed above the peers.
    pub fn print(&self) {
        for (label, text) in self.lines() {
            println!("{label:<12}{text}");
        }
        println!();
    }

    /// Uses `state` (the daemon's own, live) instead of what it recorded:
    /// for the status page, served by the daemon itself.
    pub fn with_state(mut self, state: DaemonState) -> ProbeStatus {
        self.state = Some(state);
        self
    }

    /// The section as label and text pairs (`status`, the status page).
    pub fn lines(&self) -> Vec<(&'static str, String)> {
        let mut lines = vec![("probe", self.identity())];
        lines.push(("daemon", self.daemon()));
        if let Some(s) = self.state.as_ref().filter(|s| s.mode == "distributed") {
            lines.push(("backend", self.backend(s)));
            lines.push(("last fetch", self.moment(s.last_fetch_ms)));
            lines.push(("last report", self.moment(s.last_report_ms)));
        }
        let f = &self.figures;
        let oldest = match f.oldest_ms {
            Some(ms) => format!(", oldest {} s old", self.ago(ms)),
            None => String::new(),
        };
        lines.push((
            "outbox",
            format!(
                "{} waiting{oldest}; {} dropped, {} refused by the backend",
                f.waiting, f.dropped, f.set_aside
            ),
        ));
        let mb = self.db_bytes as f64 / 1e6;
        lines.push(("database", format!("{} ({mb:.1} MB)", self.db_path)));
        if let Some(listen) = self.state.as_ref().and_then(|s| s.listen.as_ref()) {
            lines.push((
                "http",
                format!("http://{listen} (/, /api/peers, /metrics, /health)"),
            ));
        }
        lines
    }

    /// 0 all good, 1 a peer is Offline, 2 the probe itself is unhealthy;
    /// always 0 without `--check`. The reason goes to stderr.
    pub fn exit_code(&self, rows: &[PeerStatus], check: bool) -> ExitCode {
        let offline = rows.iter().filter(|r| r.status == "Offline").count();
        self.exit_code_with(offline, check)
    }

    fn exit_code_with(&self, offline: usize, check: bool) -> ExitCode {
        if !check {
            return ExitCode::SUCCESS;
        }
        let problems = self.problems();
        if !problems.is_empty() {
            eprintln!("easytier-probe: unhealthy: {}", problems.join("; "));
            return ExitCode::from(2);
        }
        if offline > 0 {
            eprintln!("easytier-probe: {offline} peer(s) Offline");
            return ExitCode::from(1);
        }
        ExitCode::SUCCESS
    }

    fn identity(&self) -> String {
        match &self.state {
            Some(s) => {
                let region = s.region.as_deref().map(|r| format!(", region {r}"));
                format!(
                    "{}, {} mode{}",
                    self.probe_id,
                    s.mode,
                    region.unwrap_or_default()
                )
            }
            None => self.probe_id.clone(),
        }
    }

    fn daemon(&self) -> String {
        let problems = self.problems();
        let Some(s) = &self.state else {
            return problems.join("; ");
        };
        let who = format!(
            "pid {}, easytier-probe {}, started {}",
            s.pid,
            s.version,
            clock::rfc3339(s.started_ms)
        );
        if s.stopped {
            return format!("stopped at {} ({who})", clock::rfc3339(s.seen_ms));
        }
        let verdict = match problems.as_slice() {
            [] => "healthy".to_string(),
            _ => format!("unhealthy: {}", problems.join("; ")),
        };
        format!("{who}, recorded {} s ago; {verdict}", self.ago(s.seen_ms))
    }

    fn backend(&self, s: &DaemonState) -> String {
        let url = s.backend.as_deref().unwrap_or("?");
        let answers = &s.backend_answers;
        let reachable = match answers.iter().any(|a| a.status.is_some()) {
            _ if answers.is_empty() => "no request yet",
            true => "reachable",
            false => "unreachable",
        };
        let each: Vec<String> = answers
            .iter()
            .map(|a| {
                let what = a
                    .status
                    .map_or_else(|| "no answer".to_string(), |s| format!("HTTP {s}"));
                format!("{} {what} {} s ago", a.request, self.ago(a.at_ms))
            })
            .collect();
        match each.as_slice() {
            [] => format!("{url}, {reachable}"),
            _ => format!("{url}, {reachable} ({})", each.join("; ")),
        }
    }

    fn moment(&self, ms: Option<i64>) -> String {
        match ms {
            Some(ms) => format!("{} ({} s ago)", clock::rfc3339(ms), self.ago(ms)),
            None => "none since the daemon started".to_string(),
        }
    }

    fn ago(&self, ms: i64) -> u64 {
        (self.now_ms - ms).max(0) as u64 / 1000
    }
}

/// `status --check` without a readable database: the probe is unhealthy.
pub fn unreadable(error: &anyhow::Error) -> ExitCode {
    eprintln!("easytier-probe: unhealthy: {error:#}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(state: Option<DaemonState>, now_ms: i64) -> ProbeStatus {
        ProbeStatus {
            probe_id: "0011223344556677".into(),
            state,
            figures: StoreFigures::default(),
            db_path: "probe.db".into(),
            db_bytes: 0,
            now_ms,
        }
    }

    #[test]
    fn check_says_0_1_or_2() {
        let now = 1_000_000;
        let fresh = DaemonState {
            seen_ms: now - 5_000,
            ..DaemonState::default()
        };
        let code = |p: &ProbeStatus, offline: usize| p.exit_code_with(offline, true);
        let healthy = probe(Some(fresh.clone()), now);
        assert_eq!(code(&healthy, 0), ExitCode::SUCCESS);
        assert_eq!(code(&healthy, 2), ExitCode::from(1));
        assert_eq!(healthy.exit_code_with(2, false), ExitCode::SUCCESS);
        for unhealthy in [
            probe(None, now),
            probe(
                Some(fresh.clone()),
                now + STATE_STALE.as_millis() as i64 + 6_000,
            ),
            probe(
                Some(DaemonState {
                    stopped: true,
                    ..fresh.clone()
                }),
                now,
            ),
            probe(
                Some(DaemonState {
                    problems: vec!["x".into()],
                    ..fresh
                }),
                now,
            ),
        ] {
            assert_eq!(code(&unhealthy, 1), ExitCode::from(2));
            assert!(!unhealthy.problems().is_empty());
        }
    }
}
