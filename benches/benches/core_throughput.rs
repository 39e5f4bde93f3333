//! Core throughput: three nodes in one thread, in-memory messages and store, no fsync
//! (release build, so the core's debug invariant checks are off). 200,000 proposals of 64 B and
//! of 4 KiB, with 1, 64 and 1,024 in flight. Criterion reports committed entries per second;
//! the summary printed at the end adds propose-to-commit latency percentiles and allocations
//! per committed entry (medians over the runs).
//!
//! `cargo bench -p raftkit-benches --bench core_throughput`
//! (`RAFTKIT_BENCH_PROPOSALS=20000` for a quick run; `RAFTKIT_BENCH_CELL=64x1024` runs one cell,
//! for a profiler or a turn-about comparison of two builds).
#![allow(missing_docs, clippy::print_stdout)]

use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use raft_core::Config;
use raftkit_benches::alloc::CountingAlloc;
use raftkit_benches::core_cluster::{Cluster, RunStats};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn core_throughput(c: &mut Criterion) {
    let total: u64 = std::env::var("RAFTKIT_BENCH_PROPOSALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let mut summary = Vec::new();
    for size in [64usize, 4096] {
        let payload = vec![0xA5u8; size];
        let mut group = c.benchmark_group(format!("core_throughput/{size}B"));
        group.throughput(Throughput::Elements(total));
        group.sampling_mode(SamplingMode::Flat);
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        for in_flight in [1u64, 64, 1024] {
            // RAFTKIT_BENCH_CELL=64x1024 runs one cell (for a profiler).
            if let Ok(cell) = std::env::var("RAFTKIT_BENCH_CELL") {
                if cell != format!("{size}x{in_flight}") {
                    continue;
                }
            }
            let mut runs: Vec<RunStats> = Vec::new();
            group.bench_function(BenchmarkId::new("in_flight", in_flight), |b| {
                b.iter_custom(|iters| {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        let mut cluster = Cluster::new(Config::default());
                        let stats = cluster.run(total, in_flight, &payload);
                        elapsed += stats.elapsed;
                        runs.push(stats);
                    }
                    elapsed
                })
            });
            let rate = median(runs.iter().map(RunStats::entries_per_sec).collect());
            let p50 = median(runs.iter().map(|r| r.latency(0.5).as_secs_f64() * 1e6).collect());
            let p99 = median(runs.iter().map(|r| r.latency(0.99).as_secs_f64() * 1e6).collect());
            let allocs = median(runs.iter().map(RunStats::allocations_per_entry).collect());
            summary.push((size, in_flight, rate, p50, p99, allocs, runs.len()));
        }
        group.finish();
    }
    println!("\ncore throughput, {total} proposals per run, medians over runs");
    println!(
        "{:>7} {:>9} {:>14} {:>10} {:>10} {:>12} {:>5}",
        "payload", "in_flight", "entries/s", "p50_us", "p99_us", "allocs/entry", "runs"
    );
    for (size, in_flight, rate, p50, p99, allocs, n) in summary {
        println!(
            "{size:>6}B {in_flight:>9} {rate:>14.0} {p50:>10.1} {p99:>10.1} {allocs:>12.2} {n:>5}"
        );
    }
}

criterion_group!(benches, core_throughput);
criterion_main!(benches);
