//! # raft-wal
//!
//! A segmented, memory-mapped write-ahead log that stores the logs and hard states of many Raft
//! groups in one set of files, and implements raft-core's [`LogStore`](raft_core::LogStore).
//!
//! - Records are CRC32C-framed, 8-byte aligned, numbered, and carry the highest record number
//!   known durable when they were written, which is how recovery tells a torn tail (cut) from
//!   corruption of acknowledged data (a typed error).
//! - Segment files are written in full before use (zero-filled ahead of the writer or recycled),
//!   so appends through the mapping never allocate blocks and fdatasync stays cheap.
//! - Durability is chosen per WAL ([`Durability`]): every write, group commit, interval, or
//!   never. Whatever the mode, nothing is reported durable before an fdatasync covered it, and a
//!   failed fdatasync poisons the WAL for good.
//! - An in-memory index per group (16 bytes per entry) makes a read one lookup and one copy.
//!
//! The format is drawn in the [`mod@format`] module docs; the write path, numbered with every
//! fsync, in the crate README.
//!
//! ```
//! use raft_core::{Entry, LogStore, LogWrite};
//! use raft_wal::{Wal, WalConfig};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let config = WalConfig { segment_size_bytes: 1 << 20, ..WalConfig::default() };
//! let (wal, _report) = Wal::open(dir.path(), config.clone()).unwrap();
//! let entries = vec![Entry::normal(1, 1, "hello".into())];
//! let lsn = wal.write(&[LogWrite { group: 7, hard_state: None, entries: &entries }]).unwrap();
//! wal.sync(lsn).unwrap(); // group commit: concurrent callers share one fdatasync
//! drop(wal);
//!
//! let (wal, report) = Wal::open(dir.path(), config).unwrap();
//! assert_eq!(report.entries, 1);
//! assert_eq!(wal.entries(7, 1, 1, u64::MAX).unwrap(), entries);
//! ```

#![deny(missing_docs)]

pub mod catalog;
mod config;
mod damage;
mod doorbell;
mod error;
pub mod format;
mod index;
pub mod inspect;
mod recovery;
pub mod salvage;
mod segment;
mod staging;
mod state;
#[cfg(feature = "testkit")]
pub mod testkit;
mod votes;
mod wal;

pub use config::{AppendVia, Durability, RecoveryMode, WalConfig, SEGMENT_SIZE_MIN, SPIN_WAIT_MAX};
pub use error::WalError;
pub use recovery::{RecoveryReport, TailCut};
pub use state::DurablePosition;
pub use wal::{Wal, WalStats};
