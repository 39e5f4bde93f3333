//! raft-core's log store conformance suite, run against the WAL in every durability mode, with
//! small segments so rolls, checkpoints and retirement happen often.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::time::Duration;

use raft_core::testkit::StoreHarness;
use raft_wal::{AppendVia, Durability, Wal, WalConfig};

struct WalHarness {
    dir: tempfile::TempDir,
    durability: Durability,
    append_via: AppendVia,
}

impl WalHarness {
    fn new(durability: Durability) -> WalHarness {
        WalHarness { dir: tempfile::tempdir().unwrap(), durability, append_via: AppendVia::Write }
    }

    fn through_the_mapping(durability: Durability) -> WalHarness {
        WalHarness { append_via: AppendVia::Mmap, ..WalHarness::new(durability) }
    }
}

impl StoreHarness for WalHarness {
    type Store = Wal;

    fn open(&mut self) -> Wal {
        let config = WalConfig {
            segment_size_bytes: 64 << 10,
            durability: self.durability,
            prepared_segments: 1,
            append_via: self.append_via,
            ..WalConfig::default()
        };
        Wal::open(self.dir.path(), config).unwrap().0
    }

    fn syncs(&self) -> bool {
        self.durability != Durability::Never
    }
}

raft_core::log_store_conformance!(always, crate::WalHarness::new(raft_wal::Durability::Always));
raft_core::log_store_conformance!(
    group_commit,
    crate::WalHarness::new(raft_wal::Durability::group_commit())
);
raft_core::log_store_conformance!(
    group_commit_with_delay,
    crate::WalHarness::new(raft_wal::Durability::GroupCommit {
        max_delay: Duration::from_micros(200),
        max_bytes: 64 << 10,
    })
);
raft_core::log_store_conformance!(
    interval,
    crate::WalHarness::new(raft_wal::Durability::Interval(Duration::from_millis(2)))
);
raft_core::log_store_conformance!(never, crate::WalHarness::new(raft_wal::Durability::Never));
raft_core::log_store_conformance!(
    group_commit_through_the_mapping,
    crate::WalHarness::through_the_mapping(raft_wal::Durability::group_commit())
);
