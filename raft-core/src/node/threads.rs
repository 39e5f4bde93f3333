//! The node driver's threads: the raft loop, persist, apply and snapshot workers.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::reply::Reply;
use super::{is_read_barrier, NodeError, NodeOptions, NodeStatus, Shared, Waiter};
use crate::error::{ProposeError, SnapshotError, StorageError};
use crate::message::Message;
use crate::raft::Raft;
use crate::ready::{Ready, SnapshotChunk, SnapshotRead, SnapshotRequest};
use crate::snapshot::{
    restore_snapshot, take_snapshot, SnapshotReader, SnapshotReceiver, SnapshotStore,
};
use crate::storage::{serve_fetch, LogStore, LogWrite, StateMachine};
use crate::transport::Transport;
use crate::types::{Entry, GroupId, HardState, Index, SnapshotMeta, Term};

/// What the raft loop reacts to.
pub(crate) enum Input<M: StateMachine> {
    /// A message from a peer.
    Message(Message),
    /// A client's command, or a read barrier (empty data).
    Propose { data: Bytes, waiter: Waiter<M> },
    /// The persist thread made every Ready up to `number` durable.
    Persisted { number: u64 },
    /// The apply thread took (or failed to take) the snapshot the core asked for.
    SnapshotTaken(Result<SnapshotMeta, SnapshotError>),
    /// The snapshot thread read a chunk for a follower.
    SnapshotRead(SnapshotRead, Result<Bytes, SnapshotError>),
    /// The snapshot thread wrote a received chunk.
    SnapshotChunk(SnapshotChunk, Result<(), SnapshotError>),
    /// A status request.
    Status(Reply<NodeStatus>),
    /// A worker failed; the node stops.
    Failed,
    /// Stop.
    Shutdown,
}

/// What the workers share with the raft loop.
pub(crate) struct Workers<M: StateMachine> {
    pub(crate) input: Sender<Input<M>>,
    pub(crate) group: GroupId,
    pub(crate) shared: Arc<Shared>,
    pub(crate) log: Arc<dyn LogStore>,
    pub(crate) snapshots: Option<Arc<dyn SnapshotStore>>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) restore_chunk_bytes: usize,
}

/// One Ready's writes, for the persist thread.
struct PersistJob {
    number: u64,
    group: GroupId,
    compact: Option<(Index, Term)>,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    /// Sent once this job and every earlier one are durable.
    messages: Vec<Message>,
}

/// Work for the apply thread, in the order the core produced it.
pub(crate) enum ApplyJob<M: StateMachine> {
    /// Run a query on the state machine as it is now (a local, possibly stale read).
    Local(Box<dyn FnOnce(&M) + Send>),
    /// The raft loop stopped: answer every waiting request with `Stopped` and exit.
    Stop,
    /// Answer each waiter when its entry `(index, term)` is applied. The proposals of one
    /// round of the raft loop come together, so the apply thread wakes once for them.
    Register(Vec<(Index, Term, Waiter<M>)>),
    /// One Ready's state machine duties.
    Apply { restore: Option<SnapshotMeta>, entries: Vec<Entry>, snapshot: Option<SnapshotRequest> },
}

/// Work for the snapshot thread.
enum SnapshotJob {
    Read(SnapshotRead),
    Chunk(SnapshotChunk),
}

/// The node's threads (the raft loop first) and a way to the apply thread for local reads.
pub(crate) type Spawned<M> = (Vec<JoinHandle<()>>, Sender<ApplyJob<M>>);

/// Starts the node's threads; the raft loop's handle comes first (it is joined first).
pub(crate) fn spawn<M>(
    raft: Raft,
    machine: M,
    applied: Index,
    options: &NodeOptions,
    input_rx: Receiver<Input<M>>,
    workers: Workers<M>,
) -> std::io::Result<Spawned<M>>
where
    M: StateMachine + Send + 'static,
    M::Output: Send + 'static,
{
    let id = raft.id();
    let group = raft.group();
    let name = |what: &str| format!("raft-{group}-{id}-{what}");
    let workers = Arc::new(workers);
    let (persist_tx, persist_rx) = mpsc::channel();
    let (apply_tx, apply_rx) = mpsc::channel();
    let mut threads = Vec::new();
    let w = workers.clone();
    let persist = std::thread::Builder::new()
        .name(name("persist"))
        .spawn(move || persist_loop(&w, persist_rx))?;
    let w = workers.clone();
    let apply = std::thread::Builder::new()
        .name(name("apply"))
        .spawn(move || apply_loop(&w, machine, applied, apply_rx))?;
    let snapshot_tx = match workers.snapshots.clone() {
        Some(store) => {
            let (tx, rx) = mpsc::channel();
            let w = workers.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(name("snapshot"))
                    .spawn(move || snapshot_loop(&w, store, rx))?,
            );
            Some(tx)
        }
        None => None,
    };
    let mut raft_loop = RaftLoop {
        raft,
        workers: workers.clone(),
        persist_tx,
        apply_tx: apply_tx.clone(),
        snapshot_tx,
        tick: options.tick.max(Duration::from_micros(100)),
        max_inputs: options.max_inputs_per_round.max(1),
        persist_sent: 0,
        persist_done: 0,
        registered: Vec::new(),
    };
    let main =
        std::thread::Builder::new().name(name("loop")).spawn(move || raft_loop.run(input_rx))?;
    let mut all = vec![main, persist, apply];
    all.append(&mut threads);
    Ok((all, apply_tx))
}

/// The raft loop's state.
struct RaftLoop<M: StateMachine> {
    raft: Raft,
    workers: Arc<Workers<M>>,
    persist_tx: Sender<PersistJob>,
    apply_tx: Sender<ApplyJob<M>>,
    snapshot_tx: Option<Sender<SnapshotJob>>,
    tick: Duration,
    max_inputs: usize,
    /// The number of the last Ready handed to the persist thread.
    persist_sent: u64,
    /// The number of the last Ready the persist thread reported durable.
    persist_done: u64,
    /// Proposals of this round, for the apply thread (sent before this round's Readies).
    registered: Vec<(Index, Term, Waiter<M>)>,
}

impl<M: StateMachine> RaftLoop<M> {
    fn run(&mut self, input: Receiver<Input<M>>) {
        let mut next_tick = Instant::now() + self.tick;
        'run: loop {
            let now = Instant::now();
            let first = if now >= next_tick {
                match input.try_recv() {
                    Ok(i) => Some(i),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match input.recv_timeout(next_tick - now) {
                    Ok(i) => Some(i),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            if let Some(first) = first {
                if !self.handle(first) {
                    break;
                }
                for _ in 1..self.max_inputs {
                    match input.try_recv() {
                        Ok(i) => {
                            if !self.handle(i) {
                                break 'run;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            if !self.registered.is_empty() {
                let job = ApplyJob::Register(std::mem::take(&mut self.registered));
                if self.apply_tx.send(job).is_err() {
                    break;
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raft.tick();
                next_tick += self.tick;
                if next_tick <= now {
                    // Fell behind (a stalled machine): tick once, do not burst.
                    next_tick = now + self.tick;
                }
            }
            while self.raft.has_ready() {
                let ready = self.raft.ready();
                if !self.carry_out(ready) {
                    break 'run;
                }
            }
            self.workers.shared.publish(&self.raft);
        }
        let _ = self.apply_tx.send(ApplyJob::Stop);
        tracing::debug!(id = self.raft.id(), group = self.raft.group(), "raft loop stopped");
    }

    /// Handles one input; false means stop.
    fn handle(&mut self, input: Input<M>) -> bool {
        match input {
            Input::Message(msg) => {
                if let Err(err) = self.raft.step(msg) {
                    self.workers.shared.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(id = self.raft.id(), %err, "message refused");
                }
            }
            Input::Propose { data, waiter } => match self.raft.propose(data) {
                Ok(at) => self.registered.push((at.index, at.term, waiter)),
                Err(ProposeError::NotLeader { leader }) => {
                    waiter.fail(NodeError::NotLeader { leader })
                }
                Err(ProposeError::Backpressure { uncommitted_bytes, limit_bytes }) => {
                    waiter.fail(NodeError::Busy { uncommitted_bytes, limit_bytes })
                }
            },
            Input::Persisted { number } => {
                self.persist_done = self.persist_done.max(number);
                self.raft.on_persisted(number);
            }
            Input::SnapshotTaken(result) => self.raft.on_snapshot_taken(result),
            Input::SnapshotRead(read, result) => self.raft.on_snapshot_read(read, result),
            Input::SnapshotChunk(chunk, result) => self.raft.on_snapshot_chunk(chunk, result),
            Input::Status(reply) => {
                let shared = &self.workers.shared;
                reply.send(Ok(NodeStatus {
                    raft: self.raft.status(),
                    applied_index: shared.applied.load(Ordering::Relaxed),
                    rejected_messages: shared.rejected.load(Ordering::Relaxed),
                    failure: shared.failure.lock().clone(),
                }));
            }
            Input::Failed | Input::Shutdown => return false,
        }
        true
    }

    /// Carries out one Ready (see [`crate::ready`] for the order); false means stop.
    fn carry_out(&mut self, ready: Ready) -> bool {
        let Ready {
            number,
            group,
            hard_state,
            entries,
            messages,
            persisted_messages,
            committed_entries,
            fetches,
            compact,
            restore_snapshot,
            snapshot_request,
            snapshot_reads,
            snapshot_chunks,
        } = ready;
        let transport = &self.workers.transport;
        if !messages.is_empty() {
            transport.send_all(messages);
        }
        let must_persist = compact.is_some() || hard_state.is_some() || !entries.is_empty();
        let writes_pending = self.persist_sent > self.persist_done;
        if must_persist || (!persisted_messages.is_empty() && writes_pending) {
            // Persisted messages wait behind every write not yet durable, this one included.
            let job = PersistJob {
                number,
                group,
                compact,
                hard_state,
                entries,
                messages: persisted_messages,
            };
            if self.persist_tx.send(job).is_err() {
                return false;
            }
            self.persist_sent = number;
        } else if !persisted_messages.is_empty() {
            transport.send_all(persisted_messages);
        }
        if restore_snapshot.is_some() || !committed_entries.is_empty() || snapshot_request.is_some()
        {
            let job = ApplyJob::Apply {
                restore: restore_snapshot,
                entries: committed_entries,
                snapshot: snapshot_request,
            };
            if self.apply_tx.send(job).is_err() {
                return false;
            }
        }
        for fetch in fetches {
            let result = serve_fetch(self.workers.log.as_ref(), &fetch);
            self.raft.on_fetched(fetch, result);
        }
        for read in snapshot_reads {
            match &self.snapshot_tx {
                Some(tx) => {
                    if tx.send(SnapshotJob::Read(read)).is_err() {
                        return false;
                    }
                }
                None => {
                    let missing = missing_snapshot(&read.meta);
                    self.raft.on_snapshot_read(read, Err(missing));
                }
            }
        }
        for chunk in snapshot_chunks {
            match &self.snapshot_tx {
                Some(tx) => {
                    if tx.send(SnapshotJob::Chunk(chunk)).is_err() {
                        return false;
                    }
                }
                None => {
                    let missing = missing_snapshot(&chunk.meta);
                    self.raft.on_snapshot_chunk(chunk, Err(missing));
                }
            }
        }
        true
    }
}

fn missing_snapshot(meta: &SnapshotMeta) -> SnapshotError {
    SnapshotError::NotFound { group: meta.group, index: meta.index, term: meta.term }
}

/// Writes every queued job as one ordered batch, syncs once, then releases the jobs' messages.
///
/// A hard state that only moves the commit index is not worth a sync of its own (the commit
/// index is persisted only to spare a restarted node some waiting; losing it is safe): it is
/// deferred and written with the next write that must be durable anyway, or at shutdown. That
/// halves the syncs per committed write, since every commit changes the hard state.
fn persist_loop<M: StateMachine>(w: &Workers<M>, jobs: Receiver<PersistJob>) {
    const MAX_JOBS: usize = 4096;
    let mut round = Vec::new();
    let mut written: Option<HardState> = None;
    let mut deferred: Option<HardState> = None;
    let fail = |err: StorageError| {
        // Nothing of this round is acknowledged: its messages are never sent.
        w.shared.fail(format!("log store: {err}"));
        let _ = w.input.send(Input::Failed);
    };
    while let Ok(first) = jobs.recv() {
        round.push(first);
        while round.len() < MAX_JOBS {
            match jobs.try_recv() {
                Ok(job) => round.push(job),
                Err(_) => break,
            }
        }
        for job in &mut round {
            let Some(hs) = job.hard_state else {
                if deferred.is_some() && (!job.entries.is_empty() || job.compact.is_some()) {
                    job.hard_state = deferred.take();
                    written = job.hard_state;
                }
                continue;
            };
            let commit_only = written.is_some_and(|w| w.term == hs.term && w.vote == hs.vote);
            if commit_only && job.entries.is_empty() && job.compact.is_none() {
                deferred = job.hard_state.take();
            } else {
                deferred = None; // This one is newer.
                written = Some(hs);
            }
        }
        if let Err(err) = persist(w.log.as_ref(), &round) {
            fail(err);
            return;
        }
        let mut last = 0;
        for job in round.drain(..) {
            last = job.number;
            if !job.messages.is_empty() {
                w.transport.send_all(job.messages);
            }
        }
        let _ = w.input.send(Input::Persisted { number: last });
    }
    // Shutting down: write the deferred commit index too.
    if let Some(hs) = deferred {
        let group = w.group;
        let job = PersistJob {
            number: 0,
            group,
            compact: None,
            hard_state: Some(hs),
            entries: Vec::new(),
            messages: Vec::new(),
        };
        if let Err(err) = persist(w.log.as_ref(), &[job]) {
            fail(err);
        }
    }
}

/// One round of the persist thread: compactions and writes in Ready order, consecutive writes
/// in one store call, then one sync covering all of them.
fn persist(log: &dyn LogStore, round: &[PersistJob]) -> Result<(), StorageError> {
    let mut last = None;
    let mut batch: Vec<LogWrite<'_>> = Vec::new();
    for job in round {
        if let Some((index, term)) = job.compact {
            if !batch.is_empty() {
                log.write(&batch)?;
                batch.clear();
            }
            last = Some(log.compact(job.group, index, term)?);
        }
        if job.hard_state.is_some() || !job.entries.is_empty() {
            batch.push(LogWrite {
                group: job.group,
                hard_state: job.hard_state,
                entries: &job.entries,
            });
        }
    }
    if !batch.is_empty() {
        last = Some(log.write(&batch)?);
    }
    if let Some(lsn) = last {
        log.sync(lsn)?;
    }
    Ok(())
}

/// Applies committed entries, answers waiting clients, restores and takes snapshots.
fn apply_loop<M>(w: &Workers<M>, mut machine: M, mut applied: Index, jobs: Receiver<ApplyJob<M>>)
where
    M: StateMachine,
{
    let mut waiting: BTreeMap<Index, (Term, Waiter<M>)> = BTreeMap::new();
    while let Ok(job) = jobs.recv() {
        match job {
            ApplyJob::Local(query) => query(&machine),
            ApplyJob::Stop => return,
            ApplyJob::Register(waiters) => {
                for (index, term, waiter) in waiters {
                    if index <= applied {
                        waiter.fail(NodeError::Unknown("the entry's index was already applied"));
                    } else if let Some((_, earlier)) = waiting.insert(index, (term, waiter)) {
                        // A new leader's proposal took an index of ours that it overwrote.
                        earlier.fail(NodeError::Dropped);
                    }
                }
            }
            ApplyJob::Apply { restore, entries, snapshot } => {
                if let Some(meta) = restore {
                    let Some(store) = w.snapshots.as_deref() else {
                        w.shared
                            .fail("asked to restore a snapshot without a snapshot store".into());
                        let _ = w.input.send(Input::Failed);
                        return;
                    };
                    if let Err(err) =
                        restore_snapshot(&mut machine, store, &meta, w.restore_chunk_bytes)
                    {
                        w.shared.fail(format!(
                            "restoring snapshot at index {} term {}: {err}",
                            meta.index, meta.term
                        ));
                        let _ = w.input.send(Input::Failed);
                        return;
                    }
                    applied = meta.index;
                    // Requests the snapshot covers may or may not be in it.
                    let rest = waiting.split_off(&(meta.index + 1));
                    for (_, (_, waiter)) in std::mem::replace(&mut waiting, rest) {
                        waiter.fail(NodeError::Unknown("a snapshot replaced the state"));
                    }
                }
                for entry in entries {
                    let index = entry.index;
                    let term = entry.term;
                    let output = if is_read_barrier(entry.kind, &entry.data) {
                        machine.apply(&Entry::noop(term, index));
                        None
                    } else {
                        Some(machine.apply(&entry))
                    };
                    applied = index;
                    if let Some((wanted, waiter)) = waiting.remove(&index) {
                        if wanted != term {
                            waiter.fail(NodeError::Dropped);
                            continue;
                        }
                        match (waiter, output) {
                            (Waiter::Write(reply), Some(output)) => reply.send(Ok(output)),
                            (Waiter::Read(query), None) => query(Ok(&machine)),
                            (waiter, _) => waiter.fail(NodeError::Dropped),
                        }
                    }
                }
                w.shared.applied.store(applied, Ordering::Relaxed);
                if let Some(request) = snapshot {
                    let result = match w.snapshots.as_deref() {
                        Some(store) => take_snapshot(&mut machine, store, &request),
                        None => Err(SnapshotError::NotFound {
                            group: request.group,
                            index: request.index,
                            term: request.term,
                        }),
                    };
                    let _ = w.input.send(Input::SnapshotTaken(result));
                }
            }
        }
    }
}

/// Reads chunks for followers and writes received chunks, off the raft loop.
fn snapshot_loop<M: StateMachine>(
    w: &Workers<M>,
    store: Arc<dyn SnapshotStore>,
    jobs: Receiver<SnapshotJob>,
) {
    let mut receiver = SnapshotReceiver::new();
    // The snapshot being sent stays open between chunks (and is protected from retention).
    let mut sending: Option<Box<dyn SnapshotReader>> = None;
    while let Ok(job) = jobs.recv() {
        match job {
            SnapshotJob::Read(read) => {
                let reuse = sending.as_ref().is_some_and(|r| r.meta().same_data(&read.meta));
                if !reuse {
                    sending = None;
                    match store.open_for_send(&read.meta) {
                        Ok(reader) => sending = Some(reader),
                        Err(err) => {
                            let _ = w.input.send(Input::SnapshotRead(read, Err(err)));
                            continue;
                        }
                    }
                }
                let result = match sending.as_mut() {
                    Some(reader) => reader.read_at(read.offset, read.max_bytes),
                    None => Err(missing_snapshot(&read.meta)),
                };
                let finished = result
                    .as_ref()
                    .map_or(true, |data| read.offset + data.len() as u64 >= read.meta.size);
                if finished {
                    sending = None;
                }
                let _ = w.input.send(Input::SnapshotRead(read, result));
            }
            SnapshotJob::Chunk(chunk) => {
                let result = receiver.write(store.as_ref(), &chunk);
                let _ = w.input.send(Input::SnapshotChunk(chunk, result));
            }
        }
    }
}
