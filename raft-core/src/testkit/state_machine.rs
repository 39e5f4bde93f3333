//! The [`StateMachine`] conformance suite: [`MachineHarness`] and
//! [`state_machine_conformance!`](crate::state_machine_conformance).
//!
//! What Raft asks of a state machine: `apply` is deterministic (every replica that applies the
//! same entries reaches the same state and gives the same outputs), no-op entries change
//! nothing, a snapshot restored into a fresh machine reproduces the state exactly (the same
//! later outputs, the same next snapshot), a [`SnapshotView`](crate::SnapshotView) writes what
//! `snapshot` would, and a damaged snapshot is refused with an error rather than a panic or a
//! half-restored state.
//!
//! ```
//! use raft_core::sim::kv::{KvOp, KvStore};
//! use raft_core::testkit::state_machine::MachineHarness;
//! use raft_core::rng::Rng;
//!
//! struct KvHarness;
//!
//! impl MachineHarness for KvHarness {
//!     type Machine = KvStore;
//!     fn machine(&self) -> KvStore {
//!         KvStore::default()
//!     }
//!     fn command(&self, rng: &mut Rng) -> bytes::Bytes {
//!         let key = format!("k{}", rng.below(4));
//!         match rng.below(3) {
//!             0 => KvOp::Get { key },
//!             1 => KvOp::Put { key, value: rng.below(100).to_string() },
//!             _ => KvOp::Append { key, value: "+".into() },
//!         }
//!         .encode()
//!     }
//! }
//!
//! raft_core::state_machine_conformance!(kv, crate::KvHarness);
//! # fn main() {}
//! ```

use std::fmt::Debug;

use bytes::Bytes;

use crate::rng::Rng;
use crate::storage::StateMachine;
use crate::types::Entry;

/// Builds the state machine under test and the commands its clients send.
pub trait MachineHarness
where
    <Self::Machine as StateMachine>::Output: PartialEq + Debug,
{
    /// The state machine type.
    type Machine: StateMachine;

    /// A machine in its initial state (as a node that starts empty builds it).
    fn machine(&self) -> Self::Machine;

    /// A command a client might propose, drawn from `rng`.
    fn command(&self, rng: &mut Rng) -> Bytes;
}

/// `count` entries from index `first`: the harness's commands, with a leader's no-op at every
/// term change (every 50 entries).
pub fn log<H: MachineHarness>(h: &H, rng: &mut Rng, first: u64, count: u64) -> Vec<Entry>
where
    <H::Machine as StateMachine>::Output: PartialEq + Debug,
{
    (first..first + count)
        .map(|index| {
            let term = index / 50 + 1;
            if index % 50 == 0 {
                Entry::noop(term, index)
            } else {
                Entry::normal(term, index, h.command(rng))
            }
        })
        .collect()
}

fn apply_all<M: StateMachine>(machine: &mut M, entries: &[Entry]) -> Vec<M::Output> {
    entries.iter().map(|e| machine.apply(e)).collect()
}

fn snapshot_bytes<M: StateMachine>(machine: &mut M) -> Vec<u8> {
    let mut out = Vec::new();
    machine.snapshot(&mut out).unwrap_or_else(|e| panic!("snapshot: {e}"));
    out
}

/// Two machines that apply the same entries give the same outputs and the same snapshot bytes.
pub fn apply_is_deterministic<H: MachineHarness>(h: &H, seed: u64)
where
    <H::Machine as StateMachine>::Output: PartialEq + Debug,
{
    let entries = log(h, &mut Rng::new(seed), 1, 300);
    let (mut a, mut b) = (h.machine(), h.machine());
    let outputs = apply_all(&mut a, &entries);
    assert_eq!(apply_all(&mut b, &entries), outputs, "seed {seed}: outputs differ");
    assert_eq!(snapshot_bytes(&mut a), snapshot_bytes(&mut b), "seed {seed}: states differ");
}

/// A no-op entry changes nothing: the snapshot is the same before and after it.
pub fn noop_entries_change_nothing<H: MachineHarness>(h: &H, seed: u64)
where
    <H::Machine as StateMachine>::Output: PartialEq + Debug,
{
    let entries: Vec<Entry> =
        log(h, &mut Rng::new(seed), 1, 100).into_iter().filter(|e| e.index % 50 != 0).collect();
    let mut machine = h.machine();
    apply_all(&mut machine, &entries);
    let before = snapshot_bytes(&mut machine);
    machine.apply(&Entry::noop(9, 1_000));
    assert_eq!(snapshot_bytes(&mut machine), before, "seed {seed}: a no-op changed the state");
}

/// A machine restored from a snapshot taken midway behaves exactly like the one that took it:
/// the same outputs for the rest of the log, the same final snapshot.
pub fn snapshot_then_restore_reproduces_the_state<H: MachineHarness>(h: &H, seed: u64)
where
    <H::Machine as StateMachine>::Output: PartialEq + Debug,
{
    let mut rng = Rng::new(seed);
    let split = rng.range(0, 200);
    let entries = log(h, &mut rng, 1, 300);
    let (head, tail) = entries.split_at(split as usize);
    let mut original = h.machine();
    apply_all(&mut original, head);
    let bytes = snapshot_bytes(&mut original);
    let mut restored = h.machine();
    restored.restore(&mut &bytes[..]).unwrap_or_else(|e| panic!("seed {seed}: restore: {e}"));
    assert_eq!(snapshot_bytes(&mut restored), bytes, "seed {seed}: restore then snapshot");
    // Restoring replaces the state: a machine that had applied other entries ends up the same.
    let mut replaced = h.machine();
    apply_all(&mut replaced, &log(h, &mut Rng::new(seed ^ 0xA5A5), 1, 50));
    replaced.restore(&mut &bytes[..]).unwrap_or_else(|e| panic!("seed {seed}: restore: {e}"));
    assert_eq!(snapshot_bytes(&mut replaced), bytes, "seed {seed}: restore over a used machine");
    let expected = apply_all(&mut original, tail);
    assert_eq!(apply_all(&mut restored, tail), expected, "seed {seed}: outputs after restore");
    assert_eq!(apply_all(&mut replaced, tail), expected, "seed {seed}: outputs after restore");
    assert_eq!(snapshot_bytes(&mut restored), snapshot_bytes(&mut original), "seed {seed}");
}

/// A view taken at a point writes what `snapshot` would have written then, even when the
/// machine applies more entries before the view is written.
pub fn a_snapshot_view_writes_the_state_it_was_taken_at<H: MachineHarness>(h: &H, seed: u64)
where
    <H::Machine as StateMachine>::Output: PartialEq + Debug,
{
    let entries = log(h, &mut Rng::new(seed), 1, 200);
    let mut machine = h.machine();
    apply_all(&mut machine, &entries[..100]);
    let Some(view) = machine.snapshot_view() else { return };
    let expected = snapshot_bytes(&mut machine);
    apply_all(&mut machine, &entries[100..]);
    let mut written = Vec::new();
    view.write_to(&mut written).unwrap_or_else(|e| panic!("seed {seed}: view: {e}"));
    assert_eq!(written, expected, "seed {seed}: the view moved with the machine");
}

/// Every truncation of a snapshot, and trailing garbage after it, is refused by `restore` with
/// an error (never a panic). What the machine holds after a refused restore is unspecified; the
/// node stops rather than use it.
pub fn damaged_snapshots_are_refused<H: MachineHarness>(h: &H, seed: u64)
where
    <H::Machine as StateMachine>::Output: PartialEq + Debug,
{
    let entries = log(h, &mut Rng::new(seed), 1, 120);
    let mut machine = h.machine();
    apply_all(&mut machine, &entries);
    let bytes = snapshot_bytes(&mut machine);
    let mut initial = h.machine();
    let empty = snapshot_bytes(&mut initial);
    for cut in (0..bytes.len()).step_by((bytes.len() / 64).max(1)) {
        let mut target = h.machine();
        let truncated = &bytes[..cut];
        // A prefix that happens to be another valid snapshot (the empty state's) may restore.
        if truncated != &empty[..] {
            assert!(
                target.restore(&mut &truncated[..]).is_err(),
                "seed {seed}: cut at {cut} of {}",
                bytes.len()
            );
        }
    }
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0xAB; 9]);
    assert!(h.machine().restore(&mut &longer[..]).is_err(), "seed {seed}: trailing bytes accepted");
}

/// Expands to one `#[test]` per state machine conformance case (each over several seeds), in a
/// module named `$name`, with the harness `$harness`.
#[macro_export]
macro_rules! state_machine_conformance {
    ($name:ident, $harness:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::testkit::state_machine as kit;

            #[test]
            fn apply_is_deterministic() {
                for seed in 0..8 {
                    kit::apply_is_deterministic(&$harness, seed);
                }
            }
            #[test]
            fn noop_entries_change_nothing() {
                for seed in 0..4 {
                    kit::noop_entries_change_nothing(&$harness, seed);
                }
            }
            #[test]
            fn snapshot_then_restore_reproduces_the_state() {
                for seed in 0..8 {
                    kit::snapshot_then_restore_reproduces_the_state(&$harness, seed);
                }
            }
            #[test]
            fn a_snapshot_view_writes_the_state_it_was_taken_at() {
                for seed in 0..4 {
                    kit::a_snapshot_view_writes_the_state_it_was_taken_at(&$harness, seed);
                }
            }
            #[test]
            fn damaged_snapshots_are_refused() {
                for seed in 0..4 {
                    kit::damaged_snapshots_are_refused(&$harness, seed);
                }
            }
        }
    };
}
