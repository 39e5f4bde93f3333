//! Background scrubbing finds damaged entries in sealed segments before they are read, hands
//! them to the node, and makes reads of the segment check every payload from then on.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::{Entry, LogStore, LogWrite, StorageError};
use raft_wal::{Durability, Wal, WalConfig};

fn config(scrub: u64) -> WalConfig {
    WalConfig {
        segment_size_bytes: 64 << 10,
        durability: Durability::Always,
        prepared_segments: 1,
        scrub_bytes_per_sec: scrub,
        ..WalConfig::default()
    }
}

fn entry(index: u64) -> Entry {
    Entry::normal(1, index, Bytes::from(vec![b'a' + (index % 26) as u8; 500]))
}

/// Writes entries 1..=400 of group 1 (several 64 KiB segments) one per record; returns where
/// entry `target`'s payload starts (segment, offset).
fn fill(wal: &Wal, target: u64) -> (u64, u64) {
    let mut at = (0, 0);
    for i in 1..=400 {
        let p = wal.durable_position();
        if i == target {
            // Record header, entries table (24 bytes and one 16-byte row), then the payload.
            at = (p.segment, p.offset + 32 + 24 + 16);
        }
        let lsn =
            wal.write(&[LogWrite { group: 1, hard_state: None, entries: &[entry(i)] }]).unwrap();
        wal.sync(lsn).unwrap();
    }
    at
}

fn flip(dir: &Path, segment: u64, offset: u64) {
    let path = dir.join(format!("{segment:020}.wal"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize + 3] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
}

fn wait_found(wal: &Wal) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(index) = wal.take_damage_found(1) {
            return index;
        }
        assert!(Instant::now() < deadline, "scrubbing found nothing: {:?}", wal.stats());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn scrubbing_finds_a_damaged_entry_in_a_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offset) = {
        let (wal, _) = Wal::open(dir.path(), config(0)).unwrap();
        let at = fill(&wal, 10);
        wal.close().unwrap();
        at
    };
    flip(dir.path(), segment, offset);
    let (wal, _) = Wal::open(dir.path(), config(64 << 20)).unwrap();
    assert_eq!(wait_found(&wal), 10);
    let stats = wal.stats();
    assert_eq!(stats.scrub_damaged, 1);
    assert!(stats.scrubbed_bytes > 0);
    assert!(matches!(
        wal.entries(1, 10, 10, u64::MAX),
        Err(StorageError::Damaged { group: 1, index: 10, .. })
    ));
    // Taken once: the node repairs it.
    assert_eq!(wal.take_damage_found(1), None);
}

#[test]
fn damage_under_a_running_wal_is_found_and_then_checked_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config(64 << 20)).unwrap();
    let (segment, offset) = fill(&wal, 20);
    // The segment was written by this process, so reads trust it; the disk changes under it.
    flip(dir.path(), segment, offset);
    assert_eq!(wait_found(&wal), 20);
    assert!(matches!(
        wal.entries(1, 20, 20, u64::MAX),
        Err(StorageError::Damaged { group: 1, index: 20, .. })
    ));
    assert_eq!(wal.entries(1, 21, 21, u64::MAX).unwrap(), vec![entry(21)]);
}

#[test]
fn scrubbing_off_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config(0)).unwrap();
    fill(&wal, 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(wal.stats().scrubbed_bytes, 0);
}

/// A round crosses many groups and holds the state lock for a slice at a time: damage in a
/// late group, past many slices of the round, is found all the same.
#[test]
fn damage_in_a_late_group_is_found_across_the_slices_of_a_round() {
    let dir = tempfile::tempdir().unwrap();
    // Each group's entries span more than a slice's 64 KiB, and the target comes after the
    // first slice that ends in its group.
    let (groups, per_group, target) = (4u64, 150u64, (2u64, 140u64));
    let (segment, offset) = {
        let (wal, _) = Wal::open(dir.path(), config(0)).unwrap();
        let mut at = (0, 0);
        for g in 1..=groups {
            for i in 1..=per_group {
                let p = wal.durable_position();
                if (g, i) == target {
                    at = (p.segment, p.offset + 32 + 24 + 16);
                }
                let w = LogWrite { group: g, hard_state: None, entries: &[entry(i)] };
                let lsn = wal.write(&[w]).unwrap();
                wal.sync(lsn).unwrap();
            }
        }
        assert!(at.0 < wal.durable_position().segment, "the target is in a sealed segment");
        wal.close().unwrap();
        at
    };
    flip(dir.path(), segment, offset);
    let (wal, _) = Wal::open(dir.path(), config(64 << 20)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        if let Some(index) = wal.take_damage_found(target.0) {
            break index;
        }
        assert!(Instant::now() < deadline, "scrubbing found nothing: {:?}", wal.stats());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(found, target.1);
    assert_eq!(wal.stats().scrub_damaged, 1, "nothing else is damaged");
    for g in (1..=groups).filter(|&g| g != target.0) {
        assert_eq!(wal.take_damage_found(g), None);
    }
}
