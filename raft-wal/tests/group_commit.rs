//! Many threads appending and syncing at once, in every mode that syncs for its callers: each
//! sync returns only once its record is durable, and a reopen finds every entry.

#![allow(clippy::unwrap_used)] // Test code.

use std::sync::Arc;

use bytes::Bytes;
use raft_core::{Entry, LogStore, LogWrite};
use raft_wal::{Durability, Wal, WalConfig};

const THREADS: u64 = 8;
const APPENDS: u64 = 150;

fn payload(group: u64, index: u64) -> Bytes {
    Bytes::from(format!("group {group} entry {index}").repeat(8))
}

fn run(durability: Durability) {
    run_with(WalConfig { durability, ..WalConfig::default() });
}

fn run_with(config: WalConfig) {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig { segment_size_bytes: 256 << 10, prepared_segments: 1, ..config };
    let wal = Arc::new(Wal::open(dir.path(), config.clone()).unwrap().0);
    let threads: Vec<_> = (1..=THREADS)
        .map(|group| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                for index in 1..=APPENDS {
                    let es = [Entry::normal(1, index, payload(group, index))];
                    let lsn =
                        wal.write(&[LogWrite { group, hard_state: None, entries: &es }]).unwrap();
                    wal.sync(lsn).unwrap();
                    let durable = wal.stats().durable_seq;
                    assert!(durable >= lsn.0, "sync({}) returned at durable {durable}", lsn.0);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let stats = wal.stats();
    assert!(stats.syncs >= 1 && stats.syncs <= THREADS * APPENDS, "{stats:?}");
    drop(wal);
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    for group in 1..=THREADS {
        let got = wal.entries(group, 1, APPENDS, u64::MAX).unwrap();
        assert_eq!(got.len() as u64, APPENDS, "group {group}");
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.data, payload(group, i as u64 + 1), "group {group}");
        }
    }
}

#[test]
fn concurrent_appenders_always() {
    run(Durability::Always);
}

#[test]
fn concurrent_appenders_group_commit() {
    run(Durability::group_commit());
}

/// Waiters that sleep at once (no spinning) are woken by the rings that cover them, and
/// leaders that gather sleep until the arrival that completes the count.
#[test]
fn concurrent_appenders_group_commit_without_spinning() {
    run_with(WalConfig {
        durability: Durability::group_commit(),
        spin_wait: std::time::Duration::ZERO,
        ..WalConfig::default()
    });
}

/// Waiters that spin through whole syncs (the longest spin accepted).
#[test]
fn concurrent_appenders_group_commit_spinning_long() {
    run_with(WalConfig {
        durability: Durability::group_commit(),
        spin_wait: raft_wal::SPIN_WAIT_MAX,
        ..WalConfig::default()
    });
}

#[test]
fn concurrent_appenders_group_commit_with_delay() {
    run(Durability::GroupCommit {
        max_delay: std::time::Duration::from_micros(200),
        max_bytes: 64 << 10,
    });
}
