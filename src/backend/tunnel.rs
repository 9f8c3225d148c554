//! An https backend through an http proxy: a CONNECT tunnel made here, not by ureq.
//!
//! ureq 2 tunnels https through its `Proxy` with CONNECT, but then sends the
//! request inside the tunnel in absolute form (`GET https://host/api/peers`),
//! which servers must accept by RFC 9112 yet some do not (h11, for one,
//! routes on the whole target and answers 404). So for https ureq is given
//! no proxy: a resolver sends its TCP connection to the proxy, and this TLS
//! connector asks the proxy for the tunnel before the TLS handshake; the
//! request inside is then an ordinary origin-form request.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use crate::config::Secret;

/// Longest answer head accepted from the proxy.
const MAX_HEAD: usize = 16 * 1024;

pub(super) struct Tunnel {
    /// `host:port` of the backend, asked of the proxy.
    pub(super) target: String,
    pub(super) authorization: Option<Secret>,
    pub(super) tls: Arc<rustls::ClientConfig>,
}

/// Every connection of the agent goes to the proxy (`host:port`): the agent
/// talks to the backend only (redirects are off).
pub(super) fn resolver(proxy: String) -> impl ureq::Resolver + 'static {
    move |_backend: &str| -> io::Result<Vec<SocketAddr>> {
        proxy.to_socket_addrs().map(Iterator::collect)
    }
}

impl ureq::TlsConnector for Tunnel {
    fn connect(
        &self,
        dns_name: &str,
        mut io: Box<dyn ureq::ReadWrite>,
    ) -> Result<Box<dyn ureq::ReadWrite>, ureq::Error> {
        let mut head = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {}\r\n",
            super::user_agent(),
            target = self.target
        );
        if let Some(auth) = &self.authorization {
            head.push_str(&format!("Proxy-Authorization: {}\r\n", auth.expose()));
        }
        head.push_str("\r\n");
        io.write_all(head.as_bytes())?;
        io.flush()?;
        let status = read_status(&mut io)?;
        match status {
            200..=299 => ureq::TlsConnector::connect(&self.tls, dns_name, io),
            407 => Err(refused(
                "the proxy asks for credentials (HTTP 407): give them in the proxy URL as user:password@".into(),
            )),
            _ => Err(refused(format!(
                "the proxy refused the tunnel to {} (HTTP {status})",
                self.target
            ))),
        }
    }
}

fn refused(message: String) -> ureq::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, message).into()
}

/// Reads the proxy's answer head, byte by byte so that nothing of the TLS
/// stream after it is taken, and returns its status.
fn read_status(io: &mut impl Read) -> io::Result<u16> {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if io.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the proxy closed the connection instead of answering CONNECT",
            ));
        }
        head.push(byte[0]);
        if head.len() > MAX_HEAD {
            return Err(bad_answer());
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    match (words.next(), words.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/") => Ok(status),
        _ => Err(bad_answer()),
    }
}

fn bad_answer() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the proxy's answer to CONNECT is not HTTP",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_of_the_answer_and_nothing_after_it() {
        let mut answer: &[u8] = b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\nTLS";
        assert_eq!(read_status(&mut answer).unwrap(), 200);
        assert_eq!(answer, b"TLS");
        let mut answer: &[u8] = b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n";
        assert_eq!(read_status(&mut answer).unwrap(), 407);
        let mut answer: &[u8] = b"SSH-2.0-OpenSSH\r\n\r\n";
        assert!(read_status(&mut answer).is_err());
        let mut answer: &[u8] = b"HTTP/1.1 200 OK\r\n";
        assert!(read_status(&mut answer).is_err());
    }
}
