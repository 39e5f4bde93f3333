//! A linearizability checker for histories of client operations (Wing & Gong's search with
//! Lowe's memoization, as in Porcupine).
//!
//! A history is linearizable if every operation can be given a single instant between its call
//! and its return such that, taken in that order, the operations are a legal sequential run of
//! the model. The search walks the history's call and return events in time order, tries to
//! linearize each call at the current point, and backtracks when a return is reached whose call
//! could not be placed. A cache of (set of linearized operations, model state) pairs already
//! explored prunes the search; operations on independent keys are checked separately, which is
//! what keeps histories of thousands of operations to well under a second.
//!
//! An operation whose outcome is unknown (its client timed out) has return time `u64::MAX`: it
//! may take effect at any point after its call, or never be observed.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification of the system under test.
pub trait Model {
    /// The state the operations act on.
    type State: Clone + Eq + Hash;
    /// What a client asked for.
    type Input: Debug;
    /// What the client got back.
    type Output: Debug;
    /// Operations in different partitions never interact and are checked separately.
    type Partition: Ord + Clone + Debug;

    /// The initial state.
    fn init(&self) -> Self::State;
    /// The state after `input` if it can return `output` in `state`, or `None` if it cannot.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;
    /// The partition an operation belongs to.
    fn partition(&self, input: &Self::Input) -> Self::Partition;
}

/// One completed (or timed-out) client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client that issued it (a client's operations never overlap).
    pub client: u64,
    /// What was asked.
    pub input: I,
    /// What was returned (ignored by the model for operations with unknown outcome where the
    /// output carries no information, such as writes).
    pub output: O,
    /// When the call was made.
    pub call: u64,
    /// When the answer arrived; `u64::MAX` if it never did.
    pub ret: u64,
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Some order of the operations explains every result.
    Linearizable,
    /// No order does; `partition` names the offending partition.
    NotLinearizable {
        /// The partition (e.g. the key) whose operations cannot be ordered.
        partition: String,
        /// How many operations it has.
        ops: usize,
        /// The most operations that could be linearized before the search got stuck.
        deepest: usize,
    },
    /// The search exceeded its step budget without a verdict.
    GaveUp {
        /// The partition that was being checked.
        partition: String,
    },
}

/// Checks a whole history, partition by partition, spending at most `step_budget` search
/// steps on each partition.
pub fn check_history<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    step_budget: u64,
) -> CheckOutcome {
    let mut partitions: BTreeMap<M::Partition, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        partitions.entry(model.partition(&op.input)).or_default().push(i);
    }
    for (key, ops) in partitions {
        let ops: Vec<&Operation<M::Input, M::Output>> = ops.iter().map(|&i| &history[i]).collect();
        match check_partition(model, &ops, step_budget) {
            Search::Ok => {}
            Search::Illegal { deepest } => {
                return CheckOutcome::NotLinearizable {
                    partition: format!("{key:?}"),
                    ops: ops.len(),
                    deepest,
                }
            }
            Search::GaveUp => return CheckOutcome::GaveUp { partition: format!("{key:?}") },
        }
    }
    CheckOutcome::Linearizable
}

enum Search {
    Ok,
    Illegal { deepest: usize },
    GaveUp,
}

/// A call or return event in a doubly linked list (indexes into the event arena; 0 is the head
/// sentinel).
#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    is_call: bool,
    /// For a call, the arena index of its return.
    matching: usize,
    prev: usize,
    next: usize,
}

const NIL: usize = usize::MAX;

fn check_partition<M: Model>(
    model: &M,
    ops: &[&Operation<M::Input, M::Output>],
    step_budget: u64,
) -> Search {
    // Events in time order; at equal times calls come first, so operations that touch are
    // treated as concurrent (the permissive reading).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, false, i));
        order.push((op.ret, true, i));
    }
    order.sort_unstable_by_key(|&(t, is_return, i)| (t, is_return, i));
    let mut events: Vec<Event> = Vec::with_capacity(order.len() + 1);
    events.push(Event { op: NIL, is_call: false, matching: NIL, prev: NIL, next: NIL });
    let mut call_slot = vec![NIL; ops.len()];
    for &(_, is_return, op) in &order {
        let idx = events.len();
        let prev = idx - 1;
        events[prev].next = idx;
        events.push(Event { op, is_call: !is_return, matching: NIL, prev, next: NIL });
        if is_return {
            events[call_slot[op]].matching = idx;
        } else {
            call_slot[op] = idx;
        }
    }

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut deepest = 0;
    let mut steps = 0u64;
    let mut cursor = events[0].next;

    while events[0].next != NIL {
        steps += 1;
        if steps > step_budget {
            return Search::GaveUp;
        }
        if cursor == NIL {
            // Only reachable if the list ends in calls, which it cannot: every call has a
            // return after it.
            return Search::Illegal { deepest };
        }
        let ev = events[cursor];
        if ev.is_call {
            let op = ops[ev.op];
            if let Some(next_state) = model.step(&state, &op.input, &op.output) {
                let (w, b) = (ev.op / 64, ev.op % 64);
                linearized[w] |= 1 << b;
                if cache.insert((linearized.clone(), next_state.clone())) {
                    stack.push((cursor, std::mem::replace(&mut state, next_state)));
                    deepest = deepest.max(stack.len());
                    lift(&mut events, cursor);
                    cursor = events[0].next;
                    continue;
                }
                linearized[w] &= !(1 << b);
            }
            cursor = ev.next;
        } else {
            // A return whose call is still in the list: that operation must have happened by
            // now but could not be placed. Undo the last choice.
            let Some((call, previous)) = stack.pop() else {
                return Search::Illegal { deepest };
            };
            state = previous;
            let op = events[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut events, call);
            cursor = events[call].next;
        }
    }
    Search::Ok
}

/// Removes a call and its return from the list (they stay in the arena to be put back).
fn lift(events: &mut [Event], call: usize) {
    let ret = events[call].matching;
    for idx in [call, ret] {
        let Event { prev, next, .. } = events[idx];
        events[prev].next = next;
        if next != NIL {
            events[next].prev = prev;
        }
    }
}

/// Puts back a call and its return removed by [`lift`], in reverse order.
fn unlift(events: &mut [Event], call: usize) {
    let ret = events[call].matching;
    for idx in [ret, call] {
        let Event { prev, next, .. } = events[idx];
        events[prev].next = idx;
        if next != NIL {
            events[next].prev = idx;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::kv::{KvModel, KvOp};

    fn op(client: u64, input: KvOp, output: &str, call: u64, ret: u64) -> Operation<KvOp, String> {
        Operation { client, input, output: output.into(), call, ret }
    }
    fn put(v: &str) -> KvOp {
        KvOp::Put { key: "k".into(), value: v.into() }
    }
    fn append(v: &str) -> KvOp {
        KvOp::Append { key: "k".into(), value: v.into() }
    }
    fn get() -> KvOp {
        KvOp::Get { key: "k".into() }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![op(1, put("a"), "", 0, 10), op(1, get(), "a", 20, 30)];
        assert_eq!(check_history(&KvModel, &h, 1 << 20), CheckOutcome::Linearizable);
    }

    #[test]
    fn stale_read_after_completed_write_is_caught() {
        let h = vec![
            op(1, put("a"), "", 0, 10),
            op(1, put("b"), "", 20, 30),
            op(2, get(), "a", 40, 50),
        ];
        assert!(matches!(
            check_history(&KvModel, &h, 1 << 20),
            CheckOutcome::NotLinearizable { .. }
        ));
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let h = vec![
            op(1, put("a"), "", 0, 100),
            op(2, put("b"), "", 10, 90),
            op(3, get(), "a", 95, 120),
            op(4, get(), "a", 130, 140),
        ];
        assert_eq!(check_history(&KvModel, &h, 1 << 20), CheckOutcome::Linearizable);
    }

    #[test]
    fn unknown_outcome_write_may_or_may_not_happen() {
        let h = vec![
            op(1, append("x"), "", 0, u64::MAX),
            op(2, get(), "", 10, 20),
            op(2, get(), "x", 30, 40),
        ];
        assert_eq!(check_history(&KvModel, &h, 1 << 20), CheckOutcome::Linearizable);
        // But once observed it cannot be unobserved.
        let h = vec![
            op(1, append("x"), "", 0, u64::MAX),
            op(2, get(), "x", 10, 20),
            op(2, get(), "", 30, 40),
        ];
        assert!(matches!(
            check_history(&KvModel, &h, 1 << 20),
            CheckOutcome::NotLinearizable { .. }
        ));
    }

    #[test]
    fn lost_append_is_caught() {
        let h = vec![
            op(1, append("x"), "", 0, 10),
            op(2, append("y"), "", 20, 30),
            op(3, get(), "y", 40, 50),
        ];
        assert!(matches!(
            check_history(&KvModel, &h, 1 << 20),
            CheckOutcome::NotLinearizable { .. }
        ));
    }

    #[test]
    fn keys_are_independent() {
        let h = vec![
            op(1, KvOp::Put { key: "a".into(), value: "1".into() }, "", 0, 10),
            op(2, KvOp::Get { key: "b".into() }, "", 20, 30),
            op(2, KvOp::Get { key: "a".into() }, "1", 40, 50),
        ];
        assert_eq!(check_history(&KvModel, &h, 1 << 20), CheckOutcome::Linearizable);
    }

    /// A history of `n` operations from `clients` clients whose results come from executing
    /// them in a real order, each at a random instant inside its call-return window.
    fn generated_history(n: usize, clients: u64, seed: u64) -> Vec<Operation<KvOp, String>> {
        use crate::sim::kv::KvStore;
        let mut rng = crate::rng::Rng::new(seed);
        let mut next_free = vec![0u64; clients as usize];
        let mut planned = Vec::new();
        for i in 0..n {
            let client = rng.below(clients);
            let call = next_free[client as usize] + rng.range(0, 20);
            let at = call + rng.range(0, 50);
            let ret = at + rng.range(0, 50);
            next_free[client as usize] = ret + 1;
            let key = format!("k{}", rng.below(4));
            let op = match rng.below(3) {
                0 => KvOp::Get { key },
                1 => KvOp::Put { key, value: format!("<{i}>") },
                _ => KvOp::Append { key, value: format!("<{i}>") },
            };
            planned.push((at, client, op, call, ret));
        }
        planned.sort_by_key(|p| p.0);
        let mut kv = KvStore::default();
        planned
            .into_iter()
            .map(|(_, client, op, call, ret)| {
                let output = kv.execute(&op);
                Operation { client, input: op, output, call, ret }
            })
            .collect()
    }

    #[test]
    fn thousands_of_overlapping_operations_are_decided() {
        let history = generated_history(4_000, 6, 7);
        assert_eq!(check_history(&KvModel, &history, 1 << 26), CheckOutcome::Linearizable);
        // One read that returns a value from the past makes it not linearizable.
        let mut broken = history;
        let i = broken
            .iter()
            .position(|op| matches!(op.input, KvOp::Get { .. }) && op.output.len() > 6)
            .expect("a read of a written key");
        broken[i].output.truncate(3);
        assert!(matches!(
            check_history(&KvModel, &broken, 1 << 26),
            CheckOutcome::NotLinearizable { .. }
        ));
    }
}
