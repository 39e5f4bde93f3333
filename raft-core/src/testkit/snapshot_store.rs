//! The [`SnapshotStore`] conformance suite: [`SnapshotStoreHarness`] and
//! [`snapshot_store_conformance!`](crate::snapshot_store_conformance).
//!
//! What every snapshot store must do: hand back exactly what was written, with the right size
//! and CRC32C; make a snapshot visible only once finished (a writer dropped or a crash before
//! `finish` leaves the previous snapshot); keep finished snapshots across a reopen; keep the
//! newest ones its retention allows, never deleting one an open reader is reading; and verify
//! a snapshot received from a leader against its metadata before it becomes visible.
//!
//! ```
//! use raft_core::testkit::snapshot_store::SnapshotStoreHarness;
//! use raft_core::MemSnapshotStore;
//!
//! /// The in-memory store survives a "reopen" because the harness keeps it.
//! struct MemHarness(MemSnapshotStore);
//!
//! impl SnapshotStoreHarness for MemHarness {
//!     type Store = MemSnapshotStore;
//!     fn open(&mut self) -> MemSnapshotStore {
//!         self.0.clone()
//!     }
//!     fn retain(&self) -> usize {
//!         2
//!     }
//! }
//!
//! raft_core::snapshot_store_conformance!(mem, crate::MemHarness(raft_core::MemSnapshotStore::new(2)));
//! # fn main() {}
//! ```

use std::io::Write;

use crate::error::SnapshotError;
use crate::membership::Membership;
use crate::ready::SnapshotRequest;
use crate::snapshot::{SnapshotReader, SnapshotStore};
use crate::types::{GroupId, Index, SnapshotMeta};

/// Opens a snapshot store under test.
pub trait SnapshotStoreHarness {
    /// The store type.
    type Store: SnapshotStore;

    /// Opens the store, creating it on first use. Opening again after the previous store was
    /// dropped must find every finished snapshot its retention kept, and nothing unfinished.
    fn open(&mut self) -> Self::Store;

    /// How many snapshots per group the store keeps (at least 1).
    fn retain(&self) -> usize;
}

/// A request for a snapshot of `group` at `index` (term `index / 10 + 1`).
pub fn request(group: GroupId, index: Index) -> SnapshotRequest {
    SnapshotRequest { group, index, term: index / 10 + 1, membership: Membership::new([1, 2, 3]) }
}

/// Data of `len` bytes that differs for every `(index, byte)`.
pub fn data(index: Index, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 * 31 + index * 7 + (i as u64 >> 8)) as u8).collect()
}

fn write(store: &impl SnapshotStore, request: &SnapshotRequest, bytes: &[u8]) -> SnapshotMeta {
    let mut writer = store.create(request).unwrap_or_else(|e| panic!("create: {e}"));
    for chunk in bytes.chunks(1000) {
        writer.write_all(chunk).unwrap_or_else(|e| panic!("write: {e}"));
    }
    assert_eq!(writer.written(), bytes.len() as u64, "written() counts every byte");
    writer.finish().unwrap_or_else(|e| panic!("finish: {e}"))
}

fn read_all(reader: &mut dyn SnapshotReader, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let got = reader.read_at(out.len() as u64, chunk).unwrap_or_else(|e| panic!("read: {e}"));
        if got.is_empty() {
            return out;
        }
        assert!(got.len() <= chunk, "read_at returned {} bytes, asked for {chunk}", got.len());
        out.extend_from_slice(&got);
    }
}

fn read(store: &impl SnapshotStore, meta: &SnapshotMeta) -> Vec<u8> {
    let mut reader = store.open(meta).unwrap_or_else(|e| panic!("open {meta:?}: {e}"));
    assert_eq!(reader.meta(), meta);
    read_all(&mut *reader, 777)
}

/// A store with nothing in it has no snapshot of any group, and refuses to open one.
pub fn empty_store<H: SnapshotStoreHarness>(h: &mut H) {
    let store = h.open();
    for group in [0, 1, u64::MAX] {
        assert_eq!(store.latest(group).expect("latest"), None);
    }
    let meta = request(1, 10).meta_with(5, 0);
    assert!(store.open(&meta).is_err(), "opened a snapshot that was never written");
}

/// A finished snapshot reads back byte for byte, with its size and CRC32C in its metadata, in
/// chunks of any size; reading at its end gives nothing and past it is an error.
pub fn write_and_read_back<H: SnapshotStoreHarness>(h: &mut H) {
    let store = h.open();
    let bytes = data(10, 100_003);
    let req = request(1, 10);
    let meta = write(&store, &req, &bytes);
    assert_eq!(meta, req.meta_with(bytes.len() as u64, crc32c::crc32c(&bytes)));
    assert_eq!(store.latest(1).expect("latest"), Some(meta.clone()));
    assert_eq!(read(&store, &meta), bytes);
    let mut reader = store.open_for_send(&meta).expect("open for send");
    assert_eq!(read_all(&mut *reader, 1 << 16), bytes, "read for sending");
    let end = reader.read_at(meta.size, 10).expect("read at the end");
    assert!(end.is_empty(), "reading at the end gives nothing");
    assert!(reader.read_at(meta.size + 1, 10).is_err(), "reading past the end is an error");
    // An empty snapshot is a snapshot too.
    let empty = write(&store, &request(2, 5), &[]);
    assert_eq!(empty.size, 0);
    assert_eq!(read(&store, &empty), Vec::<u8>::new());
}

/// Finished snapshots survive a reopen.
pub fn finished_snapshots_survive_reopen<H: SnapshotStoreHarness>(h: &mut H) {
    let store = h.open();
    let bytes = data(20, 5000);
    let meta = write(&store, &request(3, 20), &bytes);
    drop(store);
    let store = h.open();
    assert_eq!(store.latest(3).expect("latest"), Some(meta.clone()));
    assert_eq!(read(&store, &meta), bytes);
}

/// A writer dropped before `finish` (a crash mid-write) leaves the previous snapshot the latest,
/// before and after a reopen.
pub fn an_unfinished_snapshot_is_never_visible<H: SnapshotStoreHarness>(h: &mut H) {
    let store = h.open();
    let old = write(&store, &request(4, 30), &data(30, 3000));
    let mut writer = store.create(&request(4, 40)).expect("create");
    writer.write_all(&data(40, 2500)).expect("write");
    drop(writer);
    assert_eq!(store.latest(4).expect("latest"), Some(old.clone()));
    let mut writer = store.create(&request(4, 50)).expect("create");
    writer.write_all(&data(50, 2500)).expect("write");
    drop(store); // The process dies with the writer open.
    drop(writer);
    let store = h.open();
    assert_eq!(store.latest(4).expect("latest"), Some(old.clone()));
    assert_eq!(read(&store, &old), data(30, 3000));
}

/// The newest snapshots are kept as retention allows; older ones go, except one being read,
/// which stays readable to its end.
pub fn retention_keeps_the_newest_and_spares_readers<H: SnapshotStoreHarness>(h: &mut H) {
    let keep = h.retain().max(1);
    let store = h.open();
    let first_bytes = data(100, 20_000);
    let first = write(&store, &request(5, 100), &first_bytes);
    let mut reader = store.open(&first).expect("open the first");
    let head = reader.read_at(0, 100).expect("read the head");
    let mut metas = vec![first.clone()];
    for i in 1..=keep as u64 + 1 {
        let index = 100 + i * 10;
        metas.push(write(&store, &request(5, index), &data(index, 1000)));
    }
    let newest = metas.last().cloned();
    assert_eq!(store.latest(5).expect("latest"), newest);
    for meta in &metas[metas.len() - keep..] {
        assert_eq!(read(&store, meta), data(meta.index, 1000), "kept {meta:?}");
    }
    let mut rest = head.to_vec();
    rest.extend_from_slice(&read_all_from(&mut *reader, head.len() as u64));
    assert_eq!(rest, first_bytes, "an open reader reads its snapshot to the end");
    drop(reader);
    let retired = &metas[1];
    assert!(
        keep >= metas.len() - 1 || store.open(retired).is_err(),
        "{retired:?} outlived retention"
    );
}

fn read_all_from(reader: &mut dyn SnapshotReader, mut offset: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let got = reader.read_at(offset, 4096).unwrap_or_else(|e| panic!("read: {e}"));
        if got.is_empty() {
            return out;
        }
        offset += got.len() as u64;
        out.extend_from_slice(&got);
    }
}

/// Tells whether an error is the one a case expects.
type ExpectedError = fn(&SnapshotError) -> bool;

/// A snapshot received from a leader becomes visible only if exactly its bytes arrived: short,
/// long or altered data fails with a typed error (long data may fail as it is written, the
/// rest at `finish`) and leaves nothing behind.
pub fn received_snapshots_are_verified<H: SnapshotStoreHarness>(h: &mut H) {
    let store = h.open();
    let bytes = data(60, 9000);
    let meta = request(6, 60).meta_with(bytes.len() as u64, crc32c::crc32c(&bytes));
    let mut flipped = bytes.clone();
    flipped[4321] ^= 0x10;
    let bad: [(&[u8], ExpectedError); 3] = [
        (&bytes[..8999], |e| matches!(e, SnapshotError::SizeMismatch { .. })),
        (&[&bytes[..], &[0]].concat(), |e| matches!(e, SnapshotError::SizeMismatch { .. })),
        (&flipped, |e| matches!(e, SnapshotError::ChecksumMismatch { .. })),
    ];
    for (received, expected) in bad {
        let mut writer = store.receive(&meta).expect("receive");
        // A store may refuse bytes past the declared size as they come, or at `finish`.
        match writer.write_all(received) {
            Err(err) => {
                let inner = err.get_ref().and_then(|e| e.downcast_ref::<SnapshotError>());
                assert!(inner.is_some_and(expected), "unexpected error {err:?}");
            }
            Ok(()) => match writer.finish() {
                Err(err) => assert!(expected(&err), "unexpected error {err:?}"),
                Ok(meta) => panic!("accepted a damaged snapshot {meta:?}"),
            },
        }
        assert_eq!(store.latest(6).expect("latest"), None, "a damaged snapshot became visible");
    }
    let mut writer = store.receive(&meta).expect("receive");
    writer.write_all(&bytes).expect("write");
    assert_eq!(writer.finish().expect("finish"), meta);
    assert_eq!(store.latest(6).expect("latest"), Some(meta.clone()));
    assert_eq!(read(&store, &meta), bytes);
}

/// Groups do not see each other's snapshots, and metadata that cannot describe a snapshot
/// (index 0, no voters) is refused.
pub fn groups_are_isolated_and_bad_metadata_refused<H: SnapshotStoreHarness>(h: &mut H) {
    let store = h.open();
    let a = write(&store, &request(7, 70), &data(70, 100));
    let b = write(&store, &request(8, 80), &data(80, 200));
    assert_eq!(store.latest(7).expect("latest"), Some(a));
    assert_eq!(store.latest(8).expect("latest"), Some(b));
    assert_eq!(store.latest(9).expect("latest"), None);
    assert!(store.create(&request(7, 0)).is_err(), "index 0 is no snapshot");
    let no_voters = SnapshotRequest { membership: Membership::default(), ..request(7, 90) };
    assert!(store.create(&no_voters).is_err(), "a snapshot without voters");
}

/// Expands to one `#[test]` per snapshot store conformance case, in a module named `$name`,
/// opening stores with the harness `$harness` builds (a fresh harness per test).
#[macro_export]
macro_rules! snapshot_store_conformance {
    ($name:ident, $harness:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::testkit::snapshot_store as kit;

            #[test]
            fn empty_store() {
                kit::empty_store(&mut $harness);
            }
            #[test]
            fn write_and_read_back() {
                kit::write_and_read_back(&mut $harness);
            }
            #[test]
            fn finished_snapshots_survive_reopen() {
                kit::finished_snapshots_survive_reopen(&mut $harness);
            }
            #[test]
            fn an_unfinished_snapshot_is_never_visible() {
                kit::an_unfinished_snapshot_is_never_visible(&mut $harness);
            }
            #[test]
            fn retention_keeps_the_newest_and_spares_readers() {
                kit::retention_keeps_the_newest_and_spares_readers(&mut $harness);
            }
            #[test]
            fn received_snapshots_are_verified() {
                kit::received_snapshots_are_verified(&mut $harness);
            }
            #[test]
            fn groups_are_isolated_and_bad_metadata_refused() {
                kit::groups_are_isolated_and_bad_metadata_refused(&mut $harness);
            }
        }
    };
}
