//! Opening a damaged WAL: the log is rebuilt from what can be trusted, the damaged segments are
//! kept aside, and each group's loss is reported (and kept in the `DAMAGE` file) until the node
//! says it repaired it.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft_core::{Entry, HardState, LogDamage, LogStore, LogWrite, StorageError};
use raft_wal::{Durability, RecoveryMode, Wal, WalConfig, WalError};

fn config() -> WalConfig {
    WalConfig {
        segment_size_bytes: 64 << 10,
        durability: Durability::Always,
        prepared_segments: 1,
        ..WalConfig::default()
    }
}

fn entry(group: u64, index: u64, term: u64) -> Entry {
    let mut data = format!("g{group}i{index}t{term}:").into_bytes();
    data.resize(data.len() + (index % 50) as usize, b'a' + (index % 26) as u8);
    Entry::normal(term, index, Bytes::from(data))
}

/// Appends `lo..=hi` of term 2 to `group`, with a hard state (term 2, voted for 2, commit `lo`).
fn append(wal: &Wal, group: u64, lo: u64, hi: u64) {
    let es: Vec<Entry> = (lo..=hi).map(|i| entry(group, i, 2)).collect();
    let hs = HardState { term: 2, vote: Some(2), commit: lo - 1 };
    let lsn = wal.write(&[LogWrite { group, hard_state: Some(hs), entries: &es }]).unwrap();
    wal.sync(lsn).unwrap();
}

/// Appends `lo..=hi` of term 2 to `group` in one record, then a hard state in a record of its
/// own.
fn append_then_hard_state(wal: &Wal, group: u64, lo: u64, hi: u64) {
    let es: Vec<Entry> = (lo..=hi).map(|i| entry(group, i, 2)).collect();
    wal.write(&[LogWrite { group, hard_state: None, entries: &es }]).unwrap();
    let hs = HardState { term: 2, vote: Some(2), commit: lo - 1 };
    let lsn = wal.write(&[LogWrite { group, hard_state: Some(hs), entries: &[] }]).unwrap();
    wal.sync(lsn).unwrap();
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// A log of groups 1 and 2 with 30 batches each, interleaved; returns where the record of group
/// 1's batch `broken` (entries `broken*3+1 ..= broken*3+3`) starts.
fn two_groups(dir: &Path, broken: u64) -> (u64, u64) {
    let (wal, _) = Wal::open(dir, config()).unwrap();
    let mut at = (0, 0);
    for b in 0..30 {
        if b == broken {
            let p = wal.durable_position();
            at = (p.segment, p.offset);
        }
        append(&wal, 1, b * 3 + 1, b * 3 + 3);
        append(&wal, 2, b * 2 + 1, b * 2 + 2);
    }
    wal.close().unwrap();
    at
}

fn flip(dir: &Path, segment: u64, offset: u64) {
    let path = segment_path(dir, segment);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
}

#[test]
fn a_damaged_record_is_salvaged_and_every_group_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offset) = two_groups(dir.path(), 10);
    // A flipped bit in the header of group 1's batch 10 (entries 31..=33).
    flip(dir.path(), segment, offset + 20);
    let (wal, report) = Wal::open(dir.path(), config()).unwrap();
    let salvage = report.salvage.clone().expect("salvaged");
    assert_eq!(salvage.holes.len(), 1, "{salvage:?}");
    assert!(salvage.quarantine.join(format!("{segment:020}.wal")).exists(), "kept aside");
    // Group 1 keeps 1..=30; its log ended at 90 (term 2). Group 2's log is cut where it stood
    // when the hole began (its batch 9 is before it: 1..=20), and it ended at 60.
    let d1 = LogDamage::new(31, Some((90, 2)));
    let d2 = LogDamage::new(21, Some((60, 2)));
    assert_eq!(report.damage.get(&1), Some(&d1));
    assert_eq!(report.damage.get(&2), Some(&d2));
    assert_eq!(wal.damage(1), Some(d1));
    for (group, last) in [(1, 30), (2, 20)] {
        let s = wal.log_state(group).unwrap();
        assert_eq!(s.last_index, last);
        assert_eq!((s.hard_state.term, s.hard_state.vote), (2, Some(2)), "the newest hard state");
        assert!(s.hard_state.commit <= last, "the commit index stays within the kept log");
        let es = wal.entries(group, 1, last, u64::MAX).unwrap();
        assert!(es.iter().all(|e| *e == entry(group, e.index, 2)), "intact entries kept");
    }
    // The node gets its entries back; the damage is remembered until it says so.
    let es: Vec<Entry> = (31..=90).map(|i| entry(1, i, 2)).collect();
    wal.write(&[LogWrite { group: 1, hard_state: None, entries: &es }]).unwrap();
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), config()).unwrap();
    assert!(report.salvage.is_none(), "the new log is whole");
    assert_eq!(wal.damage(1), Some(d1), "a restart before the repair is marked keeps it");
    assert_eq!(wal.log_state(1).unwrap().last_index, 90);
    wal.mark_repaired(1).unwrap();
    assert_eq!(wal.damage(1), None);
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), config()).unwrap();
    assert_eq!(wal.damage(1), None);
    assert_eq!(report.damage.keys().copied().collect::<Vec<_>>(), vec![2]);
    wal.mark_repaired(2).unwrap();
    drop(wal);
    assert!(!dir.path().join("DAMAGE").exists(), "nothing left to repair");
}

#[test]
fn the_strict_mode_still_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offset) = two_groups(dir.path(), 10);
    flip(dir.path(), segment, offset + 20);
    let strict = WalConfig { recovery: RecoveryMode::Strict, ..config() };
    assert!(matches!(Wal::open(dir.path(), strict), Err(WalError::Corrupt { .. })));
}

#[test]
fn a_damaged_payload_behind_a_hole_cuts_its_group_earlier() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    let mut at = Vec::new();
    for b in 0..20 {
        at.push(wal.durable_position());
        append_then_hard_state(&wal, 1, b * 3 + 1, b * 3 + 3);
    }
    wal.close().unwrap();
    // A payload byte of entry 16 (batch 5) and the header of batch 12.
    let first_payload = at[5].offset + 32 + 24 + 3 * 16;
    flip(dir.path(), at[5].segment, first_payload + 2);
    flip(dir.path(), at[12].segment, at[12].offset + 20);
    let (wal, report) = Wal::open(dir.path(), config()).unwrap();
    assert_eq!(wal.log_state(1).unwrap().last_index, 15);
    assert_eq!(report.damage.get(&1), Some(&LogDamage::new(16, Some((60, 2)))));
    assert_eq!(report.salvage.unwrap().damaged_entries, 1);
}

/// Ten synced batches of group 1; the hard state changes with batches 0 and 4 (4 is where the
/// damage goes). Returns where each batch starts.
fn votes_then_hole(dir: &Path) -> Vec<raft_wal::DurablePosition> {
    let (wal, _) = Wal::open(dir, config()).unwrap();
    let mut at = Vec::new();
    for b in 0..10u64 {
        at.push(wal.durable_position());
        let hs = match b {
            0 => Some(HardState { term: 4, vote: Some(1), commit: 0 }),
            4 => Some(HardState { term: 5, vote: Some(2), commit: 0 }),
            _ => None,
        };
        let es: Vec<Entry> = (b * 2 + 1..=b * 2 + 2).map(|i| entry(1, i, 4)).collect();
        let lsn = wal.write(&[LogWrite { group: 1, hard_state: hs, entries: &es }]).unwrap();
        wal.sync(lsn).unwrap();
    }
    wal.close().unwrap();
    flip(dir, at[4].segment, at[4].offset + 20);
    at
}

/// The record holding a vote is lost in a hole, with no hard state after it: the vote comes
/// from its second copy, which the sync that made it durable wrote.
#[test]
fn a_vote_lost_in_a_hole_comes_from_its_second_copy() {
    let dir = tempfile::tempdir().unwrap();
    votes_then_hole(dir.path());
    let (wal, report) = Wal::open(dir.path(), config()).unwrap();
    let hs = wal.log_state(1).unwrap().hard_state;
    assert_eq!((hs.term, hs.vote), (5, Some(2)), "the newest vote, from the copy");
    assert_eq!(report.salvage.unwrap().votes_from_copy, vec![1]);
    assert_eq!(report.damage.get(&1).map(|d| d.from), Some(9), "the log is cut at the hole");
}

/// With both copies of the vote lost (two faults), the node must not start: it could vote twice
/// in a term.
#[test]
fn a_group_whose_vote_and_its_copy_are_lost_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    votes_then_hole(dir.path());
    for name in ["VOTES-A", "VOTES-B"] {
        let path = dir.path().join(name);
        let mut bytes = std::fs::read(&path).unwrap();
        if !bytes.is_empty() {
            bytes[12] ^= 0x20;
            std::fs::write(&path, &bytes).unwrap();
        }
    }
    match Wal::open(dir.path(), config()) {
        Err(WalError::HardStateLost { group: 1, .. }) => {}
        other => panic!("expected the hard state refused, got {:?}", other.map(|(_, r)| r)),
    }
}

/// The log's last synced batch, holding a vote, is damaged with nothing written after it: it
/// looks like a torn write and is cut, but the copy of the vote is newer than what is left, so
/// the group gets its vote back and is reported damaged (its last entries may be gone too).
#[test]
fn a_copy_newer_than_the_log_reveals_a_lost_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    append_then_hard_state(&wal, 1, 1, 3);
    let tail = wal.durable_position();
    let es: Vec<Entry> = (4..=5).map(|i| entry(1, i, 7)).collect();
    let hs = HardState { term: 7, vote: Some(3), commit: 3 };
    let lsn = wal.write(&[LogWrite { group: 1, hard_state: Some(hs), entries: &es }]).unwrap();
    wal.sync(lsn).unwrap();
    wal.close().unwrap();
    flip(dir.path(), tail.segment, tail.offset + 20);
    let (wal, report) = Wal::open(dir.path(), config()).unwrap();
    assert!(report.salvage.is_none(), "a damaged tail is cut like a torn write");
    let state = wal.log_state(1).unwrap();
    assert_eq!((state.hard_state.term, state.hard_state.vote), (7, Some(3)));
    assert_eq!(state.last_index, 3);
    assert_eq!(wal.damage(1), Some(LogDamage::new(4, None)), "the lost tail is reported");
}

#[test]
fn a_read_of_a_damaged_payload_names_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    let start = wal.durable_position();
    append_then_hard_state(&wal, 1, 1, 3);
    append_then_hard_state(&wal, 1, 4, 6);
    wal.close().unwrap();
    flip(dir.path(), start.segment, start.offset + 32 + 24 + 3 * 16 + 1);
    let (wal, report) = Wal::open(dir.path(), config()).unwrap();
    assert!(report.salvage.is_none(), "payloads of durable records are checked when read");
    match wal.entries(1, 1, 6, u64::MAX) {
        Err(StorageError::Damaged { group: 1, index: 1, .. }) => {}
        other => panic!("expected entry 1 damaged, got {other:?}"),
    }
}

#[test]
fn a_group_reset_keeps_its_hard_state_and_reports_what_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    for b in 0..5 {
        append(&wal, 1, b * 2 + 1, b * 2 + 2);
        append(&wal, 2, b + 1, b + 1);
    }
    wal.close().unwrap();
    raft_wal::salvage::reset_group(dir.path(), &config(), 1).unwrap();
    let (wal, report) = Wal::open(dir.path(), config()).unwrap();
    let s = wal.log_state(1).unwrap();
    assert_eq!((s.first_index, s.last_index), (1, 0), "group 1's log is gone");
    assert_eq!((s.hard_state.term, s.hard_state.vote), (2, Some(2)), "its term and vote kept");
    assert_eq!(report.damage.get(&1), Some(&LogDamage::new(1, Some((10, 2)))));
    assert_eq!(wal.log_state(2).unwrap().last_index, 5, "other groups keep their logs");
    assert_eq!(wal.damage(2), None);
}

#[test]
fn a_damaged_first_entry_leaves_its_group_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    let mut at = Vec::new();
    for b in 0..8 {
        at.push(wal.durable_position());
        append_then_hard_state(&wal, 1, b * 3 + 1, b * 3 + 3);
    }
    wal.close().unwrap();
    flip(dir.path(), at[0].segment, at[0].offset + 32 + 24 + 3 * 16 + 1);
    flip(dir.path(), at[5].segment, at[5].offset + 20);
    let (wal, report) = Wal::open(dir.path(), config()).unwrap();
    assert_eq!(wal.log_state(1).unwrap().last_index, 0);
    assert_eq!(report.damage.get(&1), Some(&LogDamage::new(1, Some((24, 2)))));
}
