//! The `requeue` subcommand: queues results the backend refused for good (set aside) again, beside a running daemon or not.
//!
//! It writes through SQLite in short transactions of its own, each waiting
//! for the daemon's writer with the busy timeout (`store::requeue`); the
//! daemon needs no message, as its reporter reads the outbox afresh for
//! every report and its writer counts the outbox again when another
//! connection changed the database.

use std::process::ExitCode;

use crate::config::RequeueConfig;
use crate::store::{self, Requeue};

/// Seqs named in one line of output.
const SEQS_SHOWN: usize = 20;

pub fn run(config: RequeueConfig) -> anyhow::Result<ExitCode> {
    let done = store::requeue(&config.db_path, &config.which)?;
    if done.count == 0 && config.which == Requeue::All {
        println!("no set-aside results in {}", config.db_path.display());
    } else {
        println!(
            "queued {} set-aside result(s) again in {}; they go with the next status report",
            done.count,
            config.db_path.display()
        );
    }
    if done.not_set_aside.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut shown: Vec<String> = done
        .not_set_aside
        .iter()
        .take(SEQS_SHOWN)
        .map(i64::to_string)
        .collect();
    if done.not_set_aside.len() > SEQS_SHOWN {
        shown.push(format!(
            "and {} more",
            done.not_set_aside.len() - SEQS_SHOWN
        ));
    }
    eprintln!(
        "easytier-probe: not set aside (delivered, waiting, pruned or never written), left as they are: seq {}",
        shown.join(", ")
    );
    Ok(ExitCode::from(1))
}
