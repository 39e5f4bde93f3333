//! An in-memory [`Transport`] for nodes of one process: [`MemNetwork`] and its per-node
//! [`MemTransport`]. For tests, examples and single-process deployments of many groups.
//!
//! It behaves like a network transport where it matters to Raft and to the node driver:
//! sending never blocks (each node has a bounded queue; a full queue, a node that left and a cut
//! link drop the message and count it), and each node's messages are delivered by its own
//! delivery thread, in the order they were queued, a batch at a time through
//! [`Inbound::deliver_all`], never on the sender's thread.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::message::Message;
use crate::transport::{Inbound, Transport};
use crate::types::NodeId;

/// The nodes of one process and the links between them. Cloning shares the network.
#[derive(Clone)]
pub struct MemNetwork {
    inner: Arc<Network>,
}

struct Network {
    mailboxes: RwLock<HashMap<NodeId, Arc<Mailbox>>>,
    /// Directed links that drop everything.
    cut: RwLock<HashSet<(NodeId, NodeId)>>,
    queue_max: usize,
}

/// A node's queue of received messages and the thread that delivers them.
struct Mailbox {
    queue: Mutex<VecDeque<Message>>,
    ready: Condvar,
    closed: AtomicBool,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut nodes: Vec<NodeId> = self.inner.mailboxes.read().keys().copied().collect();
        nodes.sort_unstable();
        f.debug_struct("MemNetwork").field("nodes", &nodes).finish()
    }
}

impl MemNetwork {
    /// A network whose nodes each queue at most `queue_max` undelivered messages.
    pub fn new(queue_max: usize) -> MemNetwork {
        let inner = Network {
            mailboxes: RwLock::new(HashMap::new()),
            cut: RwLock::new(HashSet::new()),
            queue_max: queue_max.max(1),
        };
        MemNetwork { inner: Arc::new(inner) }
    }

    /// Node `id` joins, receiving into `inbound`; returns its transport. Joining again with an
    /// id already present replaces that node (a restart): its undelivered messages are dropped.
    pub fn join(&self, id: NodeId, inbound: Arc<dyn Inbound>) -> std::io::Result<MemTransport> {
        let mailbox = Arc::new(Mailbox {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        let delivering = mailbox.clone();
        std::thread::Builder::new()
            .name(format!("mem-net-{id}"))
            .spawn(move || delivering.deliver_loop(inbound.as_ref()))?;
        if let Some(old) = self.inner.mailboxes.write().insert(id, mailbox) {
            old.close();
        }
        Ok(MemTransport { net: self.inner.clone(), id, dropped: AtomicU64::new(0) })
    }

    /// Node `id` leaves: messages to it are dropped until it joins again.
    pub fn leave(&self, id: NodeId) {
        if let Some(old) = self.inner.mailboxes.write().remove(&id) {
            old.close();
        }
    }

    /// Drops every message from `from` to `to` until [`heal`](MemNetwork::heal).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.inner.cut.write().insert((from, to));
    }

    /// Cuts `id` off from every other node, both ways.
    pub fn isolate(&self, id: NodeId) {
        let others: Vec<NodeId> = self.inner.mailboxes.read().keys().copied().collect();
        let mut cut = self.inner.cut.write();
        for other in others.into_iter().filter(|&o| o != id) {
            cut.insert((id, other));
            cut.insert((other, id));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.inner.cut.write().clear();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for mailbox in self.mailboxes.get_mut().values() {
            mailbox.close();
        }
    }
}

impl Mailbox {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _queue = self.queue.lock(); // The delivery thread sees the flag or the notify.
        self.ready.notify_all();
    }

    /// Delivers everything queued, a batch at a time, until closed.
    fn deliver_loop(&self, inbound: &dyn Inbound) {
        loop {
            let batch: Vec<Message> = {
                let mut queue = self.queue.lock();
                while queue.is_empty() && !self.closed.load(Ordering::SeqCst) {
                    self.ready.wait(&mut queue);
                }
                if self.closed.load(Ordering::SeqCst) {
                    return;
                }
                queue.drain(..).collect()
            };
            inbound.deliver_all(batch);
        }
    }
}

/// One node's side of a [`MemNetwork`].
pub struct MemTransport {
    net: Arc<Network>,
    id: NodeId,
    dropped: AtomicU64,
}

impl std::fmt::Debug for MemTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemTransport")
            .field("id", &self.id)
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl MemTransport {
    /// The node this transport sends for.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Messages this node's sends dropped: a full queue, a node not present, a cut link.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn drop_one(&self, msg: &Message, why: &'static str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(from = self.id, to = msg.to, group = msg.group, why, "message dropped");
    }
}

impl MemTransport {
    /// Queues `run`, messages all to node `to`, under one lock with one wake-up of its
    /// delivery thread; what cannot be queued is dropped and counted.
    fn queue_run(&self, to: NodeId, run: impl Iterator<Item = Message>) {
        let cut = self.net.cut.read().contains(&(self.id, to));
        let mailbox = if cut { None } else { self.net.mailboxes.read().get(&to).cloned() };
        let Some(mailbox) = mailbox else {
            let why = if cut { "link cut" } else { "no such node" };
            run.for_each(|msg| self.drop_one(&msg, why));
            return;
        };
        let mut queue = mailbox.queue.lock();
        for msg in run {
            if queue.len() >= self.net.queue_max {
                self.drop_one(&msg, "queue full");
            } else {
                queue.push_back(msg);
            }
        }
        drop(queue);
        mailbox.ready.notify_one();
    }
}

impl Transport for MemTransport {
    fn send(&self, msg: Message) {
        self.queue_run(msg.to, std::iter::once(msg));
    }

    /// Each run of messages to one node (a runtime sorts what it sends by peer) is queued under
    /// one lock with one wake-up of the node's delivery thread.
    fn send_all(&self, msgs: Vec<Message>) {
        let mut msgs = msgs.into_iter().peekable();
        while let Some(first) = msgs.next() {
            let to = first.to;
            let rest = std::iter::from_fn(|| msgs.next_if(|m| m.to == to));
            self.queue_run(to, std::iter::once(first).chain(rest));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Heartbeat, MessageBody};
    use parking_lot::{Condvar, Mutex};
    use std::time::Duration;

    /// Records what reaches a node, in order.
    #[derive(Default)]
    struct Seen {
        msgs: Mutex<Vec<(NodeId, u64)>>,
        bell: Condvar,
    }

    impl Inbound for Seen {
        fn deliver(&self, msg: Message) {
            let MessageBody::Heartbeat(hb) = msg.body else { return };
            self.msgs.lock().push((msg.from, hb.round));
            self.bell.notify_all();
        }
    }

    impl Seen {
        fn wait_for(&self, n: usize) -> Vec<(NodeId, u64)> {
            let mut msgs = self.msgs.lock();
            while msgs.len() < n {
                if self.bell.wait_for(&mut msgs, Duration::from_secs(5)).timed_out() {
                    break;
                }
            }
            msgs.clone()
        }
    }

    fn beat(to: NodeId, round: u64) -> Message {
        Message {
            group: 1,
            from: 1,
            to,
            term: 1,
            body: MessageBody::Heartbeat(Heartbeat { commit: 0, round }),
        }
    }

    #[test]
    fn send_all_keeps_each_nodes_order_and_counts_what_it_drops() {
        let net = MemNetwork::new(4);
        let (two, three) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
        let one = net.join(1, Arc::new(Seen::default())).expect("join 1");
        let _two = net.join(2, two.clone()).expect("join 2");
        let _three = net.join(3, three.clone()).expect("join 3");
        // Runs to each node, interleaved, and one to a node that is not there.
        one.send_all(vec![beat(2, 1), beat(2, 2), beat(3, 1), beat(9, 1), beat(2, 3), beat(3, 2)]);
        assert_eq!(two.wait_for(3), vec![(1, 1), (1, 2), (1, 3)]);
        assert_eq!(three.wait_for(2), vec![(1, 1), (1, 2)]);
        assert_eq!(one.dropped(), 1, "the message to node 9");
        // A cut link drops its whole run, and only that run.
        net.cut(1, 3);
        one.send_all(vec![beat(3, 3), beat(3, 4), beat(2, 4)]);
        assert_eq!(two.wait_for(4).last(), Some(&(1, 4)));
        assert_eq!(one.dropped(), 3);
        assert_eq!(three.wait_for(2).len(), 2, "nothing crossed the cut");
    }
}
