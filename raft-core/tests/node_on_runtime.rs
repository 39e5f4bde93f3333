//! The node driver's tests of `node.rs` again, with every node of each cluster on one shared
//! [`Runtime`](raft_core::node::Runtime) (a fixed set of threads) instead of threads of its own.

#[path = "node.rs"]
mod node;
