//! Settings: argh flags and environment variables validated into a `Config` before any thread starts.
//!
//! Two stages: `cli::Cli` is what argh parsed, `Config` is what the program
//! runs with. Every bad value is reported here, naming the flag and its
//! variable, with exit status 2.

mod cli;
mod env;
pub mod settings;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::peer::{self, Peer};

pub use cli::{parse_args, CheckArgs, Cli, Command, RequeueArgs, StatusArgs};
pub use env::{default_db_path, read_secret_file, Env, ProcessEnv, DEFAULT_DB_FILE};

/// A secret value. Its `Debug` never shows it, and it has no `Display`:
/// only `expose()` gives the value, where it is sent.
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
    Requeue(RequeueConfig),
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
    /// Checks that confirm a failure before Offline is recorded.
    pub confirm_offline: u32,
    /// Longest time between two full checks of a peer; zero: all full.
    pub version_refresh: Duration,
    pub db_path: PathBuf,
    /// Days of hourly rollups kept.
    pub retention_days: u32,
    /// Hours of delivered raw results kept.
    pub raw_retention_hours: u32,
    pub network_name: Option<String>,
    /// The HTTP listener's address (`--listen`); None: off.
    pub listen: Option<SocketAddr>,
    pub allow_quic: bool,
    pub distributed: Option<DistributedConfig>,
    /// Everything after a stop signal fits in this (`EASYTIER_PROBE_STOP_BUDGET_SECS`).
    pub stop_budget: Duration,
    /// Re-execute after this many checks (`EASYTIER_PROBE_RECYCLE_AFTER_CHECKS`).
    pub recycle_after_checks: u64,
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
    /// Proxy (from the environment) and trusted CAs for backend requests.
    pub reach: crate::backend::Reach,
}

#[derive(Debug)]
pub struct CheckConfig {
    pub peer: Peer,
    pub timeout: Duration,
    pub json: bool,
    /// A quick check instead of a full one.
    pub quick: bool,
    pub allow_quic: bool,
}

#[derive(Debug)]
pub struct StatusConfig {
    pub db_path: PathBuf,
    pub json: bool,
    /// Exit status says how things are (`--check`).
    pub check: bool,
}

#[derive(Debug)]
pub struct RequeueConfig {
    pub db_path: PathBuf,
    pub which: crate::store::Requeue,
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

fn usage<T>(message: impl Into<String>) -> Result<T> {
    Err(UsageError(message.into()))
}

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
                db_path: env::status_db_path(args.db, env, Path::new(env::PACKAGED_DB)),
                json: args.json,
                check: args.check,
            })),
            Some(Command::Requeue(args)) => {
                let which = match (args.all, args.seq.is_empty()) {
                    (true, true) => crate::store::Requeue::All,
                    (false, false) => crate::store::Requeue::Seqs(args.seq),
                    (true, false) => return usage("requeue: give --seq or --all, not both"),
                    (false, true) => return usage("requeue: give --seq N (repeatable) or --all"),
                };
                Ok(Config::Requeue(RequeueConfig {
                    db_path: env::db_path(args.db, env),
                    which,
                }))
            }
            None => daemon_config(self, env).map(|c| Config::Daemon(Box::new(c))),
        }
    }
}

fn check_config(args: CheckArgs) -> Result<CheckConfig> {
    let mut peer = peer::peer_from_uri(&args.uri).map_err(|e| UsageError(format!("{e:#}")))?;
    let timeout = match &args.timeout {
        Some(value) => settings::CHECK_TIMEOUT.parse(value, "--timeout")?,
        None => settings::CHECK_TIMEOUT.default,
    };
    let secret_flag = if args.network_secret_file.is_some() {
        "--network-secret-file"
    } else {
        "--network-secret"
    };
    let secret = env::secret(
        args.network_secret,
        args.network_secret_file,
        "network-secret",
        &[("", ""); 0],
        "",
    )?;
    // The peer's own network, as in a peers file: joined as a member with
    // the secret; without one, only a label (the check is a relay check
    // under the probe's guest network name).
    if let Some(name) = args.network_name.map(|n| n.trim().to_string()) {
        if name.is_empty() {
            return usage("--network-name: the name is empty");
        }
        peer.network_name = name;
    }
    if let Some(secret) = secret {
        if peer.network_name.is_empty() {
            return usage(format!(
                "{secret_flag} needs --network-name (the peer's own network)"
            ));
        }
        peer.network_secret = Some(secret.expose().to_string());
    }
    Ok(CheckConfig {
        peer,
        timeout: secs(timeout),
        json: args.json,
        quick: args.quick,
        allow_quic: args.allow_quic,
    })
}

fn daemon_config(mut cli: Cli, env: &dyn Env) -> Result<DaemonConfig> {
    use settings::*;
    let check_interval = CHECK_INTERVAL.read(cli.check_interval.take(), env)?;
    let check_timeout = CHECK_TIMEOUT.read(cli.check_timeout.take(), env)?;
    let workers = WORKERS.read(cli.workers.take(), env)? as usize;
    let confirm_offline = CONFIRM_OFFLINE.read(cli.confirm_offline.take(), env)? as u32;
    let version_refresh = VERSION_REFRESH.read(cli.version_refresh.take(), env)?;
    let retention_days = RETENTION_DAYS.read(cli.retention_days.take(), env)? as u32;
    let raw_retention_hours = RAW_RETENTION_HOURS.read(cli.raw_retention_hours.take(), env)? as u32;
    let stop_budget = STOP_BUDGET_SECS.read(None, env)?;
    let recycle_after_checks = RECYCLE_AFTER_CHECKS.read(None, env)?;

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
        .take()
        .or_else(|| env.get("PEERS_FILE").map(PathBuf::from));
    let network_name =
        env::text(cli.network_name.take(), env, "PROBE_NETWORK_NAME").map(|n| n.trim().to_string());
    if network_name.as_deref() == Some("") {
        return usage("--network-name: the name is empty");
    }
    let listen = listen_address(cli.listen.take(), env)?;
    let allow_quic = env::switch(cli.allow_quic, env, "ALLOW_QUIC")?;
    let distributed = if env::switch(cli.distributed_mode, env, "DISTRIBUTED_MODE_ENABLED")? {
        if peers_file.is_some() || !cli_peers.is_empty() {
            return usage(
                "--peers-file and --peer are for standalone mode; in distributed mode the backend gives the peers",
            );
        }
        Some(distributed_config(&mut cli, env)?)
    } else {
        refuse_distributed_flags(&cli)?;
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
        confirm_offline,
        version_refresh: secs(version_refresh),
        db_path: env::db_path(cli.db, env),
        retention_days,
        raw_retention_hours,
        network_name,
        listen,
        allow_quic,
        distributed,
        stop_budget: secs(stop_budget),
        recycle_after_checks,
    })
}

/// Where the HTTP listener listens unless told otherwise: loopback only, on
/// a port clear of EasyTier's (11010-11013, 15888) and Prometheus' (9090-9100).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:11090";

/// `--listen`, else `LISTEN_ADDRESS`, else the default: an IP address and a
/// port (0: the system chooses), or `off`.
fn listen_address(flag: Option<String>, env: &dyn Env) -> Result<Option<SocketAddr>> {
    let (text, source) = match (flag, env.get("LISTEN_ADDRESS")) {
        (Some(flag), _) => (flag, "--listen"),
        (None, Some(var)) => (var, "LISTEN_ADDRESS (from --listen)"),
        (None, None) => (DEFAULT_LISTEN.to_string(), "--listen"),
    };
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        UsageError(format!(
            "{source}: {text:?} is not ADDR:PORT (an IP address and a port, e.g. {DEFAULT_LISTEN} or [::1]:11090) or off"
        ))
    })
}

fn distributed_config(cli: &mut Cli, env: &dyn Env) -> Result<DistributedConfig> {
    use settings::*;
    let (base, source) = match (cli.backend_base_url.take(), env.get("BACKEND_BASE_URL")) {
        (Some(flag), _) => (flag, "--backend-base-url".to_string()),
        (None, Some(var)) => (
            var,
            "BACKEND_BASE_URL (from --backend-base-url)".to_string(),
        ),
        (None, None) => {
            return usage(
                "--backend-base-url (or BACKEND_BASE_URL) is required in distributed mode",
            )
        }
    };
    let backend_base_url =
        backend_base_url(&base).map_err(|problem| UsageError(format!("{source}: {problem}")))?;
    let ca_file = match (cli.backend_ca_file.take(), env.get("BACKEND_CA_FILE")) {
        (Some(flag), _) => Some((flag, "--backend-ca-file".to_string())),
        (None, Some(var)) => Some((
            var.into(),
            "BACKEND_CA_FILE (from --backend-ca-file)".into(),
        )),
        (None, None) => None,
    };
    let reach =
        crate::backend::Reach::resolve(&backend_base_url, ca_file, env).map_err(UsageError)?;
    let node_token = env::secret(
        cli.node_token.take(),
        cli.node_token_file.take(),
        "node-token",
        env,
        "NODE_TOKEN",
    )?;
    let Some(node_token) = node_token else {
        return usage(
            "--node-token or --node-token-file (or NODE_TOKEN / NODE_TOKEN_FILE) is required in distributed mode",
        );
    };
    let api_key = env::secret(
        cli.api_key.take(),
        cli.api_key_file.take(),
        "api-key",
        env,
        "API_KEY",
    )?;
    let region = env::text(cli.region.take(), env, "REGION")
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    Ok(DistributedConfig {
        backend_base_url,
        node_token,
        api_key,
        region,
        peer_fetch_interval: secs(PEER_FETCH_INTERVAL.read(cli.peer_fetch_interval.take(), env)?),
        status_report_interval: secs(
            STATUS_REPORT_INTERVAL.read(cli.status_report_interval.take(), env)?,
        ),
        report_batch_size: REPORT_BATCH_SIZE.read(cli.report_batch_size.take(), env)? as usize,
        max_buffered_results: MAX_BUFFERED_RESULTS.read(cli.max_buffered_results.take(), env)?,
        reach,
    })
}

/// In standalone mode a distributed-mode flag is a mistake worth naming.
fn refuse_distributed_flags(cli: &Cli) -> Result<()> {
    let stray = [
        (cli.backend_base_url.is_some(), "--backend-base-url"),
        (cli.backend_ca_file.is_some(), "--backend-ca-file"),
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
    match stray.iter().find(|(given, _)| *given) {
        Some((_, flag)) => usage(format!("{flag} needs --distributed-mode")),
        None => Ok(()),
    }
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
        assert_eq!(c.check_timeout, secs(settings::CHECK_TIMEOUT.default));
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
    fn the_stop_budget_and_recycle_variables_are_validated() {
        let env = [("EASYTIER_PROBE_RECYCLE_AFTER_CHECKS", "0")];
        let e = daemon(&["--peer", "tcp://h:1"], &env).unwrap_err();
        assert!(e.0.contains("EASYTIER_PROBE_RECYCLE_AFTER_CHECKS"), "{e}");
        let env = [("EASYTIER_PROBE_STOP_BUDGET_SECS", "soon")];
        let e = daemon(&["--peer", "tcp://h:1"], &env).unwrap_err();
        assert!(e.0.contains("EASYTIER_PROBE_STOP_BUDGET_SECS"), "{e}");
        let env = [
            ("EASYTIER_PROBE_STOP_BUDGET_SECS", "8"),
            ("EASYTIER_PROBE_RECYCLE_AFTER_CHECKS", "4"),
        ];
        let c = daemon(&["--peer", "tcp://h:1"], &env).unwrap();
        assert_eq!((c.stop_budget, c.recycle_after_checks), (secs(8), 4));
    }

    #[test]
    fn listen_takes_an_address_or_off() {
        let c = daemon(&["--peer", "tcp://h:1"], &NO_ENV).unwrap();
        assert_eq!(c.listen, Some(DEFAULT_LISTEN.parse().unwrap()));
        let env = [("LISTEN_ADDRESS", "[::1]:0")];
        let c = daemon(&["--peer", "tcp://h:1"], &env).unwrap();
        assert_eq!(c.listen, Some("[::1]:0".parse().unwrap()));
        let c = daemon(&["--peer", "tcp://h:1", "--listen", "OFF"], &env).unwrap();
        assert_eq!(c.listen, None);
        let e = daemon(
            &["--peer", "tcp://h:1", "--listen", "localhost:80"],
            &NO_ENV,
        )
        .unwrap_err();
        assert!(e.0.starts_with("--listen: \"localhost:80\""), "{e}");
        let env = [("LISTEN_ADDRESS", "11090")];
        let e = daemon(&["--peer", "tcp://h:1"], &env).unwrap_err();
        assert!(e.0.starts_with("LISTEN_ADDRESS"), "{e}");
    }

    #[test]
    fn a_token_file_of_white_space_is_a_usage_error() {
        let dir = std::env::temp_dir().join(format!("etp-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("blank-token");
        std::fs::write(&file, "  \t \n").unwrap();
        let e = daemon(
            &[
                "--distributed-mode",
                "--backend-base-url",
                "http://x",
                "--node-token-file",
                file.to_str().unwrap(),
            ],
            &NO_ENV,
        )
        .unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            e.0.contains("--node-token-file") && e.0.contains("white space"),
            "{e}"
        );
    }

    #[test]
    fn state_directory_sets_default_db() {
        let env = [("STATE_DIRECTORY", "/var/lib/easytier-probe")];
        let c = daemon(&["--peer", "tcp://h:1"], &env).unwrap();
        assert_eq!(c.db_path, PathBuf::from("/var/lib/easytier-probe/probe.db"));
    }
}
