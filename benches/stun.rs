//! `cargo bench --bench stun`: the DNS lookups and STUN packets that EasyTier's
//! NAT-type detection (StunInfoCollector, started by every instance) makes per
//! check, and when they happen, measured against a logging fake resolver.
//!
//! Inside the private network namespace: a fake DNS server on 127.0.0.1:53
//! logs every query and answers each of EasyTier's default STUN server names
//! with its own loopback address (127.0.1.N, so that packets can be told
//! apart), where a UDP socket on port 3478 and 18000 counts what arrives.
//! Checks run with a private resolv.conf pointing at the fake server (a
//! private mount namespace, as tests/common/dns.rs does), as the probe binary
//! (`check --json`) and in-process (`checker::check`, as the daemon's workers
//! call it). Then fewer checks: with the STUN names mapped in a private
//! /etc/hosts (a mitigation), with a resolver that answers 200 ms late, one
//! that answers NXDOMAIN, and one that never answers.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use easytier::common::stun::StunInfoCollector;
use easytier_probe::checker::{self, CheckOptions, Status};
use easytier_probe::peer::peer_from_uri;
use support::common::{free_port, probe_path, require_private_netns, temp_dir, PROBE_ENV_VARS};
use support::*;

/// Checks per kind and scenario (ETP_STUN_CHECKS).
const CHECKS: usize = 20;
/// Checks per kind in the /etc/hosts, slow and silent resolver scenarios.
const FEW_CHECKS: usize = 5;
/// How late the slow resolver answers, like a recursive lookup not cached.
const SLOW_DNS_MS: u64 = 200;
/// The fake resolver's delay that means "never answer".
const SILENT: u64 = u64::MAX;
/// The fake resolver's delay that means "answer at once: no such name".
const NXDOMAIN: u64 = u64::MAX - 1;
/// Pause after each in-process check, to see whether anything follows it.
const INPROC_GAP: Duration = Duration::from_millis(1500);
/// Pause after each probe process exits (nothing can follow; stragglers only).
const BINARY_GAP: Duration = Duration::from_millis(300);
/// Environment variable that turns the bench binary into the in-process checker.
const INPROC_ENV: &str = "ETP_STUN_INPROC";
/// Ports the counting sockets listen on: STUN's default and the one default
/// server with its own port (stun.douyucdn.cn:18000).
const STUN_PORTS: [u16; 2] = [3478, 18000];

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[derive(Debug, Clone)]
enum Event {
    Dns {
        t: u64,
        name: String,
        qtype: String,
    },
    Stun {
        t: u64,
        server: String,
        binding: bool,
    },
}

impl Event {
    fn t(&self) -> u64 {
        match self {
            Event::Dns { t, .. } | Event::Stun { t, .. } => *t,
        }
    }
}

type Log = Arc<Mutex<Vec<Event>>>;

/// EasyTier's default STUN servers as (host, port, loopback address the fake
/// resolver gives the host).
fn stun_servers() -> Vec<(String, u16, Ipv4Addr)> {
    StunInfoCollector::get_default_servers()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (host, port) = match s.split_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().unwrap()),
                None => (s.clone(), 3478),
            };
            (host, port, Ipv4Addr::new(127, 0, 1, i as u8 + 1))
        })
        .collect()
}

fn main() {
    // As the daemon's main does: no backtrace capture in EasyTier's errors.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    if serve_node_if_asked() {
        return;
    }
    require_private_netns();
    if let Ok(spec) = std::env::var(INPROC_ENV) {
        inproc_checks(&spec);
        return;
    }
    let checks: usize = std::env::var("ETP_STUN_CHECKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CHECKS);
    println!(
        "easytier-probe {} STUN benchmark (EasyTier {})",
        env!("CARGO_PKG_VERSION"),
        easytier::VERSION
    );
    let servers = stun_servers();
    let log: Log = Arc::default();
    let dns_delay = Arc::new(AtomicU64::new(0));
    start_fake_dns(&servers, log.clone(), dns_delay.clone());
    start_stun_counters(&servers, log.clone());

    // The node's own lookups use the machine's resolv.conf, whose server is
    // unreachable from this namespace: none of its traffic is counted.
    let node = NodeProcess::spawn("stun-net", "stun-secret", "stun-node");
    let member = format!("tcp://127.0.0.1:{}", node.tcp_port);
    let refused = format!("tcp://127.0.0.1:{}", free_port());
    let secret_args = [
        "--network-name",
        "stun-net",
        "--network-secret",
        "stun-secret",
    ];
    let dir = temp_dir("bench-stun");
    let mut report = Vec::new();

    let binary = |uri: &str, hosts: bool, n: usize| -> Vec<Span> {
        let (expected, args) = if uri == member {
            ("Online", &secret_args[..])
        } else {
            ("Offline", &[][..])
        };
        let mut spans = Vec::new();
        for _ in 0..n {
            let start = now_us();
            let out = isolated(&dir, probe_path(), hosts)
                .args(["check", "--json", uri])
                .args(args)
                .output()
                .unwrap();
            let end = now_us();
            let json: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|_| panic!("no result: {}", String::from_utf8_lossy(&out.stderr)));
            assert_eq!(json["status"], expected, "{json}");
            let verdict = start + json["duration_ms"].as_u64().unwrap() * 1000;
            spans.push(Span {
                start,
                verdict,
                end,
            });
            std::thread::sleep(BINARY_GAP);
        }
        spans
    };
    report.push((
        "probe binary, Online (member)".to_string(),
        binary(&member, false, checks),
    ));
    report.push((
        "probe binary, refused port".to_string(),
        binary(&refused, false, checks),
    ));

    // In-process: the bench binary again, in a mount namespace of its own.
    let spec = format!(
        "{member} stun-net stun-secret {refused} {checks} {}",
        INPROC_GAP.as_millis()
    );
    let out = isolated(&dir, &std::env::current_exe().unwrap(), false)
        .env(INPROC_ENV, spec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "in-process checks failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut inproc: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() == 5 && f[0] == "check" {
            inproc.entry(f[1].to_string()).or_default().push(Span {
                start: f[2].parse().unwrap(),
                verdict: f[3].parse().unwrap(),
                end: f[4].parse().unwrap(),
            });
        }
    }
    for (kind, label) in [
        ("online", "in-process, Online (member)"),
        ("refused", "in-process, refused port"),
    ] {
        report.push((label.to_string(), inproc.remove(kind).unwrap()));
    }

    let few = checks.min(FEW_CHECKS);
    for (uri, kind) in [(&member, "Online"), (&refused, "refused port")] {
        report.push((
            format!("probe binary, {kind}, STUN names mapped to 127.0.0.1 in /etc/hosts"),
            binary(uri, true, few),
        ));
    }
    dns_delay.store(SLOW_DNS_MS, Ordering::SeqCst);
    for (uri, kind) in [(&member, "Online"), (&refused, "refused port")] {
        report.push((
            format!("probe binary, {kind}, resolver answering {SLOW_DNS_MS} ms late"),
            binary(uri, false, few),
        ));
    }
    dns_delay.store(NXDOMAIN, Ordering::SeqCst);
    for (uri, kind) in [(&member, "Online"), (&refused, "refused port")] {
        report.push((
            format!("probe binary, {kind}, resolver answering NXDOMAIN"),
            binary(uri, false, few),
        ));
    }
    dns_delay.store(SILENT, Ordering::SeqCst);
    for (uri, kind) in [(&member, "Online"), (&refused, "refused port")] {
        report.push((
            format!(
                "probe binary, {kind}, resolver that never answers (glibc default \
                 timeout:5 attempts:2)"
            ),
            binary(uri, false, few),
        ));
    }
    dns_delay.store(0, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));

    let events = log.lock().unwrap().clone();
    print_report(&report, &events, &servers);
    drop(node);
}

/// One check: when it started, when its verdict was known, when it was over
/// (probe process exited, or `checker::check` returned with the instance torn
/// down), all in microseconds since the epoch.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u64,
    verdict: u64,
    end: u64,
}

/// Runs `program` in a private mount namespace whose /etc/resolv.conf points
/// at the fake server on 127.0.0.1 and, with `hosts`, whose /etc/hosts maps
/// every default STUN server name to 127.0.0.1.
fn isolated(dir: &Path, program: &Path, hosts: bool) -> Command {
    let conf = dir.join("resolv.conf");
    // glibc's default timeout and attempts, as on most machines.
    std::fs::write(&conf, "nameserver 127.0.0.1\n").unwrap();
    let mut script = format!("mount --bind '{}' /etc/resolv.conf", conf.display());
    if hosts {
        let file = dir.join("hosts");
        let mut text = String::from("127.0.0.1 localhost\n");
        for (host, _, _) in stun_servers() {
            text.push_str(&format!("127.0.0.1 {host}\n"));
        }
        std::fs::write(&file, text).unwrap();
        script.push_str(&format!(" && mount --bind '{}' /etc/hosts", file.display()));
    }
    script.push_str(" && exec \"$@\"");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(script)
        .arg("sh")
        .arg(program);
    for var in PROBE_ENV_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// The in-process half: checks one after the other with `checker::check`,
/// printing `check <kind> <start> <verdict> <end>` per check.
fn inproc_checks(spec: &str) {
    let f: Vec<&str> = spec.split(' ').collect();
    let (member_uri, network, secret, refused_uri) = (f[0], f[1], f[2], f[3]);
    let n: usize = f[4].parse().unwrap();
    let gap = Duration::from_millis(f[5].parse().unwrap());
    checker::tune_easytier_for_checks();
    let mut member = peer_from_uri(member_uri).unwrap();
    member.network_name = network.into();
    member.network_secret = Some(secret.into());
    let refused = peer_from_uri(refused_uri).unwrap();
    let options = CheckOptions {
        timeout: Duration::from_secs(10),
        probe_network_name: "stun-probe".into(),
        hostname: "stun-probe".into(),
    };
    for (kind, peer, expected) in [
        ("online", &member, Status::Online),
        ("refused", &refused, Status::Offline),
    ] {
        for _ in 0..n {
            let start = now_us();
            let r = checker::check(peer, &options);
            let end = now_us();
            assert_eq!(r.status, expected, "{r:?}");
            println!(
                "check {kind} {start} {} {end}",
                start + r.duration_ms * 1000
            );
            std::thread::sleep(gap);
        }
    }
}

/// The fake resolver: logs each query, answers A queries for the STUN names
/// with their loopback address (any other name with 127.0.0.1), and every
/// other type with no records; `delay_ms` late, never when it is SILENT, and
/// NXDOMAIN at once when it is NXDOMAIN.
fn start_fake_dns(servers: &[(String, u16, Ipv4Addr)], log: Log, delay_ms: Arc<AtomicU64>) {
    let socket = UdpSocket::bind("127.0.0.1:53").expect("bind 127.0.0.1:53 (needs root)");
    let socket = Arc::new(socket);
    let names: BTreeMap<String, Ipv4Addr> =
        servers.iter().map(|(h, _, ip)| (h.clone(), *ip)).collect();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            let t = now_us();
            let Some((name, qtype, question_end)) = parse_query(&buf[..len]) else {
                continue;
            };
            let ip = names.get(&name).copied().unwrap_or(Ipv4Addr::LOCALHOST);
            let qtype_text = match qtype {
                1 => "A".to_string(),
                28 => "AAAA".to_string(),
                other => format!("type{other}"),
            };
            log.lock().unwrap().push(Event::Dns {
                t,
                name,
                qtype: qtype_text,
            });
            let query = &buf[..len];
            let delay = delay_ms.load(Ordering::SeqCst);
            let answer = qtype == 1 && delay != NXDOMAIN;
            let mut out = Vec::with_capacity(64);
            out.extend_from_slice(&query[..2]); // id
            out.push(0x80 | (query[2] & 0x01)); // QR, RD as asked
            out.push(if delay == NXDOMAIN { 0x83 } else { 0x80 }); // RA, rcode
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&u16::from(answer).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.extend_from_slice(&query[12..question_end]);
            if answer {
                out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]); // name, A, IN
                out.extend_from_slice(&0u32.to_be_bytes()); // TTL 0
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&ip.octets());
            }
            match delay {
                0 | NXDOMAIN => {
                    let _ = socket.send_to(&out, from);
                }
                SILENT => {}
                ms => {
                    let socket = socket.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(ms));
                        let _ = socket.send_to(&out, from);
                    });
                }
            }
        }
    });
}

/// The question of a DNS query: (lowercase name, type, end of the question).
fn parse_query(q: &[u8]) -> Option<(String, u16, usize)> {
    if q.len() < 12 || q[2] & 0x80 != 0 {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12;
    while *q.get(i)? != 0 {
        let n = usize::from(q[i]);
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + n)?).to_ascii_lowercase());
        i += 1 + n;
    }
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    q.get(i + 4)?;
    Some((labels.join("."), qtype, i + 5))
}

/// One counting socket per STUN server address and port, and on 127.0.0.1
/// for the /etc/hosts scenario.
fn start_stun_counters(servers: &[(String, u16, Ipv4Addr)], log: Log) {
    let mut targets: Vec<(Ipv4Addr, String)> =
        servers.iter().map(|(h, _, ip)| (*ip, h.clone())).collect();
    targets.push((Ipv4Addr::LOCALHOST, "127.0.0.1 (from /etc/hosts)".into()));
    for (ip, host) in targets {
        for port in STUN_PORTS {
            let socket = UdpSocket::bind((ip, port)).expect("bind a STUN counter");
            let log = log.clone();
            let server = format!("{host}:{port}");
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while let Ok((len, _)) = socket.recv_from(&mut buf) {
                    let t = now_us();
                    // A STUN Binding request starts with type 0x0001 and
                    // carries the magic cookie 0x2112A442 at offset 4.
                    let binding =
                        len >= 20 && buf[..2] == [0, 1] && buf[4..8] == [0x21, 0x12, 0xa4, 0x42];
                    log.lock().unwrap().push(Event::Stun {
                        t,
                        server: server.clone(),
                        binding,
                    });
                }
            });
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn print_report(
    report: &[(String, Vec<Span>)],
    events: &[Event],
    servers: &[(String, u16, Ipv4Addr)],
) {
    // Every check of every scenario in time order: an event belongs to the
    // last check that started before it.
    let mut all: Vec<(usize, Span)> = report
        .iter()
        .enumerate()
        .flat_map(|(i, (_, spans))| spans.iter().map(move |s| (i, *s)))
        .collect();
    all.sort_by_key(|(_, s)| s.start);
    let mut outside = 0;
    let mut per_check: BTreeMap<(usize, u64), Vec<&Event>> = BTreeMap::new();
    for e in events {
        match all.iter().rev().find(|(_, s)| s.start <= e.t()) {
            Some((i, s)) => per_check.entry((*i, s.start)).or_default().push(e),
            None => outside += 1,
        }
    }
    let first_servers: Vec<&str> = servers.iter().take(2).map(|s| s.0.as_str()).collect();
    println!();
    println!(
        "EasyTier's default STUN list: {} names; each detection round looks up the \
         first two ({}) and one of the other {} at random, one after the other, then \
         sends 3 Binding requests x 2 copies to each address it got.",
        servers.len(),
        first_servers.join(", "),
        servers.len() - 2
    );
    for (i, (name, spans)) in report.iter().enumerate() {
        let n = spans.len() as f64;
        let mut dns_by_name: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        let mut stun_by_server: BTreeMap<String, usize> = BTreeMap::new();
        let (mut dns, mut stun, mut other_udp) = (0usize, 0usize, 0usize);
        let mut phase = [0usize; 3]; // before verdict, teardown, after the check
        let (mut first_dns, mut first_stun, mut last_stun) = (vec![], vec![], vec![]);
        let mut checks_with_stun = 0;
        for s in spans {
            let evs = per_check.get(&(i, s.start)).cloned().unwrap_or_default();
            let mut seen_stun = false;
            for e in &evs {
                match e {
                    Event::Dns { name, qtype, .. } => {
                        dns += 1;
                        *dns_by_name
                            .entry(name.clone())
                            .or_default()
                            .entry(qtype.clone())
                            .or_default() += 1;
                    }
                    Event::Stun {
                        server, binding, ..
                    } => {
                        if *binding {
                            stun += 1;
                        } else {
                            other_udp += 1;
                        }
                        *stun_by_server.entry(server.clone()).or_default() += 1;
                        if !seen_stun {
                            first_stun.push(ms(e.t() - s.start));
                            seen_stun = true;
                        }
                    }
                }
                let p = if e.t() <= s.verdict {
                    0
                } else if e.t() <= s.end {
                    1
                } else {
                    2
                };
                phase[p] += 1;
            }
            if let Some(first) = evs.iter().find(|e| matches!(e, Event::Dns { .. })) {
                first_dns.push(ms(first.t() - s.start));
            }
            if let Some(last) = evs.iter().rev().find(|e| matches!(e, Event::Stun { .. })) {
                last_stun.push(ms(last.t() - s.start));
                checks_with_stun += 1;
            }
        }
        let verdict = sorted(spans.iter().map(|s| ms(s.verdict - s.start)).collect());
        let whole = sorted(spans.iter().map(|s| ms(s.end - s.start)).collect());
        let teardown = sorted(spans.iter().map(|s| ms(s.end - s.verdict)).collect());
        println!();
        println!("{name}: {} checks", spans.len());
        println!(
            "  verdict p50 {:.0} ms; check over (teardown done or process exited) p50 {:.0} ms, \
             max {:.0} ms; verdict to over p50 {:.0} ms, max {:.0} ms",
            percentile(&verdict, 50.0),
            percentile(&whole, 50.0),
            whole.last().unwrap(),
            percentile(&teardown, 50.0),
            teardown.last().unwrap()
        );
        println!(
            "  DNS queries per check: {:.2}; STUN Binding requests per check: {:.2} \
             ({checks_with_stun} of {} checks sent some){}",
            dns as f64 / n,
            stun as f64 / n,
            spans.len(),
            if other_udp > 0 {
                format!("; other UDP datagrams: {other_udp}")
            } else {
                String::new()
            }
        );
        for (qname, types) in &dns_by_name {
            let types: Vec<String> = types
                .iter()
                .map(|(t, c)| format!("{t} {:.2}", *c as f64 / n))
                .collect();
            println!("    DNS {qname:<28} {}", types.join(", "));
        }
        for (server, c) in &stun_by_server {
            println!("    STUN to {server:<33} {:.2} per check", *c as f64 / n);
        }
        let total = (phase[0] + phase[1] + phase[2]).max(1) as f64;
        let pct = |x: usize| 100.0 * x as f64 / total;
        let stat = |v: Vec<f64>| {
            let v = sorted(v);
            if v.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "p50 {:.0} ms, max {:.0} ms",
                    percentile(&v, 50.0),
                    v.last().unwrap()
                )
            }
        };
        println!(
            "  after the check's start: first DNS query {}",
            stat(first_dns)
        );
        println!(
            "    first STUN packet {}; last STUN packet {}",
            stat(first_stun),
            stat(last_stun)
        );
        println!(
            "  of all DNS and STUN traffic: {:.0}% before the verdict, {:.0}% during \
             teardown, {:.0}% after the check was over",
            pct(phase[0]),
            pct(phase[1]),
            pct(phase[2])
        );
    }
    println!();
    println!("DNS queries or STUN packets before the first check: {outside}");
}
