//! Runs the chaos scenario over many seeds, in parallel, and reports every failing seed with
//! the command that replays it.
//!
//! ```text
//! cargo run --release -p raft-core --features sim --example sim-sweep -- --seeds 10000
//! cargo run --release -p raft-core --features sim --example sim-sweep -- --machine bank --seeds 10000
//! cargo run --release -p raft-core --features sim --example sim-sweep -- --seeds 500..1000
//! cargo run --release -p raft-core --features sim --example sim-sweep -- --seed 1234
//! cargo run --release -p raft-core --features sim --example sim-sweep -- --groups 16 --seeds 1000
//! RUST_LOG=trace cargo run --release -p raft-core --features sim --example sim-sweep -- --seed 1234
//! ```
#![allow(clippy::print_stdout)]

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use raft_core::sim::chaos::{
    bank_workload, options_for_seed, run_seed, run_seed_with, ChaosFailure, ChaosOptions,
    ChaosReport,
};
use raft_core::MemLogStore;

/// Which example machine the sweep runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Machine {
    Kv,
    Bank,
}

fn run(machine: Machine, seed: u64, opts: &ChaosOptions) -> Result<ChaosReport, ChaosFailure> {
    match machine {
        Machine::Kv => run_seed(seed, opts),
        Machine::Bank => {
            run_seed_with(
                seed,
                opts,
                bank_workload,
                |_| Box::new(MemLogStore::with_explicit_sync()),
            )
        }
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: sim-sweep [--machine kv|bank] [--groups G] [--seed N | --seeds COUNT | --seeds FROM..TO] [--threads T] [--fault-ms MS] [--break-commit-rule]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut range = 0..100u64;
    let mut single = false;
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut opts = ChaosOptions::default();
    let mut machine = Machine::Kv;
    let mut groups = 0usize;
    while let Some(arg) = args.next() {
        if arg == "--break-commit-rule" {
            // The checker's self-test: every run should fail.
            opts.break_commit_rule = true;
            continue;
        }
        let Some(value) = args.next() else { return usage() };
        match arg.as_str() {
            "--seed" => {
                let Ok(seed) = value.parse::<u64>() else { return usage() };
                range = seed..seed + 1;
                single = true;
            }
            "--seeds" => {
                let parsed = match value.split_once("..") {
                    Some((a, b)) => a.parse().and_then(|a| b.parse().map(|b| a..b)),
                    None => value.parse().map(|n| 0..n),
                };
                let Ok(r) = parsed else { return usage() };
                range = r;
            }
            "--threads" => match value.parse() {
                Ok(t) if t > 0 => threads = t,
                _ => return usage(),
            },
            "--machine" => match value.as_str() {
                "kv" => machine = Machine::Kv,
                "bank" => machine = Machine::Bank,
                _ => return usage(),
            },
            "--groups" => match value.parse() {
                Ok(g) if g > 0 => groups = g,
                _ => return usage(),
            },
            "--fault-ms" => match value.parse::<u64>() {
                Ok(ms) => opts.fault_us = ms * 1000,
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
    }
    if groups > 0 {
        return sweep_groups(range, groups, threads, &opts);
    }
    if single {
        // RUST_LOG=trace prints every event of the run.
        if std::env::var_os("RUST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .without_time()
                .with_writer(std::io::stderr)
                .init();
        }
        let seed = range.start;
        println!("seed {seed}: {:#?}", options_for_seed(seed));
        return match run(machine, seed, &opts) {
            Ok(report) => {
                println!("passed: {report:#?}");
                ExitCode::SUCCESS
            }
            Err(failure) => {
                println!("{failure}");
                ExitCode::FAILURE
            }
        };
    }

    // Panics are reported per seed; keep the default hook from printing each one.
    std::panic::set_hook(Box::new(|_| {}));
    let total = range.end.saturating_sub(range.start);
    let next = AtomicU64::new(range.start);
    let done = AtomicU64::new(0);
    let ops = AtomicU64::new(0);
    let taken = AtomicU64::new(0);
    let installed = AtomicU64::new(0);
    let reads = AtomicU64::new(0);
    let follower_reads = AtomicU64::new(0);
    let transfers = AtomicU64::new(0);
    let changes = AtomicU64::new(0);
    let storage_faults = AtomicU64::new(0);
    let disk_full = AtomicU64::new(0);
    let asleep = AtomicU64::new(0);
    let liveness = AtomicU64::new(0);
    let deferred = AtomicU64::new(0);
    let deferred_acks = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let started = Instant::now();
    let progress = std::io::stderr().is_terminal();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= range.end {
                    break;
                }
                match run(machine, seed, &opts) {
                    Ok(report) => {
                        ops.fetch_add(report.history_ops as u64, Ordering::Relaxed);
                        taken.fetch_add(report.snapshots_taken, Ordering::Relaxed);
                        installed.fetch_add(report.snapshots_installed, Ordering::Relaxed);
                        reads.fetch_add(report.reads_served, Ordering::Relaxed);
                        follower_reads.fetch_add(report.follower_reads, Ordering::Relaxed);
                        transfers.fetch_add(report.transfers, Ordering::Relaxed);
                        changes.fetch_add(report.membership_changes, Ordering::Relaxed);
                        storage_faults.fetch_add(report.storage_faults, Ordering::Relaxed);
                        disk_full.fetch_add(report.disk_full, Ordering::Relaxed);
                        asleep.fetch_add(report.asleep_ticks, Ordering::Relaxed);
                        liveness.fetch_add(report.liveness_wakes, Ordering::Relaxed);
                        deferred.fetch_add(report.deferred_ticks, Ordering::Relaxed);
                        deferred_acks.fetch_add(report.deferred_acks, Ordering::Relaxed);
                    }
                    Err(failure) => {
                        eprintln!("\n{failure}");
                        failures.lock().unwrap_or_else(|e| e.into_inner()).push(failure);
                    }
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if progress && (n.is_multiple_of(10) || n == total) {
                    let failed = failures.lock().map_or(0, |f| f.len());
                    eprint!(
                        "\r{n}/{total} seeds, {failed} failed, {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    println!(
        "\n{} seeds in {:.1} s ({} threads), {} client operations checked for linearizability, {} failed",
        total,
        started.elapsed().as_secs_f64(),
        threads,
        ops.load(Ordering::Relaxed),
        failures.len()
    );
    println!(
        "snapshots: {} taken, {} installed from a leader",
        taken.load(Ordering::Relaxed),
        installed.load(Ordering::Relaxed)
    );
    println!(
        "reads without the log: {} served ({} by followers); leadership transfers: {} asked",
        reads.load(Ordering::Relaxed),
        follower_reads.load(Ordering::Relaxed),
        transfers.load(Ordering::Relaxed)
    );
    println!("membership changes: {} accepted by a leader", changes.load(Ordering::Relaxed));
    println!(
        "storage faults: {} injected (every damaged member repaired); disks filled: {}",
        storage_faults.load(Ordering::Relaxed),
        disk_full.load(Ordering::Relaxed)
    );
    println!(
        "hibernation: {} node ticks asleep, {} sleeping followers woken by the liveness check; \
         {} quiet ticks and {} acknowledgements nothing waited for held back",
        asleep.load(Ordering::Relaxed),
        liveness.load(Ordering::Relaxed),
        deferred.load(Ordering::Relaxed),
        deferred_acks.load(Ordering::Relaxed)
    );
    for f in &failures {
        println!("  {f}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--groups G`: every seed with G groups on each node ([`raft_core::sim::groups`]).
fn sweep_groups(
    range: std::ops::Range<u64>,
    groups: usize,
    threads: usize,
    opts: &ChaosOptions,
) -> ExitCode {
    std::panic::set_hook(Box::new(|_| {}));
    let next = AtomicU64::new(range.start);
    let ops = AtomicU64::new(0);
    let asleep = AtomicU64::new(0);
    let deferred = AtomicU64::new(0);
    let installed = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= range.end {
                    break;
                }
                let run = std::panic::catch_unwind(|| {
                    raft_core::sim::groups::run_groups_seed(seed, groups, opts)
                });
                match run {
                    Ok(Ok(report)) => {
                        ops.fetch_add(report.ops_completed, Ordering::Relaxed);
                        asleep.fetch_add(report.asleep_ticks, Ordering::Relaxed);
                        deferred.fetch_add(report.deferred_ticks, Ordering::Relaxed);
                        installed.fetch_add(report.snapshots_installed, Ordering::Relaxed);
                    }
                    Ok(Err(failure)) => {
                        eprintln!("\n{failure} (with --groups {groups})");
                        failures.lock().unwrap_or_else(|e| e.into_inner()).push(seed);
                    }
                    Err(_) => {
                        eprintln!("\nseed {seed} panicked (with --groups {groups})");
                        failures.lock().unwrap_or_else(|e| e.into_inner()).push(seed);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    println!(
        "{} seeds x {groups} groups in {:.1} s ({threads} threads): {} client operations completed, {} ticks asleep, {} quiet ticks held back, {} snapshots installed, {} failed",
        range.end.saturating_sub(range.start),
        started.elapsed().as_secs_f64(),
        ops.load(Ordering::Relaxed),
        asleep.load(Ordering::Relaxed),
        deferred.load(Ordering::Relaxed),
        installed.load(Ordering::Relaxed),
        failures.len()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failed seeds: {failures:?}");
        ExitCode::FAILURE
    }
}
