//! The man page documents exactly the flags the binary has, and lints clean.

mod common;

use std::collections::BTreeSet;

use common::probe_bin;

/// `--flag` words in a text (help output or the man page with roff escapes removed).
fn flags_in(text: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("--") {
        let start = i + pos + 2;
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .map_or(text.len(), |e| start + e);
        let preceded_ok = start < 3 || !bytes[start - 3].is_ascii_alphanumeric();
        let name = text[start..end].trim_end_matches('-');
        if preceded_ok && !name.is_empty() && name.as_bytes()[0].is_ascii_lowercase() {
            flags.insert(format!("--{name}"));
        }
        i = end.max(start);
    }
    flags
}

fn help(args: &[&str]) -> String {
    let out = probe_bin().args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_flag_is_in_the_man_page_and_no_other() {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/easytier-probe.8"))
            .unwrap();
    let page_text = page.replace("\\-", "-").replace("\\(hy", "-");
    let documented = flags_in(&page_text);
    let mut actual = BTreeSet::new();
    for args in [&[][..], &["check"][..], &["status"][..], &["requeue"][..]] {
        actual.extend(flags_in(&help(args)));
    }
    let missing: Vec<_> = actual.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&actual).collect();
    assert!(
        missing.is_empty(),
        "flags missing from man/easytier-probe.8: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "man/easytier-probe.8 names flags that do not exist: {stale:?}"
    );
    assert!(actual.len() > 20, "too few flags found: {actual:?}");
}

#[test]
fn man_page_lints_clean() {
    let Ok(out) = std::process::Command::new("mandoc")
        .args(["-Tlint", "-W", "warning"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/man/easytier-probe.8"))
        .output()
    else {
        panic!("mandoc is not installed: run `make deps` (or apt-get install mandoc)");
    };
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report.trim().is_empty(),
        "mandoc -Tlint: {report}"
    );
}
