//! The `check` subcommand: one check, printed as a line or as JSON.

use std::process::ExitCode;

use crate::checker::{self, CheckOptions, Status};
use crate::config::CheckConfig;

/// Guest network name for `check` without `--network-name`: stable per machine,
/// like the daemon's, so a relay sees one guest network per probe host.
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
    let opts = CheckOptions {
        timeout: config.timeout,
        probe_network_name: config
            .network_name
            .clone()
            .filter(|_| config.peer.network_secret.is_none())
            .unwrap_or_else(default_guest_network),
        hostname: "easytier-probe".to_string(),
    };
    checker::tune_easytier_for_checks();
    let result = checker::check(&config.peer, &opts);
    if config.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        match result.status {
            Status::Online => println!(
                "{} Online as {} in {} ms: latency {}, version {}, host {}",
                result.uri,
                result.role,
                result.duration_ms,
                result
                    .latency_us
                    .map(checker::latency_text)
                    .unwrap_or_else(|| "not measured yet".into()),
                result.remote_version.as_deref().unwrap_or("unknown"),
                result.remote_hostname.as_deref().unwrap_or("unknown"),
            ),
            Status::Offline => println!(
                "{} Offline after {} ms: {}",
                result.uri,
                result.duration_ms,
                result.error.as_deref().unwrap_or("unknown error")
            ),
        }
    }
    Ok(match result.status {
        Status::Online => ExitCode::SUCCESS,
        Status::Offline => ExitCode::from(1),
    })
}
