//! Groups created and destroyed at run time, on three nodes in one process (each its own
//! runtime, router, WAL, snapshot store and catalogue, over an in-memory network): the set of
//! groups survives a node's restart, a destroyed group leaves no log or snapshot behind and its
//! id stays refused, and a group created after the restart works like the others.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::node::{Node, NodeBuilder, NodeError, Runtime, RuntimeOptions};
use raft_core::{
    GroupId, LogStore, MemNetwork, NodeId, RouteError, Router, SnapshotStore, Transport,
};
use raft_snapshot::{FileSnapshotStore, SnapshotStoreOptions};
use raft_wal::catalog::Catalog;
use raft_wal::{Wal, WalConfig};
use raftkit_examples::kv::{KvMachine, KvWrite, Output};

const WAIT: Duration = Duration::from_secs(20);

/// One node: its stores, catalogue, runtime and the nodes of its groups.
struct Host {
    id: NodeId,
    router: Arc<Router>,
    wal: Arc<Wal>,
    snapshots: Arc<FileSnapshotStore>,
    catalog: Catalog,
    transport: Arc<dyn Transport>,
    runtime: Runtime,
    nodes: HashMap<GroupId, Node<KvMachine>>,
}

impl Host {
    /// Opens node `id`'s data in `dir` and starts every group its catalogue holds.
    fn open(id: NodeId, dir: &Path, net: &MemNetwork) -> Host {
        std::fs::create_dir_all(dir.join("wal")).expect("WAL directory");
        std::fs::create_dir_all(dir.join("snapshots")).expect("snapshot directory");
        let (wal, _) = Wal::open(dir.join("wal"), WalConfig::default()).expect("WAL");
        let (snapshots, _) =
            FileSnapshotStore::open(dir.join("snapshots"), SnapshotStoreOptions::default())
                .expect("snapshots");
        let catalog = Catalog::open(dir).expect("catalogue");
        let router = Arc::new(Router::new());
        for g in catalog.destroyed() {
            router.destroy(g);
        }
        let transport: Arc<dyn Transport> =
            Arc::new(net.join(id, router.clone()).expect("join the network"));
        let runtime = Runtime::new(RuntimeOptions::default()).expect("runtime");
        let mut host = Host {
            id,
            router,
            wal: Arc::new(wal),
            snapshots: Arc::new(snapshots),
            catalog,
            transport,
            runtime,
            nodes: HashMap::new(),
        };
        let groups: Vec<(GroupId, Vec<NodeId>)> =
            host.catalog.groups().map(|g| (g.group, g.voters.clone())).collect();
        for (g, voters) in groups {
            host.start(g, &voters);
        }
        // Once every group is registered: the hello wakes the peers' sleeping leaders.
        host.runtime.watch_peers(
            id,
            &[1, 2, 3],
            host.transport.clone(),
            &host.router,
            Duration::from_millis(50),
            Duration::from_millis(500),
        );
        host
    }

    fn start(&mut self, group: GroupId, voters: &[NodeId]) {
        let node = NodeBuilder::new(self.id)
            .group(group)
            .voters(voters.iter().copied())
            .tick(Duration::from_millis(5))
            .config(|c| {
                c.hibernate_ticks = 40;
                c.snapshot_entries = 20;
            })
            .options(|o| o.runtime = Some(self.runtime.clone()))
            .shared_log(self.wal.clone())
            .shared_snapshots(self.snapshots.clone())
            .transport(self.transport.clone())
            .router(self.router.clone())
            .start(KvMachine::default())
            .expect("node starts");
        self.nodes.insert(group, node);
    }

    /// Creates a group here: recorded first, then started.
    fn create(&mut self, group: GroupId, voters: &[NodeId]) {
        self.catalog.create(group, voters, b"").expect("catalogue create");
        self.start(group, voters);
    }

    /// Destroys a group here: recorded first, refused by the router, then its data removed.
    fn destroy(&mut self, group: GroupId) {
        self.catalog.destroy(group).expect("catalogue destroy");
        self.router.destroy(group);
        let node = self.nodes.remove(&group).expect("a node of the group");
        node.destroy().expect("the group's data is removed");
    }
}

/// Writes `key = value` in `group` through whichever node leads it.
fn set(hosts: &[Host], group: GroupId, key: &str, value: &str) {
    let deadline = Instant::now() + WAIT;
    let write = KvWrite::Set {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    };
    loop {
        assert!(Instant::now() < deadline, "group {group}: SET {key} never succeeded");
        for host in hosts {
            let Some(node) = host.nodes.get(&group) else { continue };
            match node.propose(write.encode(), Duration::from_secs(2)) {
                Ok(Output::Ok) => return,
                Ok(other) => panic!("group {group}: SET answered {other:?}"),
                Err(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `key` in `group` linearizably through node `host`.
fn get(host: &Host, group: GroupId, key: &str) -> Option<String> {
    let deadline = Instant::now() + WAIT;
    let node = &host.nodes[&group];
    loop {
        let key = key.as_bytes().to_vec();
        match node.read(
            move |kv: &KvMachine| kv.get(&key).map(|v| String::from_utf8_lossy(v).into_owned()),
            Duration::from_secs(2),
        ) {
            Ok(v) => return v,
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "group {group}: read on node {} failed: {err}",
                    host.id
                )
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn groups_come_and_go_at_run_time_and_the_set_survives_a_restart() {
    let root = tempfile::tempdir().expect("temp dir");
    let net = MemNetwork::new(100_000);
    let dir = |id: NodeId| root.path().join(format!("node-{id}"));
    let mut hosts: Vec<Host> = (1..=3).map(|id| Host::open(id, &dir(id), &net)).collect();
    let voters = [1, 2, 3];

    // Twelve groups created while running; each takes writes (enough for snapshots).
    for g in 1..=12 {
        for host in &mut hosts {
            host.create(g, &voters);
        }
    }
    for g in 1..=12 {
        for i in 0..30 {
            set(&hosts, g, &format!("k{i}"), &format!("g{g}-v{i}"));
        }
    }
    let had_snapshot = hosts[1].snapshots.latest(2).expect("latest").is_some();

    // Four destroyed on every node: nothing of them is left, and their ids are refused.
    for g in 1..=4 {
        for host in &mut hosts {
            host.destroy(g);
        }
    }
    for host in &mut hosts {
        for g in 1..=4 {
            assert_eq!(host.router.check(g), Err(RouteError::Destroyed(g)));
            let state = host.wal.log_state(g).expect("log state");
            assert!(
                state.last_index < state.first_index,
                "group {g}'s log on node {} is empty",
                host.id
            );
            assert_eq!(host.snapshots.latest(g).expect("latest"), None, "group {g}'s snapshots");
        }
        assert!(matches!(
            host.catalog.create(3, &voters, b""),
            Err(raft_wal::catalog::CatalogError::Destroyed(3))
        ));
    }
    assert!(had_snapshot, "group 2 had a snapshot to remove");
    for g in 5..=12 {
        set(&hosts, g, "after", "destroy");
    }

    // Node 2 restarts from its directory: the same groups, the same data, the ids still refused.
    let old = hosts.remove(1);
    for (_, node) in old.nodes {
        node.shutdown();
    }
    net.leave(2);
    let Host { runtime, wal, snapshots, router, transport, catalog, .. } = old;
    drop((runtime, snapshots, router, transport, catalog));
    // Its WAL closes once the last handle is gone (a sync request in flight may hold one).
    let deadline = Instant::now() + WAIT;
    let mut wal = Some(wal);
    while let Some(w) = wal.take() {
        if let Err(w) = Arc::try_unwrap(w) {
            assert!(Instant::now() < deadline, "node 2's WAL is still held");
            std::thread::sleep(Duration::from_millis(10));
            wal = Some(w);
        }
    }
    hosts.insert(1, Host::open(2, &dir(2), &net));
    let restarted = &hosts[1];
    let mut groups: Vec<GroupId> = restarted.nodes.keys().copied().collect();
    groups.sort_unstable();
    assert_eq!(groups, (5..=12).collect::<Vec<_>>());
    for g in 1..=4 {
        assert_eq!(restarted.router.check(g), Err(RouteError::Destroyed(g)));
    }
    for g in 5..=12 {
        assert_eq!(get(restarted, g, "k29").as_deref(), Some(format!("g{g}-v29").as_str()));
        assert_eq!(get(restarted, g, "after").as_deref(), Some("destroy"));
    }

    // A group created after the restart works like the others.
    for host in &mut hosts {
        host.create(13, &voters);
    }
    set(&hosts, 13, "new", "group");
    for host in &hosts {
        assert_eq!(get(host, 13, "new").as_deref(), Some("group"));
    }
    // A proposal to a destroyed group's id has no node to go to: the router says why.
    let err = NodeBuilder::new(1)
        .group(2)
        .voters(voters)
        .shared_log(hosts[0].wal.clone())
        .transport(hosts[0].transport.clone())
        .router(hosts[0].router.clone())
        .start(KvMachine::default())
        .map(drop)
        .expect_err("a destroyed id is not started again");
    assert!(matches!(err, NodeError::Group(RouteError::Destroyed(2))), "{err:?}");
}
