//! The status page `/`: one server-rendered HTML page (no script, no external asset, strict CSP) with the probe's state and one row per peer.

use std::collections::HashMap;
use std::fmt::Write;

use rusqlite::Connection;

use super::routes::{Request, Response};
use super::Context;
use crate::clock;
use crate::health::HEALTH;
use crate::probe_status::ProbeStatus;
use crate::store::{self, PeerStatus, HOUR_MS};

/// Hours in the strip of each row.
pub const STRIP_HOURS: i64 = 48;

/// Nothing but the inline style sheet may load: no script, image, font,
/// frame or form target.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;padding:12px;max-width:1400px;color:#1b1f23;background:#fff}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:16px 0 6px}
dl.probe{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}
dl.probe dt{color:#586069}dl.probe dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%}
th,td{padding:4px 6px;border-bottom:1px solid #e1e4e8;text-align:left;vertical-align:top}
th{font-weight:600;color:#586069;white-space:nowrap}
td.num{text-align:right;white-space:nowrap}td.when{white-space:nowrap}
.uri,.why{color:#586069;font-size:12px;overflow-wrap:anywhere}
.st{font-weight:600;white-space:nowrap}
.Online{color:#1a7f37}.Offline{color:#cf222e}.pending,.unsupported{color:#6e7781}
.strip{display:flex;gap:1px;min-width:192px}
.strip span{flex:1;height:18px;border-radius:1px;background:#d0d7de}
.strip .u100{background:#2da44e}.strip .u99{background:#7cc88f}
.strip .u90{background:#e3b341}.strip .u1{background:#fb8f44}.strip .u0{background:#cf222e}
.legend{color:#586069;font-size:12px}
@media (max-width:760px){
 thead{display:none}table,tbody,tr,td{display:block;width:auto}
 tr{border:1px solid #d0d7de;border-radius:6px;margin:0 0 8px;padding:4px}
 td{border:0;padding:2px 4px;text-align:left}td.num{text-align:left}
 td[data-label]{display:inline-block;margin-right:8px}
 td[data-label]::before{content:attr(data-label) \": \";color:#586069}
}
";

/// `/`: 200 with the page, 503 with a page that says why when the
/// database cannot be read.
pub fn page(_: &Request, context: &Context) -> Response {
    let now = clock::now_ms();
    let (status, body) = match read(context, now) {
        Ok(view) => (200, render(&view, now)),
        Err(e) => {
            log::warn!("/: cannot read the database: {e:#}");
            let text = format!("The database cannot be read now: {e:#}");
            (503, document("easytier-probe", &paragraph(&text)))
        }
    };
    Response::new(status, "text/html; charset=utf-8", body.into_bytes())
        .with_header("Content-Security-Policy", CSP.into())
        .with_header("Referrer-Policy", "no-referrer".into())
}

/// What the page shows, read in one go.
pub struct View {
    pub probe: Vec<(&'static str, String)>,
    pub peers: Vec<PeerStatus>,
    /// 7 d and 30 d uptime by peer id.
    pub long: store::LongUptimes,
    /// `(checks, online)` of each of the last `STRIP_HOURS` hours by peer id.
    pub strips: HashMap<i64, Vec<(i64, i64)>>,
}

fn read(context: &Context, now: i64) -> anyhow::Result<View> {
    let conn = store::open_ro(&context.db_path)?;
    let mut probe = ProbeStatus::read(&conn, &context.db_path, now)?;
    // Served by the daemon: its live state, not the one it last recorded.
    if HEALTH.started_ms() > 0 {
        probe = probe.with_state(HEALTH.state(now));
    }
    read_view(&conn, probe.lines(), now)
}

/// The peers' part of the view (also used by the benchmark).
pub fn read_view(
    conn: &Connection,
    probe: Vec<(&'static str, String)>,
    now: i64,
) -> anyhow::Result<View> {
    let mut peers = store::peer_statuses(conn, now)?;
    peers.sort_by_key(|p| (rank(&p.status), p.id));
    Ok(View {
        probe,
        peers,
        long: store::long_uptimes(conn, now)?,
        strips: store::strips(conn, now, STRIP_HOURS)?,
    })
}

/// Offline first, then peers without a verdict, then Online.
fn rank(status: &str) -> u8 {
    match status {
        "Offline" => 0,
        "pending" => 1,
        "unsupported" => 2,
        _ => 3,
    }
}

/// The whole page.
pub fn render(view: &View, now: i64) -> String {
    let offline = view.peers.iter().filter(|p| p.status == "Offline").count();
    let title = format!(
        "easytier-probe: {} peers, {offline} Offline",
        view.peers.len()
    );
    let mut body = String::with_capacity(2_000 + view.peers.len() * 3_500);
    let _ = write!(body, "<h1>{}</h1>", escape(&title));
    body.push_str("<h2>Probe</h2><dl class=\"probe\">");
    for (label, text) in &view.probe {
        let _ = write!(body, "<dt>{}</dt><dd>{}</dd>", escape(label), escape(text));
    }
    let _ = write!(
        body,
        "<dt>page</dt><dd>{} (refreshes every minute)</dd></dl>",
        clock::rfc3339(now)
    );
    body.push_str("<h2>Peers</h2>");
    if view.peers.is_empty() {
        body.push_str(&paragraph("No peers yet."));
    } else {
        peer_table(&mut body, view, now);
    }
    document(&title, &body)
}

fn peer_table(out: &mut String, view: &View, now: i64) {
    out.push_str(
        "<table><thead><tr><th>Status</th><th>Peer</th><th>Latency</th><th>Version</th>\
         <th>Last check</th><th>24 h</th><th>7 d</th><th>30 d</th><th>Last 48 hours</th>\
         </tr></thead><tbody>",
    );
    let first_hour = store::hour_of(now) - STRIP_HOURS + 1;
    for peer in &view.peers {
        let (d7, d30) = view.long.get(&peer.id).copied().unwrap_or((None, None));
        peer_row(out, peer, (d7, d30), view.strips.get(&peer.id), first_hour);
    }
    out.push_str("</tbody></table>");
    out.push_str(
        "<p class=\"legend\">Each cell of the strip is one hour (UTC), oldest left: \
         green all Online, light green 99% or more, yellow 90% or more, orange less, \
         red none, grey no check.</p>",
    );
}

fn peer_row(
    out: &mut String,
    p: &PeerStatus,
    (d7, d30): (Option<f64>, Option<f64>),
    strip: Option<&Vec<(i64, i64)>>,
    first_hour: i64,
) {
    let status = escape(&p.status);
    let _ = write!(
        out,
        "<tr class=\"peer\" data-peer-id=\"{}\" data-status=\"{status}\">\
         <td class=\"st {status}\" data-label=\"Status\">{status}</td>\
         <td><div class=\"name\">{}</div><div class=\"uri\">{}</div>",
        p.id,
        escape(&p.name),
        escape(&p.uri),
    );
    if let Some(why) = &p.error {
        let _ = write!(out, "<div class=\"why\">{}</div>", escape(why));
    }
    let latency = p
        .latency_us
        .map(|us| format!("{:.2} ms", us as f64 / 1000.0));
    let _ = write!(
        out,
        "</td><td class=\"num\" data-label=\"Latency\">{}</td>\
         <td data-label=\"Version\">{}</td><td class=\"when\" data-label=\"Last check\">{}</td>\
         <td class=\"num\" data-label=\"24 h\">{}</td><td class=\"num\" data-label=\"7 d\">{}</td>\
         <td class=\"num\" data-label=\"30 d\">{}</td><td>",
        text_or_dash(latency.as_deref()),
        text_or_dash(p.remote_version.as_deref()),
        text_or_dash(p.last_checked_at.as_deref()),
        uptime(p.uptime_24h),
        uptime(d7),
        uptime(d30),
    );
    strip_cells(out, strip, first_hour);
    out.push_str("</td></tr>");
}

/// One `<span>` per hour, coloured by its uptime, the figures in `title`.
fn strip_cells(out: &mut String, strip: Option<&Vec<(i64, i64)>>, first_hour: i64) {
    out.push_str("<div class=\"strip\">");
    for i in 0..STRIP_HOURS {
        let (checks, online) = strip
            .and_then(|s| s.get(i as usize))
            .copied()
            .unwrap_or((0, 0));
        let start = clock::rfc3339((first_hour + i) * HOUR_MS);
        let hour = start.get(..16).unwrap_or(&start);
        let (class, tip) = match store::percent(online, checks) {
            None => ("", format!("{hour}Z: no check")),
            Some(pct) => (
                cell_class(online, checks),
                format!("{hour}Z: {pct}% Online ({online} of {checks} checks)"),
            ),
        };
        let _ = write!(
            out,
            "<span class=\"{class}\" title=\"{}\"></span>",
            escape(&tip)
        );
    }
    out.push_str("</div>");
}

fn cell_class(online: i64, checks: i64) -> &'static str {
    match (online, checks) {
        (o, c) if o == c => "u100",
        (o, c) if o * 100 >= c * 99 => "u99",
        (o, c) if o * 10 >= c * 9 => "u90",
        (0, _) => "u0",
        _ => "u1",
    }
}

fn uptime(pct: Option<f64>) -> String {
    pct.map_or_else(|| "–".to_string(), |p| format!("{p:.1}%"))
}

fn text_or_dash(text: Option<&str>) -> String {
    text.map_or_else(|| "–".to_string(), escape)
}

fn paragraph(text: &str) -> String {
    format!("<p>{}</p>", escape(text))
}

/// The page around `body` (already escaped HTML).
fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"60\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>\n",
        escape(title)
    )
}

/// Text made safe for HTML content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: i64, name: &str, status: &str) -> PeerStatus {
        PeerStatus {
            id,
            name: name.into(),
            uri: format!("tcp://h{id}:11010"),
            status: status.into(),
            latency_us: Some(1_234),
            remote_version: Some("2.0.3".into()),
            last_checked_at: None,
            checks_24h: 0,
            uptime_24h: None,
            error: None,
            error_kind: None,
            attempts: None,
            rejected: 0,
        }
    }

    #[test]
    fn escapes_everything_from_outside_and_sorts_offline_first() {
        let now = clock::now_ms();
        let mut peers = vec![
            peer(1, "<script>alert(1)</script>", "Online"),
            peer(2, "b\"'&", "Offline"),
        ];
        peers.sort_by_key(|p| (rank(&p.status), p.id));
        let strips = HashMap::from([(1, vec![(60, 60); STRIP_HOURS as usize])]);
        let view = View {
            probe: vec![("probe", "<x>".into())],
            peers,
            long: HashMap::new(),
            strips,
        };
        let html = render(&view, now);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<x>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("b&quot;&#39;&amp;"));
        let offline = html.find("data-status=\"Offline\"").unwrap();
        assert!(offline < html.find("data-status=\"Online\"").unwrap());
        assert_eq!(html.matches("class=\"u100\"").count(), STRIP_HOURS as usize);
        assert_eq!(html.matches("<tr class=\"peer\"").count(), 2);
    }

    #[test]
    fn cells_are_coloured_by_uptime() {
        assert_eq!(cell_class(60, 60), "u100");
        assert_eq!(cell_class(99, 100), "u99");
        assert_eq!(cell_class(54, 60), "u90");
        assert_eq!(cell_class(1, 60), "u1");
        assert_eq!(cell_class(0, 60), "u0");
    }
}
