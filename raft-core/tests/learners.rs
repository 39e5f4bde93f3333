//! Learners: members that receive the log and snapshots and serve reads, but never vote,
//! never campaign and never count towards a majority.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use common::*;
use raft_core::sim::kv::KvOp;
use raft_core::sim::{Cluster, SimOptions};
use raft_core::{Config, ConfigError, InitialState, Membership, Raft, RoleKind, TransferError};

/// Voters 1, 2, 3 and learner 4.
fn with_learner(seed: u64) -> Cluster {
    Cluster::new(SimOptions { nodes: 4, seed, learners: vec![4], ..SimOptions::default() })
}

#[test]
fn a_learner_applies_everything_and_serves_reads_but_never_leads() {
    for seed in 0..4 {
        let mut c = with_learner(seed);
        let leader = check_one_leader(&mut c);
        assert_ne!(leader, 4);
        let put = KvOp::Put { key: "x".into(), value: "1".into() }.encode();
        one(&mut c, &put, 4, false);
        let ticket = c.read(4, KvOp::Get { key: "x".into() });
        for _ in 0..500 {
            if c.read_result(ticket).is_some() {
                break;
            }
            run(&mut c, 1);
        }
        assert_eq!(c.read_result(ticket), Some(&Ok("1".to_owned())), "a read on the learner");
        // Voters come and go; the learner never campaigns and never leads.
        for _ in 0..5 {
            let l = check_one_leader(&mut c);
            c.crash(l);
            run(&mut c, 1_000);
            assert_ne!(c.raft(4).unwrap().role(), RoleKind::Candidate);
            assert_ne!(c.raft(4).unwrap().role(), RoleKind::PreCandidate);
            c.restart(l);
        }
        assert!(c.raft(4).unwrap().is_learner());
    }
}

/// A learner does not count: with two of the three voters down, the leader and the learner
/// commit nothing (two of four nodes up, but one voter of three).
#[test]
fn a_learner_does_not_count_towards_a_majority() {
    let mut c = with_learner(9);
    let leader = check_one_leader(&mut c);
    let others: Vec<_> = (1..=3).filter(|&v| v != leader).collect();
    for &v in &others {
        c.crash(v);
    }
    let before = c.raft(leader).unwrap().commit_index();
    let _ = c.propose(leader, KvOp::Put { key: "y".into(), value: "2".into() }.encode());
    run(&mut c, 2_000);
    let commit = c.raft(leader).map_or(before, |r| r.commit_index());
    assert_eq!(commit, before, "committed with a learner standing in for voters");
    // Leadership cannot go to the learner either.
    if let Some(r) = c.raft(leader) {
        if r.is_leader() {
            assert_eq!(c.transfer_leader(leader, 4), Err(TransferError::NotAVoter(4)));
        }
    }
}

#[test]
fn members_are_checked_at_start() {
    let start = |voters: Vec<u64>, learners: Vec<u64>, id| {
        let state = InitialState::new_group(Membership { learners, ..Membership::new(voters) });
        Raft::new(Config::new(id), state).map(|_| ())
    };
    assert_eq!(start(vec![1, 2, 3], vec![3], 1), Err(ConfigError::DuplicateMember(3)));
    assert_eq!(start(vec![1, 2, 3], vec![4, 4], 1), Err(ConfigError::DuplicateMember(4)));
    assert_eq!(start(vec![1, 2, 3], vec![0], 1), Err(ConfigError::ZeroNodeId));
    assert!(start(vec![1, 2, 3], vec![4], 4).is_ok(), "a learner starts");
    assert!(matches!(start(vec![1, 2, 3], vec![4], 5), Err(ConfigError::NotAVoter { id: 5, .. })));
}
