//! One connection: read a bounded request head (httparse), answer it, close.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant, SystemTime};

use super::routes::{self, Method, Request, Response};
use super::Context;

/// Longest request head (request line and headers) read.
const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
/// The whole head must arrive within this.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the answer, what the client still sends (a body never read) is
/// read and dropped, up to this much for this long, so that closing does
/// not reset the connection before the client has read the answer.
const LINGER_BYTES: usize = 64 * 1024;
const LINGER: Duration = Duration::from_secs(1);
/// The same for a connection turned away while all handlers are busy.
const BUSY_LINGER: Duration = Duration::from_millis(100);

/// Why no request came.
enum Unreadable {
    /// Answer with this status and close.
    Answer(u16),
    /// The client went away or the connection broke: nothing to answer.
    Gone,
}

pub(super) fn serve(mut stream: TcpStream, context: &Context) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let (response, head_only) = match read_request(&mut stream) {
        Ok(request) => (answer(&request, context), request.method == Method::Head),
        Err(Unreadable::Answer(status)) => (Response::error(status), false),
        Err(Unreadable::Gone) => return,
    };
    if let Err(e) = write_response(&mut stream, &response, head_only) {
        log::debug!("HTTP: the answer could not be sent: {e}");
    }
    linger(stream, LINGER);
}

/// All handlers busy and the queue full: a short answer from the accepting
/// thread, which waits for this client 0.1 s at most (and as long to send).
pub(super) fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(BUSY_LINGER));
    let response = Response::text(503, "busy: too many connections, try again\n")
        .with_header("Retry-After", "1".into());
    let _ = write_response(&mut stream, &response, false);
    linger(stream, BUSY_LINGER);
}

/// The route's answer; a panic in a handler is a 500, not a dead thread.
fn answer(request: &Request, context: &Context) -> Response {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        routes::route(request, context)
    }))
    .unwrap_or_else(|_| {
        log::error!("HTTP: the handler of {} failed", request.path);
        Response::error(500)
    })
}

fn read_request(stream: &mut TcpStream) -> Result<Request, Unreadable> {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Unreadable::Answer(408));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| Unreadable::Gone)?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Err(Unreadable::Gone),
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Unreadable::Answer(408))
            }
            Err(_) => return Err(Unreadable::Gone),
        }
        if let Some(request) = parse(&buf[..len])? {
            return Ok(request);
        }
        if len == buf.len() {
            return Err(Unreadable::Answer(431));
        }
    }
}

/// The request, once its head is complete; None while it is not.
fn parse(bytes: &[u8]) -> Result<Option<Request>, Unreadable> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    match head.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Unreadable::Answer(431)),
        Err(_) => return Err(Unreadable::Answer(400)),
    }
    match (head.method, head.path) {
        (Some(method), Some(target)) => Ok(Some(Request::new(method, target))),
        _ => Err(Unreadable::Answer(400)),
    }
}

fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    head_only: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        response.status,
        reason(response.status),
        httpdate::fmt_http_date(SystemTime::now()),
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        // Values are the routes' own, never taken from a request.
        debug_assert!(!value.contains(['\r', '\n']));
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(&response.body)?;
    }
    stream.flush()
}

fn linger(mut stream: TcpStream, budget: Duration) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + budget;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> Option<Request> {
        match parse(bytes) {
            Ok(r) => r,
            Err(Unreadable::Answer(s)) => panic!("answered {s}"),
            Err(Unreadable::Gone) => panic!("gone"),
        }
    }

    #[test]
    fn heads_are_parsed_when_complete() {
        assert!(parsed(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").is_none());
        let r = parsed(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!((r.method, r.path.as_str()), (Method::Get, "/metrics"));
        assert_eq!(r.query.as_deref(), Some("x=1"));
        let r = parsed(b"DELETE /health HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(r.method, Method::Other("DELETE".into()));
        assert!(matches!(
            parse(b"GET /\x01 HTTP/1.1\r\n\r\n"),
            Err(Unreadable::Answer(400))
        ));
        let many: String = (0..40).map(|n| format!("X-{n}: y\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse(text.as_bytes()),
            Err(Unreadable::Answer(431))
        ));
    }
}
