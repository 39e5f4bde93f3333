//! The KV server's state machine (`KvMachine`) passes raft-core's state machine conformance kit:
//! deterministic apply, exact snapshot and restore, views that write the state they were taken
//! at, damaged snapshots refused.

use bytes::Bytes;
use raft_core::rng::Rng;
use raft_core::testkit::state_machine::MachineHarness;
use raftkit_examples::kv::{KvMachine, KvWrite};

struct KvMachineHarness;

impl MachineHarness for KvMachineHarness {
    type Machine = KvMachine;

    fn machine(&self) -> KvMachine {
        KvMachine::default()
    }

    fn command(&self, rng: &mut Rng) -> Bytes {
        let key = |rng: &mut Rng| Bytes::from(format!("key{}", rng.below(40)));
        match rng.below(10) {
            0..=5 => {
                let value = Bytes::from(vec![b'a' + rng.below(26) as u8; rng.below(64) as usize]);
                KvWrite::Set { key: key(rng), value }.encode()
            }
            6 | 7 => {
                KvWrite::Del { keys: (0..rng.range(1, 3)).map(|_| key(rng)).collect() }.encode()
            }
            8 => KvWrite::IncrBy { key: key(rng), by: rng.range(0, 20) as i64 - 10 }.encode(),
            // Something no client sends: every replica must refuse it alike.
            _ => Bytes::from(vec![0xEE; rng.below(6) as usize]),
        }
    }
}

raft_core::state_machine_conformance!(kv_machine, crate::KvMachineHarness);
