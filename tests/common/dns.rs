//! A fake DNS server on 127.0.0.1:53 (inside the private network namespace),
//! and a way to run the probe with a resolv.conf that points at it.

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What the server answers to a query.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// The name does not exist (RCODE 3): getaddrinfo says EAI_NONAME.
    NxDomain,
    /// The server failed (RCODE 2): getaddrinfo says EAI_AGAIN.
    ServFail,
    /// An A record with this address (AAAA queries get no records).
    A([u8; 4]),
}

pub struct FakeDns {
    /// Queries answered so far (A and AAAA each count).
    pub queries: Arc<AtomicUsize>,
}

impl FakeDns {
    /// Serves until the process ends. `policy` gets the number of queries
    /// answered before this one.
    pub fn start(policy: impl Fn(usize) -> Answer + Send + 'static) -> FakeDns {
        let socket = UdpSocket::bind("127.0.0.1:53")
            .expect("bind 127.0.0.1:53 (needs root in the namespace)");
        let queries = Arc::new(AtomicUsize::new(0));
        let count = queries.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((len, from)) = socket.recv_from(&mut buf) {
                let n = count.load(Ordering::SeqCst);
                if let Some(reply) = reply(&buf[..len], policy(n)) {
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        FakeDns { queries }
    }
}

/// Builds the answer to one query; None for something that is not a query.
fn reply(query: &[u8], answer: Answer) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the zero byte, then type and class.
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + usize::from(query[end]);
    }
    let qtype = u16::from_be_bytes([*query.get(end + 1)?, *query.get(end + 2)?]);
    let question = &query[12..end + 5];
    let (rcode, record) = match answer {
        Answer::NxDomain => (3, None),
        Answer::ServFail => (2, None),
        Answer::A(ip) => (0, (qtype == 1).then_some(ip)),
    };
    let rd = query[2] & 0x01;
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&query[..2]); // id
    out.push(0x80 | rd); // QR, opcode 0, RD as asked
    out.push(0x80 | rcode); // RA, rcode
    out.extend_from_slice(&1u16.to_be_bytes()); // one question
    out.extend_from_slice(&u16::from(record.is_some()).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
    out.extend_from_slice(question);
    if let Some(ip) = record {
        out.extend_from_slice(&[0xc0, 0x0c]); // the name of the question
        out.extend_from_slice(&[0, 1, 0, 1]); // A, IN
        out.extend_from_slice(&0u32.to_be_bytes()); // TTL 0: nothing cached
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip);
    }
    Some(out)
}

/// A command that runs `program` in a private mount namespace where
/// /etc/resolv.conf points at 127.0.0.1, so its lookups reach the fake server.
/// The test's own namespace and the machine's file are untouched.
pub fn with_fake_resolver(dir: &Path, program: &Path) -> Command {
    let conf = dir.join("resolv.conf");
    std::fs::write(
        &conf,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"")
        .arg(&conf)
        .arg(program);
    for var in super::PROBE_ENV_VARS {
        cmd.env_remove(var);
    }
    cmd
}
