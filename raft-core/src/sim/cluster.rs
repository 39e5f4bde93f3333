//! A simulated cluster: N nodes, a network and disks under fault injection, virtual time, and
//! clients, all driven by one seed.
//!
//! Everything happens as events on one queue ordered by virtual time (microseconds). Each node
//! ticks on its own clock (which may drift), messages cross a network that can lose, duplicate,
//! delay, reorder and partition them, and each node's writes become durable only when its
//! simulated disk finishes them; a crash loses whatever was not durable yet. The safety checker
//! runs after every event.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};

use bytes::Bytes;

use super::checks::{SafetyChecker, Violation};
use super::kv::{Command, KvOp, KvStore};
use super::linearizability::Operation;
use super::CrashableStore;
use crate::error::{ProposeError, SnapshotError, StorageError};
use crate::execute::{ApplyWork, Executor, LogWriter, PersistWrite, ReadyHandler};
use crate::message::{AppendResponse, Message, MessageBody};
use crate::ready::{FetchRequest, SnapshotChunk, SnapshotRead};
use crate::snapshot::{
    restore_snapshot, serve_snapshot_read, take_snapshot, MemSnapshotStore, SnapshotReceiver,
    SnapshotStore,
};
use crate::storage::{load_initial_state, serve_fetch, Lsn, StateMachine};
use crate::types::{Entry, GroupId, Index, NodeId, RoleKind, SnapshotMeta, Term};
use crate::{Config, MemLogStore, Raft, Rng};

/// How the network misbehaves.
#[derive(Clone, Debug, PartialEq)]
pub struct NetFaults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Shortest one-way delay.
    pub delay_min_us: u64,
    /// Longest usual one-way delay; random delays reorder messages.
    pub delay_max_us: u64,
    /// Probability that a message is held back much longer.
    pub long_delay: f64,
    /// Longest such delay.
    pub long_delay_max_us: u64,
}

impl NetFaults {
    /// A network that delivers everything once, quickly and in order per link.
    pub fn reliable() -> NetFaults {
        NetFaults {
            loss: 0.0,
            duplicate: 0.0,
            delay_min_us: 100,
            delay_max_us: 100,
            long_delay: 0.0,
            long_delay_max_us: 0,
        }
    }

    /// A network that loses, duplicates and reorders (the 6.824 "unreliable" network).
    pub fn unreliable() -> NetFaults {
        NetFaults {
            loss: 0.1,
            duplicate: 0.05,
            delay_min_us: 100,
            delay_max_us: 5_000,
            long_delay: 0.02,
            long_delay_max_us: 300_000,
        }
    }
}

impl Default for NetFaults {
    fn default() -> NetFaults {
        NetFaults {
            loss: 0.0,
            duplicate: 0.0,
            delay_min_us: 100,
            delay_max_us: 2_000,
            long_delay: 0.0,
            long_delay_max_us: 0,
        }
    }
}

/// How long each node's disk takes to make a write durable.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskModel {
    /// Shortest write-to-durable latency.
    pub latency_min_us: u64,
    /// Longest usual latency.
    pub latency_max_us: u64,
    /// Probability that a write is slow (a stalled disk).
    pub slow: f64,
    /// Longest slow latency.
    pub slow_max_us: u64,
}

impl Default for DiskModel {
    fn default() -> DiskModel {
        DiskModel { latency_min_us: 50, latency_max_us: 1_000, slow: 0.0, slow_max_us: 0 }
    }
}

/// Settings of a simulated cluster.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Number of nodes (ids `1..=nodes`).
    pub nodes: usize,
    /// The seed every random choice comes from.
    pub seed: u64,
    /// The Raft settings of every node (`id` and `seed` are set per node).
    pub raft: Config,
    /// Virtual microseconds per tick.
    pub tick_us: u64,
    /// Each node's clock runs up to this many percent fast or slow.
    pub clock_drift_pct: u64,
    /// Network faults.
    pub net: NetFaults,
    /// Disk latencies.
    pub disk: DiskModel,
    /// Longest time a log fetch takes.
    pub fetch_delay_max_us: u64,
    /// Run every node's own invariant check after each event it handles.
    pub check_node_invariants: bool,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            nodes: 3,
            seed: 0,
            raft: Config { election_ticks: 10, heartbeat_ticks: 2, ..Config::default() },
            tick_us: 10_000,
            clock_drift_pct: 0,
            net: NetFaults::default(),
            disk: DiskModel::default(),
            fetch_delay_max_us: 500,
            check_node_invariants: true,
        }
    }
}

/// A safety violation (or a protocol error) found during a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimError {
    /// Virtual time of the failing event.
    pub time_us: u64,
    /// What broke.
    pub violation: Violation,
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {} us: {}", self.time_us, self.violation)
    }
}

impl std::error::Error for SimError {}

/// Counters of what happened during a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages the nodes sent, by kind.
    pub sent: BTreeMap<&'static str, u64>,
    /// Messages delivered to a live node.
    pub delivered: u64,
    /// Messages lost (fault, partition, or a down receiver).
    pub dropped: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Disk writes.
    pub disk_writes: u64,
    /// Log fetches served.
    pub fetches: u64,
    /// Snapshots taken by nodes of their own state machines.
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Snapshot chunks written by receivers.
    pub snapshot_chunks: u64,
    /// The longest log (entries held by a store) seen on any node.
    pub max_log_len: u64,
    /// Client operations that completed with an answer.
    pub ops_completed: u64,
    /// Client operations abandoned after a timeout (outcome unknown).
    pub ops_timed_out: u64,
}

impl SimStats {
    /// All messages sent.
    pub fn messages_sent(&self) -> u64 {
        self.sent.values().sum()
    }
}

/// What a client's request got back.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reply {
    /// Applied; the result.
    Done(String),
    /// Not the leader; nothing was done.
    NotLeader(Option<NodeId>),
    /// Definitely not applied (refused, or overwritten by another leader's entry).
    Failed,
}

enum Event {
    Tick(NodeId),
    /// A message arrives; `sender_epoch` is the sender's epoch when it was sent.
    Deliver {
        msg: Message,
        sender_epoch: u64,
    },
    /// The node's disk finished everything queued before this event: sync up to `lsn` (if the
    /// Ready wrote anything), acknowledge Ready `number`, and send the messages that waited for
    /// durability.
    DiskDone {
        node: NodeId,
        epoch: u64,
        lsn: Option<Lsn>,
        number: u64,
        messages: Vec<Ack>,
    },
    FetchDone {
        node: NodeId,
        epoch: u64,
        request: FetchRequest,
    },
    SnapshotReadDone {
        node: NodeId,
        epoch: u64,
        read: SnapshotRead,
    },
    SnapshotChunkDone {
        node: NodeId,
        epoch: u64,
        chunk: SnapshotChunk,
    },
    Request {
        node: NodeId,
        client: u64,
        op_id: u64,
        data: Bytes,
    },
    Reply {
        client: u64,
        op_id: u64,
        reply: Reply,
    },
    ClientTimeout {
        client: u64,
        op_id: u64,
    },
    ClientNext {
        client: u64,
    },
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: the earliest event must compare greatest.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What a write changes in the durable model once the store reports it durable.
#[derive(Debug)]
struct ModelWrite {
    lsn: Lsn,
    /// A compaction through `(index, term)`, applied before the rest.
    compact: Option<(Index, Term)>,
    hard_state: Option<crate::HardState>,
    /// `(first index, terms)` of the entries written.
    entries: Option<(Index, Vec<Term>)>,
}

/// A message that waits for durability, with the `(index, term)` it claims durable, if any.
struct Ack {
    msg: Message,
    claims: Option<(Index, Term)>,
}

/// What the simulator knows a node's disk holds durably: every synced write, applied in order.
/// A crash must leave the store exactly like this.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct DurableModel {
    hard_state: crate::HardState,
    /// The compaction point: entries up to here live in a snapshot.
    base_index: Index,
    base_term: Term,
    /// `terms[i - base_index - 1]` is the term of entry `i`.
    terms: Vec<Term>,
}

impl DurableModel {
    fn apply(&mut self, write: &ModelWrite) {
        if let Some((index, term)) = write.compact {
            self.compact(index, term);
        }
        if let Some(hs) = write.hard_state {
            self.hard_state = hs;
        }
        if let Some((first, terms)) = &write.entries {
            self.terms.truncate((*first - self.base_index - 1) as usize);
            self.terms.extend_from_slice(terms);
        }
    }

    /// `LogStore::compact` semantics: keep what follows `(index, term)` if held, else discard.
    fn compact(&mut self, index: Index, term: Term) {
        if index <= self.base_index {
            return;
        }
        if self.term(index) == Some(term) {
            self.terms.drain(..(index - self.base_index) as usize);
        } else {
            self.terms.clear();
        }
        self.base_index = index;
        self.base_term = term;
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index == self.base_index {
            Some(self.base_term)
        } else if index < self.base_index {
            None
        } else {
            self.terms.get((index - self.base_index - 1) as usize).copied()
        }
    }
}

/// A proposal a node made for a client, answered when its index is applied.
struct Pending {
    term: Term,
    client: u64,
    op_id: u64,
}

struct SimNode {
    id: NodeId,
    raft: Option<Raft>,
    /// Carries out the node's Readies (process state: reset at every start).
    executor: Executor,
    /// Writes the node's Readies to its store (process state: reset at every start).
    writer: LogWriter,
    store: Box<dyn CrashableStore>,
    /// Grows at every crash, so completions from before it are ignored.
    epoch: u64,
    kv: KvStore,
    /// Complete snapshots survive crashes; transfers in progress live in `receiver`.
    snapshots: MemSnapshotStore,
    receiver: SnapshotReceiver,
    /// The state machine's applied index.
    applied_index: Index,
    /// Entries applied since the last start or snapshot restore: `applied[i]` is entry
    /// `applied_base + 1 + i`.
    applied: Vec<Entry>,
    applied_base: Index,
    /// When the node's snapshot disk finishes the chunk writes queued so far.
    snapshot_disk_free_at: u64,
    pending: HashMap<Index, Pending>,
    disk_free_at: u64,
    /// Writes handed to the disk whose durability event has not happened yet.
    writes_in_flight: u64,
    durable: DurableModel,
    /// Writes accepted by the store and not yet reported durable by it, oldest first. A store
    /// may make more durable than a sync asked for (one fdatasync covers every write so far):
    /// the model follows what the store reports.
    unsynced: VecDeque<ModelWrite>,
    tick_us: u64,
    starts: u64,
}

/// Settings of the client workload.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// Concurrent clients, each issuing one operation at a time.
    pub clients: usize,
    /// Keys the operations spread over.
    pub keys: usize,
    /// A client gives up on an operation (outcome unknown) after this long.
    pub timeout_us: u64,
    /// Pause between a client's operations.
    pub think_max_us: u64,
    /// Percentage of reads; the rest are half puts, half appends.
    pub read_pct: u64,
}

impl Default for WorkloadOptions {
    fn default() -> WorkloadOptions {
        WorkloadOptions {
            clients: 4,
            keys: 5,
            timeout_us: 800_000,
            think_max_us: 20_000,
            read_pct: 40,
        }
    }
}

struct InFlight {
    op_id: u64,
    op: KvOp,
    call: u64,
}

struct Client {
    id: u64,
    target: NodeId,
    current: Option<InFlight>,
    next_op_id: u64,
}

struct Workload {
    opts: WorkloadOptions,
    clients: Vec<Client>,
    history: Vec<Operation<KvOp, String>>,
    running: bool,
    last_completion_us: u64,
}

/// A simulated cluster. See the [`sim`](crate::sim) module docs.
pub struct Cluster {
    opts: SimOptions,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<SimNode>,
    /// Directed links that drop everything (partitions and one-way failures).
    blocked: HashSet<(NodeId, NodeId)>,
    /// Nodes cut off from everyone.
    isolated: HashSet<NodeId>,
    checker: SafetyChecker,
    workload: Option<Workload>,
    stats: SimStats,
    /// A violation found outside `run_for` (during a direct proposal), reported by the next run.
    deferred: Option<SimError>,
    /// Crash the next leader whose commit index advances, the moment it does.
    crash_on_commit: bool,
}

impl Cluster {
    /// A cluster of in-memory nodes whose stores lose unsynced writes on a crash.
    pub fn new(opts: SimOptions) -> Cluster {
        Cluster::with_stores(opts, |_| Box::new(MemLogStore::with_explicit_sync()))
    }

    /// A cluster whose nodes use the stores `make_store` builds (one per node id).
    pub fn with_stores(
        opts: SimOptions,
        mut make_store: impl FnMut(NodeId) -> Box<dyn CrashableStore>,
    ) -> Cluster {
        assert!(opts.nodes > 0, "a cluster needs nodes");
        let mut rng = Rng::new(opts.seed);
        let mut nodes = Vec::with_capacity(opts.nodes);
        for id in 1..=opts.nodes as NodeId {
            let drift = opts.clock_drift_pct.min(50);
            let tick_us = if drift == 0 {
                opts.tick_us
            } else {
                let pct = rng.range(100 - drift, 100 + drift);
                (opts.tick_us * pct / 100).max(1)
            };
            let store = make_store(id);
            // A store may start with a log (a test staging a history): that is its durable state.
            let durable = recovered_model(&*store, opts.raft.group)
                .unwrap_or_else(|e| panic!("node {id}: cannot read its store: {e}"));
            nodes.push(SimNode {
                id,
                raft: None,
                executor: Executor::new(),
                writer: LogWriter::new(),
                store,
                epoch: 0,
                kv: KvStore::default(),
                snapshots: MemSnapshotStore::new(2),
                receiver: SnapshotReceiver::new(),
                applied_index: 0,
                applied: Vec::new(),
                applied_base: 0,
                snapshot_disk_free_at: 0,
                pending: HashMap::new(),
                disk_free_at: 0,
                writes_in_flight: 0,
                durable,
                unsynced: VecDeque::new(),
                tick_us,
                starts: 0,
            });
        }
        let mut cluster = Cluster {
            opts,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            blocked: HashSet::new(),
            isolated: HashSet::new(),
            checker: SafetyChecker::new(),
            workload: None,
            stats: SimStats::default(),
            deferred: None,
            crash_on_commit: false,
        };
        for id in 1..=cluster.opts.nodes as NodeId {
            cluster.start_node(id);
            let first_tick = cluster.rng.range(1, cluster.opts.tick_us);
            cluster.schedule(first_tick, Event::Tick(id));
        }
        cluster
    }

    fn start_node(&mut self, id: NodeId) {
        let voters: Vec<NodeId> = (1..=self.opts.nodes as NodeId).collect();
        let seed = self.rng.next_u64();
        let idx = (id - 1) as usize;
        let node = &mut self.nodes[idx];
        let config = Config { id, seed, ..self.opts.raft.clone() };
        let snapshot = node
            .snapshots
            .latest(config.group)
            .unwrap_or_else(|e| panic!("node {id}: cannot read its snapshots: {e}"));
        let mut kv = KvStore::default();
        if let Some(meta) = &snapshot {
            restore_snapshot(&mut kv, &node.snapshots, meta, 4096)
                .unwrap_or_else(|e| panic!("node {id}: cannot restore its snapshot: {e}"));
        }
        let state = load_initial_state(&*node.store, config.group, voters, snapshot.clone(), 0)
            .unwrap_or_else(|e| panic!("node {id}: cannot load its store: {e}"));
        if let Some(meta) = &snapshot {
            // load_initial_state finishes a compaction the crash interrupted, and syncs it.
            node.durable.compact(meta.index, meta.term);
        }
        let raft = Raft::new(config, state).unwrap_or_else(|e| panic!("node {id}: {e}"));
        node.applied_index = raft.applied_index();
        node.raft = Some(raft);
        node.executor = Executor::new();
        node.writer = LogWriter::new();
        node.kv = kv;
        node.applied.clear();
        node.applied_base = node.applied_index;
        node.pending.clear();
        node.starts += 1;
    }

    // ----- driving time -----

    /// The current virtual time.
    pub fn now_us(&self) -> u64 {
        self.now
    }

    /// Runs every event due in the next `us` microseconds.
    pub fn run_for(&mut self, us: u64) -> Result<(), SimError> {
        if let Some(err) = self.deferred.take() {
            return Err(err);
        }
        let end = self.now + us;
        while self.queue.peek().is_some_and(|e| e.at <= end) {
            let Some(next) = self.queue.pop() else { break };
            self.now = next.at;
            self.handle(next.event)
                .map_err(|violation| SimError { time_us: self.now, violation })?;
        }
        self.now = end;
        Ok(())
    }

    /// Runs until `done` holds (checked every `step_us`) or `max_us` pass. Returns whether it held.
    pub fn run_until(
        &mut self,
        max_us: u64,
        step_us: u64,
        mut done: impl FnMut(&Cluster) -> bool,
    ) -> Result<bool, SimError> {
        let end = self.now + max_us;
        while self.now < end {
            if done(self) {
                return Ok(true);
            }
            self.run_for(step_us.min(end - self.now))?;
        }
        Ok(done(self))
    }

    fn schedule(&mut self, after_us: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled { at: self.now + after_us, seq: self.seq, event });
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        let commits_before: Vec<Index> =
            if self.crash_on_commit { self.leader_commits() } else { Vec::new() };
        let touched = match event {
            Event::Tick(id) => {
                let tick_us = self.nodes[(id - 1) as usize].tick_us;
                self.schedule(tick_us, Event::Tick(id));
                match self.raft_mut(id) {
                    Some(raft) => {
                        raft.tick();
                        Some(id)
                    }
                    None => None,
                }
            }
            Event::Deliver { msg, sender_epoch } => {
                let to = msg.to;
                tracing::trace!(now = self.now, ?msg, "deliver");
                // A sender that crashed since sending lost part of what sat in its buffers.
                let sender_crashed = self.nodes[(msg.from - 1) as usize].epoch != sender_epoch;
                if sender_crashed && self.rng.chance(0.5) {
                    self.stats.dropped += 1;
                    return self
                        .checker
                        .check_nodes(self.nodes.iter().filter_map(|n| n.raft.as_ref()));
                }
                match self.raft_mut(to) {
                    Some(raft) => {
                        let kind = msg.body.name();
                        let from = msg.from;
                        if let Err(err) = raft.step(msg) {
                            return Err(Violation {
                                property: "protocol",
                                detail: format!("node {to} rejected a {kind} from {from}: {err}"),
                            });
                        }
                        self.stats.delivered += 1;
                        Some(to)
                    }
                    None => {
                        self.stats.dropped += 1;
                        None
                    }
                }
            }
            Event::DiskDone { node, epoch, lsn, number, messages } => {
                let n = &mut self.nodes[(node - 1) as usize];
                match n.raft.as_mut() {
                    Some(raft) if n.epoch == epoch => {
                        tracing::trace!(now = self.now, node, ?lsn, number, "disk done");
                        n.writes_in_flight -= 1;
                        if let Some(lsn) = lsn {
                            if let Err(err) = n.store.sync(lsn) {
                                return Err(storage_violation(node, err));
                            }
                            let durable = n.store.durable_lsn();
                            if durable < lsn {
                                return Err(Violation {
                                    property: "storage",
                                    detail: format!(
                                        "node {node}: sync({lsn:?}) returned but the store reports {durable:?} durable"
                                    ),
                                });
                            }
                            while n.unsynced.front().is_some_and(|w| w.lsn <= durable) {
                                if let Some(w) = n.unsynced.pop_front() {
                                    n.durable.apply(&w);
                                }
                            }
                        }
                        n.executor.on_persisted(raft, number);
                        for ack in messages {
                            self.check_acknowledgement(&ack)?;
                            self.send(ack.msg);
                        }
                        Some(node)
                    }
                    _ => None,
                }
            }
            Event::FetchDone { node, epoch, request } => {
                let n = &mut self.nodes[(node - 1) as usize];
                if n.epoch != epoch {
                    None
                } else if let Some(raft) = n.raft.as_mut() {
                    let result = serve_fetch(&*n.store, &request);
                    raft.on_fetched(request, result);
                    self.stats.fetches += 1;
                    Some(node)
                } else {
                    None
                }
            }
            Event::SnapshotReadDone { node, epoch, read } => {
                let n = &mut self.nodes[(node - 1) as usize];
                if n.epoch != epoch {
                    None
                } else if let Some(raft) = n.raft.as_mut() {
                    let result = serve_snapshot_read(&n.snapshots, &read);
                    raft.on_snapshot_read(read, result);
                    Some(node)
                } else {
                    None
                }
            }
            Event::SnapshotChunkDone { node, epoch, chunk } => {
                let n = &mut self.nodes[(node - 1) as usize];
                if n.epoch != epoch {
                    None
                } else if let Some(raft) = n.raft.as_mut() {
                    let result = n.receiver.write(&n.snapshots, &chunk);
                    self.stats.snapshot_chunks += 1;
                    if let Err(err) = &result {
                        tracing::debug!(node, %err, "snapshot chunk write failed");
                    }
                    raft.on_snapshot_chunk(chunk, result);
                    Some(node)
                } else {
                    None
                }
            }
            Event::Request { node, client, op_id, data } => {
                self.handle_request(node, client, op_id, data)
            }
            Event::Reply { client, op_id, reply } => {
                self.client_reply(client, op_id, reply);
                None
            }
            Event::ClientTimeout { client, op_id } => {
                self.client_timeout(client, op_id);
                None
            }
            Event::ClientNext { client } => {
                self.client_next(client);
                None
            }
        };
        if let Some(id) = touched {
            self.drain(id)?;
            if self.opts.check_node_invariants {
                if let Some(raft) = self.raft(id) {
                    raft.check_invariants();
                }
            }
        }
        self.checker.check_nodes(self.nodes.iter().filter_map(|n| n.raft.as_ref()))?;
        if self.crash_on_commit {
            let after = self.leader_commits();
            if let Some(i) = (0..after.len()).find(|&i| after[i] > commits_before[i]) {
                self.crash_on_commit = false;
                self.crash(i as NodeId + 1);
            }
        }
        Ok(())
    }

    /// Each node's commit index if it leads and has not yet committed anything in its term
    /// (a leader still catching its followers up), else zero.
    fn leader_commits(&self) -> Vec<Index> {
        let fresh_leader =
            |r: &&Raft| r.is_leader() && r.term_at(r.commit_index()).is_some_and(|t| t < r.term());
        let leading = |n: &SimNode| n.raft.as_ref().filter(fresh_leader).map(Raft::commit_index);
        self.nodes.iter().map(|n| leading(n).unwrap_or(0)).collect()
    }

    /// Carries out every Ready the node has, with the executor every runtime uses.
    fn drain(&mut self, id: NodeId) -> Result<(), Violation> {
        let idx = (id - 1) as usize;
        let Some(mut raft) = self.nodes[idx].raft.take() else { return Ok(()) };
        let mut executor = self.nodes[idx].executor;
        let result = executor.run(&mut raft, &mut NodeIo { cluster: self, id, idx });
        let node = &mut self.nodes[idx];
        node.raft = Some(raft);
        node.executor = executor;
        result
    }

    /// Persist before acknowledge: when a node tells a leader that its log matches up to an
    /// index, the entry it held there must be durable at that moment.
    fn check_acknowledgement(&self, ack: &Ack) -> Result<(), Violation> {
        let Some((index, term)) = ack.claims else { return Ok(()) };
        let node = &self.nodes[(ack.msg.from - 1) as usize];
        if index < node.durable.base_index {
            return Ok(()); // Compacted: a durable snapshot covers it.
        }
        let durable = node.durable.term(index);
        if durable != Some(term) {
            return Err(Violation {
                property: "persist before acknowledge",
                detail: format!(
                    "node {} acknowledges ({index}, term {term}) but its disk durably holds {:?} there",
                    ack.msg.from, durable
                ),
            });
        }
        Ok(())
    }

    /// Sends a message across the faulty network.
    fn send(&mut self, msg: Message) {
        *self.stats.sent.entry(msg.body.name()).or_insert(0) += 1;
        let cut = self.blocked.contains(&(msg.from, msg.to))
            || self.isolated.contains(&msg.from)
            || self.isolated.contains(&msg.to);
        if cut || self.rng.chance(self.opts.net.loss) {
            self.stats.dropped += 1;
            return;
        }
        let sender_epoch = self.nodes[(msg.from - 1) as usize].epoch;
        if self.rng.chance(self.opts.net.duplicate) {
            let delay = self.net_delay();
            self.schedule(delay, Event::Deliver { msg: msg.clone(), sender_epoch });
        }
        let delay = self.net_delay();
        self.schedule(delay, Event::Deliver { msg, sender_epoch });
    }

    fn net_delay(&mut self) -> u64 {
        let n = &self.opts.net;
        let mut delay = self.rng.range(n.delay_min_us, n.delay_max_us.max(n.delay_min_us));
        if self.rng.chance(n.long_delay) {
            delay += self.rng.range(0, n.long_delay_max_us);
        }
        delay
    }

    // ----- faults -----

    /// Cuts every link to and from `id`.
    pub fn disconnect(&mut self, id: NodeId) {
        self.isolated.insert(id);
    }

    /// Undoes [`disconnect`](Cluster::disconnect) (partitions set up by other calls stay).
    pub fn connect(&mut self, id: NodeId) {
        self.isolated.remove(&id);
    }

    /// Whether `id` is not disconnected (it may still be on one side of a partition).
    pub fn is_connected(&self, id: NodeId) -> bool {
        !self.isolated.contains(&id)
    }

    /// Splits the nodes into groups that cannot reach each other (nodes listed nowhere keep
    /// their links).
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        self.blocked.clear();
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for &x in a.iter() {
                    for &y in b.iter() {
                        self.blocked.insert((x, y));
                        self.blocked.insert((y, x));
                    }
                }
            }
        }
    }

    /// Drops messages from `from` to `to` only (an asymmetric partition).
    pub fn block_link(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Restores every link and reconnects every node.
    pub fn heal(&mut self) {
        self.blocked.clear();
        self.isolated.clear();
    }

    /// Replaces the network's fault settings.
    pub fn set_net_faults(&mut self, net: NetFaults) {
        self.opts.net = net;
    }

    /// Replaces the disk model.
    pub fn set_disk_model(&mut self, disk: DiskModel) {
        self.opts.disk = disk;
    }

    /// Crashes `id`: its process state is gone, its disk loses every write not yet durable, and
    /// each message it sent that has not arrived yet is lost with probability 1/2 (a machine
    /// that loses power loses what sat in its buffers).
    pub fn crash(&mut self, id: NodeId) {
        let node = &mut self.nodes[(id - 1) as usize];
        if node.raft.is_none() {
            return;
        }
        node.raft = None;
        node.epoch += 1;
        node.disk_free_at = self.now;
        node.writes_in_flight = 0;
        node.unsynced.clear();
        node.pending.clear();
        node.receiver.clear();
        node.snapshots.crash();
        node.snapshot_disk_free_at = self.now;
        if let Err(err) = node.store.power_loss() {
            panic!("node {id}: store failed to recover from power loss: {err}");
        }
        self.stats.crashes += 1;
        // The store must hold exactly what was synced: nothing acknowledged lost, and nothing
        // reported as not durable resurrected.
        let recovered = recovered_model(&*node.store, self.opts.raft.group);
        if recovered.as_ref() != Ok(&node.durable) {
            let violation = Violation {
                property: "durability",
                detail: format!(
                    "node {id} recovered {recovered:?} from its store after a crash, but had synced {:?}",
                    node.durable
                ),
            };
            self.deferred.get_or_insert(SimError { time_us: self.now, violation });
        }
    }

    /// Arms (or disarms) a crash of the next new leader whose commit index advances for the
    /// first time in its term, at that very moment: after it counted a quorum, before its
    /// followers learn of the commit (the worst time for a new leader to die).
    pub fn set_crash_on_commit(&mut self, armed: bool) {
        self.crash_on_commit = armed;
    }

    /// Restarts a crashed node from what its disk holds.
    pub fn restart(&mut self, id: NodeId) {
        if self.nodes[(id - 1) as usize].raft.is_none() {
            self.start_node(id);
        }
    }

    /// Whether `id` is running.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[(id - 1) as usize].raft.is_some()
    }

    // ----- observing -----

    /// The node `id`, if it is running.
    pub fn raft(&self, id: NodeId) -> Option<&Raft> {
        self.nodes.get((id - 1) as usize).and_then(|n| n.raft.as_ref())
    }

    fn raft_mut(&mut self, id: NodeId) -> Option<&mut Raft> {
        self.nodes.get_mut((id - 1) as usize).and_then(|n| n.raft.as_mut())
    }

    /// Node ids.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> {
        1..=self.opts.nodes as NodeId
    }

    /// Running nodes that believe they lead, with their terms.
    pub fn leaders(&self) -> Vec<(NodeId, Term)> {
        self.nodes
            .iter()
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.role() == RoleKind::Leader)
            .map(|r| (r.id(), r.term()))
            .collect()
    }

    /// The leader of the highest term among running nodes, if any. A deposed leader that has
    /// not noticed yet always has a lower term than its successor.
    pub fn leader(&self) -> Option<NodeId> {
        self.leaders().into_iter().max_by_key(|&(_, term)| term).map(|(id, _)| id)
    }

    /// What each running node applied at `index` (entries in order of node id).
    pub fn applied_at(&self, index: Index) -> Vec<(NodeId, Entry)> {
        self.nodes
            .iter()
            .filter(|n| n.raft.is_some())
            .filter_map(|n| {
                let slot = index.checked_sub(n.applied_base + 1)?;
                n.applied.get(slot as usize).map(|e| (n.id, e.clone()))
            })
            .collect()
    }

    /// How many running nodes applied `index`, and the command there.
    pub fn n_applied(&self, index: Index) -> (usize, Option<Bytes>) {
        let applied = self.applied_at(index);
        (applied.len(), applied.first().map(|(_, e)| e.data.clone()))
    }

    /// The index node `id`'s state machine has applied (entries, or a snapshot covering them).
    pub fn applied_len(&self, id: NodeId) -> usize {
        self.nodes[(id - 1) as usize].applied_index as usize
    }

    /// Proposes `data` directly on node `id` (like a client co-located with the node).
    pub fn propose(&mut self, id: NodeId, data: Bytes) -> Result<crate::EntryId, ProposeError> {
        let Some(raft) = self.raft_mut(id) else {
            return Err(ProposeError::NotLeader { leader: None });
        };
        let result = raft.propose(data);
        if result.is_ok() {
            if let Err(violation) = self.drain(id) {
                self.deferred.get_or_insert(SimError { time_us: self.now, violation });
            }
        }
        result
    }

    /// Proposes several commands on node `id` at once, so they share one Ready (and the same
    /// append messages). Returns the last one's position.
    pub fn propose_batch(
        &mut self,
        id: NodeId,
        commands: Vec<Bytes>,
    ) -> Result<crate::EntryId, ProposeError> {
        let Some(raft) = self.raft_mut(id) else {
            return Err(ProposeError::NotLeader { leader: None });
        };
        let mut last = Err(ProposeError::NotLeader { leader: raft.leader() });
        for command in commands {
            last = raft.propose(command);
            if last.is_err() {
                break;
            }
        }
        if let Err(violation) = self.drain(id) {
            self.deferred.get_or_insert(SimError { time_us: self.now, violation });
        }
        last
    }

    /// Entries node `id`'s log store holds now.
    pub fn log_len(&self, id: NodeId) -> u64 {
        let node = &self.nodes[(id - 1) as usize];
        node.store
            .log_state(self.opts.raft.group)
            .map_or(0, |s| (s.last_index + 1).saturating_sub(s.first_index))
    }

    /// The state machine of node `id` (empty while it is down).
    pub fn kv(&self, id: NodeId) -> &KvStore {
        &self.nodes[(id - 1) as usize].kv
    }

    /// Counters so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// The options the cluster runs with.
    pub fn options(&self) -> &SimOptions {
        &self.opts
    }

    /// The highest index any node reported committed.
    pub fn max_committed(&self) -> Index {
        self.checker.committed_index()
    }

    // ----- the client workload -----

    /// Starts `opts.clients` clients issuing key-value operations through Raft.
    pub fn start_workload(&mut self, opts: WorkloadOptions) {
        let n = self.opts.nodes as u64;
        let clients = (0..opts.clients as u64)
            .map(|id| Client { id, target: 1 + id % n, current: None, next_op_id: 1 })
            .collect();
        self.workload = Some(Workload {
            opts,
            clients,
            history: Vec::new(),
            running: true,
            last_completion_us: 0,
        });
        for client in 0..self.workload.as_ref().map_or(0, |w| w.clients.len() as u64) {
            let delay = self.rng.range(0, 10_000);
            self.schedule(delay, Event::ClientNext { client });
        }
    }

    /// Clients finish their current operation (or time out) and start no new one.
    pub fn stop_workload(&mut self) {
        if let Some(w) = &mut self.workload {
            w.running = false;
        }
    }

    /// Virtual time of the last completed client operation.
    pub fn last_completion_us(&self) -> u64 {
        self.workload.as_ref().map_or(0, |w| w.last_completion_us)
    }

    /// Whether every client is idle.
    pub fn clients_idle(&self) -> bool {
        self.workload.as_ref().is_none_or(|w| w.clients.iter().all(|c| c.current.is_none()))
    }

    /// The recorded history: completed operations, plus writes whose outcome is unknown (with
    /// return time `u64::MAX`). Reads without an answer tell nothing and are left out.
    pub fn history(&self) -> Vec<Operation<KvOp, String>> {
        let Some(w) = &self.workload else { return Vec::new() };
        let mut history = w.history.clone();
        for c in &w.clients {
            if let Some(op) = &c.current {
                if op.op.is_write() {
                    history.push(Operation {
                        client: c.id,
                        input: op.op.clone(),
                        output: String::new(),
                        call: op.call,
                        ret: u64::MAX,
                    });
                }
            }
        }
        history
    }

    fn handle_request(
        &mut self,
        node: NodeId,
        client: u64,
        op_id: u64,
        data: Bytes,
    ) -> Option<NodeId> {
        let raft = self.raft_mut(node)?;
        match raft.propose(data) {
            Ok(id) => {
                let pending = Pending { term: id.term, client, op_id };
                self.nodes[(node - 1) as usize].pending.insert(id.index, pending);
                Some(node)
            }
            Err(ProposeError::NotLeader { leader }) => {
                self.reply(client, op_id, Reply::NotLeader(leader));
                None
            }
            Err(_) => {
                self.reply(client, op_id, Reply::Failed);
                None
            }
        }
    }

    /// Sends a reply to a client: delayed and maybe lost, never duplicated.
    fn reply(&mut self, client: u64, op_id: u64, reply: Reply) {
        if self.rng.chance(self.opts.net.loss) {
            return;
        }
        let delay = self.net_delay();
        self.schedule(delay, Event::Reply { client, op_id, reply });
    }

    fn send_request(&mut self, client: u64) {
        let Some(w) = &self.workload else { return };
        let c = &w.clients[client as usize];
        let Some(op) = &c.current else { return };
        let cmd = Command { client, op_id: op.op_id, op: op.op.clone() };
        let (node, op_id) = (c.target, op.op_id);
        if self.rng.chance(self.opts.net.loss) {
            return; // The timeout will notice.
        }
        let delay = self.net_delay();
        self.schedule(delay, Event::Request { node, client, op_id, data: cmd.encode() });
    }

    fn client_next(&mut self, client: u64) {
        let Some(w) = &mut self.workload else { return };
        if !w.running || w.clients[client as usize].current.is_some() {
            return;
        }
        let key = format!("k{}", self.rng.below(w.opts.keys.max(1) as u64));
        let c = &mut w.clients[client as usize];
        let op_id = c.next_op_id;
        c.next_op_id += 1;
        let roll = self.rng.below(100);
        let value = format!("[{client}.{op_id}]");
        let op = if roll < w.opts.read_pct {
            KvOp::Get { key }
        } else if roll.is_multiple_of(2) {
            KvOp::Put { key, value }
        } else {
            KvOp::Append { key, value }
        };
        c.current = Some(InFlight { op_id, op, call: self.now });
        let timeout = w.opts.timeout_us;
        self.schedule(timeout, Event::ClientTimeout { client, op_id });
        self.send_request(client);
    }

    fn client_reply(&mut self, client: u64, op_id: u64, reply: Reply) {
        let n = self.opts.nodes as u64;
        let Some(w) = &mut self.workload else { return };
        let think_max = w.opts.think_max_us;
        let c = &mut w.clients[client as usize];
        if c.current.as_ref().is_none_or(|op| op.op_id != op_id) {
            return; // An answer to an operation already given up on.
        }
        match reply {
            Reply::Done(output) => {
                let Some(op) = c.current.take() else { return };
                w.history.push(Operation {
                    client,
                    input: op.op,
                    output,
                    call: op.call,
                    ret: self.now,
                });
                w.last_completion_us = self.now;
                self.stats.ops_completed += 1;
                let think = self.rng.range(0, think_max);
                self.schedule(think, Event::ClientNext { client });
            }
            Reply::NotLeader(hint) => {
                // Nothing was done: resending the same operation is safe.
                let (target, backoff) = match hint {
                    Some(leader) if leader != c.target => (leader, 0),
                    _ => (1 + self.rng.below(n), 20_000),
                };
                c.target = target;
                self.resend_later(client, backoff);
            }
            Reply::Failed => {
                c.target = 1 + self.rng.below(n);
                self.resend_later(client, 10_000);
            }
        }
    }

    fn resend_later(&mut self, client: u64, backoff_us: u64) {
        if backoff_us == 0 {
            self.send_request(client);
        } else {
            // Resends ride on the request path after a pause; modelled as a delayed request.
            let Some(w) = &self.workload else { return };
            let c = &w.clients[client as usize];
            let Some(op) = &c.current else { return };
            let cmd = Command { client, op_id: op.op_id, op: op.op.clone() };
            let (node, op_id) = (c.target, op.op_id);
            let delay = backoff_us + self.net_delay();
            self.schedule(delay, Event::Request { node, client, op_id, data: cmd.encode() });
        }
    }

    fn client_timeout(&mut self, client: u64, op_id: u64) {
        let n = self.opts.nodes as u64;
        let Some(w) = &mut self.workload else { return };
        let c = &mut w.clients[client as usize];
        if c.current.as_ref().is_none_or(|op| op.op_id != op_id) {
            return;
        }
        let Some(op) = c.current.take() else { return };
        if op.op.is_write() {
            // The write may still take effect at any later time.
            w.history.push(Operation {
                client,
                input: op.op,
                output: String::new(),
                call: op.call,
                ret: u64::MAX,
            });
        }
        self.stats.ops_timed_out += 1;
        c.target = 1 + self.rng.below(n);
        let think = self.rng.range(0, w.opts.think_max_us);
        self.schedule(think, Event::ClientNext { client });
    }
}

/// What a store holds for `group`, in the durable model's terms.
fn recovered_model(store: &dyn CrashableStore, group: GroupId) -> Result<DurableModel, String> {
    let state = store.log_state(group).map_err(|e| e.to_string())?;
    let terms = if state.last_index < state.first_index {
        Vec::new()
    } else {
        store
            .entries(group, state.first_index, state.last_index, u64::MAX)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|e| e.term)
            .collect()
    };
    Ok(DurableModel {
        hard_state: state.hard_state,
        base_index: state.first_index - 1,
        base_term: state.base_term,
        terms,
    })
}

fn storage_violation(id: NodeId, err: crate::StorageError) -> Violation {
    Violation { property: "storage", detail: format!("node {id}: {err}") }
}

/// How a simulated node carries out its Readies: messages onto the faulty network, writes to its
/// store and then its simulated disk, state machine work at once (with the safety checks), log
/// and snapshot reads and snapshot chunk writes after a simulated delay.
struct NodeIo<'a> {
    cluster: &'a mut Cluster,
    id: NodeId,
    idx: usize,
}

impl NodeIo<'_> {
    fn node(&mut self) -> &mut SimNode {
        &mut self.cluster.nodes[self.idx]
    }

    /// Writes to the store what `write` asks, checks it first, and records what it changes in
    /// the durable model once the store reports it durable. Returns the position to sync.
    ///
    /// A compaction goes to the store on its own first, so the check of the entries that follow
    /// sees the store they are written to.
    fn write(&mut self, raft: &Raft, write: &mut PersistWrite) -> Result<Option<Lsn>, Violation> {
        let mut last = None;
        if write.compact.is_some() && !write.entries.is_empty() {
            let mut compaction = PersistWrite {
                number: write.number,
                group: write.group,
                ..PersistWrite::default()
            };
            compaction.compact = write.compact.take();
            last = self.write_checked(raft, &mut compaction)?;
        }
        Ok(self.write_checked(raft, write)?.or(last))
    }

    fn write_checked(
        &mut self,
        raft: &Raft,
        write: &mut PersistWrite,
    ) -> Result<Option<Lsn>, Violation> {
        let (id, group) = (self.id, write.group);
        let cluster = &mut *self.cluster;
        let node = &mut cluster.nodes[self.idx];
        if !write.entries.is_empty() {
            let last =
                node.store.log_state(group).map_err(|e| storage_violation(id, e))?.last_index;
            let store = &node.store;
            cluster
                .checker
                .check_write(raft, &write.entries, last, |i| store.term(group, i).ok())?;
        }
        let lsn = node
            .writer
            .write(&*node.store, std::slice::from_mut(write))
            .map_err(|e| storage_violation(id, e))?;
        let Some(lsn) = lsn else { return Ok(None) };
        cluster.stats.disk_writes += 1;
        node.unsynced.push_back(ModelWrite {
            lsn,
            compact: write.compact,
            hard_state: write.hard_state,
            entries: write
                .entries
                .first()
                .map(|e| (e.index, write.entries.iter().map(|e| e.term).collect())),
        });
        if let Ok(state) = node.store.log_state(group) {
            let len = (state.last_index + 1).saturating_sub(state.first_index);
            cluster.stats.max_log_len = cluster.stats.max_log_len.max(len);
        }
        Ok(Some(lsn))
    }

    fn apply_entry(&mut self, entry: Entry) -> Result<(), Violation> {
        let cluster = &mut *self.cluster;
        let node = &mut cluster.nodes[self.idx];
        cluster.checker.check_apply(self.id, &entry, node.applied_index + 1)?;
        let output = node.kv.apply(&entry);
        let index = entry.index;
        let term = entry.term;
        node.applied_index = index;
        node.applied.push(entry);
        if let Some(p) = node.pending.remove(&index) {
            let reply = match output {
                Some((cmd, result))
                    if p.term == term && cmd.client == p.client && cmd.op_id == p.op_id =>
                {
                    Reply::Done(result)
                }
                // Another entry took the index: this proposal was overwritten and will never
                // apply, so the client may safely resend it.
                _ => Reply::Failed,
            };
            cluster.reply(p.client, p.op_id, reply);
        }
        Ok(())
    }

    /// Schedules `event` after a random delay of at most the fetch delay.
    fn after_fetch_delay(&mut self, event: Event) {
        let delay = self.cluster.rng.range(0, self.cluster.opts.fetch_delay_max_us);
        self.cluster.schedule(delay, event);
    }
}

impl ReadyHandler for NodeIo<'_> {
    type Error = Violation;

    fn before_ready(&mut self, raft: &Raft) -> Result<(), Violation> {
        // Record what this node committed before it applies and compacts it away.
        self.cluster.checker.observe_commit(raft)
    }

    fn send(&mut self, messages: Vec<Message>) -> Result<(), Violation> {
        for msg in messages {
            self.cluster.send(msg);
        }
        Ok(())
    }

    fn persist(
        &mut self,
        raft: &Raft,
        mut write: PersistWrite,
    ) -> Result<Option<Vec<Message>>, Violation> {
        let acks: Vec<Ack> = std::mem::take(&mut write.messages)
            .into_iter()
            .map(|msg| {
                let claims = match msg.body {
                    MessageBody::AppendResponse(AppendResponse::Success { match_index }) => {
                        // Below the log's start the snapshot holds the entry, durably.
                        raft.term_at(match_index).map(|term| (match_index, term))
                    }
                    _ => None,
                };
                Ack { msg, claims }
            })
            .collect();
        let lsn = self.write(raft, &mut write)?;
        if lsn.is_none() && self.node().writes_in_flight == 0 {
            // Nothing written (or only a commit index held back) and nothing in flight: durable.
            for ack in &acks {
                self.cluster.check_acknowledgement(ack)?;
            }
            return Ok(Some(acks.into_iter().map(|ack| ack.msg).collect()));
        }
        // The disk completes writes in order; messages wait behind every write before them.
        let d = &self.cluster.opts.disk;
        let (min, max, slow, slow_max) =
            (d.latency_min_us, d.latency_max_us, d.slow, d.slow_max_us);
        let mut latency = 0;
        if lsn.is_some() {
            latency = self.cluster.rng.range(min, max.max(min));
            if self.cluster.rng.chance(slow) {
                latency += self.cluster.rng.range(0, slow_max);
            }
        }
        let now = self.cluster.now;
        let (id, number) = (self.id, write.number);
        let node = self.node();
        node.writes_in_flight += 1;
        let done_at = (now + latency).max(node.disk_free_at);
        node.disk_free_at = done_at;
        let event = Event::DiskDone { node: id, epoch: node.epoch, lsn, number, messages: acks };
        self.cluster.schedule(done_at - now, event);
        Ok(None)
    }

    fn apply(
        &mut self,
        work: ApplyWork,
    ) -> Result<Option<Result<SnapshotMeta, SnapshotError>>, Violation> {
        let id = self.id;
        if let Some(meta) = &work.restore {
            self.cluster.checker.check_snapshot(id, meta.index, meta.term)?;
            let node = self.node();
            restore_snapshot(&mut node.kv, &node.snapshots, meta, 4096).map_err(|e| Violation {
                property: "snapshot",
                detail: format!("node {id}: restore: {e}"),
            })?;
            node.applied_index = meta.index;
            node.applied.clear();
            node.applied_base = meta.index;
            // Proposals covered by the snapshot cannot be told apart any more: their clients
            // time out (outcome unknown), which is always a correct answer.
            node.pending.retain(|&index, _| index > meta.index);
            self.cluster.stats.snapshots_installed += 1;
        }
        for entry in work.entries {
            self.apply_entry(entry)?;
        }
        let Some(request) = &work.snapshot else { return Ok(None) };
        let node = self.node();
        if node.applied_index != request.index {
            return Err(Violation {
                property: "snapshot",
                detail: format!(
                    "node {id}: asked for a snapshot at {} with {} applied",
                    request.index, node.applied_index
                ),
            });
        }
        let result = take_snapshot(&mut node.kv, &node.snapshots, request);
        self.cluster.stats.snapshots_taken += 1;
        if let Ok(meta) = &result {
            self.cluster.checker.check_snapshot_taken(id, meta.index, meta.term, meta.checksum)?;
        }
        Ok(Some(result))
    }

    fn fetch(
        &mut self,
        request: &FetchRequest,
    ) -> Result<Option<Result<Vec<Entry>, StorageError>>, Violation> {
        let (node, epoch, request) = (self.id, self.node().epoch, *request);
        self.after_fetch_delay(Event::FetchDone { node, epoch, request });
        Ok(None)
    }

    fn read_snapshot(
        &mut self,
        read: &SnapshotRead,
    ) -> Result<Option<Result<Bytes, SnapshotError>>, Violation> {
        let (node, epoch, read) = (self.id, self.node().epoch, read.clone());
        self.after_fetch_delay(Event::SnapshotReadDone { node, epoch, read });
        Ok(None)
    }

    fn write_snapshot_chunk(
        &mut self,
        chunk: &SnapshotChunk,
    ) -> Result<Option<Result<(), SnapshotError>>, Violation> {
        // The snapshot disk writes chunks in order.
        let d = &self.cluster.opts.disk;
        let (min, max) = (d.latency_min_us, d.latency_max_us);
        let latency = self.cluster.rng.range(min, max.max(min));
        let now = self.cluster.now;
        let id = self.id;
        let node = self.node();
        let done_at = (now + latency).max(node.snapshot_disk_free_at);
        node.snapshot_disk_free_at = done_at;
        let event = Event::SnapshotChunkDone { node: id, epoch: node.epoch, chunk: chunk.clone() };
        self.cluster.schedule(done_at - now, event);
        Ok(None)
    }
}
