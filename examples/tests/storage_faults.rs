//! One bad disk at a time, on real processes: while a client writes, a random node is stopped,
//! a random byte range in the written part of a random file in its data directory is damaged
//! (bytes flipped, or a 4 KiB block zeroed), and the node is restarted. It must come back
//! serving, its own copy equal to the others', and no acknowledged write may ever be lost.
//!
//! 20 rounds here; `RAFTKIT_FAULT_ROUNDS=100 cargo test -p raftkit-examples --test
//! storage_faults -- --nocapture` runs more and prints the figures (faults by kind and file,
//! repair times).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use raft_core::NodeId;
use raftkit_examples::client::Client;
use raftkit_examples::cluster::{ClusterOptions, LocalCluster};
use raftkit_examples::resp::Reply;

const WAIT: Duration = Duration::from_secs(30);
/// How long a damaged node may take to serve again with a copy equal to the others'.
const REPAIR_BOUND: Duration = Duration::from_secs(10);

/// A small deterministic generator (xorshift), so a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Every regular file under `dir` with a written part, and that part's length (a WAL segment is
/// preallocated: its written part ends at its last non-zero byte). Files an earlier round's
/// damage had set aside (`damaged-N/`, `*.damaged`) are no longer read by the node: left out.
fn files_with_data(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("damaged-") || name.ends_with(".damaged") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let written = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64;
            if written > 0 {
                out.push((path, written));
            }
        }
    }
    out.sort();
    out
}

/// What kind of file a path is, for the figures.
fn file_kind(path: &Path) -> &'static str {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".wal") {
        "wal-segment"
    } else if name.starts_with("prepared-") {
        "wal-prepared"
    } else if name.ends_with(".snap") || path.parent().is_some_and(|p| p.ends_with("snapshots")) {
        "snapshot"
    } else if name.starts_with("VOTES-") {
        "wal-votes-copy"
    } else if name == "DAMAGE" {
        "wal-damage-record"
    } else {
        "other"
    }
}

/// Damages `path` within its first `written` bytes: flips 1-64 bytes, or zeroes a 4 KiB block.
fn damage(rng: &mut Rng, path: &Path, written: u64) -> String {
    let mut bytes = std::fs::read(path).expect("read");
    let what = if rng.below(2) == 0 {
        let len = 1 + rng.below(64.min(written));
        let at = rng.below(written - len + 1);
        for b in &mut bytes[at as usize..(at + len) as usize] {
            *b ^= (1 + rng.below(255)) as u8;
        }
        format!("flip {len} bytes at {at}")
    } else {
        let block = rng.below(written.div_ceil(4096)) * 4096;
        let end = (block + 4096).min(bytes.len() as u64);
        bytes[block as usize..end as usize].fill(0);
        format!("zero 4 KiB block at {block}")
    };
    std::fs::write(path, &bytes).expect("write");
    what
}

/// Writes `k<i> = v<i>` for i = 0, 1, ... through any running node until told to stop;
/// records what was acknowledged.
fn writer(addrs: Vec<SocketAddr>, acked: Arc<Mutex<Vec<u64>>>, stop: Arc<AtomicBool>) {
    let mut i = 0u64;
    let mut node = 0usize;
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Client::connect(addrs[node % addrs.len()], Duration::from_secs(2)) {
                Ok(c) => client.insert(c),
                Err(_) => {
                    node += 1;
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        match c.call(&[b"SET", k.as_bytes(), v.as_bytes()]) {
            Ok(Reply::Simple(ok)) if ok == "OK" => {
                acked.lock().push(i);
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            _ => {
                // Not done, or unknown: move to another node and write the same key again.
                client = None;
                node += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Node `id`'s own values of `keys`, in batches.
fn local(cluster: &LocalCluster, id: NodeId, keys: &[String]) -> Option<Vec<Option<String>>> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        out.extend(cluster.local_values(id, chunk).ok()?);
    }
    Some(out)
}

fn field(cluster: &LocalCluster, id: NodeId, name: &str) -> Option<String> {
    let info = cluster.info(id).ok()?;
    info.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// Whether node `id` serves again, healthy, holding every key acknowledged before `keys` was
/// taken with the value the leader holds.
fn repaired(cluster: &LocalCluster, id: NodeId, keys: &[String]) -> bool {
    if field(cluster, id, "health").as_deref() != Some("healthy") {
        return false;
    }
    let Some((leader, _)) = cluster.wait_for_leader(Duration::from_millis(500)) else {
        return false;
    };
    let (Some(mine), Some(theirs)) = (local(cluster, id, keys), local(cluster, leader, keys))
    else {
        return false;
    };
    mine == theirs && mine.iter().zip(keys).all(|(v, k)| v.as_deref() == Some(&k.replace('k', "v")))
}

#[test]
fn one_bad_disk_at_a_time_loses_no_acknowledged_write() {
    let rounds: usize =
        std::env::var("RAFTKIT_FAULT_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(20);
    let seed: u64 =
        std::env::var("RAFTKIT_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED);
    let mut rng = Rng(seed | 1);
    // Snapshots every few hundred entries, so snapshot files are damaged too.
    let options = ClusterOptions { snapshot_entries: 300, ..ClusterOptions::default() };
    let mut cluster =
        LocalCluster::start(env!("CARGO_BIN_EXE_kv-server"), Vec::new(), &options).expect("start");
    cluster.wait_for_leader(WAIT).expect("a leader");
    let addrs: Vec<SocketAddr> = cluster.ids().iter().map(|&id| cluster.client_addr(id)).collect();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writing = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || writer(addrs, acked, stop))
    };
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    let mut repair_ms: Vec<u128> = Vec::new();
    std::thread::sleep(Duration::from_millis(500));
    for round in 0..rounds {
        let id = 1 + rng.below(3);
        cluster.kill(id).expect("kill");
        let dir = cluster.data_dir(id).expect("data dir");
        let files = files_with_data(&dir);
        let (path, written) = files[rng.below(files.len() as u64) as usize].clone();
        let what = damage(&mut rng, &path, written);
        let kind = format!("{} ({})", file_kind(&path), what.split(' ').next().unwrap_or(""));
        *by_kind.entry(kind).or_default() += 1;
        let keys: Vec<String> = acked.lock().iter().map(|i| format!("k{i}")).collect();
        let started = Instant::now();
        cluster.spawn(id).expect("spawn");
        let log_tail = |cluster: &LocalCluster| {
            let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        loop {
            if cluster.exited(id) {
                panic!(
                    "round {round} (seed {seed}): node {id} did not start after {what} in {}:\n{}",
                    path.display(),
                    log_tail(&cluster)
                );
            }
            if repaired(&cluster, id, &keys) {
                break;
            }
            if started.elapsed() > REPAIR_BOUND {
                panic!(
                    "round {round} (seed {seed}): node {id} not serving an equal copy {:?} after \
                     {what} in {} (health {:?}):\n{}",
                    REPAIR_BOUND,
                    path.display(),
                    field(&cluster, id, "health"),
                    log_tail(&cluster)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        repair_ms.push(started.elapsed().as_millis());
        eprintln!(
            "round {round}: node {id}, {what} in {}: serving an equal copy after {} ms",
            path.strip_prefix(cluster.dir()).unwrap_or(&path).display(),
            started.elapsed().as_millis()
        );
    }
    stop.store(true, Ordering::Relaxed);
    writing.join().expect("writer");
    // Every acknowledged write is on every node.
    let keys: Vec<String> = acked.lock().iter().map(|i| format!("k{i}")).collect();
    let (leader, _) = cluster.wait_for_leader(WAIT).expect("a leader");
    let commit: u64 = field(&cluster, leader, "commit_index").and_then(|c| c.parse().ok()).unwrap();
    assert!(cluster.wait_applied(commit, WAIT), "nodes did not apply {commit}");
    for id in cluster.ids() {
        let values = local(&cluster, id, &keys).expect("local values");
        for (k, v) in keys.iter().zip(values) {
            assert_eq!(v.as_deref(), Some(k.replace('k', "v").as_str()), "node {id} lost {k}");
        }
    }
    repair_ms.sort_unstable();
    eprintln!(
        "{rounds} rounds (seed {seed}), {} acknowledged writes, none lost; faults: {by_kind:?}; \
         serving an equal copy after a median of {} ms, at most {} ms",
        keys.len(),
        repair_ms[repair_ms.len() / 2],
        repair_ms[repair_ms.len() - 1]
    );
}
