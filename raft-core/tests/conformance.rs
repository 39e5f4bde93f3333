//! raft-core's own implementations pass the conformance kits: `MemSnapshotStore` the snapshot
//! store kit, the simulator's machines (the key-value map and the bank) the state machine kit,
//! and `MemNetwork` the transport kit. (`MemLogStore` runs the log store kit in
//! `mem_store.rs`.)

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::sync::Arc;

use bytes::Bytes;
use raft_core::rng::Rng;
use raft_core::sim::bank::{Bank, BankCommand, BankOp};
use raft_core::sim::kv::{KvOp, KvStore};
use raft_core::testkit::snapshot_store::SnapshotStoreHarness;
use raft_core::testkit::state_machine::MachineHarness;
use raft_core::testkit::transport::TransportHarness;
use raft_core::{Inbound, MemNetwork, MemSnapshotStore, MemTransport, NodeId};

/// The in-memory snapshot store "survives" a reopen because the harness keeps it.
struct MemSnapshots(MemSnapshotStore);

impl SnapshotStoreHarness for MemSnapshots {
    type Store = MemSnapshotStore;
    fn open(&mut self) -> MemSnapshotStore {
        self.0.clone()
    }
    fn retain(&self) -> usize {
        2
    }
}

raft_core::snapshot_store_conformance!(
    mem_snapshots,
    crate::MemSnapshots(MemSnapshotStore::new(2))
);

struct KvHarness;

impl MachineHarness for KvHarness {
    type Machine = KvStore;
    fn machine(&self) -> KvStore {
        KvStore::default()
    }
    fn command(&self, rng: &mut Rng) -> Bytes {
        let key = format!("k{}", rng.below(6));
        match rng.below(4) {
            0 => KvOp::Get { key },
            1 => KvOp::Put { key, value: format!("v{}", rng.below(1000)) },
            2 => KvOp::Append { key, value: "+".into() },
            // Now and then something no client would send: every replica must skip it alike.
            _ => return Bytes::from(vec![9u8; rng.below(5) as usize]),
        }
        .encode()
    }
}

raft_core::state_machine_conformance!(kv_machine, crate::KvHarness);

struct BankHarness;

impl MachineHarness for BankHarness {
    type Machine = Bank;
    fn machine(&self) -> Bank {
        Bank::new(4, 100)
    }
    fn command(&self, rng: &mut Rng) -> Bytes {
        let op = if rng.chance(0.3) {
            BankOp::Balances
        } else {
            let amount = rng.range(1, 80);
            BankOp::Transfer { from: rng.below(4) as u8, to: rng.below(4) as u8, amount }
        };
        // A few clients whose numbering sometimes repeats (a retry) or goes back (a duplicate).
        let client = rng.below(3);
        BankCommand { client, op_id: rng.range(1, 40), op }.encode()
    }
}

raft_core::state_machine_conformance!(bank_machine, crate::BankHarness);

struct MemNet(MemNetwork);

impl TransportHarness for MemNet {
    type Transport = MemTransport;
    fn start(&mut self, id: NodeId, _nodes: &[NodeId], inbound: Arc<dyn Inbound>) -> MemTransport {
        self.0.join(id, inbound).unwrap()
    }
    fn stop(&mut self, id: NodeId, transport: MemTransport) {
        self.0.leave(id);
        drop(transport);
    }
    fn dropped(&self, transport: &MemTransport) -> u64 {
        transport.dropped()
    }
}

raft_core::transport_conformance!(mem_network, crate::MemNet(MemNetwork::new(1024)));
