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

#![deny(missing_docs)]

mod config;
mod error;
mod log;
mod mem;
mod message;
mod raft;
pub mod ready;
mod rng;
#[cfg(feature = "sim")]
pub mod sim;
mod storage;
#[cfg(feature = "testkit")]
pub mod testkit;
mod tracker;
mod types;

pub use config::Config;
pub use error::{ConfigError, ProposeError, StepError, StorageError};
pub use mem::MemLogStore;
pub use message::{
    AppendRequest, AppendResponse, Heartbeat, Message, MessageBody, VoteRequest, VoteResponse,
};
pub use raft::{EntryId, InitialState, Raft, Status};
pub use ready::{FetchPurpose, FetchRequest, Ready};
pub use rng::Rng;
pub use storage::{
    load_initial_state, serve_fetch, validate_append, LogState, LogStore, LogWrite, Lsn,
    StateMachine,
};
pub use tracker::{PeerProgress, ProgressState};
pub use types::{Entry, EntryKind, GroupId, HardState, Index, NodeId, RoleKind, Term};
