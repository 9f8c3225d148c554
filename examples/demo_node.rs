//! A local EasyTier 2.0.3 node for `scripts/demo.sh`: something real for the
//! probe's first check on a machine with no node of its own.
//!
//! `demo_node [PORT]` listens on tcp and udp 127.0.0.1:PORT (default 11010)
//! as host `demo-node` of network `demo`, prints one line once it accepts
//! connections, and runs until it is killed. Like every EasyTier node it
//! binds to every interface and contacts public STUN servers: run it only
//! inside a private network namespace (`scripts/demo.sh` does).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use easytier::common::config::{ConfigLoader, NetworkIdentity, TomlConfigLoader};
use easytier::launcher::NetworkInstance;

fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(port) => port.parse().context("usage: demo_node [PORT]")?,
        None => 11010,
    };
    let config = TomlConfigLoader::default();
    config.set_inst_name("demo-node".to_string());
    config.set_hostname(Some("demo-node".to_string()));
    // The probe checks it as a public relay (no secret), as it would check
    // somebody else's relay; the network's own secret stays unused.
    config.set_network_identity(NetworkIdentity::new(
        "demo".to_string(),
        "demo-secret".to_string(),
    ));
    config.set_listeners(vec![
        format!("tcp://127.0.0.1:{port}").parse()?,
        format!("udp://127.0.0.1:{port}").parse()?,
    ]);
    // No TUN device, no address to ask for.
    config.set_dhcp(false);
    let mut instance = NetworkInstance::new(config);
    instance
        .start()
        .map_err(|e| anyhow::anyhow!("cannot start the EasyTier node: {e}"))?;

    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("the EasyTier node does not accept connections on 127.0.0.1:{port} after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "demo node listening on tcp://127.0.0.1:{port} and udp://127.0.0.1:{port} (EasyTier {})",
        easytier::VERSION
    );
    loop {
        std::thread::park();
    }
}
