//! Property test: random operation sequences (append with suffix replacement, compaction
//! inside and past the log, hard state, reopen) over several groups, run against the WAL and
//! against raft-core's in-memory store as the model; after every step both must hold the same
//! logs. Small segments make rolls, checkpoints and segment retirement frequent.

#![allow(clippy::unwrap_used)] // Test code.

use bytes::Bytes;
use proptest::prelude::*;
use raft_core::{Entry, HardState, LogStore, LogWrite, MemLogStore};
use raft_wal::{Durability, Wal, WalConfig};

#[derive(Clone, Debug)]
enum Op {
    /// Append `n` entries to `group`, replacing the last `replace` entries (with a new term).
    Append {
        group: u64,
        replace: u64,
        n: u64,
        size: usize,
    },
    /// Compact `group` at `back` entries before its end, or past its end if `back` is 0.
    Compact {
        group: u64,
        back: u64,
    },
    HardState {
        group: u64,
        term: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..5, 0u64..4, 1u64..12, 0usize..9000)
            .prop_map(|(group, replace, n, size)| Op::Append { group, replace, n, size }),
        1 => (1u64..5, 0u64..20).prop_map(|(group, back)| Op::Compact { group, back }),
        1 => (1u64..5, 1u64..100).prop_map(|(group, term)| Op::HardState { group, term }),
        1 => Just(Op::Reopen),
    ]
}

fn config() -> WalConfig {
    WalConfig {
        segment_size_bytes: 64 << 10,
        durability: Durability::group_commit(),
        prepared_segments: 1,
        ..WalConfig::default()
    }
}

fn payload(group: u64, index: u64, term: u64, size: usize) -> Bytes {
    let mut data = format!("{group}/{index}/{term}:").into_bytes();
    data.resize(data.len() + size, (index % 256) as u8);
    Bytes::from(data)
}

fn same(wal: &Wal, model: &MemLogStore, step: usize) -> Result<(), TestCaseError> {
    for group in 1..5 {
        let (a, b) = (wal.log_state(group).unwrap(), model.log_state(group).unwrap());
        prop_assert_eq!(a, b, "step {}: group {} state", step, group);
        if a.last_index >= a.first_index {
            let x = wal.entries(group, a.first_index, a.last_index, u64::MAX).unwrap();
            let y = model.entries(group, b.first_index, b.last_index, u64::MAX).unwrap();
            prop_assert_eq!(x, y, "step {}: group {} entries", step, group);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_wal_behaves_like_the_in_memory_store(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), config()).unwrap().0;
        let model = MemLogStore::new();
        let mut lsn = raft_core::Lsn(0);
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Append { group, replace, n, size } => {
                    let s = model.log_state(group).unwrap();
                    let held = s.last_index + 1 - s.first_index;
                    let replace = replace.min(held);
                    let from = s.last_index + 1 - replace;
                    let top = if s.last_index >= s.first_index {
                        model.term(group, s.last_index).unwrap()
                    } else {
                        s.base_term
                    };
                    let term = (top + u64::from(replace > 0)).max(1);
                    let es: Vec<Entry> = (from..from + n)
                        .map(|i| Entry::normal(term, i, payload(group, i, term, size % (1 + i as usize % 7 * 1500))))
                        .collect();
                    let w = [LogWrite { group, hard_state: None, entries: &es }];
                    lsn = wal.write(&w).unwrap();
                    model.write(&w).unwrap();
                }
                Op::Compact { group, back } => {
                    let s = model.log_state(group).unwrap();
                    let (through, term) = if back > 0 && s.last_index >= s.first_index + back {
                        let through = s.last_index - back;
                        (through, model.term(group, through).unwrap())
                    } else {
                        (s.last_index + 3, s.base_term.max(model.term(group, s.last_index).unwrap_or(0)) + 1)
                    };
                    lsn = wal.compact(group, through, term).unwrap();
                    model.compact(group, through, term).unwrap();
                }
                Op::HardState { group, term } => {
                    let hs = HardState { term, vote: Some(group), commit: 0 };
                    let w = [LogWrite { group, hard_state: Some(hs), entries: &[] }];
                    lsn = wal.write(&w).unwrap();
                    model.write(&w).unwrap();
                }
                Op::Reopen => {
                    wal.sync(lsn).unwrap();
                    drop(wal);
                    wal = Wal::open(dir.path(), config()).unwrap().0;
                }
            }
            same(&wal, &model, step)?;
        }
        wal.sync(lsn).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), config()).unwrap().0;
        same(&wal, &model, usize::MAX)?;
    }
}
