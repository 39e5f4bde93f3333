//! The chaos scenario: one seed picks a cluster size, fault rates and Raft settings, then runs a
//! client workload through random partitions, crashes and restarts, heals everything, and
//! checks safety after every step, liveness and convergence after healing, and the
//! linearizability of the whole client history at the end.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::bank::BankWorkload;
use super::kv::KvWorkload;
use super::linearizability::{check_history, CheckOutcome};
use super::workload::Workload;
use super::{Cluster, CrashableStore, DiskModel, Faults, NetFaults, SimOptions, WorkloadOptions};
use crate::node::ReadMode;
use crate::rng::Rng;
use crate::types::NodeId;
use crate::{Config, MemLogStore};

/// How long each phase of the scenario runs.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// Virtual time under faults.
    pub fault_us: u64,
    /// Virtual time after healing in which the group must make progress again.
    pub settle_us: u64,
    /// Search steps the linearizability checker may spend per key.
    pub checker_budget: u64,
    /// Break the commit rule on every node (count replicas of entries of any term), to prove
    /// that the simulator catches it. Never set outside that self-test.
    pub break_commit_rule: bool,
    /// Whether nodes hold back quiet ticks ([`SimOptions::defer_quiet_ticks`]); `None`: the
    /// seed decides (half of them do).
    pub defer_quiet_ticks: Option<bool>,
    /// Whether nodes hold back acknowledgements nothing waits for
    /// ([`SimOptions::defer_persist_acks`]); `None`: the seed decides (half of them do).
    pub defer_persist_acks: Option<bool>,
}

impl Default for ChaosOptions {
    fn default() -> ChaosOptions {
        ChaosOptions {
            fault_us: 20_000_000,
            settle_us: 3_000_000,
            checker_budget: 20_000_000,
            break_commit_rule: false,
            defer_quiet_ticks: None,
            defer_persist_acks: None,
        }
    }
}

/// What a passing run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChaosReport {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Operations in the checked history.
    pub history_ops: usize,
    /// Operations that completed.
    pub ops_completed: u64,
    /// Operations abandoned with unknown outcome.
    pub ops_timed_out: u64,
    /// The highest term reached.
    pub max_term: u64,
    /// The highest committed index.
    pub committed: u64,
    /// Messages sent.
    pub messages: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Faults injected (partitions, crashes, restarts, link cuts, heals).
    pub faults: u64,
    /// Snapshots nodes took of their own state machines.
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// The longest log any node's store held at any point.
    pub max_log_len: u64,
    /// Reads served without the log (ReadIndex, lease, follower reads).
    pub reads_served: u64,
    /// Of those, reads served by followers.
    pub follower_reads: u64,
    /// Leadership transfers asked for.
    pub transfers: u64,
    /// Membership changes a leader accepted.
    pub membership_changes: u64,
    /// Storage faults injected (logs damaged at a restart, entries corrupted while running).
    pub storage_faults: u64,
    /// Times a node's disk filled up for a while.
    pub disk_full: u64,
    /// Ticks nodes slept through (hibernation), and sleeping followers woken by the liveness
    /// check.
    pub asleep_ticks: u64,
    /// See `asleep_ticks`.
    pub liveness_wakes: u64,
    /// Ticks nodes held back because their core called them quiet.
    pub deferred_ticks: u64,
    /// Acknowledgements of durable writes nodes held back because nothing waited for them.
    pub deferred_acks: u64,
}

/// A failing run: the seed, what broke, and how to replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChaosFailure {
    /// The seed.
    pub seed: u64,
    /// The workload's name ([`Workload::name`]).
    pub machine: &'static str,
    /// What broke.
    pub reason: String,
}

impl ChaosFailure {
    /// The one command that replays this seed.
    pub fn replay_command(&self) -> String {
        let sweep = "cargo run --release -p raft-core --features sim --example sim-sweep --";
        match self.machine {
            "kv" => format!("{sweep} --seed {}", self.seed),
            "bank" => format!("{sweep} --machine bank --seed {}", self.seed),
            _ => format!("chaos::run_seed_with(seed {}, ..) with the same workload", self.seed),
        }
    }
}

impl std::fmt::Display for ChaosFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed {} failed: {}\n  replay: {}", self.seed, self.reason, self.replay_command())
    }
}

impl std::error::Error for ChaosFailure {}

/// The settings a seed picks.
pub fn options_for_seed(seed: u64) -> SimOptions {
    let mut rng = Rng::new(seed ^ 0x5EED_CA05);
    let pick = |rng: &mut Rng, choices: &[u64]| choices[rng.below(choices.len() as u64) as usize];
    let nodes = if rng.chance(0.5) { 3 } else { 5 };
    let net = NetFaults {
        loss: [0.0, 0.01, 0.05, 0.1, 0.2][rng.below(5) as usize],
        duplicate: [0.0, 0.02, 0.05][rng.below(3) as usize],
        delay_min_us: 50,
        delay_max_us: pick(&mut rng, &[500, 2_000, 10_000, 30_000]),
        long_delay: [0.0, 0.01, 0.03][rng.below(3) as usize],
        long_delay_max_us: pick(&mut rng, &[100_000, 500_000]),
    };
    let disk = DiskModel {
        latency_min_us: 20,
        latency_max_us: pick(&mut rng, &[200, 1_000, 5_000]),
        slow: [0.0, 0.01, 0.05][rng.below(3) as usize],
        slow_max_us: pick(&mut rng, &[20_000, 100_000]),
    };
    let raft = Config {
        election_ticks: 10,
        heartbeat_ticks: pick(&mut rng, &[1, 2, 3]) as u32,
        pre_vote: rng.chance(0.75),
        check_quorum: rng.chance(0.75),
        append_entries_max: pick(&mut rng, &[1, 4, 64]) as usize,
        append_bytes_max: pick(&mut rng, &[64, 4_096, 1 << 20]),
        inflight_msgs_max: pick(&mut rng, &[1, 2, 8, 64]) as usize,
        inflight_bytes_max: pick(&mut rng, &[256, 1 << 20]),
        apply_bytes_max: pick(&mut rng, &[64, 1 << 20]),
        // Small caches make replication and apply read the store (the fetch paths).
        log_cache_bytes_max: pick(&mut rng, &[0, 2_048, 64 << 20]),
        ..Config::default()
    };
    // Snapshots with small thresholds, so compaction, InstallSnapshot and restores happen often
    // (their own generator, so the picks above stay what they were for every seed).
    let mut snap_rng = Rng::new(seed ^ 0x5A95_4075);
    let raft = Config {
        snapshot_entries: pick(&mut snap_rng, &[0, 5, 20, 100]),
        snapshot_bytes: pick(&mut snap_rng, &[0, 0, 2_000]),
        log_keep_entries: pick(&mut snap_rng, &[0, 3, 50]),
        snapshot_chunk_bytes: pick(&mut snap_rng, &[16, 200, 1 << 20]),
        ..raft
    };
    let clock_drift_pct = pick(&mut rng, &[0, 5, 20]);
    let fetch_delay_max_us = pick(&mut rng, &[100, 5_000]);
    // How reads are served (its own generator too): half by ReadIndex, a quarter from the lease
    // where check-quorum allows one (with the drift allowance the seed's clocks need), the rest
    // through the log.
    let mut read_rng = Rng::new(seed ^ 0x8EAD_1DE5);
    let read_mode = match read_rng.below(4) {
        0 | 1 => ReadMode::Index,
        2 if raft.check_quorum => ReadMode::Lease,
        2 => ReadMode::Index,
        _ => ReadMode::Log,
    };
    // Half the seeds hibernate idle groups (their own generator too).
    let mut sleep_rng = Rng::new(seed ^ 0x051E_E9ED);
    let raft = Config {
        max_clock_drift_ticks: drift_ticks_needed(raft.election_ticks, clock_drift_pct),
        hibernate_ticks: pick(&mut sleep_rng, &[0, 0, 3, 30]) as u32,
        ..raft
    };
    // A third of the five-node clusters run node 5 as a learner (four voters).
    let learners =
        if nodes == 5 && Rng::new(seed ^ 0x1EA2_4E25).chance(0.33) { vec![5] } else { Vec::new() };
    // Half the seeds change the membership as they go, with two spare nodes to add.
    let (nodes, initial_members) =
        if changes_membership(seed) { (nodes + 2, nodes) } else { (nodes, 0) };
    SimOptions {
        nodes,
        initial_members,
        seed,
        raft,
        tick_us: 10_000,
        clock_drift_pct,
        net,
        disk,
        fetch_delay_max_us,
        check_node_invariants: true,
        learners,
        read_mode,
        false_wake: 0.0005,
        // Half the seeds hold quiet ticks back, as the runtime does (their own generator too).
        defer_quiet_ticks: Rng::new(seed ^ 0x71C0_0DE5).chance(0.5),
        // Half hold acknowledgements back, as the node driver does (their own generator).
        defer_persist_acks: Rng::new(seed ^ 0xACC5_0DE5).chance(0.5),
    }
}

/// Whether the chaos run of `seed` adds, promotes and removes members (its own generator, so
/// the other picks of a seed stay what they were).
pub fn changes_membership(seed: u64) -> bool {
    Rng::new(seed ^ 0xC0F1_6000).chance(0.5)
}

/// Whether the chaos run of `seed` damages nodes' logs, one node at a time (its own generator).
pub fn damages_storage(seed: u64) -> bool {
    Rng::new(seed ^ 0xD15C_DA3A).chance(0.5)
}

/// Whether the chaos run of `seed` fills nodes' disks for a while (its own generator).
pub fn fills_disks(seed: u64) -> bool {
    Rng::new(seed ^ 0xF011_D15C).chance(0.5)
}

/// The drift allowance (in ticks per election timeout) that keeps a lease safe when every
/// node's tick is within `drift_pct` percent of nominal: a leader's lease of `L` slow ticks
/// must end before `election_ticks - 1` fast ticks of any follower, so
/// `L <= (election_ticks - 1) * (100 - drift) / (100 + drift)`.
pub fn drift_ticks_needed(election_ticks: u32, drift_pct: u64) -> u32 {
    let span = u64::from(election_ticks.saturating_sub(1));
    let drift = drift_pct.min(99);
    let lease = span * (100 - drift) / (100 + drift);
    (span - lease) as u32
}

/// Nodes `1..=n` shuffled, and where to cut them in two (each side at least one node; either may
/// hold the majority).
pub(super) fn random_split(rng: &mut Rng, n: u64) -> (Vec<NodeId>, usize) {
    let mut ids: Vec<NodeId> = (1..=n).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i as u64 + 1) as usize);
    }
    (ids, rng.range(1, n - 1) as usize)
}

/// The key-value workload a seed picks: a few keys, some share of reads.
pub fn kv_workload(rng: &mut Rng) -> KvWorkload {
    KvWorkload { keys: rng.range(2, 8) as usize, read_pct: rng.range(20, 60) }
}

/// The bank workload a seed picks: a few accounts, some share of whole-bank reads.
pub fn bank_workload(rng: &mut Rng) -> BankWorkload {
    BankWorkload { accounts: rng.range(2, 6) as usize, opening: 100, read_pct: rng.range(10, 50) }
}

/// Runs the chaos scenario for `seed` on the key-value machine, turning panics (broken
/// internal invariants) into failures too.
pub fn run_seed(seed: u64, opts: &ChaosOptions) -> Result<ChaosReport, ChaosFailure> {
    run_seed_with_stores(seed, opts, |_| Box::new(MemLogStore::with_explicit_sync()))
}

/// Runs the chaos scenario for `seed` on the key-value machine with the log stores
/// `make_store` builds (one per node): the simulator then also checks that every crash leaves
/// each store holding exactly what it reported durable.
pub fn run_seed_with_stores(
    seed: u64,
    opts: &ChaosOptions,
    make_store: impl FnMut(NodeId) -> Box<dyn CrashableStore>,
) -> Result<ChaosReport, ChaosFailure> {
    run_seed_with(seed, opts, kv_workload, make_store)
}

/// Runs the chaos scenario for `seed` on any machine: `make_workload` builds the workload from
/// the seed's generator (so a seed picks its settings), `make_store` each node's log store.
/// Every check runs as for the key-value machine, with linearizability against the workload's
/// model and the workload's invariant after every applied entry.
pub fn run_seed_with<W: Workload>(
    seed: u64,
    opts: &ChaosOptions,
    make_workload: impl FnOnce(&mut Rng) -> W,
    make_store: impl FnMut(NodeId) -> Box<dyn CrashableStore>,
) -> Result<ChaosReport, ChaosFailure> {
    let mut machine = "custom";
    let run = || run_seed_inner(seed, opts, make_workload, make_store, &mut machine);
    let outcome = catch_unwind(AssertUnwindSafe(run));
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(ChaosFailure { seed, machine, reason: format!("panic: {message}") })
        }
    }
}

fn run_seed_inner<W: Workload>(
    seed: u64,
    opts: &ChaosOptions,
    make_workload: impl FnOnce(&mut Rng) -> W,
    make_store: impl FnMut(NodeId) -> Box<dyn CrashableStore>,
    machine: &mut &'static str,
) -> Result<ChaosReport, ChaosFailure> {
    let mut sim_opts = options_for_seed(seed);
    if let Some(defer) = opts.defer_quiet_ticks {
        sim_opts.defer_quiet_ticks = defer;
    }
    if let Some(defer) = opts.defer_persist_acks {
        sim_opts.defer_persist_acks = defer;
    }
    let n = sim_opts.nodes as NodeId;
    let mut rng = Rng::new(seed ^ 0xFA17_5EED);
    let clients = WorkloadOptions {
        clients: rng.range(2, 6) as usize,
        timeout_us: rng.range(500_000, 1_500_000),
        think_max_us: rng.range(1_000, 50_000),
    };
    let workload = make_workload(&mut rng);
    *machine = workload.name();
    let name = workload.name();
    let fail = |reason: String| ChaosFailure { seed, machine: name, reason };
    let mut cluster = Cluster::with_workload(sim_opts, workload, make_store);
    if opts.break_commit_rule {
        cluster.set_faults(Faults::commit_any_term());
    }
    cluster.start_workload(clients);
    // Leadership transfers come from their own generator, so the faults a seed picks stay what
    // they were without them.
    let mut transfer_rng = Rng::new(seed ^ 0x7EA2_5FE2);
    let mut faults = 0;
    let run =
        |cluster: &mut Cluster<W>, us: u64| cluster.run_for(us).map_err(|e| fail(e.to_string()));

    // Membership changes too (on the seeds that make them).
    let mut member_rng = Rng::new(seed ^ 0x3E3B_E125);
    let mut ever_member: Vec<NodeId> = (1..=n)
        .filter(|&id| cluster.raft(id).is_some_and(|r| r.membership().contains(id)))
        .collect();
    // And storage faults (on the seeds that inject them).
    let mut storage_rng = Rng::new(seed ^ 0x5709_A6E5);
    // And quiet spells, on the seeds that hibernate.
    let mut sleep_rng = Rng::new(seed ^ 0x0051_EE95);
    // And full disks (on the seeds that fill them).
    let mut full_rng = Rng::new(seed ^ 0x00F1_11ED);
    while cluster.now_us() < opts.fault_us {
        run(&mut cluster, rng.range(20_000, 400_000))?;
        if damages_storage(seed) && storage_rng.chance(0.15) {
            damage_storage(&mut cluster, &mut storage_rng, n);
        }
        if cluster.options().raft.hibernate_ticks > 0 && sleep_rng.chance(0.2) {
            // A quiet spell: the clients pause, the group falls asleep, and the faults below
            // (a crashed or cut-off leader among them) hit it asleep.
            cluster.stop_workload();
            run(&mut cluster, sleep_rng.range(200_000, 1_500_000))?;
            cluster.resume_workload();
        }
        if fills_disks(seed) && full_rng.chance(0.15) {
            // Any node, the leader included, for up to two seconds.
            let id = full_rng.range(1, n);
            let for_us = full_rng.range(10_000, 2_000_000);
            cluster.fill_disk(id, for_us);
        }
        if changes_membership(seed) && member_rng.chance(0.3) {
            change_membership(&mut cluster, &mut member_rng, n, &mut ever_member);
        }
        if transfer_rng.chance(0.2) {
            if let Some(leader) = cluster.leader() {
                let to = transfer_rng.range(1, n);
                // Refusals (a leader that just stepped down) are part of the game.
                let _ = cluster.transfer_leader(leader, to);
            }
        }
        faults += 1;
        match rng.below(100) {
            0..=19 => {
                // A random split; either side may hold the majority.
                let (ids, cut) = random_split(&mut rng, n);
                let (a, b) = ids.split_at(cut);
                cluster.partition(&[a, b]);
            }
            20..=29 => {
                // One-way link failures.
                for _ in 0..rng.range(1, 3) {
                    let from = rng.range(1, n);
                    let to = rng.range(1, n);
                    if from != to {
                        cluster.block_link(from, to);
                    }
                }
            }
            30..=39 => cluster.heal(),
            40..=54 => cluster.set_crash_on_commit(true),
            55..=69 => {
                let id = rng.range(1, n);
                cluster.crash(id);
            }
            70..=89 => {
                let down: Vec<NodeId> = (1..=n).filter(|&id| !cluster.is_up(id)).collect();
                if let Some(&id) = down.get(rng.below(down.len().max(1) as u64) as usize) {
                    cluster.restart(id);
                }
            }
            _ => {
                // Crash and restart at once: the node comes back with only its durable state.
                let id = rng.range(1, n);
                cluster.crash(id);
                cluster.restart(id);
            }
        }
    }

    settle_and_check(&mut cluster, seed, opts, faults, &fail)
}

/// After the faults: heals everything and requires that the group serves clients again, that
/// every member converges on the same committed, applied and healthy log, and that the clients'
/// history is linearizable. Returns the run's report.
pub(super) fn settle_and_check<W: Workload>(
    cluster: &mut Cluster<W>,
    seed: u64,
    opts: &ChaosOptions,
    faults: u64,
    fail: &dyn Fn(String) -> ChaosFailure,
) -> Result<ChaosReport, ChaosFailure> {
    let n = cluster.options().nodes as NodeId;
    let run =
        |cluster: &mut Cluster<W>, us: u64| cluster.run_for(us).map_err(|e| fail(e.to_string()));
    // Heal everything: the group must recover and serve clients again.
    cluster.heal();
    cluster.set_crash_on_commit(false);
    for id in 1..=n {
        cluster.restart(id);
    }
    let healed_at = cluster.now_us();
    let mut calmer = cluster.options().net.clone();
    calmer.loss = calmer.loss.min(0.01);
    calmer.long_delay = 0.0;
    cluster.set_net_faults(calmer);
    // A node still repairing its damaged log cannot help commit until it is whole, so the
    // others must catch up first, at the pace the seed's limits allow: give them longer.
    let settle_us =
        if cluster.damaged_nodes().is_empty() { opts.settle_us } else { opts.settle_us * 3 };
    run(cluster, settle_us)?;
    if cluster.last_completion_us() <= healed_at {
        return Err(fail(format!(
            "no client operation completed within {} us after healing (leaders: {:?}){}",
            settle_us,
            cluster.leaders(),
            cluster.describe()
        )));
    }

    // Let clients finish, then let the followers learn the final commit index.
    cluster.stop_workload();
    let idle = cluster
        // Long enough for a retried operation to lose a few messages in a row (timeouts reach
        // 1.5 s; the settled network still loses 1%).
        .run_until(10_000_000, 50_000, Cluster::<W>::clients_idle)
        .map_err(|e| fail(e.to_string()))?;
    if !idle {
        return Err(fail(format!(
            "clients still busy 10 s after the workload stopped: (client, target, op, read, \
             called at) = {:?}{}",
            cluster.busy_clients(),
            cluster.describe()
        )));
    }
    // Every member must catch up (at whatever pace the seed's limits allow); nodes removed
    // along the way keep what they had.
    let converged = |c: &Cluster<W>| {
        let top = c.max_committed();
        let Some(members) = c.leader().and_then(|l| c.raft(l)).map(|r| r.membership().members())
        else {
            return false;
        };
        members.iter().all(|&id| {
            c.raft(id).is_some_and(|r| {
                r.commit_index() == top
                    && c.applied_len(id) as u64 == top
                    && r.health() == crate::Health::Healthy
            })
        })
    };
    let done =
        cluster.run_until(30_000_000, 100_000, converged).map_err(|e| fail(e.to_string()))?;
    let top = cluster.max_committed();
    if !done {
        let commits: Vec<(NodeId, u64, usize, crate::Health)> = (1..=n)
            .filter_map(|id| {
                cluster
                    .raft(id)
                    .map(|r| (id, r.commit_index(), cluster.applied_len(id), r.health()))
            })
            .collect();
        return Err(fail(format!(
            "nodes did not converge on commit index {top} with healthy logs: (node, commit, \
             applied, health) = {commits:?}{}",
            cluster.describe()
        )));
    }

    let mut history = cluster.history();
    cluster.workload().prepare_history(&mut history);
    match check_history(&cluster.workload().model(), &history, opts.checker_budget) {
        CheckOutcome::Linearizable => {}
        other => return Err(fail(format!("client history of {} ops: {other:?}", history.len()))),
    }
    let stats = cluster.stats();
    Ok(ChaosReport {
        seed,
        nodes: n as usize,
        history_ops: history.len(),
        ops_completed: stats.ops_completed,
        ops_timed_out: stats.ops_timed_out,
        max_term: (1..=n).filter_map(|id| cluster.raft(id).map(|r| r.term())).max().unwrap_or(0),
        committed: top,
        messages: stats.messages_sent(),
        crashes: stats.crashes,
        faults,
        snapshots_taken: stats.snapshots_taken,
        snapshots_installed: stats.snapshots_installed,
        max_log_len: stats.max_log_len,
        reads_served: stats.reads_served,
        follower_reads: stats.follower_reads,
        transfers: stats.transfers,
        membership_changes: stats.membership_changes,
        storage_faults: stats.storage_faults,
        disk_full: stats.disk_full,
        asleep_ticks: stats.asleep_ticks,
        liveness_wakes: stats.liveness_wakes,
        deferred_ticks: stats.deferred_ticks,
        deferred_acks: stats.deferred_acks,
    })
}

/// One storage fault, on a node no other damage is being repaired on (one bad disk at a time):
/// either the node is stopped, its log damaged from a random entry on and restarted, or a
/// random entry of a running node's log is corrupted.
fn damage_storage<W: Workload>(cluster: &mut Cluster<W>, rng: &mut Rng, n: NodeId) {
    if !cluster.damaged_nodes().is_empty() {
        return;
    }
    let id = rng.range(1, n);
    let Some((first, last)) = cluster.log_range(id) else { return };
    if last < first {
        return;
    }
    let index = rng.range(first, last);
    if rng.chance(0.5) {
        let was_up = cluster.is_up(id);
        cluster.damage_log(id, index);
        if was_up {
            cluster.restart(id);
        }
    } else {
        cluster.corrupt_entry(id, index);
    }
}

/// One random membership change on the leader: add a learner (a spare, or a removed node, on a
/// wiped disk half the time), promote one, remove a voter (the leader too) or a learner, or
/// replace a voter by a learner in one change. Keeps at least three voters. Refusals (a change
/// in flight, a lagging learner, no leader) are part of the game.
fn change_membership<W: Workload>(
    cluster: &mut Cluster<W>,
    rng: &mut Rng,
    n: NodeId,
    ever_member: &mut Vec<NodeId>,
) {
    use crate::MembershipChange::{AddLearner, Promote, Remove};
    let Some(leader) = cluster.leader() else { return };
    let Some(raft) = cluster.raft(leader) else { return };
    let m = raft.membership().clone();
    // Only the leader of the newest term knows the configuration no later one can undo.
    let committed = raft.membership_index() <= raft.commit_index()
        && !m.is_joint()
        && raft.term() >= cluster.max_term();
    let pick = |rng: &mut Rng, from: &[NodeId]| {
        (!from.is_empty()).then(|| from[rng.below(from.len() as u64) as usize])
    };
    let outsiders: Vec<NodeId> = (1..=n).filter(|&id| !m.contains(id)).collect();
    let changes = match rng.below(5) {
        0 => {
            let Some(id) = pick(rng, &outsiders) else { return };
            // A removed node may come back on an empty disk, once the configuration that
            // removed it has committed (a wiped voter would be a node that forgot its vote).
            if ever_member.contains(&id) && committed && rng.chance(0.5) {
                cluster.wipe(id);
            }
            cluster.restart(id);
            vec![AddLearner { id, address: format!("sim-{id}") }]
        }
        1 => {
            let Some(id) = pick(rng, &m.learners) else { return };
            vec![Promote { id }]
        }
        2 if m.voters.len() > 3 => {
            let Some(id) = pick(rng, &m.voters) else { return };
            vec![Remove { id }]
        }
        3 => {
            let (Some(add), Some(drop)) = (pick(rng, &m.learners), pick(rng, &m.voters)) else {
                return;
            };
            vec![Promote { id: add }, Remove { id: drop }]
        }
        4 => {
            let Some(id) = pick(rng, &m.learners) else { return };
            vec![Remove { id }]
        }
        _ => return,
    };
    if cluster.propose_membership(leader, &changes).is_ok() {
        for change in &changes {
            if !ever_member.contains(&change.id()) {
                ever_member.push(change.id());
            }
        }
    }
}
