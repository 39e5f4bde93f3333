//! Pre-vote and check-quorum in whole clusters: what they promise, and the known ways the two
//! together have gone wrong in other Raft implementations.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use bytes::Bytes;
use common::*;
use raft_core::sim::{Cluster, CrashableStore, SimOptions};
use raft_core::{Entry, HardState, LogStore, LogWrite, MemLogStore, RoleKind};

fn cluster_with(n: usize, seed: u64, pre_vote: bool, check_quorum: bool) -> Cluster {
    let raft = {
        let mut c = SimOptions::default().raft;
        c.pre_vote = pre_vote;
        c.check_quorum = check_quorum;
        c
    };
    Cluster::new(SimOptions { nodes: n, seed, raft, ..SimOptions::default() })
}

#[test]
fn a_partitioned_node_rejoining_does_not_disrupt_the_leader() {
    for seed in 0..4 {
        let mut c = cluster_with(3, seed, true, true);
        let leader = check_one_leader(&mut c);
        let term = c.raft(leader).expect("up").term();
        let follower = leader % 3 + 1;
        c.disconnect(follower);
        // Many election timeouts pass; the cut-off node keeps failing its pre-vote.
        run(&mut c, 3_000);
        assert_eq!(c.raft(follower).expect("up").term(), term, "pre-vote keeps the term");
        c.connect(follower);
        run(&mut c, 1_000);
        assert_eq!(c.leader(), Some(leader), "the leader was disturbed");
        for id in 1..=3 {
            assert_eq!(c.raft(id).expect("up").term(), term);
        }
    }
}

#[test]
fn without_pre_vote_a_rejoining_node_forces_an_election() {
    // The counterpart of the test above: it shows what pre-vote prevents.
    let mut c = cluster_with(3, 1, false, false);
    let leader = check_one_leader(&mut c);
    let term = c.raft(leader).expect("up").term();
    let follower = leader % 3 + 1;
    c.disconnect(follower);
    run(&mut c, 3_000);
    assert!(c.raft(follower).expect("up").term() > term + 5, "its term ran up while cut off");
    c.connect(follower);
    run(&mut c, 1_000);
    let new_leader = check_one_leader(&mut c);
    let new_term = c.raft(new_leader).expect("up").term();
    assert!(new_term > term, "the rejoining node forced a new term");
}

#[test]
fn an_isolated_leader_steps_down_within_an_election_timeout() {
    for seed in 0..4 {
        let mut c = cluster(5, seed);
        let leader = check_one_leader(&mut c);
        c.disconnect(leader);
        // Election timeout: 10 ticks of 10 ms. The check runs once per timeout, so the leader
        // notices within two timeouts of its last contact with a quorum.
        run(&mut c, 200);
        assert_ne!(c.raft(leader).expect("up").role(), RoleKind::Leader, "seed {seed}");
        // Without check-quorum it would lead on, alone.
        let mut c = cluster_with(5, seed, true, false);
        let leader = check_one_leader(&mut c);
        c.disconnect(leader);
        run(&mut c, 1_000);
        assert_eq!(c.raft(leader).expect("up").role(), RoleKind::Leader);
    }
}

fn staged_store(terms: &[u64], hard_state: HardState) -> Box<dyn CrashableStore> {
    let store = MemLogStore::with_explicit_sync();
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry::normal(t, i as u64 + 1, Bytes::from_static(b"x")))
        .collect();
    let lsn = store
        .write(&[LogWrite { group: 0, hard_state: Some(hard_state), entries: &entries }])
        .unwrap();
    store.sync(lsn).unwrap();
    Box::new(store)
}

#[test]
fn a_node_with_a_higher_term_and_a_stale_log_does_not_stall_the_group() {
    // Node 3 reached term 10 (say, campaigning before pre-vote was enabled) but its log is
    // short; nodes 1 and 2 are at term 2 with a longer log. Node 3 cannot win, and with
    // check-quorum the others ignore its vote requests while they hear their leader: unless the
    // group moves to node 3's term, node 3 is stuck outside it forever (etcd-io/etcd#8501).
    let opts = SimOptions { nodes: 3, seed: 3, ..SimOptions::default() };
    let mut c = Cluster::with_stores(opts, |id| match id {
        3 => staged_store(&[1], HardState { term: 10, vote: Some(3), commit: 1 }),
        _ => staged_store(&[1, 2, 2], HardState { term: 2, vote: Some(1), commit: 1 }),
    });
    let done = c
        .run_until(10_000 * MS, 50 * MS, |c| {
            let Some(leader) = c.leader() else { return false };
            let term = c.raft(leader).map(|r| r.term());
            c.raft(3).is_some_and(|r| Some(r.term()) == term && r.commit_index() >= 3)
        })
        .expect("safe");
    assert!(done, "node 3 never rejoined the group (leaders: {:?})", c.leaders());
    let leader = c.leader().expect("a leader");
    assert_ne!(leader, 3, "node 3's stale log must not win");
    one(&mut c, b"after", 3, true);
}

/// Regression (found by the lease sweep): without pre-vote, a node with a stale log and a fast
/// clock campaigned again and again; the others refused it, but each refusal restarted their
/// election timers, so none of them ever campaigned and the group never had a leader again.
/// Only a granted vote or the leader's word restarts the timer (Raft §5.2).
#[test]
fn a_refused_candidate_does_not_hold_back_the_others_timers() {
    for seed in 0..4 {
        let mut c = cluster_with(3, seed, false, true);
        let leader = check_one_leader(&mut c);
        let stale = leader % 3 + 1;
        let other = (1..=3).find(|&id| id != leader && id != stale).unwrap();
        c.crash(stale);
        one(&mut c, b"while the stale node is down", 2, false);
        c.restart(stale);
        c.disconnect(stale);
        one(&mut c, b"the stale node misses this too", 2, false);
        // The stale node ticks four times as fast as the one that can win.
        c.set_tick_us(stale, 3_000);
        c.set_tick_us(other, 12_000);
        c.crash(leader);
        c.connect(stale);
        run(&mut c, 3_000);
        assert_eq!(c.leader(), Some(other), "seed {seed}: the up-to-date node must win");
    }
}
