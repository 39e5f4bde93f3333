//! raft-core's log store conformance suite against the raft-engine store (many groups, reopen
//! after sync, concurrent writers, a random model), plus a restart mid-write.

#![cfg(feature = "raft-engine")]
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use raft_core::testkit::StoreHarness;
use raft_core::LogStore;
use raftkit_examples::engine_store::EngineStore;

struct EngineHarness {
    dir: tempfile::TempDir,
}

impl StoreHarness for EngineHarness {
    type Store = EngineStore;

    fn open(&mut self) -> EngineStore {
        EngineStore::open(self.dir.path()).unwrap()
    }
}

fn harness() -> EngineHarness {
    EngineHarness { dir: tempfile::tempdir().unwrap() }
}

raft_core::log_store_conformance!(engine, crate::harness());

/// A child process (this test binary, re-run) writes to four groups and syncs in a loop,
/// printing what each sync made durable; it is killed with SIGKILL at a random moment. The
/// reopened store must hold every entry reported durable, intact, in every group.
#[test]
fn sigkill_loses_nothing_reported_durable() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    if let Ok(dir) = std::env::var("RAFTKIT_ENGINE_CRASH_CHILD") {
        child(std::path::Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rounds: u64 = std::env::var("RAFTKIT_ENGINE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut reported = 0;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "sigkill_loses_nothing_reported_durable", "--nocapture"])
            .env("RAFTKIT_ENGINE_CRASH_CHILD", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = Duration::from_millis(50 + (round * 37) % 200);
        let reader = std::thread::spawn(move || {
            let mut durable = [0u64; 4];
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("durable ") {
                    let v: Vec<u64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
                    if v.len() == 2 {
                        durable[v[0] as usize] = durable[v[0] as usize].max(v[1]);
                    }
                }
            }
            durable
        });
        let started = Instant::now();
        while started.elapsed() < kill_after {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let durable = reader.join().unwrap();
        reported = durable.iter().sum::<u64>().max(reported);
        let store = EngineStore::open(dir.path()).unwrap();
        for (group, &index) in durable.iter().enumerate() {
            let state = store.log_state(group as u64).unwrap();
            assert!(
                state.last_index >= index,
                "round {round}: group {group} reported {index} durable, holds {}",
                state.last_index
            );
            if index > 0 {
                let entries = store.entries(group as u64, 1, index, u64::MAX).unwrap();
                for e in &entries {
                    assert_eq!(e.data, payload(group as u64, e.index), "round {round}");
                }
            }
        }
    }
    assert!(reported > 1000, "the children made only {reported} entries durable");
}

fn payload(group: u64, index: u64) -> bytes::Bytes {
    bytes::Bytes::from(format!("g{group}i{index}:{}", "x".repeat((index % 97) as usize)))
}

/// The child: appends batches to four groups from where each left off, syncs, reports.
fn child(dir: &std::path::Path) {
    use std::io::Write;
    let store = EngineStore::open(dir).unwrap();
    let mut next: Vec<u64> = (0..4).map(|g| store.log_state(g).unwrap().last_index + 1).collect();
    let out = std::io::stdout();
    loop {
        let batches: Vec<Vec<raft_core::Entry>> = (0..4u64)
            .map(|g| {
                let first = next[g as usize];
                (first..first + 16).map(|i| raft_core::Entry::normal(1, i, payload(g, i))).collect()
            })
            .collect();
        let writes: Vec<raft_core::LogWrite<'_>> = batches
            .iter()
            .enumerate()
            .map(|(g, entries)| raft_core::LogWrite { group: g as u64, hard_state: None, entries })
            .collect();
        let lsn = store.write(&writes).unwrap();
        store.sync(lsn).unwrap();
        let mut lock = out.lock();
        for (g, entries) in batches.iter().enumerate() {
            next[g] += entries.len() as u64;
            let _ = writeln!(lock, "durable {g} {}", next[g] - 1);
        }
        let _ = lock.flush();
    }
}
