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
        let mut flags = config.get_flags();
        flags.no_tun = true;
        config.set_flags(flags);
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
            assert!(Instant::now() < deadline, "target node did not start listening");
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
