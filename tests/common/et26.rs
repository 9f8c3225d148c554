//! A real EasyTier 2.6 node for tests: tests/support/et26_node.py run by the venv python of scripts/et26-venv.sh.
//!
//! Like every node, start it only inside the private network namespace
//! (`require_private_netns()` first); the script refuses to start otherwise.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a node may take to print READY (Python start-up, import of the
/// extension, listeners up). The script itself gives up after 10 s.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to stop after its stdin is closed before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The python that has easytier-pyo3, from `sh scripts/et26-venv.sh`, run
/// once per test binary.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("sh")
            .arg("scripts/et26-venv.sh")
            .current_dir(manifest_dir())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `sh scripts/et26-venv.sh`: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = stdout.lines().last().map(str::trim).unwrap_or("");
        if !out.status.success() || path.is_empty() || !Path::new(path).exists() {
            panic!(
                "scripts/et26-venv.sh did not give a python with easytier-pyo3 ({}): {}\n\
                 The venv needs PyPI the first time: run `sh scripts/et26-venv.sh` once \
                 outside the test namespace, then run the tests again",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        PathBuf::from(path)
    })
}

/// One running EasyTier 2.6 node (a child process). Dropping it closes the
/// node's stdin, which stops it; a node that does not exit in time is killed.
pub struct Node26 {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The parsed READY object (version, listeners, peer_id, ...).
    pub ready: Value,
    /// The running listeners with their real ports, e.g. `tcp://127.0.0.1:40123`.
    pub listeners: Vec<String>,
    /// The node's EasyTier version, e.g. `2.6.4-81487c36`.
    pub version: String,
    pub network_name: String,
    pub hostname: String,
    stderr_path: PathBuf,
}

impl Node26 {
    /// Starts a node from a config in the shape et26_node.py reads
    /// (`network_name`, `network_secret`, `hostname`, `listeners`,
    /// `private_mode`, `relay_network_whitelist`, ...) and waits for READY.
    /// Panics, with the node's stderr, if it does not get there.
    pub fn start(config: Value) -> Node26 {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let stderr_path = std::env::temp_dir().join(format!(
            "etp-et26-{}-{}.log",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let stderr = std::fs::File::create(&stderr_path).expect("create the node's stderr file");
        let mut child = Command::new(python())
            .arg(manifest_dir().join("tests/support/et26_node.py"))
            .current_dir(manifest_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python().display()));
        // The config goes on stdin as one line; the rest of stdin stays open
        // as the node's lifeline.
        let mut stdin = child.stdin.take().unwrap();
        let line = serde_json::to_string(&config).unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .expect("write the config to the 2.6 node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // The reader thread ends when the node closes stdout (it exits).
        std::thread::Builder::new()
            .name("et26-stdout".into())
            .spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                let first = lines.next().and_then(|l| l.ok());
                let _ = tx.send(first);
                // Drain: the node must never block writing to a full pipe.
                for _ in lines {}
            })
            .unwrap();
        let mut node = Node26 {
            child,
            stdin: Some(stdin),
            ready: Value::Null,
            listeners: Vec::new(),
            version: String::new(),
            network_name: String::new(),
            hostname: String::new(),
            stderr_path,
        };
        let first = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => panic!(
                "the 2.6 node printed nothing in {READY_TIMEOUT:?}; stderr:\n{}",
                node.stderr()
            ),
        };
        let Some(json) = first.as_deref().and_then(|l| l.strip_prefix("READY ")) else {
            // Give the script a moment to exit so its stderr is complete.
            let _ = node.wait_exit(Duration::from_secs(2));
            panic!(
                "the 2.6 node did not start: {}; stderr:\n{}",
                first.as_deref().unwrap_or("(no output)"),
                node.stderr()
            );
        };
        node.ready = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("READY line is not JSON ({e}): {json}"));
        node.listeners = node.ready["listeners"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        node.version = node.ready["version"].as_str().unwrap_or("").to_string();
        node.network_name = node.ready["network_name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        node.hostname = node.ready["hostname"].as_str().unwrap_or("").to_string();
        node
    }

    /// The listener for `protocol` ("tcp", "udp", "ws", "wss", "wg"), if any.
    pub fn listener(&self, protocol: &str) -> Option<&str> {
        let prefix = format!("{protocol}://");
        self.listeners
            .iter()
            .map(String::as_str)
            .find(|u| u.starts_with(&prefix))
    }

    /// The probe's URI for the `protocol` listener, `proto://host:port`
    /// (without the `/` path the ws listeners report). Panics if there is none.
    pub fn uri(&self, protocol: &str) -> String {
        let listener = self.listener(protocol).unwrap_or_else(|| {
            panic!(
                "the 2.6 node has no {protocol} listener: {:?}",
                self.listeners
            )
        });
        listener.trim_end_matches('/').to_string()
    }

    /// The port of the `protocol` listener.
    pub fn port(&self, protocol: &str) -> u16 {
        let uri = self.uri(protocol);
        uri.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {uri}"))
    }

    /// What the node wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return true,
                Ok(None) if Instant::now() >= deadline => return false,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Stops the node: closes its stdin, waits, kills it after a deadline.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        if !self.wait_exit(STOP_TIMEOUT) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Node26 {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}
