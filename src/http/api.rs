//! The JSON API: `/api/peers` (the objects of `status --json`) and `/api/peers/{id}/history?hours=N` (hourly buckets from the rollups).

use serde_json::json;

use super::routes::{Request, Response};
use super::Context;
use crate::clock;
use crate::store;

/// Hours of history given when `hours` is absent.
pub const DEFAULT_HOURS: i64 = 48;
/// Most hours of history one request may ask for (the default rollup
/// retention).
pub const MAX_HOURS: i64 = 24 * 90;

/// `/api/peers`: every active peer, as `status --json` prints it.
pub fn peers(_: &Request, context: &Context) -> Response {
    let read = || -> anyhow::Result<Vec<store::PeerStatus>> {
        let conn = store::open_ro(&context.db_path)?;
        store::peer_statuses(&conn, clock::now_ms())
    };
    match read() {
        Ok(rows) => Response::json(200, &json!(rows)),
        Err(e) => unavailable(&e),
    }
}

/// Paths under `/api/peers/`: `{id}/history` only; anything else is 404.
pub fn peer_path(request: &Request, context: &Context) -> Option<Response> {
    let rest = request.path.strip_prefix("/api/peers/")?;
    let id = rest.strip_suffix("/history")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits, but possibly too many for an i64: no such peer.
    let Ok(id) = id.parse::<i64>() else {
        return Some(not_found());
    };
    Some(match hours(request.query.as_deref()) {
        Ok(hours) => history(id, hours, context),
        Err(message) => Response::json(400, &json!({ "error": message })),
    })
}

fn history(id: i64, hours: i64, context: &Context) -> Response {
    let read = || -> anyhow::Result<Option<Vec<store::HourBucket>>> {
        let conn = store::open_ro(&context.db_path)?;
        if !store::peer_known(&conn, id)? {
            return Ok(None);
        }
        store::peer_history(&conn, id, clock::now_ms(), hours).map(Some)
    };
    match read() {
        Ok(Some(buckets)) => Response::json(
            200,
            &json!({ "peer_id": id, "hours": hours, "buckets": buckets }),
        ),
        Ok(None) => not_found(),
        Err(e) => unavailable(&e),
    }
}

/// `hours=N` from the query, 1 to `MAX_HOURS`; other parameters are ignored.
fn hours(query: Option<&str>) -> Result<i64, String> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("hours="));
    let Some(value) = value else {
        return Ok(DEFAULT_HOURS);
    };
    match value.parse::<i64>() {
        Ok(n) if (1..=MAX_HOURS).contains(&n) => Ok(n),
        _ => Err(format!(
            "hours must be a whole number from 1 to {MAX_HOURS}"
        )),
    }
}

fn not_found() -> Response {
    Response::json(404, &json!({ "error": "no such peer" }))
}

/// The database cannot be read (not created yet, being upgraded).
fn unavailable(error: &anyhow::Error) -> Response {
    log::warn!("/api: cannot read the database: {error:#}");
    Response::json(503, &json!({ "error": "the database cannot be read now" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_are_bounded() {
        assert_eq!(hours(None), Ok(48));
        assert_eq!(hours(Some("x=1&hours=24")), Ok(24));
        assert_eq!(hours(Some("hours=2160")), Ok(2160));
        assert!(hours(Some("hours=2161")).is_err());
        assert!(hours(Some("hours=0")).is_err());
        assert!(hours(Some("hours=-1")).is_err());
        assert!(hours(Some("hours=abc")).is_err());
    }

    #[test]
    fn only_digits_then_history_is_a_peer_path() {
        let context = Context {
            db_path: "/nonexistent/probe.db".into(),
        };
        let get = |p: &str| peer_path(&Request::new("GET", p), &context).map(|r| r.status);
        assert_eq!(get("/api/peers/1/history"), Some(503), "no database");
        assert_eq!(get("/api/peers/99999999999999999999/history"), Some(404));
        assert_eq!(get("/api/peers/1/history?hours=0"), Some(400));
        for p in [
            "/api/peers/x/history",
            "/api/peers//history",
            "/api/peers/1",
            "/api/peers/1/history/",
        ] {
            assert_eq!(get(p), None, "{p}");
        }
    }
}
