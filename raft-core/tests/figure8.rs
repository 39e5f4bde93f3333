//! Figure 8 of the Raft paper, staged exactly in the simulator: a leader that commits an entry
//! of an earlier term by counting replicas lets a later leader overwrite a committed entry. The
//! simulator must pass this schedule with the real commit rule and catch the broken one.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use bytes::Bytes;
use raft_core::sim::{Cluster, CrashableStore, Faults, SimOptions};
use raft_core::{Config, Entry, HardState, LogStore, LogWrite, MemLogStore};

const MS: u64 = 1_000;

/// A store holding `terms` as the log (entry `i` has term `terms[i - 1]`) and `hard_state`.
fn store(terms: &[u64], hard_state: HardState) -> Box<dyn CrashableStore> {
    let store = MemLogStore::with_explicit_sync();
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry::normal(t, i as u64 + 1, Bytes::from(format!("e{}t{t}", i + 1))))
        .collect();
    let lsn = store
        .write(&[LogWrite { group: 0, hard_state: Some(hard_state), entries: &entries }])
        .expect("write");
    store.sync(lsn).expect("sync");
    Box::new(store)
}

/// Runs the Figure 8 schedule; returns the simulator's verdict.
fn figure_8(broken_commit_rule: bool) -> Result<(), String> {
    let raft = {
        let mut c = Config::default();
        c.// One entry per message and one message in flight = the old entry and the new leader's
        // no-op travel separately; c.which is the window Figure 8 needs.
        append_entries_max = 1;
        c.inflight_msgs_max = 1;
        c.pre_vote = false;
        c.check_quorum = false;
        c
    };
    let opts = SimOptions { nodes: 5, seed: 8, raft, ..SimOptions::default() };
    // (a)-(b): S1 led term 2 and reached S2 with entry 2; S5 led term 3 with its own entry 2,
    // elected by S3 and S4, then crashed.
    let mut cluster = Cluster::with_stores(opts, |id| match id {
        1 | 2 => store(&[1, 2], HardState { term: 2, vote: Some(1), commit: 1 }),
        3 | 4 => store(&[1], HardState { term: 3, vote: Some(5), commit: 1 }),
        _ => store(&[1, 3], HardState { term: 3, vote: Some(5), commit: 1 }),
    });
    if broken_commit_rule {
        cluster.set_faults(Faults::commit_any_term());
    }
    cluster.crash(5);
    cluster.crash(2);
    // (c): S1 is the only one that can win (its log is the most up to date among S1, S3, S4).
    let elected = cluster
        .run_until(3_000 * MS, MS, |c| c.raft(1).is_some_and(|r| r.is_leader()))
        .map_err(|e| e.to_string())?;
    assert!(elected, "S1 was not elected");
    // S1 brings S3 and S4 its entry 2 of term 2. Once S4 holds it, S1's next append (its
    // no-op of term 4) must not reach S4.
    let s4_has_2 = |c: &Cluster| c.raft(4).is_some_and(|r| r.term_at(2) == Some(2));
    let s3_has_2 = |c: &Cluster| c.raft(3).is_some_and(|r| r.term_at(2) == Some(2));
    cluster.run_until(1_000 * MS, 10, s4_has_2).map_err(|e| e.to_string())?;
    cluster.block_link(1, 4);
    cluster.run_until(1_000 * MS, 10, s3_has_2).map_err(|e| e.to_string())?;
    cluster.run_for(5 * MS).map_err(|e| e.to_string())?;
    let s1_commit = cluster.raft(1).map(|r| r.commit_index());
    // (d): S1 crashes; S5 returns and wins with the votes of S2 and S4 (their last entries are
    // of term 2 < 3).
    cluster.crash(1);
    cluster.restart(2);
    cluster.restart(5);
    cluster.heal();
    // S3 got S1's no-op (term 4) and would refuse S5; keep it out so S5 can win.
    cluster.disconnect(3);
    let s5_leads = cluster
        .run_until(3_000 * MS, MS, |c| c.raft(5).is_some_and(|r| r.is_leader()))
        .map_err(|e| e.to_string())?;
    assert!(s5_leads, "S5 was not elected (S1's commit index was {s1_commit:?})");
    cluster.run_for(1_000 * MS).map_err(|e| e.to_string())?;
    for id in [1, 3] {
        cluster.restart(id);
        cluster.connect(id);
    }
    cluster.run_for(2_000 * MS).map_err(|e| e.to_string())
}

#[test]
fn figure_8_schedule_is_safe_with_the_commit_rule() {
    figure_8(false).expect("the real commit rule keeps Figure 8 safe");
}

#[test]
fn figure_8_schedule_catches_a_broken_commit_rule() {
    let err = figure_8(true).expect_err("a broken commit rule must be caught");
    assert!(
        err.contains("leader completeness") || err.contains("state machine safety"),
        "caught by an unexpected check: {err}"
    );
    println!("caught: {err}");
}
