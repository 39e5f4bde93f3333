//! What every thread of a node shares: the view of the core it publishes after each round
//! (leader, term, role, commit, sleep), failure, and what the persist stage and the timer hand
//! the core; on a runtime it keeps the runtime's counts of its nodes up.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::runtime;
use crate::raft::Raft;
use crate::types::RoleKind;

/// What every thread of a node shares: cheap views of the core for callers, and failure.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(super) leader: AtomicU64,
    pub(super) term: AtomicU64,
    pub(super) role: AtomicU8,
    pub(super) commit: AtomicU64,
    pub(super) applied: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) failure: Mutex<Option<String>>,
    /// On a runtime: its counts of failed nodes, leader changes and sleeping nodes, which this
    /// node keeps up (so an application hosting thousands of nodes need not ask each, see
    /// [`Runtime::failed_nodes`](super::Runtime::failed_nodes), [`Runtime::leader_changes`](super::Runtime::leader_changes), [`Runtime::asleep_nodes`](super::Runtime::asleep_nodes)).
    pub(super) runtime_counts: Option<Arc<runtime::NodeCounts>>,
    /// Why the log store refuses writes for now, while it does.
    pub(super) storage_full: Mutex<Option<String>>,
    /// The core sleeps (its group hibernates): a runtime does not tick it.
    pub(super) asleep: std::sync::atomic::AtomicBool,
    /// On a runtime: ticks the timer counted that the core has not taken yet (it takes them all
    /// at the start of its next round).
    pub(super) owed_ticks: AtomicU32,
    /// The core's [`Raft::quiet_ticks`] after its last round: owed ticks up to this many need
    /// no round of their own.
    pub(super) quiet_ticks: AtomicU32,
    /// The last Ready the persist stage made durable. The core takes it at the start of every
    /// round, after the owed ticks.
    pub(super) durable_ready: AtomicU64,
    /// The core's [`Raft::persist_acks_matter`] after its last round: while false, a durable
    /// write needs no round of its own.
    pub(super) acks_matter: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Publishes the core's view after a round. Only what changed is stored: a store takes the
    /// line from every other core that reads these (callers asking who leads, the timer), and
    /// most rounds change nothing here but the commit index.
    pub(super) fn publish(&self, raft: &Raft) {
        fn set(cell: &AtomicU64, value: u64) {
            if cell.load(Ordering::Relaxed) != value {
                cell.store(value, Ordering::Relaxed);
            }
        }
        let leader = raft.leader().unwrap_or(0);
        let role = match raft.role() {
            RoleKind::Follower => 0,
            RoleKind::PreCandidate => 1,
            RoleKind::Candidate => 2,
            RoleKind::Leader => 3,
        };
        let mut changed = false;
        if self.leader.load(Ordering::Relaxed) != leader {
            self.leader.store(leader, Ordering::Relaxed);
            changed = true;
        }
        if self.role.load(Ordering::Relaxed) != role {
            self.role.store(role, Ordering::Relaxed);
            changed = true;
        }
        set(&self.term, raft.term());
        set(&self.commit, raft.commit_index());
        let asleep = raft.is_asleep();
        let fell = self.asleep.load(Ordering::SeqCst) != asleep;
        if fell {
            self.asleep.store(asleep, Ordering::SeqCst);
        }
        if let Some(counts) = &self.runtime_counts {
            if changed {
                counts.leader_changes.fetch_add(1, Ordering::Release);
            }
            if fell && asleep {
                counts.asleep.fetch_add(1, Ordering::Release);
            } else if fell {
                counts.asleep.fetch_sub(1, Ordering::Release);
            }
        }
    }

    /// A node's shared state, keeping up `counts` if it runs on a runtime.
    pub(super) fn on(counts: Option<Arc<runtime::NodeCounts>>) -> Shared {
        let mut shared = Shared::default();
        shared.runtime_counts = counts;
        shared
    }

    pub(super) fn is_leader(&self) -> bool {
        self.role.load(Ordering::Relaxed) == 3
    }

    pub(super) fn fail(&self, what: String) {
        tracing::error!(failure = %what, "node failed and stops");
        let mut failure = self.failure.lock();
        if failure.is_none() {
            *failure = Some(what);
            if let Some(counts) = &self.runtime_counts {
                counts.failed.fetch_add(1, Ordering::Release);
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // A node gone asleep no longer sleeps on its runtime.
        if let Some(counts) = &self.runtime_counts {
            if *self.asleep.get_mut() {
                counts.asleep.fetch_sub(1, Ordering::Release);
            }
        }
    }
}
