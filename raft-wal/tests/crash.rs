//! Crash tests with real processes. A child process (this test binary, re-executed) appends,
//! truncates and compacts on several groups from several threads and reports each position
//! after its sync returns; the parent kills it with SIGKILL at a random moment, sometimes also
//! emulates a power loss past the last reported durable position, and reopens: every reported
//! durable entry must be there, in order, with its exact payload.
//!
//! A power loss is emulated only if no segment was retired after the last report: a retirement
//! syncs everything first, so the WAL was durable further than the report says, and wiping
//! what it synced is not something a power loss can do.
//!
//! `RAFT_WAL_CRASH_ITERATIONS` sets the number of kills (default 200), `RAFT_WAL_CRASH_SEED`
//! the seed of their timing (default 2026).

#![allow(clippy::unwrap_used, clippy::print_stdout)] // Test code.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use raft_core::rng::Rng;
use raft_core::{Entry, HardState, LogStore, LogWrite};
use raft_wal::testkit::{oldest_segment, power_loss, Leftover};
use raft_wal::{AppendVia, Durability, DurablePosition, Wal, WalConfig};

const CHILD_DIR: &str = "RAFT_WAL_CRASH_CHILD_DIR";
const CHILD_SEED: &str = "RAFT_WAL_CRASH_CHILD_SEED";
const GROUPS: u64 = 4;

fn config(durability: Durability) -> WalConfig {
    WalConfig {
        segment_size_bytes: 256 << 10,
        durability,
        prepared_segments: 1,
        ..WalConfig::default()
    }
}

/// Children alternate between appending with write calls and through the mapping.
fn child_config(seed: u64) -> WalConfig {
    let append_via = if (seed / 2).is_multiple_of(2) { AppendVia::Write } else { AppendVia::Mmap };
    WalConfig { append_via, ..config(durability_for(seed)) }
}

fn durability_for(seed: u64) -> Durability {
    if seed.is_multiple_of(2) {
        Durability::group_commit()
    } else {
        Durability::Always
    }
}

/// The payload of entry `index` of term `term` in `group`: verifiable from its identity alone.
fn payload(group: u64, index: u64, term: u64) -> Bytes {
    // A third of the payloads are long enough to be written from the caller's buffer.
    let len = ((group * 7919 + index * 104_729 + term * 31) % 9000) as usize;
    let mut data = format!("g{group}:i{index}:t{term}|").into_bytes();
    let fill = (index % 251) as u8;
    data.resize(data.len() + len, fill);
    Bytes::from(data)
}

/// The child: runs until killed.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let seed: u64 = std::env::var(CHILD_SEED).unwrap().parse().unwrap();
    let (wal, _) = Wal::open(&dir, child_config(seed)).unwrap();
    let wal = Arc::new(wal);
    let out = Arc::new(Mutex::new(()));
    let threads: Vec<_> = (1..=GROUPS)
        .map(|group| {
            let wal = Arc::clone(&wal);
            let out = Arc::clone(&out);
            std::thread::spawn(move || child_writer(&wal, group, seed, &out))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn child_writer(wal: &Wal, group: u64, seed: u64, out: &Mutex<()>) {
    let mut rng = Rng::new(seed * 100 + group);
    let state = wal.log_state(group).unwrap();
    let mut last = state.last_index;
    let mut term = state.hard_state.term.max(1);
    loop {
        let from = if last >= state.first_index && last > 5 && rng.chance(0.1) {
            term += 1; // a new leader replaces a suffix
            rng.range(last - 4, last)
        } else {
            last + 1
        };
        let n = rng.range(1, 8);
        let entries: Vec<Entry> =
            (from..from + n).map(|i| Entry::normal(term, i, payload(group, i, term))).collect();
        let hs = HardState { term, vote: Some(group), commit: 0 };
        let lsn =
            wal.write(&[LogWrite { group, hard_state: Some(hs), entries: &entries }]).unwrap();
        wal.sync(lsn).unwrap();
        last = from + n - 1;
        // The oldest segment first: if it is still there, no retirement has synced past the
        // position read after it (see `raft_wal::testkit::power_loss`).
        let oldest = oldest_segment(wal.dir()).unwrap().unwrap_or(0);
        let p = wal.durable_position();
        {
            let _g = out.lock().unwrap();
            println!("D {group} {last} {term} {} {} {} {oldest}", p.seq, p.segment, p.offset);
        }
        if last > 3_000 && rng.chance(0.05) {
            let keep_from = last - 1_000;
            let t = wal.term(group, keep_from).unwrap();
            wal.compact(group, keep_from, t).unwrap();
        }
    }
}

/// What the parent learned from the child's reports.
#[derive(Default)]
struct Reports {
    /// Per group, the last reported durable `(last index, term)`.
    groups: HashMap<u64, (u64, u64)>,
    durable: Option<DurablePosition>,
    /// The newest "oldest segment" reported.
    oldest: u64,
    /// Syncs reported.
    count: u64,
}

fn check(dir: &std::path::Path, seed: u64, reports: &Reports, iteration: usize) {
    let (wal, report) = Wal::open(dir, config(durability_for(seed)))
        .unwrap_or_else(|e| panic!("iteration {iteration}: reopening failed: {e}"));
    assert!(report.corruption_cut.is_none());
    for group in 1..=GROUPS {
        let state = wal.log_state(group).unwrap();
        if let Some(&(index, term)) = reports.groups.get(&group) {
            // Either the reported entry is there, or a later durable write replaced it with a
            // higher term (Raft only ever replaces a suffix with a newer leader's entries).
            let at = index.min(state.last_index);
            let held = wal.term(group, at).unwrap_or(0);
            assert!(
                (at == index && held == term) || held > term,
                "iteration {iteration}: group {group} lost durable entry {index} (term {term}); log ends at {} with term {held} at {at}",
                state.last_index
            );
        }
        if state.last_index >= state.first_index {
            let entries =
                wal.entries(group, state.first_index, state.last_index, u64::MAX).unwrap();
            for (k, e) in entries.iter().enumerate() {
                assert_eq!(
                    e.index,
                    state.first_index + k as u64,
                    "iteration {iteration}: entries in order"
                );
                assert_eq!(
                    e.data,
                    payload(group, e.index, e.term),
                    "iteration {iteration}: group {group} entry {} corrupt",
                    e.index
                );
            }
        }
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_durable_entry() {
    let iterations: usize =
        std::env::var("RAFT_WAL_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base_seed =
        std::env::var("RAFT_WAL_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(2026);
    let mut rng = Rng::new(base_seed);
    let mut power_losses = 0;
    let mut synced = 0;
    for iteration in 0..iterations {
        let seed = rng.next_u64() % 1_000_000;
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_SEED, seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reports = Arc::new(Mutex::new(Reports::default()));
        let reader = {
            let reports = Arc::clone(&reports);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let f: Vec<u64> =
                        line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
                    if !line.starts_with("D ") || f.len() != 7 {
                        continue;
                    }
                    let mut r = reports.lock().unwrap();
                    r.count += 1;
                    r.oldest = r.oldest.max(f[6]);
                    r.groups.insert(f[0], (f[1], f[2]));
                    let p = DurablePosition { seq: f[3], segment: f[4], offset: f[5] };
                    if r.durable.is_none_or(|d| d.seq < p.seq) {
                        r.durable = Some(p);
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.range(5, 80)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let reports = std::mem::take(&mut *reports.lock().unwrap());
        synced += reports.count;
        let retired_since = oldest_segment(dir.path()).unwrap().unwrap_or(0) > reports.oldest;
        if iteration % 3 == 2 && !retired_since {
            if let Some(durable) = reports.durable {
                // The page cache survived the kill; emulate a power loss on top of it.
                let leftover = match iteration % 9 {
                    2 => Leftover::Zeros,
                    5 => Leftover::Garbage(rng.next_u64()),
                    _ => Leftover::Partial(rng.range(1, 200) as usize),
                };
                power_loss(dir.path(), durable, leftover).unwrap();
                power_losses += 1;
            }
        }
        check(dir.path(), seed, &reports, iteration);
    }
    let (wal, _) = Wal::open(dir.path(), config(Durability::Always)).unwrap();
    let sizes: Vec<u64> = (1..=GROUPS).map(|g| wal.log_state(g).unwrap().last_index).collect();
    println!(
        "{iterations} kills ({power_losses} with emulated power loss) after {synced} reported syncs; \
         last indexes {sizes:?}: no durable entry lost"
    );
    assert!(synced > iterations as u64, "the children made progress");
}
