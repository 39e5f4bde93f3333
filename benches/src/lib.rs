//! Shared harnesses for the raftkit benchmarks.

pub mod alloc;
pub mod core_cluster;
