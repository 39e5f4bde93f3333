//! The [`Transport`] conformance suite: [`TransportHarness`] and
//! [`transport_conformance!`](crate::transport_conformance).
//!
//! What the node driver asks of a transport: what is delivered was sent (to that node, in that
//! group, unchanged), one sender's messages to one node arrive in the order sent once the link
//! is up, sending never blocks (a peer that is down or slow costs dropped messages, counted,
//! never a stalled sender), and a node that restarts is reached again without restarting its
//! peers.
//!
//! ```
//! use std::sync::Arc;
//! use raft_core::testkit::transport::TransportHarness;
//! use raft_core::{Inbound, MemNetwork, MemTransport, NodeId};
//!
//! struct MemHarness(MemNetwork);
//!
//! impl TransportHarness for MemHarness {
//!     type Transport = MemTransport;
//!     fn start(&mut self, id: NodeId, _nodes: &[NodeId], inbound: Arc<dyn Inbound>) -> MemTransport {
//!         self.0.join(id, inbound).expect("a delivery thread")
//!     }
//!     fn stop(&mut self, id: NodeId, transport: MemTransport) {
//!         self.0.leave(id);
//!         drop(transport);
//!     }
//!     fn dropped(&self, transport: &MemTransport) -> u64 {
//!         transport.dropped()
//!     }
//! }
//!
//! raft_core::transport_conformance!(mem, crate::MemHarness(raft_core::MemNetwork::new(1024)));
//! # fn main() {}
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::message::{Heartbeat, Message, MessageBody};
use crate::transport::{Inbound, Transport};
use crate::types::{GroupId, NodeId};

/// How long a case waits for something that must happen (a connection, a delivery) before it
/// fails. Generous: CI machines are slow and shared; nothing here measures speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Starts and stops the transports of a few nodes (ids from 1) on one machine.
pub trait TransportHarness {
    /// The transport type.
    type Transport: Transport + 'static;

    /// Starts node `id` of the nodes `nodes`, delivering what it receives into `inbound`. It is
    /// called again for an id after [`stop`](TransportHarness::stop), to restart that node at
    /// the same address.
    fn start(&mut self, id: NodeId, nodes: &[NodeId], inbound: Arc<dyn Inbound>)
        -> Self::Transport;

    /// Stops node `id`'s transport: it neither sends nor receives any more.
    fn stop(&mut self, id: NodeId, transport: Self::Transport);

    /// Messages `transport` dropped so far (full queues, peers not reachable).
    fn dropped(&self, transport: &Self::Transport) -> u64;
}

/// Collects what a node receives.
#[derive(Default)]
pub struct Collector {
    got: Mutex<Vec<Message>>,
}

impl Collector {
    /// What arrived so far, in order.
    pub fn messages(&self) -> Vec<Message> {
        self.got.lock().clone()
    }
}

impl Inbound for Collector {
    fn deliver(&self, msg: Message) {
        self.got.lock().push(msg);
    }
}

/// A heartbeat from `from` to `to` in `group`, numbered by `seq` (in its commit field).
pub fn numbered(group: GroupId, from: NodeId, to: NodeId, seq: u64) -> Message {
    Message {
        group,
        from,
        to,
        term: 1,
        body: MessageBody::Heartbeat(Heartbeat { commit: seq, round: 0 }),
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "gave up after {PATIENCE:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends numbered probes from `from` to `to` until one arrives at `collector` (the link is up).
fn probe_until_connected<T: Transport>(t: &T, from: NodeId, to: NodeId, collector: &Collector) {
    let mut seq = 1u64 << 40;
    wait_until(&format!("a probe from {from} reaches {to}"), || {
        seq += 1;
        t.send(numbered(99, from, to, seq));
        std::thread::sleep(Duration::from_millis(20));
        collector.messages().iter().any(|m| m.group == 99 && m.from == from)
    });
}

fn start_nodes<H: TransportHarness>(h: &mut H, n: u64) -> (Vec<H::Transport>, Vec<Arc<Collector>>) {
    let ids: Vec<NodeId> = (1..=n).collect();
    let collectors: Vec<Arc<Collector>> = ids.iter().map(|_| Arc::default()).collect();
    let transports =
        ids.iter().map(|&id| h.start(id, &ids, collectors[(id - 1) as usize].clone())).collect();
    (transports, collectors)
}

/// Messages of two groups from one node to two others arrive unchanged, each stream in the
/// order sent, and nothing arrives that was not sent.
pub fn delivers_every_group_in_order<H: TransportHarness>(h: &mut H) {
    let (transports, collectors) = start_nodes(h, 3);
    for to in [2, 3] {
        probe_until_connected(&transports[0], 1, to, &collectors[(to - 1) as usize]);
    }
    let mut sent = Vec::new();
    // Alternating groups, and every two messages the other receiver.
    let message = |seq: u64| numbered(1 + seq % 2, 1, 2 + (seq / 2) % 2, seq);
    for seq in 0..300u64 {
        let msg = message(seq);
        sent.push(msg.clone());
        transports[0].send(msg);
    }
    // A batch goes through send_all as well.
    let batch: Vec<Message> = (300..400u64).map(message).collect();
    sent.extend(batch.iter().cloned());
    transports[0].send_all(batch);
    for to in [2u64, 3] {
        let collector = &collectors[(to - 1) as usize];
        let expected: Vec<&Message> = sent.iter().filter(|m| m.to == to).collect();
        wait_until(&format!("node {to} has its {} messages", expected.len()), || {
            collector.messages().iter().filter(|m| m.group != 99).count() >= expected.len()
        });
        let got: Vec<Message> =
            collector.messages().into_iter().filter(|m| m.group != 99).collect();
        for group in [1, 2] {
            let want: Vec<&Message> =
                expected.iter().copied().filter(|m| m.group == group).collect();
            let have: Vec<&Message> = got.iter().filter(|m| m.group == group).collect();
            assert_eq!(have, want, "node {to}, group {group}: not the messages sent, in order");
        }
        assert!(got.iter().all(|m| m.to == to && m.from == 1), "node {to} got another's message");
    }
    for (id, t) in transports.into_iter().enumerate() {
        h.stop(id as NodeId + 1, t);
    }
}

/// Sending to a node that is not running returns at once, however much is sent: the messages
/// are dropped (and counted) once the queue for it is full.
pub fn sending_never_blocks_and_drops_are_counted<H: TransportHarness>(h: &mut H) {
    let ids = [1, 2];
    let collector: Arc<Collector> = Arc::default();
    let transport = Arc::new(h.start(1, &ids, collector));
    let sender = transport.clone();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for seq in 0..50_000 {
            sender.send(numbered(1, 1, 2, seq));
        }
        let _ = done_tx.send(());
    });
    assert!(done_rx.recv_timeout(PATIENCE).is_ok(), "sending to a node that is down blocked");
    wait_until("drops are counted", || h.dropped(&transport) > 0);
    wait_until("the sending thread lets go", || Arc::strong_count(&transport) == 1);
    let Ok(transport) = Arc::try_unwrap(transport) else { panic!("the sending thread ended") };
    h.stop(1, transport);
}

/// A node that stops and starts again (same id, same address) is reached again by a peer that
/// kept running, and messages between the two flow both ways.
pub fn a_restarted_node_is_reached_again<H: TransportHarness>(h: &mut H) {
    let ids = [1, 2];
    let (mut transports, collectors) = start_nodes(h, 2);
    probe_until_connected(&transports[0], 1, 2, &collectors[1]);
    let two = transports.pop().expect("node 2");
    h.stop(2, two);
    let fresh: Arc<Collector> = Arc::default();
    let two = h.start(2, &ids, fresh.clone());
    probe_until_connected(&transports[0], 1, 2, &fresh);
    probe_until_connected(&two, 2, 1, &collectors[0]);
    h.stop(2, two);
    let one = transports.pop().expect("node 1");
    h.stop(1, one);
}

/// Expands to one `#[test]` per transport conformance case, in a module named `$name`, with the
/// harness `$harness` builds (a fresh harness per test).
#[macro_export]
macro_rules! transport_conformance {
    ($name:ident, $harness:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::testkit::transport as kit;

            #[test]
            fn delivers_every_group_in_order() {
                kit::delivers_every_group_in_order(&mut $harness);
            }
            #[test]
            fn sending_never_blocks_and_drops_are_counted() {
                kit::sending_never_blocks_and_drops_are_counted(&mut $harness);
            }
            #[test]
            fn a_restarted_node_is_reached_again() {
                kit::a_restarted_node_is_reached_again(&mut $harness);
            }
        }
    };
}
