//! raft-core's log store conformance suite against the raft-engine store (many groups, reopen
//! after sync, concurrent writers, a random model), plus a restart mid-write.

#![cfg(feature = "raft-engine")]
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use raft_core::testkit::StoreHarness;
use raftkit_examples::engine_store::EngineStore;

struct EngineHarness {
    dir: tempfile::TempDir,
}

impl StoreHarness for EngineHarness {
    type Store = EngineStore;

    fn open(&mut self) -> EngineStore {
        EngineStore::open(self.dir.path()).unwrap()
    }
}

fn harness() -> EngineHarness {
    EngineHarness { dir: tempfile::tempdir().unwrap() }
}

raft_core::log_store_conformance!(engine, crate::harness());
