//! Command line and environment: argh flags, environment fallbacks, and validation into a `Config`.
//!
//! Two stages: `Cli` is what argh parsed, `Config` is what the daemon runs
//! with. Every bad value is reported here, naming the flag and its variable,
//! before any thread starts.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use argh::FromArgs;

use crate::peer::{self, Peer};

pub const DEFAULT_CHECK_INTERVAL_SECS: u64 = 60;
pub const DEFAULT_CHECK_TIMEOUT_SECS: u64 = 10;
/// Chosen from the scale benchmark (see BENCHMARKS.md): enough for 1,000 peers
/// per minute with a 10 s timeout when a few percent of them are silent.
pub const DEFAULT_WORKERS: usize = 32;
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
pub const DEFAULT_DB_FILE: &str = "easytier-probe.db";

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

    /// path of the SQLite database [env DATABASE_PATH, default $STATE_DIRECTORY/probe.db or ./easytier-probe.db]
    #[argh(option)]
    pub db: Option<PathBuf>,

    /// days of check results to keep [env RETENTION_DAYS, default 30]
    #[argh(option)]
    pub retention_days: Option<String>,

    /// network name the probe uses as a guest of public relays [env PROBE_NETWORK_NAME, default derived from the probe id]
    #[argh(option)]
    pub network_name: Option<String>,

    /// also check quic peers (only correct against EasyTier 2.0.x nodes) [env ALLOW_QUIC]
    #[argh(switch)]
    pub allow_quic: bool,

    /// take the peers from the backend and report results to it [env DISTRIBUTED_MODE_ENABLED=true]
    #[argh(switch)]
    pub distributed_mode: bool,

    /// base URL of the backend, http or https [env BACKEND_BASE_URL]
    #[argh(option)]
    pub backend_base_url: Option<String>,

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
}

/// Check one peer once and print the result (exit 0 Online, 1 Offline, 2 usage error).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "check")]
pub struct CheckArgs {
    /// the peer, as proto://host:port (tcp, udp, ws, wss, wg or quic)
    #[argh(positional)]
    pub uri: String,

    /// network to join: the peer's own network when a secret is given, otherwise the probe's guest network name
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

    /// allow a quic check (only correct against EasyTier 2.0.x nodes)
    #[argh(switch)]
    pub allow_quic: bool,
}

/// Show the latest state of every peer from the database (read-only).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
pub struct StatusArgs {
    /// path of the SQLite database [env DATABASE_PATH]
    #[argh(option)]
    pub db: Option<PathBuf>,

    /// print a JSON array instead of a table
    #[argh(switch)]
    pub json: bool,
}

/// A secret value. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What the process was asked to do, validated.
#[derive(Debug)]
pub enum Config {
    Version,
    Daemon(Box<DaemonConfig>),
    Check(CheckConfig),
    Status(StatusConfig),
}

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub peers_file: Option<PathBuf>,
    /// Where `peers_file` came from, to name it in errors.
    pub peers_file_source: &'static str,
    pub cli_peers: Vec<Peer>,
    pub check_interval: Duration,
    pub check_timeout: Duration,
    pub workers: usize,
    pub db_path: PathBuf,
    pub retention_days: u32,
    pub network_name: Option<String>,
    pub allow_quic: bool,
    pub distributed: Option<DistributedConfig>,
}

#[derive(Debug, Clone)]
pub struct DistributedConfig {
    pub backend_base_url: String,
    pub node_token: Secret,
    pub api_key: Option<Secret>,
    pub region: Option<String>,
    pub peer_fetch_interval: Duration,
    pub status_report_interval: Duration,
    pub report_batch_size: usize,
    pub max_buffered_results: u64,
}

#[derive(Debug)]
pub struct CheckConfig {
    pub peer: Peer,
    pub timeout: Duration,
    pub network_name: Option<String>,
    pub json: bool,
}

#[derive(Debug)]
pub struct StatusConfig {
    pub db_path: PathBuf,
    pub json: bool,
}

/// A configuration error: reported with exit status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

type Result<T> = std::result::Result<T, UsageError>;

/// Checks the backend's base URL and returns it without a trailing slash,
/// ready for "/peers" to be appended. The problem is described without the
/// value when the value could hold a password or token.
fn backend_base_url(raw: &str) -> std::result::Result<String, String> {
    let raw = raw.trim();
    // A user:password part or a query (?token=...) may hold a secret.
    let shown = if raw.contains(['@', '?', '#']) {
        "the URL".to_string()
    } else {
        format!("{raw:?}")
    };
    let url = url::Url::parse(raw)
        .map_err(|e| format!("{shown} is not a valid http:// or https:// URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{shown} is not an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{shown} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // It would be logged and stored with every peer list; the backend
        // authenticates with headers anyway.
        return Err(
            "the URL must not hold a user name or password; give the credentials with --node-token-file and --api-key-file".into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{shown} has a query or fragment; give the base path only (\"/peers\" is appended to it)"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn usage<T>(message: impl Into<String>) -> Result<T> {
    Err(UsageError(message.into()))
}

/// Where settings come from besides flags; a trait so tests can pass a map.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// A flag value or its environment fallback, remembering which one it was so
/// that an error names the right source.
struct Setting {
    value: String,
    source: String,
}

fn setting(flag_value: Option<String>, flag: &str, env: &dyn Env, var: &str) -> Option<Setting> {
    match flag_value {
        Some(value) => Some(Setting {
            value,
            source: format!("--{flag}"),
        }),
        None => env.get(var).map(|value| Setting {
            value,
            source: format!("{var} (from --{flag})"),
        }),
    }
}

fn parse_number<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(
    s: &Option<Setting>,
    default: T,
    min: T,
    max: T,
) -> Result<T> {
    let Some(s) = s else { return Ok(default) };
    match s.value.trim().parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => usage(format!(
            "{}: {:?} is not a whole number from {min} to {max}",
            s.source, s.value
        )),
    }
}

fn parse_bool(env: &dyn Env, var: &str) -> Result<bool> {
    match env
        .get(var)
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("0" | "false" | "no" | "off") => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some(other) => usage(format!("{var}: {other:?} is not true or false")),
    }
}

/// Reads a secret from a file; the error names the flag and the path, never the content.
pub fn read_secret_file(path: &Path, source: &str) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("{source}: cannot read {}: {e}", path.display())))?;
    let value = text.trim_end_matches(['\n', '\r']).to_string();
    if value.is_empty() {
        return usage(format!("{source}: {} is empty", path.display()));
    }
    Ok(Secret(value))
}

/// A secret given directly or through a file, by flag or by environment.
fn secret(
    value: Option<String>,
    file: Option<PathBuf>,
    flag: &str,
    env: &dyn Env,
    var: &str,
) -> Result<Option<Secret>> {
    let file_flag = format!("{flag}-file");
    let file_var = format!("{var}_FILE");
    if value.is_some() && file.is_some() {
        return usage(format!("--{flag} and --{file_flag} are mutually exclusive"));
    }
    if let Some(v) = value {
        return Ok(Some(Secret(v)));
    }
    if let Some(path) = file {
        return read_secret_file(&path, &format!("--{file_flag}")).map(Some);
    }
    if let Some(v) = env.get(var) {
        return Ok(Some(Secret(v)));
    }
    if let Some(path) = env.get(&file_var) {
        return read_secret_file(Path::new(&path), &file_var).map(Some);
    }
    Ok(None)
}

/// The database path when none is given: systemd's state directory if set.
pub fn default_db_path(env: &dyn Env) -> PathBuf {
    match env.get("STATE_DIRECTORY") {
        Some(dirs) => Path::new(dirs.split(':').next().unwrap_or(".")).join("probe.db"),
        None => PathBuf::from(DEFAULT_DB_FILE),
    }
}

fn db_path(flag: Option<PathBuf>, env: &dyn Env) -> PathBuf {
    flag.or_else(|| env.get("DATABASE_PATH").map(PathBuf::from))
        .unwrap_or_else(|| default_db_path(env))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

impl Cli {
    /// Validates everything and decides the mode.
    pub fn into_config(self, env: &dyn Env) -> Result<Config> {
        if self.version {
            return Ok(Config::Version);
        }
        match self.command {
            Some(Command::Check(args)) => check_config(args).map(Config::Check),
            Some(Command::Status(args)) => Ok(Config::Status(StatusConfig {
                db_path: db_path(args.db, env),
                json: args.json,
            })),
            None => daemon_config(self, env).map(|c| Config::Daemon(Box::new(c))),
        }
    }
}

fn check_config(args: CheckArgs) -> Result<CheckConfig> {
    let mut peer = peer::peer_from_uri(&args.uri).map_err(|e| UsageError(format!("{e:#}")))?;
    if peer.protocol == peer::Protocol::Quic && !args.allow_quic {
        return usage(
            "quic checks give false Offline verdicts against current (2.6.x) nodes; pass --allow-quic if the node runs EasyTier 2.0.x",
        );
    }
    let timeout_setting = args.timeout.map(|value| Setting {
        value,
        source: "--timeout".into(),
    });
    let timeout = parse_number(&timeout_setting, DEFAULT_CHECK_TIMEOUT_SECS, 1, 3600)?;
    let secret = secret(
        args.network_secret,
        args.network_secret_file,
        "network-secret",
        &[("", ""); 0],
        "",
    )?;
    if let Some(secret) = secret {
        let Some(name) = args.network_name.clone() else {
            return usage("--network-secret needs --network-name (the peer's network)");
        };
        peer.network_name = name;
        peer.network_secret = Some(secret.expose().to_string());
    }
    Ok(CheckConfig {
        peer,
        timeout: secs(timeout),
        network_name: args.network_name,
        json: args.json,
    })
}

fn daemon_config(cli: Cli, env: &dyn Env) -> Result<DaemonConfig> {
    let interval = setting(
        cli.check_interval,
        "check-interval",
        env,
        "HEALTH_CHECK_INTERVAL",
    );
    let timeout = setting(
        cli.check_timeout,
        "check-timeout",
        env,
        "HEALTH_CHECK_TIMEOUT",
    );
    let workers = setting(cli.workers, "workers", env, "PROBE_WORKERS");
    let retention = setting(cli.retention_days, "retention-days", env, "RETENTION_DAYS");
    let check_interval = parse_number(&interval, DEFAULT_CHECK_INTERVAL_SECS, 1, 86_400)?;
    let check_timeout = parse_number(&timeout, DEFAULT_CHECK_TIMEOUT_SECS, 1, 3600)?;
    let workers = parse_number(&workers, DEFAULT_WORKERS, 1, 1024)?;
    let retention_days = parse_number(&retention, DEFAULT_RETENTION_DAYS, 1, 36_500)?;

    let mut cli_peers = Vec::new();
    for text in &cli.peer {
        let peer = peer::peer_from_uri(text).map_err(|e| UsageError(format!("--peer: {e:#}")))?;
        if cli_peers.iter().any(|p: &Peer| p.id == peer.id) {
            return usage(format!("--peer: {text:?} is given twice"));
        }
        cli_peers.push(peer);
    }
    let peers_file_source = if cli.peers_file.is_some() {
        "--peers-file"
    } else {
        "PEERS_FILE"
    };
    let peers_file = cli
        .peers_file
        .or_else(|| env.get("PEERS_FILE").map(PathBuf::from));
    let network_name = cli
        .network_name
        .or_else(|| env.get("PROBE_NETWORK_NAME"))
        .map(|n| n.trim().to_string());
    if network_name.as_deref() == Some("") {
        return usage("--network-name: the name is empty");
    }
    let allow_quic = cli.allow_quic || parse_bool(env, "ALLOW_QUIC")?;
    let distributed_mode = cli.distributed_mode || parse_bool(env, "DISTRIBUTED_MODE_ENABLED")?;

    let distributed = if distributed_mode {
        if peers_file.is_some() || !cli_peers.is_empty() {
            return usage(
                "--peers-file and --peer are for standalone mode; in distributed mode the backend gives the peers",
            );
        }
        let base = setting(
            cli.backend_base_url,
            "backend-base-url",
            env,
            "BACKEND_BASE_URL",
        );
        let Some(base) = base else {
            return usage(
                "--backend-base-url (or BACKEND_BASE_URL) is required in distributed mode",
            );
        };
        let url = backend_base_url(&base.value)
            .map_err(|problem| UsageError(format!("{}: {problem}", base.source)))?;
        let node_token = secret(
            cli.node_token,
            cli.node_token_file,
            "node-token",
            env,
            "NODE_TOKEN",
        )?;
        let Some(node_token) = node_token else {
            return usage(
                "--node-token or --node-token-file (or NODE_TOKEN / NODE_TOKEN_FILE) is required in distributed mode",
            );
        };
        let api_key = secret(cli.api_key, cli.api_key_file, "api-key", env, "API_KEY")?;
        let region = cli
            .region
            .or_else(|| env.get("REGION"))
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty());
        let fetch = setting(
            cli.peer_fetch_interval,
            "peer-fetch-interval",
            env,
            "PEER_FETCH_INTERVAL",
        );
        let report = setting(
            cli.status_report_interval,
            "status-report-interval",
            env,
            "STATUS_REPORT_INTERVAL",
        );
        let batch = setting(
            cli.report_batch_size,
            "report-batch-size",
            env,
            "REPORT_BATCH_SIZE",
        );
        let max_buf = setting(
            cli.max_buffered_results,
            "max-buffered-results",
            env,
            "MAX_BUFFERED_RESULTS",
        );
        Some(DistributedConfig {
            backend_base_url: url,
            node_token,
            api_key,
            region,
            peer_fetch_interval: secs(parse_number(&fetch, 60, 1, 86_400)?),
            status_report_interval: secs(parse_number(&report, 30, 1, 86_400)?),
            report_batch_size: parse_number(&batch, 500, 1, 100_000)?,
            max_buffered_results: parse_number(&max_buf, 1_000_000, 1, 1_000_000_000)?,
        })
    } else {
        let stray = [
            (cli.backend_base_url.is_some(), "--backend-base-url"),
            (
                cli.node_token.is_some() || cli.node_token_file.is_some(),
                "--node-token",
            ),
            (
                cli.api_key.is_some() || cli.api_key_file.is_some(),
                "--api-key",
            ),
            (cli.region.is_some(), "--region"),
            (cli.peer_fetch_interval.is_some(), "--peer-fetch-interval"),
            (
                cli.status_report_interval.is_some(),
                "--status-report-interval",
            ),
            (cli.report_batch_size.is_some(), "--report-batch-size"),
            (cli.max_buffered_results.is_some(), "--max-buffered-results"),
        ];
        if let Some((_, flag)) = stray.iter().find(|(given, _)| *given) {
            return usage(format!("{flag} needs --distributed-mode"));
        }
        if peers_file.is_none() && cli_peers.is_empty() {
            return usage(
                "nothing to watch: give --peers-file FILE or --peer URI (standalone mode), or --distributed-mode",
            );
        }
        None
    };

    Ok(DaemonConfig {
        peers_file,
        peers_file_source,
        cli_peers,
        check_interval: secs(check_interval),
        check_timeout: secs(check_timeout),
        workers,
        db_path: db_path(cli.db, env),
        retention_days,
        network_name,
        allow_quic,
        distributed,
    })
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
        Err(()) => (2, early.output),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["easytier-probe".to_string()];
        v.extend(args.iter().map(|s| s.to_string()));
        parse_args(&v).expect("flags parse")
    }

    fn daemon(args: &[&str], env: &dyn Env) -> Result<DaemonConfig> {
        match cli(args).into_config(env)? {
            Config::Daemon(d) => Ok(*d),
            other => panic!("not a daemon config: {other:?}"),
        }
    }

    const NO_ENV: [(&str, &str); 0] = [];

    #[test]
    fn flags_win_over_environment() {
        let env = [("HEALTH_CHECK_INTERVAL", "30"), ("PROBE_WORKERS", "4")];
        let c = daemon(&["--peer", "tcp://h:1", "--check-interval", "15"], &env).unwrap();
        assert_eq!(c.check_interval, secs(15));
        assert_eq!(c.workers, 4);
        assert_eq!(c.check_timeout, secs(DEFAULT_CHECK_TIMEOUT_SECS));
    }

    #[test]
    fn bad_values_name_their_source() {
        let e = daemon(&["--peer", "tcp://h:1", "--workers", "0"], &NO_ENV).unwrap_err();
        assert!(e.0.contains("--workers"), "{e}");
        let env = [("HEALTH_CHECK_TIMEOUT", "soon")];
        let e = daemon(&["--peer", "tcp://h:1"], &env).unwrap_err();
        assert!(e.0.contains("HEALTH_CHECK_TIMEOUT"), "{e}");
        let e = daemon(&[], &NO_ENV).unwrap_err();
        assert!(e.0.contains("--peers-file"), "{e}");
    }

    #[test]
    fn distributed_mode_requires_backend_and_token() {
        let env = [("DISTRIBUTED_MODE_ENABLED", "true")];
        let e = daemon(&[], &env).unwrap_err();
        assert!(e.0.contains("--backend-base-url"), "{e}");
        let env = [
            ("DISTRIBUTED_MODE_ENABLED", "true"),
            ("BACKEND_BASE_URL", "ftp://x"),
        ];
        let e = daemon(&[], &env).unwrap_err();
        assert!(e.0.contains("BACKEND_BASE_URL"), "{e}");
        let env = [
            ("DISTRIBUTED_MODE_ENABLED", "true"),
            ("BACKEND_BASE_URL", "http://x/api/"),
        ];
        let e = daemon(&[], &env).unwrap_err();
        assert!(e.0.contains("--node-token"), "{e}");
        let env = [
            ("DISTRIBUTED_MODE_ENABLED", "true"),
            ("BACKEND_BASE_URL", "http://x/api/"),
            ("NODE_TOKEN", "tok"),
            ("REGION", "eu"),
        ];
        let c = daemon(&[], &env).unwrap();
        let d = c.distributed.unwrap();
        assert_eq!(d.backend_base_url, "http://x/api");
        assert_eq!(d.node_token.expose(), "tok");
        assert_eq!(d.region.as_deref(), Some("eu"));
        assert!(!format!("{d:?}").contains("tok\""));
    }

    #[test]
    fn a_bad_backend_url_is_refused_by_name_without_its_password() {
        for (bad, problem) in [
            ("ftp://x", "not an http"),
            ("http://", "not a valid"),
            ("http://x:99999/api", "not a valid"),
            ("http://x/api?api_key=hunter2", "query"),
            ("http://x:99999/api?token=hunter2", "not a valid"),
            ("http://x/api#hunter2", "query"),
            ("https://probe:hunter2@x/api", "user name or password"),
            ("x.example/api", "not a valid"),
        ] {
            let env = [
                ("DISTRIBUTED_MODE_ENABLED", "true"),
                ("NODE_TOKEN", "tok"),
                ("BACKEND_BASE_URL", bad),
            ];
            let e = daemon(&[], &env).unwrap_err();
            assert!(e.0.contains("BACKEND_BASE_URL"), "{bad}: {e}");
            assert!(e.0.contains(problem), "{bad}: {e}");
            assert!(!e.0.contains("hunter2"), "{e}");
        }
        let args = [
            "--distributed-mode",
            "--node-token",
            "t",
            "--backend-base-url",
        ];
        let e = daemon(&[&args[..], &["http://x?y"]].concat(), &NO_ENV).unwrap_err();
        assert!(e.0.contains("--backend-base-url"), "{e}");
        let ok = [
            ("DISTRIBUTED_MODE_ENABLED", "true"),
            ("NODE_TOKEN", "tok"),
            ("BACKEND_BASE_URL", " HTTPS://Backend.Example:8443/api/v1/ "),
        ];
        let d = daemon(&[], &ok).unwrap().distributed.unwrap();
        assert_eq!(d.backend_base_url, "https://backend.example:8443/api/v1");
    }

    #[test]
    fn unreadable_token_file_is_a_usage_error() {
        let e = daemon(
            &[
                "--distributed-mode",
                "--backend-base-url",
                "http://x",
                "--node-token-file",
                "/nonexistent/token",
            ],
            &NO_ENV,
        )
        .unwrap_err();
        assert!(e.0.contains("--node-token-file"), "{e}");
    }

    #[test]
    fn state_directory_sets_default_db() {
        let env = [("STATE_DIRECTORY", "/var/lib/easytier-probe")];
        let c = daemon(&["--peer", "tcp://h:1"], &env).unwrap();
        assert_eq!(c.db_path, PathBuf::from("/var/lib/easytier-probe/probe.db"));
    }
}
