//! Recovery from damaged files: torn tails cut at every byte, bit flips in the tail and in the
//! middle, damaged payloads found on read, and the typed errors for unusable directories.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft_core::rng::Rng;
use raft_core::{Entry, HardState, LogStore, LogWrite, StorageError};
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
    let len = ((group * 31 + index * 17) % 200) as usize;
    let mut data = format!("g{group}i{index}t{term}:").into_bytes();
    data.resize(data.len() + len, b'a' + (index % 26) as u8);
    Entry::normal(term, index, Bytes::from(data))
}

fn append(wal: &Wal, group: u64, lo: u64, hi: u64) {
    let es: Vec<Entry> = (lo..=hi).map(|i| entry(group, i, 1)).collect();
    wal.write(&[LogWrite { group, hard_state: None, entries: &es }]).unwrap();
}

fn all(wal: &Wal, group: u64) -> Vec<Entry> {
    let s = wal.log_state(group).unwrap();
    if s.last_index < s.first_index {
        return Vec::new();
    }
    wal.entries(group, s.first_index, s.last_index, u64::MAX).unwrap()
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Writes 20 batches, then one more; returns where that last batch's record starts and ends.
fn log_with_a_last_record(dir: &Path) -> (u64, u64, u64) {
    let (wal, _) = Wal::open(dir, config()).unwrap();
    for b in 0..20 {
        append(&wal, 1, b * 3 + 1, b * 3 + 3);
    }
    let before = wal.durable_position();
    append(&wal, 1, 61, 63);
    let after = wal.durable_position();
    assert_eq!(before.segment, after.segment, "the test wants the last record in one segment");
    drop(wal);
    (after.segment, before.offset, after.offset)
}

#[test]
fn the_tail_record_cut_at_every_byte_is_a_torn_tail() {
    let base = tempfile::tempdir().unwrap();
    let (segment, start, end) = log_with_a_last_record(base.path());
    for cut in start..end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let path = segment_path(dir.path(), segment);
        let mut bytes = std::fs::read(&path).unwrap();
        // Cutting only the record's zero padding leaves it whole.
        let whole = bytes[cut as usize..end as usize].iter().all(|&b| b == 0);
        bytes[cut as usize..end as usize].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let (wal, report) =
            Wal::open(dir.path(), config()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let got = all(&wal, 1);
        let kept = if whole { 63 } else { 60 };
        assert_eq!(got.len() as u64, kept, "cut at {cut}: only the last batch may go");
        assert_eq!(got, (1..=kept).map(|i| entry(1, i, 1)).collect::<Vec<_>>());
        if whole {
            continue;
        }
        // Once the header's sequence number is on disk, the partial record is reported as
        // torn; before that the bytes are indistinguishable from an unwritten tail.
        if cut >= start + 24 {
            assert!(report.torn_tail.is_some(), "cut at {cut}: a partial record is reported");
        }
        // The log is usable, and the cut stays cut after another reopen.
        append(&wal, 1, 61, 61);
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), config()).unwrap();
        assert_eq!(all(&wal, 1).len(), 61);
    }
}

#[test]
fn bit_flips_in_the_tail_record_cut_it() {
    let base = tempfile::tempdir().unwrap();
    let (segment, start, end) = log_with_a_last_record(base.path());
    let mut rng = Rng::new(5);
    for _ in 0..200 {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(base.path(), dir.path());
        let path = segment_path(dir.path(), segment);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = rng.range(start, end - 1) as usize;
        let bit = rng.below(8);
        bytes[at] ^= 1 << bit;
        std::fs::write(&path, &bytes).unwrap();
        let (wal, report) =
            Wal::open(dir.path(), config()).unwrap_or_else(|e| panic!("flip at {at}: {e}"));
        let got = all(&wal, 1);
        // A flip in the padding changes nothing; anywhere else the record is cut.
        if got.len() == 63 {
            assert_eq!(got, (1..=63).map(|i| entry(1, i, 1)).collect::<Vec<_>>(), "flip at {at}");
        } else {
            assert_eq!(got.len(), 60, "flip at {at}");
            assert!(report.corruption_cut.is_none());
        }
    }
}

#[test]
fn a_bit_flip_in_the_middle_is_corruption() {
    let base = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(base.path(), config()).unwrap();
    let first = wal.durable_position();
    append(&wal, 1, 1, 3);
    let second = wal.durable_position();
    for b in 1..30 {
        append(&wal, 1, b * 3 + 1, b * 3 + 3);
    }
    drop(wal);
    // Flip a bit in the header of the second record: later records say it was durable.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(base.path(), dir.path());
    let path = segment_path(dir.path(), first.segment);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[second.offset as usize + 20] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let strict = WalConfig { recovery: RecoveryMode::Strict, ..config() };
    match Wal::open(dir.path(), strict) {
        Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, second.offset),
        other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r)),
    }
    // The opt-in recovery mode cuts the log there and says what it dropped.
    let lenient = WalConfig { recovery: RecoveryMode::TruncateAtCorruption, ..config() };
    let (wal, report) = Wal::open(dir.path(), lenient).unwrap();
    let cut = report.corruption_cut.expect("reported");
    assert_eq!(cut.offset, second.offset);
    assert_eq!(cut.records_dropped, 28, "the 28 batches after the damaged one: {cut:?}");
    assert_eq!(all(&wal, 1), (1..=3).map(|i| entry(1, i, 1)).collect::<Vec<_>>());
}

#[test]
fn a_damaged_payload_is_found_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    let start = wal.durable_position();
    append(&wal, 1, 1, 1);
    for b in 1..10 {
        append(&wal, 1, b + 1, b + 1);
    }
    drop(wal);
    // Entry 1's payload starts after the record header, the entries metadata and one row.
    let path = segment_path(dir.path(), start.segment);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[start.offset as usize + 32 + 24 + 16 + 2] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    // Opening reads headers and tables only: it succeeds ...
    let (wal, report) = Wal::open(dir.path(), config()).unwrap();
    assert!(report.torn_tail.is_none());
    // ... and the damage is reported when the entry is read, never returned as data.
    match wal.entries(1, 1, 1, u64::MAX) {
        Err(StorageError::Damaged { group: 1, index: 1, detail }) => {
            assert!(detail.contains("checksum"), "{detail}")
        }
        other => panic!("expected damage, got {other:?}"),
    }
    assert_eq!(wal.entries(1, 2, 10, u64::MAX).unwrap().len(), 9, "other entries still read");
}

#[test]
fn unusable_directories_get_typed_errors() {
    let missing = std::env::temp_dir().join("raft-wal-surely-missing-dir-4c1e");
    assert!(matches!(Wal::open(&missing, config()), Err(WalError::MissingDirectory { .. })));
    let file = tempfile::NamedTempFile::new().unwrap();
    assert!(matches!(Wal::open(file.path(), config()), Err(WalError::MissingDirectory { .. })));

    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    assert!(matches!(Wal::open(dir.path(), config()), Err(WalError::Locked { .. })), "second open");
    drop(wal);
    Wal::open(dir.path(), config()).expect("the lock is released on drop");

    let bad = WalConfig { segment_size_bytes: 1000, ..config() };
    assert!(matches!(Wal::open(dir.path(), bad), Err(WalError::InvalidConfig(_))));
    let bad = WalConfig { spin_wait: raft_wal::SPIN_WAIT_MAX * 2, ..config() };
    assert!(matches!(Wal::open(dir.path(), bad), Err(WalError::InvalidConfig(_))));
}

/// A WAL whose first segment claims format `version`.
fn with_segment_version(version: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    append(&wal, 1, 1, 5);
    drop(wal);
    let path = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    dir
}

#[test]
fn a_segment_from_a_newer_format_is_refused() {
    let dir = with_segment_version(99);
    match Wal::open(dir.path(), config()) {
        Err(WalError::NewerVersion { version, supported, .. }) => {
            assert_eq!((version, supported), (99, 2));
        }
        other => panic!("expected a version error, got {:?}", other.map(|(_, r)| r)),
    }
}

/// Format 1 had one no-op bit where format 2 has two kind bits: its segments are refused, with
/// both versions named, rather than read with membership entries taken for commands.
#[test]
fn a_segment_from_the_previous_format_is_refused_naming_both_versions() {
    let dir = with_segment_version(1);
    match Wal::open(dir.path(), config()) {
        Err(err @ WalError::OlderVersion { version: 1, supported: 2, .. }) => {
            let text = err.to_string();
            assert!(text.contains("version 1") && text.contains("version 2"), "{text}");
        }
        other => panic!("expected an old-version error, got {:?}", other.map(|(_, r)| r)),
    }
}

#[test]
fn a_missing_segment_with_live_entries_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    let mut next = 1;
    while wal.durable_position().segment < 4 {
        append(&wal, 1, next, next + 9);
        next += 10;
    }
    drop(wal);
    std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();
    // Segment 1 is now before a hole: the log is 3.. and group 1's early entries are missing.
    let strict = WalConfig { recovery: RecoveryMode::Strict, ..config() };
    match Wal::open(dir.path(), strict) {
        Err(WalError::Corrupt { detail, .. }) => assert!(detail.contains("missing"), "{detail}"),
        other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r)),
    }
}

#[test]
fn compaction_retires_segments_and_recovery_follows() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), config()).unwrap();
    let hs = HardState { term: 3, vote: Some(2), commit: 100 };
    wal.write(&[LogWrite { group: 9, hard_state: Some(hs), entries: &[] }]).unwrap();
    let mut next = 1;
    while wal.durable_position().segment < 6 {
        append(&wal, 1, next, next + 9);
        append(&wal, 2, next, next + 9);
        next += 10;
    }
    let before = wal.stats().segments;
    wal.compact(1, next - 20, 1).unwrap();
    assert_eq!(wal.stats().segments, before, "group 2 still pins the old segments");
    wal.compact(2, next - 20, 1).unwrap();
    let after = wal.stats().segments;
    assert!(after < before, "{after} segments after compacting both groups (was {before})");
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), config()).unwrap();
    assert_eq!(report.segments, after);
    for g in [1, 2] {
        let s = wal.log_state(g).unwrap();
        assert_eq!((s.first_index, s.last_index), (next - 19, next - 1));
        assert_eq!(all(&wal, g), (next - 19..next).map(|i| entry(g, i, 1)).collect::<Vec<_>>());
    }
    assert_eq!(
        wal.log_state(9).unwrap().hard_state,
        hs,
        "a hard state from a retired segment survives"
    );
}

#[test]
fn random_damage_never_panics_nor_returns_bad_data() {
    // The stable, seeded counterpart of the `recover_damaged` fuzz target.
    let mut rng = Rng::new(42);
    let mut corrupt = 0;
    for case in 0..300 {
        let dir = tempfile::tempdir().unwrap();
        let lenient = case % 3 == 1;
        let salvage = case % 3 == 2;
        // With syncs, later records prove earlier ones durable and damage there is corruption;
        // without, every damage is a torn tail.
        let durability = if case % 4 < 2 { Durability::Always } else { Durability::Never };
        let cfg = WalConfig {
            durability,
            recovery: if lenient {
                RecoveryMode::TruncateAtCorruption
            } else if salvage {
                RecoveryMode::Salvage
            } else {
                RecoveryMode::Strict
            },
            ..config()
        };
        {
            let (wal, _) = Wal::open(dir.path(), cfg.clone()).unwrap();
            let mut last = [0u64; 3];
            for _ in 0..rng.range(1, 30) {
                let g = rng.below(3) as usize;
                let n = rng.range(1, 15);
                let es: Vec<Entry> =
                    (last[g] + 1..=last[g] + n).map(|i| entry(g as u64, i, 1)).collect();
                wal.write(&[LogWrite { group: g as u64, hard_state: None, entries: &es }]).unwrap();
                last[g] += n;
            }
        }
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let used = bytes.iter().rposition(|&b| b != 0).unwrap_or(64) + 1;
        for _ in 0..rng.range(1, 4) {
            let at = rng.below(used as u64) as usize;
            bytes[at] ^= (rng.below(255) + 1) as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        match Wal::open(dir.path(), cfg) {
            Ok((wal, _)) => {
                for g in 0..3u64 {
                    let s = wal.log_state(g).unwrap();
                    if s.last_index < s.first_index {
                        continue;
                    }
                    // A damaged payload may be reported on read; it is never returned as data.
                    if let Ok(es) = wal.entries(g, s.first_index, s.last_index, u64::MAX) {
                        for e in es {
                            assert_eq!(
                                e.data,
                                entry(g, e.index, 1).data,
                                "case {case}: bad data returned"
                            );
                        }
                    }
                }
            }
            Err(WalError::Corrupt { .. }) => {
                assert!(!lenient && !salvage, "case {case}: the lenient modes open");
                corrupt += 1;
            }
            // These groups write no hard state: after a hole, nothing restores it.
            Err(WalError::HardStateLost { .. }) => assert!(salvage, "case {case}"),
            Err(e) => panic!("case {case}: unexpected error {e}"),
        }
    }
    assert!(
        corrupt > 10,
        "damage behind durable records is reported as corruption ({corrupt} cases)"
    );
}

/// Large payloads are written from the caller's buffers (and a flush of several MiB starts
/// writeback as it goes): whatever the mix of sizes, what is read back, before and after a
/// reopen, is exactly what was written.
#[test]
fn large_and_small_payloads_in_one_batch_read_back_exactly() {
    for durability in [Durability::Always, Durability::group_commit(), Durability::Never] {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig { segment_size_bytes: 8 << 20, durability, ..config() };
        let mut rng = Rng::new(77);
        let mut written = Vec::new();
        {
            let (wal, _) = Wal::open(dir.path(), config.clone()).unwrap();
            let mut next = 1;
            for batch in 0..6 {
                // Up to ~6 MiB in one batch: it spans segments and long flushes.
                let n = if batch % 2 == 0 { 40 } else { 7 };
                let es: Vec<Entry> = (next..next + n)
                    .map(|i| {
                        let len = match rng.range(0, 4) {
                            0 => rng.range(0, 100) as usize,
                            1 => 4095 + rng.range(0, 3) as usize,
                            2 => rng.range(4096, 40_000) as usize,
                            _ => rng.range(100_000, 300_000) as usize,
                        };
                        let data: Vec<u8> = (0..len).map(|k| (k as u64 * 31 + i) as u8).collect();
                        Entry::normal(1, i, Bytes::from(data))
                    })
                    .collect();
                let lsn =
                    wal.write(&[LogWrite { group: 1, hard_state: None, entries: &es }]).unwrap();
                wal.sync(lsn).unwrap();
                next += n;
                written.extend(es);
                assert_eq!(all(&wal, 1), written, "{durability:?}: read back before reopening");
            }
            wal.close().unwrap();
        }
        let (wal, report) = Wal::open(dir.path(), config).unwrap();
        assert!(report.torn_tail.is_none(), "{durability:?}: a clean close leaves no torn tail");
        assert_eq!(all(&wal, 1), written, "{durability:?}: read back after reopening");
    }
}

/// In the syncing modes a write leaves its records staged for the next sync to write (one
/// `pwritev` for every concurrent writer): they are read back from memory until then, small and
/// large payloads alike, and from the file afterwards and after a reopen.
#[test]
fn records_left_for_the_next_sync_are_read_from_memory_until_written() {
    for durability in [Durability::Always, Durability::group_commit()] {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig { durability, ..config() };
        let (wal, _) = Wal::open(dir.path(), config.clone()).unwrap();
        let file_len = |wal: &Wal| {
            let seq = wal.durable_position().segment;
            let bytes = std::fs::read(segment_path(dir.path(), seq.max(1))).unwrap();
            // The segment is pre-written with zeros: count up to the last non-zero byte.
            bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)
        };
        let es: Vec<Entry> = (1..=6u64)
            .map(|i| {
                let len = if i % 2 == 0 { 9000 } else { 30 };
                Entry::normal(1, i, Bytes::from(vec![i as u8; len]))
            })
            .collect();
        let lsn = wal.write(&[LogWrite { group: 1, hard_state: None, entries: &es }]).unwrap();
        if durability != Durability::Always {
            // Not synced yet: nothing of it is in the file, and it reads back all the same.
            let before = file_len(&wal);
            assert_eq!(all(&wal, 1), es, "{durability:?}: read from the staged records");
            wal.sync(lsn).unwrap();
            assert!(file_len(&wal) > before + 3 * 9000, "{durability:?}: the sync wrote them");
        }
        assert_eq!(all(&wal, 1), es, "{durability:?}: read from the file");
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), config).unwrap();
        assert_eq!(all(&wal, 1), es, "{durability:?}: read after reopening");
    }
}

/// With no segment prepared ahead (the preparer kept none, as when it falls behind), the writer
/// allocates each new segment itself: full size, blocks allocated rather than sparse, and its
/// records read back like any others after a reopen.
#[test]
fn segments_the_writer_allocates_itself_hold_records_like_prepared_ones() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig { prepared_segments: 0, ..config() };
    let (wal, _) = Wal::open(dir.path(), config.clone()).unwrap();
    for b in 0..400 {
        append(&wal, 1, b * 5 + 1, b * 5 + 5);
    }
    let written = all(&wal, 1);
    assert_eq!(written.len(), 2000);
    drop(wal);
    let segments: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    assert!(segments.len() >= 3, "the log rolled: {segments:?}");
    for p in &segments {
        let m = std::fs::metadata(p).unwrap();
        assert_eq!(m.len(), config.segment_size_bytes, "{}", p.display());
        assert!(m.blocks() * 512 >= m.len(), "{} is sparse", p.display());
    }
    let (wal, report) = Wal::open(dir.path(), config).unwrap();
    assert!(report.torn_tail.is_none(), "{report:?}");
    assert_eq!(all(&wal, 1), written);
}
