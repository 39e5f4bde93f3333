//! The KV server when its disk fails a write, on real processes.
//!
//! A full disk, on real filesystems: each node's data directory is a small tmpfs, filled up
//! with a file while clients write. Mounting needs root; without it those tests say so and pass
//! (CI runs them as root). What must hold: a write is refused with `-DISKFULL` (nothing was
//! done) or goes through another node, never half-done; reads keep working; the node takes
//! writes again by itself once the file is removed; and no acknowledged write is lost.
//!
//! A failed fsync (`RAFTKIT.DEBUG FAILSYNC`): the server stops with the reason in its log and
//! exit status, the others go on, and a restart brings it back with nothing lost.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use raft_core::NodeId;
use raftkit_examples::client::{info_field, Client};
use raftkit_examples::cluster::{ClusterOptions, LocalCluster};
use raftkit_examples::resp::Reply;

const WAIT: Duration = Duration::from_secs(30);
/// Values large enough that the WAL's segments (1 MiB here) fill within a few hundred writes.
const VALUE_BYTES: usize = 8 << 10;

/// tmpfs mounts, unmounted when dropped.
struct Mounts(Vec<PathBuf>);

impl Mounts {
    /// Mounts a tmpfs of `mib` MiB at `root/node-<id>` for each id; `None` without root.
    fn new(root: &Path, ids: &[NodeId], mib: u64) -> Option<Mounts> {
        let mut mounts = Mounts(Vec::new());
        for id in ids {
            let dir = root.join(format!("node-{id}"));
            std::fs::create_dir_all(&dir).expect("mount point");
            let mounted = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            if !mounted {
                eprintln!("skipped: mounting a tmpfs needs root (CI runs this test as root)");
                return None;
            }
            mounts.0.push(dir);
        }
        Some(mounts)
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = Command::new("umount").arg("-l").arg(dir).status();
        }
    }
}

/// Fills the filesystem of `dir` with `dir/filler` until a write fails for lack of space.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("filler");
    for chunk in [1 << 20, 4 << 10] {
        let buf = vec![0x5Au8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
    path
}

fn cluster(nodes: usize, root: &Path) -> LocalCluster {
    let options = ClusterOptions {
        nodes,
        wal_segment_mib: 1,
        data_root: Some(root.to_path_buf()),
        debug_commands: true,
        request_timeout: Duration::from_secs(2),
        log_filter: "info,raft_core=info".into(),
        ..ClusterOptions::default()
    };
    LocalCluster::start(env!("CARGO_BIN_EXE_kv-server"), Vec::new(), &options).expect("start")
}

/// What became of one write.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Acked,
    /// Refused with an error that says nothing was done: `-DISKFULL`, `-NOLEADER`, `-BUSY`.
    NothingDone(String),
    /// Its outcome is unknown (`-TIMEOUT`, or no answer).
    Unknown,
}

fn set(client: &mut Client, key: &str, value: &[u8]) -> Outcome {
    match client.call(&[b"SET", key.as_bytes(), value]) {
        Ok(Reply::Simple(s)) if s == "OK" => Outcome::Acked,
        Ok(Reply::Error(e))
            if ["DISKFULL", "NOLEADER", "BUSY"].iter().any(|code| e.starts_with(code)) =>
        {
            Outcome::NothingDone(e)
        }
        Ok(Reply::Error(e)) if e.starts_with("TIMEOUT") => Outcome::Unknown,
        Ok(other) => panic!("SET {key}: unexpected reply {other:?}"),
        Err(_) => Outcome::Unknown,
    }
}

fn get(cluster: &LocalCluster, id: NodeId, key: &str) -> Option<Vec<u8>> {
    let mut c = cluster.client(id, Duration::from_secs(5)).expect("connect");
    match c.call(&[b"GET", key.as_bytes()]).expect("GET answers") {
        Reply::Bulk(v) => v,
        other => panic!("GET {key} at node {id}: {other:?}"),
    }
}

fn info(cluster: &LocalCluster, id: NodeId, field: &str) -> String {
    let info = cluster.info(id).expect("INFO");
    info_field(&info, field).unwrap_or_default().to_owned()
}

fn value(i: u64) -> Vec<u8> {
    let mut v = format!("v{i}:").into_bytes();
    v.resize(VALUE_BYTES, b'.');
    v
}

/// Every acknowledged key reads back with its value at every node; a key whose write's outcome
/// was unknown holds its value or nothing.
fn check_all(cluster: &LocalCluster, outcomes: &BTreeMap<u64, Outcome>) {
    for id in cluster.running() {
        for (&i, outcome) in outcomes {
            let got = get(cluster, id, &format!("k{i}"));
            match outcome {
                Outcome::Acked => assert_eq!(got, Some(value(i)), "k{i} at node {id}"),
                Outcome::NothingDone(e) => assert_eq!(got, None, "k{i} at node {id} ({e})"),
                Outcome::Unknown => assert!(got.is_none() || got == Some(value(i)), "k{i}"),
            }
        }
    }
}

/// One node on a full disk: its writes wait, then new ones are refused with `-DISKFULL`; reads
/// go on; once space is freed the waiting write applies and writes are taken again.
#[test]
fn a_lone_node_on_a_full_disk_refuses_writes_keeps_reading_and_recovers() {
    let root = tempfile::tempdir().expect("root");
    let Some(_mounts) = Mounts::new(root.path(), &[1], 32) else { return };
    let cluster = cluster(1, root.path());
    assert!(cluster.wait_for_leader(WAIT).is_some(), "the node elects itself");
    let mut client = cluster.client(1, WAIT).expect("connect");
    let mut outcomes = BTreeMap::new();
    for i in 0..20 {
        assert_eq!(set(&mut client, &format!("k{i}"), &value(i)), Outcome::Acked);
        outcomes.insert(i, Outcome::Acked);
    }
    let filler = fill(&root.path().join("node-1"));
    // The WAL's segments prepared ahead take writes for a while; then its disk is full.
    let mut i = 20;
    let refused = loop {
        let outcome = set(&mut client, &format!("k{i}"), &value(i));
        let refused = matches!(&outcome, Outcome::NothingDone(e) if e.starts_with("DISKFULL"));
        outcomes.insert(i, outcome);
        i += 1;
        if refused {
            break i - 1;
        }
        assert!(i < 5_000, "the disk never filled");
    };
    assert_eq!(info(&cluster, 1, "storage_full"), "1");
    assert!(info(&cluster, 1, "storage_error").contains("disk full"));
    assert_eq!(info(&cluster, 1, "role"), "leader", "a full disk does not stop the node");
    for _ in 0..3 {
        i += 1;
        let outcome = set(&mut client, &format!("k{i}"), &value(i));
        assert!(matches!(&outcome, Outcome::NothingDone(e) if e.starts_with("DISKFULL")));
        outcomes.insert(i, outcome);
    }
    assert_eq!(get(&cluster, 1, "k3"), Some(value(3)), "reads go on");
    std::fs::remove_file(filler).expect("free the space");
    let deadline = Instant::now() + WAIT;
    i += 1;
    while set(&mut client, &format!("k{i}"), &value(i)) != Outcome::Acked {
        assert!(Instant::now() < deadline, "writes are taken again once space is freed");
        std::thread::sleep(Duration::from_millis(50));
    }
    outcomes.insert(i, Outcome::Acked);
    assert_eq!(info(&cluster, 1, "storage_full"), "0");
    eprintln!("{} writes, DISKFULL from k{refused} on", outcomes.len());
    check_all(&cluster, &outcomes);
}

/// Three nodes, the leader's disk fills: leadership moves to a node with space and writes go
/// on (also through the full node, which forwards them); reads at the full node are answered;
/// once its space is freed it catches up and every copy agrees.
#[test]
fn a_full_leader_hands_over_and_catches_up_once_space_is_freed() {
    let root = tempfile::tempdir().expect("root");
    let Some(_mounts) = Mounts::new(root.path(), &[1, 2, 3], 32) else { return };
    let cluster = cluster(3, root.path());
    let (full, _) = cluster.wait_for_leader(WAIT).expect("a leader");
    let mut client = cluster.client(full, WAIT).expect("connect");
    let mut outcomes = BTreeMap::new();
    for i in 0..20 {
        assert_eq!(set(&mut client, &format!("k{i}"), &value(i)), Outcome::Acked);
        outcomes.insert(i, Outcome::Acked);
    }
    let filler = fill(&root.path().join(format!("node-{full}")));
    // Writes through the full node go on: first into its prepared segments, then (after a
    // short stall while it hands over) forwarded to the new leader.
    let deadline = Instant::now() + WAIT;
    let mut i = 20;
    let mut after_handover = 0;
    while after_handover < 50 {
        assert!(Instant::now() < deadline, "writes did not go on: {outcomes:?}");
        let outcome = set(&mut client, &format!("k{i}"), &value(i));
        if outcome == Outcome::Acked && info(&cluster, full, "role") != "leader" {
            after_handover += 1;
        }
        outcomes.insert(i, outcome);
        i += 1;
    }
    assert_eq!(info(&cluster, full, "storage_full"), "1", "the handover was for the full disk");
    let (leader, _) = cluster.wait_for_leader(WAIT).expect("a leader");
    assert_ne!(leader, full);
    let last = i - 1;
    assert_eq!(
        get(&cluster, full, &format!("k{last}")),
        Some(value(last)),
        "read at the full node"
    );
    std::fs::remove_file(filler).expect("free the space");
    let deadline = Instant::now() + WAIT;
    while info(&cluster, full, "storage_full") != "0" {
        assert!(Instant::now() < deadline, "the node takes writes again by itself");
        std::thread::sleep(Duration::from_millis(50));
    }
    let commit: u64 = info(&cluster, leader, "commit_index").parse().expect("commit index");
    assert!(cluster.wait_applied(commit, WAIT), "the full node catches up");
    let refused = outcomes.values().filter(|o| matches!(o, Outcome::NothingDone(_))).count();
    let unknown = outcomes.values().filter(|o| **o == Outcome::Unknown).count();
    eprintln!(
        "{} writes ({refused} refused, {unknown} unknown); leader {full} -> {leader}",
        outcomes.len()
    );
    check_all(&cluster, &outcomes);
}

/// A leader whose fsync fails stops (the server exits, saying why); another node leads and
/// writes go on; restarted, the node recovers from its data directory and catches up.
#[test]
fn a_failed_fsync_stops_the_server_and_a_restart_brings_it_back() {
    let root = tempfile::tempdir().expect("root");
    let mut cluster = cluster(3, root.path());
    let (victim, _) = cluster.wait_for_leader(WAIT).expect("a leader");
    let other = cluster.ids().into_iter().find(|&id| id != victim).expect("another node");
    let mut client = cluster.client(other, WAIT).expect("connect");
    let mut outcomes = BTreeMap::new();
    for i in 0..30 {
        assert_eq!(set(&mut client, &format!("k{i}"), &value(i)), Outcome::Acked);
        outcomes.insert(i, Outcome::Acked);
    }
    let mut debug = cluster.client(victim, WAIT).expect("connect");
    let armed = debug.call(&[b"RAFTKIT.DEBUG", b"FAILSYNC"]).expect("FAILSYNC");
    assert_eq!(armed, Reply::Simple("OK".into()));
    let deadline = Instant::now() + WAIT;
    let mut i = 30;
    let mut acked_after = 0;
    while acked_after < 30 {
        assert!(Instant::now() < deadline, "writes did not go on: {outcomes:?}");
        let outcome = set(&mut client, &format!("k{i}"), &value(i));
        if outcome == Outcome::Acked && cluster.exited(victim) {
            acked_after += 1;
        }
        outcomes.insert(i, outcome);
        i += 1;
    }
    let log = std::fs::read_to_string(cluster.log_path(victim)).expect("the node's log");
    assert!(log.contains("fsync failed"), "the log says why the node stopped");
    cluster.spawn(victim).expect("restart");
    let (leader, _) = cluster.wait_for_leader(WAIT).expect("a leader");
    let commit: u64 = info(&cluster, leader, "commit_index").parse().expect("commit index");
    assert!(cluster.wait_applied(commit, WAIT), "the restarted node catches up");
    assert_eq!(info(&cluster, victim, "failure"), "");
    check_all(&cluster, &outcomes);
}

/// With shards (many groups on one runtime), a failed fsync stops the server too: the runtime
/// counts the node that failed, which is how the server learns of it without asking each of its
/// groups every time.
#[test]
fn a_failed_fsync_stops_a_sharded_server() {
    let root = tempfile::tempdir().expect("root");
    let options = ClusterOptions {
        nodes: 1,
        shards: 4,
        wal_segment_mib: 1,
        data_root: Some(root.path().to_path_buf()),
        debug_commands: true,
        request_timeout: Duration::from_secs(2),
        log_filter: "info,raft_core=info".into(),
        ..ClusterOptions::default()
    };
    let mut cluster =
        LocalCluster::start(env!("CARGO_BIN_EXE_kv-server"), Vec::new(), &options).expect("start");
    let (id, _) = cluster.wait_for_leader(WAIT).expect("a leader");
    let mut client = cluster.client(id, WAIT).expect("connect");
    assert_eq!(set(&mut client, "before", b"v"), Outcome::Acked);
    let armed = client.call(&[b"RAFTKIT.DEBUG", b"FAILSYNC"]).expect("FAILSYNC");
    assert_eq!(armed, Reply::Simple("OK".into()));
    let deadline = Instant::now() + WAIT;
    let mut i = 0;
    while !cluster.exited(id) {
        assert!(Instant::now() < deadline, "the server did not stop");
        // Writes to every shard until one meets the failed fsync; none is acknowledged.
        assert_ne!(set(&mut client, &format!("after{i}"), b"v"), Outcome::Acked);
        i += 1;
    }
    let log = std::fs::read_to_string(cluster.log_path(id)).expect("the node's log");
    assert!(log.contains("fsync failed"), "the log says why the node stopped");
}
