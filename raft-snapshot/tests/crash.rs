//! Crash tests with real processes. A child process (this test binary, re-executed) takes
//! snapshots and receives snapshots chunk by chunk, in a loop, reporting each one after
//! `finish` returns; the parent kills it with SIGKILL at a random moment and reopens the store:
//! the newest snapshot must be complete and verified, at least as new as the last one the
//! child reported, with exactly the bytes that snapshot was made of, and no temporary file may
//! survive the reopen.
//!
//! `RAFT_SNAPSHOT_CRASH_ITERATIONS` sets the number of kills (default 100).

#![allow(clippy::unwrap_used, clippy::print_stdout)] // Test code.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft_core::ready::{SnapshotChunk, SnapshotRequest};
use raft_core::rng::Rng;
use raft_core::snapshot::SnapshotReceiver;
use raft_core::SnapshotStore;
use raft_snapshot::{format, FileSnapshotStore, SnapshotStoreOptions};

const CHILD_DIR: &str = "RAFT_SNAPSHOT_CRASH_CHILD_DIR";

fn options() -> SnapshotStoreOptions {
    SnapshotStoreOptions { frame_bytes: 4096, retain: 2, ..SnapshotStoreOptions::default() }
}

/// The bytes of the snapshot at `index`: verifiable from the index alone.
fn content(index: u64) -> Vec<u8> {
    let len = ((index * 7919) % 60_000) as usize;
    let mut rng = Rng::new(index);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// The child: writes snapshots until killed, alternating between taking one and receiving one.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let (store, _) = FileSnapshotStore::open(&dir, options()).unwrap();
    let mut index = store.latest(1).unwrap().map_or(0, |m| m.index);
    let mut receiver = SnapshotReceiver::new();
    let stdout = std::io::stdout();
    loop {
        index += 1;
        let bytes = content(index);
        let request = SnapshotRequest {
            group: 1,
            index,
            term: 1 + index / 10,
            membership: raft_core::Membership::new([1, 2, 3]),
        };
        let meta = if index % 2 == 0 {
            let mut w = store.create(&request).unwrap();
            for piece in bytes.chunks(1000) {
                w.write_all(piece).unwrap();
            }
            w.finish().unwrap()
        } else {
            let meta = request.meta_with(bytes.len() as u64, crc32c::crc32c(&bytes));
            let mut offset = 0;
            loop {
                let end = (offset + 3000).min(bytes.len());
                let chunk = SnapshotChunk {
                    from: 2,
                    meta: meta.clone(),
                    offset: offset as u64,
                    data: bytes::Bytes::copy_from_slice(&bytes[offset..end]),
                    done: end == bytes.len(),
                };
                receiver.write(&store, &chunk).unwrap();
                if chunk.done {
                    break;
                }
                offset = end;
            }
            meta
        };
        let mut out = stdout.lock();
        writeln!(out, "D {}", meta.index).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_at_random_moments_leaves_a_complete_snapshot() {
    let iterations: usize = std::env::var("RAFT_SNAPSHOT_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(2026);
    let mut reported_total = 0;
    let mut removed_total = 0;
    for iteration in 0..iterations {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let last = Arc::new(Mutex::new(None::<u64>));
        let reader = {
            let last = Arc::clone(&last);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(index) = line.strip_prefix("D ").and_then(|x| x.parse().ok()) {
                        *last.lock().unwrap() = Some(index);
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.range(5, 60)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let reported = *last.lock().unwrap();
        reported_total += usize::from(reported.is_some());
        let (store, report) = FileSnapshotStore::open(dir.path(), options())
            .unwrap_or_else(|e| panic!("iteration {iteration}: reopen failed: {e}"));
        removed_total += report.temp_files_removed;
        let latest = store.latest(1).unwrap();
        if let Some(reported) = reported {
            let latest = latest.as_ref().unwrap_or_else(|| {
                panic!("iteration {iteration}: snapshot {reported} was reported, none found")
            });
            assert!(
                latest.index >= reported,
                "iteration {iteration}: snapshot {reported} was reported, newest is {}",
                latest.index
            );
        }
        if let Some(meta) = latest {
            // Complete and verified (open checked it whole), and exactly its bytes.
            let mut r = store.open(&meta).unwrap();
            let bytes = r.read_at(0, meta.size as usize).unwrap();
            assert_eq!(&bytes[..], &content(meta.index)[..], "iteration {iteration}");
        }
        let temps = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| format::is_temp_name(n))
            .count();
        assert_eq!(temps, 0, "iteration {iteration}: temporary files survived the reopen");
    }
    println!(
        "{iterations} kills; {reported_total} runs reported a finished snapshot before the kill; \
         {removed_total} unfinished files removed at reopen"
    );
    assert!(reported_total > iterations / 2, "the child rarely finished a snapshot");
    assert!(removed_total > 0, "no kill ever landed inside a write");
}
