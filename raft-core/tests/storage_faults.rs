//! Storage faults: a node whose disk lost entries it had acknowledged must not help elect a
//! leader that lacks them, must get them back from the leader, and must stay fenced across a
//! restart until it has; a leader that cannot read an applied entry repairs with a snapshot.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use common::*;
use raft_core::sim::{Cluster, SimOptions};
use raft_core::{Config, Health, NodeId, RoleKind};

fn cluster_with(n: usize, seed: u64, raft: Config) -> Cluster {
    Cluster::new(SimOptions { nodes: n, seed, raft, ..SimOptions::default() })
}

fn others(c: &Cluster, but: &[NodeId]) -> Vec<NodeId> {
    c.ids().filter(|id| !but.contains(id)).collect()
}

/// Waits until every running node is healthy and has applied `index`.
fn wait_repaired(c: &mut Cluster, index: u64, max_ms: u64) {
    let deadline = c.now_us() + max_ms * MS;
    loop {
        let done = c.ids().filter(|&id| c.is_up(id)).all(|id| {
            let r = c.raft(id).unwrap();
            r.health() == Health::Healthy && c.applied_len(id) as u64 >= index
        });
        if done {
            return;
        }
        assert!(c.now_us() < deadline, "not repaired within {max_ms} ms:{}", c.describe());
        run(c, 10);
    }
}

#[test]
fn a_node_that_lost_acknowledged_entries_does_not_elect_a_node_lacking_them() {
    for seed in 0..8 {
        let mut c = cluster(3, seed);
        let leader = check_one_leader(&mut c);
        let [follower, lagging] = others(&c, &[leader])[..] else { unreachable!() };
        // The lagging node misses the next entries; leader and follower commit them.
        c.disconnect(lagging);
        let mut last = 0;
        for i in 0..10 {
            last = one(&mut c, format!("x{i}").as_bytes(), 2, false);
        }
        let lost_from = last - 5;
        // The leader dies; the follower's disk loses the last entries it acknowledged.
        c.crash(leader);
        assert!(c.damage_log(follower, lost_from));
        c.restart(follower);
        c.connect(lagging);
        assert_eq!(
            c.raft(follower).unwrap().health(),
            Health::Repairing { from: lost_from },
            "seed {seed}"
        );
        // The lagging node lacks committed entries: the follower must not vote for it, and
        // does not campaign itself.
        for _ in 0..20 {
            run(&mut c, 100);
            check_no_leader(&c);
        }
        // The old leader returns: it holds everything, is elected, and repairs the follower.
        c.restart(leader);
        check_one_leader(&mut c);
        wait_repaired(&mut c, last, 5_000);
        let (count, _) = n_committed(&c, last);
        assert_eq!(count, 3, "seed {seed}: every node applies the committed entries");
        let index = one(&mut c, b"after", 3, true);
        assert!(index > last);
    }
}

#[test]
fn a_node_restarted_while_repairing_is_still_repairing() {
    let mut c = cluster(3, 7);
    let leader = check_one_leader(&mut c);
    let mut last = 0;
    for i in 0..10 {
        last = one(&mut c, format!("y{i}").as_bytes(), 3, false);
    }
    let damaged = others(&c, &[leader])[0];
    assert!(c.damage_log(damaged, last - 3));
    c.disconnect(damaged);
    c.restart(damaged);
    run(&mut c, 300);
    assert!(matches!(c.raft(damaged).unwrap().health(), Health::Repairing { .. }));
    // A crash before the repair must not forget the damage: the store still reports it.
    c.crash(damaged);
    c.restart(damaged);
    assert!(matches!(c.raft(damaged).unwrap().health(), Health::Repairing { .. }));
    assert_ne!(c.raft(damaged).unwrap().role(), RoleKind::Leader);
    c.connect(damaged);
    wait_repaired(&mut c, last, 5_000);
    // Repaired and marked so durably: a crash and restart now start healthy.
    run(&mut c, 200);
    c.crash(damaged);
    c.restart(damaged);
    assert_eq!(c.raft(damaged).unwrap().health(), Health::Healthy);
    one(&mut c, b"z", 3, true);
}

#[test]
fn a_repairing_node_never_campaigns_even_when_asked_to() {
    let mut c = cluster(3, 11);
    let leader = check_one_leader(&mut c);
    let last = one(&mut c, b"a", 3, false);
    let damaged = others(&c, &[leader])[0];
    assert!(c.damage_log(damaged, last));
    c.disconnect(damaged);
    c.restart(damaged);
    // Alone, it would time out and campaign many times over if it were allowed to.
    run(&mut c, 3_000);
    let r = c.raft(damaged).unwrap();
    assert_eq!(r.role(), RoleKind::Follower);
    assert!(matches!(r.health(), Health::Repairing { .. }));
}

#[test]
fn a_running_node_that_reads_a_damaged_entry_repairs_it() {
    // No cache: the state machine's reads go to the store, where the damage is.
    let mut raft = SimOptions::default().raft;
    raft.log_cache_bytes_max = 0;
    raft.snapshot_entries = 0;
    for seed in 0..6 {
        let mut c = cluster_with(3, seed, raft.clone());
        let leader = check_one_leader(&mut c);
        let follower = others(&c, &[leader])[0];
        let mut last = 0;
        for i in 0..8 {
            last = one(&mut c, format!("r{i}").as_bytes(), 3, false);
        }
        // Restarted, the follower replays its log from the store; one entry it will read is
        // damaged while it runs.
        c.crash(follower);
        c.restart(follower);
        let damaged = last - 2;
        assert!(c.applied_len(follower) < damaged as usize);
        assert!(c.corrupt_entry(follower, damaged));
        let mut seen = false;
        for _ in 0..200 {
            run(&mut c, 1);
            seen |= c.raft(follower).unwrap().health() == Health::Repairing { from: damaged };
            if seen {
                break;
            }
        }
        assert!(seen, "seed {seed}: the failed read put the follower into repair");
        wait_repaired(&mut c, last, 5_000);
        assert_eq!(n_committed(&c, last).0, 3, "seed {seed}");
    }
}

#[test]
fn a_leader_that_cannot_read_an_applied_entry_sends_a_snapshot_instead() {
    let mut raft = SimOptions::default().raft;
    raft.log_cache_bytes_max = 0;
    let mut c = cluster_with(3, 3, raft);
    let leader = check_one_leader(&mut c);
    let lagging = others(&c, &[leader])[0];
    c.disconnect(lagging);
    let mut last = 0;
    for i in 0..20 {
        last = one(&mut c, format!("s{i}").as_bytes(), 2, false);
    }
    // An entry the leader applied long ago, which the lagging node still needs.
    let damaged = last - 15;
    assert!(c.corrupt_entry(leader, damaged));
    c.connect(lagging);
    wait_repaired(&mut c, last, 10_000);
    let r = c.raft(leader).unwrap();
    assert_eq!(r.role(), RoleKind::Leader, "the leader's log end is intact: it keeps leading");
    assert!(r.first_index() > damaged, "a snapshot past the damaged entry compacted it away");
    assert!(c.applied_len(lagging) as u64 >= last);
    assert!(c.stats().snapshots_installed >= 1, "the lagging node caught up by a snapshot");
}

/// A store shared through an `Arc` (as every runtime holds it) reports damage like the store
/// itself: every damage method is forwarded.
#[test]
fn a_shared_store_forwards_damage_reports() {
    use raft_core::{Entry, LogStore, LogWrite, MemLogStore};
    use std::sync::Arc;
    let store = Arc::new(MemLogStore::new());
    let entries: Vec<Entry> = (1..=3).map(|i| Entry::normal(1, i, "x".into())).collect();
    store.write(&[LogWrite { group: 1, hard_state: None, entries: &entries }]).unwrap();
    store.damage_log(1, 2);
    store.report_found(1, 1);
    let shared: Arc<dyn LogStore> = store.clone();
    let via: &dyn LogStore = &shared;
    assert_eq!(via.damage(1).map(|d| d.from), Some(2));
    assert_eq!(via.take_damage_found(1), Some(1));
    via.mark_repaired(1).unwrap();
    assert_eq!(store.damage(1), None);
}

/// A node whose log's end before the damage is unknown votes for nobody until repaired, also
/// after more damage is found on a read (the new damage's known end must not stand in for the
/// unknown one).
#[test]
fn an_unknown_end_stays_unknown_when_more_damage_is_found() {
    use raft_core::message::{MessageBody, VoteRequest};
    use raft_core::{HardState, InitialState, LogDamage, Message, Raft};
    let state = InitialState {
        hard_state: HardState { term: 1, vote: None, commit: 0 },
        last_index: 3,
        term_runs: vec![(1, 1)],
        damage: Some(LogDamage::new(4, None)),
        ..InitialState::new_group(vec![1, 2, 3])
    };
    let mut node = Raft::new(Config::new(1), state).unwrap();
    node.report_damage(2);
    assert_eq!(node.health(), Health::Repairing { from: 2 });
    let vote = VoteRequest { pre_vote: false, last_index: 10, last_term: 1, transfer: false };
    node.step(Message { group: 0, from: 2, to: 1, term: 2, body: MessageBody::Vote(vote) })
        .unwrap();
    let ready = node.ready();
    let answers: Vec<bool> = ready
        .messages
        .iter()
        .chain(&ready.persisted_messages)
        .filter_map(|m| match m.body {
            MessageBody::VoteResponse(r) => Some(r.granted),
            _ => None,
        })
        .collect();
    assert_eq!(answers, vec![false], "no vote while where the log ended is unknown");
}

/// A leader whose disk fills hands leadership to an up-to-date follower, so the group commits
/// on; the full node never campaigns while it cannot write its vote, and catches up once its
/// disk has room again.
#[test]
fn a_leader_whose_disk_fills_hands_over_and_catches_up() {
    for seed in 0..8 {
        let mut c = cluster(3, seed);
        let leader = check_one_leader(&mut c);
        let term = c.raft(leader).unwrap().term();
        for i in 0..5 {
            one(&mut c, format!("a{i}").as_bytes(), 3, false);
        }
        c.fill_disk(leader, 3_000 * MS);
        // Its next write is held: it stalls and hands over.
        let _ = c.propose(leader, "held".into());
        run(&mut c, 1_000);
        let now = check_one_leader(&mut c);
        assert_ne!(now, leader, "seed {seed}: leadership moved off the full node");
        let full = c.raft(leader).unwrap();
        assert!(full.storage_stalled(), "seed {seed}");
        assert_eq!(full.role(), RoleKind::Follower, "seed {seed}: it never campaigns");
        assert!(c.raft(now).unwrap().term() == term + 1, "seed {seed}: one election, no more");
        let mut last = 0;
        for i in 0..5 {
            last = one(&mut c, format!("b{i}").as_bytes(), 2, false);
        }
        run(&mut c, 2_500);
        assert!(!c.raft(leader).unwrap().storage_stalled(), "seed {seed}: room again");
        wait_repaired(&mut c, last, 5_000);
    }
}
