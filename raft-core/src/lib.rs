//! # raft-core
//!
//! The Raft consensus algorithm as a deterministic, sans-IO state machine, the traits storage
//! backends implement, an in-memory log store, and (feature `sim`) a deterministic cluster
//! simulator with fault injection and a linearizability checker.
//!
//! A [`Raft`] node takes inputs (ticks, messages, proposals, durability acknowledgements) and
//! returns everything they require as a [`Ready`]: entries and hard state to persist, messages to
//! send, committed entries to apply. It does no I/O, reads no clock and starts no thread, so the
//! same inputs always produce the same outputs and every run of the simulator replays from its
//! seed. The [`ready`] module documents the order in which a caller must carry out a `Ready`.
//!
//! A minimal driver for a single-node group:
//!
//! ```
//! use raft_core::{serve_fetch, Config, InitialState, LogStore, LogWrite, MemLogStore, Raft};
//!
//! let store = MemLogStore::new();
//! let config = Config { id: 1, ..Config::default() };
//! let mut node = Raft::new(config, InitialState::new_group(vec![1])).unwrap();
//! let mut applied = Vec::new();
//! for tick in 0..40 {
//!     node.tick(); // once per tick interval: the driver owns the clock
//!     if tick == 30 {
//!         node.propose("set x 1".into()).unwrap();
//!     }
//!     while node.has_ready() {
//!         let ready = node.ready();
//!         // 1. Send ready.messages to their peers (none in a one-node group).
//!         // 2. Persist hard state and entries as one ordered write, and wait until durable.
//!         if ready.must_persist() {
//!             let write =
//!                 LogWrite { group: ready.group, hard_state: ready.hard_state, entries: &ready.entries };
//!             let lsn = store.write(&[write]).unwrap();
//!             store.sync(lsn).unwrap();
//!         }
//!         // 3. Then send ready.persisted_messages, and acknowledge.
//!         node.on_persisted(ready.number);
//!         // 4. Apply committed entries in order.
//!         applied.extend(ready.committed_entries);
//!         // 5. Serve the reads the core asks for.
//!         for fetch in ready.fetches {
//!             let entries = serve_fetch(&store, &fetch);
//!             node.on_fetched(fetch, entries);
//!         }
//!     }
//! }
//! assert!(node.is_leader());
//! assert_eq!(applied.last().map(|e| &e.data[..]), Some(&b"set x 1"[..]));
//! ```

#![deny(missing_docs)]

mod config;
mod error;
mod log;
mod mem;
mod message;
pub mod node;
mod raft;
pub mod ready;
mod rng;
#[cfg(feature = "sim")]
pub mod sim;
mod snapshot;
mod storage;
#[cfg(feature = "testkit")]
pub mod testkit;
mod tracker;
mod transport;
mod types;

pub use config::Config;
pub use error::{ConfigError, ProposeError, SnapshotError, StepError, StorageError};
pub use mem::MemLogStore;
pub use message::{
    AppendRequest, AppendResponse, Heartbeat, InstallSnapshot, InstallSnapshotResponse, Message,
    MessageBody, SnapshotStatus, VoteRequest, VoteResponse,
};
pub use raft::{EntryId, InitialState, Raft, Status};
pub use ready::{FetchPurpose, FetchRequest, Ready, SnapshotChunk, SnapshotRead, SnapshotRequest};
pub use rng::Rng;
pub use snapshot::{
    restore_snapshot, serve_snapshot_read, take_snapshot, take_snapshot_view, validate_meta,
    MemSnapshotStore, SnapshotReader, SnapshotReceiver, SnapshotStore, SnapshotStream,
    SnapshotWriter,
};
pub use storage::{
    load_initial_state, serve_fetch, validate_append, LogState, LogStore, LogWrite, Lsn,
    SnapshotView, StateMachine,
};
pub use tracker::{PeerProgress, ProgressState};
pub use transport::{Inbound, Router, Transport};
pub use types::{
    Entry, EntryKind, GroupId, HardState, Index, NodeId, RoleKind, SnapshotMeta, Term,
};
