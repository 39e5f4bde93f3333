//! Shared harnesses for the raftkit benchmarks.

pub mod alloc;
pub mod core_cluster;
pub mod set_load;
pub mod wal_matrix;
