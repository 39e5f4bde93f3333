//! The snapshot stages: reading chunks of a snapshot for a follower and writing chunks received
//! from a leader (one stage, in order), and writing snapshots from a state machine's view while
//! applying goes on (another). Both do slow disk work, so neither runs on a thread that
//! brought other work: each has its own worker.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::stage::Round;
use super::threads::{Driver, Input};
use crate::error::SnapshotError;
use crate::ready::{SnapshotChunk, SnapshotRead, SnapshotRequest};
use crate::snapshot::{take_snapshot_view, SnapshotReader, SnapshotReceiver, SnapshotStore};
use crate::storage::{SnapshotView, StateMachine};
use crate::types::{GroupId, NodeId, SnapshotMeta};

/// The snapshot transfers a runtime's nodes may send at once, across all their groups
/// ([`RuntimeOptions::snapshot_sends`](super::RuntimeOptions::snapshot_sends)). A transfer holds
/// a slot from its first chunk read until its last, or until no chunk of it was read for
/// [`TRANSFER_IDLE`] (its follower went away). A chunk read of a transfer with no slot is not
/// done: the leader asks again after its resend timeout, so the transfer waits its turn while
/// the group's heartbeats and appends go on.
pub(crate) struct TransferBudget {
    max: usize,
    active: Mutex<HashMap<(GroupId, NodeId), Instant>>,
    peak: AtomicUsize,
    deferred: AtomicU64,
}

/// How long a transfer keeps its slot with no chunk read.
pub(crate) const TRANSFER_IDLE: Duration = Duration::from_secs(5);

/// What a runtime's snapshot-transfer budget has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotSendStats {
    /// Transfers holding a slot now.
    pub active: usize,
    /// The most that ever held one at once.
    pub peak: usize,
    /// Chunk reads put off because every slot was taken.
    pub deferred: u64,
}

impl TransferBudget {
    pub(crate) fn new(max: usize) -> TransferBudget {
        TransferBudget {
            max: max.max(1),
            active: Mutex::new(HashMap::new()),
            peak: AtomicUsize::new(0),
            deferred: AtomicU64::new(0),
        }
    }

    /// Whether the transfer of `group` to `to` may read a chunk now (taking a slot if it has
    /// none and one is free).
    fn admit(&self, key: (GroupId, NodeId), now: Instant) -> bool {
        let mut active = self.active.lock();
        if let Some(last) = active.get_mut(&key) {
            *last = now;
            return true;
        }
        if active.len() >= self.max {
            active.retain(|_, last| now.saturating_duration_since(*last) < TRANSFER_IDLE);
        }
        if active.len() >= self.max {
            self.deferred.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        active.insert(key, now);
        self.peak.fetch_max(active.len(), Ordering::Relaxed);
        true
    }

    /// The transfer sent its last chunk (or failed): its slot is free.
    fn finish(&self, key: (GroupId, NodeId)) {
        self.active.lock().remove(&key);
    }

    pub(crate) fn stats(&self) -> SnapshotSendStats {
        SnapshotSendStats {
            active: self.active.lock().len(),
            peak: self.peak.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
        }
    }
}

/// Work for the snapshot stage.
pub(crate) enum SnapshotJob {
    /// Read a chunk to send to a follower.
    Read(SnapshotRead),
    /// Write a chunk received from the leader.
    Chunk(SnapshotChunk),
}

/// A snapshot to write from a state machine's view.
pub(crate) type ViewJob = (Box<dyn SnapshotView>, SnapshotRequest);

/// The snapshot stage's state.
pub(crate) struct SnapshotIo {
    store: Arc<dyn SnapshotStore>,
    receiver: SnapshotReceiver,
    /// The snapshot being sent stays open between chunks (and is protected from retention).
    sending: Option<Box<dyn SnapshotReader>>,
}

impl SnapshotIo {
    pub(crate) fn new(store: Arc<dyn SnapshotStore>) -> SnapshotIo {
        SnapshotIo { store, receiver: SnapshotReceiver::new(), sending: None }
    }
}

/// What a missing snapshot store answers.
pub(crate) fn missing_snapshot(meta: &SnapshotMeta) -> SnapshotError {
    SnapshotError::NotFound { group: meta.group, index: meta.index, term: meta.term }
}

impl<M: StateMachine> Driver<M> {
    /// Reads and writes the queued chunks, in order, and hands each result to the core.
    pub(super) fn snapshot_round(
        &self,
        io: &mut SnapshotIo,
        jobs: &mut VecDeque<SnapshotJob>,
    ) -> Round {
        while let Some(job) = jobs.pop_front() {
            let input = match job {
                SnapshotJob::Read(read) => {
                    let key = (read.meta.group, read.to);
                    let budget = self.pool.as_ref().map(|p| &p.transfers);
                    if budget.is_some_and(|b| !b.admit(key, Instant::now())) {
                        continue; // Its turn comes; the leader asks again.
                    }
                    let reuse = io.sending.as_ref().is_some_and(|r| r.meta().same_data(&read.meta));
                    if !reuse {
                        io.sending = None;
                        match io.store.open_for_send(&read.meta) {
                            Ok(reader) => io.sending = Some(reader),
                            Err(err) => {
                                self.deliver(Input::SnapshotRead(read, Err(err)));
                                continue;
                            }
                        }
                    }
                    let result = match io.sending.as_mut() {
                        Some(reader) => reader.read_at(read.offset, read.max_bytes),
                        None => Err(missing_snapshot(&read.meta)),
                    };
                    let finished = result
                        .as_ref()
                        .map_or(true, |data| read.offset + data.len() as u64 >= read.meta.size);
                    if finished {
                        io.sending = None;
                        if let Some(b) = budget {
                            b.finish(key);
                        }
                    }
                    Input::SnapshotRead(read, result)
                }
                SnapshotJob::Chunk(chunk) => {
                    let result = io.receiver.write(io.store.as_ref(), &chunk);
                    Input::SnapshotChunk(chunk, result)
                }
            };
            self.deliver(input);
        }
        Round::Continue
    }

    /// Writes snapshots from state machine views, one after another.
    pub(super) fn view_round(
        &self,
        store: &mut Arc<dyn SnapshotStore>,
        jobs: &mut VecDeque<ViewJob>,
    ) -> Round {
        while let Some((view, request)) = jobs.pop_front() {
            let result = take_snapshot_view(view, store.as_ref(), &request);
            self.deliver(Input::SnapshotTaken(result));
        }
        Round::Continue
    }
}
