//! The Raft safety properties (Raft §5.2–5.4, Figure 3), checked by the simulator after every
//! step and at every write and apply, across all nodes.
//!
//! - **Election Safety**: at most one leader per term.
//! - **Leader Append-Only**: a leader never overwrites or deletes entries in its log.
//! - **Log Matching**: two entries with the same index and term hold the same command and are
//!   preceded by identical logs.
//! - **Leader Completeness**: an entry committed in a term is in the log of every leader of a
//!   later term.
//! - **State Machine Safety**: no two nodes apply different entries at the same index.
//!
//! Plus: committed entries never change and are never truncated.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::types::{Entry, EntryKind, Index, NodeId, Term};
use crate::Raft;

/// A broken safety property: which one, and the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The property's name ("election safety", "log matching", ...).
    pub property: &'static str,
    /// What was observed.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} violated: {}", self.property, self.detail)
    }
}

fn violation(property: &'static str, detail: String) -> Violation {
    Violation { property, detail }
}

/// What an entry is, reduced to what identity needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryPrint {
    kind: EntryKind,
    data_hash: u64,
    /// The term of the entry before it, in the log it was seen in.
    prev_term: Term,
}

fn data_hash(entry: &Entry) -> u64 {
    let mut h = DefaultHasher::new();
    entry.data.hash(&mut h);
    h.finish()
}

/// When a node decided a write (see [`SafetyChecker::check_write`]).
#[derive(Clone, Copy, Debug)]
pub struct Decided {
    /// The node led.
    pub leader: bool,
    /// Entries known committed anywhere.
    pub committed: usize,
}

/// Cluster-wide memory of what every node has said, to check the properties against.
#[derive(Debug, Default)]
pub struct SafetyChecker {
    leaders: HashMap<Term, NodeId>,
    /// Every `(index, term)` ever written by any node.
    entries: HashMap<(Index, Term), EntryPrint>,
    /// `committed[i - 1]` is the term of the entry committed at index `i`.
    committed: Vec<Term>,
    /// `(committed index, term of the node that first reported it)`, both growing.
    commit_marks: Vec<(Index, Term)>,
    /// Per node, how far its commit index has been checked.
    commit_checked: HashMap<NodeId, Index>,
    /// `applied[i - 1]` is the `(term, data hash)` of the entry applied at index `i`.
    applied: Vec<(Term, u64)>,
    /// The checksum of every snapshot taken, by index: every node's state machine must write
    /// the same bytes for the same index.
    snapshot_checksums: HashMap<Index, (NodeId, u32)>,
}

impl SafetyChecker {
    /// A checker that has seen nothing.
    pub fn new() -> SafetyChecker {
        SafetyChecker::default()
    }

    /// What [`check_write`](SafetyChecker::check_write) needs to know of a write decided now.
    pub fn decided_now(&self, node: &Raft) -> Decided {
        Decided { leader: node.is_leader(), committed: self.committed.len() }
    }

    /// The highest index known committed anywhere.
    pub fn committed_index(&self) -> Index {
        self.committed.len() as Index
    }

    /// Checks entries a node is about to write, given what its store holds (`stored_term(i)`,
    /// before the write) and whether the node is leader in the entries' term.
    ///
    /// `decided` is when the node decided the write, for a write that reaches the store later
    /// (held while its disk was full): whether it led then, and how many entries were known
    /// committed then. An entry committed after a stale follower decided to replace it is not
    /// its fault (the majority that committed it had moved on), so only those count.
    pub fn check_write(
        &mut self,
        node: &Raft,
        entries: &[Entry],
        store_last_index: Index,
        stored_term: impl Fn(Index) -> Option<Term>,
        decided: Option<Decided>,
    ) -> Result<(), Violation> {
        let Some(first) = entries.first() else { return Ok(()) };
        let id = node.id();
        let decided = decided.unwrap_or_else(|| self.decided_now(node));
        if first.index <= store_last_index {
            // A suffix is being replaced, which only a follower may do.
            if decided.leader {
                return Err(violation(
                    "leader append-only",
                    format!(
                        "leader {id} (term {}) replaces its own entry {} (store ends at {})",
                        node.term(),
                        first.index,
                        store_last_index
                    ),
                ));
            }
            let known = self.committed[..decided.committed.min(self.committed.len())]
                .get(first.index as usize - 1);
            if let Some(&committed_term) = known {
                if stored_term(first.index) == Some(committed_term) && first.term != committed_term
                {
                    return Err(violation(
                        "committed entries are never truncated",
                        format!(
                            "node {id} replaces committed entry ({}, {committed_term}) with term {}",
                            first.index, first.term
                        ),
                    ));
                }
            }
        }
        let mut prev_term = stored_term(first.index - 1);
        for entry in entries {
            let print = EntryPrint {
                kind: entry.kind,
                data_hash: data_hash(entry),
                prev_term: prev_term.unwrap_or(0),
            };
            match self.entries.get(&(entry.index, entry.term)) {
                Some(seen) if *seen != print => {
                    return Err(violation(
                        "log matching",
                        format!(
                            "node {id} holds ({}, {}) as {:?} but another log had {:?}",
                            entry.index, entry.term, print, seen
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    self.entries.insert((entry.index, entry.term), print);
                }
            }
            prev_term = Some(entry.term);
        }
        Ok(())
    }

    /// Checks one entry a node applies, `expected_index` being the index it must apply next.
    pub fn check_apply(
        &mut self,
        id: NodeId,
        entry: &Entry,
        expected_index: Index,
    ) -> Result<(), Violation> {
        if entry.index != expected_index {
            return Err(violation(
                "state machine safety",
                format!("node {id} applies index {} where {expected_index} was next", entry.index),
            ));
        }
        let print = (entry.term, data_hash(entry));
        let slot = entry.index as usize - 1;
        if let Some(seen) = self.applied.get(slot) {
            if *seen != print {
                return Err(violation(
                    "state machine safety",
                    format!(
                        "node {id} applies ({}, term {}) but another node applied term {} there",
                        entry.index, entry.term, seen.0
                    ),
                ));
            }
        } else {
            debug_assert_eq!(slot, self.applied.len(), "apply slots fill in order");
            self.applied.push(print);
        }
        Ok(())
    }

    /// Checks a snapshot a node restores its state machine from: it must hold committed entries
    /// only, ending with the entry committed at its index.
    pub fn check_snapshot(&self, id: NodeId, index: Index, term: Term) -> Result<(), Violation> {
        match self.committed.get((index as usize).wrapping_sub(1)) {
            Some(&t) if t == term => Ok(()),
            other => Err(violation(
                "state machine safety",
                format!(
                    "node {id} restores a snapshot at ({index}, term {term}) but the entry committed there is {other:?}"
                ),
            )),
        }
    }

    /// Checks a snapshot a node took of its own state machine at `index` against the snapshots
    /// other nodes took there (same entries applied, same state, same bytes).
    pub fn check_snapshot_taken(
        &mut self,
        id: NodeId,
        index: Index,
        term: Term,
        checksum: u32,
    ) -> Result<(), Violation> {
        self.check_snapshot(id, index, term)?;
        match self.snapshot_checksums.get(&index) {
            Some(&(other, seen)) if seen != checksum => Err(violation(
                "state machine safety",
                format!(
                    "node {id} snapshots index {index} with checksum {checksum:#x}, node {other} had {seen:#x}"
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.snapshot_checksums.insert(index, (id, checksum));
                Ok(())
            }
        }
    }

    /// Checks the live nodes after a step.
    pub fn check_nodes<'a>(
        &mut self,
        nodes: impl Iterator<Item = &'a Raft> + Clone,
    ) -> Result<(), Violation> {
        for node in nodes.clone() {
            if node.is_leader() {
                let term = node.term();
                if let Some(&other) = self.leaders.get(&term) {
                    if other != node.id() {
                        return Err(violation(
                            "election safety",
                            format!("nodes {other} and {} both lead term {term}", node.id()),
                        ));
                    }
                } else {
                    self.leaders.insert(term, node.id());
                }
            }
            self.observe_commit(node)?;
        }
        for node in nodes {
            if node.is_leader() {
                self.check_leader_completeness(node)?;
            }
        }
        Ok(())
    }

    /// Forgets what node `id` reported (its disk was wiped: it starts again from an empty log).
    pub fn forget_node(&mut self, id: NodeId) {
        self.commit_checked.remove(&id);
    }

    /// Checks a node's commit index against what was committed before. The simulator calls it
    /// before the node applies (and may compact) what it committed, and after every event.
    pub fn observe_commit(&mut self, node: &Raft) -> Result<(), Violation> {
        let id = node.id();
        let checked = self.commit_checked.entry(id).or_insert(0);
        let commit = node.commit_index();
        if commit <= *checked {
            return Ok(());
        }
        for index in *checked + 1..=commit {
            let Some(term) = node.term_at(index) else {
                if index <= self.committed.len() as Index {
                    // Compacted into a snapshot on this node; its commit was checked on the
                    // node that committed it first.
                    continue;
                }
                return Err(violation(
                    "log matching",
                    format!("node {id} reports index {index} committed but does not hold it"),
                ));
            };
            match self.committed.get(index as usize - 1) {
                Some(&t) if t != term => {
                    return Err(violation(
                        "state machine safety",
                        format!(
                            "node {id} commits ({index}, term {term}) but ({index}, term {t}) was committed before"
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    debug_assert_eq!(index as usize - 1, self.committed.len());
                    self.committed.push(term);
                }
            }
        }
        *checked = commit;
        let top = self.committed.len() as Index;
        if self.commit_marks.last().is_none_or(|&(i, _)| i < top) {
            let observed_in = node.term();
            let term = self.commit_marks.last().map_or(observed_in, |&(_, t)| t.max(observed_in));
            self.commit_marks.push((top, term));
        }
        Ok(())
    }

    fn check_leader_completeness(&self, leader: &Raft) -> Result<(), Violation> {
        // Entries reported committed by a node in term t were committed in a term <= t, so
        // every leader of a term above t must hold them.
        let term = leader.term();
        let marks = self.commit_marks.partition_point(|&(_, t)| t < term);
        let Some(&(index, _)) = marks.checked_sub(1).and_then(|m| self.commit_marks.get(m)) else {
            return Ok(());
        };
        let committed_term = self.committed[index as usize - 1];
        if index + 1 < leader.first_index() {
            // Compacted into the leader's snapshot, which only ever holds committed entries.
            return Ok(());
        }
        if leader.term_at(index) != Some(committed_term) {
            return Err(violation(
                "leader completeness",
                format!(
                    "leader {} of term {term} holds term {:?} at index {index}, where term {committed_term} was committed",
                    leader.id(),
                    leader.term_at(index)
                ),
            ));
        }
        Ok(())
    }
}
