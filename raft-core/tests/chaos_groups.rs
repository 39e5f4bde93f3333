//! The chaos sweep with many groups on every node ([`raft_core::sim::groups`]): 16 groups share
//! each node's log store, crashes, partitions, full disks and quiet spells, and every group
//! passes every check of the single-group sweep. `RAFTKIT_GROUP_SEEDS` sets how many seeds
//! (default 32); deeper runs: `cargo run --release -p raft-core --features sim --example
//! sim-sweep -- --groups 16 --seeds 1000`.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use raft_core::sim::chaos::ChaosOptions;
use raft_core::sim::groups::run_groups_seed;

fn seed_count() -> u64 {
    std::env::var("RAFTKIT_GROUP_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(32)
}

fn sweep(shard: u64, shards: u64) {
    let opts = ChaosOptions::default();
    let mut slept = 0;
    let mut failures = Vec::new();
    for seed in (0..seed_count()).filter(|seed| seed % shards == shard) {
        match run_groups_seed(seed, 16, &opts) {
            Ok(report) => {
                assert!(report.ops_completed > 0, "seed {seed}: no operation completed");
                slept += report.asleep_ticks;
            }
            Err(f) => failures.push(f.to_string()),
        }
    }
    assert!(failures.is_empty(), "{} seeds failed:\n{}", failures.len(), failures.join("\n"));
    if seed_count() >= 8 {
        assert!(slept > 0, "on the seeds that hibernate, groups slept");
    }
}

#[test]
fn sixteen_groups_per_node_shard_0() {
    sweep(0, 2);
}

#[test]
fn sixteen_groups_per_node_shard_1() {
    sweep(1, 2);
}
