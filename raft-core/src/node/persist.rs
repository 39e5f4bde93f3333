//! The persist stage: writes the core's Readies to the log store in order, syncs, then releases
//! the messages that promised durability.
//!
//! A store out of space ([`StorageError::Full`]) did nothing, so the stage keeps the writes and
//! retries them on its own clock (10 ms, doubling to 500 ms) until space is freed; meanwhile
//! nothing behind them is acknowledged, and the core knows
//! ([`Raft::set_storage_stalled`](crate::Raft::set_storage_stalled)): it takes no proposals and
//! hands leadership away. Any other failure stops the node for good.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::shared_sync::SyncWait;
use super::stage::{Called, Round, Take};
use super::threads::{Driver, Input};
use crate::error::StorageError;
use crate::execute::{LogWriter, PersistWrite};
use crate::storage::{Lsn, StateMachine};

/// Most Readies' writes in one store call and one sync.
const PERSIST_JOBS_MAX: usize = 4096;
/// The first pause before writes refused for lack of space are tried again.
const FULL_RETRY_FIRST: Duration = Duration::from_millis(10);
/// The longest pause between retries.
const FULL_RETRY_MAX: Duration = Duration::from_millis(500);

/// The persist stage's state.
pub(crate) struct Persister {
    /// The writes being made durable.
    round: Vec<PersistWrite>,
    /// Writes the round, holding back hard states that only move the commit index.
    writer: LogWriter,
    /// A write or sync failed: nothing more is written or acknowledged.
    failed: bool,
    /// The store refused the round for lack of space: the pause before the next try.
    full_backoff: Option<Duration>,
    /// On a runtime: the round is written and waits for the runtime's shared sync to reach
    /// this position (tried once [`Driver::sync_tried`] reaches it).
    awaiting: Option<Lsn>,
}

impl Persister {
    pub(crate) fn new() -> Persister {
        Persister {
            round: Vec::new(),
            writer: LogWriter::new(),
            failed: false,
            full_backoff: None,
            awaiting: None,
        }
    }

    /// Gives back what a burst's round grew (its node fell asleep).
    pub(crate) fn shrink(&mut self) {
        self.round.shrink_to_fit();
    }
}

/// When the persist stage retries writes a full store refused: read after every round of the
/// core and of the stage, and set only while the store is full, so the reads look at a flag
/// first instead of taking a lock.
#[derive(Default)]
pub(crate) struct RetryAt {
    at: parking_lot::Mutex<Option<Instant>>,
    set: std::sync::atomic::AtomicBool,
}

impl RetryAt {
    /// When the next retry is due, if the stage is stalled.
    pub(crate) fn get(&self) -> Option<Instant> {
        if !self.set.load(Ordering::Acquire) {
            return None;
        }
        *self.at.lock()
    }

    /// Sets (or clears) the retry.
    pub(crate) fn set(&self, at: Option<Instant>) {
        let mut slot = self.at.lock();
        *slot = at;
        self.set.store(at.is_some(), Ordering::Release);
    }
}

impl<M: StateMachine> Driver<M> {
    /// The persist thread: runs the writes handed to it, retries them on its clock while the
    /// store is full; at shutdown, once every queued write is done, writes the commit index it
    /// held back.
    pub(super) fn persist_worker(&self) {
        loop {
            let retry = self.persist_retry.get();
            if self.persist.wait_called(retry) == Called::Closed {
                break;
            }
            self.run_persist();
        }
        self.flush_held_commit();
    }

    /// Runs the persist stage until its queue is empty (or it stalls on a full store).
    pub(super) fn run_persist(&self) {
        self.persist.run(Take::Wait, &mut |p, jobs| self.persist_round(p, jobs));
    }

    /// On a runtime, once the shared sync was tried up to `lsn` (for the round waiting on it):
    /// finishes that round (its jobs left the queue, so no queued job would run it), then runs
    /// what queued meanwhile.
    pub(super) fn synced(&self, lsn: Lsn) {
        self.sync_tried.fetch_max(lsn.0, Ordering::AcqRel);
        self.finish_synced();
    }

    /// Finishes the round waiting for a sync if it may go on, then runs what queued meanwhile.
    pub(super) fn finish_synced(&self) {
        self.persist.with_state(|p| {
            if p.awaiting.is_some() {
                self.persist_round(p, &mut VecDeque::new());
            }
        });
        // The round's release may have queued the next writes: written here too (their sync
        // goes back to the sync thread), not on an I/O thread woken for them.
        if !self.persist.is_idle()
            && !self
                .persist
                .run(Take::Try { max_rounds: 1 }, &mut |p, jobs| self.persist_round(p, jobs))
        {
            self.persist.call_worker();
        }
    }

    /// At shutdown, once every queued write is done: writes the commit index held back.
    pub(super) fn flush_held_commit(&self) {
        let failure = self.persist.with_state(|p| {
            if p.failed {
                return Ok(());
            }
            p.writer.flush(self.log.as_ref(), self.group)
        });
        if let Err(err) = failure {
            self.shared.fail(format!("log store: {err}"));
        }
    }

    /// A write the store need not see (no entries, compaction or repair; no hard state, or one
    /// that only moves the commit index), handed while the stage holds no earlier write: held
    /// back by the stage's writer here, on the core's thread, and acknowledged in the same
    /// round. So a leader's commit, or a follower's, costs no persist round and no core round
    /// for its `Persisted`. False when it must go through the stage.
    ///
    /// The write's messages, sent at once when it returns true, promise only what earlier
    /// writes made durable: the stage has none queued, none written and waiting for a sync,
    /// and none being run (its state is held), so every earlier write is durable and its
    /// messages were sent.
    pub(super) fn persist_at_once(&self, write: &PersistWrite) -> bool {
        if !write.entries.is_empty() || write.compact.is_some() || write.repaired {
            return false;
        }
        let held = self.persist.try_with_state(|p| {
            let quiet = !p.failed
                && p.awaiting.is_none()
                && p.round.is_empty()
                && p.full_backoff.is_none()
                && self.persist.is_idle()
                && !self.persist.is_closed();
            quiet && p.writer.hold_back(write.hard_state)
        });
        held == Some(true)
    }

    /// Writes the queued jobs as one ordered batch (see [`LogWriter`]), syncs once, then
    /// releases the jobs' messages, reports them durable and runs the core (here, if it is free).
    pub(super) fn persist_round(
        &self,
        p: &mut Persister,
        jobs: &mut VecDeque<PersistWrite>,
    ) -> Round {
        if p.failed {
            jobs.clear(); // Never written, never acknowledged.
            return Round::Continue;
        }
        let closing = self.persist.is_closed();
        let retry = self.persist_retry.get();
        if retry.is_some_and(|at| Instant::now() < at) && !closing {
            return Round::Stall; // Not time to try again yet.
        }
        let log = self.log.as_ref();
        let written = match p.awaiting.take() {
            // The round was written and the shared sync asked for: once it was tried, the
            // round is durable, or this stage syncs itself (and meets the sync's error).
            Some(lsn) => {
                let tried = self.sync_tried.load(Ordering::Acquire) >= lsn.0;
                if !tried && !closing && log.durable_lsn() < lsn {
                    p.awaiting = Some(lsn);
                    return Round::Stall; // Called back by the sync thread.
                }
                // Cheap once durable; otherwise it syncs, or meets the error.
                log.sync(lsn)
            }
            None => {
                let take = jobs.len().min(PERSIST_JOBS_MAX);
                p.round.extend(jobs.drain(..take));
                match p.writer.write(log, &mut p.round) {
                    Ok(Some(lsn)) if log.durable_lsn() < lsn => {
                        if let (Some(pool), false) = (&self.pool, closing) {
                            // Let the I/O thread go; the sync thread calls the stage back.
                            if let Some(me) = self.me.get() {
                                pool.sync.request(SyncWait { node: me.clone(), lsn });
                            }
                            p.awaiting = Some(lsn);
                            return Round::Stall;
                        }
                        log.sync(lsn)
                    }
                    Ok(Some(lsn)) => log.sync(lsn),
                    Ok(None) => Ok(()),
                    Err(err) => Err(err),
                }
            }
        };
        match written {
            Ok(()) => {}
            Err(StorageError::Full(why)) if !closing => {
                // Nothing of the round was done: back to the front of the queue, in order, to
                // be tried again after a pause.
                for write in p.round.drain(..).rev() {
                    jobs.push_front(write);
                }
                self.persist_full(p, why);
                return Round::Stall;
            }
            Err(err) => {
                // Nothing of this round is acknowledged: its messages are never sent.
                p.failed = true;
                p.round.clear();
                jobs.clear();
                if closing && matches!(err, StorageError::Full(_)) {
                    tracing::warn!(group = self.group, %err, "shut down with writes the full store refused; none was acknowledged");
                } else {
                    self.fail(format!("log store: {err}"));
                }
                return Round::Continue;
            }
        }
        if p.full_backoff.take().is_some() {
            self.persist_retry.set(None);
            *self.shared.storage_full.lock() = None;
            tracing::info!(group = self.group, "log store takes writes again");
            self.core.push(Input::StorageStalled(false));
        }
        let mut last = 0;
        let mut messages = Vec::new();
        for job in p.round.drain(..) {
            last = job.number;
            messages.extend(job.messages);
        }
        if !messages.is_empty() {
            crate::outbox::send_all(&self.transport, messages);
        }
        // Recorded for the core's next round; a round of its own only when the core said
        // something waits for it (see `publish_held_back`, which closes the race with a round
        // ending meanwhile).
        self.shared.durable_ready.fetch_max(last, Ordering::SeqCst);
        if self.shared.acks_matter.load(Ordering::SeqCst)
            && self.core.push(Input::Persisted { number: last })
        {
            // Not `drive`: this thread holds the persist stage, so the writes the core queues
            // now are run by its caller (the stage's next round, or `finish_synced`), not
            // handed to another thread because the stage was busy.
            self.run_core(Take::Try { max_rounds: super::threads::CORE_ROUNDS_INLINE });
            self.follow_up_apply();
        }
        Round::Continue
    }

    /// The store refused the round for lack of space: schedules the next try, and on the first
    /// refusal tells the core and the node's callers.
    fn persist_full(&self, p: &mut Persister, why: String) {
        let pause = match p.full_backoff {
            None => {
                tracing::warn!(group = self.group, %why, "log store is out of space; holding writes and retrying until space is freed");
                *self.shared.storage_full.lock() = Some(why);
                self.core.push(Input::StorageStalled(true));
                self.core.call_worker();
                FULL_RETRY_FIRST
            }
            Some(d) => (d * 2).min(FULL_RETRY_MAX),
        };
        p.full_backoff = Some(pause);
        self.persist_retry.set(Some(Instant::now() + pause));
    }
}
