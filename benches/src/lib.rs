//! Shared harnesses for the raftkit benchmarks.

pub mod alloc;
pub mod core_cluster;
pub mod load;
pub mod wal_matrix;
