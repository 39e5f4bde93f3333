//! The MIT 6.824 Raft lab scenarios, written as our own tests over the deterministic
//! simulator. Each runs over several seeds; every run also passes the simulator's safety checks
//! after every event.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use common::*;
use raft_core::rng::Rng;
use raft_core::sim::{Cluster, NetFaults};
use raft_core::NodeId;

const SEEDS: std::ops::Range<u64> = 0..4;

#[test]
fn initial_election() {
    for seed in SEEDS {
        let mut c = cluster(3, seed);
        check_one_leader(&mut c);
        // With no failure, the term and the leader stay put.
        let term = check_terms(&c);
        run(&mut c, 2_000);
        assert_eq!(check_terms(&c), term, "term changed without a failure");
        check_one_leader(&mut c);
    }
}

#[test]
fn re_election_after_leader_loss() {
    for seed in SEEDS {
        let mut c = cluster(3, seed);
        let leader1 = check_one_leader(&mut c);
        c.disconnect(leader1);
        let leader2 = check_one_leader(&mut c);
        assert_ne!(leader1, leader2);
        // The old leader returns: it must not disturb the new one.
        c.connect(leader1);
        assert_eq!(check_one_leader(&mut c), leader2);
        // Without a quorum, nobody leads.
        c.disconnect(leader2);
        let other = (1..=3).find(|&id| id != leader2 && id != leader1).expect("third node");
        c.disconnect(other);
        run(&mut c, 2_000);
        check_no_leader(&c);
        // A quorum again: a leader again.
        c.connect(other);
        check_one_leader(&mut c);
        c.connect(leader2);
        check_one_leader(&mut c);
    }
}

#[test]
fn many_elections_with_failing_nodes() {
    for seed in SEEDS {
        let mut c = cluster(7, seed);
        let mut rng = Rng::new(seed);
        check_one_leader(&mut c);
        for _ in 0..10 {
            let down: Vec<NodeId> = (0..3).map(|_| rng.range(1, 7)).collect();
            for &id in &down {
                c.disconnect(id);
            }
            // At least four of seven remain: a quorum must elect a leader.
            check_one_leader(&mut c);
            for &id in &down {
                c.connect(id);
            }
        }
        check_one_leader(&mut c);
    }
}

#[test]
fn basic_agreement() {
    for seed in SEEDS {
        let mut c = cluster(3, seed);
        check_one_leader(&mut c);
        let mut last = 0;
        for i in 0..3u8 {
            let index = one(&mut c, &[b'a', i], 3, false);
            assert!(index > last, "indexes must grow: {last} then {index}");
            last = index;
        }
    }
}

#[test]
fn agreement_despite_a_failed_follower() {
    for seed in SEEDS {
        let mut c = cluster(3, seed);
        one(&mut c, b"101", 3, false);
        let leader = check_one_leader(&mut c);
        let follower = leader % 3 + 1;
        c.disconnect(follower);
        // The remaining two agree.
        one(&mut c, b"102", 2, false);
        one(&mut c, b"103", 2, false);
        run(&mut c, 300);
        one(&mut c, b"104", 2, false);
        one(&mut c, b"105", 2, false);
        // The follower comes back and catches up.
        c.connect(follower);
        one(&mut c, b"106", 3, true);
        run(&mut c, 300);
        one(&mut c, b"107", 3, true);
    }
}

#[test]
fn no_agreement_without_a_quorum() {
    for seed in SEEDS {
        let mut c = cluster(5, seed);
        one(&mut c, b"10", 5, false);
        let leader = check_one_leader(&mut c);
        let followers: Vec<NodeId> = (1..=5).filter(|&id| id != leader).take(3).collect();
        for &f in &followers {
            c.disconnect(f);
        }
        let entry = c.propose(leader, "20".into()).expect("leader accepts");
        run(&mut c, 2_000);
        assert_eq!(n_committed(&c, entry.index).0, 0, "committed without a quorum");
        for &f in &followers {
            c.connect(f);
        }
        // The group recovers; the uncommitted entry may have been replaced.
        let leader2 = check_one_leader(&mut c);
        let entry2 = c.propose(leader2, "30".into()).expect("new leader accepts");
        assert!(entry2.index >= 2, "unexpected index {}", entry2.index);
        one(&mut c, b"1000", 5, true);
    }
}

#[test]
fn concurrent_proposals() {
    for seed in SEEDS {
        let mut c = cluster(3, seed);
        let leader = check_one_leader(&mut c);
        let mut indexes = Vec::new();
        for i in 0..5u8 {
            let entry = c.propose(leader, vec![b'c', i].into()).expect("leader accepts");
            indexes.push((entry.index, vec![b'c', i]));
        }
        for (index, cmd) in &indexes {
            let got = wait_committed(&mut c, *index, 3, 2_000).expect("committed");
            assert_eq!(&got[..], &cmd[..], "index {index} holds another command");
        }
        let mut sorted: Vec<_> = indexes.iter().map(|(i, _)| *i).collect();
        sorted.dedup();
        assert_eq!(sorted.len(), 5, "every proposal got its own index");
    }
}

#[test]
fn partitioned_leader_rejoins() {
    for seed in SEEDS {
        let mut c = cluster(3, seed);
        one(&mut c, b"101", 3, true);
        // The leader is cut off and takes proposals it cannot commit.
        let leader1 = check_one_leader(&mut c);
        c.disconnect(leader1);
        for cmd in [b"102", b"103", b"104"] {
            c.propose(leader1, cmd.as_slice().into()).expect("stale leader still accepts");
        }
        // The others elect a new leader and commit.
        one(&mut c, b"103", 2, true);
        let leader2 = check_one_leader(&mut c);
        c.disconnect(leader2);
        // The old leader returns; with the remaining node it forms a quorum, and its stale
        // entries must be replaced by the committed ones.
        c.connect(leader1);
        one(&mut c, b"104", 2, true);
        c.connect(leader2);
        one(&mut c, b"105", 3, true);
    }
}

#[test]
fn fast_backup_over_incorrect_follower_logs() {
    for seed in SEEDS {
        let mut c = cluster(5, seed);
        let mut rng = Rng::new(seed);
        let mut cmd = || rng.next_u64().to_le_bytes().to_vec();
        one(&mut c, &cmd(), 5, true);
        let isolate = |c: &mut Cluster, keep: &[NodeId]| {
            for id in 1..=5 {
                if keep.contains(&id) {
                    c.connect(id);
                } else {
                    c.disconnect(id);
                }
            }
        };
        // The leader and one follower are cut off and gather 50 entries nobody else sees.
        let leader1 = check_one_leader(&mut c);
        let partner = leader1 % 5 + 1;
        let others: Vec<NodeId> = (1..=5).filter(|&id| id != leader1 && id != partner).collect();
        isolate(&mut c, &[leader1, partner]);
        for _ in 0..50 {
            let _ = c.propose(leader1, cmd().into());
        }
        run(&mut c, 500);
        // The other three elect a leader and commit 50 different entries.
        isolate(&mut c, &others);
        for _ in 0..50 {
            one(&mut c, &cmd(), 3, true);
        }
        // Their leader and one more are cut off; 50 more uncommitted entries there.
        let leader2 = check_one_leader(&mut c);
        let other = *others.iter().find(|&&id| id != leader2).expect("another node");
        c.disconnect(other);
        for _ in 0..50 {
            let _ = c.propose(leader2, cmd().into());
        }
        run(&mut c, 500);
        // The original pair plus the third node take over; the pair's 50 divergent entries
        // must be replaced.
        let third = *others.iter().find(|&&id| id != leader2 && id != other).expect("third");
        isolate(&mut c, &[leader1, partner, third]);
        for _ in 0..50 {
            one(&mut c, &cmd(), 3, true);
        }
        // Everyone back: the two remaining divergent logs are repaired.
        for id in 1..=5 {
            c.connect(id);
        }
        one(&mut c, &cmd(), 5, true);
    }
}

#[test]
fn divergence_of_thousands_of_entries_is_repaired_in_few_round_trips() {
    // A follower holds 3,000 entries of a dead leader's term, the new leader 3,000 of another
    // term: the conflict hints let the leader skip a whole term per rejection.
    let mut c = cluster(3, 7);
    one(&mut c, b"base", 3, true);
    let leader1 = check_one_leader(&mut c);
    let partner = leader1 % 3 + 1;
    let third = partner % 3 + 1;
    c.disconnect(partner);
    c.disconnect(third);
    let batch: Vec<bytes::Bytes> = (0..3_000u32).map(|i| i.to_le_bytes().to_vec().into()).collect();
    c.propose_batch(leader1, batch.clone()).expect("isolated leader accepts");
    run(&mut c, 200);
    // The isolated leader's entries reach nobody; it is then cut off for good, and the others
    // write 3,000 entries of their own.
    c.connect(partner);
    c.connect(third);
    c.disconnect(leader1);
    let leader2 = check_one_leader(&mut c);
    c.propose_batch(leader2, batch).expect("new leader accepts");
    let last = c.raft(leader2).expect("up").last_index();
    wait_committed(&mut c, last, 2, 5_000).expect("majority commits");
    // The old leader returns and must be repaired.
    let conflicts_before = c.stats().sent.get("append-response").copied().unwrap_or(0);
    c.connect(leader1);
    wait_committed(&mut c, last, 3, 5_000).expect("old leader repaired");
    let responses = c.stats().sent.get("append-response").copied().unwrap_or(0) - conflicts_before;
    // One rejection per divergent term (here one), not one per entry; the rest are the
    // acknowledgements of the 3,000 replacement entries in batches of up to 1,024.
    assert!(responses < 20, "{responses} append responses to repair 3,000 divergent entries");
}

#[test]
fn rpc_counts_are_bounded() {
    for seed in SEEDS {
        let mut c = cluster(3, seed);
        check_one_leader(&mut c);
        // An election: one pre-vote round and one vote round, requests and answers, with room
        // for one split vote.
        let election = c.stats().messages_sent();
        let heartbeat_budget = 2 * 2 * (2_500 / 20 + 1); // 2 followers, request and answer
        assert!(election <= 2 * 4 * 2 + heartbeat_budget, "{election} messages to elect a leader");
        // Ten proposals made one by one, each sent at once (the lab's shape): its bound is
        // (10 + 1 + 3) * 3 calls, each a request and an answer.
        let leader = check_one_leader(&mut c);
        let before = c.stats().messages_sent();
        let mut last = 0;
        for i in 0..10u8 {
            last = c.propose(leader, vec![i].into()).expect("leader").index;
        }
        wait_committed(&mut c, last, 3, 1_000).expect("proposals commit");
        let sent = c.stats().messages_sent() - before;
        assert!(sent <= 2 * (10 + 1 + 3) * 3, "{sent} messages for 10 proposals");
        // Ten proposals handed over together share messages: one append to each follower
        // and its answer, plus the heartbeats of the wait.
        let before = c.stats().messages_sent();
        let batch = (0..10u8).map(|i| vec![b'b', i].into()).collect();
        let last = c.propose_batch(leader, batch).expect("leader").index;
        let start = c.now_us();
        wait_committed(&mut c, last, 3, 1_000).expect("batch commits");
        let waited_ms = (c.now_us() - start) / MS;
        let sent = c.stats().messages_sent() - before;
        let heartbeats = 2 * 2 * (waited_ms / 20 + 1);
        assert!(sent <= 2 * 2 + heartbeats, "{sent} messages for a batch of 10 proposals");
        // Idle for a second: only heartbeats (every 20 ms, to 2 followers, with answers).
        let before = c.stats().messages_sent();
        run(&mut c, 1_000);
        let idle = c.stats().messages_sent() - before;
        assert!(idle <= 2 * 2 * (1_000 / 20 + 1), "{idle} messages in one idle second");
    }
}

/// A leader heartbeats only followers it sent nothing to for a heartbeat interval: appends do a
/// heartbeat's work, so a busy group sends none (many groups on a node would otherwise send as
/// many heartbeats as appends). A lease needs its rounds, so with lease reads they go on.
#[test]
fn a_busy_group_sends_no_heartbeats_unless_a_lease_needs_them() {
    for lease in [false, true] {
        for seed in SEEDS {
            let mut opts = raft_core::sim::SimOptions { nodes: 3, seed, ..Default::default() };
            if lease {
                opts.read_mode = raft_core::node::ReadMode::Lease;
            }
            let mut c = raft_core::sim::Cluster::new(opts);
            let leader = check_one_leader(&mut c);
            let heartbeats =
                |c: &raft_core::sim::Cluster| c.stats().sent.get("heartbeat").copied().unwrap_or(0);
            // A proposal every 5 ms for a second.
            let before = heartbeats(&c);
            let mut last = 0;
            for i in 0..200u32 {
                last = c.propose(leader, i.to_be_bytes().to_vec().into()).expect("leader").index;
                run(&mut c, 5);
            }
            let busy = heartbeats(&c) - before;
            wait_committed(&mut c, last, 3, 1_000).expect("proposals commit");
            // Idle: a heartbeat every 20 ms to each of two followers.
            run(&mut c, 100);
            let before = heartbeats(&c);
            run(&mut c, 1_000);
            let idle = heartbeats(&c) - before;
            assert!(
                idle >= 2 * (1_000 / 20 - 1),
                "seed {seed}: {idle} heartbeats in an idle second"
            );
            if lease {
                assert!(
                    busy >= 2 * (1_000 / 20 - 1),
                    "seed {seed}: {busy} heartbeats with a lease"
                );
            } else {
                assert!(busy <= 4, "seed {seed}: {busy} heartbeats in a busy second");
            }
        }
    }
}

#[test]
fn persistence_across_restarts() {
    for seed in SEEDS {
        let mut c = cluster(3, seed);
        one(&mut c, b"11", 3, true);
        // Everyone crashes and restarts with only what was durable.
        for id in 1..=3 {
            c.crash(id);
        }
        for id in 1..=3 {
            c.restart(id);
        }
        one(&mut c, b"12", 3, true);
        let leader1 = check_one_leader(&mut c);
        c.crash(leader1);
        c.restart(leader1);
        one(&mut c, b"13", 3, true);
        let leader2 = check_one_leader(&mut c);
        c.crash(leader2);
        one(&mut c, b"14", 2, true);
        c.restart(leader2);
        // Everything committed so far is applied everywhere again after the restarts.
        let index = one(&mut c, b"15", 3, true);
        for i in 1..=index {
            wait_committed(&mut c, i, 3, 2_000).expect("every node re-applies the whole log");
        }
        let leader3 = check_one_leader(&mut c);
        let i4 = leader3 % 3 + 1;
        c.crash(i4);
        one(&mut c, b"16", 2, true);
        c.restart(i4);
        one(&mut c, b"17", 3, true);
    }
}

#[test]
fn figure_8() {
    // Leaders crash right after taking proposals, so entries of old terms sit on some logs and
    // new leaders must not commit them by counting (Raft §5.4.2).
    for seed in SEEDS {
        let mut c = cluster(5, seed);
        let mut rng = Rng::new(seed);
        one(&mut c, &rng.next_u64().to_le_bytes(), 1, true);
        let mut up = 5;
        for _ in 0..200 {
            let mut leader = None;
            for id in 1..=5 {
                if c.is_up(id)
                    && c.propose(id, rng.next_u64().to_le_bytes().to_vec().into()).is_ok()
                {
                    leader = Some(id);
                }
            }
            let pause = if rng.below(1000) < 100 { rng.below(500) } else { rng.below(13) };
            run(&mut c, pause);
            if let Some(leader) = leader {
                c.crash(leader);
                up -= 1;
            }
            if up < 3 {
                let down: Vec<NodeId> = (1..=5).filter(|&id| !c.is_up(id)).collect();
                let id = down[rng.below(down.len() as u64) as usize];
                c.restart(id);
                up += 1;
            }
        }
        for id in 1..=5 {
            c.restart(id);
        }
        one(&mut c, &rng.next_u64().to_le_bytes(), 5, true);
    }
}

#[test]
fn figure_8_on_an_unreliable_network() {
    for seed in SEEDS {
        let mut c = cluster(5, seed);
        let mut rng = Rng::new(seed);
        c.set_net_faults(NetFaults::unreliable());
        one(&mut c, &rng.next_u64().to_le_bytes(), 1, true);
        let mut connected = [true; 5];
        for iter in 0..300 {
            if iter == 200 {
                // Long reordering delays for the rest of the run.
                c.set_net_faults(NetFaults { long_delay: 0.1, ..NetFaults::unreliable() });
            }
            let mut leader = None;
            for id in 1..=5 {
                if c.propose(id, rng.next_u64().to_le_bytes().to_vec().into()).is_ok()
                    && connected[id as usize - 1]
                {
                    leader = Some(id);
                }
            }
            let pause = if rng.below(1000) < 100 { rng.below(500) } else { rng.below(13) };
            run(&mut c, pause);
            if let Some(leader) = leader {
                if rng.below(1000) < 500 {
                    c.disconnect(leader);
                    connected[leader as usize - 1] = false;
                }
            }
            if connected.iter().filter(|&&up| up).count() < 3 {
                let id = rng.range(1, 5);
                if !connected[id as usize - 1] {
                    c.connect(id);
                    connected[id as usize - 1] = true;
                }
            }
        }
        c.set_net_faults(NetFaults::default());
        for id in 1..=5 {
            c.connect(id);
        }
        one(&mut c, &rng.next_u64().to_le_bytes(), 5, true);
    }
}

#[test]
fn agreement_on_an_unreliable_network() {
    for seed in SEEDS {
        let mut c = cluster(5, seed);
        c.set_net_faults(NetFaults::unreliable());
        for iter in 0..30u8 {
            // Several proposals in flight at once, then one that must reach everyone.
            if let Some(leader) = c.leader() {
                for j in 0..4u8 {
                    let _ = c.propose(leader, vec![iter, j, 0xAA].into());
                }
            }
            one(&mut c, &[iter, 0xFF], 1, true);
        }
        c.set_net_faults(NetFaults::default());
        one(&mut c, b"100", 5, true);
    }
}

fn churn(unreliable: bool) {
    for seed in SEEDS {
        let mut c = cluster(5, seed);
        let mut rng = Rng::new(seed ^ 0xC4);
        if unreliable {
            c.set_net_faults(NetFaults::unreliable());
        }
        // Proposals on random nodes while nodes crash, restart, disconnect and reconnect.
        let mut proposed = Vec::new();
        for _ in 0..200 {
            for _ in 0..3 {
                let id = rng.range(1, 5);
                let cmd = rng.next_u64().to_le_bytes().to_vec();
                if let Ok(entry) = c.propose(id, cmd.clone().into()) {
                    proposed.push((entry.index, cmd));
                }
            }
            run(&mut c, rng.range(1, 70));
            let id = rng.range(1, 5);
            match rng.below(10) {
                0 => c.disconnect(id),
                1 => c.connect(id),
                2 => c.crash(id),
                3 => c.restart(id),
                _ => {}
            }
        }
        c.set_net_faults(NetFaults::default());
        for id in 1..=5 {
            c.restart(id);
            c.connect(id);
        }
        let last = one(&mut c, &rng.next_u64().to_le_bytes(), 5, true);
        // Every index up to the last agreement is applied identically everywhere.
        for index in 1..=last {
            wait_committed(&mut c, index, 5, 5_000).expect("committed everywhere");
        }
        // Some proposals made it through the churn.
        let survived = proposed
            .iter()
            .filter(|(index, cmd)| n_committed(&c, *index).1.as_deref() == Some(&cmd[..]))
            .count();
        assert!(survived > 0, "no proposal survived the churn");
    }
}

#[test]
fn churn_on_a_reliable_network() {
    churn(false);
}

#[test]
fn churn_on_an_unreliable_network() {
    churn(true);
}
