//! The snapshot stages: reading chunks of a snapshot for a follower and writing chunks received
//! from a leader (one stage, in order), and writing snapshots from a state machine's view while
//! applying goes on (another). Both do slow disk work, so neither runs on a thread that
//! brought other work: each has its own worker.

use std::collections::VecDeque;
use std::sync::Arc;

use super::stage::Round;
use super::threads::{Driver, Input};
use crate::error::SnapshotError;
use crate::ready::{SnapshotChunk, SnapshotRead, SnapshotRequest};
use crate::snapshot::{take_snapshot_view, SnapshotReader, SnapshotReceiver, SnapshotStore};
use crate::storage::{SnapshotView, StateMachine};
use crate::types::SnapshotMeta;

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
