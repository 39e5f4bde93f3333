//! Membership changes: learners added and promoted, voters removed and replaced, through joint
//! consensus, and each dangerous case the Raft literature and other systems' bug trackers know
//! of: removing the leader, promoting a lagging learner, two changes at once, a crash during the
//! joint phase, a removed node that keeps running, a node re-added with an empty disk, and a
//! restart that must take its configuration from the log rather than the command line.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use common::*;
use raft_core::sim::kv::KvOp;
use raft_core::sim::{Cluster, SimOptions};
use raft_core::{
    Config, InitialState, Membership, MembershipChange, MembershipError, NodeId, ProposeError,
    Raft, RoleKind,
};

use MembershipChange::{AddLearner, Promote, Remove};

/// Nodes `1..=total`, of which `1..=members` form the group; the rest wait to be added.
fn cluster_of(members: usize, total: usize, seed: u64, raft: Config) -> Cluster {
    Cluster::new(SimOptions {
        nodes: total,
        initial_members: members,
        seed,
        raft,
        ..SimOptions::default()
    })
}

fn raft_config() -> Config {
    SimOptions::default().raft
}

fn add(id: NodeId) -> MembershipChange {
    AddLearner { id, address: format!("node-{id}") }
}

fn put(c: &mut Cluster, key: &str, expected: usize) -> u64 {
    let op = KvOp::Put { key: key.into(), value: key.into() }.encode();
    one(c, &op, expected, true)
}

/// Proposes `changes` on the leader (retrying while the leader is not ready or another change
/// is finishing) and waits until every live, connected member holds the resulting
/// configuration, simple and committed. Returns it.
fn change(c: &mut Cluster, changes: &[MembershipChange]) -> Membership {
    let deadline = c.now_us() + 10_000 * MS;
    let entry = loop {
        assert!(c.now_us() < deadline, "change {changes:?} never accepted");
        let leader = check_one_leader(c);
        match c.propose_membership(leader, changes) {
            Ok(entry) => break entry,
            Err(MembershipError::LeaderNotReady | MembershipError::InProgress { .. }) => {
                run(c, 50);
            }
            Err(MembershipError::NotLeader { .. }) => run(c, 50),
            Err(other) => panic!("change {changes:?} refused: {other}"),
        }
    };
    wait_settled(c, entry.index)
}

/// Waits until the leader's configuration (from `at` on) is simple and committed and every live,
/// connected member of it holds the same one; returns it.
fn wait_settled(c: &mut Cluster, at: u64) -> Membership {
    let deadline = c.now_us() + 10_000 * MS;
    while c.now_us() < deadline {
        if let Some(leader) = c.leader().and_then(|l| c.raft(l)) {
            let m = leader.membership().clone();
            let settled = !m.is_joint()
                && leader.membership_index() >= at
                && leader.membership_index() <= leader.commit_index();
            let everyone = m
                .members()
                .iter()
                .filter(|&&id| c.is_connected(id))
                .all(|&id| c.raft(id).is_none_or(|r| r.membership() == &m));
            if settled && everyone {
                return m;
            }
        }
        run(c, 20);
    }
    panic!("the configuration did not settle after entry {at}:{}", c.describe());
}

/// Waits until `id` holds all but `lag` of the leader's entries.
fn wait_caught_up(c: &mut Cluster, id: NodeId) {
    let deadline = c.now_us() + 10_000 * MS;
    while c.now_us() < deadline {
        let leader = check_one_leader(c);
        let last = c.raft(leader).unwrap().last_index();
        if c.raft(id).is_some_and(|r| r.commit_index() >= last.saturating_sub(1)) {
            return;
        }
        run(c, 20);
    }
    panic!("node {id} did not catch up");
}

#[test]
fn grow_three_to_five_then_shrink_to_three_removing_the_leader() {
    for seed in 0..4 {
        let mut c = cluster_of(3, 5, seed, raft_config());
        put(&mut c, "before", 3);
        // Nodes 4 and 5 start empty: they are not members, never campaign, and vote for nobody.
        assert!(c.raft(4).unwrap().membership().is_empty());
        let m = change(&mut c, &[add(4), add(5)]);
        assert_eq!(m.learners, vec![4, 5]);
        assert_eq!(m.addresses.get(&5).map(String::as_str), Some("node-5"));
        wait_caught_up(&mut c, 4);
        wait_caught_up(&mut c, 5);
        let m = change(&mut c, &[Promote { id: 4 }, Promote { id: 5 }]);
        assert_eq!(m.voters, vec![1, 2, 3, 4, 5]);
        assert!(m.learners.is_empty());
        // Every node applied everything, including what was written before 4 and 5 joined.
        let index = put(&mut c, "five", 5);
        assert_eq!(n_committed(&c, index).0, 5);

        // Remove two voters, one of them the leader, in one change.
        let leader = check_one_leader(&mut c);
        let other = (1..=5).find(|&id| id != leader).unwrap();
        let m = change(&mut c, &[Remove { id: leader }, Remove { id: other }]);
        assert_eq!(m.voters.len(), 3);
        assert!(!m.contains(leader) && !m.contains(other));
        let new_leader = check_one_leader(&mut c);
        assert!(m.voters.contains(&new_leader), "leader {new_leader} is a voter of {m}");
        // The old leader stepped down once the change committed, and campaigns no more.
        let old = c.raft(leader).unwrap();
        assert_eq!(old.role(), RoleKind::Follower);
        assert!(!old.is_voter());
        put(&mut c, "three", 3);
        run(&mut c, 2_000);
        for id in [leader, other] {
            let r = c.raft(id).unwrap();
            assert!(!matches!(r.role(), RoleKind::Candidate | RoleKind::PreCandidate));
        }
    }
}

/// The leader hands over when it removes itself: a successor is elected without waiting out an
/// election timeout.
#[test]
fn a_leader_that_removes_itself_hands_over_at_once() {
    let mut c = cluster_of(3, 3, 11, raft_config());
    put(&mut c, "x", 3);
    let leader = check_one_leader(&mut c);
    let term = c.raft(leader).unwrap().term();
    let entry = c.propose_membership(leader, &[Remove { id: leader }]).unwrap();
    // It takes no more writes: one after the change would commit where it no longer hears.
    let put = KvOp::Put { key: "y".into(), value: "1".into() }.encode();
    assert_eq!(c.propose(leader, put), Err(ProposeError::Leaving));
    // Election timeouts are 10 ticks of 10 ms: a successor within 100 ms came by TimeoutNow.
    let start = c.now_us();
    let successor = loop {
        run(&mut c, 5);
        let leaders: Vec<NodeId> = c.leaders().iter().map(|&(id, _)| id).collect();
        if let Some(&l) = leaders.iter().find(|&&l| l != leader) {
            if c.raft(l).unwrap().term() > term {
                break l;
            }
        }
        assert!(c.now_us() - start < 1_000 * MS, "no successor");
    };
    assert!(c.now_us() - start < 100 * MS, "successor {successor} took {} us", c.now_us() - start);
    wait_settled(&mut c, entry.index);
}

#[test]
fn promoting_a_lagging_learner_is_refused_until_it_caught_up() {
    let mut raft = raft_config();
    raft.promote_max_lag = 20;
    let mut c = cluster_of(3, 4, 3, raft);
    change(&mut c, &[add(4)]);
    c.disconnect(4);
    for i in 0..60 {
        put(&mut c, &format!("k{i}"), 3);
    }
    let leader = check_one_leader(&mut c);
    match c.propose_membership(leader, &[Promote { id: 4 }]) {
        Err(MembershipError::LearnerBehind { id: 4, max_lag: 20, matched, last_index }) => {
            assert!(matched + 20 < last_index, "{matched} of {last_index}");
        }
        other => panic!("expected LearnerBehind, got {other:?}"),
    }
    c.connect(4);
    wait_caught_up(&mut c, 4);
    let m = change(&mut c, &[Promote { id: 4 }]);
    assert_eq!(m.voters, vec![1, 2, 3, 4]);
}

#[test]
fn one_change_at_a_time() {
    let mut c = cluster_of(3, 5, 5, raft_config());
    put(&mut c, "x", 3);
    let leader = check_one_leader(&mut c);
    let first = c.propose_membership(leader, &[add(4)]).unwrap();
    assert_eq!(
        c.propose_membership(leader, &[add(5)]),
        Err(MembershipError::InProgress { index: first.index })
    );
    wait_settled(&mut c, first.index);
    wait_caught_up(&mut c, 4);
    // A joint configuration is a change in progress too, until it is left.
    let leader = check_one_leader(&mut c);
    let joint = c.propose_membership(leader, &[Promote { id: 4 }, Remove { id: 1 }]).unwrap();
    assert!(c.raft(leader).unwrap().membership().is_joint());
    assert!(matches!(
        c.propose_membership(leader, &[add(5)]),
        Err(MembershipError::InProgress { .. })
    ));
    let m = wait_settled(&mut c, joint.index);
    assert_eq!(m.voters, vec![2, 3, 4]);
    // Bad batches are refused as such.
    let leader = check_one_leader(&mut c);
    assert_eq!(c.propose_membership(leader, &[add(2)]), Err(MembershipError::AlreadyMember(2)));
    assert_eq!(
        c.propose_membership(leader, &[Promote { id: 9 }]),
        Err(MembershipError::NotAMember(9))
    );
    assert_eq!(c.propose_membership(leader, &[]), Err(MembershipError::Empty));
    let follower = m.voters.iter().copied().find(|&v| v != leader).unwrap();
    assert!(matches!(
        c.propose_membership(follower, &[add(5)]),
        Err(MembershipError::NotLeader { .. })
    ));
}

/// A new leader does not know whether its predecessor's change is in flight until it has
/// committed an entry of its own term.
#[test]
fn a_leader_proposes_no_change_before_its_first_commit() {
    let mut node = Raft::new(Config::new(1), InitialState::new_group(vec![1])).unwrap();
    while !node.is_leader() {
        node.tick();
        let _ = node.ready();
    }
    assert_eq!(node.propose_membership(&[add(2)]), Err(MembershipError::LeaderNotReady));
    let ready = node.ready();
    node.on_persisted(ready.number);
    let entry = node.propose_membership(&[add(2)]).unwrap();
    assert!(node.learners().contains(&2), "in effect as soon as appended");
    let ready = node.ready();
    assert_eq!(ready.membership.as_ref().map(|m| m.learners.clone()), Some(vec![2]));
    assert!(ready.entries.iter().any(|e| e.index == entry.index));
}

/// Crashes on any node at any point of a replacement, the joint phase included: every run ends
/// with one configuration, held by every member, and the group serving writes. Safety is
/// checked throughout by the simulator.
#[test]
fn crashes_during_a_change_leave_one_configuration() {
    for seed in 0..24 {
        let mut c = cluster_of(3, 4, seed, raft_config());
        change(&mut c, &[add(4)]);
        wait_caught_up(&mut c, 4);
        let leader = check_one_leader(&mut c);
        let victim = [leader, 1, 2, 3, 4][(seed % 5) as usize];
        let _ = c.propose_membership(leader, &[Promote { id: 4 }, Remove { id: 1 }]);
        run(&mut c, seed % 7 * 3);
        c.crash(victim);
        run(&mut c, 300);
        c.restart(victim);
        // Whether the change survived or not, it settles (a new leader leaves a committed joint
        // configuration), and a second attempt completes it.
        let m = wait_settled(&mut c, 0);
        if m.voters != vec![2, 3, 4] {
            assert_eq!(m.voters, vec![1, 2, 3], "seed {seed}: {m}");
            let m = change(&mut c, &[Promote { id: 4 }, Remove { id: 1 }]);
            assert_eq!(m.voters, vec![2, 3, 4]);
        }
        put(&mut c, "after", 3);
    }
}

/// A node removed while cut off keeps running and campaigning: nobody raises its term for it,
/// the leader keeps its term, and the node learns it was removed and stops.
#[test]
fn a_removed_node_cannot_disrupt_and_learns_it_was_removed() {
    // Without pre-vote and check-quorum, a stale node's campaigns would raise everyone's term.
    let mut raft = raft_config();
    (raft.pre_vote, raft.check_quorum) = (false, false);
    let mut c = cluster_of(4, 4, 7, raft);
    put(&mut c, "x", 4);
    let leader = check_one_leader(&mut c);
    let cut = (1..=4).find(|&id| id != leader).unwrap();
    c.disconnect(cut);
    change(&mut c, &[Remove { id: cut }]);
    let term = c.raft(leader).unwrap().term();
    run(&mut c, 2_000);
    assert!(c.raft(cut).unwrap().term() > term, "the cut-off node campaigned");
    assert!(!c.raft(cut).unwrap().is_removed());
    c.connect(cut);
    run(&mut c, 2_000);
    let r = c.raft(leader).unwrap();
    assert!(r.is_leader() && r.term() == term, "the leader was disrupted");
    let removed = c.raft(cut).unwrap();
    assert!(removed.is_removed(), "node {cut} was told it was removed");
    let its_term = removed.term();
    run(&mut c, 2_000);
    assert_eq!(c.raft(cut).unwrap().term(), its_term, "a removed node campaigns no more");
    put(&mut c, "y", 3);
}

/// A node removed, wiped and added back under the same id: not in the term it was removed in
/// (its old incarnation's messages may still arrive), then as a new learner that catches up from
/// scratch and is promoted.
#[test]
fn a_node_re_added_with_the_same_id_and_an_empty_disk() {
    let mut raft = raft_config();
    (raft.snapshot_entries, raft.log_keep_entries) = (20, 5);
    let mut c = cluster_of(3, 3, 9, raft);
    for i in 0..50 {
        put(&mut c, &format!("k{i}"), 3);
    }
    let leader = check_one_leader(&mut c);
    let gone = (1..=3).find(|&id| id != leader).unwrap();
    change(&mut c, &[Remove { id: gone }]);
    c.wipe(gone);
    c.restart(gone);
    assert!(c.raft(gone).unwrap().membership().is_empty());
    let leader = check_one_leader(&mut c);
    let term = c.raft(leader).unwrap().term();
    assert_eq!(
        c.propose_membership(leader, &[add(gone)]),
        Err(MembershipError::RemovedInThisTerm { id: gone, term })
    );
    // A new term: hand leadership to the other voter.
    let other = c.raft(leader).unwrap().voters().iter().copied().find(|&v| v != leader).unwrap();
    c.transfer_leader(leader, other).unwrap();
    run(&mut c, 500);
    let m = change(&mut c, &[add(gone)]);
    assert!(m.learners.contains(&gone));
    wait_caught_up(&mut c, gone);
    let m = change(&mut c, &[Promote { id: gone }]);
    assert_eq!(m.voters, vec![1, 2, 3]);
    let index = put(&mut c, "back", 3);
    assert_eq!(n_committed(&c, index).0, 3);
    // It holds every key written before it was wiped (from a snapshot and the log).
    let get = KvOp::Get { key: "k0".into() };
    let ticket = c.read(gone, get);
    run(&mut c, 500);
    assert_eq!(c.read_result(ticket), Some(&Ok("k0".to_owned())));
}

/// After a restart the configuration comes from the snapshot and the log, not from the first
/// configuration a node was started with.
#[test]
fn a_restart_takes_the_configuration_from_the_log_and_snapshot() {
    for snapshot_entries in [0, 10] {
        let mut raft = raft_config();
        (raft.snapshot_entries, raft.log_keep_entries) = (snapshot_entries, 2);
        let mut c = cluster_of(3, 5, 4, raft);
        change(&mut c, &[add(4), add(5)]);
        wait_caught_up(&mut c, 4);
        wait_caught_up(&mut c, 5);
        let m = change(&mut c, &[Promote { id: 4 }, Promote { id: 5 }, Remove { id: 1 }]);
        for i in 0..30 {
            put(&mut c, &format!("k{i}"), 4);
        }
        for id in 1..=5 {
            c.crash(id);
        }
        for id in 1..=5 {
            c.restart(id);
        }
        for id in 2..=5 {
            assert_eq!(c.raft(id).unwrap().membership(), &m, "node {id}");
        }
        put(&mut c, "after", 4);
        // Node 1 holds the configuration that removed it (or is told so when it campaigns),
        // and campaigns no more.
        run(&mut c, 1_000);
        let r1 = c.raft(1).unwrap();
        assert!(!r1.is_voter() || r1.is_removed(), "node 1 still thinks it votes");
        let leader = check_one_leader(&mut c);
        assert_ne!(leader, 1);
    }
}

/// Regression (chaos seeds 1274, 5923 and others): a learner was promoted before it held the
/// entry that made it a learner (its lag was within the limit on a short log). It did not know
/// it was a member, so it voted for nobody, and with the leader gone no candidate could win.
#[test]
fn a_learner_is_promoted_only_once_it_holds_the_entry_that_added_it() {
    let mut c = cluster_of(3, 4, 21, raft_config());
    put(&mut c, "x", 3);
    c.disconnect(4);
    let added = change(&mut c, &[add(4)]);
    assert!(added.learners.contains(&4));
    let leader = check_one_leader(&mut c);
    // Two entries behind, far within promote_max_lag, but without its own configuration.
    assert!(matches!(
        c.propose_membership(leader, &[Promote { id: 4 }]),
        Err(MembershipError::LearnerBehind { id: 4, .. })
    ));
    c.connect(4);
    wait_caught_up(&mut c, 4);
    assert_eq!(change(&mut c, &[Promote { id: 4 }]).voters, vec![1, 2, 3, 4]);
}

/// Regression (chaos seeds 2708, 4178, 7706 of the bank machine): a node removed and added back
/// as a learner while cut off still held the configuration that made it a voter, campaigned to a
/// high term, and once reconnected refused every append of the leader's lower term, while its
/// own vote requests were ignored (it is no voter to the others): it never caught up. It now
/// answers a stale leader with its term, the leader steps down, and the next one brings it in.
#[test]
fn a_learner_that_campaigned_while_cut_off_catches_up_once_back() {
    let mut raft = raft_config();
    (raft.pre_vote, raft.check_quorum) = (false, false);
    let mut c = cluster_of(4, 4, 23, raft);
    put(&mut c, "x", 4);
    let leader = check_one_leader(&mut c);
    let cut = (1..=4).find(|&id| id != leader).unwrap();
    c.disconnect(cut);
    change(&mut c, &[Remove { id: cut }]);
    // A new term, so the node may be added back.
    let other = c.raft(leader).unwrap().voters().iter().copied().find(|&v| v != leader).unwrap();
    c.transfer_leader(leader, other).unwrap();
    run(&mut c, 500);
    change(&mut c, &[add(cut)]);
    run(&mut c, 2_000);
    let leader = check_one_leader(&mut c);
    assert!(c.raft(cut).unwrap().term() > c.raft(leader).unwrap().term(), "it campaigned");
    assert!(c.raft(cut).unwrap().is_voter(), "it still holds the configuration it voted in");
    c.connect(cut);
    wait_caught_up(&mut c, cut);
    let index = put(&mut c, "y", 4);
    assert_eq!(n_committed(&c, index).0, 4);
    assert!(c.raft(cut).unwrap().is_learner());
}

/// Late messages from a removed member: its answers are dropped as from an unknown peer
/// (whatever their term), its vote requests raise no term and are answered `NotAMember`. (Its
/// log cannot be ahead of the leader's, which holds the committed entry that removed it; a
/// candidate whose log is ahead is heard whatever the configuration says, since then this
/// node's configuration may be the stale one.)
#[test]
fn stale_messages_from_a_removed_member_change_nothing() {
    use raft_core::message::{AppendResponse, HeartbeatResponse, MessageBody, VoteRequest};
    use raft_core::{Message, StepError};
    let mut node = Raft::new(Config::new(1), InitialState::new_group(vec![1])).unwrap();
    let settle = |node: &mut Raft| {
        for _ in 0..50 {
            node.tick();
            let ready = node.ready();
            node.on_persisted(ready.number);
        }
    };
    settle(&mut node);
    assert!(node.is_leader());
    node.propose_membership(&[add(2)]).unwrap();
    settle(&mut node);
    node.propose_membership(&[Remove { id: 2 }]).unwrap();
    settle(&mut node);
    assert!(!node.membership().contains(2) && node.membership_index() <= node.commit_index());
    let term = node.term();
    let from_2 = |term, body| Message { group: 0, from: 2, to: 1, term, body };
    let late_ack = MessageBody::AppendResponse(AppendResponse::Success { match_index: 1 });
    assert_eq!(node.step(from_2(term + 5, late_ack)), Err(StepError::UnknownPeer(2)));
    let late_hb = MessageBody::HeartbeatResponse(HeartbeatResponse { round: 1 });
    assert_eq!(node.step(from_2(term, late_hb)), Err(StepError::UnknownPeer(2)));
    let vote =
        VoteRequest { pre_vote: false, last_index: 100, last_term: term - 1, transfer: false };
    assert_eq!(node.step(from_2(term + 5, MessageBody::Vote(vote))), Ok(()));
    assert!(node.is_leader() && node.term() == term, "a removed node raised the leader's term");
    let ready = node.ready();
    assert!(
        ready.messages.iter().any(|m| m.to == 2 && matches!(m.body, MessageBody::NotAMember(_))),
        "the removed node is told: {:?}",
        ready.messages
    );
}
