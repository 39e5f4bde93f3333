//! `raftkit-inspect` on a real node's data directory: healthy after a clean stop, and a flipped
//! byte in one write's payload named as that entry (exit status 1), nothing changed on disk.

use std::process::Command;
use std::time::Duration;

use raftkit_examples::cluster::{ClusterOptions, LocalCluster};
use raftkit_examples::resp::Reply;

fn inspect(dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raftkit-inspect")).arg(dir).output().expect("run");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_flipped_byte_in_a_stopped_nodes_log_is_named() {
    let options = ClusterOptions { snapshot_entries: 0, ..ClusterOptions::default() };
    let mut cluster = LocalCluster::start(env!("CARGO_BIN_EXE_kv-server"), Vec::new(), &options)
        .expect("start cluster");
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(20)).expect("a leader");
    let mut client = cluster.client(leader, Duration::from_secs(5)).expect("connect");
    for i in 0..50 {
        let (k, v) = (format!("key{i}"), format!("<value-{i}-marker>"));
        assert_eq!(
            client.call(&[b"SET", k.as_bytes(), v.as_bytes()]).expect("SET"),
            Reply::Simple("OK".into())
        );
    }
    let node = (1..=3).find(|&id| id != leader).expect("a follower");
    assert!(cluster.wait_applied(50, Duration::from_secs(20)));
    cluster.kill(node).expect("kill");
    let data = cluster.dir().join(format!("node-{node}"));
    let (status, report) = inspect(&data);
    assert_eq!(status, 0, "{report}");
    assert!(report.contains("healthy") && report.contains("group 1: entries 1..="), "{report}");

    let wal = data.join("wal");
    let segment = std::fs::read_dir(&wal)
        .expect("wal dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).expect("read");
    let needle = b"<value-17-marker>";
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("the value");
    bytes[at + 3] ^= 0x20;
    std::fs::write(&segment, &bytes).expect("write");
    let (status, report) = inspect(&data);
    assert_eq!(status, 1, "{report}");
    assert!(report.contains("DAMAGED entries"), "{report}");
    assert_eq!(std::fs::read(&segment).expect("read"), bytes, "the tool changed the file");
}
