//! A real WAL, built from operations the input chooses, then damaged where the input says:
//! recovery must return a log or a typed error, never panic, and never return an entry whose
//! payload differs from what was written.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use raft_core::{Entry, LogStore, LogWrite, Rng};
use raft_wal::{Durability, RecoveryMode, Wal, WalConfig};

fn payload(group: u64, index: u64, term: u64) -> Bytes {
    let mut d = format!("{group}/{index}/{term}").into_bytes();
    d.resize(d.len() + (index % 97) as usize, index as u8);
    Bytes::from(d)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&data[..8]);
    let mut rng = Rng::new(u64::from_le_bytes(seed));
    let lenient = data[8] & 1 == 1;
    let damage = &data[9..];
    let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let config = WalConfig {
        segment_size_bytes: 64 << 10,
        durability: Durability::Never,
        prepared_segments: 0,
        recovery: if lenient { RecoveryMode::TruncateAtCorruption } else { RecoveryMode::Strict },
        ..WalConfig::default()
    };
    {
        let (wal, _) = Wal::open(dir.path(), config.clone()).unwrap();
        let mut last = [0u64; 3];
        let mut term = [1u64; 3];
        for _ in 0..rng.range(1, 40) {
            let g = rng.below(3) as usize;
            let from = if last[g] > 2 && rng.chance(0.2) {
                term[g] += 1;
                last[g] - 1
            } else {
                last[g] + 1
            };
            let n = rng.range(1, 20);
            let es: Vec<Entry> = (from..from + n).map(|i| Entry::normal(term[g], i, payload(g as u64, i, term[g]))).collect();
            wal.write(&[LogWrite { group: g as u64, hard_state: None, entries: &es }]).unwrap();
            last[g] = from + n - 1;
        }
    }
    // Damage: (offset u16, xor byte) triples applied to the first segment file.
    let path = dir.path().join(raft_wal::testkit::segment_file_name(1));
    let mut bytes = std::fs::read(&path).unwrap();
    for d in damage.chunks_exact(3) {
        let at = u16::from_le_bytes([d[0], d[1]]) as usize % bytes.len();
        bytes[at] ^= d[2];
    }
    std::fs::write(&path, &bytes).unwrap();
    if let Ok((wal, _)) = Wal::open(dir.path(), config) {
        for group in 0..3u64 {
            let Ok(s) = wal.log_state(group) else { continue };
            if s.last_index < s.first_index {
                continue;
            }
            if let Ok(es) = wal.entries(group, s.first_index, s.last_index, u64::MAX) {
                for e in es {
                    assert_eq!(e.data, payload(group, e.index, e.term), "a damaged entry was returned as data");
                }
            }
        }
    }
});
