//! Nodes on a shared [`Runtime`]: a fixed set of threads runs every node started on it, so one
//! process hosts many groups and a group costs memory, not threads.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use raft_core::node::{Node, NodeOptions, Runtime, RuntimeOptions};
use raft_core::sim::kv::{KvOp, KvStore};
use raft_core::{GroupId, Inbound, MemLogStore, MemSnapshotStore, Message, NodeId, Transport};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Delivers messages between the nodes of many groups in one process.
#[derive(Default)]
struct LocalNet {
    inboxes: RwLock<HashMap<(NodeId, GroupId), Arc<dyn Inbound>>>,
}

struct Port {
    net: Arc<LocalNet>,
}

impl Transport for Port {
    fn send(&self, msg: Message) {
        let inbox = self.net.inboxes.read().get(&(msg.to, msg.group)).cloned();
        if let Some(inbox) = inbox {
            inbox.deliver(msg);
        }
    }
}

/// Threads of this process that belong to one node (a node on its own names its threads
/// `raft-<group>-<id>-<what>`; a runtime's are `raft-core-N`, `raft-apply-N`, `raft-io-N` and
/// `raft-timer`).
fn per_node_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| {
            name.strip_prefix("raft-")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count()
}

/// `groups` groups of three nodes each, all on `runtime`.
struct Groups {
    net: Arc<LocalNet>,
    nodes: HashMap<(NodeId, GroupId), Node<KvStore>>,
    stores: HashMap<NodeId, Arc<MemLogStore>>,
    runtime: Runtime,
    /// Take a snapshot every this many entries, sent in chunks of `chunk_bytes` (0: never).
    snapshot_entries: u64,
    chunk_bytes: u64,
}

impl Groups {
    fn start(groups: u64, runtime: &Runtime) -> Groups {
        let mut g = Groups {
            net: Arc::new(LocalNet::default()),
            nodes: HashMap::new(),
            // One log store per node id, shared by all of its groups (as one WAL would be).
            stores: (1..=3).map(|id| (id, Arc::new(MemLogStore::new()))).collect(),
            runtime: runtime.clone(),
            snapshot_entries: 0,
            chunk_bytes: 0,
        };
        for group in 0..groups {
            for id in 1..=3 {
                g.start_node(id, group);
            }
        }
        g
    }

    fn start_node(&mut self, id: NodeId, group: GroupId) {
        let mut options = NodeOptions::new(id, group, vec![1, 2, 3]);
        options.tick = Duration::from_millis(5);
        options.runtime = Some(self.runtime.clone());
        if self.snapshot_entries > 0 {
            options.raft.snapshot_entries = self.snapshot_entries;
            options.raft.snapshot_chunk_bytes = self.chunk_bytes;
            options.raft.log_keep_entries = 0;
        }
        let node = Node::start(
            options,
            self.stores[&id].clone(),
            Some(Arc::new(MemSnapshotStore::new(2))),
            Arc::new(Port { net: self.net.clone() }),
            KvStore::default(),
        )
        .unwrap();
        self.net.inboxes.write().insert((id, group), node.inbound());
        self.nodes.insert((id, group), node);
    }

    fn stop_node(&mut self, id: NodeId, group: GroupId) {
        self.net.inboxes.write().remove(&(id, group));
        if let Some(node) = self.nodes.remove(&(id, group)) {
            node.shutdown();
        }
    }

    fn leader(&self, group: GroupId) -> NodeId {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let leaders: Vec<NodeId> = (1..=3)
                .filter(|&id| self.nodes.get(&(id, group)).is_some_and(|n| n.is_leader()))
                .collect();
            if let [leader] = leaders[..] {
                return leader;
            }
            assert!(Instant::now() < deadline, "group {group}: no single leader");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn put(&self, group: GroupId, key: &str, value: &str) {
        let command = KvOp::Put { key: key.into(), value: value.into() }.encode();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let leader = self.leader(group);
            match self.nodes[&(leader, group)].propose(command.clone(), TIMEOUT) {
                Ok(_) => return,
                Err(e) if e.nothing_done() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => panic!("group {group}: put {key}: {e}"),
            }
        }
    }

    /// Every running replica of `group` holds `value` at `key`, once it applied as far as the
    /// leader committed.
    fn agree(&self, group: GroupId, key: &str, value: &str) {
        let leader = self.leader(group);
        let commit = self.nodes[&(leader, group)].commit_index();
        let deadline = Instant::now() + TIMEOUT;
        for id in 1..=3 {
            let Some(node) = self.nodes.get(&(id, group)) else { continue };
            while node.applied_index() < commit {
                assert!(Instant::now() < deadline, "group {group} node {id} applies");
                std::thread::sleep(Duration::from_millis(2));
            }
            let key = key.to_owned();
            let got = node.read_local(move |kv: &KvStore| kv.get(&key).map(str::to_owned), TIMEOUT);
            assert_eq!(got.unwrap().as_deref(), Some(value), "group {group} node {id}");
        }
    }
}

/// 64 groups of three nodes (192 nodes) on six threads plus a timer: every group elects a
/// leader and replicates, a node restarted in one group catches up, and no node has a thread of
/// its own.
#[test]
fn many_groups_share_a_fixed_set_of_threads() {
    let mut options = RuntimeOptions::default();
    (options.core_threads, options.apply_threads, options.io_threads) = (2, 2, 2);
    let runtime = Runtime::new(options).unwrap();
    let mut groups = Groups::start(64, &runtime);
    assert_eq!(runtime.nodes(), 192);
    assert_eq!(per_node_threads(), 0, "192 nodes run on the runtime's threads only");
    for group in 0..64 {
        groups.put(group, "k", &format!("v{group}"));
    }
    for group in 0..64 {
        groups.agree(group, "k", &format!("v{group}"));
    }
    assert!(
        runtime.ticking() <= runtime.nodes(),
        "each node is in the timer at most once: {} entries for {} nodes",
        runtime.ticking(),
        runtime.nodes()
    );
    // A leader restarted in one group: another leads, the node catches up from its store.
    let leader = groups.leader(7);
    groups.stop_node(leader, 7);
    groups.put(7, "k", "after");
    groups.start_node(leader, 7);
    groups.agree(7, "k", "after");
    for ((id, group), node) in groups.nodes.drain() {
        assert!(node.status().unwrap().failure.is_none(), "group {group} node {id}");
        node.shutdown();
    }
    // The runtime's tasks and timer hold a node only while they run it.
    let deadline = Instant::now() + TIMEOUT;
    while runtime.nodes() > 0 {
        assert!(Instant::now() < deadline, "{} nodes still held", runtime.nodes());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Snapshot transfers wait for the runtime's budget: eight groups whose third node missed
/// enough to need a snapshot each all catch up, never more than two sending at once.
#[test]
fn snapshot_transfers_take_turns_within_the_runtimes_budget() {
    let mut options = RuntimeOptions::default();
    options.snapshot_sends = 2;
    let runtime = Runtime::new(options).unwrap();
    let mut groups = Groups::start(0, &runtime);
    (groups.snapshot_entries, groups.chunk_bytes) = (10, 64);
    for group in 0..8 {
        for id in 1..=3 {
            groups.start_node(id, group);
        }
    }
    for group in 0..8 {
        groups.stop_node(3, group);
    }
    let value = "v".repeat(100);
    for group in 0..8 {
        for i in 0..40 {
            groups.put(group, &format!("k{i}"), &value);
        }
    }
    // Back: the leaders compacted past its log, so every group sends it a snapshot of many
    // chunks.
    for group in 0..8 {
        groups.start_node(3, group);
    }
    for group in 0..8 {
        groups.agree(group, "k39", &value);
    }
    let stats = runtime.snapshot_sends();
    assert_eq!(stats.peak, 2, "two transfers at once at most, and at times two: {stats:?}");
    assert!(stats.deferred > 0, "transfers waited for a slot: {stats:?}");
    for (_, node) in groups.nodes.drain() {
        node.shutdown();
    }
}

/// Stale requests get typed errors and are counted, never delivered: a message for a group not
/// on this node, a late message for a group destroyed here, and a new node under a destroyed
/// group's id (which could otherwise take its old incarnation's messages).
#[test]
fn stale_requests_get_typed_errors_and_are_counted() {
    use raft_core::message::MessageBody;
    use raft_core::node::{NodeBuilder, NodeError};
    use raft_core::{RouteError, Router};
    let runtime = Runtime::new(RuntimeOptions::default()).unwrap();
    let router = Arc::new(Router::new());
    let port = Arc::new(Port { net: Arc::new(LocalNet::default()) });
    let start = |group: GroupId| {
        NodeBuilder::new(1)
            .group(group)
            .voters([1])
            .options(|o| o.runtime = Some(runtime.clone()))
            .log(MemLogStore::new())
            .transport(port.clone())
            .router(router.clone())
            .start(KvStore::default())
    };
    let node = start(5).unwrap();
    let heartbeat = |group: GroupId| Message {
        group,
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::Heartbeat(raft_core::message::Heartbeat { commit: 0, round: 1 }),
    };
    router.deliver(heartbeat(6));
    assert_eq!(router.unknown_group(), 1);
    assert_eq!(router.check(6), Err(RouteError::UnknownGroup(6)));
    assert_eq!(router.check(5), Ok(()));
    // Group 5 is destroyed here: its late messages are counted apart, and its id is not reused.
    node.shutdown();
    router.destroy(5);
    router.deliver_all(vec![heartbeat(5), heartbeat(5)]);
    assert_eq!(router.to_destroyed_group(), 2);
    assert_eq!(router.unroutable(), 3);
    match start(5) {
        Err(err @ NodeError::Group(RouteError::Destroyed(5))) => assert!(err.nothing_done()),
        other => {
            panic!("expected the destroyed group's id refused, got {:?}", other.map(|n| n.id()))
        }
    }
    assert!(start(7).is_ok(), "other groups start");
}

/// Three nodes, each its own runtime and router (as three processes would be), hosting 100
/// groups together; one transport between them that can cut a node off.
struct Processes {
    net: Arc<ProcessNet>,
    runtimes: Vec<Runtime>,
    nodes: HashMap<(NodeId, GroupId), Node<KvStore>>,
}

#[derive(Default)]
struct ProcessNet {
    routers: RwLock<HashMap<NodeId, Arc<raft_core::Router>>>,
    cut: RwLock<std::collections::HashSet<NodeId>>,
    /// Raft messages (not liveness pings) delivered.
    raft_messages: std::sync::atomic::AtomicU64,
}

struct ProcessPort {
    net: Arc<ProcessNet>,
    from: NodeId,
}

impl Transport for ProcessPort {
    fn send(&self, msg: Message) {
        let cut = self.net.cut.read();
        if cut.contains(&self.from) || cut.contains(&msg.to) {
            return;
        }
        drop(cut);
        if msg.group != raft_core::LIVENESS_GROUP {
            self.net.raft_messages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let router = self.net.routers.read().get(&msg.to).cloned();
        if let Some(router) = router {
            router.deliver(msg);
        }
    }
}

impl Processes {
    fn start(groups: u64) -> Processes {
        let net = Arc::new(ProcessNet::default());
        let mut p = Processes { net: net.clone(), runtimes: Vec::new(), nodes: HashMap::new() };
        for id in 1..=3u64 {
            let runtime = Runtime::new(RuntimeOptions::default()).unwrap();
            let router = Arc::new(raft_core::Router::new());
            let port: Arc<dyn Transport> = Arc::new(ProcessPort { net: net.clone(), from: id });
            runtime.watch_peers(
                id,
                &[1, 2, 3],
                port.clone(),
                &router,
                Duration::from_millis(20),
                Duration::from_millis(150),
            );
            net.routers.write().insert(id, router.clone());
            let log = Arc::new(MemLogStore::new());
            for group in 0..groups {
                let node = raft_core::node::NodeBuilder::new(id)
                    .group(group)
                    .voters([1, 2, 3])
                    .tick(Duration::from_millis(5))
                    .config(|c| c.hibernate_ticks = 10)
                    .options(|o| o.runtime = Some(runtime.clone()))
                    .shared_log(log.clone())
                    .transport(port.clone())
                    .router(router.clone())
                    .start(KvStore::default())
                    .unwrap();
                p.nodes.insert((id, group), node);
            }
            p.runtimes.push(runtime);
        }
        p
    }

    fn leader(&self, group: GroupId, among: &[NodeId]) -> NodeId {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let leaders: Vec<NodeId> = among
                .iter()
                .copied()
                .filter(|&id| self.nodes.get(&(id, group)).is_some_and(|n| n.is_leader()))
                .collect();
            if let [leader] = leaders[..] {
                return leader;
            }
            assert!(Instant::now() < deadline, "group {group}: no single leader among {among:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn put(&self, group: GroupId, among: &[NodeId], value: &str) {
        let command = KvOp::Put { key: "k".into(), value: value.into() }.encode();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let leader = self.leader(group, among);
            match self.nodes[&(leader, group)].propose(command.clone(), TIMEOUT) {
                Ok(_) => return,
                Err(e) if e.nothing_done() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => panic!("group {group}: {e}"),
            }
        }
    }

    fn all_asleep(&self) -> bool {
        self.nodes.values().all(|n| n.status().is_ok_and(|s| s.raft.asleep))
    }
}

/// 100 groups over three nodes fall asleep once idle: no Raft message flows and no runtime
/// ticks them, only one liveness ping per pair of nodes. A write wakes its group. A node whose
/// peers stop hearing it (cut off) has its sleeping groups elect other leaders.
#[test]
fn idle_groups_sleep_and_a_dead_node_wakes_the_groups_it_led() {
    let mut p = Processes::start(100);
    let all = [1, 2, 3];
    for group in 0..100 {
        p.put(group, &all, "a");
    }
    let deadline = Instant::now() + TIMEOUT;
    while !p.all_asleep() {
        assert!(Instant::now() < deadline, "the idle groups fall asleep");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The timer lets each sleeping node go at its next due tick.
    let ticking = || p.runtimes.iter().map(Runtime::ticking).sum::<usize>();
    while ticking() > 0 {
        assert!(Instant::now() < deadline, "{} sleeping nodes still ticked", ticking());
        std::thread::sleep(Duration::from_millis(5));
    }
    // Each runtime counts its sleeping nodes and its nodes' leader changes, one number each.
    for runtime in &p.runtimes {
        assert_eq!(runtime.asleep_nodes(), 100, "every node here sleeps");
    }
    let changes: Vec<u64> = p.runtimes.iter().map(Runtime::leader_changes).collect();
    assert!(changes.iter().all(|&c| c >= 100), "every group elected a leader: {changes:?}");
    let before = p.net.raft_messages.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    let after = p.net.raft_messages.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after, before, "no Raft message while every group sleeps");
    let still: Vec<u64> = p.runtimes.iter().map(Runtime::leader_changes).collect();
    assert_eq!(still, changes, "no leader changes while every group sleeps");
    // A write wakes its group (and only it).
    p.put(5, &all, "b");
    let asleep: u64 = p.runtimes.iter().map(Runtime::asleep_nodes).sum();
    assert!((297..300).contains(&asleep), "the written group woke: {asleep} asleep");
    // Node 1 is cut off: the groups it led elect leaders among 2 and 3 and take writes.
    let led_by_1: Vec<GroupId> = (0..100).filter(|&g| p.leader(g, &all) == 1).collect();
    p.net.cut.write().insert(1);
    for &group in &led_by_1 {
        p.put(group, &[2, 3], "c");
    }
    let moved: Vec<u64> = p.runtimes.iter().map(Runtime::leader_changes).collect();
    assert!(moved[1] > changes[1] && moved[2] > changes[2], "new leaders: {moved:?}");
    for ((_, _), node) in p.nodes.drain() {
        node.shutdown();
    }
    // A node dropped asleep no longer counts.
    let deadline = Instant::now() + TIMEOUT;
    while p.runtimes.iter().any(|r| r.asleep_nodes() > 0) {
        assert!(Instant::now() < deadline, "dropped nodes still counted asleep");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A peer's hello (its runtime just started) wakes this runtime's sleeping leaders at once, not
/// at the next liveness ping, so a restarted node learns its leaders within a round trip.
#[test]
fn a_hello_wakes_sleeping_leaders_between_pings() {
    struct Nowhere;
    impl Transport for Nowhere {
        fn send(&self, _msg: Message) {}
    }
    let runtime = Runtime::new(RuntimeOptions::default()).unwrap();
    let router = Arc::new(raft_core::Router::new());
    let port: Arc<dyn Transport> = Arc::new(Nowhere);
    // Pings every 30 s: only the hello itself can wake anything within the test.
    runtime.watch_peers(
        1,
        &[],
        port.clone(),
        &router,
        Duration::from_secs(30),
        Duration::from_secs(60),
    );
    let node = raft_core::node::NodeBuilder::new(1)
        .group(7)
        .voters([1])
        .tick(Duration::from_millis(5))
        .config(|c| c.hibernate_ticks = 40)
        .options(|o| o.runtime = Some(runtime.clone()))
        .shared_log(Arc::new(MemLogStore::new()))
        .transport(port)
        .router(router.clone())
        .start(KvStore::default())
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !(node.is_leader() && node.is_asleep()) {
        assert!(Instant::now() < deadline, "the idle leader falls asleep");
        std::thread::sleep(Duration::from_millis(5));
    }
    let said = Instant::now();
    router.deliver(Message {
        group: raft_core::LIVENESS_GROUP,
        from: 2,
        to: 1,
        term: 0,
        body: raft_core::message::MessageBody::Heartbeat(raft_core::message::Heartbeat {
            commit: 0,
            round: raft_core::LIVENESS_HELLO,
        }),
    });
    while node.is_asleep() {
        assert!(said.elapsed() < Duration::from_secs(1), "the hello woke the sleeping leader");
        std::thread::sleep(Duration::from_millis(1));
    }
}
