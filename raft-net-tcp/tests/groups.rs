//! Many groups on one connection: one group's slow state machine must not delay another
//! group's messages. Two nodes host two groups over one `TcpTransport` each, so both groups'
//! messages share the one connection between them, and its reader threads; group 1's machine
//! takes 500 ms per entry. With two voters every commit needs both nodes, so a reader held by
//! group 1's applying would stall group 2 whichever node leads it. Group 2 must keep its leader
//! and commit at its usual pace while group 1 grinds.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::node::{Node, NodeOptions};
use raft_core::{Entry, EntryKind, MemLogStore, NodeId, Router, StateMachine};
use raft_net_tcp::{TcpConfig, TcpTransport};

const SLOW_APPLY: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(10);

/// Counts applied entries, taking `delay` for each.
struct Counter {
    delay: Duration,
    applied: u64,
}

impl StateMachine for Counter {
    type Output = u64;

    fn apply(&mut self, entry: &Entry) -> u64 {
        if entry.kind == EntryKind::Normal {
            std::thread::sleep(self.delay);
            self.applied += 1;
        }
        self.applied
    }

    fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.applied.to_le_bytes())
    }

    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        let mut word = [0u8; 8];
        input.read_exact(&mut word)?;
        self.applied = u64::from_le_bytes(word);
        Ok(())
    }
}

struct Process {
    transport: Arc<TcpTransport>,
    /// Group 1 (slow) and group 2 (fast).
    slow: Node<Counter>,
    fast: Node<Counter>,
}

fn start_cluster() -> Vec<Process> {
    let listeners: Vec<TcpListener> =
        (0..2).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let voters: Vec<NodeId> = vec![1, 2];
    let mut processes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as NodeId + 1;
        let mut config = TcpConfig::new(5, id, addrs[i]);
        config.peers = voters
            .iter()
            .filter(|&&p| p != id)
            .map(|&p| (p, addrs[(p - 1) as usize]))
            .collect::<BTreeMap<_, _>>();
        let router = Arc::new(Router::new());
        let transport =
            Arc::new(TcpTransport::start_with_listener(config, listener, router.clone()).unwrap());
        let store = Arc::new(MemLogStore::new());
        let node = |group: u64, delay: Duration| {
            let mut options = NodeOptions::new(id, group, voters.clone());
            options.raft.snapshot_bytes = 0;
            let machine = Counter { delay, applied: 0 };
            let node =
                Node::start(options, store.clone(), None, transport.clone(), machine).unwrap();
            router.register(group, node.inbound()).expect("a new group");
            node
        };
        let slow = node(1, SLOW_APPLY);
        let fast = node(2, Duration::ZERO);
        processes.push(Process { transport, slow, fast });
    }
    processes
}

fn leader_of(nodes: &[&Node<Counter>]) -> usize {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(i) = nodes.iter().position(|n| n.is_leader()) {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Proposes `count` entries to group 2's leader one after another; returns the longest wait.
fn fast_writes(fast: &Node<Counter>, count: usize) -> Duration {
    (0..count)
        .map(|_| {
            let started = Instant::now();
            fast.propose(Bytes::from_static(b"+1"), TIMEOUT).unwrap();
            std::thread::sleep(Duration::from_millis(10));
            started.elapsed()
        })
        .max()
        .unwrap_or_default()
}

#[test]
fn a_slow_state_machine_does_not_delay_another_group_on_the_same_connection() {
    let processes = start_cluster();
    let slow: Vec<&Node<Counter>> = processes.iter().map(|p| &p.slow).collect();
    let fast: Vec<&Node<Counter>> = processes.iter().map(|p| &p.fast).collect();
    let slow_leader = leader_of(&slow);
    let fast_leader = leader_of(&fast);
    let before = fast_writes(fast[fast_leader], 20);
    let term = fast[fast_leader].term();

    // Group 1 gets entries whose applying takes every node 500 ms each, on every node.
    let pending: Vec<_> =
        (0..4).map(|_| slow[slow_leader].propose_async(Bytes::from_static(b"+1"))).collect();
    let deadline = Instant::now() + TIMEOUT;
    while processes.iter().all(|p| p.slow.status().unwrap().applied_index < 2) {
        assert!(Instant::now() < deadline, "group 1 never started applying");
        std::thread::sleep(Duration::from_millis(5));
    }
    // While group 1's machines grind, group 2 writes go on at their usual pace, through the
    // same connections and reader threads.
    let during = fast_writes(fast[fast_leader], 40);
    assert!(
        during < SLOW_APPLY / 2,
        "a group 2 write waited {during:?} while group 1 applied (before: {before:?})"
    );
    assert_eq!(fast[fast_leader].term(), term, "group 2 changed term while group 1 was slow");
    assert!(fast[fast_leader].is_leader(), "group 2 lost its leader while group 1 was slow");
    for p in pending {
        p.wait(TIMEOUT).unwrap();
    }
    for process in processes {
        process.slow.shutdown();
        process.fast.shutdown();
        process.transport.shutdown();
    }
}
