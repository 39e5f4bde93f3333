//! Behaviour of the file snapshot store: round trips, receiving with verification, retention
//! with open readers, typed errors for every kind of damage, cleanup and locking.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::io::Write;
use std::time::Instant;

use raft_core::ready::{SnapshotChunk, SnapshotRequest};
use raft_core::sim::kv::{KvOp, KvStore};
use raft_core::snapshot::{restore_snapshot, take_snapshot, SnapshotReceiver};
use raft_core::{SnapshotError, SnapshotMeta, SnapshotStore, StateMachine};
use raft_snapshot::{format, FileSnapshotStore, SnapshotStoreOptions};

fn options() -> SnapshotStoreOptions {
    SnapshotStoreOptions { frame_bytes: 1000, ..SnapshotStoreOptions::default() }
}

fn request(index: u64) -> SnapshotRequest {
    SnapshotRequest { group: 1, index, term: 2, membership: raft_core::Membership::new([1, 2, 3]) }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn write(store: &FileSnapshotStore, index: u64, bytes: &[u8]) -> SnapshotMeta {
    let mut w = store.create(&request(index)).unwrap();
    // Odd-sized writes straddle frame boundaries.
    for piece in bytes.chunks(333) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap()
}

fn read_all(store: &FileSnapshotStore, meta: &SnapshotMeta) -> Vec<u8> {
    let mut r = store.open(meta).unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < meta.size {
        out.extend_from_slice(&r.read_at(out.len() as u64, 777).unwrap());
    }
    assert!(r.read_at(meta.size, 10).unwrap().is_empty());
    out
}

fn path_of(store: &FileSnapshotStore, meta: &SnapshotMeta) -> std::path::PathBuf {
    store.dir().join(format::file_name(meta))
}

#[test]
fn snapshots_round_trip_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(5_500, 1);
    let meta = {
        let (store, _) = FileSnapshotStore::open(dir.path(), options()).unwrap();
        let meta = write(&store, 10, &bytes);
        assert_eq!((meta.size, meta.checksum), (5_500, crc32c::crc32c(&bytes)));
        assert_eq!(read_all(&store, &meta), bytes);
        meta
    };
    let (store, report) = FileSnapshotStore::open(dir.path(), options()).unwrap();
    assert_eq!((report.snapshots, report.bytes_verified), (1, 5_500));
    assert_eq!(store.latest(1).unwrap(), Some(meta.clone()));
    assert_eq!(store.latest(2).unwrap(), None);
    assert_eq!(read_all(&store, &meta), bytes);
    // An empty snapshot is a snapshot too.
    let empty = write(&store, 11, &[]);
    assert_eq!(read_all(&store, &empty), Vec::<u8>::new());
}

#[test]
fn a_destroyed_groups_snapshots_are_deleted_and_stay_gone() {
    let dir = tempfile::tempdir().unwrap();
    let kept = {
        let (store, _) = FileSnapshotStore::open(dir.path(), options()).unwrap();
        let gone = write(&store, 10, &data(2_000, 3));
        let mut w = store.create(&SnapshotRequest { group: 2, ..request(12) }).unwrap();
        w.write_all(&data(1_000, 4)).unwrap();
        let kept = w.finish().unwrap();
        store.remove_group(1).unwrap();
        assert_eq!(store.latest(1).unwrap(), None);
        assert!(!path_of(&store, &gone).exists(), "the file is deleted");
        assert!(matches!(store.open(&gone), Err(SnapshotError::NotFound { .. })));
        store.remove_group(1).unwrap(); // Again: nothing left, no error.
        assert_eq!(store.latest(2).unwrap(), Some(kept.clone()));
        kept
    };
    let (store, report) = FileSnapshotStore::open(dir.path(), options()).unwrap();
    assert_eq!(report.snapshots, 1);
    assert_eq!(store.latest(1).unwrap(), None);
    assert_eq!(store.latest(2).unwrap(), Some(kept));
}

#[test]
fn a_state_machine_snapshots_and_restores_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FileSnapshotStore::open(dir.path(), options()).unwrap();
    let mut kv = KvStore::default();
    for i in 0..500 {
        kv.execute(&KvOp::Put { key: format!("key{i}"), value: "v".repeat(i % 50) });
    }
    let meta = take_snapshot(&mut kv, &store, &request(500)).unwrap();
    let mut back = KvStore::default();
    restore_snapshot(&mut back, &store, &meta, 4096).unwrap();
    assert_eq!(back, kv);
    // And a snapshot is deterministic: the same state gives the same checksum.
    let again = take_snapshot(&mut kv, &store, &request(500)).unwrap();
    assert_eq!(again.checksum, meta.checksum);
    let _ = KvStore::snapshot; // (the trait method used above)
}

#[test]
fn receiving_writes_chunk_by_chunk_and_verifies_before_installing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FileSnapshotStore::open(dir.path(), options()).unwrap();
    let bytes = data(4_000, 7);
    let meta = request(50).meta_with(4_000, crc32c::crc32c(&bytes));
    let chunk = |offset: usize, len: usize, meta: &SnapshotMeta| SnapshotChunk {
        from: 1,
        meta: meta.clone(),
        offset: offset as u64,
        data: bytes::Bytes::copy_from_slice(&bytes[offset..offset + len]),
        done: offset + len == bytes.len(),
    };
    let mut rx = SnapshotReceiver::new();
    rx.write(&store, &chunk(0, 1_500, &meta)).unwrap();
    assert_eq!(store.latest(1).unwrap(), None, "nothing is visible before the end");
    // A chunk that does not continue the data is refused, and the transfer starts over.
    let err = rx.write(&store, &chunk(2_000, 500, &meta)).unwrap_err();
    assert!(matches!(err, SnapshotError::OutOfOrder { expected: 1_500, got: 2_000 }), "{err}");
    for (offset, len) in [(0, 1_500), (1_500, 1_500), (3_000, 1_000)] {
        rx.write(&store, &chunk(offset, len, &meta)).unwrap();
    }
    assert_eq!(store.latest(1).unwrap(), Some(meta.clone()));
    assert_eq!(read_all(&store, &meta), bytes);
    // Data that does not match the announced checksum is never installed.
    let lying = SnapshotMeta { index: 60, checksum: meta.checksum ^ 1, ..meta.clone() };
    rx.write(&store, &chunk(0, 3_000, &lying)).unwrap();
    let err = rx.write(&store, &chunk(3_000, 1_000, &lying)).unwrap_err();
    assert!(matches!(err, SnapshotError::ChecksumMismatch { .. }), "{err}");
    assert_eq!(store.latest(1).unwrap(), Some(meta.clone()));
    // More data than announced is refused as it arrives.
    let short = SnapshotMeta { index: 61, size: 100, ..meta.clone() };
    let mut w = store.receive(&short).unwrap();
    assert!(w.write_all(&bytes[..200]).is_err());
    drop(w);
    // Nothing of the failed transfers is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| format::is_temp_name(n))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn retention_keeps_the_newest_and_never_deletes_what_is_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) =
        FileSnapshotStore::open(dir.path(), SnapshotStoreOptions { retain: 2, ..options() })
            .unwrap();
    let first = write(&store, 1, &data(2_500, 1));
    let mut reading = store.open(&first).unwrap();
    let second = write(&store, 2, &data(100, 2));
    let third = write(&store, 3, &data(100, 3));
    // The first is past retention but open: it stays, whole and readable.
    assert!(path_of(&store, &first).exists());
    assert_eq!(&reading.read_at(2_000, 500).unwrap()[..], &data(2_500, 1)[2_000..]);
    drop(reading);
    let fourth = write(&store, 4, &data(100, 4));
    let kept: Vec<u64> = store.list(1).iter().map(|m| m.index).collect();
    assert_eq!(kept, [3, 4]);
    for gone in [&first, &second] {
        assert!(!path_of(&store, gone).exists());
        assert!(matches!(store.open(gone), Err(SnapshotError::NotFound { .. })));
    }
    assert_eq!(store.latest(1).unwrap(), Some(fourth));
    let _ = third;
}

#[test]
fn a_corrupted_frame_is_set_aside_at_open_and_a_checksum_error_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let (older, meta) = {
        let (store, _) = FileSnapshotStore::open(dir.path(), options()).unwrap();
        (write(&store, 4, &data(2_000, 8)), write(&store, 5, &data(3_000, 9)))
    };
    let path = dir.path().join(format::file_name(&meta));
    let mut bytes = std::fs::read(&path).unwrap();
    // A bit flip inside frame 1's data.
    let at = format::frame_offset(1, 1000) as usize + format::FRAME_HEADER_LEN as usize + 17;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    // Never restored: set aside, and the group falls back to the older snapshot.
    {
        let (store, report) = FileSnapshotStore::open(dir.path(), options()).unwrap();
        assert_eq!(report.damaged.len(), 1, "{report:?}");
        assert!(report.damaged[0].1.contains("checksum"), "{report:?}");
        assert_eq!(store.latest(1).unwrap(), Some(older));
        assert!(!path.exists());
    }
    let mut aside = path.clone().into_os_string();
    aside.push(".damaged");
    std::fs::rename(&aside, &path).unwrap();
    // Without the whole check at open, the damage shows on the first read that touches it.
    let lazy = SnapshotStoreOptions { verify_on_open: false, ..options() };
    let (store, _) = FileSnapshotStore::open(dir.path(), lazy).unwrap();
    let mut r = store.open(&meta).unwrap();
    assert_eq!(r.read_at(0, 1000).unwrap().len(), 1000, "frame 0 is intact");
    assert!(matches!(r.read_at(1500, 10), Err(SnapshotError::ChecksumMismatch { .. })));
    assert!(matches!(store.verify(&meta), Err(SnapshotError::ChecksumMismatch { .. })));
}

#[test]
fn truncated_files_are_set_aside_and_newer_versions_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let meta = {
        let (store, _) = FileSnapshotStore::open(dir.path(), options()).unwrap();
        write(&store, 5, &data(3_000, 9))
    };
    let path = dir.path().join(format::file_name(&meta));
    let good = std::fs::read(&path).unwrap();
    // Every cut of the file is caught: no trailer, or lengths that do not add up.
    let mut aside = path.clone().into_os_string();
    aside.push(".damaged");
    for cut in (0..good.len()).step_by(97) {
        std::fs::write(&path, &good[..cut]).unwrap();
        let (store, report) = FileSnapshotStore::open(dir.path(), options()).unwrap();
        assert_eq!(report.damaged.len(), 1, "cut at {cut}");
        assert_eq!(store.latest(1).unwrap(), None, "cut at {cut}: nothing restorable");
        drop(store);
        std::fs::remove_file(&aside).unwrap();
    }
    // A file from a newer format version.
    let mut newer = good.clone();
    newer[8..12].copy_from_slice(&3u32.to_le_bytes());
    std::fs::write(&path, &newer).unwrap();
    let err = FileSnapshotStore::open(dir.path(), options()).unwrap_err();
    assert!(matches!(err, SnapshotError::UnsupportedVersion { found: 3, supported: 2 }), "{err}");
    // A wrong whole-data checksum in otherwise intact metadata.
    std::fs::write(&path, &good).unwrap();
    let lying = SnapshotMeta { checksum: meta.checksum ^ 0xFF, ..meta.clone() };
    let mut bad = good[..good.len() - 16 - format::encode_trailer(&meta).len() + 16].to_vec();
    bad.extend_from_slice(&format::encode_trailer(&lying));
    std::fs::remove_file(&path).unwrap();
    std::fs::write(dir.path().join(format::file_name(&lying)), &bad).unwrap();
    let (store, report) = FileSnapshotStore::open(dir.path(), options()).unwrap();
    assert!(report.damaged[0].1.contains("checksum"), "{report:?}");
    assert_eq!(store.latest(1).unwrap(), None);
}

#[test]
fn leftover_temporary_files_are_removed_and_the_directory_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = FileSnapshotStore::open(dir.path(), options()).unwrap();
        let mut w = store.create(&request(9)).unwrap();
        w.write_all(&data(5_000, 3)).unwrap();
        // What a crash mid-write leaves: the temporary file, never renamed.
        std::fs::write(dir.path().join("tmp-take-999-0.part"), data(5_000, 3)).unwrap();
        let err = FileSnapshotStore::open(dir.path(), options()).unwrap_err();
        assert!(matches!(err, SnapshotError::Locked { .. }), "{err}");
    }
    let (store, report) = FileSnapshotStore::open(dir.path(), options()).unwrap();
    assert_eq!((report.temp_files_removed, report.snapshots), (1, 0));
    assert_eq!(store.latest(1).unwrap(), None);
}

#[test]
fn bad_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FileSnapshotStore::open(dir.path(), options()).unwrap();
    for bad in [
        SnapshotRequest { index: 0, ..request(1) },
        SnapshotRequest { membership: raft_core::Membership::default(), ..request(1) },
        SnapshotRequest { term: 0, ..request(1) },
    ] {
        assert!(matches!(store.create(&bad), Err(SnapshotError::InvalidMeta(_))), "{bad:?}");
    }
}

#[test]
fn sending_is_rate_limited_and_restoring_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let rate = 400_000;
    let opts = SnapshotStoreOptions { send_rate_bytes_per_sec: Some(rate), ..options() };
    let (store, _) = FileSnapshotStore::open(dir.path(), opts).unwrap();
    let meta = write(&store, 1, &data(1_000_000, 5));
    let started = Instant::now();
    let mut local = store.open(&meta).unwrap();
    for k in 0..10u64 {
        local.read_at(k * 100_000, 100_000).unwrap();
    }
    let local_time = started.elapsed();
    let started = Instant::now();
    let mut send = store.open_for_send(&meta).unwrap();
    for k in 0..10u64 {
        send.read_at(k * 100_000, 100_000).unwrap();
    }
    let send_time = started.elapsed();
    // One second's worth may go at once; the other 600 kB take at least 1.5 s at 400 kB/s.
    assert!(send_time.as_secs_f64() >= 1.4, "sent 1 MB in {send_time:?} at {rate} B/s");
    assert!(local_time.as_secs_f64() < 1.0, "local reads were throttled: {local_time:?}");
}

/// Scrubbing reads every snapshot back in the background: a healthy store passes again and
/// again; a byte flipped in the newest snapshot while the store runs is found, that snapshot
/// set aside and reported once to the node, and the group falls back to the older one.
#[test]
fn scrubbing_finds_damage_while_the_store_runs() {
    let dir = tempfile::tempdir().unwrap();
    let fast = SnapshotStoreOptions { scrub_bytes_per_sec: 64 << 20, ..options() };
    let (store, _) = FileSnapshotStore::open(dir.path(), fast).unwrap();
    let older = write(&store, 4, &data(20_000, 1));
    let newest = write(&store, 5, &data(30_000, 2));
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: {:?}", store.stats());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    wait("two passes", &|| store.stats().scrub_passes >= 2);
    let stats = store.stats();
    assert!(stats.scrubbed_bytes >= 2 * 50_000, "{stats:?}");
    assert_eq!(stats.scrub_damaged, 0);
    assert_eq!(store.take_damage_found(1), None);
    // A bit flip in frame 7's data, behind the store's back.
    let path = path_of(&store, &newest);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = format::frame_offset(7, 1000) as usize + format::FRAME_HEADER_LEN as usize + 3;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    wait("the damage is found", &|| store.stats().scrub_damaged == 1);
    assert_eq!(store.take_damage_found(1), Some(newest.clone()));
    assert_eq!(store.take_damage_found(1), None, "reported once");
    assert_eq!(store.latest(1).unwrap(), Some(older.clone()));
    assert!(!path.exists());
    let mut aside = path.into_os_string();
    aside.push(".damaged");
    assert!(std::path::Path::new(&aside).exists(), "kept for the operator");
    assert!(matches!(store.open(&newest), Err(SnapshotError::NotFound { .. })));
    assert_eq!(read_all(&store, &older), data(20_000, 1));
}
