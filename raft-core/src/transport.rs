//! The transport seam: how messages leave a node ([`Transport`]) and how received ones reach it
//! ([`Inbound`]), plus a [`Router`] that hands each message to its group's node.
//!
//! A transport never blocks the node: [`Transport::send`] queues and returns, and may drop a
//! message (a full queue, a peer that is down). Raft tolerates loss, duplication and reordering;
//! what it needs is that nothing is delivered that was not sent, so a transport must check the
//! integrity of what it receives (raft-net-tcp checksums every frame).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::membership::Membership;
use crate::message::Message;
use crate::types::GroupId;

/// Carries messages to peers. Implementations are shared by every group of a process.
pub trait Transport: Send + Sync {
    /// Queues `msg` for node `msg.to`. Never blocks; a message that cannot be queued is dropped
    /// (and should be counted): Raft sends again what matters.
    fn send(&self, msg: Message);

    /// Queues several messages, in order.
    fn send_all(&self, msgs: Vec<Message>) {
        for msg in msgs {
            self.send(msg);
        }
    }

    /// The configuration of `group` on this node changed (see
    /// [`Ready::membership`](crate::Ready::membership)): a transport that connects by address
    /// learns the new members' [`addresses`](Membership::addresses) here, before any message
    /// goes to them, and may let go of nodes no group of this process has as a member any
    /// more. The default does nothing (a transport whose peers are fixed, or found otherwise).
    fn membership_changed(&self, group: GroupId, membership: &Membership) {
        let _ = (group, membership);
    }
}

impl<T: Transport + ?Sized> Transport for Arc<T> {
    fn send(&self, msg: Message) {
        (**self).send(msg)
    }
    fn send_all(&self, msgs: Vec<Message>) {
        (**self).send_all(msgs)
    }
    fn membership_changed(&self, group: GroupId, membership: &Membership) {
        (**self).membership_changed(group, membership)
    }
}

/// Where a transport delivers what it received.
///
/// A delivery may do the node's work on the delivering thread (the node driver runs its core
/// there and applies what commits, but never waits for a disk), which saves a
/// hand-off between threads per message: a transport delivers from its own threads, never while
/// holding a lock its senders need.
pub trait Inbound: Send + Sync {
    /// Hands one received message to the node (or nodes) behind this inbound.
    fn deliver(&self, msg: Message);

    /// Hands over several messages received together, in order, so the node handles them in
    /// one round. A transport that reads a burst of frames should use this.
    fn deliver_all(&self, msgs: Vec<Message>) {
        for msg in msgs {
            self.deliver(msg);
        }
    }
}

impl<T: Inbound + ?Sized> Inbound for Arc<T> {
    fn deliver(&self, msg: Message) {
        (**self).deliver(msg)
    }
    fn deliver_all(&self, msgs: Vec<Message>) {
        (**self).deliver_all(msgs)
    }
}

/// Routes received messages to the node of their group: one transport, many groups.
///
/// Messages for a group with no registered node are dropped and counted (the group may not be
/// started yet, or was removed from this process).
#[derive(Default)]
pub struct Router {
    groups: RwLock<HashMap<GroupId, Arc<dyn Inbound>>>,
    unroutable: AtomicU64,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut groups: Vec<GroupId> = self.groups.read().keys().copied().collect();
        groups.sort_unstable();
        f.debug_struct("Router")
            .field("groups", &groups)
            .field("unroutable", &self.unroutable())
            .finish()
    }
}

impl Router {
    /// A router with no groups.
    pub fn new() -> Router {
        Router::default()
    }

    /// Routes `group`'s messages to `inbound`, replacing any earlier registration.
    pub fn register(&self, group: GroupId, inbound: Arc<dyn Inbound>) {
        self.groups.write().insert(group, inbound);
    }

    /// Stops routing `group`'s messages.
    pub fn unregister(&self, group: GroupId) {
        self.groups.write().remove(&group);
    }

    /// Messages dropped because no node of their group was registered.
    pub fn unroutable(&self) -> u64 {
        self.unroutable.load(Ordering::Relaxed)
    }
}

impl Router {
    fn target(&self, msg: &Message) -> Option<Arc<dyn Inbound>> {
        let target = self.groups.read().get(&msg.group).cloned();
        if target.is_none() {
            self.unroutable.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(group = msg.group, from = msg.from, "message for an unknown group");
        }
        target
    }
}

impl Inbound for Router {
    fn deliver(&self, msg: Message) {
        if let Some(inbound) = self.target(&msg) {
            inbound.deliver(msg);
        }
    }

    /// Hands each run of consecutive messages of one group to that group's node together.
    fn deliver_all(&self, msgs: Vec<Message>) {
        let mut run: Vec<Message> = Vec::new();
        let mut run_group = None;
        for msg in msgs {
            if run_group != Some(msg.group) && !run.is_empty() {
                self.deliver_run(std::mem::take(&mut run));
            }
            run_group = Some(msg.group);
            run.push(msg);
        }
        if !run.is_empty() {
            self.deliver_run(run);
        }
    }
}

impl Router {
    /// Delivers messages of one group.
    fn deliver_run(&self, run: Vec<Message>) {
        match self.target(&run[0]) {
            Some(inbound) => inbound.deliver_all(run),
            None => {
                // Counted once above; the rest of the run is just as unroutable.
                self.unroutable.fetch_add(run.len() as u64 - 1, Ordering::Relaxed);
            }
        }
    }
}
