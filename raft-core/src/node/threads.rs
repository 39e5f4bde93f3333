//! The node driver's machinery: three [`Stage`]s (the core, persisting, applying), the threads
//! that stand behind them, and the snapshot worker.
//!
//! A stage is run by whichever thread brings it work when no other thread is running it (see
//! [`Driver::drive`]); each stage also has a worker thread for the work nobody brought a thread
//! for, for work that must not run on a caller's thread, and for ticks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::persist::Persister;
use super::reply::Reply;
use super::snapshots::{missing_snapshot, SnapshotIo, SnapshotJob, ViewJob};
use super::stage::{Called, Round, Stage, Take};
use super::{
    is_read_barrier, NodeError, NodeOptions, NodeStatus, ReadFn, ReadMode, Shared, Waiter,
};
use crate::error::{ProposeError, ReadError, SnapshotError, StorageError, TransferError};
use crate::execute::{ApplyWork, Executor, PersistWrite, ReadyHandler};
use crate::membership::{Membership, MembershipChange, MembershipError};
use crate::message::Message;
use crate::raft::{EntryId, Raft};
use crate::ready::{FetchRequest, ReadId, ReadState, SnapshotChunk, SnapshotRead, SnapshotRequest};
use crate::snapshot::{restore_snapshot, take_snapshot, SnapshotStore};
use crate::storage::{serve_fetch, LogStore, StateMachine};
use crate::transport::Transport;
use crate::types::{Entry, EntryKind, GroupId, Index, NodeId, SnapshotMeta, Term};

mod apply_cost;
mod held_back;

/// Rounds of the core an inline runner does before it leaves the rest to the raft loop thread
/// (so a transport reader or a server's event loop gets back to its own work).
pub(super) const CORE_ROUNDS_INLINE: usize = 16;
/// Rounds of applying an inline runner does before it leaves the rest to the apply thread.
const APPLY_ROUNDS_INLINE: usize = 16;
/// Most time an inline runner spends applying before it leaves the rest to the apply thread.
const INLINE_APPLY_BUDGET: Duration = Duration::from_millis(1);

/// What the core reacts to.
pub(crate) enum Input<M: StateMachine> {
    /// A message from a peer.
    Message(Message),
    /// A client's command, or a read barrier (empty data).
    Propose { data: Bytes, waiter: Waiter<M> },
    /// A read the core confirms (ReadIndex, or the lease). The reads of one round share one
    /// confirmation.
    Read(ReadFn<M>),
    /// The raft loop fell behind its ticks: the lease, which counts ticks, is given up.
    ClockStalled,
    /// Hand leadership to `to`; answered once this node follows it, or the transfer fails.
    Transfer { to: NodeId, reply: Reply<()> },
    /// Change the membership; answered once the change is complete (committed and not joint).
    ChangeMembership { changes: Vec<MembershipChange>, reply: Reply<Membership> },
    /// A tick of the node's clock.
    Tick,
    /// On a runtime: take the ticks owed (see [`Driver::take_owed_ticks`]); the input itself
    /// only brings the round.
    OwedTicks,
    /// Every Ready up to `number` is durable.
    Persisted { number: u64 },
    /// The state machine took (or failed to take) the snapshot the core asked for.
    SnapshotTaken(Result<SnapshotMeta, SnapshotError>),
    /// The snapshot thread read a chunk for a follower.
    SnapshotRead(SnapshotRead, Result<Bytes, SnapshotError>),
    /// The snapshot thread wrote a received chunk.
    SnapshotChunk(SnapshotChunk, Result<(), SnapshotError>),
    /// A status request.
    Status(Reply<NodeStatus>),
    /// The log store refuses writes for lack of space (true), or takes them again (false).
    StorageStalled(bool),
    /// The runtime found the leader this node sleeps under down: count down again.
    Wake,
    /// A worker failed; the node stops.
    Failed,
    /// Stop.
    Shutdown,
}

/// Work for the apply stage, in the order the core produced it.
pub(crate) enum ApplyJob<M: StateMachine> {
    /// Run a query on the state machine as it is now (a local, possibly stale read).
    Local(Box<dyn FnOnce(&M) + Send>),
    /// The core stopped: answer every waiting request with `Stopped` and take no more work.
    Stop,
    /// Answer each waiter when its entry `(index, term)` is applied. The proposals made since
    /// the last work that applies entries come together, just before the next such work (the
    /// first that may apply them).
    Register(Vec<(Index, Term, Waiter<M>)>),
    /// One Ready's state machine duties (snapshot metadata boxed: rare, and large next to the
    /// other jobs).
    Apply {
        restore: Option<Box<SnapshotMeta>>,
        entries: Vec<Entry>,
        snapshot: Option<Box<SnapshotRequest>>,
    },
    /// Run confirmed reads once the machine has applied `index`.
    Read { index: Index, queries: Vec<ReadFn<M>> },
}

/// The core stage's state: the Raft core and what the driver tracks about its Readies.
pub(crate) struct Core<M: StateMachine> {
    raft: Raft,
    /// Carries out the core's Readies, and knows which are durable.
    executor: Executor,
    /// Proposals waiting to be handed to the apply stage: just before the next work that
    /// applies entries (which is the first that can apply theirs), not in a job of their own,
    /// so a proposal costs the apply stage no round before its entry commits.
    registered: Vec<(Index, Term, Waiter<M>)>,
    /// Messages of this round's Readies, sent together at its end (a transport can write the
    /// messages for one peer at once).
    outbox: Vec<Message>,
    /// Reads handed to the core, by the id they were asked for with (one per round).
    reads: HashMap<ReadId, Vec<ReadFn<M>>>,
    next_read: ReadId,
    /// Reads that arrived in this round, asked for together at its end.
    round_reads: Vec<ReadFn<M>>,
    /// Leadership transfers asked for, answered when they finish.
    transfers: Vec<(NodeId, Reply<()>)>,
    /// Membership changes proposed, by their entry, answered when they complete.
    changes: Vec<(EntryId, Reply<Membership>)>,
    stopped: bool,
}

/// The apply stage's state: the state machine and the requests waiting for their entries.
pub(crate) struct Applier<M: StateMachine> {
    machine: M,
    applied: Index,
    waiting: BTreeMap<Index, (Term, Waiter<M>)>,
    /// Confirmed reads waiting for the machine to apply their index.
    reads: BTreeMap<Index, Vec<ReadFn<M>>>,
    stopped: bool,
}

/// Everything a node's threads share.
pub(crate) struct Driver<M: StateMachine> {
    pub(crate) core: Stage<Core<M>, Input<M>>,
    pub(super) persist: Stage<Persister, PersistWrite>,
    pub(crate) apply: Stage<Applier<M>, ApplyJob<M>>,
    /// Snapshot chunks read for followers and written from the leader (with a snapshot store).
    pub(super) snapshot_io: Option<Stage<SnapshotIo, SnapshotJob>>,
    /// Snapshots written from state machine views (with a snapshot store).
    pub(super) views: Option<Stage<Arc<dyn SnapshotStore>, ViewJob>>,
    pub(super) group: GroupId,
    pub(crate) shared: Arc<Shared>,
    pub(super) log: Arc<dyn LogStore>,
    pub(super) snapshots: Option<Arc<dyn SnapshotStore>>,
    pub(super) transport: Arc<dyn Transport>,
    /// When the persist worker retries writes the store refused for lack of space.
    pub(super) persist_retry: super::persist::RetryAt,
    /// The runtime whose threads run the stages (none: threads of the node's own).
    pub(super) pool: Option<Arc<super::runtime::Pool>>,
    /// On a runtime: when the next tick is due.
    pub(super) next_tick: parking_lot::Mutex<Instant>,
    /// On a runtime: the timer left this node alone while it slept.
    pub(super) timer_parked: std::sync::atomic::AtomicBool,
    /// On a runtime: the highest log position the shared sync was tried to for this node's
    /// persist stage.
    pub(super) sync_tried: AtomicU64,
    /// On a runtime: this driver, for the timer.
    pub(super) me: std::sync::OnceLock<std::sync::Weak<dyn super::runtime::Timed>>,
    restore_chunk_bytes: usize,
    pub(crate) read_mode: ReadMode,
    pub(super) tick: Duration,
    max_inputs: usize,
    /// What applying one client entry costs, to decide whether to apply inline.
    apply_cost: apply_cost::ApplyCost,
}

/// What [`spawn`] needs besides the core and the state machine.
pub(crate) struct Parts {
    pub(crate) shared: Arc<Shared>,
    pub(crate) log: Arc<dyn LogStore>,
    pub(crate) snapshots: Option<Arc<dyn SnapshotStore>>,
    pub(crate) transport: Arc<dyn Transport>,
}

/// A node's driver and its threads (the raft loop first: it is joined first).
pub(crate) type Spawned<M> = (Arc<Driver<M>>, Vec<JoinHandle<()>>);

/// Starts a node's threads around a new [`Driver`].
pub(crate) fn spawn<M>(
    raft: Raft,
    machine: M,
    applied: Index,
    options: &NodeOptions,
    parts: Parts,
) -> std::io::Result<Spawned<M>>
where
    M: StateMachine + Send + 'static,
    M::Output: Send + 'static,
{
    let id = raft.id();
    let group = raft.group();
    let name = |what: &str| format!("raft-{group}-{id}-{what}");
    let core = Core {
        raft,
        executor: Executor::new(),
        registered: Vec::new(),
        outbox: Vec::new(),
        reads: HashMap::new(),
        next_read: 1,
        round_reads: Vec::new(),
        transfers: Vec::new(),
        changes: Vec::new(),
        stopped: false,
    };
    let persister = Persister::new();
    let applier = Applier {
        machine,
        applied,
        waiting: BTreeMap::new(),
        reads: BTreeMap::new(),
        stopped: false,
    };
    let driver = Arc::new(Driver {
        core: Stage::new(core),
        persist: Stage::new(persister),
        apply: Stage::new(applier),
        snapshot_io: parts.snapshots.clone().map(|s| Stage::new(SnapshotIo::new(s))),
        views: parts.snapshots.clone().map(Stage::new),
        group,
        shared: parts.shared,
        log: parts.log,
        snapshots: parts.snapshots,
        transport: parts.transport,
        persist_retry: super::persist::RetryAt::default(),
        pool: options.runtime.as_ref().map(|r| r.pool().clone()),
        next_tick: parking_lot::Mutex::new(Instant::now() + options.tick),
        timer_parked: std::sync::atomic::AtomicBool::new(false),
        sync_tried: AtomicU64::new(0),
        me: std::sync::OnceLock::new(),
        restore_chunk_bytes: options.restore_chunk_bytes.max(1),
        read_mode: options.read_mode,
        tick: options.tick.max(Duration::from_micros(100)),
        max_inputs: options.max_inputs_per_round.max(1),
        apply_cost: apply_cost::ApplyCost::default(),
    });
    if driver.pool.is_some() {
        driver.run_on_pool();
        return Ok((driver, Vec::new()));
    }
    let spawn_one = |what: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new().name(name(what)).spawn(f)
    };
    let mut threads = Vec::new();
    let d = driver.clone();
    threads.push(spawn_one("loop", Box::new(move || d.raft_loop()))?);
    let d = driver.clone();
    threads.push(spawn_one("persist", Box::new(move || d.persist_worker()))?);
    let d = driver.clone();
    threads.push(spawn_one("apply", Box::new(move || d.apply_worker()))?);
    if driver.snapshot_io.is_some() {
        let d = driver.clone();
        threads.push(spawn_one("snapshot", Box::new(move || d.snapshot_worker()))?);
    }
    if driver.views.is_some() {
        let d = driver.clone();
        threads.push(spawn_one("snapwrite", Box::new(move || d.view_worker()))?);
    }
    Ok((driver, threads))
}

impl<M> Driver<M>
where
    M: StateMachine,
{
    /// Runs the core on this thread if no other thread is running it, then the applying it left
    /// (the client waiting for an entry is answered from this thread), except restoring or
    /// taking a snapshot, which the apply thread does.
    ///
    /// Writes always go to the persist thread, never a caller's: a sync can take a slow disk
    /// hundreds of milliseconds, and a transport thread held in it would stop reading the
    /// leader's heartbeats, so the follower would call an election over its own disk's stall
    /// (seen with three nodes on one disk: a follower deposed a healthy leader).
    pub(crate) fn drive(&self) {
        self.run_core(Take::Try { max_rounds: CORE_ROUNDS_INLINE });
        self.follow_up();
    }

    pub(super) fn run_core(&self, take: Take) {
        self.core.run(take, &mut |core, inputs| self.core_round(core, inputs));
    }

    /// Hands writes to the persist thread, and applies here what is cheap to apply (else the
    /// apply thread does it).
    ///
    /// Applying inline saves the hand-off to the apply thread on the path that answers a
    /// client, but the thread that runs it may carry other groups' messages (a transport
    /// reader serves every group on its connection): one group's slow state machine must not
    /// delay them. So only a machine whose entries are known to be cheap is applied inline,
    /// for at most [`INLINE_APPLY_BUDGET`] per call.
    pub(super) fn follow_up(&self) {
        if !self.persist.is_idle() && self.persist_retry.get().is_none() {
            // (A stalled persist stage retries on its own clock.) On a runtime a round's write
            // is quick and its sync goes to the shared sync thread, so it runs here: no hand-off
            // to an I/O thread per round.
            if self.pool.is_none()
                || !self
                    .persist
                    .run(Take::Try { max_rounds: 1 }, &mut |p, jobs| self.persist_round(p, jobs))
            {
                self.persist.call_worker();
            }
        }
        self.follow_up_apply();
    }

    /// Applies here what is cheap to apply (else the apply thread does it).
    pub(super) fn follow_up_apply(&self) {
        if !self.apply.is_idle() {
            if self.apply_cost.cheap() {
                let take = Take::Try { max_rounds: APPLY_ROUNDS_INLINE };
                self.apply.run(take, &mut |a, jobs| self.apply_round(a, jobs, true));
            } else {
                self.apply.call_worker();
            }
        }
    }

    /// The raft loop thread: ticks the core on time, and runs it when called.
    fn raft_loop(&self) {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let called = self.core.wait_called(Some(next_tick));
            if called == Called::Closed {
                break;
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick += self.tick;
                if next_tick <= now {
                    // Fell behind (a stalled machine): tick once, do not burst (a follower
                    // would campaign before reading the heartbeats queued meanwhile). The
                    // ticks skipped are real time the lease did not count: it is given up.
                    self.core.push(Input::ClockStalled);
                    next_tick = now + self.tick;
                }
                self.core.push(Input::Tick);
            }
            self.run_core(Take::Wait);
            self.follow_up();
        }
        tracing::debug!(group = self.group, "raft loop stopped");
    }

    /// One round of the core: take the queued inputs, then carry out every Ready.
    fn core_round(&self, core: &mut Core<M>, inputs: &mut VecDeque<Input<M>>) -> Round {
        if core.stopped {
            inputs.clear(); // Dropped requests answer Stopped.
            return Round::Continue;
        }
        self.take_owed_ticks(core);
        self.take_durable(core);
        let take = inputs.len().min(self.max_inputs);
        for _ in 0..take {
            let Some(input) = inputs.pop_front() else { break };
            if !self.handle(core, input) {
                self.stop(core);
                inputs.clear();
                return Round::Continue;
            }
        }
        if !core.round_reads.is_empty() {
            let queries = std::mem::take(&mut core.round_reads);
            let id = core.next_read;
            core.next_read += 1;
            match core.raft.read_index(id) {
                Ok(()) => {
                    core.reads.insert(id, queries);
                }
                Err(err) => fail_reads(queries, err),
            }
        }
        let Core { raft, executor, outbox, reads, registered, .. } = core;
        let mut io = CoreIo { driver: self, outbox, reads, registered };
        let carried = executor.run(raft, &mut io);
        if !core.outbox.is_empty() {
            crate::outbox::send_all(&self.transport, std::mem::take(&mut core.outbox));
        }
        if carried.is_err() {
            self.stop(core);
            return Round::Continue;
        }
        let was_asleep = self.shared.asleep.load(Ordering::Relaxed);
        self.shared.publish(&core.raft);
        self.publish_held_back(core);
        if core.raft.is_asleep() && !was_asleep {
            // Fell asleep: the queues give back what bursts grew.
            self.core.shrink_when_idle();
            self.persist.shrink_when_idle();
            self.persist.try_with_state(Persister::shrink);
            self.apply.shrink_when_idle();
        }
        if self.pool.is_some() {
            self.resume_timer();
        }
        if !core.transfers.is_empty() {
            settle_transfers(core);
        }
        if !core.changes.is_empty() {
            settle_changes(core);
        }
        Round::Continue
    }

    /// The core stops: no more inputs; the apply stage answers its waiters `Stopped`; the
    /// persist stage finishes (and syncs) what it was handed; the snapshot thread ends.
    fn stop(&self, core: &mut Core<M>) {
        core.stopped = true;
        for (_, _, waiter) in core.registered.drain(..) {
            waiter.fail(NodeError::Stopped);
        }
        core.reads.clear(); // Their replies answer Stopped.
        core.round_reads.clear();
        core.transfers.clear();
        core.changes.clear();
        if let Some(stage) = &self.snapshot_io {
            stage.close();
        }
        self.core.close();
        self.apply.push(ApplyJob::Stop);
        self.apply.close();
        self.persist.close();
        tracing::debug!(id = core.raft.id(), group = self.group, "raft core stopped");
    }

    /// Handles one input; false means stop.
    fn handle(&self, core: &mut Core<M>, input: Input<M>) -> bool {
        match input {
            Input::Message(msg) => {
                if let Err(err) = core.raft.step(msg) {
                    self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(id = core.raft.id(), %err, "message refused");
                }
            }
            Input::Propose { data, waiter } if core.raft.storage_stalled() && !data.is_empty() => {
                waiter.fail(self.refused_for_space(core))
            }
            Input::Propose { data, waiter } => match core.raft.propose(data) {
                Ok(at) => core.registered.push((at.index, at.term, waiter)),
                Err(ProposeError::NotLeader { leader }) => {
                    waiter.fail(NodeError::NotLeader { leader })
                }
                Err(ProposeError::Backpressure { uncommitted_bytes, limit_bytes }) => {
                    waiter.fail(NodeError::Busy { uncommitted_bytes, limit_bytes })
                }
                Err(ProposeError::Transferring { to }) => {
                    waiter.fail(NodeError::Transferring { to })
                }
                // The next leader is not known yet: nothing was done, retry elsewhere.
                Err(ProposeError::Leaving) => waiter.fail(NodeError::NotLeader { leader: None }),
            },
            Input::Read(query) => core.round_reads.push(query),
            Input::ClockStalled => core.raft.clock_stalled(),
            Input::Transfer { to, reply } => match core.raft.transfer_leader(to) {
                Ok(()) if to == core.raft.id() => reply.send(Ok(())),
                Ok(()) => core.transfers.push((to, reply)),
                Err(TransferError::NotAVoter(id)) => reply.send(Err(NodeError::NotAVoter(id))),
                Err(TransferError::NotLeader { leader }) => {
                    if leader == Some(to) {
                        reply.send(Ok(())); // Already there.
                    } else {
                        reply.send(Err(NodeError::NotLeader { leader }));
                    }
                }
            },
            Input::ChangeMembership { reply, .. } if core.raft.storage_stalled() => {
                reply.send(Err(self.refused_for_space(core)))
            }
            Input::ChangeMembership { changes, reply } => {
                match core.raft.propose_membership(&changes) {
                    Ok(entry) => core.changes.push((entry, reply)),
                    Err(MembershipError::NotLeader { leader }) => {
                        reply.send(Err(NodeError::NotLeader { leader }))
                    }
                    Err(MembershipError::Transferring { to }) => {
                        reply.send(Err(NodeError::Transferring { to }))
                    }
                    Err(err) => reply.send(Err(NodeError::Membership(err))),
                }
            }
            Input::Tick => {
                core.raft.tick();
                self.after_ticks(core);
            }
            Input::OwedTicks => {}
            Input::Persisted { number } => core.executor.on_persisted(&mut core.raft, number),
            Input::SnapshotTaken(result) => core.raft.on_snapshot_taken(result),
            Input::SnapshotRead(read, result) => core.raft.on_snapshot_read(read, result),
            Input::SnapshotChunk(chunk, result) => core.raft.on_snapshot_chunk(chunk, result),
            Input::Status(reply) => {
                let shared = &self.shared;
                reply.send(Ok(NodeStatus {
                    raft: core.raft.status(),
                    applied_index: shared.applied.load(Ordering::Relaxed),
                    rejected_messages: shared.rejected.load(Ordering::Relaxed),
                    failure: shared.failure.lock().clone(),
                    storage_full: shared.storage_full.lock().clone(),
                    read_mode: self.read_mode,
                }));
            }
            Input::StorageStalled(stalled) => core.raft.set_storage_stalled(stalled),
            Input::Wake => core.raft.wake(),
            Input::Failed | Input::Shutdown => return false,
        }
        true
    }

    /// Why a proposal is refused while the log store is out of space: a leader hands leadership
    /// away (retry at the new leader) and takes no proposals meanwhile; a follower sends the
    /// proposer to its leader as ever.
    fn refused_for_space(&self, core: &Core<M>) -> NodeError {
        let raft = &core.raft;
        match (raft.is_leader(), raft.transfer_target()) {
            (false, _) => NodeError::NotLeader { leader: raft.leader() },
            (true, Some(to)) => NodeError::Transferring { to },
            (true, None) => NodeError::StorageFull {
                detail: self.shared.storage_full.lock().clone().unwrap_or_default(),
            },
        }
    }

    /// A worker failed: record why, and stop the core (from whichever thread gets to it).
    pub(super) fn fail(&self, what: String) {
        self.shared.fail(what);
        self.core.push(Input::Failed);
        self.core.call_worker();
    }

    /// The apply thread: applies what no inline runner did, restores and takes snapshots.
    fn apply_worker(&self) {
        self.apply.work(&mut |a, jobs| self.apply_round(a, jobs, false));
    }

    /// Applies committed entries and answers their waiters. `inline` rounds (on a thread that
    /// brought other work) hand restores, snapshots and the final stop to the apply thread.
    pub(super) fn apply_round(
        &self,
        a: &mut Applier<M>,
        jobs: &mut VecDeque<ApplyJob<M>>,
        inline: bool,
    ) -> Round {
        let started = inline.then(Instant::now);
        while let Some(job) = jobs.pop_front() {
            if started.is_some_and(|t| t.elapsed() > INLINE_APPLY_BUDGET) {
                jobs.push_front(job);
                return Round::HandOff;
            }
            if a.stopped {
                jobs.clear(); // Dropped requests answer Stopped.
                return Round::Continue;
            }
            match job {
                ApplyJob::Local(query) => query(&a.machine),
                ApplyJob::Stop if inline => {
                    jobs.push_front(ApplyJob::Stop);
                    return Round::HandOff;
                }
                ApplyJob::Stop => {
                    a.stopped = true;
                    if let Some(views) = &self.views {
                        views.close(); // The writer finishes its snapshot and ends.
                    }
                    for (_, (_, waiter)) in std::mem::take(&mut a.waiting) {
                        waiter.fail(NodeError::Stopped);
                    }
                    for query in std::mem::take(&mut a.reads).into_values().flatten() {
                        let _ = query(Err(NodeError::Stopped));
                    }
                }
                ApplyJob::Read { index, queries } => {
                    a.reads.entry(index).or_default().extend(queries);
                    self.run_reads(a);
                }
                ApplyJob::Register(waiters) => {
                    for (index, term, waiter) in waiters {
                        if index <= a.applied {
                            waiter
                                .fail(NodeError::Unknown("the entry's index was already applied"));
                        } else if let Some((_, earlier)) = a.waiting.insert(index, (term, waiter)) {
                            // A new leader's proposal took an index of ours that it overwrote.
                            earlier.fail(NodeError::Dropped);
                        }
                    }
                }
                ApplyJob::Apply { restore, entries, snapshot } => {
                    if inline && (restore.is_some() || snapshot.is_some()) {
                        jobs.push_front(ApplyJob::Apply { restore, entries, snapshot });
                        return Round::HandOff;
                    }
                    if let Some(meta) = restore {
                        if let Err(why) = self.restore(a, &meta) {
                            a.stopped = true;
                            self.fail(why);
                            continue;
                        }
                    }
                    self.apply_entries(a, entries);
                    self.run_reads(a);
                    if let Some(request) = snapshot {
                        self.take_snapshot(a, *request);
                    }
                }
            }
        }
        Round::Continue
    }

    /// Takes the snapshot the core asked for: from a view of the state, written by the snapshot
    /// writer thread while applying goes on, if the machine offers one; else here and now.
    fn take_snapshot(&self, a: &mut Applier<M>, request: SnapshotRequest) {
        let Some(store) = self.snapshots.as_deref() else {
            let missing = SnapshotError::NotFound {
                group: request.group,
                index: request.index,
                term: request.term,
            };
            self.core.push(Input::SnapshotTaken(Err(missing)));
            self.core.call_worker();
            return;
        };
        if let Some(views) = &self.views {
            if let Some(view) = a.machine.snapshot_view() {
                if views.push((view, request.clone())) {
                    views.call_worker();
                }
                return;
            }
        }
        let result = take_snapshot(&mut a.machine, store, &request);
        self.core.push(Input::SnapshotTaken(result));
        self.core.call_worker();
    }

    fn restore(&self, a: &mut Applier<M>, meta: &SnapshotMeta) -> Result<(), String> {
        let Some(store) = self.snapshots.as_deref() else {
            return Err("asked to restore a snapshot without a snapshot store".into());
        };
        restore_snapshot(&mut a.machine, store, meta, self.restore_chunk_bytes).map_err(|err| {
            format!("restoring snapshot at index {} term {}: {err}", meta.index, meta.term)
        })?;
        a.applied = meta.index;
        // Requests the snapshot covers may or may not be in it.
        let rest = a.waiting.split_off(&(meta.index + 1));
        for (_, (_, waiter)) in std::mem::replace(&mut a.waiting, rest) {
            waiter.fail(NodeError::Unknown("a snapshot replaced the state"));
        }
        Ok(())
    }

    /// Runs the confirmed reads whose index the machine has applied.
    fn run_reads(&self, a: &mut Applier<M>) {
        if a.reads.first_key_value().is_none_or(|(&index, _)| index > a.applied) {
            return;
        }
        let later = a.reads.split_off(&(a.applied + 1));
        let ready = std::mem::replace(&mut a.reads, later);
        let mut busy = Duration::ZERO;
        let mut count = 0;
        for query in ready.into_values().flatten() {
            busy += query(Ok(&a.machine));
            count += 1;
        }
        self.apply_cost.note(busy, count);
    }

    /// Applies entries and answers their waiters. Only the machine's own work is timed for
    /// the apply-cost estimate: answering a client may write to its socket, which says
    /// nothing about the machine.
    fn apply_entries(&self, a: &mut Applier<M>, entries: Vec<Entry>) {
        let mut busy = Duration::ZERO;
        let mut timed = 0;
        for entry in entries {
            let index = entry.index;
            let term = entry.term;
            let output = if is_read_barrier(entry.kind, &entry.data) {
                a.machine.apply(&Entry::noop(term, index));
                None
            } else if entry.kind == EntryKind::Normal {
                timed += 1;
                let started = Instant::now();
                let output = a.machine.apply(&entry);
                busy += started.elapsed();
                Some(output)
            } else {
                Some(a.machine.apply(&entry))
            };
            a.applied = index;
            if let Some((wanted, waiter)) = a.waiting.remove(&index) {
                if wanted != term {
                    waiter.fail(NodeError::Dropped);
                    continue;
                }
                match (waiter, output) {
                    (Waiter::Write(reply), Some(output)) => reply.send(Ok(output)),
                    (Waiter::Read(query), None) => {
                        query(Ok(&a.machine));
                    }
                    (waiter, _) => waiter.fail(NodeError::Dropped),
                }
            }
        }
        self.shared.applied.store(a.applied, Ordering::Relaxed);
        self.apply_cost.note(busy, timed);
    }

    /// The snapshot thread: reads and writes snapshot chunks, in order.
    fn snapshot_worker(&self) {
        if let Some(stage) = &self.snapshot_io {
            stage.work(&mut |io, jobs| self.snapshot_round(io, jobs));
        }
    }

    /// The snapshot writer thread: writes snapshots from state machine views.
    fn view_worker(&self) {
        if let Some(stage) = &self.views {
            stage.work(&mut |store, jobs| self.view_round(store, jobs));
        }
    }

    /// Queues an input and runs the core here if it is free.
    pub(crate) fn deliver(&self, input: Input<M>) {
        if self.core.push(input) {
            self.drive();
        }
    }

    /// Stops the node from a caller's thread: the core takes `Shutdown` (waiting for any
    /// runner to finish its round first), which closes every stage.
    pub(crate) fn shut_down(&self) {
        if self.core.push(Input::Shutdown) {
            self.run_core(Take::Wait);
        }
    }

    /// Whether the core has stopped (shut down or failed).
    pub(crate) fn stopped(&self) -> bool {
        self.core.is_closed()
    }
}

/// Answers every query of a read the core could not serve.
fn fail_reads<M: StateMachine>(queries: Vec<ReadFn<M>>, err: ReadError) {
    for query in queries {
        let _ = query(Err(read_error(err.clone())));
    }
}

/// The driver's error for a read the core could not serve.
fn read_error(err: ReadError) -> NodeError {
    match err {
        ReadError::NotLeader { leader } => NodeError::NotLeader { leader },
        _ => NodeError::ReadAbandoned,
    }
}

/// Answers the transfers that have finished: this node follows the target (done), or leads
/// without a transfer in progress or follows another node (abandoned).
fn settle_transfers<M: StateMachine>(core: &mut Core<M>) {
    let raft = &core.raft;
    let leader = raft.leader();
    let transferring = raft.transfer_target();
    for (to, reply) in std::mem::take(&mut core.transfers) {
        if leader == Some(to) {
            reply.send(Ok(()));
        } else if (raft.is_leader() && transferring != Some(to))
            || leader.is_some_and(|l| l != raft.id())
        {
            reply.send(Err(NodeError::TransferAbandoned { to }));
        } else {
            core.transfers.push((to, reply));
        }
    }
}

/// Answers the membership changes that have finished: their entry is committed in the log and
/// the configuration is simple again (done), or another entry took its place (dropped).
fn settle_changes<M: StateMachine>(core: &mut Core<M>) {
    let raft = &core.raft;
    for (entry, reply) in std::mem::take(&mut core.changes) {
        match raft.term_at(entry.index) {
            Some(term) if term != entry.term => reply.send(Err(NodeError::Dropped)),
            // Held (or compacted, so committed) and committed, and the group has left the
            // joint configuration (its own or a later change's).
            _ if raft.commit_index() >= entry.index
                && raft.membership_index() <= raft.commit_index()
                && !raft.membership().is_joint() =>
            {
                reply.send(Ok(raft.membership().clone()))
            }
            _ => core.changes.push((entry, reply)),
        }
    }
}

/// The core stopped: a stage it hands work to has closed.
struct Stopped;

/// A duty handed to another stage or thread: its result comes later, unless it could not be
/// handed over because the node is stopping.
fn later<T>(handed: bool) -> Result<Option<T>, Stopped> {
    if handed {
        Ok(None)
    } else {
        Err(Stopped)
    }
}

/// How the core stage carries out a Ready: messages into the round's outbox, writes to the
/// persist stage, state machine work to the apply stage, fetches inline (the log store's reads
/// of recent entries do not wait for a disk), snapshot chunks to the snapshot thread.
struct CoreIo<'a, M: StateMachine> {
    driver: &'a Driver<M>,
    outbox: &'a mut Vec<Message>,
    reads: &'a mut HashMap<ReadId, Vec<ReadFn<M>>>,
    /// Proposals not yet handed to the apply stage (see [`Core::registered`]).
    registered: &'a mut Vec<(Index, Term, Waiter<M>)>,
}

impl<M: StateMachine> ReadyHandler for CoreIo<'_, M> {
    type Error = Stopped;

    fn send(&mut self, messages: Vec<Message>) -> Result<(), Stopped> {
        self.outbox.extend(messages);
        Ok(())
    }

    fn membership_changed(&mut self, membership: &Membership) -> Result<(), Stopped> {
        self.driver.transport.membership_changed(self.driver.group, membership);
        Ok(())
    }

    fn release_reads(&mut self, reads: Vec<ReadState>) -> Result<(), Stopped> {
        for ReadState { id, result } in reads {
            let Some(queries) = self.reads.remove(&id) else { continue };
            match result {
                Ok(index) => {
                    if !self.driver.apply.push(ApplyJob::Read { index, queries }) {
                        return Err(Stopped);
                    }
                }
                Err(err) => fail_reads(queries, err),
            }
        }
        Ok(())
    }

    fn persist(
        &mut self,
        _raft: &Raft,
        write: PersistWrite,
    ) -> Result<Option<Vec<Message>>, Stopped> {
        if self.driver.persist_at_once(&write) {
            return Ok(Some(write.messages));
        }
        later(self.driver.persist.push(write))
    }

    fn apply(
        &mut self,
        work: ApplyWork,
    ) -> Result<Option<Result<SnapshotMeta, SnapshotError>>, Stopped> {
        let job = ApplyJob::Apply {
            restore: work.restore.map(Box::new),
            entries: work.entries,
            snapshot: work.snapshot.map(Box::new),
        };
        if self.registered.is_empty() {
            return later(self.driver.apply.push(job));
        }
        // The waiters first: this work may apply their entries.
        let register = ApplyJob::Register(std::mem::take(self.registered));
        later(self.driver.apply.push_all([register, job]))
    }

    fn fetch(
        &mut self,
        request: &FetchRequest,
    ) -> Result<Option<Result<Vec<Entry>, StorageError>>, Stopped> {
        Ok(Some(serve_fetch(self.driver.log.as_ref(), request)))
    }

    fn read_snapshot(
        &mut self,
        read: &SnapshotRead,
    ) -> Result<Option<Result<Bytes, SnapshotError>>, Stopped> {
        match &self.driver.snapshot_io {
            Some(stage) => {
                let queued = stage.push(SnapshotJob::Read(read.clone()));
                stage.call_worker();
                later(queued)
            }
            None => Ok(Some(Err(missing_snapshot(&read.meta)))),
        }
    }

    fn write_snapshot_chunk(
        &mut self,
        chunk: &SnapshotChunk,
    ) -> Result<Option<Result<(), SnapshotError>>, Stopped> {
        match &self.driver.snapshot_io {
            Some(stage) => {
                let queued = stage.push(SnapshotJob::Chunk(chunk.clone()));
                stage.call_worker();
                later(queued)
            }
            None => Ok(Some(Err(missing_snapshot(&chunk.meta)))),
        }
    }
}
