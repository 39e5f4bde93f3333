//! Shared harnesses for the raftkit benchmarks.

pub mod alloc;
pub mod core_cluster;
pub mod wal_matrix;
