//! Fault injection for tests of a real cluster (like Redis's `DEBUG` commands, and off unless
//! the server runs with `--enable-debug-commands`): `RAFTKIT.DEBUG CUT <id>...` drops every
//! Raft message to and from those nodes, `RAFTKIT.DEBUG HEAL` restores them. Client traffic is
//! untouched, so a test can cut a node off from its leader and still ask it questions.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::RwLock;
use raft_core::{GroupId, Inbound, Membership, Message, NodeId, Transport};

/// The nodes this node's Raft messages are cut off from.
#[derive(Debug, Default)]
pub(crate) struct Cuts(RwLock<HashSet<NodeId>>);

impl Cuts {
    /// Cuts the links to and from `ids`.
    pub(crate) fn cut(&self, ids: impl IntoIterator<Item = NodeId>) {
        self.0.write().extend(ids);
    }

    /// Restores every link.
    pub(crate) fn heal(&self) {
        self.0.write().clear();
    }

    fn passes(&self, peer: NodeId) -> bool {
        let cut = self.0.read();
        cut.is_empty() || !cut.contains(&peer)
    }
}

/// A transport that drops messages to cut nodes.
pub(crate) struct CutTransport {
    pub(crate) inner: Arc<dyn Transport>,
    pub(crate) cuts: Arc<Cuts>,
}

impl Transport for CutTransport {
    fn send(&self, msg: Message) {
        if self.cuts.passes(msg.to) {
            self.inner.send(msg);
        }
    }

    fn send_all(&self, mut msgs: Vec<Message>) {
        msgs.retain(|m| self.cuts.passes(m.to));
        if !msgs.is_empty() {
            self.inner.send_all(msgs);
        }
    }

    fn membership_changed(&self, group: GroupId, membership: &Membership) {
        self.inner.membership_changed(group, membership);
    }
}

/// An inbound that drops messages from cut nodes.
pub(crate) struct CutInbound {
    pub(crate) inner: Arc<dyn Inbound>,
    pub(crate) cuts: Arc<Cuts>,
}

impl Inbound for CutInbound {
    fn deliver(&self, msg: Message) {
        if self.cuts.passes(msg.from) {
            self.inner.deliver(msg);
        }
    }

    fn deliver_all(&self, mut msgs: Vec<Message>) {
        msgs.retain(|m| self.cuts.passes(m.from));
        if !msgs.is_empty() {
            self.inner.deliver_all(msgs);
        }
    }
}
