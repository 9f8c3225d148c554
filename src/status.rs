//! The `status` subcommand: the probe's own state and the latest state of every peer, read-only from the database.

use std::process::ExitCode;

use crate::clock;
use crate::config::StatusConfig;
use crate::probe_status::{self, ProbeStatus};
use crate::store;

pub fn run(config: StatusConfig) -> anyhow::Result<ExitCode> {
    let conn = match store::open_ro(&config.db_path) {
        Ok(conn) => conn,
        Err(e) if config.check => return Ok(probe_status::unreadable(&e)),
        Err(e) => return Err(e),
    };
    let rows = store::peer_statuses(&conn, clock::now_ms())?;
    let probe = ProbeStatus::read(&conn, &config.db_path, clock::now_ms())?;
    // The JSON stays the array of peers it always was.
    if config.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(probe.exit_code(&rows, config.check));
    }
    probe.print();
    if rows.is_empty() {
        println!("no peers in {}", config.db_path.display());
        print_set_aside(&conn, &config)?;
        return Ok(probe.exit_code(&rows, config.check));
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
    print_set_aside(&conn, &config)?;
    Ok(probe.exit_code(&rows, config.check))
}

/// One line under the table when results are set aside (the backend
/// refused them for good), with the oldest and the way to send them again.
fn print_set_aside(conn: &rusqlite::Connection, config: &StatusConfig) -> anyhow::Result<()> {
    let count = store::summary(conn)?.rejected;
    let Some(oldest) = store::rejected_results(conn, 1)?.into_iter().next() else {
        return Ok(());
    };
    println!(
        "\n{count} result(s) set aside: the backend refused them for good (oldest: seq {} of peer {}, {}); `easytier-probe requeue --db {} --all` queues them again",
        oldest.seq,
        oldest.peer_id,
        oldest.reason.as_deref().unwrap_or("no reason given"),
        config.db_path.display()
    );
    Ok(())
}
