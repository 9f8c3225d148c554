//! systemd's notify protocol: READY=1, STOPPING=1 and watchdog pings over a Unix datagram socket.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Talks to the service manager when `NOTIFY_SOCKET` is set; does nothing otherwise.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    pub fn new_from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").ok();
        let watchdog_usec = std::env::var("WATCHDOG_USEC").ok();
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
        let watchdog = watchdog_usec
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|usec| *usec > 0)
            .filter(|_| {
                // The watchdog is ours only if no other pid was named.
                watchdog_pid
                    .as_deref()
                    .is_none_or(|pid| pid == std::process::id().to_string())
            })
            .map(Duration::from_micros);
        Notifier::new(socket.as_deref(), watchdog)
    }

    pub fn new(socket: Option<&str>, watchdog: Option<Duration>) -> Notifier {
        let target = socket.and_then(|path| {
            let addr = match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(name.as_bytes())
                }
                None => SocketAddr::from_pathname(path),
            };
            match (UnixDatagram::unbound(), addr) {
                (Ok(sock), Ok(addr)) => Some((sock, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    log::warn!("NOTIFY_SOCKET {path:?} is unusable: {e}");
                    None
                }
            }
        });
        Notifier { target, watchdog }
    }

    fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                log::debug!("sd_notify {state:?} failed: {e}");
            }
        }
    }

    /// The database is open and every thread runs.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// The one-line state `systemctl status` shows.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// Asks systemd for `by` more time to start (a long migration), within
    /// the unit's start timeout.
    pub fn extend_start(&self, by: Duration, why: &str) {
        self.send(&format!(
            "EXTEND_TIMEOUT_USEC={}\nSTATUS={why}",
            by.as_micros()
        ));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping: finishing running checks");
    }

    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1");
        }
    }

    /// How often to ping: half the watchdog timeout, as systemd recommends.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes the test's directory when dropped, also when the test fails.
    struct RemoveOnDrop(std::path::PathBuf);

    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn sends_states_to_the_socket() {
        let dir =
            RemoveOnDrop(std::env::temp_dir().join(format!("etp-notify-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str(), Some(Duration::from_secs(10)));
        n.ready("watching 3 peers");
        n.watchdog();
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=watching 3 peers");
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        n.status("3 peers, 1 Offline, outbox 0");
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=3 peers, 1 Offline, outbox 0");
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        // Without a socket every call is a no-op.
        Notifier::new(None, None).ready("x");
    }
}
