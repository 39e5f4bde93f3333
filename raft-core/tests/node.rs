//! The node driver with real threads and real time: three nodes in one process over an
//! in-memory transport that can cut nodes off.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use raft_core::node::{Node, NodeError, NodeOptions};
use raft_core::sim::kv::{KvOp, KvStore};
use raft_core::{
    Entry, GroupId, Inbound, Index, LogState, LogStore, LogWrite, Lsn, MemLogStore,
    MemSnapshotStore, MembershipChange, MembershipError, Message, NodeId, RoleKind, SnapshotStore,
    StorageError, Term, Transport,
};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the cluster's nodes share a runtime's threads instead of having their own: this
/// file also builds as the `node_on_runtime` test binary, which runs every test that way.
fn on_runtime() -> bool {
    std::env::args().next().is_some_and(|arg0| arg0.contains("node_on_runtime"))
}

/// Delivers messages between nodes of one process; a cut-off node neither sends nor receives.
#[derive(Default)]
struct LocalNet {
    inboxes: RwLock<HashMap<NodeId, Arc<dyn Inbound>>>,
    cut: Mutex<HashSet<NodeId>>,
}

/// One node's view of the network.
struct Port {
    net: Arc<LocalNet>,
    from: NodeId,
}

impl Transport for Port {
    fn send(&self, msg: Message) {
        let cut = self.net.cut.lock();
        if cut.contains(&self.from) || cut.contains(&msg.to) {
            return;
        }
        drop(cut);
        let inbox = self.net.inboxes.read().get(&msg.to).cloned();
        if let Some(inbox) = inbox {
            inbox.deliver(msg);
        }
    }
}

struct Cluster {
    net: Arc<LocalNet>,
    stores: Vec<Arc<MemLogStore>>,
    snapshots: Vec<Arc<MemSnapshotStore>>,
    nodes: Vec<Option<Node<KvStore>>>,
    options: NodeOptions,
}

impl Cluster {
    fn new(n: u64, tweak: impl Fn(&mut NodeOptions)) -> Cluster {
        let voters: Vec<NodeId> = (1..=n).collect();
        let mut options = NodeOptions::new(1, 7, voters);
        options.tick = Duration::from_millis(5);
        if on_runtime() {
            options.runtime =
                Some(raft_core::node::Runtime::new(Default::default()).expect("runtime"));
        }
        tweak(&mut options);
        let mut cluster = Cluster {
            net: Arc::new(LocalNet::default()),
            stores: (0..n).map(|_| Arc::new(MemLogStore::new())).collect(),
            snapshots: (0..n).map(|_| Arc::new(MemSnapshotStore::new(2))).collect(),
            nodes: (0..n).map(|_| None).collect(),
            options,
        };
        for id in 1..=n {
            cluster.start(id);
        }
        cluster
    }

    fn start(&mut self, id: NodeId) {
        let i = (id - 1) as usize;
        let mut options = self.options.clone();
        options.raft.id = id;
        if !options.voters.contains(&id) && !options.learners.contains(&id) {
            // Outside the first configuration: the node waits to be added.
            (options.voters, options.learners) = (Vec::new(), Vec::new());
        }
        let node = Node::start(
            options,
            self.stores[i].clone(),
            Some(self.snapshots[i].clone() as Arc<dyn SnapshotStore>),
            Arc::new(Port { net: self.net.clone(), from: id }),
            KvStore::default(),
        )
        .expect("node starts");
        self.net.inboxes.write().insert(id, node.inbound());
        self.nodes[i] = Some(node);
    }

    fn stop(&mut self, id: NodeId) {
        self.net.inboxes.write().remove(&id);
        if let Some(node) = self.nodes[(id - 1) as usize].take() {
            node.shutdown();
        }
    }

    fn node(&self, id: NodeId) -> &Node<KvStore> {
        self.nodes[(id - 1) as usize].as_ref().expect("node is running")
    }

    fn running(&self) -> impl Iterator<Item = &Node<KvStore>> {
        self.nodes.iter().flatten()
    }

    /// Waits for a leader among the running, connected nodes that all of them follow.
    fn leader(&self) -> NodeId {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let cut = self.net.cut.lock().clone();
            let leaders: Vec<NodeId> = self
                .running()
                .filter(|n| n.is_leader() && !cut.contains(&n.id()))
                .map(|n| n.id())
                .collect();
            if let [leader] = leaders[..] {
                return leader;
            }
            assert!(Instant::now() < deadline, "no single leader within {TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Writes through whichever node leads, retrying while no leader is known.
    fn put(&self, key: &str, value: &str) -> String {
        let command = KvOp::Put { key: key.into(), value: value.into() };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let leader = self.leader();
            match self.node(leader).propose(command.encode(), TIMEOUT) {
                Ok(Some(out)) => return out,
                Ok(None) => panic!("a put produced no output"),
                Err(err) if err.nothing_done() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(err) => panic!("put {key}: {err}"),
            }
        }
    }

    fn get(&self, key: &str) -> Option<String> {
        let leader = self.leader();
        let key = key.to_owned();
        self.node(leader)
            .read(move |kv: &KvStore| kv.get(&key).map(str::to_owned), TIMEOUT)
            .expect("read")
    }

    /// Waits until every running node has applied at least `index`.
    fn await_applied(&self, index: Index) {
        let deadline = Instant::now() + TIMEOUT;
        while self.running().any(|n| n.applied_index() < index) {
            assert!(Instant::now() < deadline, "nodes did not apply {index} in time");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every running node's copy of the state machine, read locally after applying `index`.
    fn states(&self) -> Vec<Vec<(String, String)>> {
        self.running()
            .map(|n| {
                let keys: Vec<String> = (0..200).map(|k| format!("k{k}")).collect();
                n.read_local(
                    move |kv: &KvStore| {
                        keys.iter()
                            .filter_map(|k| kv.get(k).map(|v| (k.clone(), v.to_owned())))
                            .collect::<Vec<_>>()
                    },
                    TIMEOUT,
                )
                .expect("local read")
            })
            .collect()
    }
}

#[test]
fn three_nodes_replicate_and_agree() {
    let cluster = Cluster::new(3, |_| {});
    let leader = cluster.leader();
    for i in 0..100u64 {
        let out = cluster.put(&format!("k{}", i % 10), &format!("v{i}"));
        assert_eq!(out, "", "a put answers with the empty string");
    }
    assert_eq!(cluster.get("k3").as_deref(), Some("v93"));
    let commit = cluster.node(leader).commit_index();
    cluster.await_applied(commit);
    for id in 1..=3 {
        let node = cluster.node(id);
        let key = "k7".to_owned();
        // Every node serves linearizable reads (a follower asks the leader for the index);
        // a follower refuses writes with the leader's id (nothing done).
        let read = node.read(move |kv: &KvStore| kv.get(&key).map(str::to_owned), TIMEOUT);
        assert_eq!(read.expect("read"), Some("v97".to_owned()), "read on node {id}");
        if id != leader {
            let err =
                node.propose(KvOp::Put { key: "k".into(), value: "v".into() }.encode(), TIMEOUT);
            assert!(
                matches!(err, Err(NodeError::NotLeader { leader: Some(l) }) if l == leader),
                "{err:?}"
            );
        }
    }
    let status = cluster.node(leader).status().expect("status");
    assert_eq!(status.raft.role, RoleKind::Leader);
    assert_eq!(status.raft.progress.len(), 2);
    assert!(status.raft.progress.iter().all(|p| p.match_index == status.raft.last_index));
    assert!(status.failure.is_none());
}

#[test]
fn callbacks_answer_every_request_exactly_once() {
    let mut cluster = Cluster::new(3, |_| {});
    let leader = cluster.leader();
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let (tx, rx) = std::sync::mpsc::channel::<(u64, Result<String, NodeError>)>();
    for i in 0..200u64 {
        let command = KvOp::Put { key: format!("c{i}"), value: "x".into() };
        let tx = tx.clone();
        cluster.node(leader).propose_with(command.encode(), move |r| {
            let _ = tx.send((i, r.map(|out| out.unwrap_or_default())));
        });
    }
    let tx3 = tx.clone();
    cluster.node(follower).propose_with(Bytes::from_static(b"x"), move |r| {
        let _ = tx3.send((2000, r.map(|_| String::new())));
    });
    let mut answers = HashMap::new();
    for _ in 0..201 {
        let (i, r) = rx.recv_timeout(TIMEOUT).expect("every request is answered");
        assert!(answers.insert(i, r).is_none(), "request {i} answered twice");
    }
    assert!((0..200).all(|i| matches!(answers.get(&i), Some(Ok(_)))), "{answers:?}");
    // A read asked for after the writes completed sees the last one, on either node.
    for (node, tag) in [(leader, 1000), (follower, 1001)] {
        let tx2 = tx.clone();
        cluster.node(node).read_with(
            |kv: &KvStore| kv.get("c199").map(str::to_owned).unwrap_or_default(),
            move |r| {
                let _ = tx2.send((tag, r));
            },
        );
        let (i, r) = rx.recv_timeout(TIMEOUT).expect("the read is answered");
        assert_eq!((i, r.ok().as_deref()), (tag, Some("x")));
    }
    assert!(
        matches!(answers.get(&2000), Some(Err(NodeError::NotLeader { leader: Some(l) })) if *l == leader)
    );
    // A local read through a callback, and requests to a stopped node answered with Stopped.
    let tx4 = tx.clone();
    cluster.node(follower).read_local_with(
        |kv: &KvStore| kv.get("c0").is_some(),
        move |r| {
            let _ = tx4.send((3000, r.map(|b| b.to_string())));
        },
    );
    let (i, r) = rx.recv_timeout(TIMEOUT).expect("local read answered");
    assert_eq!(i, 3000);
    assert!(r.is_ok());
    // A request that cannot commit (its leader cut off) is answered when the node stops.
    cluster.net.cut.lock().insert(leader);
    let (tx5, rx5) = std::sync::mpsc::channel();
    cluster.node(leader).propose_with(Bytes::from_static(b"late"), move |r| {
        let _ = tx5.send(r.is_err());
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(rx5.try_recv().is_err(), "answered before it could commit");
    cluster.stop(leader);
    assert_eq!(rx5.recv_timeout(TIMEOUT).ok(), Some(true), "a stopped node answers with an error");
    assert!(rx5.recv_timeout(Duration::from_millis(50)).is_err(), "answered once");
}

#[test]
fn empty_commands_are_refused() {
    let cluster = Cluster::new(1, |_| {});
    cluster.leader();
    let err = cluster.node(1).propose(Bytes::new(), TIMEOUT).unwrap_err();
    assert!(matches!(err, NodeError::EmptyCommand) && err.nothing_done());
}

#[test]
fn concurrent_clients_share_syncs_and_all_commit() {
    let cluster = Arc::new(Cluster::new(3, |_| {}));
    let leader = cluster.leader();
    let threads: Vec<_> = (0..8u64)
        .map(|client| {
            let cluster = cluster.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let value = format!("c{client}-{i}");
                    cluster.put(&format!("k{client}"), &value);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    for client in 0..8u64 {
        assert_eq!(cluster.get(&format!("k{client}")), Some(format!("c{client}-49")));
    }
    // 400 puts and the leader's no-op, at least (more if leadership moved); reads write
    // nothing.
    let commit = cluster.node(leader).status().expect("status").raft.commit_index;
    assert!(commit >= 401, "commit index {commit}");
    cluster.await_applied(commit);
    let states = cluster.states();
    assert!(states.windows(2).all(|w| w[0] == w[1]), "replicas differ");
}

#[test]
fn leader_stop_elects_a_new_one_and_the_old_one_catches_up() {
    let mut cluster = Cluster::new(3, |_| {});
    for i in 0..20 {
        cluster.put(&format!("k{i}"), "before");
    }
    let old = cluster.leader();
    cluster.stop(old);
    let new = cluster.leader();
    assert_ne!(new, old);
    for i in 0..20 {
        cluster.put(&format!("k{i}"), "after");
    }
    cluster.start(old);
    let commit = cluster.node(new).commit_index();
    cluster.await_applied(commit);
    let states = cluster.states();
    assert_eq!(states.len(), 3);
    assert!(states.windows(2).all(|w| w[0] == w[1]), "replicas differ after restart");
    assert!(states[0].iter().all(|(_, v)| v == "after"));
}

#[test]
fn a_lagging_follower_is_caught_up_by_snapshot() {
    let mut cluster = Cluster::new(3, |o| {
        o.raft.snapshot_entries = 20;
        o.raft.log_keep_entries = 5;
        o.raft.snapshot_chunk_bytes = 256;
    });
    let leader = cluster.leader();
    let lagging = (1..=3).find(|&id| id != leader).expect("a follower");
    cluster.net.cut.lock().insert(lagging);
    for i in 0..150 {
        cluster.put(&format!("k{}", i % 40), &format!("value-{i}"));
    }
    // The leader compacted its log past what the follower holds.
    let status = cluster.node(leader).status().expect("status");
    assert!(status.raft.snapshot_index > 0 && status.raft.first_index > 2, "{status:?}");
    assert!(cluster.stores[(leader - 1) as usize].log_state(7).expect("state").first_index > 2);
    cluster.net.cut.lock().clear();
    let commit = cluster.node(leader).commit_index();
    cluster.await_applied(commit);
    let states = cluster.states();
    assert!(states.windows(2).all(|w| w[0] == w[1]), "replicas differ");
    assert_eq!(states[0].len(), 40);
    let follower = cluster.node(lagging).status().expect("status");
    assert!(follower.raft.snapshot_index > 0, "the follower installed a snapshot");
    // It restarts from its snapshot and log.
    cluster.stop(lagging);
    cluster.start(lagging);
    cluster.await_applied(commit);
    assert!(cluster.states().windows(2).all(|w| w[0] == w[1]), "replicas differ after restart");
}

/// A log store whose syncs start failing, or taking `delay_ms` (a stalled disk), on demand.
#[derive(Default)]
struct FailingStore {
    inner: MemLogStore,
    fail: std::sync::atomic::AtomicBool,
    delay_ms: std::sync::atomic::AtomicU64,
}

impl LogStore for FailingStore {
    fn write(&self, batch: &[LogWrite<'_>]) -> Result<Lsn, StorageError> {
        self.inner.write(batch)
    }
    fn sync(&self, lsn: Lsn) -> Result<(), StorageError> {
        let ms = self.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(ms));
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StorageError::Io(std::io::Error::other("injected sync failure")));
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
        g: GroupId,
        lo: Index,
        hi: Index,
        max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(g, lo, hi, max)
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
}

#[test]
fn a_failed_sync_stops_the_node_without_acknowledging() {
    struct Nowhere;
    impl Transport for Nowhere {
        fn send(&self, _msg: Message) {}
    }
    let store = Arc::new(FailingStore::default());
    let mut options = NodeOptions::new(1, 0, vec![1]);
    options.tick = Duration::from_millis(2);
    let node = Node::start(options, store.clone(), None, Arc::new(Nowhere), KvStore::default())
        .expect("start");
    while !node.is_leader() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let put = |i: u64| KvOp::Put { key: "k".into(), value: format!("{i}") };
    assert!(node.propose(put(1).encode(), TIMEOUT).is_ok());
    store.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    let err = node.propose(put(2).encode(), TIMEOUT).unwrap_err();
    assert!(matches!(err, NodeError::Stopped), "{err:?}");
    assert!(!err.nothing_done());
    let failure = node.failure().expect("the node records why it stopped");
    assert!(failure.contains("injected sync failure"), "{failure}");
    // It answers nothing as a success any more.
    assert!(node.propose(put(3).encode(), TIMEOUT).is_err());
    node.shutdown();
}

/// On a runtime, a node's failure is counted by the runtime (so a process hosting thousands of
/// nodes learns of it without asking each); the other nodes go on.
#[test]
fn a_runtime_counts_its_failed_nodes() {
    struct Nowhere;
    impl Transport for Nowhere {
        fn send(&self, _msg: Message) {}
    }
    let runtime = raft_core::node::Runtime::new(Default::default()).expect("runtime");
    let start = |group: GroupId, store: Arc<FailingStore>| {
        let mut options = NodeOptions::new(1, group, vec![1]);
        options.tick = Duration::from_millis(2);
        options.runtime = Some(runtime.clone());
        let node = Node::start(options, store, None, Arc::new(Nowhere), KvStore::default())
            .expect("start");
        while !node.is_leader() {
            std::thread::sleep(Duration::from_millis(2));
        }
        node
    };
    let (failing, healthy) = (Arc::new(FailingStore::default()), Arc::new(FailingStore::default()));
    let (bad, good) = (start(1, failing.clone()), start(2, healthy));
    let put = |i: u64| KvOp::Put { key: "k".into(), value: format!("{i}") };
    assert!(bad.propose(put(1).encode(), TIMEOUT).is_ok());
    assert_eq!(runtime.failed_nodes(), 0);
    failing.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(bad.propose(put(2).encode(), TIMEOUT).is_err());
    assert!(bad.failure().is_some());
    assert_eq!(runtime.failed_nodes(), 1, "counted once");
    assert!(bad.propose(put(3).encode(), TIMEOUT).is_err());
    assert_eq!(runtime.failed_nodes(), 1, "a failed node is counted once");
    assert!(good.propose(put(4).encode(), TIMEOUT).is_ok(), "the other node goes on");
    assert!(good.failure().is_none());
    bad.shutdown();
    good.shutdown();
}

/// A counter whose snapshot view waits for a gate before it writes: the node must go on
/// applying (and answering) while the view's snapshot is being written.
struct GatedCounter {
    count: u64,
    gate: Arc<(Mutex<bool>, parking_lot::Condvar)>,
    views: Arc<std::sync::atomic::AtomicU64>,
}

struct GatedView {
    count: u64,
    gate: Arc<(Mutex<bool>, parking_lot::Condvar)>,
}

impl raft_core::SnapshotView for GatedView {
    fn write_to(self: Box<Self>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let (open, opened) = &*self.gate;
        let mut open = open.lock();
        while !*open {
            opened.wait(&mut open);
        }
        out.write_all(&self.count.to_le_bytes())
    }
}

impl raft_core::StateMachine for GatedCounter {
    type Output = u64;
    fn apply(&mut self, entry: &Entry) -> u64 {
        if !entry.data.is_empty() {
            self.count += 1;
        }
        self.count
    }
    fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.count.to_le_bytes())
    }
    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        let mut b = [0; 8];
        input.read_exact(&mut b)?;
        self.count = u64::from_le_bytes(b);
        Ok(())
    }
    fn snapshot_view(&mut self) -> Option<Box<dyn raft_core::SnapshotView>> {
        self.views.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(Box::new(GatedView { count: self.count, gate: self.gate.clone() }))
    }
}

#[test]
fn writing_a_snapshot_from_a_view_does_not_hold_up_applying() {
    struct Nowhere;
    impl Transport for Nowhere {
        fn send(&self, _msg: Message) {}
    }
    let gate = Arc::new((Mutex::new(false), parking_lot::Condvar::new()));
    let views = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let snapshots = Arc::new(MemSnapshotStore::new(2));
    let mut options = NodeOptions::new(1, 3, vec![1]);
    options.tick = Duration::from_millis(2);
    options.raft.snapshot_entries = 10;
    let machine = GatedCounter { count: 0, gate: gate.clone(), views: views.clone() };
    let node = Node::start(
        options,
        Arc::new(MemLogStore::new()),
        Some(snapshots.clone() as Arc<dyn SnapshotStore>),
        Arc::new(Nowhere),
        machine,
    )
    .expect("start");
    while !node.is_leader() {
        std::thread::sleep(Duration::from_millis(2));
    }
    // Well past the threshold: the first snapshot's view is taken, and its write waits at the
    // gate while every proposal is still applied and answered.
    let mut last = 0;
    for _ in 0..50 {
        last = node.propose(Bytes::from_static(b"+"), TIMEOUT).expect("applied while writing");
    }
    assert_eq!(last, 50);
    assert_eq!(views.load(std::sync::atomic::Ordering::SeqCst), 1, "one snapshot at a time");
    assert!(snapshots.latest(3).expect("latest").is_none(), "the gated snapshot is unfinished");
    *gate.0.lock() = true;
    gate.1.notify_all();
    let deadline = Instant::now() + TIMEOUT;
    let first = loop {
        // The oldest one kept: once the gated one is done, the next may follow at once.
        if let Some(meta) = snapshots.list(3).into_iter().min_by_key(|m| m.index) {
            break meta;
        }
        assert!(Instant::now() < deadline, "the snapshot was never finished");
        std::thread::sleep(Duration::from_millis(2));
    };
    // The gated snapshot holds the state at its own index (one no-op entry of the leader's
    // term comes first), not the state when it finished.
    assert!(first.index < 50, "{first:?}");
    let mut reader = snapshots.open(&first).expect("open");
    let data = reader.read_at(0, 8).expect("read");
    assert_eq!(u64::from_le_bytes(data[..8].try_into().expect("8 bytes")), first.index - 1);
    // Later snapshots follow once the first is done.
    for _ in 0..30 {
        node.propose(Bytes::from_static(b"+"), TIMEOUT).expect("applied");
    }
    let deadline = Instant::now() + TIMEOUT;
    while views.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "no second snapshot");
        std::thread::sleep(Duration::from_millis(2));
    }
    node.shutdown();
}

/// Every sync of one follower takes three election timeouts: the thread that delivers the
/// leader's messages must not be the one waiting for that disk, or the follower stops hearing
/// heartbeats and calls an election over its own stall.
#[test]
fn a_follower_with_a_stalled_disk_does_not_depose_its_leader() {
    let net = Arc::new(LocalNet::default());
    let stores: Vec<Arc<FailingStore>> = (0..3).map(|_| Arc::default()).collect();
    let nodes: Vec<Node<KvStore>> = (1..=3u64)
        .map(|id| {
            let mut options = NodeOptions::new(id, 7, vec![1, 2, 3]);
            options.tick = Duration::from_millis(5); // Elections after 50-100 ms.
            let node = Node::start(
                options,
                stores[(id - 1) as usize].clone(),
                None,
                Arc::new(Port { net: net.clone(), from: id }),
                KvStore::default(),
            )
            .expect("start");
            net.inboxes.write().insert(id, node.inbound());
            node
        })
        .collect();
    let deadline = Instant::now() + TIMEOUT;
    let leader = loop {
        if let Some(n) = nodes.iter().find(|n| n.is_leader()) {
            break n.id();
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(5));
    };
    let term = nodes[(leader - 1) as usize].term();
    let slow = (1..=3).find(|&id| id != leader).expect("a follower");
    stores[(slow - 1) as usize].delay_ms.store(300, std::sync::atomic::Ordering::Relaxed);
    // Writes go on (the other follower makes the quorum) for many election timeouts.
    for i in 0..100u64 {
        let cmd = KvOp::Put { key: "k".into(), value: i.to_string() };
        nodes[(leader - 1) as usize].propose(cmd.encode(), TIMEOUT).expect("committed");
        std::thread::sleep(Duration::from_millis(10));
    }
    for n in &nodes {
        assert_eq!(n.term(), term, "node {} moved to another term", n.id());
    }
    assert!(nodes[(leader - 1) as usize].is_leader());
    stores[(slow - 1) as usize].delay_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    for n in nodes {
        n.shutdown();
    }
}

#[test]
fn the_builder_wires_a_node_and_names_what_is_missing() {
    use raft_core::node::NodeBuilder;
    use raft_core::{ConfigError, MemNetwork, Router};
    let router = Arc::new(Router::new());
    let network = MemNetwork::new(64);
    let transport = Arc::new(network.join(4, router.clone()).expect("join"));
    let missing = |b: NodeBuilder| match b.start(KvStore::default()) {
        Err(NodeError::Config(ConfigError::Missing(what))) => what,
        other => panic!("expected a missing part, got {:?}", other.map(|n| n.id())),
    };
    assert_eq!(
        missing(NodeBuilder::new(4).voters([4]).transport(transport.clone())),
        "a log store"
    );
    assert_eq!(missing(NodeBuilder::new(4).voters([4]).log(MemLogStore::new())), "a transport");
    let refused =
        NodeBuilder::new(4).voters([1, 2]).log(MemLogStore::new()).transport(transport.clone());
    assert!(matches!(
        refused.start(KvStore::default()),
        Err(NodeError::Config(ConfigError::NotAVoter { .. }))
    ));
    // A one-node group: the builder registers it with the router, and settings adjusted through
    // `config` and `options` keep the id, group and voters given to the builder.
    let node = NodeBuilder::new(4)
        .group(9)
        .voters([4])
        .config(|c| {
            c.id = 99;
            c.group = 98;
            c.pre_vote = false;
        })
        .options(|o| o.voters = vec![7])
        .tick(Duration::from_millis(2))
        .log(MemLogStore::new())
        .transport(transport)
        .router(router.clone())
        .start(KvStore::default())
        .expect("start");
    assert_eq!(node.id(), 4);
    let put = KvOp::Put { key: "k".into(), value: "v".into() };
    let deadline = Instant::now() + TIMEOUT;
    while !node.is_leader() {
        assert!(Instant::now() < deadline, "a one-node group elects itself");
        std::thread::sleep(Duration::from_millis(2));
    }
    node.propose(put.encode(), TIMEOUT).expect("committed");
    assert_eq!(node.status().expect("status").raft.group, 9);
    assert_eq!(router.unroutable(), 0);
    node.shutdown();
}

/// Every read mode serves the latest write on every node (log mode only on the leader), and
/// the status says which mode runs and whether the lease holds.
#[test]
fn every_read_mode_reads_the_latest_write() {
    use raft_core::node::ReadMode;
    for mode in [ReadMode::Index, ReadMode::Lease, ReadMode::Log] {
        let cluster = Cluster::new(3, |o| o.read_mode = mode);
        let leader = cluster.leader();
        cluster.put("x", "1");
        cluster.put("x", "2");
        for id in 1..=3 {
            let read =
                cluster.node(id).read(|kv: &KvStore| kv.get("x").map(str::to_owned), TIMEOUT);
            match (mode, id == leader) {
                (ReadMode::Log, false) => assert!(
                    matches!(read, Err(NodeError::NotLeader { leader: Some(l) }) if l == leader),
                    "{mode}: {read:?}"
                ),
                _ => assert_eq!(read.expect("read"), Some("2".into()), "{mode} on node {id}"),
            }
        }
        let status = cluster.node(leader).status().expect("status");
        assert_eq!(status.read_mode, mode);
        if mode == ReadMode::Lease {
            let deadline = Instant::now() + TIMEOUT;
            while cluster.node(leader).status().expect("status").raft.lease_remaining_ticks == 0 {
                assert!(Instant::now() < deadline, "the lease never held");
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            assert_eq!(status.raft.lease_remaining_ticks, 0, "{mode} holds no lease");
        }
    }
}

/// `transfer_leader` returns once the old leader follows the target; writes go on there.
#[test]
fn leadership_is_handed_over_on_request() {
    let cluster = Cluster::new(3, |_| {});
    let old = cluster.leader();
    cluster.put("x", "1");
    let to = old % 3 + 1;
    cluster.node(old).transfer_leader(to, TIMEOUT).expect("transfer");
    assert_eq!(cluster.node(old).leader(), Some(to));
    assert_eq!(cluster.leader(), to);
    cluster.put("x", "2");
    assert_eq!(cluster.get("x").as_deref(), Some("2"));
    // Refusals are typed: not a member, not the leader.
    let err = cluster.node(to).transfer_leader(9, TIMEOUT).unwrap_err();
    assert!(matches!(err, NodeError::NotAVoter(9)), "{err:?}");
    let err = cluster.node(old).transfer_leader(old, TIMEOUT).unwrap_err();
    assert!(matches!(err, NodeError::NotLeader { leader: Some(l) } if l == to), "{err:?}");
}

/// A transfer to a node that cannot win is abandoned; proposals were refused meanwhile with
/// `Transferring` (nothing done) and are taken again afterwards.
#[test]
fn a_transfer_to_a_cut_off_node_is_abandoned() {
    let cluster = Cluster::new(3, |_| {});
    let leader = cluster.leader();
    let to = leader % 3 + 1;
    cluster.net.cut.lock().insert(to);
    let started = Instant::now();
    let err = cluster.node(leader).transfer_leader(to, TIMEOUT).unwrap_err();
    assert!(matches!(err, NodeError::TransferAbandoned { to: t } if t == to), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(cluster.node(leader).is_leader());
    let put = KvOp::Put { key: "x".into(), value: "1".into() }.encode();
    cluster.node(leader).propose(put, TIMEOUT).expect("proposals resume");
}

/// A learner started with the driver receives the writes and serves linearizable reads.
#[test]
fn a_learner_node_follows_and_serves_reads() {
    let cluster = Cluster::new(4, |o| {
        o.voters = vec![1, 2, 3];
        o.learners = vec![4];
    });
    let leader = cluster.leader();
    assert_ne!(leader, 4);
    cluster.put("x", "1");
    let read = cluster.node(4).read(|kv: &KvStore| kv.get("x").map(str::to_owned), TIMEOUT);
    assert_eq!(read.expect("read on the learner"), Some("1".into()));
    let status = cluster.node(4).status().expect("status");
    assert_eq!(status.raft.learners, vec![4]);
    assert_eq!(status.raft.voters, vec![1, 2, 3]);
    assert_eq!(status.raft.role, RoleKind::Follower);
}

/// The callback form of a transfer answers once, with the outcome.
#[test]
fn transfer_leader_with_answers_through_its_callback() {
    let cluster = Cluster::new(3, |_| {});
    let old = cluster.leader();
    let to = old % 3 + 1;
    let (tx, rx) = std::sync::mpsc::channel();
    cluster.node(old).transfer_leader_with(to, move |r| {
        let _ = tx.send(r.is_ok());
    });
    assert_eq!(rx.recv_timeout(TIMEOUT).ok(), Some(true));
    assert_eq!(cluster.leader(), to);
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "answered once");
}

/// The membership calls: add learners, promote them once caught up (refused before), and remove
/// the leader itself, which hands over; every answer is the configuration then in effect.
#[test]
fn members_are_added_promoted_and_removed_through_the_driver() {
    let cluster = Cluster::new(5, |o| o.voters = vec![1, 2, 3]);
    for k in 0..20 {
        cluster.put(&format!("k{k}"), "v");
    }
    assert!(cluster.node(4).status().expect("status").raft.membership.is_empty());
    let leader = cluster.leader();
    let m = cluster.node(leader).add_learner(4, "node-4", TIMEOUT).expect("add 4");
    assert_eq!(m.learners, vec![4]);
    let m = cluster.node(leader).add_learner(5, "node-5", TIMEOUT).expect("add 5");
    assert_eq!(m.learners, vec![4, 5]);
    assert_eq!(m.addresses.get(&5).map(String::as_str), Some("node-5"));
    match cluster.node(leader).promote(1, TIMEOUT) {
        Err(NodeError::Membership(MembershipError::NotALearner(1))) => {}
        other => panic!("promoting a voter: {other:?}"),
    }
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    assert!(matches!(
        cluster.node(follower).promote(4, TIMEOUT),
        Err(NodeError::NotLeader { leader: Some(l) }) if l == leader
    ));
    // Both at once, once they have caught up (a lagging learner is refused, nothing done).
    let deadline = Instant::now() + TIMEOUT;
    let changes = vec![MembershipChange::Promote { id: 4 }, MembershipChange::Promote { id: 5 }];
    let m = loop {
        match cluster.node(leader).change_membership(changes.clone(), TIMEOUT) {
            Ok(m) => break m,
            Err(NodeError::Membership(MembershipError::LearnerBehind { .. }))
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(err) => panic!("promote: {err}"),
        }
    };
    assert_eq!((m.voters.clone(), m.is_joint()), (vec![1, 2, 3, 4, 5], false));
    cluster.put("five", "5");
    assert_eq!(
        cluster
            .node(5)
            .read(|kv: &KvStore| kv.get("k3").map(str::to_owned), TIMEOUT)
            .expect("read"),
        Some("v".into())
    );

    let m = cluster.node(leader).remove(leader, TIMEOUT).expect("the leader removes itself");
    assert!(!m.contains(leader) && m.voters.len() == 4);
    let next = cluster.leader();
    assert_ne!(next, leader);
    cluster.put("after", "x");
    let status = cluster.node(next).status().expect("status");
    assert_eq!(status.raft.membership, m);
    assert!(!cluster.node(leader).status().expect("status").raft.membership.is_voter(leader));
}

/// Damage a store finds on its own (scrubbing) reaches the node at its next tick: an entry it
/// already applied is repaired by a snapshot past it, and the group goes on.
#[test]
fn damage_a_store_finds_by_itself_is_repaired() {
    let cluster = Cluster::new(3, |o| {
        o.raft.snapshot_entries = 0;
    });
    for i in 0..20 {
        cluster.put(&format!("k{i}"), "v");
    }
    let leader = cluster.leader();
    let id = (1..=3).find(|&id| id != leader).unwrap();
    let status = |id: NodeId| cluster.node(id).status().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while status(id).applied_index < 10 {
        assert!(Instant::now() < deadline, "the follower applies");
        std::thread::sleep(Duration::from_millis(5));
    }
    let store = &cluster.stores[(id - 1) as usize];
    store.corrupt_entry(7, 5);
    store.report_found(7, 5);
    while status(id).raft.first_index <= 5 {
        assert!(
            Instant::now() < deadline,
            "a snapshot past the damaged entry: {:?}",
            status(id).raft
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(status(id).raft.health, raft_core::Health::Healthy, "its log's end was intact");
    cluster.put("k20", "v");
    let last = cluster.node(cluster.leader()).status().unwrap().raft.commit_index;
    cluster.await_applied(last);
    assert!(cluster.states().windows(2).all(|w| w[0] == w[1]), "replicas agree");
}

/// A leader whose disk fills hands leadership to a follower, so the group keeps taking writes,
/// and catches up by itself once space is freed.
#[test]
fn a_leader_out_of_space_hands_over_and_catches_up_once_space_is_freed() {
    let cluster = Cluster::new(3, |_| {});
    for i in 0..10 {
        cluster.put(&format!("k{i}"), "before");
    }
    let full = cluster.leader();
    cluster.stores[(full - 1) as usize].set_full(true);
    // Its next write is refused by the store: it stops taking proposals and hands over.
    let command = KvOp::Put { key: "k10".into(), value: "maybe".into() };
    let _ = cluster.node(full).propose(command.encode(), Duration::from_millis(200));
    let deadline = Instant::now() + TIMEOUT;
    while cluster.leader() == full {
        assert!(Instant::now() < deadline, "leadership stays on the full node");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = cluster.node(full).status().expect("status");
    assert!(status.storage_full.is_some(), "{status:?}");
    assert!(status.raft.storage_stalled);
    assert!(status.failure.is_none(), "a full disk does not stop the node");
    for i in 11..30 {
        cluster.put(&format!("k{i}"), "during");
    }
    // The full node cannot apply what it cannot make durable, so it falls behind; its
    // reads wait for it (a server sends them to the leader meanwhile).
    assert!(cluster.node(full).applied_index() < cluster.node(cluster.leader()).applied_index());
    cluster.stores[(full - 1) as usize].set_full(false);
    let deadline = Instant::now() + TIMEOUT;
    while cluster.node(full).storage_full().is_some() {
        assert!(Instant::now() < deadline, "the node takes writes again by itself");
        std::thread::sleep(Duration::from_millis(5));
    }
    cluster.put("k30", "after");
    let last = cluster.node(cluster.leader()).status().unwrap().raft.commit_index;
    cluster.await_applied(last);
    let states = cluster.states();
    assert!(states.windows(2).all(|w| w[0] == w[1]), "replicas agree");
    assert_eq!(states[0].iter().filter(|(k, _)| k != "k10").count(), 30, "{:?}", states[0]);
}

/// A group whose only node is out of space refuses new writes with an error that says nothing
/// was done, keeps serving reads, and takes writes again once space is freed, losing nothing.
#[test]
fn a_lone_node_out_of_space_refuses_writes_and_serves_reads() {
    let cluster = Cluster::new(1, |_| {});
    cluster.put("a", "1");
    let node = cluster.node(1);
    cluster.stores[0].set_full(true);
    let put = |key: &str, t: Duration| {
        let command = KvOp::Put { key: key.into(), value: "2".into() };
        node.propose(command.encode(), t)
    };
    // The write the store refused first waits for space (its outcome is unknown until then).
    let first = put("b", Duration::from_millis(100));
    assert!(matches!(first, Err(NodeError::Timeout(_))), "{first:?}");
    let refused = put("c", TIMEOUT).unwrap_err();
    assert!(matches!(refused, NodeError::StorageFull { .. }), "{refused:?}");
    assert!(refused.nothing_done());
    assert!(node.is_leader(), "a lone node keeps leading");
    let read = node.read(|kv: &KvStore| kv.get("a").map(str::to_owned), TIMEOUT).expect("read");
    assert_eq!(read.as_deref(), Some("1"));
    assert!(node.status().expect("status").failure.is_none());
    cluster.stores[0].set_full(false);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match put("d", TIMEOUT) {
            Ok(_) => break,
            Err(err) if err.nothing_done() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(err) => panic!("after space was freed: {err}"),
        }
    }
    let got = node
        .read(|kv: &KvStore| ["a", "b", "c", "d"].map(|k| kv.get(k).map(str::to_owned)), TIMEOUT)
        .expect("read");
    // The held write took effect once written; the refused one never did.
    assert_eq!(got, [Some("1".into()), Some("2".into()), None, Some("2".into())]);
}
