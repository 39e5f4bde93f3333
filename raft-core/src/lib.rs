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
pub mod wire;

pub use config::Config;
pub use error::{ConfigError, ProposeError, SnapshotError, StepError, StorageError};
pub use mem::MemLogStore;
pub use mem_transport::{MemNetwork, MemTransport};
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
