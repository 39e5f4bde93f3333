//! raft-core's node driver on the WAL: three nodes in one process, each with its own WAL
//! directory, replicating through an in-memory transport; the whole cluster restarts from disk.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use raft_core::node::{Node, NodeOptions};
use raft_core::sim::kv::{KvOp, KvStore};
use raft_core::{Inbound, Message, NodeId, Transport};
use raft_wal::{Durability, Wal, WalConfig};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct LocalNet {
    inboxes: RwLock<HashMap<NodeId, Arc<dyn Inbound>>>,
}

impl Transport for LocalNet {
    fn send(&self, msg: Message) {
        let inbox = self.inboxes.read().get(&msg.to).cloned();
        if let Some(inbox) = inbox {
            inbox.deliver(msg);
        }
    }
}

fn start(
    dirs: &[tempfile::TempDir],
    net: &Arc<LocalNet>,
    durability: Durability,
) -> Vec<Node<KvStore>> {
    (1..=3u64)
        .map(|id| {
            let config =
                WalConfig { segment_size_bytes: 1 << 20, durability, ..WalConfig::default() };
            let (wal, _report) =
                Wal::open(dirs[(id - 1) as usize].path(), config).expect("open wal");
            let mut options = NodeOptions::new(id, 1, vec![1, 2, 3]);
            options.tick = Duration::from_millis(5);
            let node = Node::start(options, Arc::new(wal), None, net.clone(), KvStore::default())
                .expect("start node");
            net.inboxes.write().insert(id, node.inbound());
            node
        })
        .collect()
}

fn leader(nodes: &[Node<KvStore>]) -> &Node<KvStore> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(node) = nodes.iter().find(|n| n.is_leader()) {
            return node;
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn put(nodes: &[Node<KvStore>], key: String, value: String) {
    let command = KvOp::Put { key, value };
    loop {
        match leader(nodes).propose(command.encode(), TIMEOUT) {
            Ok(_) => return,
            Err(err) if err.nothing_done() => std::thread::sleep(Duration::from_millis(5)),
            Err(err) => panic!("put: {err}"),
        }
    }
}

#[test]
fn a_wal_backed_cluster_survives_a_full_restart() {
    for durability in [Durability::Always, Durability::group_commit()] {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
        let net = Arc::new(LocalNet::default());
        let nodes = start(&dirs, &net, durability);
        // Concurrent writers, so group commit has syncs to share.
        std::thread::scope(|s| {
            for client in 0..4u64 {
                let nodes = &nodes;
                s.spawn(move || {
                    for i in 0..50u64 {
                        put(nodes, format!("k{client}-{}", i % 5), format!("v{i}"));
                    }
                });
            }
        });
        for node in nodes {
            node.shutdown();
        }
        net.inboxes.write().clear();

        let nodes = start(&dirs, &net, durability);
        let node = leader(&nodes);
        for client in 0..4u64 {
            for k in 0..5u64 {
                let key = format!("k{client}-{k}");
                let got = node
                    .read(move |kv: &KvStore| kv.get(&key).map(str::to_owned), TIMEOUT)
                    .expect("read");
                assert_eq!(got, Some(format!("v{}", 45 + k)), "{durability:?}");
            }
        }
        for node in nodes {
            node.shutdown();
        }
    }
}
