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
}

impl Groups {
    fn start(groups: u64, runtime: &Runtime) -> Groups {
        let mut g = Groups {
            net: Arc::new(LocalNet::default()),
            nodes: HashMap::new(),
            // One log store per node id, shared by all of its groups (as one WAL would be).
            stores: (1..=3).map(|id| (id, Arc::new(MemLogStore::new()))).collect(),
            runtime: runtime.clone(),
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
