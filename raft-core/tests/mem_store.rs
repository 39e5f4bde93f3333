//! The in-memory log store passes the log store conformance suite in both durability modes.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::sync::Arc;

use raft_core::testkit::StoreHarness;
use raft_core::MemLogStore;

/// Reopening returns the same store; with explicit sync, reopening first loses whatever was not
/// synced, as a restart after a power loss would.
struct MemHarness {
    store: Arc<MemLogStore>,
    explicit_sync: bool,
}

impl MemHarness {
    fn new(explicit_sync: bool) -> MemHarness {
        let store =
            if explicit_sync { MemLogStore::with_explicit_sync() } else { MemLogStore::new() };
        MemHarness { store: Arc::new(store), explicit_sync }
    }
}

impl StoreHarness for MemHarness {
    type Store = Arc<MemLogStore>;

    fn open(&mut self) -> Arc<MemLogStore> {
        if self.explicit_sync {
            self.store.crash();
        }
        Arc::clone(&self.store)
    }
}

raft_core::log_store_conformance!(immediate, crate::MemHarness::new(false));
raft_core::log_store_conformance!(explicit_sync, crate::MemHarness::new(true));

#[test]
fn a_crash_loses_exactly_the_unsynced_writes() {
    use raft_core::{HardState, LogStore, LogWrite};
    let store = MemLogStore::with_explicit_sync();
    let first = raft_core::testkit::entries(1, 5, 1);
    let lsn = store.write(&[LogWrite { group: 1, hard_state: None, entries: &first }]).unwrap();
    store.sync(lsn).unwrap();
    let more = raft_core::testkit::entries(6, 9, 1);
    let hs = HardState { term: 2, vote: Some(1), commit: 5 };
    store.write(&[LogWrite { group: 1, hard_state: Some(hs), entries: &more }]).unwrap();
    assert_eq!(store.log_state(1).unwrap().last_index, 9, "readable before sync");
    store.crash();
    let state = store.log_state(1).unwrap();
    assert_eq!(state.last_index, 5, "unsynced entries are gone");
    assert_eq!(state.hard_state, HardState::default(), "unsynced hard state is gone");
    assert_eq!(store.entries(1, 1, 5, u64::MAX).unwrap(), first);
}
