//! `FileSnapshotStore` passes raft-core's snapshot store conformance kit: reopening opens the
//! same directory again, so what survives a reopen is what is on disk.

use raft_core::testkit::snapshot_store::SnapshotStoreHarness;
use raft_snapshot::{FileSnapshotStore, SnapshotStoreOptions};

struct FileHarness {
    dir: tempfile::TempDir,
    options: SnapshotStoreOptions,
}

impl FileHarness {
    /// Small frames, so a snapshot spans many of them.
    fn new() -> FileHarness {
        let options = SnapshotStoreOptions { frame_bytes: 4096, ..SnapshotStoreOptions::default() };
        FileHarness { dir: tempfile::tempdir().expect("temporary directory"), options }
    }
}

impl SnapshotStoreHarness for FileHarness {
    type Store = FileSnapshotStore;

    fn open(&mut self) -> FileSnapshotStore {
        match FileSnapshotStore::open(self.dir.path(), self.options.clone()) {
            Ok((store, _report)) => store,
            Err(err) => panic!("open {}: {err}", self.dir.path().display()),
        }
    }

    fn retain(&self) -> usize {
        self.options.retain
    }
}

raft_core::snapshot_store_conformance!(file_store, crate::FileHarness::new());
