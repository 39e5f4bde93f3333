//! Runs one core-throughput configuration repeatedly, for profilers:
//! `cargo run --release -p raftkit-benches --example core-profile -- 64 1024 5`
//! (payload bytes, proposals in flight, runs).
#![allow(missing_docs, clippy::print_stdout)]

use raft_core::Config;
use raftkit_benches::core_cluster::Cluster;

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (size, in_flight, runs) = match args[..] {
        [s, f, r] => (s, f, r),
        _ => (64, 1024, 5),
    };
    let payload = vec![0u8; size as usize];
    for _ in 0..runs {
        let mut cluster = Cluster::new(Config::default());
        let stats = cluster.run(200_000, in_flight, &payload);
        println!(
            "{size} B, {in_flight} in flight: {:.0} entries/s, p50 {:?}, p99 {:?}",
            stats.entries_per_sec(),
            stats.latency(0.5),
            stats.latency(0.99)
        );
    }
}
