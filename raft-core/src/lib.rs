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
//! Most users run a node with the threaded driver in [`node`]. A runtime of one's own carries
//! out Readies with [`execute::Executor`] (the contract of [`ready`] as code), supplying how each
//! duty is done through [`execute::ReadyHandler`]; the driver and the simulator do the same.

#![deny(missing_docs)]

mod config;
mod error;
pub mod execute;
mod log;
mod mem;
mod mem_transport;
pub mod membership;
pub mod message;
pub mod node;
mod outbox;
pub mod quorum;
mod raft;
pub mod ready;
pub mod rng;
#[cfg(feature = "sim")]
pub mod sim;
pub mod snapshot;
pub mod storage;
#[cfg(feature = "testkit")]
pub mod testkit;
mod tracker;
mod transport;
mod types;
pub mod wire;

// The crate root holds what a node is wired with: the core and its settings, the log entry and
// the message a transport carries, the four seams and their in-memory implementations, and the
// errors. Helpers for writing a runtime of one's own live in their modules: `execute` (carrying
// out Readies), `ready` (its work items), `storage` and `snapshot` (serving reads, loading state,
// taking and restoring snapshots), `message` (message bodies), `wire` (their encoding).
pub use config::Config;
pub use error::{
    ConfigError, ProposeError, ReadError, SnapshotError, StepError, StorageError, TransferError,
};
pub use mem::MemLogStore;
pub use mem_transport::{MemNetwork, MemTransport};
pub use membership::{Membership, MembershipChange, MembershipError};
pub use message::Message;
pub use raft::{EntryId, InitialState, Raft, Status};
pub use ready::Ready;
pub use snapshot::{MemSnapshotStore, SnapshotReader, SnapshotStore, SnapshotWriter};
pub use storage::{LogState, LogStore, LogWrite, Lsn, SnapshotView, StateMachine};
pub use tracker::{PeerProgress, ProgressState};
pub use transport::{
    Inbound, PeerLiveness, RouteError, Router, Transport, LIVENESS_GROUP, LIVENESS_HELLO,
};
pub use types::{
    Entry, EntryKind, GroupId, HardState, Health, Index, LogDamage, NodeId, RoleKind, SnapshotMeta,
    Term,
};
