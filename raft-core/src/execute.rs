//! The contract of [`crate::ready`] as code: [`Executor`] carries out a core's Readies through a
//! caller's [`ReadyHandler`], and [`LogWriter`] writes the persisted part to a [`LogStore`].
//!
//! Every runtime of raft-core (the node driver, the simulator, the benchmarks, a user's own
//! loop) carries out Readies through these two, so the simulator checks the very code users run.
//! What differs between runtimes is only *how* each duty is done (a thread, a simulated disk, a
//! direct call), which is what the handler supplies; *which* duty comes when, and what waits
//! for what, is decided here once.
//!
//! ```
//! use raft_core::execute::{ApplyWork, Executor, LogWriter, PersistWrite, ReadyHandler};
//! use raft_core::ready::{FetchRequest, ReadState, SnapshotChunk, SnapshotRead};
//! use raft_core::storage::serve_fetch;
//! use raft_core::{Config, Entry, InitialState, LogStore, MemLogStore, Message, Raft,
//!     SnapshotError, SnapshotMeta, StorageError};
//!
//! /// Writes and syncs on the spot, and collects what it applies.
//! struct Inline { store: MemLogStore, writer: LogWriter, applied: Vec<Entry> }
//!
//! impl ReadyHandler for Inline {
//!     type Error = StorageError;
//!     fn send(&mut self, _messages: Vec<Message>) -> Result<(), StorageError> {
//!         Ok(()) // A one-node group has nobody to talk to.
//!     }
//!     fn release_reads(&mut self, _reads: Vec<ReadState>) -> Result<(), StorageError> {
//!         Ok(()) // This example asks for no reads.
//!     }
//!     fn persist(&mut self, _raft: &Raft, mut write: PersistWrite)
//!         -> Result<Option<Vec<Message>>, StorageError> {
//!         if let Some(lsn) = self.writer.write(&self.store, std::slice::from_mut(&mut write))? {
//!             self.store.sync(lsn)?;
//!         }
//!         Ok(Some(write.messages)) // Durable now: the executor sends them and acknowledges.
//!     }
//!     fn apply(&mut self, work: ApplyWork)
//!         -> Result<Option<Result<SnapshotMeta, SnapshotError>>, StorageError> {
//!         self.applied.extend(work.entries);
//!         Ok(None)
//!     }
//!     fn fetch(&mut self, request: &FetchRequest)
//!         -> Result<Option<Result<Vec<Entry>, StorageError>>, StorageError> {
//!         Ok(Some(serve_fetch(&self.store, request)))
//!     }
//!     fn read_snapshot(&mut self, read: &SnapshotRead)
//!         -> Result<Option<Result<bytes::Bytes, SnapshotError>>, StorageError> {
//!         Ok(Some(Err(SnapshotError::NotFound { group: read.meta.group, index: read.meta.index, term: read.meta.term })))
//!     }
//!     fn write_snapshot_chunk(&mut self, chunk: &SnapshotChunk)
//!         -> Result<Option<Result<(), SnapshotError>>, StorageError> {
//!         Ok(Some(Err(SnapshotError::NotFound { group: chunk.meta.group, index: chunk.meta.index, term: chunk.meta.term })))
//!     }
//! }
//!
//! let mut node = Raft::new(Config::new(1), InitialState::new_group(vec![1])).unwrap();
//! let mut io = Inline { store: MemLogStore::new(), writer: LogWriter::new(), applied: Vec::new() };
//! let mut executor = Executor::new();
//! for tick in 0..40 {
//!     node.tick(); // once per tick interval: the runtime owns the clock
//!     if tick == 30 {
//!         node.propose("set x 1".into()).unwrap();
//!     }
//!     executor.run(&mut node, &mut io).unwrap();
//! }
//! assert!(node.is_leader());
//! assert_eq!(io.applied.last().map(|e| &e.data[..]), Some(&b"set x 1"[..]));
//! ```

use bytes::Bytes;

use crate::error::{SnapshotError, StorageError};
use crate::membership::Membership;
use crate::message::Message;
use crate::raft::Raft;
use crate::ready::{FetchRequest, ReadState, Ready, SnapshotChunk, SnapshotRead, SnapshotRequest};
use crate::storage::{LogStore, LogWrite, Lsn};
use crate::types::{Entry, GroupId, HardState, Index, SnapshotMeta, Term};

/// One Ready's writes to the log store (steps 2 and 3 of the [contract](crate::ready)).
///
/// A write with nothing to write ([`PersistWrite::is_empty`]) still carries messages that must
/// wait behind the writes handed before it.
#[derive(Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PersistWrite {
    /// The Ready's number, for [`Executor::on_persisted`].
    pub number: u64,
    /// The group.
    pub group: GroupId,
    /// Compact the log through `(index, term)` before writing.
    pub compact: Option<(Index, Term)>,
    /// Term, vote and commit index to write.
    pub hard_state: Option<HardState>,
    /// Entries to append; the first may replace the store's suffix from its index on.
    pub entries: Vec<Entry>,
    /// Messages to send once this write and every earlier one are durable (votes and append
    /// acknowledgements promise durability).
    pub messages: Vec<Message>,
    /// After writing, tell the store the group's damaged log is whole again
    /// ([`LogStore::mark_repaired`]).
    pub repaired: bool,
}

impl PersistWrite {
    /// Whether there is nothing to write to the store (only messages to hold back).
    pub fn is_empty(&self) -> bool {
        self.compact.is_none()
            && self.hard_state.is_none()
            && self.entries.is_empty()
            && !self.repaired
    }
}

/// One Ready's state machine duties (step 4 of the [contract](crate::ready)), in this order:
/// restore from `restore`, apply `entries`, then take the snapshot `snapshot` asks for.
#[derive(Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyWork {
    /// Restore the state machine from this installed snapshot first.
    pub restore: Option<SnapshotMeta>,
    /// Committed entries to apply, in order.
    pub entries: Vec<Entry>,
    /// Take a snapshot once `entries` are applied, and report it with
    /// [`Raft::on_snapshot_taken`].
    pub snapshot: Option<SnapshotRequest>,
}

impl ApplyWork {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.restore.is_none() && self.entries.is_empty() && self.snapshot.is_none()
    }
}

/// How a runtime does each duty a Ready asks for. [`Executor`] calls it in the contract's order.
///
/// Each duty that produces a result the core waits for may be done at once (return `Some`, and
/// the executor hands the result to the core) or later (return `None`, and the handler calls the
/// core's matching `on_*` input itself when it is done). An error stops the executor: the
/// runtime decides what an error means (the node driver stops the node, the simulator reports a
/// violation).
pub trait ReadyHandler {
    /// Why a duty could not be carried out.
    type Error;

    /// Called before each Ready is taken, with the core as it is then.
    fn before_ready(&mut self, raft: &Raft) -> Result<(), Self::Error> {
        let _ = raft;
        Ok(())
    }

    /// Step 0: the configuration in effect changed (see [`Ready::membership`]). A transport
    /// learns new members' addresses here, before any message goes to them. The default does
    /// nothing.
    fn membership_changed(&mut self, membership: &Membership) -> Result<(), Self::Error> {
        let _ = membership;
        Ok(())
    }

    /// Step 1 (and step 3 for writes that were durable at once): send these messages.
    fn send(&mut self, messages: Vec<Message>) -> Result<(), Self::Error>;

    /// Reads released (or failed): serve each once the state machine has applied its index.
    /// They wait for no write; a runtime must not hold them behind its disk.
    fn release_reads(&mut self, reads: Vec<ReadState>) -> Result<(), Self::Error>;

    /// Step 2: hand a write to the log store, after every write handed before it.
    ///
    /// Return `Some(write.messages)` if the write, and every earlier one, is durable already:
    /// the executor then sends the messages and acknowledges the Ready. Return `None` to report
    /// durability later: once this write and every earlier one are durable, send
    /// `write.messages` and call [`Executor::on_persisted`] with `write.number`.
    fn persist(
        &mut self,
        raft: &Raft,
        write: PersistWrite,
    ) -> Result<Option<Vec<Message>>, Self::Error>;

    /// Step 4: the state machine's duties, in order. Return the snapshot taken if the work asked
    /// for one and it was taken at once; else report it later with
    /// [`Raft::on_snapshot_taken`].
    #[allow(clippy::type_complexity)]
    fn apply(
        &mut self,
        work: ApplyWork,
    ) -> Result<Option<Result<SnapshotMeta, SnapshotError>>, Self::Error>;

    /// Step 5: read entries from the log store. Return them, or report later with
    /// [`Raft::on_fetched`].
    #[allow(clippy::type_complexity)]
    fn fetch(
        &mut self,
        request: &FetchRequest,
    ) -> Result<Option<Result<Vec<Entry>, StorageError>>, Self::Error>;

    /// Read a chunk of a snapshot for a follower (leader). Return it, or report later with
    /// [`Raft::on_snapshot_read`].
    #[allow(clippy::type_complexity)]
    fn read_snapshot(
        &mut self,
        read: &SnapshotRead,
    ) -> Result<Option<Result<Bytes, SnapshotError>>, Self::Error>;

    /// Write a received snapshot chunk, after the chunks handed before it (follower). Return
    /// the outcome, or report later with [`Raft::on_snapshot_chunk`].
    #[allow(clippy::type_complexity)]
    fn write_snapshot_chunk(
        &mut self,
        chunk: &SnapshotChunk,
    ) -> Result<Option<Result<(), SnapshotError>>, Self::Error>;
}

/// Carries out Readies in the order [`crate::ready`] lays down, and keeps track of which of
/// them are durable, so that messages that promise durability never overtake a write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Executor {
    /// The number of the last Ready whose write was handed to [`ReadyHandler::persist`].
    handed: u64,
    /// The number of the last Ready reported durable.
    durable: u64,
}

impl Executor {
    /// An executor for a core that has not produced a Ready yet.
    pub fn new() -> Executor {
        Executor::default()
    }

    /// Carries out every Ready the core has, until it has none (a result handed back at once
    /// may produce another), and returns how many it carried out. Stops at the handler's first
    /// error.
    #[inline]
    pub fn run<H: ReadyHandler>(
        &mut self,
        raft: &mut Raft,
        handler: &mut H,
    ) -> Result<usize, H::Error> {
        let mut carried = 0;
        while raft.has_ready() {
            handler.before_ready(raft)?;
            let ready = raft.ready();
            self.carry_out(raft, ready, handler)?;
            carried += 1;
        }
        Ok(carried)
    }

    /// Carries out one Ready, in the contract's order.
    #[inline]
    pub fn carry_out<H: ReadyHandler>(
        &mut self,
        raft: &mut Raft,
        ready: Ready,
        handler: &mut H,
    ) -> Result<(), H::Error> {
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
            reads,
            membership,
            repaired,
        } = ready;
        if let Some(membership) = &membership {
            handler.membership_changed(membership)?;
        }
        // 1. Messages that promise nothing go out at once: a leader's appends leave while it
        //    writes the same entries to its own disk. Reads wait for no write either.
        if !messages.is_empty() {
            handler.send(messages)?;
        }
        if !reads.is_empty() {
            handler.release_reads(reads)?;
        }
        // 2 and 3. The write, compaction first. Messages that promise durability wait for it,
        //    and, with nothing to write, for the writes still in flight: an acknowledgement of a
        //    duplicated append promises entries an earlier Ready wrote.
        if compact.is_some()
            || hard_state.is_some()
            || !entries.is_empty()
            || repaired
            || self.handed > self.durable
        {
            debug_assert!(
                number > self.handed,
                "Ready numbers grow: {number} after {}",
                self.handed
            );
            self.handed = number;
            let write = PersistWrite {
                number,
                group,
                compact,
                hard_state,
                entries,
                messages: persisted_messages,
                repaired,
            };
            if let Some(messages) = handler.persist(raft, write)? {
                self.on_persisted(raft, number);
                if !messages.is_empty() {
                    handler.send(messages)?;
                }
            }
        } else if !persisted_messages.is_empty() {
            handler.send(persisted_messages)?;
        }
        // 4. The state machine: entries committed are durable locally already, so this may run
        //    beside the write.
        if restore_snapshot.is_some() || !committed_entries.is_empty() || snapshot_request.is_some()
        {
            let work = ApplyWork {
                restore: restore_snapshot,
                entries: committed_entries,
                snapshot: snapshot_request,
            };
            if let Some(taken) = handler.apply(work)? {
                raft.on_snapshot_taken(taken);
            }
        }
        // 5. Reads the core asked for.
        for fetch in fetches {
            if let Some(result) = handler.fetch(&fetch)? {
                raft.on_fetched(fetch, result);
            }
        }
        for read in snapshot_reads {
            if let Some(result) = handler.read_snapshot(&read)? {
                raft.on_snapshot_read(read, result);
            }
        }
        for chunk in snapshot_chunks {
            if let Some(result) = handler.write_snapshot_chunk(&chunk)? {
                raft.on_snapshot_chunk(chunk, result);
            }
        }
        Ok(())
    }

    /// Every write handed up to Ready `number` is durable: tells the core. Numbers that go
    /// backwards are ignored.
    #[inline]
    pub fn on_persisted(&mut self, raft: &mut Raft, number: u64) {
        if number > self.durable {
            self.durable = number;
            raft.on_persisted(number);
        }
    }

    /// Whether a write handed to [`ReadyHandler::persist`] is not yet reported durable.
    pub fn writes_in_flight(&self) -> bool {
        self.handed > self.durable
    }

    /// The number of the last Ready reported durable.
    pub fn durable(&self) -> u64 {
        self.durable
    }
}

/// Writes one Ready's compaction, then its hard state and entries.
#[inline]
fn write_one<L: LogStore + ?Sized>(
    log: &L,
    write: &PersistWrite,
) -> Result<Option<Lsn>, StorageError> {
    let mut last = None;
    if let Some((index, term)) = write.compact {
        last = Some(log.compact(write.group, index, term)?);
    }
    if write.hard_state.is_some() || !write.entries.is_empty() {
        let one =
            LogWrite { group: write.group, hard_state: write.hard_state, entries: &write.entries };
        last = Some(log.write(&[one])?);
    }
    if write.repaired {
        last = Some(log.mark_repaired(write.group)?.max(last.unwrap_or_default()));
    }
    Ok(last)
}

/// Writes [`PersistWrite`]s to a [`LogStore`] in order, as few store calls as their order allows,
/// and holds back hard states that only move the commit index.
///
/// A hard state that differs from the last one written only in its commit index is not worth a
/// sync of its own: the commit index is persisted only to spare a restarted node some waiting,
/// and losing it is safe (the node learns the commit index from its leader again). Such a hard
/// state is held back and written with the next write that must be durable anyway, or by
/// [`LogWriter::flush`]. That halves the syncs per committed write, since every commit changes
/// the hard state.
#[derive(Clone, Debug, Default)]
pub struct LogWriter {
    /// The hard state last written.
    written: Option<HardState>,
    /// A hard state that only moves the commit index, waiting for the next write.
    deferred: Option<HardState>,
}

impl LogWriter {
    /// A writer that has written nothing yet.
    pub fn new() -> LogWriter {
        LogWriter::default()
    }

    /// Writes `writes` in order: compactions and writes in Ready order, consecutive writes in
    /// one [`LogStore::write`]. Returns the sequence number to [`LogStore::sync`] for all of them
    /// to be durable, or `None` if nothing was written.
    ///
    /// Hard states it holds back or attaches are changed in place, so `writes` afterwards say
    /// what was written.
    ///
    /// After an error the same `writes` may be handed again (a store out of space,
    /// [`StorageError::Full`], did nothing): the writer then forgets what the failed call
    /// meant to write, so a term or vote change is not mistaken for one already written.
    #[inline]
    pub fn write<L: LogStore + ?Sized>(
        &mut self,
        log: &L,
        writes: &mut [PersistWrite],
    ) -> Result<Option<Lsn>, StorageError> {
        let written_before = self.written;
        let result = self.write_all(log, writes);
        if result.is_err() {
            self.written = written_before;
        }
        result
    }

    fn write_all<L: LogStore + ?Sized>(
        &mut self,
        log: &L,
        writes: &mut [PersistWrite],
    ) -> Result<Option<Lsn>, StorageError> {
        for write in writes.iter_mut() {
            let Some(hs) = write.hard_state else {
                if self.deferred.is_some() && (!write.entries.is_empty() || write.compact.is_some())
                {
                    write.hard_state = self.deferred.take();
                    self.written = write.hard_state;
                }
                continue;
            };
            let commit_only = self.written.is_some_and(|w| w.term == hs.term && w.vote == hs.vote);
            if commit_only && write.entries.is_empty() && write.compact.is_none() {
                self.deferred = write.hard_state.take();
            } else {
                self.deferred = None; // This one is newer.
                self.written = Some(hs);
            }
        }
        if let [write] = &*writes {
            // One Ready (the simulator's and the benchmarks' case, and a quiet node's): no
            // batch to gather, so no allocation on the write path.
            return write_one(log, write);
        }
        let mut last = None;
        let mut batch: Vec<LogWrite<'_>> = Vec::new();
        for write in writes.iter() {
            if let Some((index, term)) = write.compact {
                if !batch.is_empty() {
                    log.write(&batch)?;
                    batch.clear();
                }
                last = Some(log.compact(write.group, index, term)?);
            }
            if write.hard_state.is_some() || !write.entries.is_empty() {
                batch.push(LogWrite {
                    group: write.group,
                    hard_state: write.hard_state,
                    entries: &write.entries,
                });
            }
        }
        if !batch.is_empty() {
            last = Some(log.write(&batch)?);
        }
        for write in writes.iter().filter(|w| w.repaired) {
            last = Some(log.mark_repaired(write.group)?.max(last.unwrap_or_default()));
        }
        Ok(last)
    }

    /// A write with no entries, compaction or repair, handed while every earlier write is
    /// durable: whether it needs the store at all. It does not if it has no hard state, or one
    /// that only moves the commit index, which is then held back as [`LogWriter::write`] would
    /// hold it (and written with the next write that must be durable, or by
    /// [`LogWriter::flush`]). So a runtime can acknowledge it at once, without a round of its
    /// write path.
    pub fn hold_back(&mut self, hard_state: Option<HardState>) -> bool {
        let Some(hs) = hard_state else { return true };
        let commit_only = self.written.is_some_and(|w| w.term == hs.term && w.vote == hs.vote);
        if commit_only {
            self.deferred = Some(hs);
        }
        commit_only
    }

    /// Writes and syncs the hard state held back, if any (at shutdown).
    pub fn flush<L: LogStore + ?Sized>(
        &mut self,
        log: &L,
        group: GroupId,
    ) -> Result<(), StorageError> {
        let Some(hs) = self.deferred.take() else { return Ok(()) };
        let lsn = log.write(&[LogWrite { group, hard_state: Some(hs), entries: &[] }])?;
        self.written = Some(hs);
        log.sync(lsn)
    }

    /// The hard state held back, if any.
    pub fn deferred(&self) -> Option<HardState> {
        self.deferred
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemLogStore;

    fn vote_write(number: u64, term: Term, vote: u64, commit: Index) -> PersistWrite {
        PersistWrite {
            number,
            group: 1,
            hard_state: Some(HardState { term, vote: Some(vote), commit }),
            ..PersistWrite::default()
        }
    }

    /// A vote the store refused for lack of space is written when the same write is handed
    /// again, not held back as if only its commit index were new.
    #[test]
    fn a_write_refused_for_space_is_written_in_full_when_retried() {
        let store = MemLogStore::new();
        let mut writer = LogWriter::new();
        writer.write(&store, &mut [vote_write(1, 1, 1, 0)]).expect("first vote");
        store.set_full(true);
        let mut round = [vote_write(2, 2, 3, 0)];
        assert!(matches!(writer.write(&store, &mut round), Err(StorageError::Full(_))));
        store.set_full(false);
        writer.write(&store, &mut round).expect("retried");
        let hs = store.log_state(1).expect("state").hard_state;
        assert_eq!((hs.term, hs.vote), (2, Some(3)), "the vote is durable, not deferred");
        assert_eq!(writer.deferred(), None);
    }

    #[test]
    fn only_a_commit_index_is_held_back_without_the_store() {
        let store = MemLogStore::new();
        let mut writer = LogWriter::new();
        let hs = |term, vote, commit| HardState { term, vote: Some(vote), commit };
        assert!(writer.hold_back(None), "nothing to write");
        assert!(!writer.hold_back(Some(hs(1, 1, 0))), "the first hard state is written");
        writer.write(&store, &mut [vote_write(1, 1, 1, 0)]).expect("vote");
        assert!(!writer.hold_back(Some(hs(2, 1, 0))), "a new term is written");
        assert!(!writer.hold_back(Some(hs(1, 2, 0))), "a new vote is written");
        assert_eq!(writer.deferred(), None);
        assert!(writer.hold_back(Some(hs(1, 1, 5))), "a commit index is held back");
        assert_eq!(writer.deferred(), Some(hs(1, 1, 5)));
        writer.flush(&store, 1).expect("flush");
        assert_eq!(
            store.log_state(1).expect("state").hard_state.commit,
            5,
            "and written at the end"
        );
    }
}
