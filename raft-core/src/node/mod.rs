//! The node driver: a ready-made runtime that wires a [`Raft`] core to a [`LogStore`], an
//! optional [`SnapshotStore`], a [`Transport`] and a [`StateMachine`] with std threads.
//!
//! # Stages and threads
//!
//! The work is divided into three stages, each a queue that at most one thread works through
//! at a time:
//!
//! - **core**: owns the Raft core. It takes every queued input (proposals, received messages,
//!   completions, ticks) so that inputs arriving together share one Ready, and carries out each
//!   Ready: messages go to the transport at once, log reads are served inline, writes go to the
//!   persist stage and committed entries to the apply stage. It never waits for a disk.
//! - **persist**: takes every queued write (hard state, entries, compactions of many Readies),
//!   hands them to the log store as one ordered batch, syncs once, and only then sends the
//!   Readies' persisted messages (votes, append acknowledgements) and reports the Readies
//!   durable. Entries of many proposals, and of many Readies, share one sync (group commit),
//!   whatever the store's own batching.
//! - **apply**: owns the state machine. Applies committed entries in order, restores from
//!   installed snapshots, takes the snapshots the core asks for, and answers each client when
//!   its entry is applied.
//!
//! The core and applying are run by the thread that brings them work whenever no other thread is
//! running them: a transport thread that delivers messages runs the core, and the thread that
//! learns of a commit applies it and answers the client. On a virtual machine each hand-off
//! between threads costs tens of microseconds, so a write that crosses none it need not is
//! faster and cheaper. Syncs are the exception: the **persist** thread does every one, because
//! a sync can take a stalled disk hundreds of milliseconds and a transport thread held in it
//! would stop reading its leader's heartbeats (the follower would call an election over its own
//! disk). The **raft loop** thread ticks the core on its own timer and runs it for requests made
//! without lending a thread; the **apply** thread restores and takes snapshots. A **snapshot**
//! thread reads chunks to send and writes received ones, and a **snapshot writer** writes
//! snapshots from state machine views (both only with a snapshot store).
//!
//! # Many groups in one process
//!
//! A node on its own has those five threads. Nodes started with
//! [`NodeOptions::runtime`] share a [`Runtime`]'s fixed threads instead: a called stage becomes
//! a task on one of its lanes (cores; applying; log writes, syncs and snapshot I/O), and its
//! timer ticks every node. A process can then host thousands of groups, each costing memory,
//! not threads, and one group's slow state machine holds up only the apply lane. Everything
//! else (stages, what runs inline, what each error means) is the same.
//!
//! # Requests and their outcomes
//!
//! [`Node::propose`] and [`Node::read`] block until the request's entry is applied, or fail
//! with a [`NodeError`] that says whether anything happened: [`NodeError::NotLeader`],
//! [`NodeError::Busy`], [`NodeError::Dropped`] and [`NodeError::EmptyCommand`] mean nothing was
//! done and a retry is safe; [`NodeError::Timeout`], [`NodeError::Unknown`] and
//! [`NodeError::Stopped`] mean the outcome is unknown. A success is only ever reported for an
//! entry that committed and was applied.
//!
//! # Reads
//!
//! [`Node::read`] is linearizable: the query sees every write that completed before the call.
//! How it gets there is the node's [`ReadMode`] ([`NodeOptions::read_mode`]):
//!
//! - [`ReadMode::Index`] (the default): the leader confirms with one round of heartbeats that it
//!   still leads (many reads share a round) and the query runs once the state machine has
//!   applied the commit index the read arrived at. On a follower the read asks the leader for
//!   that index and runs locally (a follower read). Nothing is written; reads never wait for a
//!   disk.
//! - [`ReadMode::Lease`]: as `Index`, but while the leader's lease holds it answers without a
//!   round. Every node of the group must use it, and the clocks must keep the promise
//!   [`Config::lease_reads`] states.
//! - [`ReadMode::Log`]: the read proposes an empty entry (a read barrier) and runs when that
//!   entry is applied: a log write per read, always safe. The state machine sees each barrier
//!   as an [`EntryKind::Noop`] entry, which is why proposals must not be empty.
//!
//! # Leadership transfer
//!
//! [`Node::transfer_leader`] hands leadership to another voter: the leader refuses proposals
//! meanwhile ([`NodeError::Transferring`], nothing done), catches the target up and tells it to
//! campaign; the call returns once this node follows the new leader.
//!
//! A server answering many clients from one event loop gathers a round's requests in a
//! [`Batch`] ([`Node::batch`]): they share one round of the core, and the loop's thread runs it.

mod builder;
mod error;
mod persist;
mod reply;
mod runtime;
mod shared;
mod shared_sync;
mod snapshots;
mod stage;
mod threads;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use crate::config::Config;
use crate::membership::{Membership, MembershipChange};
use crate::message::Message;
use crate::raft::{Raft, Status};
use crate::snapshot::{restore_snapshot, SnapshotStore};
use crate::storage::{load_initial_state, LogStore, StateMachine};
use crate::transport::{Inbound, Transport};
use crate::types::{EntryKind, Index, NodeId, RoleKind, SnapshotMeta, Term};

pub use crate::outbox::gathered as gather_sends;
pub use builder::NodeBuilder;
pub use error::NodeError;
pub use reply::Pending;
use reply::{reply_pair, Reply};
pub(crate) use runtime::deferring_wakes;
pub use runtime::{Runtime, RuntimeOptions};
use shared::Shared;
pub use snapshots::SnapshotSendStats;
use threads::{ApplyJob, Driver, Input, Parts};

/// How [`Node::read`] makes a read linearizable (see the [module docs](self#reads)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReadMode {
    /// ReadIndex: one round of heartbeats confirms the leader (shared by the reads that
    /// arrive together); followers ask the leader for the index and serve locally.
    #[default]
    Index,
    /// The leader's lease answers without a round while it holds (needs check-quorum and the
    /// same mode on every node; see [`Config::lease_reads`]).
    Lease,
    /// A read barrier through the log: a write per read, safe whatever the clocks do.
    Log,
}

impl ReadMode {
    /// The mode's name: `index`, `lease` or `log`.
    pub fn name(self) -> &'static str {
        match self {
            ReadMode::Index => "index",
            ReadMode::Lease => "lease",
            ReadMode::Log => "log",
        }
    }
}

impl std::str::FromStr for ReadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<ReadMode, String> {
        match s {
            "index" => Ok(ReadMode::Index),
            "lease" => Ok(ReadMode::Lease),
            "log" => Ok(ReadMode::Log),
            other => Err(format!("unknown read mode {other:?} (expected index, lease or log)")),
        }
    }
}

impl std::fmt::Display for ReadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a [`Node`] runs.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The core's settings: this node's id and group, timeouts in ticks, limits. A zero `seed`
    /// is replaced by one drawn from the operating system.
    pub raft: Config,
    /// The group's first voting members. Used only while the log and snapshots hold no
    /// configuration (a brand-new group): after the first membership change they are the
    /// truth. Empty (with no learners) for a node that waits to be added to a running group.
    pub voters: Vec<NodeId>,
    /// The group's first learners (they receive the log and serve reads, but neither vote nor
    /// count towards a majority). This node is a voter or a learner, or waits to be added.
    pub learners: Vec<NodeId>,
    /// The first members' addresses (see [`Membership::addresses`]), carried into the
    /// configuration entries of later changes so that every node learns them.
    pub addresses: BTreeMap<NodeId, String>,
    /// Real time per tick. With the core's defaults (heartbeat every 2 ticks, election timeout
    /// 10 to 20 ticks) 10 ms gives 20 ms heartbeats and elections within 100 to 200 ms.
    pub tick: Duration,
    /// Most inputs the core takes before it builds a Ready (bounds the latency one round adds
    /// when the queue is long).
    pub max_inputs_per_round: usize,
    /// Bytes per read when restoring the state machine from a snapshot.
    pub restore_chunk_bytes: usize,
    /// How [`Node::read`] makes reads linearizable. It decides [`Config::lease_reads`] (on for
    /// [`ReadMode::Lease`], off otherwise), whatever `raft` says.
    pub read_mode: ReadMode,
    /// Run on these shared threads instead of threads of the node's own (see [`Runtime`]):
    /// how one process hosts many groups.
    pub runtime: Option<Runtime>,
}

impl NodeOptions {
    /// Options for node `id` of `group` with these voters, and every other setting at its
    /// default.
    pub fn new(id: NodeId, group: u64, voters: Vec<NodeId>) -> NodeOptions {
        NodeOptions {
            raft: Config { id, group, ..Config::default() },
            voters,
            learners: Vec::new(),
            addresses: BTreeMap::new(),
            tick: Duration::from_millis(10),
            max_inputs_per_round: 4096,
            restore_chunk_bytes: 1 << 20,
            read_mode: ReadMode::Index,
            runtime: None,
        }
    }
}

/// A node's status: the core's view plus what the driver knows.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStatus {
    /// The core's status: role, term, leader, log bounds, commit index, per-follower progress.
    pub raft: Status,
    /// The last index the state machine has applied (the core's `applied_index` is what it has
    /// handed out, which may be ahead).
    pub applied_index: Index,
    /// Messages received that the core refused (wrong group, unknown peer, malformed).
    pub rejected_messages: u64,
    /// Why the node stopped working, if a storage or state-machine failure stopped it.
    pub failure: Option<String>,
    /// Why the log store refuses writes for now (out of space), while it does: the driver
    /// retries them, and a leader takes no proposals ([`NodeError::StorageFull`]).
    pub storage_full: Option<String>,
    /// How reads are made linearizable.
    pub read_mode: ReadMode,
}

/// A request waiting for its entry to be applied.
pub(crate) enum Waiter<M: StateMachine> {
    /// A command: answered with the state machine's output.
    Write(Reply<M::Output>),
    /// A read barrier: the query runs on the state machine when the barrier is applied (or is
    /// told why it cannot).
    Read(ReadFn<M>),
}

/// A query waiting for its read to be confirmed and its index applied.
/// It returns how long the query took, not counting the answer's delivery (which may write to
/// a socket), for the driver's estimate of the machine's cost.
pub(crate) type ReadFn<M> = Box<dyn FnOnce(Result<&M, NodeError>) -> Duration + Send>;

impl<M: StateMachine> Waiter<M> {
    fn fail(self, err: NodeError) {
        match self {
            Waiter::Write(reply) => reply.send(Err(err)),
            Waiter::Read(query) => {
                query(Err(err));
            }
        }
    }
}

/// A running Raft node: one group's core driven by threads, with a blocking client API.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use raft_core::node::{Node, NodeOptions};
/// use raft_core::{Entry, MemLogStore, Message, StateMachine, Transport};
///
/// /// Sums the numbers it is sent.
/// #[derive(Default)]
/// struct Sum(u64);
/// impl StateMachine for Sum {
///     type Output = u64;
///     fn apply(&mut self, entry: &Entry) -> u64 {
///         if let Ok(s) = std::str::from_utf8(&entry.data) {
///             self.0 += s.parse::<u64>().unwrap_or(0);
///         }
///         self.0
///     }
///     fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
///         out.write_all(&self.0.to_le_bytes())
///     }
///     fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
///         let mut b = [0; 8];
///         input.read_exact(&mut b)?;
///         self.0 = u64::from_le_bytes(b);
///         Ok(())
///     }
/// }
///
/// /// A one-node group sends nothing.
/// struct Nowhere;
/// impl Transport for Nowhere {
///     fn send(&self, _msg: Message) {}
/// }
///
/// let node = Node::start(
///     NodeOptions::new(1, 0, vec![1]),
///     Arc::new(MemLogStore::new()),
///     None,
///     Arc::new(Nowhere),
///     Sum::default(),
/// )
/// .unwrap();
/// let timeout = Duration::from_secs(5);
/// // Until the node has elected itself, proposals fail with NotLeader (nothing done).
/// while !node.is_leader() {
///     std::thread::sleep(Duration::from_millis(5));
/// }
/// assert_eq!(node.propose("40".into(), timeout).unwrap(), 40);
/// assert_eq!(node.propose("2".into(), timeout).unwrap(), 42);
/// assert_eq!(node.read(|sum: &Sum| sum.0, timeout).unwrap(), 42);
/// node.shutdown();
/// ```
pub struct Node<M: StateMachine> {
    driver: Arc<Driver<M>>,
    shared: Arc<Shared>,
    /// The node's own threads (none on a runtime).
    threads: Vec<JoinHandle<()>>,
    id: NodeId,
    stopped: bool,
}

impl<M: StateMachine> std::fmt::Debug for Node<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("leader", &self.shared.leader.load(Ordering::Relaxed))
            .field("term", &self.shared.term.load(Ordering::Relaxed))
            .finish()
    }
}

impl<M> Node<M>
where
    M: StateMachine + Send + 'static,
    M::Output: Send + 'static,
{
    /// Starts a node: restores the state machine from the newest snapshot (if a snapshot store
    /// is given), rebuilds the core from what the log store holds, and starts the threads.
    ///
    /// Register [`inbound`](Node::inbound) with the transport (or its
    /// [`Router`](crate::Router)) so received messages reach the node. Without a snapshot
    /// store the node never takes snapshots and never compacts its log.
    pub fn start(
        options: NodeOptions,
        log: Arc<dyn LogStore>,
        snapshots: Option<Arc<dyn SnapshotStore>>,
        transport: Arc<dyn Transport>,
        mut machine: M,
    ) -> Result<Node<M>, NodeError> {
        let mut config = options.raft.clone();
        config.lease_reads = options.read_mode == ReadMode::Lease;
        config.validate()?;
        if config.seed == 0 {
            config.seed = os_seed();
        }
        let group = config.group;
        let latest: Option<SnapshotMeta> = match &snapshots {
            Some(store) => {
                let latest = store.latest(group)?;
                if let Some(meta) = &latest {
                    restore_snapshot(
                        &mut machine,
                        store.as_ref(),
                        meta,
                        options.restore_chunk_bytes.max(1),
                    )?;
                    tracing::info!(
                        group,
                        index = meta.index,
                        term = meta.term,
                        "restored snapshot"
                    );
                }
                latest
            }
            None => {
                config.snapshot_entries = 0;
                config.snapshot_bytes = 0;
                None
            }
        };
        let applied = latest.as_ref().map_or(0, |s| s.index);
        let mut bootstrap = Membership::new(options.voters.iter().copied())
            .with_learners(options.learners.iter().copied());
        let members = bootstrap.members();
        bootstrap.addresses = options.addresses.clone();
        bootstrap.addresses.retain(|id, _| members.contains(id));
        let initial = load_initial_state(log.as_ref(), group, bootstrap, latest, 0)?;
        let raft = Raft::new(config, initial)?;
        let id = raft.id();
        let runtime_counts = options.runtime.as_ref().map(|r| r.pool().counts.clone());
        let shared = Arc::new(Shared::on(runtime_counts));
        shared.applied.store(applied, Ordering::Relaxed);
        shared.publish(&raft);
        let parts = Parts { shared: shared.clone(), log, snapshots, transport };
        let (driver, threads) =
            threads::spawn(raft, machine, applied, &options, parts).map_err(NodeError::Spawn)?;
        Ok(Node { driver, shared, threads, id, stopped: false })
    }

    /// Where the transport delivers this node's messages.
    ///
    /// Delivering runs the node's work on the delivering thread when no other thread is running
    /// it (see the [module docs](self)): the core, applying committed entries and answering
    /// their clients (never a disk sync). A transport should deliver from its own
    /// threads, and hand over what it received together with
    /// [`Inbound::deliver_all`].
    pub fn inbound(&self) -> Arc<dyn Inbound> {
        Arc::new(Mailbox { driver: Arc::downgrade(&self.driver) })
    }

    /// Gathers requests to hand to the node together when the batch is submitted (or dropped):
    /// they share one round of the core, and the submitting thread runs it (see
    /// [`Batch::submit`]).
    pub fn batch(&self) -> Batch<'_, M> {
        Batch { node: self, inputs: Vec::new() }
    }

    /// Proposes a command and waits up to `timeout` until it is applied; returns the state
    /// machine's output. See the [module docs](self) for what each error means.
    ///
    /// The calling thread runs the node's work while no other thread is (it would only wait
    /// otherwise).
    pub fn propose(&self, command: Bytes, timeout: Duration) -> Result<M::Output, NodeError> {
        let (reply, pending) = reply_pair();
        if let Some(input) = propose_input(command, reply) {
            self.driver.deliver(input);
        }
        pending.wait(timeout)
    }

    /// Proposes a command without waiting: collect the answer from the returned [`Pending`].
    pub fn propose_async(&self, command: Bytes) -> Pending<M::Output> {
        let (reply, pending) = reply_pair();
        self.submit(propose_input(command, reply));
        pending
    }

    /// Proposes a command and calls `done` with the answer, exactly once: the state machine's
    /// output once the entry is applied, or the error (see the [module docs](self)).
    ///
    /// `done` runs on whichever thread finishes the request (a thread of the node's, or of its
    /// transport), so it must be quick and must not block: hand the answer on (to a socket, a
    /// queue), do not wait in it. It never runs on the calling thread before `propose_with`
    /// returns. There is no timeout: a request whose entry never commits is answered when
    /// leadership changes or the node stops; callers that need a deadline keep their own.
    pub fn propose_with<F>(&self, command: Bytes, done: F)
    where
        F: FnOnce(Result<M::Output, NodeError>) + Send + 'static,
    {
        self.submit(propose_input(command, Reply::callback(Box::new(done))));
    }

    /// Queues an input for the raft loop thread (a stopped node drops it, which answers
    /// `Stopped`).
    fn submit(&self, input: Option<Input<M>>) {
        if let Some(input) = input {
            if self.driver.core.push(input) {
                self.driver.core.call_worker();
            }
        }
    }

    /// A linearizable read: runs `query` on the state machine once it has applied every write
    /// that completed before the call, by the node's [`ReadMode`] (see the
    /// [module docs](self#reads)). Works on followers too (except in [`ReadMode::Log`], where
    /// it answers [`NodeError::NotLeader`]). The calling thread runs the node's work while no
    /// other thread is.
    pub fn read<R, F>(&self, query: F, timeout: Duration) -> Result<R, NodeError>
    where
        R: Send + 'static,
        F: FnOnce(&M) -> R + Send + 'static,
    {
        let (reply, pending) = reply_pair();
        self.driver.deliver(read_input(self.driver.read_mode, query, reply));
        pending.wait(timeout)
    }

    /// [`read`](Node::read) without waiting.
    pub fn read_async<R, F>(&self, query: F) -> Pending<R>
    where
        R: Send + 'static,
        F: FnOnce(&M) -> R + Send + 'static,
    {
        let (reply, pending) = reply_pair();
        self.submit(Some(read_input(self.driver.read_mode, query, reply)));
        pending
    }

    /// [`read`](Node::read) answered through a callback: `done` gets the query's result, or
    /// the error, exactly once. The same rules as for [`propose_with`](Node::propose_with)'s
    /// callback apply to `query` and `done`: both run on the node's threads.
    pub fn read_with<R, F, D>(&self, query: F, done: D)
    where
        R: Send + 'static,
        F: FnOnce(&M) -> R + Send + 'static,
        D: FnOnce(Result<R, NodeError>) + Send + 'static,
    {
        self.submit(Some(read_input(
            self.driver.read_mode,
            query,
            Reply::callback(Box::new(done)),
        )));
    }

    /// Runs `query` on this node's state machine as it is now, without going through the log:
    /// cheap, available on every node, and possibly stale (not linearizable). For diagnostics,
    /// and for checking replicas against each other.
    pub fn read_local<R, F>(&self, query: F, timeout: Duration) -> Result<R, NodeError>
    where
        R: Send + 'static,
        F: FnOnce(&M) -> R + Send + 'static,
    {
        let (reply, pending) = reply_pair();
        if self.driver.apply.push(local_job(query, reply)) {
            // Run it here unless someone is applying (who then runs it).
            self.driver.drive();
        }
        pending.wait(timeout)
    }

    /// [`read_local`](Node::read_local) answered through a callback (run on the node's threads,
    /// never on the calling one before this returns).
    pub fn read_local_with<R, F, D>(&self, query: F, done: D)
    where
        R: Send + 'static,
        F: FnOnce(&M) -> R + Send + 'static,
        D: FnOnce(Result<R, NodeError>) + Send + 'static,
    {
        // A closed stage drops the job and with it the reply, which answers Stopped.
        if self.driver.apply.push(local_job(query, Reply::callback(Box::new(done)))) {
            self.driver.apply.call_worker();
        }
    }

    /// Hands leadership to voter `to` and waits up to `timeout` until this node follows it.
    /// Proposals here fail with [`NodeError::Transferring`] meanwhile. Fails with
    /// [`NodeError::TransferAbandoned`] if the target did not win within an election timeout
    /// (proposals resume here), [`NodeError::NotLeader`] on a follower, and
    /// [`NodeError::NotAVoter`] for a node outside the group. Transferring to this node itself
    /// cancels a transfer in progress.
    pub fn transfer_leader(&self, to: NodeId, timeout: Duration) -> Result<(), NodeError> {
        let (reply, pending) = reply_pair();
        self.driver.deliver(Input::Transfer { to, reply });
        pending.wait(timeout)
    }

    /// [`transfer_leader`](Node::transfer_leader) answered through a callback: `done` gets the
    /// outcome exactly once, on one of the node's threads (so it must not block). There is no
    /// timeout: a transfer ends within an election timeout, done or abandoned.
    pub fn transfer_leader_with<F>(&self, to: NodeId, done: F)
    where
        F: FnOnce(Result<(), NodeError>) + Send + 'static,
    {
        self.submit(Some(Input::Transfer { to, reply: Reply::callback(Box::new(done)) }));
    }

    /// Changes the membership as leader: any set of [`MembershipChange`]s at once (joint
    /// consensus when the voters change), and waits up to `timeout` until the change is
    /// complete (committed, and the group out of the joint configuration). Returns the
    /// configuration then in effect.
    ///
    /// Fails with [`NodeError::NotLeader`] on a follower, [`NodeError::Membership`] for a change
    /// refused ([`MembershipError::InProgress`](crate::MembershipError::InProgress) while another is in flight,
    /// [`MembershipError::LearnerBehind`](crate::MembershipError::LearnerBehind) for a learner that has not caught up, ...), both with
    /// nothing done; [`NodeError::Dropped`] if a new leader replaced the change's entry.
    pub fn change_membership(
        &self,
        changes: Vec<MembershipChange>,
        timeout: Duration,
    ) -> Result<Membership, NodeError> {
        let (reply, pending) = reply_pair();
        self.driver.deliver(Input::ChangeMembership { changes, reply });
        pending.wait(timeout)
    }

    /// [`change_membership`](Node::change_membership) without waiting.
    pub fn change_membership_async(&self, changes: Vec<MembershipChange>) -> Pending<Membership> {
        let (reply, pending) = reply_pair();
        self.submit(Some(Input::ChangeMembership { changes, reply }));
        pending
    }

    /// [`change_membership`](Node::change_membership) answered through a callback, exactly
    /// once, on one of the node's threads (so it must not block).
    pub fn change_membership_with<F>(&self, changes: Vec<MembershipChange>, done: F)
    where
        F: FnOnce(Result<Membership, NodeError>) + Send + 'static,
    {
        let reply = Reply::callback(Box::new(done));
        self.submit(Some(Input::ChangeMembership { changes, reply }));
    }

    /// Adds node `id` as a learner reachable at `address` (see [`Membership::addresses`]):
    /// it receives the log and snapshots, and does not vote until [promoted](Node::promote).
    pub fn add_learner(
        &self,
        id: NodeId,
        address: impl Into<String>,
        timeout: Duration,
    ) -> Result<Membership, NodeError> {
        let change = MembershipChange::AddLearner { id, address: address.into() };
        self.change_membership(vec![change], timeout)
    }

    /// Makes learner `id` a voter (refused while it lags more than
    /// [`Config::promote_max_lag`] entries).
    pub fn promote(&self, id: NodeId, timeout: Duration) -> Result<Membership, NodeError> {
        self.change_membership(vec![MembershipChange::Promote { id }], timeout)
    }

    /// Removes voter or learner `id` (the leader itself included: it hands over once the change
    /// commits).
    pub fn remove(&self, id: NodeId, timeout: Duration) -> Result<Membership, NodeError> {
        self.change_membership(vec![MembershipChange::Remove { id }], timeout)
    }

    /// How this node's reads are made linearizable.
    pub fn read_mode(&self) -> ReadMode {
        self.driver.read_mode
    }

    /// A full status report from the core (waits up to a second for it).
    pub fn status(&self) -> Result<NodeStatus, NodeError> {
        let (reply, pending) = reply_pair();
        if self.driver.stopped() {
            return Err(NodeError::Stopped);
        }
        self.driver.deliver(Input::Status(reply));
        pending.wait(Duration::from_secs(1))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The leader this node knows of (as of the raft loop's last round).
    pub fn leader(&self) -> Option<NodeId> {
        Some(self.shared.leader.load(Ordering::Relaxed)).filter(|&l| l != 0)
    }

    /// Whether this node is the leader (as of the raft loop's last round).
    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.id)
    }

    /// The node's term (as of the raft loop's last round).
    pub fn term(&self) -> Term {
        self.shared.term.load(Ordering::Relaxed)
    }

    /// The node's role (as of the raft loop's last round).
    pub fn role(&self) -> RoleKind {
        match self.shared.role.load(Ordering::Relaxed) {
            3 => RoleKind::Leader,
            2 => RoleKind::Candidate,
            1 => RoleKind::PreCandidate,
            _ => RoleKind::Follower,
        }
    }

    /// The commit index (as of the raft loop's last round).
    pub fn commit_index(&self) -> Index {
        self.shared.commit.load(Ordering::Relaxed)
    }

    /// The last index the state machine applied.
    pub fn applied_index(&self) -> Index {
        self.shared.applied.load(Ordering::Relaxed)
    }

    /// Why the node stopped working, if it failed.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().clone()
    }

    /// Whether the node's group sleeps (hibernation): as of the node's last round, without
    /// asking the core (cheap enough to ask of thousands of nodes).
    pub fn is_asleep(&self) -> bool {
        self.shared.asleep.load(Ordering::SeqCst)
    }

    /// Why the log store refuses writes for now (out of space), while it does (see
    /// [`NodeError::StorageFull`]): the node retries them and recovers by itself once space is
    /// freed.
    pub fn storage_full(&self) -> Option<String> {
        self.shared.storage_full.lock().clone()
    }

    /// Stops the node: the raft loop stops taking inputs, the persist thread finishes (and
    /// syncs) every write already handed to it, and every thread is joined. Requests not yet
    /// answered fail with [`NodeError::Stopped`].
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Stops the node, then removes its group's log and snapshots from the stores
    /// ([`LogStore::remove_group`], [`SnapshotStore::remove_group`]), syncing the log. For a
    /// group destroyed at run time: the application also marks it destroyed in its
    /// [`Router`](crate::Router) (so late messages of this incarnation are refused, counted) and
    /// in its own durable catalogue of groups, *before* calling this, so a crash in between
    /// finds the group destroyed rather than half gone.
    ///
    /// # Errors
    /// [`NodeError::Storage`] or [`NodeError::Snapshot`] if a store could not remove the
    /// group's data (the node is stopped either way; calling the stores again is safe).
    pub fn destroy(mut self) -> Result<(), NodeError> {
        self.stop();
        let group = self.driver.group;
        let log = &self.driver.log;
        let lsn = log.remove_group(group).map_err(NodeError::Storage)?;
        log.sync(lsn).map_err(NodeError::Storage)?;
        if let Some(snapshots) = &self.driver.snapshots {
            snapshots.remove_group(group).map_err(NodeError::Snapshot)?;
        }
        tracing::info!(group, id = self.id, "group destroyed: its log and snapshots are removed");
        Ok(())
    }
}

impl<M: StateMachine> Node<M> {
    /// Stops the core and joins every thread (the raft loop first); idempotent.
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        self.driver.shut_down();
        if self.threads.is_empty() {
            // On a runtime: finish here what the stages still hold.
            self.driver.finish_on_caller();
            return;
        }
        for thread in self.threads.drain(..) {
            let name = thread.thread().name().unwrap_or("?").to_owned();
            if thread.join().is_err() {
                tracing::error!(thread = %name, "node thread panicked");
            }
        }
    }
}

impl<M: StateMachine> Drop for Node<M> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node's inbound: received messages join the core's queue, and the delivering thread runs
/// the core if it is free. Holds the driver weakly, so a transport that outlives the node only
/// drops what arrives.
struct Mailbox<M: StateMachine> {
    driver: Weak<Driver<M>>,
}

impl<M> Inbound for Mailbox<M>
where
    M: StateMachine + Send + 'static,
    M::Output: Send + 'static,
{
    fn deliver(&self, msg: Message) {
        if let Some(driver) = self.driver.upgrade() {
            driver.deliver(Input::Message(msg));
        }
    }

    fn deliver_all(&self, msgs: Vec<Message>) {
        if let Some(driver) = self.driver.upgrade() {
            if driver.core.push_all(msgs.into_iter().map(Input::Message)) {
                driver.drive();
            }
        }
    }
}

/// Requests gathered for one hand-over to a [`Node`] (see [`Node::batch`]).
///
/// An event loop that starts the commands of many clients in one round puts them in a batch,
/// so they become one Ready (one append to every follower, one write) instead of one each.
#[must_use = "requests in a batch reach the node when it is submitted or dropped"]
pub struct Batch<'a, M: StateMachine> {
    node: &'a Node<M>,
    inputs: Vec<Input<M>>,
}

impl<M: StateMachine> std::fmt::Debug for Batch<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("node", &self.node.id)
            .field("requests", &self.inputs.len())
            .finish()
    }
}

impl<M> Batch<'_, M>
where
    M: StateMachine + Send + 'static,
    M::Output: Send + 'static,
{
    /// [`Node::propose_with`], held until the batch is submitted.
    pub fn propose_with<F>(&mut self, command: Bytes, done: F)
    where
        F: FnOnce(Result<M::Output, NodeError>) + Send + 'static,
    {
        if let Some(input) = propose_input(command, Reply::callback(Box::new(done))) {
            self.inputs.push(input);
        }
    }

    /// [`Node::read_with`], held until the batch is submitted.
    pub fn read_with<R, F, D>(&mut self, query: F, done: D)
    where
        R: Send + 'static,
        F: FnOnce(&M) -> R + Send + 'static,
        D: FnOnce(Result<R, NodeError>) + Send + 'static,
    {
        self.inputs.push(read_input(
            self.node.driver.read_mode,
            query,
            Reply::callback(Box::new(done)),
        ));
    }

    /// How many requests the batch holds.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether the batch holds no request.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Hands the requests to the node and runs the node's work on this thread while no other
    /// thread is running it. The requests' callbacks may therefore run on this thread before
    /// `submit` returns (those of requests this round commits at once: a group of one), so the
    /// caller must not hold a lock a callback takes. Dropping the batch submits it too.
    pub fn submit(self) {
        drop(self);
    }
}

impl<M: StateMachine> Drop for Batch<'_, M> {
    fn drop(&mut self) {
        if !self.inputs.is_empty() && self.node.driver.core.push_all(self.inputs.drain(..)) {
            self.node.driver.drive();
        }
    }
}

/// The input for a proposal, or `None` after answering an empty one.
fn propose_input<M: StateMachine>(command: Bytes, reply: Reply<M::Output>) -> Option<Input<M>> {
    if command.is_empty() {
        reply.send(Err(NodeError::EmptyCommand));
        None
    } else {
        Some(Input::Propose { data: command, waiter: Waiter::Write(reply) })
    }
}

/// The input for a linearizable read in `mode`: a read the core confirms, or a read barrier,
/// whose waiter runs `query`.
fn read_input<M, R, F>(mode: ReadMode, query: F, reply: Reply<R>) -> Input<M>
where
    M: StateMachine,
    R: Send + 'static,
    F: FnOnce(&M) -> R + Send + 'static,
{
    let run: ReadFn<M> = Box::new(move |machine| match machine {
        Ok(machine) => {
            let started = std::time::Instant::now();
            let result = query(machine);
            let took = started.elapsed();
            reply.send(Ok(result));
            took
        }
        Err(err) => {
            reply.send(Err(err));
            Duration::ZERO
        }
    });
    match mode {
        ReadMode::Log => Input::Propose { data: Bytes::new(), waiter: Waiter::Read(run) },
        ReadMode::Index | ReadMode::Lease => Input::Read(run),
    }
}

/// The apply job for a local read.
fn local_job<M, R, F>(query: F, reply: Reply<R>) -> ApplyJob<M>
where
    M: StateMachine,
    R: Send + 'static,
    F: FnOnce(&M) -> R + Send + 'static,
{
    ApplyJob::Local(Box::new(move |machine| reply.send(Ok(query(machine)))))
}

/// Whether an entry is a read barrier (an empty normal entry, which only the driver proposes).
pub(crate) fn is_read_barrier(kind: EntryKind, data: &Bytes) -> bool {
    kind == EntryKind::Normal && data.is_empty()
}

/// A seed from the operating system's randomness (through the standard library's hasher keys).
fn os_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id() as u64);
    hasher.finish().max(1)
}
