//! Shared helpers for the raftkit benchmarks.
