//! Arbitrary bytes where a segment's records go, behind a valid header: recovery (and the
//! record decoder it runs) must return a log or a typed error, and whatever log it returns
//! must read back without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_core::LogStore;
use raft_wal::testkit::{segment_file_name, segment_with_body};
use raft_wal::{Durability, Wal, WalConfig};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let file = segment_with_body(1, 1, 64 << 10, data);
    std::fs::write(dir.path().join(segment_file_name(1)), file).unwrap();
    let config = WalConfig { segment_size_bytes: 64 << 10, durability: Durability::Never, prepared_segments: 0, ..WalConfig::default() };
    if let Ok((wal, _)) = Wal::open(dir.path(), config) {
        for group in wal.groups().unwrap_or_default() {
            if let Ok(s) = wal.log_state(group) {
                if s.last_index >= s.first_index {
                    let _ = wal.entries(group, s.first_index, s.last_index, u64::MAX);
                }
            }
        }
    }
});
