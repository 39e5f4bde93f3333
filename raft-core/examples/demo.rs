//! A three-node Raft cluster in the deterministic simulator (virtual time, in one process):
//! clients write and read keys, the leader is killed, a new one is elected, the old one comes
//! back and catches up, and at the end the whole client history is checked for
//! linearizability. Exits non-zero if anything is wrong.
//!
//! `cargo run --release -p raft-core --features sim --example demo [-- --seed N]`
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use raft_core::sim::kv::{prune_unobserved_unknown_writes, KvModel, KvWorkload};
use raft_core::sim::linearizability::{check_history, CheckOutcome};
use raft_core::sim::{Cluster, NetFaults, SimOptions, WorkloadOptions};
use raft_core::{MemLogStore, NodeId};

const MS: u64 = 1_000;

fn status_line(c: &Cluster) -> String {
    let leader = c.leader();
    let term = leader.and_then(|l| c.raft(l)).map_or(0, |r| r.term());
    let nodes: Vec<String> = c
        .ids()
        .map(|id| match c.raft(id) {
            Some(r) => format!(
                "n{id}:{}@{}",
                r.role().to_string().chars().next().unwrap_or('?'),
                r.applied_index()
            ),
            None => format!("n{id}:down"),
        })
        .collect();
    format!(
        "t={:>5} ms  leader={}  term={term:<3} committed={:<6} ops={:<6} [{}]",
        c.now_us() / MS,
        leader.map_or("-".into(), |l| format!("n{l}")),
        c.max_committed(),
        c.stats().ops_completed,
        nodes.join(" ")
    )
}

fn run(c: &mut Cluster, ms: u64, every_ms: u64) -> Result<(), String> {
    let end = c.now_us() + ms * MS;
    while c.now_us() < end {
        c.run_for(every_ms * MS).map_err(|e| e.to_string())?;
        println!("{}", status_line(c));
    }
    Ok(())
}

fn demo(seed: u64) -> Result<(), String> {
    println!(
        "raftkit demo: 3 nodes, 8 clients, simulated network (0.1-2 ms) and disks, seed {seed}"
    );
    println!("(virtual time: the run takes a fraction of a second of real time)\n");
    let opts = SimOptions { nodes: 3, seed, net: NetFaults::default(), ..SimOptions::default() };
    let workload = KvWorkload { keys: 10, ..KvWorkload::default() };
    let mut c =
        Cluster::with_workload(opts, workload, |_| Box::new(MemLogStore::with_explicit_sync()));
    c.start_workload(WorkloadOptions { clients: 8, think_max_us: 2 * MS, timeout_us: 300 * MS });
    run(&mut c, 2_000, 250)?;

    let old = c.leader().ok_or("no leader after 2 s")?;
    let before = c.stats().ops_completed;
    println!("\n>>> killing the leader n{old} (its unsynced writes are lost)\n");
    c.crash(old);
    let killed_at = c.now_us();
    let elected = c
        .run_until(5_000 * MS, MS, |c| c.leader().is_some_and(|l| l != old))
        .map_err(|e| e.to_string())?;
    if !elected {
        return Err("no new leader within 5 s".into());
    }
    let new = c.leader().unwrap_or(0);
    println!(">>> n{new} elected leader {} ms after the crash\n", (c.now_us() - killed_at) / MS);
    run(&mut c, 2_000, 250)?;
    if c.stats().ops_completed <= before {
        return Err("no writes completed after the new election".into());
    }

    println!("\n>>> restarting n{old} from its disk\n");
    c.restart(old);
    let target = c.max_committed();
    run(&mut c, 1_500, 250)?;
    let caught_up = c.raft(old).map_or(0, |r| r.applied_index());
    println!("\n>>> n{old} re-applied its log up to index {caught_up} (the leader had committed {target} when it came back)\n");
    if caught_up < target {
        return Err(format!("n{old} did not catch up: applied {caught_up} < {target}"));
    }

    c.stop_workload();
    c.run_until(5_000 * MS, 10 * MS, Cluster::clients_idle).map_err(|e| e.to_string())?;
    c.run_for(500 * MS).map_err(|e| e.to_string())?;
    let top = c.max_committed();
    let converged: Vec<(NodeId, u64)> =
        c.ids().filter_map(|id| c.raft(id).map(|r| (id, r.applied_index()))).collect();
    println!("final applied index per node: {converged:?}");
    if converged.iter().any(|&(_, applied)| applied != top) {
        return Err(format!("nodes did not converge on {top}"));
    }

    let mut history = c.history();
    let mut latencies: Vec<u64> =
        history.iter().filter(|op| op.ret != u64::MAX).map(|op| op.ret - op.call).collect();
    latencies.sort_unstable();
    let pct =
        |q: f64| latencies.get(((latencies.len() - 1) as f64 * q) as usize).copied().unwrap_or(0);
    let ops = latencies.len();
    let seconds = c.now_us() as f64 / 1e6;
    println!(
        "{ops} client operations acknowledged in {seconds:.1} s of virtual time ({:.0} ops/s); latency p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms (the max spans the election)",
        ops as f64 / seconds,
        pct(0.5) as f64 / 1e3,
        pct(0.99) as f64 / 1e3,
        pct(1.0) as f64 / 1e3
    );
    prune_unobserved_unknown_writes(&mut history);
    match check_history(&KvModel, &history, 50_000_000) {
        CheckOutcome::Linearizable => {
            println!("linearizability: every acknowledged write is present and every read was current ({} operations checked)", history.len());
            Ok(())
        }
        other => Err(format!("history is not linearizable: {other:?}")),
    }
}

fn main() -> ExitCode {
    let seed = std::env::args()
        .skip_while(|a| a != "--seed")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2026);
    match demo(seed) {
        Ok(()) => {
            println!("\ndemo passed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("\ndemo FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
