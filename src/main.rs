//! easytier-probe: flags → `Config` → run; maps errors to exit statuses.

use std::process::ExitCode;

use easytier_probe::config::{self, Config, UsageError};
use easytier_probe::{check_cmd, daemon, logging, requeue_cmd, status};

fn main() -> ExitCode {
    // EasyTier builds anyhow errors on its hot paths (every connection
    // attempt). With RUST_BACKTRACE set, each would capture a backtrace, and
    // printing one maps the binary's debug info: >100 MB of resident memory
    // measured. Library backtraces are off unless asked for; panics keep
    // theirs. Set before any thread exists.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let args: Vec<String> = std::env::args().collect();
    let cli = match config::parse_args(&args) {
        Ok(cli) => cli,
        Err((code, text)) => {
            if code == 0 {
                println!("{text}");
            } else {
                eprintln!("{text}");
            }
            return ExitCode::from(code as u8);
        }
    };
    let config = match cli.into_config(&config::ProcessEnv) {
        Ok(config) => config,
        Err(UsageError(message)) => {
            eprintln!("easytier-probe: {message}");
            return ExitCode::from(2);
        }
    };
    logging::init();
    let outcome = match config {
        Config::Version => {
            println!(
                "easytier-probe {} (EasyTier {})",
                env!("CARGO_PKG_VERSION"),
                easytier::VERSION
            );
            Ok(ExitCode::SUCCESS)
        }
        Config::Check(c) => check_cmd::run(c),
        Config::Status(c) => status::run(c),
        Config::Requeue(c) => requeue_cmd::run(c),
        Config::Daemon(c) => daemon::run(*c).map(|()| ExitCode::SUCCESS),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            let code = if error.downcast_ref::<UsageError>().is_some() {
                2
            } else {
                1
            };
            eprintln!("easytier-probe: {error:#}");
            ExitCode::from(code)
        }
    }
}
