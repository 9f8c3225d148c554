//! Local faults: a second daemon on one database.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_second_daemon_on_one_database_exits_2_naming_the_first() {
    require_private_netns();
    let dir = temp_dir("second-daemon");
    let args = vec![
        "--peer".to_string(),
        format!("tcp://127.0.0.1:{}", free_port()),
        "--check-interval".to_string(),
        "1".to_string(),
    ];
    let first = Daemon::start(&dir, &args, &[]);
    wait_for(
        "the first daemon's first result",
        Duration::from_secs(20),
        || (first.db.exists() && count_results(&first.db) > 0).then_some(()),
    );
    let out = probe_bin()
        .arg("--db")
        .arg(&first.db)
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(first.db.to_str().unwrap())
            && err.contains(&format!("process {}", first.child.id())),
        "names the database and the holder: {err}"
    );
    // Read-only commands work beside the running daemon.
    assert_eq!(status_json(&first.db).len(), 1);
    let before = count_results(&first.db);
    wait_for("the first daemon goes on", Duration::from_secs(20), || {
        (count_results(&first.db) > before).then_some(())
    });
}
