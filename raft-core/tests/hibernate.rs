//! Hibernation: an idle group stops its heartbeats and election countdowns, and anything that
//! needs it wakes it. (The chaos sweep runs it under every fault on half its seeds; these are
//! the plain cases, each checked exactly.)

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use common::*;
use raft_core::sim::{Cluster, SimOptions};
use raft_core::Config;

fn sleepy(n: usize, seed: u64) -> Cluster {
    let mut raft = Config::default();
    raft.hibernate_ticks = 5;
    Cluster::new(SimOptions { nodes: n, seed, raft, ..SimOptions::default() })
}

fn all_asleep(c: &Cluster) -> bool {
    c.ids().all(|id| c.raft(id).is_some_and(|r| r.is_asleep()))
}

fn messages_sent(c: &Cluster) -> u64 {
    c.stats().sent.values().sum()
}

/// A group of three that elected a leader, committed one write and fell asleep everywhere:
/// the cluster, its leader and the write's index.
fn sleeping_group(mut c: Cluster, seed: u64) -> (Cluster, raft_core::NodeId, raft_core::Index) {
    let leader = check_one_leader(&mut c);
    let index = one(&mut c, b"a", 3, false);
    run(&mut c, 500);
    assert!(all_asleep(&c), "seed {seed}: the idle group sleeps");
    (c, leader, index)
}

#[test]
fn an_idle_group_sleeps_and_sends_nothing_until_a_proposal_wakes_it() {
    for seed in 0..8 {
        let mut c = sleepy(3, seed);
        check_one_leader(&mut c);
        one(&mut c, b"a", 3, false);
        run(&mut c, 500);
        assert!(all_asleep(&c), "seed {seed}: every node of the idle group sleeps");
        let sent = messages_sent(&c);
        let term = check_terms(&c);
        run(&mut c, 5_000);
        assert_eq!(messages_sent(&c), sent, "seed {seed}: nothing is sent while asleep");
        assert_eq!(check_terms(&c), term, "seed {seed}: no election");
        // A proposal wakes the group and commits on every node.
        let index = one(&mut c, b"b", 3, false);
        assert!(index > 1);
        assert_eq!(check_terms(&c), term, "seed {seed}: the same leader");
    }
}

#[test]
fn a_sleeping_group_whose_leader_dies_elects_another() {
    for seed in 0..8 {
        let (mut c, leader, before) = sleeping_group(sleepy(3, seed), seed);
        c.crash(leader);
        // The runtime's liveness check (modelled) wakes the followers, which elect a leader.
        let next = check_one_leader(&mut c);
        assert_ne!(next, leader, "seed {seed}");
        let after = one(&mut c, b"b", 2, true);
        assert!(after > before);
        c.restart(leader);
        wait_committed(&mut c, after, 3, 5_000).expect("the old leader catches up");
    }
}

#[test]
fn a_leader_restarted_while_its_group_slept_is_heard() {
    for seed in 0..8 {
        let (mut c, leader, _) = sleeping_group(sleepy(3, seed), seed);
        // Down and back within the liveness check's delay: the followers still think it leads;
        // its campaign wakes them.
        c.crash(leader);
        c.restart(leader);
        check_one_leader(&mut c);
        one(&mut c, b"b", 3, true);
    }
}

#[test]
fn a_restarted_leader_wins_its_group_back_at_its_first_tick() {
    // Lease reads on: the followers of a sleeping group honour their leader's lease, but not
    // against the leader itself, which campaigns only once it no longer leads (here: restarted).
    for seed in 0..16 {
        let mut raft = Config::default();
        raft.hibernate_ticks = 5;
        let c = Cluster::new(SimOptions {
            nodes: 3,
            seed,
            raft,
            read_mode: raft_core::node::ReadMode::Lease,
            ..SimOptions::default()
        });
        let (mut c, leader, _) = sleeping_group(c, seed);
        let term = check_terms(&c);
        c.crash(leader);
        c.restart(leader);
        // It voted for itself and holds entries of its term, so it campaigns at its first tick
        // (10 ms) instead of after an election timeout (100 to 200 ms); its followers grant it
        // at once (a refusal would leave the group leaderless for another timeout at least).
        run(&mut c, 60);
        let r = c.raft(leader).unwrap();
        assert!(r.is_leader(), "seed {seed}: the restarted node leads again");
        assert_eq!(r.term(), term + 1, "seed {seed}: in one election");
        one(&mut c, b"b", 3, false);
    }
}

#[test]
fn a_follower_woken_by_the_liveness_check_campaigns_within_one_election_timeout() {
    // The modelled liveness check wakes the followers an election timeout (100 ms) after their
    // leader died; they honour no lease then, so one campaigns within the next election
    // timeout (not two) and wins.
    for seed in 0..16 {
        let (mut c, leader, _) = sleeping_group(sleepy(3, seed), seed);
        c.crash(leader);
        let crashed = c.now_us();
        let next = loop {
            run(&mut c, 5);
            if let Some(l) = c.ids().find(|&id| c.raft(id).is_some_and(|r| r.is_leader())) {
                break l;
            }
            assert!(c.now_us() - crashed < 1_000 * MS, "seed {seed}: no leader within a second");
        };
        assert_ne!(next, leader, "seed {seed}");
        let took_ms = (c.now_us() - crashed) / MS;
        assert!(took_ms <= 230, "seed {seed}: a new leader {took_ms} ms after the crash");
    }
}

#[test]
fn followers_woken_by_the_liveness_check_take_turns_and_elect_in_one_term() {
    // Both followers of a sleeping group are woken at about the same moment when its leader
    // dies. Drawing their timeouts at random, the two sometimes campaigned in the same tick and
    // split the vote (seed 59 did); taking turns (the voters but the leader, sorted and rotated
    // by the group's id), the first in turn wins the first election.
    for seed in 0..64 {
        let (mut c, leader, _) = sleeping_group(sleepy(3, seed), seed);
        let term = check_terms(&c);
        c.crash(leader);
        let next = check_one_leader(&mut c);
        let r = c.raft(next).unwrap();
        assert_eq!(r.term(), term + 1, "seed {seed}: one election");
        let mut turns: Vec<raft_core::NodeId> = c.ids().filter(|&id| id != leader).collect();
        turns.sort_unstable();
        let start = (r.group() % turns.len() as u64) as usize;
        turns.rotate_left(start);
        assert_eq!(next, turns[0], "seed {seed}: the first in turn leads");
    }
}
