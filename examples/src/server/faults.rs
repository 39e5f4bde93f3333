//! Fault injection for tests of a real cluster (like Redis's `DEBUG` commands, and off unless
//! the server runs with `--enable-debug-commands`): `RAFTKIT.DEBUG CUT <id>...` drops every
//! Raft message to and from those nodes, `RAFTKIT.DEBUG HEAL` restores them. Client traffic is
//! untouched, so a test can cut a node off from its leader and still ask it questions.
//! `RAFTKIT.DEBUG FAILSYNC` makes the log's syncs fail from then on.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use raft_core::{
    Entry, GroupId, Inbound, Index, LogDamage, LogState, LogStore, LogWrite, Lsn, Membership,
    Message, NodeId, StorageError, Term, Transport,
};

/// The nodes this node's Raft messages are cut off from.
#[derive(Debug, Default)]
pub(crate) struct Cuts {
    ids: RwLock<HashSet<NodeId>>,
    /// Whether any link is cut: every Raft message in and out looks here, and only a cut link
    /// costs them the lock (with many groups, a message's look at the set was 1% of the CPU).
    any: AtomicBool,
}

impl Cuts {
    /// Cuts the links to and from `ids`.
    pub(crate) fn cut(&self, ids: impl IntoIterator<Item = NodeId>) {
        let mut cut = self.ids.write();
        cut.extend(ids);
        self.any.store(!cut.is_empty(), Ordering::Release);
    }

    /// Restores every link.
    pub(crate) fn heal(&self) {
        let mut cut = self.ids.write();
        cut.clear();
        self.any.store(false, Ordering::Release);
    }

    /// Whether any link is cut.
    fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    pub(crate) fn passes(&self, peer: NodeId) -> bool {
        !self.any() || !self.ids.read().contains(&peer)
    }
}

/// What the nodes send through: `inner` itself unless fault injection is `on`, so a server
/// without `--enable-debug-commands` pays nothing per message for it.
pub(crate) fn transport(
    inner: Arc<dyn Transport>,
    cuts: &Arc<Cuts>,
    on: bool,
) -> Arc<dyn Transport> {
    if on {
        Arc::new(CutTransport { inner, cuts: cuts.clone() })
    } else {
        inner
    }
}

/// Where a node's messages are delivered: `inner` itself unless fault injection is `on`.
pub(crate) fn inbound(inner: Arc<dyn Inbound>, cuts: &Arc<Cuts>, on: bool) -> Arc<dyn Inbound> {
    if on {
        Arc::new(CutInbound { inner, cuts: cuts.clone() })
    } else {
        inner
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
        if self.cuts.any() {
            msgs.retain(|m| self.cuts.passes(m.to));
        }
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
        if self.cuts.any() {
            msgs.retain(|m| self.cuts.passes(m.from));
        }
        if !msgs.is_empty() {
            self.inner.deliver_all(msgs);
        }
    }
}

/// `RAFTKIT.DEBUG FAILSYNC`: every later sync of the log fails, as an fsync that returned EIO
/// would. The node stops (the server exits) and a restart brings it back.
#[derive(Debug, Default)]
pub(crate) struct SyncFault(AtomicBool);

impl SyncFault {
    /// Makes every later sync fail.
    pub(crate) fn arm(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A log store whose syncs fail once its [`SyncFault`] is armed; otherwise the store itself.
pub(crate) struct FaultyLog {
    pub(crate) inner: Arc<dyn LogStore>,
    pub(crate) fault: Arc<SyncFault>,
}

impl LogStore for FaultyLog {
    fn write(&self, batch: &[LogWrite<'_>]) -> Result<Lsn, StorageError> {
        self.inner.write(batch)
    }
    fn sync(&self, lsn: Lsn) -> Result<(), StorageError> {
        if self.fault.0.load(Ordering::Acquire) {
            return Err(StorageError::Io(std::io::Error::other(
                "fsync failed (RAFTKIT.DEBUG FAILSYNC)",
            )));
        }
        self.inner.sync(lsn)
    }
    fn durable_lsn(&self) -> Lsn {
        self.inner.durable_lsn()
    }
    fn compact(&self, group: GroupId, through: Index, term: Term) -> Result<Lsn, StorageError> {
        self.inner.compact(group, through, term)
    }
    fn entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(group, lo, hi, max_bytes)
    }
    fn term(&self, group: GroupId, index: Index) -> Result<Term, StorageError> {
        self.inner.term(group, index)
    }
    fn log_state(&self, group: GroupId) -> Result<LogState, StorageError> {
        self.inner.log_state(group)
    }
    fn groups(&self) -> Result<Vec<GroupId>, StorageError> {
        self.inner.groups()
    }
    fn config_entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.config_entries(group, lo, hi)
    }
    fn damage(&self, group: GroupId) -> Option<LogDamage> {
        self.inner.damage(group)
    }
    fn take_damage_found(&self, group: GroupId) -> Option<Index> {
        self.inner.take_damage_found(group)
    }
    fn remove_group(&self, group: GroupId) -> Result<Lsn, StorageError> {
        self.inner.remove_group(group)
    }
    fn mark_repaired(&self, group: GroupId) -> Result<Lsn, StorageError> {
        self.inner.mark_repaired(group)
    }
}
