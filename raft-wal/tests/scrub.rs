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

/// The first damaged index scrubbing finds in group 1.
fn wait_found(wal: &Wal) -> u64 {
    wait_found_in(wal, 1)
}

/// The first damaged index scrubbing finds in `group`.
fn wait_found_in(wal: &Wal, group: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(index) = wal.take_damage_found(group) {
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
    assert_eq!(wait_found_in(&wal, target.0), target.1);
    assert_eq!(wal.stats().scrub_damaged, 1, "nothing else is damaged");
    for g in (1..=groups).filter(|&g| g != target.0) {
        assert_eq!(wal.take_damage_found(g), None);
    }
}

/// Writes entries 1..=`per_group` of each of `groups` groups, interleaved (group 1's entry 1,
/// group 2's entry 1, ...), one per record; returns where each record starts, by (group,
/// index): (segment, offset).
fn fill_interleaved(
    wal: &Wal,
    groups: u64,
    per_group: u64,
) -> std::collections::HashMap<(u64, u64), (u64, u64)> {
    let mut at = std::collections::HashMap::new();
    for i in 1..=per_group {
        for g in 1..=groups {
            let p = wal.durable_position();
            at.insert((g, i), (p.segment, p.offset));
            let w = LogWrite { group: g, hard_state: None, entries: &[entry(i)] };
            let lsn = wal.write(&[w]).unwrap();
            wal.sync(lsn).unwrap();
        }
    }
    at
}

/// Where the payload of the one-entry record starting at `record` is.
fn payload(record: (u64, u64)) -> (u64, u64) {
    (record.0, record.1 + 32 + 24 + 16)
}

/// With many groups' records interleaved in the segments (as groups writing one entry at a time
/// leave them), damage in any group's entry is found.
#[test]
fn damage_among_interleaved_groups_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config(64 << 20)).unwrap();
    let at = fill_interleaved(&wal, 8, 50);
    let (segment, offset) = payload(at[&(6, 7)]);
    assert!(segment < wal.durable_position().segment, "the target is in a sealed segment");
    flip(dir.path(), segment, offset);
    assert_eq!(wait_found_in(&wal, 6), 7);
    assert_eq!(wal.stats().scrub_damaged, 1, "nothing else is damaged");
}

/// A record header damaged under a running WAL (its checksum failing, or zeroed out) hides
/// nothing after it: the scrubber finds entries through the index, not by decoding records.
#[test]
fn damage_after_a_damaged_record_header_is_found() {
    for zeroed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), config(64 << 20)).unwrap();
        let at = fill_interleaved(&wal, 4, 30);
        let (header, target) = (at[&(2, 3)], at[&(3, 5)]);
        assert_eq!(header.0, target.0, "both in one segment");
        assert!(target.0 < wal.durable_position().segment, "the target is in a sealed segment");
        let path = dir.path().join(format!("{:020}.wal", header.0));
        let mut bytes = std::fs::read(&path).unwrap();
        let h = header.1 as usize;
        if zeroed {
            bytes[h..h + 32].fill(0);
        } else {
            bytes[h + 16] ^= 0x01; // The record's seq, under the header checksum.
        }
        std::fs::write(&path, &bytes).unwrap();
        let (segment, offset) = payload(target);
        flip(dir.path(), segment, offset);
        assert_eq!(wait_found_in(&wal, 3), 5, "zeroed header: {zeroed}");
    }
}

/// Entries that were truncated away are not live: damage in them is nobody's concern, and a
/// whole pass over the segment reports none.
#[test]
fn damage_in_entries_truncated_away_is_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config(64 << 20)).unwrap();
    let at = fill_interleaved(&wal, 1, 400);
    // Entries 51.. are replaced (a new leader's log), so their old copies are dead.
    let replaced = Entry::normal(2, 51, Bytes::from_static(b"new"));
    let lsn = wal.write(&[LogWrite { group: 1, hard_state: None, entries: &[replaced] }]).unwrap();
    wal.sync(lsn).unwrap();
    let dead = payload(at[&(1, 60)]);
    assert!(dead.0 < wal.durable_position().segment, "the old copy is in a sealed segment");
    let passes = wal.stats().scrub_passes;
    flip(dir.path(), dead.0, dead.1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while wal.stats().scrub_passes < passes + 2 {
        assert!(Instant::now() < deadline, "no pass completed: {:?}", wal.stats());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(wal.stats().scrub_damaged, 0);
    assert_eq!(wal.take_damage_found(1), None);
}
