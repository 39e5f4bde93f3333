//! The simulator's model of what each node's disk holds durably, against which every
//! acknowledgement and every recovery after a crash is checked.

use super::CrashableStore;
use crate::message::Message;
use crate::storage::Lsn;
use crate::types::{GroupId, HardState, Index, Term};

/// What a write changes in the durable model once the store reports it durable.
#[derive(Debug)]
pub(super) struct ModelWrite {
    pub(super) lsn: Lsn,
    /// A compaction through `(index, term)`, applied before the rest.
    pub(super) compact: Option<(Index, Term)>,
    pub(super) hard_state: Option<HardState>,
    /// `(first index, terms)` of the entries written.
    pub(super) entries: Option<(Index, Vec<Term>)>,
}

/// A message that waits for durability, with the `(index, term)` it claims durable, if any.
pub(super) struct Ack {
    pub(super) msg: Message,
    pub(super) claims: Option<(Index, Term)>,
}

/// What the simulator knows a node's disk holds durably: every synced write, applied in order.
/// A crash must leave the store exactly like this.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct DurableModel {
    pub(super) hard_state: HardState,
    /// The compaction point: entries up to here live in a snapshot.
    pub(super) base_index: Index,
    pub(super) base_term: Term,
    /// `terms[i - base_index - 1]` is the term of entry `i`.
    pub(super) terms: Vec<Term>,
}

impl DurableModel {
    pub(super) fn apply(&mut self, write: &ModelWrite) {
        if let Some((index, term)) = write.compact {
            self.compact(index, term);
        }
        if let Some(hs) = write.hard_state {
            self.hard_state = hs;
        }
        if let Some((first, terms)) = &write.entries {
            self.terms.truncate((*first - self.base_index - 1) as usize);
            self.terms.extend_from_slice(terms);
        }
    }

    /// `LogStore::compact` semantics: keep what follows `(index, term)` if held, else discard.
    pub(super) fn compact(&mut self, index: Index, term: Term) {
        if index <= self.base_index {
            return;
        }
        if self.term(index) == Some(term) {
            self.terms.drain(..(index - self.base_index) as usize);
        } else {
            self.terms.clear();
        }
        self.base_index = index;
        self.base_term = term;
    }

    /// Damage took the entries from `from` on.
    pub(super) fn cut_from(&mut self, from: Index) {
        if from > self.base_index {
            self.terms.truncate((from - self.base_index - 1) as usize);
        }
    }

    pub(super) fn term(&self, index: Index) -> Option<Term> {
        if index == self.base_index {
            Some(self.base_term)
        } else if index < self.base_index {
            None
        } else {
            self.terms.get((index - self.base_index - 1) as usize).copied()
        }
    }
}

/// What a store holds for `group`, in the durable model's terms.
pub(super) fn recovered_model(
    store: &dyn CrashableStore,
    group: GroupId,
) -> Result<DurableModel, String> {
    let state = store.log_state(group).map_err(|e| e.to_string())?;
    let terms = if state.last_index < state.first_index {
        Vec::new()
    } else {
        store
            .entries(group, state.first_index, state.last_index, u64::MAX)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|e| e.term)
            .collect()
    };
    Ok(DurableModel {
        hard_state: state.hard_state,
        base_index: state.first_index - 1,
        base_term: state.base_term,
        terms,
    })
}
