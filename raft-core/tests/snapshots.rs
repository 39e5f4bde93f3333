//! Snapshot scenarios in the spirit of the MIT 6.824 snapshot tests (2D), over the simulator:
//! basic snapshots, installing a snapshot on a follower that was cut off, on an unreliable
//! network, with crashes, and with crashes on an unreliable network. Every run passes the
//! simulator's safety checks after every event, keeps every node's log short (asserted
//! throughout), converges, and ends with a linearizable client history.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use common::*;
use raft_core::rng::Rng;
use raft_core::sim::kv::{prune_unobserved_unknown_writes, KvModel, KvWorkload};
use raft_core::sim::linearizability::{check_history, CheckOutcome};
use raft_core::sim::{Cluster, NetFaults, SimOptions, WorkloadOptions};
use raft_core::{Config, MemLogStore, NodeId};

const SNAPSHOT_ENTRIES: u64 = 10;
const KEEP: u64 = 2;
/// Longest log a store may hold: the threshold and the kept tail, plus what is appended while a
/// snapshot waits for its entries to apply (a few client operations in flight).
const LOG_BOUND: u64 = SNAPSHOT_ENTRIES + KEEP + 40;

fn snapshot_cluster(seed: u64, net: NetFaults) -> Cluster {
    let raft = {
        let mut c = Config::default();
        c.election_ticks = 10;
        c.heartbeat_ticks = 2;
        c.snapshot_entries = SNAPSHOT_ENTRIES;
        c.log_keep_entries = KEEP;
        c.snapshot_chunk_bytes = 64;
        c
    };
    let opts = SimOptions { nodes: 3, seed, raft, net, ..SimOptions::default() };
    let workload = KvWorkload { keys: 4, read_pct: 30 };
    Cluster::with_workload(opts, workload, |_| Box::new(MemLogStore::with_explicit_sync()))
}

/// Runs `ms` in steps, asserting after each that no node's log outgrew the bound.
fn run_bounded(c: &mut Cluster, ms: u64) {
    for _ in 0..ms / 10 {
        run(c, 10);
        for id in c.ids() {
            let len = c.log_len(id);
            assert!(len <= LOG_BOUND, "node {id} holds {len} log entries (bound {LOG_BOUND})");
        }
    }
}

#[derive(Clone, Copy)]
enum Fault {
    /// Cut a random node off, then reconnect it.
    Disconnect,
    /// Crash a random node, then restart it from its disk.
    Crash,
}

/// The 6.824 "snapcommon" loop: rounds of client traffic, with one node taken away for each
/// round and brought back after it, so it must be caught up by a snapshot.
fn scenario(seed: u64, net: NetFaults, fault: Option<Fault>) {
    // An unreliable network completes far fewer operations per second: give it longer rounds.
    let round_ms = if net.loss > 0.0 { 2_000 } else { 600 };
    let mut c = snapshot_cluster(seed, net);
    let mut rng = Rng::new(seed ^ 0x2D);
    c.start_workload(WorkloadOptions { clients: 5, timeout_us: 1_000_000, think_max_us: 2_000 });
    for _ in 0..8 {
        let victim: NodeId = rng.range(1, 3);
        match fault {
            Some(Fault::Disconnect) => c.disconnect(victim),
            Some(Fault::Crash) => c.crash(victim),
            None => {}
        }
        run_bounded(&mut c, round_ms);
        match fault {
            Some(Fault::Disconnect) => c.connect(victim),
            Some(Fault::Crash) => c.restart(victim),
            None => {}
        }
        run_bounded(&mut c, 300);
    }
    c.stop_workload();
    c.set_net_faults(NetFaults::default());
    let idle = c.run_until(5_000 * MS, 50 * MS, Cluster::clients_idle).unwrap();
    assert!(idle, "clients still busy");
    let converged = |c: &Cluster| {
        let top = c.max_committed();
        c.ids().all(|id| c.raft(id).is_some_and(|r| r.commit_index() == top))
            && c.ids().all(|id| c.applied_len(id) as u64 == top)
    };
    assert!(c.run_until(10_000 * MS, 50 * MS, converged).unwrap(), "nodes did not converge");
    run_bounded(&mut c, 100);
    // Every replica holds the same state, however it got there.
    for id in c.ids().skip(1) {
        assert_eq!(c.machine(id), c.machine(1), "node {id} and node 1 disagree");
    }
    let stats = c.stats().clone();
    assert!(stats.snapshots_taken > 0, "no snapshot was taken");
    if fault.is_some() {
        assert!(stats.snapshots_installed > 0, "no follower was caught up by a snapshot");
    }
    assert!(stats.max_log_len <= LOG_BOUND, "a log reached {} entries", stats.max_log_len);
    let mut history = c.history();
    assert!(history.len() > 150, "only {} client operations", history.len());
    prune_unobserved_unknown_writes(&mut history);
    let outcome = check_history(&KvModel, &history, 20_000_000);
    assert_eq!(outcome, CheckOutcome::Linearizable, "seed {seed}");
}

#[test]
fn basic_snapshots() {
    for seed in 0..3 {
        scenario(seed, NetFaults::reliable(), None);
    }
}

#[test]
fn install_snapshots_on_a_disconnected_follower() {
    for seed in 0..3 {
        scenario(seed, NetFaults::default(), Some(Fault::Disconnect));
    }
}

#[test]
fn install_snapshots_on_an_unreliable_network() {
    for seed in 0..3 {
        scenario(seed, NetFaults::unreliable(), Some(Fault::Disconnect));
    }
}

#[test]
fn install_snapshots_with_crashes() {
    for seed in 0..3 {
        scenario(seed, NetFaults::default(), Some(Fault::Crash));
    }
}

#[test]
fn install_snapshots_with_crashes_on_an_unreliable_network() {
    for seed in 0..3 {
        scenario(seed, NetFaults::unreliable(), Some(Fault::Crash));
    }
}

/// 6.824 "TestSnapshotAllCrash2D": the whole cluster crashes repeatedly and restarts from its
/// snapshots and logs; committed commands survive and new ones still commit.
#[test]
fn whole_cluster_crashes_restart_from_snapshots() {
    for seed in 0..3 {
        let mut c = snapshot_cluster(seed, NetFaults::default());
        let mut last = 0;
        for round in 0..5 {
            for k in 0..15 {
                last = one(&mut c, format!("r{round}-{k}").as_bytes(), 3, true);
            }
            for id in c.ids() {
                c.crash(id);
            }
            for id in c.ids() {
                c.restart(id);
                // A restart starts from the newest snapshot: nothing before it is replayed.
                let raft = c.raft(id).unwrap();
                assert!(raft.applied_index() >= raft.status().snapshot_index);
            }
            let index = one(&mut c, format!("after-{round}").as_bytes(), 3, true);
            assert!(index > last, "a new command landed at {index}, not after {last}");
            run_bounded(&mut c, 200);
        }
        assert!(c.stats().snapshots_taken > 0);
    }
}
