//! Shared harnesses for the raftkit benchmarks.

pub mod alloc;
pub mod core_cluster;
pub mod load;
pub mod procstat;
pub mod wal_matrix;
