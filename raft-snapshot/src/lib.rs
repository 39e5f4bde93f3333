//! # raft-snapshot
//!
//! A file-backed [`SnapshotStore`](raft_core::SnapshotStore) for raft-core:
//! [`FileSnapshotStore`] keeps the snapshots of many Raft groups in one directory.
//!
//! - **Atomic install.** A snapshot is written under a temporary name, frame by frame with a
//!   CRC32C per frame, then fsynced, renamed into place and the directory fsynced. A crash at
//!   any point leaves the old snapshot or the new one, never a half one that looks whole;
//!   temporary files are deleted at the next open.
//! - **Verified.** Every read checks the CRC of the frames it touches; a received snapshot is
//!   checked against the size and checksum its sender announced before it is installed; open
//!   checks every file's header and trailer and (by default) the newest snapshot of each group
//!   whole. Damage is a typed [`SnapshotError`](raft_core::SnapshotError), never skipped.
//! - **Bounded memory.** A writer holds one frame; a reader holds what one read asks for. A
//!   snapshot received from a leader goes to disk chunk by chunk as it arrives.
//! - **Retention.** The newest `retain` snapshots of each group are kept; a snapshot being read
//!   is never deleted.
//! - **Rate-limited sending.** Readers opened for sending share a token bucket
//!   ([`SnapshotStoreOptions::send_rate_bytes_per_sec`]).
//! - **Scrubbed.** A background thread reads every snapshot back at
//!   [`SnapshotStoreOptions::scrub_bytes_per_sec`] and sets aside one that fails its checks,
//!   telling the node ([`SnapshotStore::take_damage_found`](raft_core::SnapshotStore::take_damage_found)),
//!   which takes a fresh one; counted in [`FileSnapshotStore::stats`].
//!
//! ```
//! use std::io::Write;
//! use raft_core::ready::SnapshotRequest;
//! use raft_core::SnapshotStore;
//! use raft_snapshot::{FileSnapshotStore, SnapshotStoreOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (store, _report) = FileSnapshotStore::open(dir.path(), SnapshotStoreOptions::default()).unwrap();
//! let request = SnapshotRequest { group: 1, index: 42, term: 3, membership: raft_core::Membership::new([1, 2, 3]) };
//! let mut writer = store.create(&request).unwrap();
//! writer.write_all(b"the state machine's bytes").unwrap();
//! let meta = writer.finish().unwrap();
//! assert_eq!(store.latest(1).unwrap(), Some(meta.clone()));
//! let mut reader = store.open(&meta).unwrap();
//! assert_eq!(&reader.read_at(4, 5).unwrap()[..], b"state");
//! ```
//!
//! The file format is drawn in [`format`](mod@format).

#![deny(missing_docs)]

pub mod format;
mod store;

pub use store::{verify_file, FileSnapshotStore, OpenReport, SnapshotStats, SnapshotStoreOptions};
