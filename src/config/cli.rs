//! The command line as argh parses it: flags and subcommands, before validation.
//!
//! Defaults and environment variables named in the doc strings come from
//! `settings`; a test there keeps the two in step.

use std::path::{Path, PathBuf};

use argh::FromArgs;

/// easytier-probe: watches EasyTier relay nodes and reports their health.
#[derive(FromArgs, Debug)]
pub struct Cli {
    /// print the version of the probe and of the EasyTier library, then exit
    #[argh(switch, short = 'V')]
    pub version: bool,

    /// JSON file with the peers to watch (standalone mode) [env PEERS_FILE]
    #[argh(option)]
    pub peers_file: Option<PathBuf>,

    /// a peer to watch, as proto://host:port[?name=NAME&id=ID]; repeatable
    #[argh(option)]
    pub peer: Vec<String>,

    /// seconds between two checks of the same peer [env HEALTH_CHECK_INTERVAL, default 60]
    #[argh(option)]
    pub check_interval: Option<String>,

    /// seconds one check may take before the peer counts as Offline [env HEALTH_CHECK_TIMEOUT, default 10]
    #[argh(option)]
    pub check_timeout: Option<String>,

    /// number of checks that run at once [env PROBE_WORKERS, default 32]
    #[argh(option)]
    pub workers: Option<String>,

    /// checks that confirm a failure of a peer last seen Online before it is recorded Offline, 2 s apart; 0 disables [env CONFIRM_OFFLINE, default 1]
    #[argh(option)]
    pub confirm_offline: Option<String>,

    /// seconds between full checks (which see the version) of a peer that stays Online; quick checks in between; 0: every check is full [env VERSION_REFRESH, default 3600]
    #[argh(option)]
    pub version_refresh: Option<String>,

    /// path of the SQLite database [env DATABASE_PATH, default $STATE_DIRECTORY/probe.db or ./easytier-probe.db]
    #[argh(option)]
    pub db: Option<PathBuf>,

    /// days of hourly history (per-peer rollups) to keep [env RETENTION_DAYS, default 90]
    #[argh(option)]
    pub retention_days: Option<String>,

    /// hours of delivered raw check results to keep; undelivered ones are always kept [env RAW_RETENTION_HOURS, default 48]
    #[argh(option)]
    pub raw_retention_hours: Option<String>,

    /// network name the probe uses as a guest of public relays [env PROBE_NETWORK_NAME, default derived from the probe id]
    #[argh(option)]
    pub network_name: Option<String>,

    /// address and port of the local HTTP listener (/metrics, /health), or off; port 0 lets the system choose [env LISTEN_ADDRESS, default 127.0.0.1:11090]
    #[argh(option)]
    pub listen: Option<String>,

    /// also check quic peers (only correct against EasyTier 2.0.x nodes) [env ALLOW_QUIC]
    #[argh(switch)]
    pub allow_quic: bool,

    /// take the peers from the backend and report results to it [env DISTRIBUTED_MODE_ENABLED=true]
    #[argh(switch)]
    pub distributed_mode: bool,

    /// base URL of the backend, http or https [env BACKEND_BASE_URL]
    #[argh(option)]
    pub backend_base_url: Option<String>,

    /// PEM file of CA certificates trusted for an https backend, besides the public ones [env BACKEND_CA_FILE]
    #[argh(option)]
    pub backend_ca_file: Option<PathBuf>,

    /// token sent as x-node-token in status reports [env NODE_TOKEN]
    #[argh(option)]
    pub node_token: Option<String>,

    /// file holding the node token (keeps it out of ps) [env NODE_TOKEN_FILE]
    #[argh(option)]
    pub node_token_file: Option<PathBuf>,

    /// API key sent as a Bearer token when fetching peers [env API_KEY]
    #[argh(option)]
    pub api_key: Option<String>,

    /// file holding the API key (keeps it out of ps) [env API_KEY_FILE]
    #[argh(option)]
    pub api_key_file: Option<PathBuf>,

    /// region whose peers this probe watches [env REGION]
    #[argh(option)]
    pub region: Option<String>,

    /// seconds between two fetches of the peer list [env PEER_FETCH_INTERVAL, default 60]
    #[argh(option)]
    pub peer_fetch_interval: Option<String>,

    /// seconds between two status reports [env STATUS_REPORT_INTERVAL, default 30]
    #[argh(option)]
    pub status_report_interval: Option<String>,

    /// most results sent in one status report [env REPORT_BATCH_SIZE, default 500]
    #[argh(option)]
    pub report_batch_size: Option<String>,

    /// most unsent results kept; older ones are dropped and counted [env MAX_BUFFERED_RESULTS, default 1000000]
    #[argh(option)]
    pub max_buffered_results: Option<String>,

    #[argh(subcommand)]
    pub command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Check(CheckArgs),
    Status(StatusArgs),
    Requeue(RequeueArgs),
}

/// Check one peer once and print the result (exit 0 Online, 1 Offline, 2 usage error).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "check")]
pub struct CheckArgs {
    /// the peer, as proto://host:port (tcp, udp, ws, wss, wg or quic)
    #[argh(positional)]
    pub uri: String,

    /// the peer's own network: joined as a member with --network-secret(-file); without a secret only a label (relay check)
    #[argh(option)]
    pub network_name: Option<String>,

    /// secret of the peer's network (visible in ps; prefer --network-secret-file)
    #[argh(option)]
    pub network_secret: Option<String>,

    /// file holding the secret of the peer's network
    #[argh(option)]
    pub network_secret_file: Option<PathBuf>,

    /// seconds to wait for a verdict [default 10]
    #[argh(option)]
    pub timeout: Option<String>,

    /// print one JSON object instead of a line of text
    #[argh(switch)]
    pub json: bool,

    /// a quick check: Online at the handshake (latency is the handshake's; no version or host name); a udp relay gets a full one
    #[argh(switch)]
    pub quick: bool,

    /// allow a quic check (only correct against EasyTier 2.0.x nodes)
    #[argh(switch)]
    pub allow_quic: bool,
}

/// Show the probe's own state and the latest state of every peer from the database (read-only).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
pub struct StatusArgs {
    /// path of the SQLite database [env DATABASE_PATH]
    #[argh(option)]
    pub db: Option<PathBuf>,

    /// print a JSON array instead of a table
    #[argh(switch)]
    pub json: bool,

    /// exit status 0 when all is well, 1 when a peer is Offline, 2 when the probe itself is unhealthy
    #[argh(switch)]
    pub check: bool,
}

/// Queue results the backend refused for good (set aside) again; works while the daemon runs.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "requeue")]
pub struct RequeueArgs {
    /// path of the SQLite database [env DATABASE_PATH]
    #[argh(option)]
    pub db: Option<PathBuf>,

    /// the seq of a set-aside result to queue again; repeatable
    #[argh(option)]
    pub seq: Vec<i64>,

    /// queue every set-aside result again
    #[argh(switch)]
    pub all: bool,
}

/// Parses argv; `Err` carries the exit status and the text to print.
pub fn parse_args(args: &[String]) -> std::result::Result<Cli, (i32, String)> {
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (cmd, rest) = strs
        .split_first()
        .map(|(c, r)| (*c, r))
        .unwrap_or(("easytier-probe", &[]));
    let cmd = Path::new(cmd)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("easytier-probe");
    Cli::from_args(&[cmd], rest).map_err(|early| match early.status {
        Ok(()) => (0, early.output),
        // argh's own words ("Unrecognized argument: --bogus"), in the same
        // form as every other usage error, with the way to the flags.
        Err(()) => (
            2,
            format!(
                "easytier-probe: {}\nRun 'easytier-probe --help' (or 'easytier-probe check --help') for the flags.",
                early.output.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
        ),
    })
}
