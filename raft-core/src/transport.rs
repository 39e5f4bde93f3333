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
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::membership::Membership;
use crate::message::Message;
use crate::types::{GroupId, NodeId};

/// The group id of the liveness pings nodes exchange (never a Raft group): while every group
/// between two nodes sleeps, one ping per pair of nodes says both are alive (see
/// [`Runtime::watch_peers`](crate::node::Runtime::watch_peers)).
pub const LIVENESS_GROUP: GroupId = u64::MAX;

/// When each peer was last heard from, by any message: kept by a [`Router`] for a runtime's
/// liveness check.
#[derive(Default)]
pub struct PeerLiveness {
    last: Mutex<HashMap<NodeId, Instant>>,
    /// Peers whose "hello" ping (their first after starting) arrived, not yet taken.
    hellos: Mutex<Vec<NodeId>>,
    /// Called after a hello arrives (a runtime's liveness check then acts on it at once).
    on_hello: Mutex<Option<HelloBell>>,
}

type HelloBell = Arc<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for PeerLiveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLiveness")
            .field("last", &self.last)
            .field("hellos", &self.hellos)
            .finish_non_exhaustive()
    }
}

/// The `round` of a liveness ping that says its sender just started (its groups are all
/// registered and know no leader yet).
pub const LIVENESS_HELLO: u64 = 1;

impl PeerLiveness {
    /// Records that `peer` was heard from now.
    pub fn heard(&self, peer: NodeId) {
        self.last.lock().insert(peer, Instant::now());
    }

    /// When `peer` was last heard from, if ever.
    pub fn last_heard(&self, peer: NodeId) -> Option<Instant> {
        self.last.lock().get(&peer).copied()
    }

    /// Every peer heard from so far, with when.
    pub fn peers(&self) -> Vec<(NodeId, Instant)> {
        self.last.lock().iter().map(|(&p, &t)| (p, t)).collect()
    }

    /// Records that `peer` said hello (it just started), and calls the bell set with
    /// [`on_hello`](Self::on_hello).
    pub fn hello(&self, peer: NodeId) {
        self.hellos.lock().push(peer);
        let bell = self.on_hello.lock().clone();
        if let Some(bell) = bell {
            bell();
        }
    }

    /// Has `bell` called after each hello (replacing any earlier one).
    pub fn on_hello(&self, bell: impl Fn() + Send + Sync + 'static) {
        *self.on_hello.lock() = Some(Arc::new(bell));
    }

    /// The peers that said hello since the last call.
    pub fn take_hellos(&self) -> Vec<NodeId> {
        std::mem::take(&mut *self.hellos.lock())
    }
}

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
/// A message for a group with no registered node is dropped and counted, by why
/// ([`RouteError`]): the group is not on this node (not started yet, or never here), or it was
/// destroyed here. A destroyed group's id is never registered again, so a late message of its
/// old incarnation can never reach a new group of the same id.
pub struct Router {
    groups: RwLock<HashMap<GroupId, Arc<dyn Inbound>>>,
    /// This router among every router of the process (the key of the threads' route caches).
    id: u64,
    /// Bumped after every change to `groups`: a thread's cached routes are good while it
    /// matches (see [`Router::with_target`]).
    generation: AtomicU64,
    /// Groups destroyed on this node: their ids are not reused.
    destroyed: RwLock<std::collections::HashSet<GroupId>>,
    unknown: AtomicU64,
    to_destroyed: AtomicU64,
    liveness: Arc<PeerLiveness>,
}

/// Why a message, a proposal or a registration names a group this node cannot take it for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// No node of the group is on this node (not started yet, or never here). Nothing was done.
    #[error("group {0} is not on this node")]
    UnknownGroup(GroupId),
    /// The group was destroyed on this node; its id is not used again. Nothing was done.
    #[error("group {0} was destroyed on this node")]
    Destroyed(GroupId),
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

impl Default for Router {
    fn default() -> Router {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Router {
            groups: RwLock::default(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            destroyed: RwLock::default(),
            unknown: AtomicU64::new(0),
            to_destroyed: AtomicU64::new(0),
            liveness: Arc::default(),
        }
    }
}

/// A thread's copy of the routes of the router it delivers for (a transport's reader serves
/// one), so finding a message's node takes no lock and touches no count shared with the
/// other threads: with many groups a burst holds a run per group, and the shared lock's and
/// the node's reference counts' cache lines went back and forth between the readers once per
/// run.
struct RouteCache {
    router: u64,
    generation: u64,
    routes: HashMap<GroupId, Arc<dyn Inbound>>,
}

/// What routing reads of a message.
#[derive(Clone, Copy)]
struct Address {
    group: GroupId,
    from: NodeId,
    /// A liveness ping that says its sender just started.
    hello: bool,
}

impl Address {
    fn of(msg: &Message) -> Address {
        let hello = msg.group == LIVENESS_GROUP
            && matches!(&msg.body, crate::message::MessageBody::Heartbeat(hb) if hb.round == LIVENESS_HELLO);
        Address { group: msg.group, from: msg.from, hello }
    }
}

/// Most routes a thread keeps (then it starts again: a process with more groups than this
/// delivering to all of them at once pays the shared lock on some lookups).
const ROUTE_CACHE_MAX: usize = 1 << 16;

thread_local! {
    static ROUTES: std::cell::RefCell<RouteCache> = std::cell::RefCell::new(RouteCache {
        router: 0,
        generation: 0,
        routes: HashMap::new(),
    });
}

impl Router {
    /// A router with no groups.
    pub fn new() -> Router {
        Router::default()
    }

    /// A change to the routes: the threads' caches start again at their next lookup.
    fn routes_changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Routes `group`'s messages to `inbound`, replacing any earlier registration.
    ///
    /// # Errors
    /// [`RouteError::Destroyed`] for a group destroyed on this node (its id is not reused).
    pub fn register(&self, group: GroupId, inbound: Arc<dyn Inbound>) -> Result<(), RouteError> {
        if self.destroyed.read().contains(&group) {
            return Err(RouteError::Destroyed(group));
        }
        self.groups.write().insert(group, inbound);
        self.routes_changed();
        Ok(())
    }

    /// Stops routing `group`'s messages (a node stopped for a while: it may be registered
    /// again).
    pub fn unregister(&self, group: GroupId) {
        self.groups.write().remove(&group);
        self.routes_changed();
    }

    /// Stops routing `group`'s messages for good: the group was destroyed on this node, and its
    /// id is refused from now on ([`RouteError::Destroyed`]).
    pub fn destroy(&self, group: GroupId) {
        self.destroyed.write().insert(group);
        self.groups.write().remove(&group);
        self.routes_changed();
    }

    /// Whether messages for `group` would be delivered, and if not, why.
    ///
    /// # Errors
    /// [`RouteError::Destroyed`] or [`RouteError::UnknownGroup`].
    pub fn check(&self, group: GroupId) -> Result<(), RouteError> {
        if self.groups.read().contains_key(&group) {
            Ok(())
        } else if self.destroyed.read().contains(&group) {
            Err(RouteError::Destroyed(group))
        } else {
            Err(RouteError::UnknownGroup(group))
        }
    }

    /// Messages dropped because no node of their group was registered (both kinds).
    pub fn unroutable(&self) -> u64 {
        self.unknown_group() + self.to_destroyed_group()
    }

    /// Messages dropped for a group not on this node.
    pub fn unknown_group(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    /// When each peer was last heard from (every message counts, liveness pings included).
    pub fn liveness(&self) -> Arc<PeerLiveness> {
        self.liveness.clone()
    }

    /// Messages dropped for a group destroyed on this node (late messages of its incarnation).
    pub fn to_destroyed_group(&self) -> u64 {
        self.to_destroyed.load(Ordering::Relaxed)
    }
}

impl Router {
    /// Calls `deliver` with the node of `msg`'s group, found in this thread's cache of the
    /// routes (filled from the shared table on a miss, emptied when the routes changed); a
    /// message with no node is counted instead (the caller recorded that its sender was heard
    /// from). `count` is how many messages `msg` stands for.
    fn with_target(&self, msg: Address, count: u64, deliver: impl FnOnce(&dyn Inbound)) {
        if msg.group == LIVENESS_GROUP {
            if msg.hello {
                self.liveness.hello(msg.from);
            }
            return; // A ping: hearing it was all it was for.
        }
        let generation = self.generation.load(Ordering::Acquire);
        let mut deliver = Some(deliver);
        let _ = ROUTES.try_with(|cell| {
            // Held for the whole delivery, so the route is not cloned; a delivery that comes
            // back to a router on this thread (none of ours does) takes the shared table.
            let Ok(mut cache) = cell.try_borrow_mut() else { return };
            if cache.router != self.id
                || cache.generation != generation
                || cache.routes.len() >= ROUTE_CACHE_MAX
            {
                cache.routes.clear();
                cache.router = self.id;
                cache.generation = generation;
            }
            let target = match cache.routes.entry(msg.group) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let Some(target) = self.groups.read().get(&msg.group).cloned() else { return };
                    e.insert(target)
                }
            };
            if let Some(deliver) = deliver.take() {
                deliver(target.as_ref());
            }
        });
        if let Some(deliver) = deliver {
            if let Some(target) = self.target(msg, count) {
                deliver(target.as_ref());
            }
        }
    }

    /// The node of `msg`'s group, from the shared table; a message with no node is counted.
    fn target(&self, msg: Address, count: u64) -> Option<Arc<dyn Inbound>> {
        if let Some(target) = self.groups.read().get(&msg.group).cloned() {
            return Some(target);
        }
        match self.check(msg.group) {
            Err(RouteError::Destroyed(_)) => {
                self.to_destroyed.fetch_add(count, Ordering::Relaxed);
                tracing::debug!(
                    group = msg.group,
                    from = msg.from,
                    "message for a destroyed group"
                );
            }
            _ => {
                self.unknown.fetch_add(count, Ordering::Relaxed);
                tracing::debug!(group = msg.group, from = msg.from, "message for an unknown group");
            }
        }
        None
    }
}

impl Inbound for Router {
    fn deliver(&self, msg: Message) {
        self.liveness.heard(msg.from);
        let address = Address::of(&msg);
        let mut msg = Some(msg);
        self.with_target(address, 1, |inbound| {
            if let Some(msg) = msg.take() {
                inbound.deliver(msg);
            }
        });
    }

    /// Hands each run of consecutive messages of one group to that group's node together; what
    /// the nodes answer meanwhile (on this thread) leaves together at the end, a write per peer.
    fn deliver_all(&self, msgs: Vec<Message>) {
        // What the groups send leaves together at the end of the burst, and the tasks they
        // queue on a runtime's lanes wake them once.
        crate::node::deferring_wakes(None, || crate::outbox::gathered(|| self.deliver_runs(msgs)));
    }
}

impl Router {
    fn deliver_runs(&self, msgs: Vec<Message>) {
        // Each sender is heard once per burst (a clock read and a lock), not once per group.
        let mut last_from = None;
        for msg in &msgs {
            if last_from != Some(msg.from) {
                self.liveness.heard(msg.from);
                last_from = Some(msg.from);
            }
        }
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
        let (address, count) = (Address::of(&run[0]), run.len() as u64);
        let mut run = Some(run);
        self.with_target(address, count, |inbound| {
            if let Some(run) = run.take() {
                inbound.deliver_all(run);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Heartbeat, MessageBody};

    fn ping(from: NodeId, round: u64) -> Message {
        Message {
            group: LIVENESS_GROUP,
            from,
            to: 1,
            term: 0,
            body: MessageBody::Heartbeat(Heartbeat { commit: 0, round }),
        }
    }

    #[test]
    fn pings_are_heard_and_a_hello_is_kept_until_taken() {
        let router = Router::new();
        let liveness = router.liveness();
        router.deliver(ping(2, 0));
        assert!(liveness.last_heard(2).is_some());
        assert!(liveness.take_hellos().is_empty(), "an ordinary ping says no hello");
        router.deliver_all(vec![ping(3, LIVENESS_HELLO), ping(2, 0)]);
        assert_eq!(liveness.take_hellos(), vec![3]);
        assert!(liveness.take_hellos().is_empty(), "taken once");
        assert_eq!(router.unknown_group(), 0, "pings are not stale messages");
    }

    /// Counts what reaches it.
    #[derive(Default)]
    struct Count(AtomicU64);

    impl Inbound for Count {
        fn deliver(&self, _: Message) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn beat(group: GroupId) -> Message {
        Message {
            group,
            from: 2,
            to: 1,
            term: 1,
            body: MessageBody::Heartbeat(Heartbeat { commit: 0, round: 0 }),
        }
    }

    /// The thread's cached routes follow every change: a group unregistered or destroyed gets
    /// nothing more, even right after a delivery cached its route, and a new registration is
    /// used at once.
    #[test]
    fn cached_routes_follow_every_change() {
        let (router, other) = (Router::new(), Router::new());
        let (first, second, elsewhere) =
            (Arc::new(Count::default()), Arc::new(Count::default()), Arc::new(Count::default()));
        router.register(7, first.clone()).expect("register");
        other.register(7, elsewhere.clone()).expect("register on another router");
        router.deliver_all(vec![beat(7), beat(7)]);
        other.deliver(beat(7));
        router.deliver(beat(7));
        assert_eq!(first.0.load(Ordering::Relaxed), 3, "each router its own routes");
        assert_eq!(elsewhere.0.load(Ordering::Relaxed), 1);
        router.register(7, second.clone()).expect("register again");
        router.deliver(beat(7));
        assert_eq!(second.0.load(Ordering::Relaxed), 1, "the new registration at once");
        router.unregister(7);
        router.deliver_all(vec![beat(7)]);
        assert_eq!(router.unknown_group(), 1);
        router.register(7, second.clone()).expect("register again");
        router.deliver(beat(7));
        router.destroy(7);
        router.deliver(beat(7));
        assert_eq!(second.0.load(Ordering::Relaxed), 2, "nothing after the destroy");
        assert_eq!(first.0.load(Ordering::Relaxed), 3, "nothing after it was replaced");
        assert_eq!(router.to_destroyed_group(), 1);
    }
}
