//! Named failure points: short writes, failed syncs, a full disk while preparing a segment, and
//! the process stopping between the steps of a segment roll or a truncation. Each shows the
//! typed error, the WAL's state afterwards (poisoned where durability can no longer be
//! promised), and a clean reopen. Plus a real full disk (a small tmpfs) when running as root.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // Test code.

use std::path::Path;
use std::sync::Mutex;

use bytes::Bytes;
use raft_core::{Entry, LogStore, LogWrite, StorageError};
use raft_wal::{Durability, Wal, WalConfig};

/// The fail point registry is global to the process: one scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn scenario() -> (std::sync::MutexGuard<'static, ()>, fail::FailScenario<'static>) {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    (guard, fail::FailScenario::setup())
}

fn config(durability: Durability) -> WalConfig {
    WalConfig {
        segment_size_bytes: 64 << 10,
        durability,
        prepared_segments: 0,
        ..WalConfig::default()
    }
}

fn entries(lo: u64, hi: u64, term: u64, size: usize) -> Vec<Entry> {
    (lo..=hi).map(|i| Entry::normal(term, i, Bytes::from(vec![(i % 251) as u8; size]))).collect()
}

fn write(wal: &Wal, es: &[Entry]) -> Result<raft_core::Lsn, StorageError> {
    let lsn = wal.write(&[LogWrite { group: 1, hard_state: None, entries: es }])?;
    wal.sync(lsn)?;
    Ok(lsn)
}

fn read_all(wal: &Wal) -> Vec<Entry> {
    let s = wal.log_state(1).unwrap();
    if s.last_index < s.first_index {
        return Vec::new();
    }
    wal.entries(1, s.first_index, s.last_index, u64::MAX).unwrap()
}

fn assert_poisoned(wal: &Wal) {
    assert!(matches!(write(wal, &entries(1000, 1000, 9, 1)), Err(StorageError::Poisoned(_))));
    assert!(matches!(wal.entries(1, 1, 1, 100), Err(StorageError::Poisoned(_))));
    assert!(matches!(wal.sync(raft_core::Lsn(1)), Err(StorageError::Poisoned(_))));
}

fn reopen(dir: &Path, durability: Durability) -> Wal {
    Wal::open(dir, config(durability)).unwrap().0
}

#[test]
fn a_failed_sync_poisons_the_wal_for_good() {
    let (_g, _s) = scenario();
    for durability in [Durability::Always, Durability::group_commit()] {
        let dir = tempfile::tempdir().unwrap();
        let wal = reopen(dir.path(), durability);
        let good = entries(1, 10, 1, 100);
        write(&wal, &good).unwrap();
        fail::cfg("wal::sync", "return").unwrap();
        let err = write(&wal, &entries(11, 12, 1, 100)).unwrap_err();
        assert!(
            matches!(&err, StorageError::Poisoned(msg) if msg.contains("sync failed")),
            "{err}"
        );
        fail::remove("wal::sync");
        // The disk "works" again, but the WAL does not pretend the failed sync succeeded.
        assert_poisoned(&wal);
        assert!(wal.durable_position().seq < wal.stats().last_seq);
        drop(wal);
        let wal = reopen(dir.path(), durability);
        assert_eq!(
            &read_all(&wal)[..10],
            &good[..],
            "everything synced before the failure is there"
        );
        write(&wal, &entries(read_all(&wal).len() as u64 + 1, 20, 1, 100)).unwrap();
    }
}

#[test]
fn callers_parked_behind_a_sync_see_it_fail() {
    let (_g, _s) = scenario();
    let dir = tempfile::tempdir().unwrap();
    let wal = std::sync::Arc::new(reopen(dir.path(), Durability::group_commit()));
    // The first sync (the leader's own) is slow and succeeds; the next one, led by a caller
    // that parked behind it, fails.
    fail::cfg("wal::sync", "1*sleep(300)->return").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let spawn = |group: u64| {
        let wal = std::sync::Arc::clone(&wal);
        let tx = tx.clone();
        std::thread::spawn(move || {
            let es = entries(1, 1, 1, 100);
            let lsn = wal.write(&[LogWrite { group, hard_state: None, entries: &es }]).unwrap();
            tx.send((group, wal.sync(lsn))).unwrap();
        })
    };
    let first = spawn(1);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let rest: Vec<_> = (2..=6).map(spawn).collect();
    let mut results = Vec::new();
    for _ in 0..6 {
        // A parked caller nobody wakes would hang here.
        results.push(rx.recv_timeout(std::time::Duration::from_secs(10)).expect("a caller hung"));
    }
    first.join().unwrap();
    rest.into_iter().for_each(|t| t.join().unwrap());
    fail::remove("wal::sync");
    results.sort_by_key(|(group, _)| *group);
    assert!(results[0].1.is_ok(), "the slow sync succeeded: {:?}", results[0].1);
    for (group, result) in &results[1..] {
        assert!(
            matches!(result, Err(StorageError::Poisoned(msg)) if msg.contains("sync failed")),
            "group {group}: {result:?}"
        );
    }
    assert_eq!(wal.stats().syncs, 1);
}

#[test]
fn a_short_write_is_an_error_and_reopens_clean() {
    let (_g, _s) = scenario();
    let dir = tempfile::tempdir().unwrap();
    let wal = reopen(dir.path(), Durability::Always);
    let good = entries(1, 10, 1, 100);
    write(&wal, &good).unwrap();
    fail::cfg("wal::write::short", "return").unwrap();
    let err = write(&wal, &entries(11, 15, 1, 300)).unwrap_err();
    fail::remove("wal::write::short");
    assert!(err.to_string().contains("short write"), "{err}");
    assert_poisoned(&wal);
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), config(Durability::Always)).unwrap();
    assert!(report.torn_tail.is_some(), "the short record is cut: {report:?}");
    assert_eq!(read_all(&wal), good);
}

#[test]
fn a_full_disk_while_preparing_a_segment_fails_the_write_cleanly() {
    let (_g, _s) = scenario();
    let dir = tempfile::tempdir().unwrap();
    let wal = reopen(dir.path(), Durability::Always);
    let first = entries(1, 40, 1, 1000);
    write(&wal, &first).unwrap();
    fail::cfg("wal::prepare", "return").unwrap();
    // This batch needs a new segment, which cannot be prepared.
    let err = write(&wal, &entries(41, 120, 1, 1000)).unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    // Nothing of it was accepted, and the WAL is not poisoned: it works once space is back.
    assert_eq!(read_all(&wal), first);
    fail::remove("wal::prepare");
    let more = entries(41, 120, 1, 1000);
    write(&wal, &more).unwrap();
    drop(wal);
    let wal = reopen(dir.path(), Durability::Always);
    assert_eq!(read_all(&wal).len(), 120);
}

/// Stops the WAL at `point` during a write that rolls to a new segment, then reopens.
fn interrupted_roll(point: &str) {
    let dir = tempfile::tempdir().unwrap();
    let wal = reopen(dir.path(), Durability::Always);
    let first = entries(1, 40, 1, 1000);
    write(&wal, &first).unwrap();
    fail::cfg(point, "return").unwrap();
    let err = write(&wal, &entries(41, 120, 1, 1000)).unwrap_err();
    fail::remove(point);
    assert!(matches!(err, StorageError::Poisoned(_) | StorageError::Other(_)), "{point}: {err}");
    assert_poisoned(&wal);
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), config(Durability::Always)).unwrap();
    // The interrupted batch never completed: all or nothing, here nothing.
    assert_eq!(read_all(&wal), first, "{point}: {report:?}");
    let more = entries(41, 120, 1, 1000);
    write(&wal, &more).unwrap();
    drop(wal);
    assert_eq!(read_all(&reopen(dir.path(), Durability::Always)).len(), 120, "{point}");
}

#[test]
fn a_roll_stopped_after_the_seal_reopens_clean() {
    let (_g, _s) = scenario();
    interrupted_roll("wal::roll::after-seal");
}

#[test]
fn a_roll_stopped_after_the_rename_reopens_clean() {
    let (_g, _s) = scenario();
    interrupted_roll("wal::roll::after-rename");
}

#[test]
fn a_roll_into_a_recycled_file_stopped_after_the_rename_reopens_clean() {
    // Found by the crash test: a recycled file keeps its old, valid header until the roll
    // rewrites it; stopping right after the rename leaves a file named for the new segment
    // whose header names an old one.
    let (_g, _s) = scenario();
    let dir = tempfile::tempdir().unwrap();
    let wal = reopen(dir.path(), Durability::Always);
    let mut next = 1;
    while wal.durable_position().segment < 4 {
        write(&wal, &entries(next, next + 9, 1, 1000)).unwrap();
        next += 10;
    }
    // Compaction retires the old segments into recycled prepared files.
    wal.compact(1, next - 11, 1).unwrap();
    assert!(wal.stats().prepared > 0, "a segment was recycled");
    fail::cfg("wal::roll::after-rename", "return").unwrap();
    let mut failed = false;
    for _ in 0..100 {
        if write(&wal, &entries(next, next + 9, 1, 1000)).is_err() {
            failed = true;
            break;
        }
        next += 10;
    }
    fail::remove("wal::roll::after-rename");
    assert!(failed, "a roll happened");
    drop(wal);
    let wal = reopen(dir.path(), Durability::Always);
    let kept = read_all(&wal);
    assert_eq!(kept.last().map(|e| e.index), Some(next - 1), "everything before the roll is there");
    write(&wal, &entries(next, next + 9, 1, 1000)).unwrap();
    drop(wal);
    assert_eq!(reopen(dir.path(), Durability::Always).log_state(1).unwrap().last_index, next + 9);
}

#[test]
fn a_truncation_stopped_half_way_reopens_to_the_old_log() {
    let (_g, _s) = scenario();
    let dir = tempfile::tempdir().unwrap();
    let wal = reopen(dir.path(), Durability::Always);
    let old = entries(1, 10, 1, 50);
    write(&wal, &old).unwrap();
    fail::cfg("wal::truncate::between", "return").unwrap();
    // A new leader replaces 6..10; the process stops after the truncation record.
    let err = write(&wal, &entries(6, 8, 2, 50)).unwrap_err();
    fail::remove("wal::truncate::between");
    assert!(err.to_string().contains("between truncation and append"), "{err}");
    assert_poisoned(&wal);
    drop(wal);
    let wal = reopen(dir.path(), Durability::Always);
    assert_eq!(read_all(&wal), old, "the half-done replacement is not applied");
    let new = entries(6, 8, 2, 50);
    write(&wal, &new).unwrap();
    assert_eq!(read_all(&wal)[5..], new[..]);
}

/// A real full disk: a 1 MiB tmpfs. Needs root (to mount); skipped with a message otherwise.
#[test]
fn a_real_full_disk_is_a_typed_error() {
    let (_g, _s) = scenario();
    let mount = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mount.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!("skipped: mounting a tmpfs needs root (the full-disk test runs in CI as root)");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let cfg = WalConfig { prepared_segments: 1, ..config(Durability::Always) };
        let (wal, _) = Wal::open(mount.path(), cfg).unwrap();
        let mut next = 1;
        let err = loop {
            match write(&wal, &entries(next, next + 9, 1, 2000)) {
                Ok(_) => next += 10,
                Err(e) => break e,
            }
            assert!(next < 10_000, "the disk never filled");
        };
        assert!(err.to_string().contains("disk full"), "{err}");
        let kept = read_all(&wal);
        assert_eq!(kept.len() as u64, next - 1, "everything accepted before is readable");
        // Not poisoned: freeing space (compaction retires and recycles segments) lets writes go on.
        wal.compact(1, next - 11, 1).unwrap();
        write(&wal, &entries(next, next + 9, 1, 2000)).unwrap();
        drop(wal);
        let (wal, _) = Wal::open(
            mount.path(),
            WalConfig { prepared_segments: 1, ..config(Durability::Always) },
        )
        .unwrap();
        assert_eq!(wal.log_state(1).unwrap().last_index, next + 9);
    });
    let _ = std::process::Command::new("umount").arg(mount.path()).status();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
