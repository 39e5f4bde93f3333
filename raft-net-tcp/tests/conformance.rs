//! `TcpTransport` passes raft-core's transport conformance kit on loopback: each node listens
//! on a port reserved when the harness is made, and a restarted node listens on the same one.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use raft_core::testkit::transport::TransportHarness;
use raft_core::{Inbound, NodeId};
use raft_net_tcp::{TcpConfig, TcpTransport};

struct TcpHarness {
    /// Node `i + 1` listens on `addrs[i]`; its listener waits here until the node starts.
    addrs: Vec<SocketAddr>,
    reserved: Vec<Option<TcpListener>>,
}

impl TcpHarness {
    fn new() -> TcpHarness {
        let reserved: Vec<TcpListener> =
            (0..3).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
        let addrs = reserved.iter().map(|l| l.local_addr().expect("address")).collect();
        TcpHarness { addrs, reserved: reserved.into_iter().map(Some).collect() }
    }
}

impl TransportHarness for TcpHarness {
    type Transport = TcpTransport;

    fn start(&mut self, id: NodeId, nodes: &[NodeId], inbound: Arc<dyn Inbound>) -> TcpTransport {
        let addr = |n: NodeId| self.addrs[(n - 1) as usize];
        let mut config = TcpConfig::new(9, id, addr(id));
        config.peers =
            nodes.iter().filter(|&&n| n != id).map(|&n| (n, addr(n))).collect::<BTreeMap<_, _>>();
        config.backoff_min = Duration::from_millis(5);
        config.backoff_max = Duration::from_millis(50);
        let started = match self.reserved[(id - 1) as usize].take() {
            Some(listener) => TcpTransport::start_with_listener(config, listener, inbound),
            None => TcpTransport::start(config, inbound), // A restart binds the port again.
        };
        started.unwrap_or_else(|e| panic!("start node {id}: {e}"))
    }

    fn stop(&mut self, _id: NodeId, transport: TcpTransport) {
        transport.shutdown();
    }

    fn dropped(&self, transport: &TcpTransport) -> u64 {
        transport.metrics().iter().map(|p| p.dropped).sum()
    }
}

raft_core::transport_conformance!(tcp, crate::TcpHarness::new());
