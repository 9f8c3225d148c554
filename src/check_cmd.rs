//! The `check` subcommand: one check, printed as a line or as JSON; exit 0 Online, 1 Offline, 2 unsupported or usage error.

use std::process::ExitCode;

use crate::checker::{self, CheckKind, CheckOptions, ErrorKind, Status};
use crate::clock;
use crate::config::CheckConfig;

/// Guest network name for `check`: stable per machine, like the daemon's,
/// so a relay sees one guest network per probe host.
fn default_guest_network() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("easytier-probe-{host}")
}

pub fn run(config: CheckConfig) -> anyhow::Result<ExitCode> {
    if let Some(secret) = &config.peer.network_secret {
        crate::logging::add_secret(secret);
    }
    if let Some(reason) = config.peer.unsupported_reason(config.allow_quic) {
        return Ok(unsupported(&config, reason));
    }
    if config.peer.network_secret.is_none() && !config.peer.network_name.is_empty() {
        log::info!(
            "no network secret: checking {} as a public relay; the network name {:?} is only a label",
            config.peer.uri(),
            config.peer.network_name
        );
    }
    let opts = CheckOptions {
        timeout: config.timeout,
        probe_network_name: default_guest_network(),
        hostname: "easytier-probe".to_string(),
    };
    checker::tune_easytier_for_checks();
    let kind = if config.quick {
        CheckKind::Quick
    } else {
        CheckKind::Full
    };
    let result = checker::check_as(&config.peer, &opts, kind);
    if config.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        let latency = result.latency_us.map(checker::latency_text);
        match result.status {
            Status::Online if kind == CheckKind::Quick => println!(
                "{} Online as {} in {} ms (quick check): handshake {}",
                result.uri,
                result.role,
                result.duration_ms,
                latency.unwrap_or_else(|| "not measured".into()),
            ),
            Status::Online => println!(
                "{} Online as {} in {} ms: latency {}, version {}, host {}",
                result.uri,
                result.role,
                result.duration_ms,
                latency.unwrap_or_else(|| "not measured yet".into()),
                result.remote_version.as_deref().unwrap_or("unknown"),
                result.remote_hostname.as_deref().unwrap_or("unknown"),
            ),
            Status::Offline => println!(
                "{} Offline after {} ms ({}): {}",
                result.uri,
                result.duration_ms,
                result.error_kind.map_or("unknown", ErrorKind::as_str),
                result.error.as_deref().unwrap_or("unknown error")
            ),
        }
    }
    Ok(match result.status {
        Status::Online => ExitCode::SUCCESS,
        Status::Offline => ExitCode::from(1),
    })
}

/// A peer the probe cannot check: said on stderr (and as JSON with
/// `--json`), exit status 2, no instance started.
fn unsupported(config: &CheckConfig, reason: &str) -> ExitCode {
    let peer = &config.peer;
    if config.json {
        let now = clock::now_ms();
        let result = serde_json::json!({
            "peer_id": peer.id,
            "uri": peer.uri(),
            "status": "unsupported",
            "latency_us": null,
            "response_time": null,
            "remote_version": null,
            "remote_hostname": null,
            "role": peer.role().as_str(),
            "error": reason,
            "error_kind": ErrorKind::Unsupported.as_str(),
            "attempts": 0,
            "checked_at": clock::rfc3339(now),
            "duration_ms": 0,
        });
        println!("{result}");
    }
    eprintln!("easytier-probe: {} is not checked: {reason}", peer.uri());
    ExitCode::from(2)
}
