//! Conformance kits (feature `testkit`): the tests every implementation of one of raft-core's
//! seams must pass, ours and users' alike. Each kit is a harness trait (how to open or build the
//! thing under test) and a macro that expands to one `#[test]` per case; each case is also a
//! public function, for harnesses that need their own test layout.
//!
//! | seam | harness | macro | passes it |
//! |---|---|---|---|
//! | [`LogStore`](crate::LogStore) | [`StoreHarness`] | [`log_store_conformance!`](crate::log_store_conformance) | `MemLogStore`, raft-wal's `Wal` |
//! | [`SnapshotStore`](crate::SnapshotStore) | [`snapshot_store::SnapshotStoreHarness`] | [`snapshot_store_conformance!`](crate::snapshot_store_conformance) | `MemSnapshotStore`, raft-snapshot's `FileSnapshotStore` |
//! | [`StateMachine`](crate::StateMachine) | [`state_machine::MachineHarness`] | [`state_machine_conformance!`](crate::state_machine_conformance) | the simulator's machines, the KV server's |
//! | [`Transport`](crate::Transport) | [`transport::TransportHarness`] | [`transport_conformance!`](crate::transport_conformance) | `MemNetwork`, raft-net-tcp's `TcpTransport` |
//!
//! # The log store kit
//!
//! Every backend, ours or a user's, proves itself with the same tests: implement
//! [`StoreHarness`] (how to open the store, and reopen it to check what survives), then expand
//! [`log_store_conformance!`](crate::log_store_conformance) in a test file:
//!
//! ```
//! use std::sync::Arc;
//! use raft_core::{testkit::StoreHarness, MemLogStore};
//!
//! /// Reopening returns the same in-memory store; a file-backed harness would reopen its
//! /// directory.
//! struct MyHarness(Arc<MemLogStore>);
//!
//! impl StoreHarness for MyHarness {
//!     type Store = Arc<MemLogStore>;
//!     fn open(&mut self) -> Arc<MemLogStore> {
//!         Arc::clone(&self.0)
//!     }
//! }
//!
//! // In a test file: one #[test] per conformance case, in module `my_store`.
//! raft_core::log_store_conformance!(my_store, crate::MyHarness(Default::default()));
//! # fn main() {}
//! ```
//!
//! Each case is also a public function here, for harnesses that need their own test layout.

mod log_store;
pub mod snapshot_store;
pub mod state_machine;
pub mod transport;

pub use log_store::*;
