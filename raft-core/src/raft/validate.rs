//! Checks on a message before it reaches the node's state: the group and receiver, who may send
//! it (a leader's messages from anyone, answers only from known members), and the protocol's
//! shape (consecutive entries, possible terms, valid membership payloads, snapshot chunks that
//! fit). A message that fails changes nothing.

use super::Raft;
use crate::error::StepError;
use crate::membership::Membership;
use crate::message::{Message, MessageBody};
use crate::types::{Entry, EntryKind, Index, Term};

impl Raft {
    /// Rejects messages that do not belong here or break the protocol's shape, before any
    /// state changes.
    pub(super) fn validate(&self, msg: &Message) -> Result<(), StepError> {
        if msg.group != self.group {
            return Err(StepError::WrongGroup { expected: self.group, got: msg.group });
        }
        if msg.to != self.id {
            return Err(StepError::WrongNode { expected: self.id, got: msg.to });
        }
        // A leader's messages are heard from anyone: the sender may have joined by an entry this
        // node has not received yet, and only its appends can bring that entry. Answers and
        // requests to a leader come from members this node knows of.
        let from_leader = matches!(
            msg.body,
            MessageBody::Append(_)
                | MessageBody::Heartbeat(_)
                | MessageBody::Hibernate(_)
                | MessageBody::InstallSnapshot(_)
                | MessageBody::TimeoutNow
                | MessageBody::ReadIndexResponse(_)
                | MessageBody::Vote(_)
                | MessageBody::NotAMember(_)
        );
        if msg.from == self.id || msg.from == 0 || !(from_leader || self.configs.knows(msg.from)) {
            return Err(StepError::UnknownPeer(msg.from));
        }
        let malformed =
            |reason: String| StepError::Malformed { kind: msg.body.name(), from: msg.from, reason };
        if let MessageBody::Append(req) = &msg.body {
            check_entries(req.prev_index, req.prev_term, &req.entries, msg.term)
                .map_err(malformed)?;
        }
        if let MessageBody::RepairResponse(resp) = &msg.body {
            check_entries(resp.prev_index, resp.prev_term, &resp.entries, msg.term)
                .map_err(malformed)?;
        }
        if let MessageBody::InstallSnapshot(req) = &msg.body {
            let meta = &req.meta;
            let end = req.offset.checked_add(req.data.len() as u64);
            let problem = if meta.group != msg.group {
                Some(format!(
                    "snapshot of group {} in a message of group {}",
                    meta.group, msg.group
                ))
            } else if meta.index == 0 || meta.term == 0 || meta.term > msg.term {
                Some(format!(
                    "snapshot ({}, {}) in a message of term {}",
                    meta.index, meta.term, msg.term
                ))
            } else if meta.membership.voters.is_empty() {
                Some("snapshot with no voters".into())
            } else if let Err(e) = meta.membership.validate() {
                Some(e.to_string())
            } else if end.is_none_or(|end| end > meta.size) {
                Some(format!(
                    "chunk of {} bytes at offset {} runs past the snapshot's {} bytes",
                    req.data.len(),
                    req.offset,
                    meta.size
                ))
            } else if req.done != (end == Some(meta.size)) {
                Some(format!(
                    "done is {} for a chunk ending at {:?} of {}",
                    req.done, end, meta.size
                ))
            } else {
                None
            };
            if let Some(reason) = problem {
                return Err(malformed(reason));
            }
        }
        Ok(())
    }
}

/// Checks entries carried after `(prev_index, prev_term)` in a message of term `msg_term`:
/// indexes consecutive and without overflow, terms that never decrease and never pass the
/// message's, readable configuration payloads.
fn check_entries(
    prev_index: Index,
    prev_term: Term,
    entries: &[Entry],
    msg_term: Term,
) -> Result<(), String> {
    // Reject index overflow up front, so the checks below cannot wrap.
    let count = entries.len() as u64;
    if prev_index.checked_add(count).is_none_or(|last| last == u64::MAX) {
        return Err(format!(
            "{count} entries after prev_index {prev_index} overflow the index space"
        ));
    }
    if prev_term > msg_term {
        return Err(format!("prev_term {prev_term} is above the message term {msg_term}"));
    }
    let mut before = prev_term;
    for (entry, expected) in entries.iter().zip(prev_index + 1..) {
        if entry.kind == EntryKind::Config {
            if let Err(e) = Membership::from_entry_data(&entry.data) {
                return Err(format!("entry {}: {e}", entry.index));
            }
        }
        if entry.index != expected {
            return Err(format!("entry index {} where {expected} was expected", entry.index));
        }
        if entry.term < before || entry.term > msg_term {
            return Err(format!(
                "entry {} has term {} outside [{before}, {msg_term}]",
                entry.index, entry.term
            ));
        }
        before = entry.term;
    }
    Ok(())
}
