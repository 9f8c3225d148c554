//! The local HTTP listener: an accepting thread and a few handler threads serving /metrics and /health, with bounded requests and connections.
//!
//! ```text
//! accept ("http") ─► bounded queue ─► handlers ("http-0".."http-3") ─► routes
//!        └─ queue full: 503 at once, closed
//! ```
//!
//! Each connection carries one request: its head is read within 5 s and
//! 8 KiB (`conn`), a body is never read, the answer says `Connection:
//! close`. Handlers read the database through their own read-only
//! connections and everything else from `health` and `metrics`, so they
//! never wait for the main loop, the workers or the writer.
//!
//! Not tiny_http: in 0.12.0 (the newest) a request that declares a large
//! `Content-Length` makes the server allocate that much when the request is
//! dropped (`EqualReader::drop`), whatever the handler answered; a
//! `Content-Length` of 100 TB aborts the whole process (measured here; see
//! tiny-http issue #252 and pull request #290). It also reads header lines
//! without a limit and starts a thread per connection without a bound.

mod api;
mod conn;
mod page;
mod routes;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

use crate::config::{DaemonConfig, UsageError};
use crate::thread::{ExitWatch, ThreadHandle};

pub use routes::{route, Method, Request, Response};

/// Connections served at once.
const HANDLERS: usize = 4;
/// Connections accepted and waiting for a handler; more get a 503 at once.
const QUEUED: usize = 8;
/// A failing accept (out of file descriptors) is tried again after this.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What the routes read.
#[derive(Debug, Clone)]
pub struct Context {
    pub db_path: PathBuf,
}

/// Binds the listener. Called before any thread starts, like the peers file
/// check: an address that cannot be bound is a usage error (exit status 2).
pub fn bind(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, UsageError> {
    let Some(addr) = addr else { return Ok(None) };
    TcpListener::bind(addr).map(Some).map_err(|e| {
        UsageError(format!(
            "--listen (or LISTEN_ADDRESS) {addr}: cannot listen there: {e}; give another ADDR:PORT, or off"
        ))
    })
}

/// Starts serving on `listener`, when there is one.
pub fn start(
    listener: Option<TcpListener>,
    config: &DaemonConfig,
    watch: &ExitWatch,
) -> anyhow::Result<Option<ThreadHandle>> {
    let context = Context {
        db_path: config.db_path.clone(),
    };
    listener.map(|l| spawn(l, context, Some(watch))).transpose()
}

/// Starts the accepting thread and the handlers. A handler ends when the
/// accepting thread does; every thread's end is reported to `watch`.
pub fn spawn(
    listener: TcpListener,
    context: Context,
    watch: Option<&ExitWatch>,
) -> anyhow::Result<ThreadHandle> {
    let addr = listener.local_addr()?;
    log::info!("listening on http://{addr} (/, /api/peers, /metrics, /health)");
    crate::health::listening(&addr.to_string());
    let context = Arc::new(context);
    let (queue, connections) = crossbeam_channel::bounded::<TcpStream>(QUEUED);
    for n in 0..HANDLERS {
        let (connections, context) = (connections.clone(), context.clone());
        // Detached: it ends when the queue closes.
        ThreadHandle::spawn(&format!("http-{n}"), watch, move || {
            for stream in connections {
                conn::serve(stream, &context);
            }
        })?;
    }
    ThreadHandle::spawn("http", watch, move || accept(listener, queue))
}

fn accept(listener: TcpListener, queue: Sender<TcpStream>) {
    let mut failing = false;
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                failing = false;
                match queue.try_send(stream) {
                    Ok(()) => {}
                    Err(TrySendError::Full(stream)) => conn::refuse_busy(stream),
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
            Err(e) => {
                if !failing {
                    log::warn!("HTTP listener: cannot accept a connection: {e}");
                    failing = true;
                }
                std::thread::sleep(ACCEPT_RETRY);
            }
        }
    }
}
