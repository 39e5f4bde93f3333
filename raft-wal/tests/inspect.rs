//! `raft_wal::inspect`: an offline scan that reports damage instead of refusing. A healthy WAL
//! reads as healthy; a flipped byte in one entry's payload is reported as that entry; a damaged
//! record header is reported with where reading resumes, and the entries it held as missing,
//! while every record after it is still read.

#![allow(clippy::unwrap_used)] // Test code.

use bytes::Bytes;
use raft_core::{Entry, HardState, LogStore, LogWrite};
use raft_wal::inspect::inspect;
use raft_wal::{Durability, Wal, WalConfig};

fn segment_path(dir: &std::path::Path, seq: u64) -> std::path::PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn payload(group: u64, index: u64) -> Bytes {
    Bytes::from(format!("<g{group}-i{index}-payload>"))
}

/// Two groups, 60 entries each in batches of 10, a hard state each; returns the directory.
fn written() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig { durability: Durability::Always, ..WalConfig::default() };
    let (wal, _) = Wal::open(dir.path(), config).unwrap();
    for first in (1..=60).step_by(10) {
        for group in [1, 2] {
            let entries: Vec<Entry> =
                (first..first + 10).map(|i| Entry::normal(2, i, payload(group, i))).collect();
            let hs = HardState { term: 2, vote: Some(1), commit: first };
            let lsn =
                wal.write(&[LogWrite { group, hard_state: Some(hs), entries: &entries }]).unwrap();
            wal.sync(lsn).unwrap();
        }
    }
    drop(wal);
    dir
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn a_healthy_wal_reads_as_healthy() {
    let dir = written();
    let report = inspect(dir.path()).unwrap();
    assert!(report.is_healthy(), "{report:?}");
    for group in [1, 2] {
        let g = &report.groups[&group];
        assert_eq!((g.base, g.last_index), ((0, 0), 60));
        assert_eq!(g.hard_state, Some(HardState { term: 2, vote: Some(1), commit: 51 }));
        assert_eq!(g.records, 6);
    }
}

#[test]
fn a_flipped_payload_byte_is_reported_as_its_entry() {
    let dir = written();
    let path = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = find(&bytes, b"<g2-i37-payload>");
    bytes[at + 3] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let report = inspect(dir.path()).unwrap();
    assert!(!report.is_healthy());
    assert!(report.unreadable.is_empty(), "the record itself still reads: {report:?}");
    assert_eq!(report.groups[&2].damaged, vec![(37, 37)]);
    assert!(report.groups[&1].damaged.is_empty());
    assert_eq!(report.groups[&2].last_index, 60);
}

#[test]
fn a_damaged_record_header_is_skipped_and_reported() {
    let dir = written();
    let path = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    // The ENTRIES record holding group 1's entries 21..30: its header is 32 bytes before its
    // entry table, which ends where the first payload starts.
    let payload_at = find(&bytes, b"<g1-i21-payload>");
    let table = 24 + 10 * 16;
    let header_at = payload_at - table - 32;
    bytes[header_at + 20] ^= 0xFF; // inside the record's sequence number
    std::fs::write(&path, &bytes).unwrap();
    let report = inspect(dir.path()).unwrap();
    assert_eq!(report.unreadable.len(), 1, "{report:?}");
    let u = &report.unreadable[0];
    assert_eq!(u.offset, header_at as u64);
    assert!(u.resumes_at > u.offset);
    let g1 = &report.groups[&1];
    assert_eq!(g1.missing, vec![(21, 30)]);
    assert_eq!(g1.last_index, 60, "records after the damage are still read");
    assert!(report.groups[&2].missing.is_empty());
}
