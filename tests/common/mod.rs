//! Shared test support: real EasyTier target nodes on loopback, and the private network namespace guard.
#![allow(dead_code)]

use std::net::{TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use easytier::common::config::{ConfigLoader, NetworkIdentity, TomlConfigLoader};
use easytier::launcher::NetworkInstance;

/// Fails the test unless it runs in a private network namespace with only
/// loopback: EasyTier binds to every interface and contacts public STUN
/// servers, so outside such a namespace a test would send traffic off the
/// machine. `make test` (and `.ci/run`) run the suite under `unshare --net`.
pub fn require_private_netns() {
    // /proc/net/dev lists the interfaces of this process's own namespace
    // (unlike /sys/class/net, which shows the namespace sysfs was mounted in).
    let dev = std::fs::read_to_string("/proc/net/dev").expect("read /proc/net/dev");
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert!(
        ifaces.iter().all(|i| *i == "lo"),
        "this test starts EasyTier nodes and must run in a private network namespace \
         (interfaces here: {ifaces:?}); run it with `make test`"
    );
    assert!(
        std::net::TcpListener::bind("127.0.0.1:0").is_ok(),
        "loopback is down: run `ip link set lo up` in the namespace"
    );
}

/// A peer that never answers: a bound UDP socket nobody reads, so an
/// EasyTier handshake gets no reply and a check runs to its timeout. Keep
/// the socket alive as long as the peer is needed.
pub struct SilentPeer {
    _socket: UdpSocket,
    pub uri: String,
}

impl SilentPeer {
    pub fn start() -> SilentPeer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let uri = format!("udp://127.0.0.1:{}", socket.local_addr().unwrap().port());
        SilentPeer {
            _socket: socket,
            uri,
        }
    }
}

/// A free port on 127.0.0.1 for both TCP and UDP (the OS picks it).
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A real EasyTier node listening on loopback: the thing the probe checks.
pub struct TargetNode {
    pub instance: NetworkInstance,
    pub tcp_port: u16,
    pub udp_port: u16,
    pub network_name: String,
    pub network_secret: String,
    pub hostname: String,
}

impl TargetNode {
    /// Starts a node of network `network_name` with `secret`, listening on tcp
    /// and udp. EasyTier nodes serve foreign networks by default, so the same
    /// node answers a guest as a public relay and a member as a member.
    pub fn start(network_name: &str, secret: &str, hostname: &str) -> TargetNode {
        let tcp_port = free_port();
        let udp_port = free_port();
        let config = TomlConfigLoader::default();
        config.set_inst_name(format!("target-{hostname}"));
        config.set_hostname(Some(hostname.to_string()));
        config.set_network_identity(NetworkIdentity::new(
            network_name.to_string(),
            secret.to_string(),
        ));
        config.set_listeners(vec![
            format!("tcp://127.0.0.1:{tcp_port}").parse().unwrap(),
            format!("udp://127.0.0.1:{udp_port}").parse().unwrap(),
        ]);
        // Like the probe: no TUN device (no address, no DHCP) and, unlike
        // no_tun = true, no user-space proxies with their raw ICMP socket.
        config.set_dhcp(false);
        let mut instance = NetworkInstance::new(config);
        instance.start().expect("start target node");
        let node = TargetNode {
            instance,
            tcp_port,
            udp_port,
            network_name: network_name.to_string(),
            network_secret: secret.to_string(),
            hostname: hostname.to_string(),
        };
        node.wait_listening();
        node
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.tcp_port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "target node did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn tcp_uri(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.tcp_port)
    }

    pub fn udp_uri(&self) -> String {
        format!("udp://127.0.0.1:{}", self.udp_port)
    }
}

/// A 2.0.3 target node listening on every transport the probe dials: tcp,
/// udp, ws, wss (2.0.3 makes its own self-signed certificate) and wg (keys
/// derived from the node's network name and secret).
pub struct AllTransportsNode {
    pub instance: NetworkInstance,
    /// (protocol, port) for tcp, udp, ws, wss and wg.
    pub ports: Vec<(&'static str, u16)>,
    pub network_name: String,
    pub network_secret: String,
    pub hostname: String,
}

impl AllTransportsNode {
    /// Like `TargetNode::start`, with ws, wss and wg listeners too.
    pub fn start(network_name: &str, secret: &str, hostname: &str) -> AllTransportsNode {
        let ports: Vec<(&'static str, u16)> = ["tcp", "udp", "ws", "wss", "wg"]
            .into_iter()
            .map(|p| (p, free_port()))
            .collect();
        let config = TomlConfigLoader::default();
        config.set_inst_name(format!("target-{hostname}"));
        config.set_hostname(Some(hostname.to_string()));
        config.set_network_identity(NetworkIdentity::new(
            network_name.to_string(),
            secret.to_string(),
        ));
        config.set_listeners(
            ports
                .iter()
                .map(|(p, port)| {
                    let path = if p.starts_with("ws") { "/" } else { "" };
                    format!("{p}://127.0.0.1:{port}{path}").parse().unwrap()
                })
                .collect(),
        );
        config.set_dhcp(false);
        let mut instance = NetworkInstance::new(config);
        instance.start().expect("start target node");
        let node = AllTransportsNode {
            instance,
            ports,
            network_name: network_name.to_string(),
            network_secret: secret.to_string(),
            hostname: hostname.to_string(),
        };
        // The stream listeners accept a connection once up; the datagram
        // ones start in the same pass.
        for proto in ["tcp", "ws", "wss"] {
            let port = node.port(proto);
            wait_for(
                &format!("the {proto} listener of {hostname}"),
                Duration::from_secs(10),
                || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
            );
        }
        node
    }

    pub fn port(&self, protocol: &str) -> u16 {
        self.ports
            .iter()
            .find(|(p, _)| *p == protocol)
            .map(|(_, port)| *port)
            .unwrap_or_else(|| panic!("no {protocol} listener"))
    }

    /// `proto://127.0.0.1:port` for the probe.
    pub fn uri(&self, protocol: &str) -> String {
        format!("{protocol}://127.0.0.1:{}", self.port(protocol))
    }
}

pub mod backend;
pub mod dns;
pub mod et26;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Settings the probe reads from the environment: tests decide every
/// setting themselves, so none leaks in from the shell that runs them.
pub const PROBE_ENV_VARS: &[&str] = &[
    "PEERS_FILE",
    "HEALTH_CHECK_INTERVAL",
    "HEALTH_CHECK_TIMEOUT",
    "PROBE_WORKERS",
    "DATABASE_PATH",
    "RETENTION_DAYS",
    "RAW_RETENTION_HOURS",
    "PROBE_NETWORK_NAME",
    "ALLOW_QUIC",
    "DISTRIBUTED_MODE_ENABLED",
    "BACKEND_BASE_URL",
    "NODE_TOKEN",
    "NODE_TOKEN_FILE",
    "API_KEY",
    "API_KEY_FILE",
    "REGION",
    "PEER_FETCH_INTERVAL",
    "STATUS_REPORT_INTERVAL",
    "REPORT_BATCH_SIZE",
    "MAX_BUFFERED_RESULTS",
    "STATE_DIRECTORY",
    "NOTIFY_SOCKET",
    "EASYTIER_PROBE_STOP_BUDGET_SECS",
    "EASYTIER_PROBE_RECYCLE_AFTER_CHECKS",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "RUST_LOG",
    "LISTEN_ADDRESS",
    "BACKEND_CA_FILE",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

pub fn probe_path() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_easytier-probe"))
}

pub fn probe_bin() -> Command {
    let mut cmd = Command::new(probe_path());
    for var in PROBE_ENV_VARS {
        cmd.env_remove(var);
    }
    // Many daemons run at once: each HTTP listener on a port of its own.
    cmd.env("LISTEN_ADDRESS", "127.0.0.1:0");
    cmd
}

/// A fresh directory for one test's files, removed with everything in it
/// when the value is dropped, also when the test fails (panics unwind).
/// `ETP_KEEP_TEST_DIRS=1` keeps the directories, to read a failed test's
/// files. It derefs to `Path`: `dir.join(..)`, `&dir` work as with a path.
pub fn temp_dir(name: &str) -> TempDir {
    let path = std::env::temp_dir().join(format!("etp-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).unwrap();
    TempDir { path }
}

/// See `temp_dir`.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("ETP_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_for<T>(what: &str, timeout: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon under test, with stderr captured to a file.
pub struct Daemon {
    pub child: Child,
    pub log_path: PathBuf,
    pub db: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path, args: &[String], envs: &[(&str, String)]) -> Daemon {
        let db = dir.join("probe.db");
        let log_path = dir.join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = probe_bin();
        cmd.arg("--db")
            .arg(&db)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log);
        cmd.env("RUST_LOG", "info");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the daemon");
        Daemon {
            child,
            log_path,
            db,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the daemon to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = &mut self.child;
        let status = wait_for("the daemon to exit", timeout, || child.try_wait().unwrap());
        status.code()
    }

    pub fn status_json(&self) -> Vec<serde_json::Value> {
        status_json(&self.db)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `easytier-probe status --json` for a database.
pub fn status_json(db: &Path) -> Vec<serde_json::Value> {
    let out = probe_bin()
        .args(["status", "--json", "--db"])
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

/// Rows of the results table, read straight from the SQLite file.
pub fn count_results(db: &Path) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row("SELECT count(*) FROM results", [], |r| r.get(0))
        .unwrap()
}

/// A peer entry in the backend's shape.
pub fn peer_json(
    id: i64,
    name: &str,
    uri_host: &str,
    port: u16,
    protocol: &str,
    network: &str,
    secret: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({
        "id": id, "name": name, "host": uri_host, "port": port, "protocol": protocol,
        "network_name": network, "network_secret": secret, "status": "Online", "response_time": 5
    })
}

/// Writes `peers` to `dir/peers.json` as a peers file and returns its path.
pub fn write_peers_file(dir: &Path, peers: &[serde_json::Value]) -> PathBuf {
    let path = dir.join("peers.json");
    std::fs::write(&path, serde_json::Value::from(peers.to_vec()).to_string()).unwrap();
    path
}
