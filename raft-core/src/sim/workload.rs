//! What a user supplies to run their own state machine in the simulator: [`Workload`].
//!
//! # Simulating your own state machine
//!
//! The simulator runs any [`StateMachine`] under every fault it injects and checks the client
//! history against a sequential model of it. To do the same for yours:
//!
//! 1. Write a sequential model of the machine: a [`Model`] whose `Input` is one client
//!    operation and whose `Output` is what the client gets back. It is the specification the
//!    history is checked against, so keep it obviously right (a plain value and a `match`).
//! 2. Implement [`Workload`]: build an empty machine, draw the next operation of a client,
//!    encode an operation as the bytes your clients would propose, turn the machine's
//!    [`StateMachine::Output`] into the model's output, and (optionally) check an invariant of
//!    the machine after every entry it applies. If operations touch shared state (one model
//!    partition), make the machine deduplicate by client and operation number and say so with
//!    [`Workload::retries`], so timed-out operations are retried instead of left unknown.
//! 3. Run [`chaos::run_seed_with`](super::chaos::run_seed_with) over many seeds, in a test
//!    (a few hundred) and outside CI (thousands). A failure prints the seed; the same seed
//!    replays the same run.
//!
//! [`bank`](super::bank) is a worked example: accounts with transfers, whose total must be
//! conserved (checked after every entry any node applies), with a model that the
//! linearizability checker explores over whole-bank states.
//!
//! What the simulator asks of the machine: `apply` is deterministic (the same entries give the
//! same state and outputs on every node), and `snapshot` writes the same bytes for the same state
//! (snapshots taken at one index on different nodes are compared by checksum). Entries reach
//! the machine as the bytes [`Workload::encode`] made: the simulator identifies each client's
//! operation by a header of its own that it strips before applying.

use std::fmt::Debug;

use bytes::Bytes;

use super::linearizability::{Model, Operation};
use crate::rng::Rng;
use crate::storage::StateMachine;

/// A state machine, the operations clients run on it, and the model they are checked against.
pub trait Workload {
    /// The state machine every simulated node runs.
    type Machine: StateMachine;
    /// One client operation.
    type Op: Clone + Debug;
    /// What a client gets back. `Default` stands for "no answer" in operations whose outcome is
    /// unknown (the model must accept any output for writes; see [`Workload::is_write`]).
    type Output: Clone + Debug + Default;
    /// The sequential specification.
    type Model: Model<Input = Self::Op, Output = Self::Output>;

    /// A short name for reports (the simulator's own workloads are `kv` and `bank`).
    fn name(&self) -> &'static str {
        "custom"
    }

    /// An empty state machine (each node starts from one, and restores snapshots into one).
    fn machine(&self) -> Self::Machine;

    /// The model the history is checked against.
    fn model(&self) -> Self::Model;

    /// The next operation of `client`, drawn from `rng` (the only source of randomness).
    fn next_op(&self, client: u64, op_id: u64, rng: &mut Rng) -> Self::Op;

    /// The bytes `client` proposes for its operation `op_id`; the machine's `apply` reads them.
    /// A machine that deduplicates (see [`Workload::retries`]) encodes the client and the
    /// operation number too.
    fn encode(&self, client: u64, op_id: u64, op: &Self::Op) -> Bytes;

    /// What the client is answered, from what the machine's `apply` returned for its entry.
    fn output(&self, applied: <Self::Machine as StateMachine>::Output) -> Self::Output;

    /// Whether `op` may change the state. A write whose client timed out may still take effect
    /// at any later time, so it stays in the history with unknown outcome; a read without an
    /// answer tells nothing and is left out.
    fn is_write(&self, op: &Self::Op) -> bool;

    /// Answers a read-only operation from the machine as it is, without going through the log:
    /// `Some(output)` for an operation a linearizable read (ReadIndex, lease, follower read) can
    /// serve, `None` for one that must be proposed. The default proposes everything, so reads
    /// go through the log.
    fn query(&self, machine: &Self::Machine, op: &Self::Op) -> Option<Self::Output> {
        let _ = (machine, op);
        None
    }

    /// Whether the machine applies each `(client, op_id)` at most once (it keeps each client's
    /// last operation and answers a repeat from it), so that a client whose operation timed out
    /// sends it again rather than giving up. Its outcome is then known in the end, which keeps
    /// the history small for the checker: a timed-out write that stays unknown may take effect
    /// anywhere later, and a history with many of them in one partition cannot be searched.
    /// The default is `false`: clients give up, as for a machine without deduplication.
    fn retries(&self) -> bool {
        false
    }

    /// An invariant of the machine, checked after every entry any node applies (and after every
    /// restore). The default checks nothing.
    fn check(&self, machine: &Self::Machine) -> Result<(), String> {
        let _ = machine;
        Ok(())
    }

    /// Simplifies the recorded history before it is checked, in ways that cannot change the
    /// verdict (the key-value workload drops timed-out writes no read observed). The default
    /// keeps it as it is.
    fn prepare_history(&self, history: &mut Vec<Operation<Self::Op, Self::Output>>) {
        let _ = history;
    }
}
