//! The `status` subcommand: the latest state of every peer, read-only from the database.

use std::process::ExitCode;

use crate::clock;
use crate::config::StatusConfig;
use crate::store;

pub fn run(config: StatusConfig) -> anyhow::Result<ExitCode> {
    let conn = store::open_ro(&config.db_path)?;
    let rows = store::peer_statuses(&conn, clock::now_ms())?;
    if config.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no peers in {}", config.db_path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let header = [
        "ID",
        "NAME",
        "URI",
        "STATUS",
        "LATENCY",
        "VERSION",
        "LAST CHECK",
        "CHECKS 24H",
        "UPTIME 24H",
    ];
    let table: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.name.clone(),
                r.uri.clone(),
                r.status.clone(),
                r.latency_us
                    .map(|us| crate::checker::latency_text(us.max(0) as u64))
                    .unwrap_or_else(|| "-".into()),
                r.remote_version.clone().unwrap_or_else(|| "-".into()),
                r.last_checked_at.clone().unwrap_or_else(|| "never".into()),
                r.checks_24h.to_string(),
                r.uptime_24h
                    .map(|u| format!("{u:.1}%"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let print_row = |cells: &[String]| {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    };
    print_row(&header.map(String::from));
    for row in &table {
        print_row(row);
    }
    Ok(ExitCode::SUCCESS)
}
