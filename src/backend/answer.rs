//! What an error answer of the backend says: `Retry-After` (seconds or an HTTP date) and the results a refusal names.

use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most characters of a backend's message kept for logs and the database.
const MESSAGE_CHARS: usize = 120;
/// Error bodies are read up to this size: a refusal naming every result of a
/// batch of 100,000 fits with room to spare.
const MAX_ERROR_BODY: u64 = 4 * 1024 * 1024;

/// How long `Retry-After` asks to wait, from `now`: delta-seconds or an
/// HTTP date (IMF-fixdate, RFC 850 or asctime, as RFC 9110 asks a client
/// to accept). A date in the past is zero; a value that is neither is `None`.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long values saturate instead of failing.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses the three HTTP date formats (always GMT).
fn http_date(value: &str) -> Option<SystemTime> {
    let words: Vec<&str> = value.split_whitespace().collect();
    let (day, month, year, time) = match words.as_slice() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        [_, day, month, year, time, "GMT"] => (*day, *month, year.parse().ok()?, *time),
        // Sunday, 06-Nov-94 08:49:37 GMT
        [_, date, time, "GMT"] => {
            let mut parts = date.split('-');
            let (day, month, year) = (parts.next()?, parts.next()?, parts.next()?);
            let year: i64 = year.parse().ok()?;
            // RFC 9110: a two-digit year more than 50 years ahead is in the past century.
            let year = if year < 70 { 2000 + year } else { 1900 + year };
            (day, month, year, *time)
        }
        // Sun Nov  6 08:49:37 1994
        [_, month, day, time, year] => (*day, *month, year.parse().ok()?, *time),
        _ => return None,
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == month)? as u32
        + 1;
    let day: u32 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms[..] else { return None };
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + s;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

// Howard Hinnant's days-from-civil algorithm (proleptic Gregorian calendar).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What a refusal (400, 413, 422) says: its `message` and the results it
/// names in `data.rejected_seq`. A body that is not the contract's JSON
/// names nothing.
pub fn refusal(response: ureq::Response) -> (String, Vec<i64>) {
    let mut bytes = Vec::new();
    let read = response
        .into_reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut bytes);
    let body: serde_json::Value = match read {
        Ok(_) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    let message = body
        .get("message")
        .and_then(|m| m.as_str())
        .map(shown)
        .unwrap_or_default();
    let named = body
        .pointer("/data/rejected_seq")
        .and_then(|n| n.as_array())
        .map(|list| list.iter().filter_map(|v| v.as_i64()).collect())
        .unwrap_or_default();
    (message, named)
}

/// A backend's text made safe for one log line: control characters and
/// quotes escaped, cut to `MESSAGE_CHARS` characters.
pub fn shown(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MESSAGE_CHARS {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn seconds_and_the_three_date_formats() {
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example).
        let now = at(784_111_777 - 30);
        let thirty = Some(Duration::from_secs(30));
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), thirty);
        assert_eq!(retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now), thirty);
        assert_eq!(retry_after("Sun Nov  6 08:49:37 1994", now), thirty);
        // In the past: no wait at all.
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at(784_111_777 + 5)),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn dates_across_leap_years_and_centuries() {
        let now = UNIX_EPOCH;
        let cases = [
            ("Thu, 01 Jan 1970 00:00:00 GMT", 0),
            ("Tue, 29 Feb 2000 00:00:00 GMT", 951_782_400),
            ("Sat, 28 Nov 2026 14:00:00 GMT", 1_795_874_400),
            ("Wednesday, 01-Mar-34 00:00:01 GMT", 2_024_784_001),
        ];
        for (text, secs) in cases {
            assert_eq!(
                retry_after(text, now),
                Some(Duration::from_secs(secs)),
                "{text}"
            );
        }
    }

    #[test]
    fn garbage_is_not_a_wait() {
        for text in [
            "",
            "-5",
            "1.5",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
        ] {
            assert_eq!(retry_after(text, UNIX_EPOCH), None, "{text:?}");
        }
    }

    #[test]
    fn shown_escapes_and_cuts() {
        assert_eq!(shown("bad\nline \"x\""), "bad\\nline \\\"x\\\"");
        let long = "x".repeat(500);
        assert_eq!(shown(&long).chars().count(), MESSAGE_CHARS + 1);
    }
}
