//! What a node on a runtime holds back from its core and hands over at the start of the next
//! round: ticks that only count ([`Raft::quiet_ticks`]) and acknowledgements of durable writes
//! nothing waits for ([`Raft::persist_acks_matter`]); and, at the end of each round, what the
//! timer and the persist stage may hold back until the next.

use std::sync::atomic::Ordering;

use super::{Core, Driver, Input};
#[cfg(doc)]
use crate::raft::Raft;
use crate::storage::StateMachine;

impl<M: StateMachine> Driver<M> {
    /// On a runtime, ticks the timer counted while the core said they would only count (see
    /// [`Raft::quiet_ticks`]): taken in a burst before any input, so the core sees time exactly
    /// as if each had come on its own.
    pub(super) fn take_owed_ticks(&self, core: &mut Core<M>) {
        // Looked at before it is taken: most rounds owe none, and a swap would take the line
        // from the timer, which counts here, every round.
        let owed = match self.shared.owed_ticks.load(Ordering::SeqCst) {
            0 => 0,
            _ => self.shared.owed_ticks.swap(0, Ordering::SeqCst),
        };
        if owed > 0 {
            for _ in 0..owed {
                core.raft.tick();
            }
            self.after_ticks(core);
        }
    }

    /// Takes the writes the persist stage made durable since the last round (see
    /// [`Raft::persist_acks_matter`]). Debug builds check that one held back was indeed waited
    /// for by nothing: since the round that said so, only owed ticks reached the core, and
    /// taking it moves no commit index.
    pub(super) fn take_durable(&self, core: &mut Core<M>) {
        let durable = self.shared.durable_ready.load(Ordering::SeqCst);
        if durable <= core.executor.durable() {
            return;
        }
        let held_back = !self.shared.acks_matter.load(Ordering::SeqCst);
        let commit = core.raft.commit_index();
        core.executor.on_persisted(&mut core.raft, durable);
        debug_assert!(
            !held_back || core.raft.commit_index() == commit,
            "group {}: an acknowledgement held back moved the commit index {commit} -> {}",
            self.group,
            core.raft.commit_index()
        );
    }

    /// After the round: how many ticks the timer may count without running the core. A tick
    /// the timer counted meanwhile that is not quiet any more gets its round now (the timer
    /// compared it with the old figure).
    ///
    /// Likewise for writes made durable: whether the next one needs a round of its own
    /// ([`Raft::persist_acks_matter`]). A write made durable during the round, whose persist
    /// stage read the old answer, gets its round now if the new answer wants one.
    pub(super) fn publish_held_back(&self, core: &mut Core<M>) {
        // Stored only when changed (as the core's published view): the timer reads these, and a
        // store takes their line from it. An unchanged value was stored by an earlier round,
        // which happened before this one, so the timer sees it either way.
        let quiet = core.raft.quiet_ticks();
        if self.shared.quiet_ticks.load(Ordering::SeqCst) != quiet {
            self.shared.quiet_ticks.store(quiet, Ordering::SeqCst);
        }
        if self.shared.owed_ticks.load(Ordering::SeqCst) > quiet && self.core.push(Input::OwedTicks)
        {
            self.core.call_worker();
        }
        let matter = core.raft.persist_acks_matter();
        if self.shared.acks_matter.load(Ordering::SeqCst) != matter {
            self.shared.acks_matter.store(matter, Ordering::SeqCst);
        }
        let durable = self.shared.durable_ready.load(Ordering::SeqCst);
        if matter
            && durable > core.executor.durable()
            && self.core.push(Input::Persisted { number: durable })
        {
            self.core.call_worker();
        }
    }

    /// After ticks: damage the store's own checks found (scrubbing) is repaired from the peers.
    pub(super) fn after_ticks(&self, core: &mut Core<M>) {
        if let Some(index) = self.log.take_damage_found(self.group) {
            core.raft.report_damage(index);
        }
        if let Some(meta) = self.snapshots.as_ref().and_then(|s| s.take_damage_found(self.group)) {
            core.raft.report_snapshot_damaged(&meta);
        }
    }
}
