//! Reads without the log: ReadIndex on the leader and on followers, the lease, and leadership
//! transfer, in the simulator; including the scenarios that fool a naive implementation.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use common::*;
use raft_core::message::{AppendResponse, HeartbeatResponse, MessageBody, VoteResponse};
use raft_core::node::ReadMode;
use raft_core::ready::ReadState;
use raft_core::sim::kv::KvOp;
use raft_core::sim::{Cluster, Faults, SimOptions};
use raft_core::{Config, HardState, InitialState, Message, NodeId, Raft, ReadError, RoleKind};

fn put(key: &str, value: &str) -> bytes::Bytes {
    KvOp::Put { key: key.into(), value: value.into() }.encode()
}

fn get(key: &str) -> KvOp {
    KvOp::Get { key: key.into() }
}

/// Runs until read `ticket` is answered (or `max_ms` pass).
fn await_read(c: &mut Cluster, ticket: u64, max_ms: u64) -> Option<Result<String, ReadError>> {
    for _ in 0..max_ms {
        if let Some(result) = c.read_result(ticket) {
            return Some(result.clone());
        }
        run(c, 1);
    }
    c.read_result(ticket).cloned()
}

/// Reads `key` on node `id`, asking again after a refusal (no leader known yet), until served.
fn read_until_served(c: &mut Cluster, id: NodeId, key: &str) -> String {
    for _ in 0..50 {
        let ticket = c.read(id, get(key));
        if let Some(Ok(value)) = await_read(c, ticket, 200) {
            return value;
        }
        run(c, 20);
    }
    panic!("node {id} never served a read of {key}");
}

#[test]
fn every_node_serves_the_latest_write() {
    let mut c = cluster(3, 1);
    let leader = check_one_leader(&mut c);
    let index = one(&mut c, &put("x", "1"), 3, false);
    assert!(index > 0);
    for id in 1..=3 {
        let ticket = c.read(id, get("x"));
        assert_eq!(await_read(&mut c, ticket, 200), Some(Ok("1".into())), "read on node {id}");
    }
    assert!(c.stats().follower_reads >= 2, "{:?}", c.stats());
    let _ = leader;
}

/// Runs until a node of `side` leads a term above `above`; returns it.
fn await_leader_among(c: &mut Cluster, side: &[NodeId], above: u64, max_ms: u64) -> NodeId {
    for _ in 0..max_ms {
        if let Some(&id) =
            side.iter().find(|&&id| c.raft(id).is_some_and(|r| r.is_leader() && r.term() > above))
        {
            return id;
        }
        run(c, 1);
    }
    panic!("no leader among {side:?} above term {above} within {max_ms} ms");
}

/// Runs until node `id`'s machine holds `value` at `key`.
fn await_value(c: &mut Cluster, id: NodeId, key: &str, value: &str, max_ms: u64) {
    for _ in 0..max_ms {
        if c.machine(id).get(key) == Some(value) {
            return;
        }
        run(c, 1);
    }
    panic!("node {id} never applied {key} = {value}");
}

/// The classic stale read: a leader cut off in a minority still believes it leads (without
/// check-quorum nothing tells it otherwise) while the majority elects a new leader and commits
/// a write. A read on the old leader must wait or fail, never answer the old value. The naive
/// implementation (answer from the commit index at once) does answer it, which proves the
/// scenario is the one that matters.
#[test]
fn a_leader_cut_off_in_a_minority_serves_no_stale_read() {
    for naive in [false, true] {
        let mut opts = SimOptions { nodes: 5, seed: 7, ..SimOptions::default() };
        opts.raft.check_quorum = false;
        let mut c = Cluster::new(opts);
        if naive {
            c.set_faults(Faults::reads_without_quorum());
        }
        let old = check_one_leader(&mut c);
        one(&mut c, &put("x", "1"), 5, false);
        let old_term = c.raft(old).unwrap().term();
        let others: Vec<NodeId> = (1..=5).filter(|&id| id != old).collect();
        let (buddy, majority) = (others[0], &others[1..]);
        c.partition(&[&[old, buddy], majority]);
        let new = await_leader_among(&mut c, majority, old_term, 3_000);
        c.propose(new, put("x", "2")).unwrap();
        await_value(&mut c, new, "x", "2", 1_000);
        assert!(c.raft(old).unwrap().is_leader(), "the old leader still believes it leads");
        // The follower on the old leader's side asks the old leader: the same trap.
        let readers: &[NodeId] = if naive { &[old] } else { &[old, buddy] };
        for &on in readers {
            let ticket = c.read(on, get("x"));
            let answer = await_read(&mut c, ticket, 500);
            if naive {
                assert_eq!(answer, Some(Ok("1".into())), "the naive read answers the old value");
            } else {
                // Refused once held for an election timeout: never the old value, and the
                // old leader does not hold reads for as long as it believes it leads.
                assert!(matches!(answer, Some(Err(_))), "node {on} answered {answer:?}");
            }
        }
        if !naive {
            // Once healed, the old leader's side follows the new leader and reads see "2".
            c.heal();
            assert_eq!(read_until_served(&mut c, old, "x"), "2");
        }
    }
}

/// A node of three that holds one entry of term 1 it does not know is committed, elected leader
/// of term 2 by node 2's vote. Returns it with its noop (index 2) written and durable.
fn fresh_leader() -> Raft {
    fresh_leader_with(|_| {})
}

fn fresh_leader_with(tweak: impl FnOnce(&mut Config)) -> Raft {
    let mut config = Config::new(1);
    config.pre_vote = false;
    tweak(&mut config);
    let state = InitialState {
        hard_state: HardState { term: 1, vote: None, commit: 0 },
        membership: vec![1, 2, 3].into(),
        config_entries: Vec::new(),
        base_index: 0,
        base_term: 0,
        last_index: 1,
        term_runs: vec![(1, 1)],
        applied: 0,
        snapshot: None,
        damage: None,
    };
    let mut node = Raft::new(config, state).unwrap();
    while node.role() != RoleKind::Candidate {
        node.tick();
    }
    let rd = node.ready();
    node.on_persisted(rd.number);
    let vote = VoteResponse { pre_vote: false, granted: true };
    node.step(to_1(2, 2, MessageBody::VoteResponse(vote))).unwrap();
    assert!(node.is_leader());
    let rd = node.ready();
    node.on_persisted(rd.number);
    node
}

fn to_1(from: NodeId, term: u64, body: MessageBody) -> Message {
    Message { group: 0, from, to: 1, term, body }
}

/// The rounds of heartbeats a Ready sends.
fn rounds(rd: &raft_core::Ready) -> Vec<u64> {
    let mut rounds: Vec<u64> = rd
        .messages
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::Heartbeat(hb) => Some(hb.round),
            _ => None,
        })
        .collect();
    rounds.dedup();
    rounds
}

/// A new leader's commit index may lag entries an earlier leader committed, so it serves no
/// read, however many rounds a quorum answers, until an entry of its own term commits.
#[test]
fn a_new_leader_serves_nothing_before_its_first_commit() {
    let mut l = fresh_leader();
    assert_eq!(l.commit_index(), 0);
    l.read_index(7).unwrap();
    // Rounds come and go (periodic heartbeats) and are answered; the read stays held.
    for _ in 0..6 {
        l.tick();
        let rd = l.ready();
        assert!(rd.reads.is_empty(), "served before the term's first commit: {:?}", rd.reads);
        for round in rounds(&rd) {
            let answer = HeartbeatResponse { round };
            l.step(to_1(2, 2, MessageBody::HeartbeatResponse(answer))).unwrap();
        }
        assert!(l.ready().reads.is_empty());
    }
    // Node 2 takes the noop: it commits, and the read joins the next round.
    let ack = AppendResponse::Success { match_index: 2 };
    l.step(to_1(2, 2, MessageBody::AppendResponse(ack))).unwrap();
    assert_eq!(l.commit_index(), 2);
    let rd = l.ready();
    assert!(rd.reads.is_empty(), "released without a round sent after the commit");
    let round = *rounds(&rd).last().expect("a round for the read");
    l.step(to_1(3, 2, MessageBody::HeartbeatResponse(HeartbeatResponse { round }))).unwrap();
    let rd = l.ready();
    assert_eq!(rd.reads, vec![ReadState { id: 7, result: Ok(2) }]);
}

/// Reads that arrive together share a round, and reads that arrive while a round is out wait
/// for the next one: a round answered before a read arrived proves nothing about it.
#[test]
fn reads_share_rounds_and_wait_for_one_sent_after_them() {
    let mut l = fresh_leader();
    let ack = AppendResponse::Success { match_index: 2 };
    l.step(to_1(2, 2, MessageBody::AppendResponse(ack))).unwrap();
    let _ = l.ready();
    for id in 1..=3 {
        l.read_index(id).unwrap();
    }
    let rd = l.ready();
    let first = rounds(&rd);
    assert_eq!(first.len(), 1, "three reads, one round");
    // A read arrives while that round is out.
    l.read_index(4).unwrap();
    let answer = |round| to_1(2, 2, MessageBody::HeartbeatResponse(HeartbeatResponse { round }));
    l.step(answer(first[0])).unwrap();
    let rd = l.ready();
    let released: Vec<u64> = rd.reads.iter().map(|r| r.id).collect();
    assert_eq!(released, vec![1, 2, 3], "the round serves the reads that came before it only");
    let second = rounds(&rd);
    assert_eq!(second.len(), 1, "the later read got a round of its own");
    l.step(answer(second[0])).unwrap();
    let released: Vec<u64> = l.ready().reads.iter().map(|r| r.id).collect();
    assert_eq!(released, vec![4]);
}

/// A cluster of three in lease mode whose node 1 ticks every `slow_us` and the others every
/// `fast_us`, with node 1 leading.
fn lease_cluster(seed: u64, drift_ticks: u32, slow_us: u64, fast_us: u64) -> Cluster {
    let mut opts =
        SimOptions { nodes: 3, seed, read_mode: ReadMode::Lease, ..SimOptions::default() };
    opts.raft.max_clock_drift_ticks = drift_ticks;
    let mut c = Cluster::new(opts);
    let leader = check_one_leader(&mut c);
    if leader != 1 {
        c.transfer_leader(leader, 1).unwrap();
        await_leader_among(&mut c, &[1], 0, 1_000);
    }
    c.set_tick_us(1, slow_us);
    for id in 2..=3 {
        c.set_tick_us(id, fast_us);
    }
    one(&mut c, &put("x", "1"), 3, false);
    run(&mut c, 100); // A few heartbeat rounds on the new clocks.
    c
}

/// Cuts the lease holder (node 1) off, lets the others elect a leader and commit `x = 2`, then
/// reads on node 1 every millisecond for `window_ms`. Returns whether any read answered the old
/// value after the write completed.
fn stale_read_after_partition(c: &mut Cluster, window_ms: u64) -> bool {
    assert!(c.raft(1).unwrap().lease_holds(), "node 1 holds the lease before the cut");
    let term = c.raft(1).unwrap().term();
    c.partition(&[&[1], &[2, 3]]);
    let new = await_leader_among(c, &[2, 3], term, 3_000);
    c.propose(new, put("x", "2")).unwrap();
    await_value(c, new, "x", "2", 1_000);
    let mut tickets = Vec::new();
    for _ in 0..window_ms {
        tickets.push(c.read(1, get("x")));
        run(c, 1);
    }
    tickets.iter().any(|&t| matches!(c.read_result(t), Some(Ok(v)) if v == "1"))
}

/// While the lease holds, the leader answers a read at once, without a round of heartbeats.
#[test]
fn a_lease_answers_reads_without_a_round() {
    let mut c = lease_cluster(3, 2, 10_000, 10_000);
    let sent = c.stats().sent.get("heartbeat").copied().unwrap_or(0);
    let ticket = c.read(1, get("x"));
    assert_eq!(c.read_result(ticket), Some(&Ok("1".to_owned())), "answered on the spot");
    assert_eq!(c.stats().sent.get("heartbeat").copied().unwrap_or(0), sent, "no round sent");
    // A transfer gives the lease up: reads wait for a round again.
    c.transfer_leader(1, 2).unwrap();
    assert!(!c.raft(1).unwrap().lease_holds());
}

/// The lease is safe as long as clocks drift within the configured allowance, and the bound is
/// real: with more drift than allowed, the simulator finds the stale read. Node 1's clock runs
/// at 13 ms per tick and the others' at 7 ms: a lease of `L` slow ticks must end before 9 fast
/// ones, so `L <= 4`, an allowance of 5 ticks of an election timeout of 10.
#[test]
fn lease_reads_are_safe_within_the_drift_bound_and_the_bound_is_real() {
    let (slow, fast) = (13_000, 7_000);
    let needed = raft_core::sim::chaos::drift_ticks_needed(10, 30);
    assert_eq!(needed, 5);
    let mut stale_beyond = 0;
    for seed in 0..12 {
        let mut c = lease_cluster(seed, needed, slow, fast);
        assert!(
            !stale_read_after_partition(&mut c, 300),
            "seed {seed}: stale read within the bound"
        );
        let mut c = lease_cluster(seed, 0, slow, fast);
        stale_beyond += u32::from(stale_read_after_partition(&mut c, 300));
    }
    assert!(stale_beyond > 0, "drift beyond the bound never produced a stale read");
}

/// A transfer hands leadership to the target within a few round trips: the old leader refuses
/// proposals meanwhile (typed, nothing done) and follows the new leader afterwards.
#[test]
fn leadership_moves_to_the_target() {
    let mut c = cluster(3, 5);
    let old = check_one_leader(&mut c);
    one(&mut c, &put("x", "1"), 3, false);
    let to = if old == 3 { 1 } else { old + 1 };
    let started = c.now_us();
    c.transfer_leader(old, to).unwrap();
    assert_eq!(c.raft(old).unwrap().transfer_target(), Some(to));
    assert_eq!(
        c.propose(old, put("x", "2")),
        Err(raft_core::ProposeError::Transferring { to }),
        "proposals wait for the transfer"
    );
    let term = c.raft(old).unwrap().term();
    await_leader_among(&mut c, &[to], term, 1_000);
    let took = c.now_us() - started;
    // Ticks are 10 ms: an election timeout would be 100 ms or more.
    assert!(took < 20 * MS, "the transfer took {took} us");
    run(&mut c, 50);
    assert_eq!(c.raft(old).unwrap().leader(), Some(to));
    one(&mut c, &put("x", "3"), 3, false);
}

/// A transfer to a node that cannot win is abandoned after an election timeout, and the
/// leader takes proposals again.
#[test]
fn a_transfer_to_a_dead_node_is_abandoned() {
    let mut c = cluster(3, 6);
    let leader = check_one_leader(&mut c);
    let to = if leader == 3 { 1 } else { leader + 1 };
    c.crash(to);
    c.transfer_leader(leader, to).unwrap();
    assert!(c.propose(leader, put("x", "1")).is_err());
    run(&mut c, 250);
    assert!(c.raft(leader).unwrap().is_leader(), "still leads");
    assert_eq!(c.raft(leader).unwrap().transfer_target(), None, "abandoned");
    c.propose(leader, put("x", "1")).expect("proposals resume");
    // Transfers to a non-member or from a follower are refused.
    assert!(c.transfer_leader(leader, 9).is_err());
    let follower = (1..=3).find(|&id| id != leader && id != to).unwrap();
    assert!(c.transfer_leader(follower, leader).is_err());
}

/// A leader whose clock stalled gives its lease up, and a round it sent before the stall does
/// not renew it (it started at a tick count that lags real time); a round sent after does.
#[test]
fn a_stalled_clock_gives_the_lease_up() {
    let mut l = fresh_leader_with(|c| c.lease_reads = true);
    let ack = AppendResponse::Success { match_index: 2 };
    l.step(to_1(2, 2, MessageBody::AppendResponse(ack))).unwrap();
    let answer = |round| to_1(2, 2, MessageBody::HeartbeatResponse(HeartbeatResponse { round }));
    let beat = |l: &mut Raft| loop {
        l.tick();
        if let Some(&round) = rounds(&l.ready()).last() {
            return round;
        }
    };
    let round = beat(&mut l);
    l.step(answer(round)).unwrap();
    assert!(l.lease_holds());
    let before = beat(&mut l);
    l.clock_stalled();
    assert!(!l.lease_holds());
    l.step(answer(before)).unwrap();
    assert!(!l.lease_holds(), "a round sent before the stall renewed the lease");
    let after = beat(&mut l);
    l.step(answer(after)).unwrap();
    assert!(l.lease_holds());
}

/// Where a Ready's heartbeats go, with their rounds.
fn beats(rd: &raft_core::Ready) -> Vec<(NodeId, u64)> {
    rd.messages
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::Heartbeat(hb) => Some((m.to, hb.round)),
            _ => None,
        })
        .collect()
}

/// A round sent for reads needs a quorum only, so it goes to the followers that answered the
/// latest rounds; periodic rounds go to everyone, and confirm the reads when a chosen follower
/// falls silent.
#[test]
fn read_rounds_go_to_a_quorum_and_periodic_rounds_to_everyone() {
    let mut l = fresh_leader();
    let ack = AppendResponse::Success { match_index: 2 };
    l.step(to_1(2, 2, MessageBody::AppendResponse(ack))).unwrap();
    let _ = l.ready();
    let answer =
        |from, round| to_1(from, 2, MessageBody::HeartbeatResponse(HeartbeatResponse { round }));
    let periodic = |l: &mut Raft| loop {
        l.tick();
        let sent = beats(&l.ready());
        if !sent.is_empty() {
            return sent;
        }
    };
    let sent = periodic(&mut l);
    assert_eq!(sent.iter().map(|b| b.0).collect::<Vec<_>>(), vec![2, 3], "periodic: everyone");
    l.step(answer(3, sent[1].1)).unwrap();
    l.read_index(1).unwrap();
    let rd = l.ready();
    let read_round = beats(&rd);
    assert_eq!(read_round.len(), 1, "a read round goes to one follower of two");
    assert_eq!(read_round[0].0, 3, "the one that answered last");
    // Node 3 falls silent: the next periodic round, answered by node 2, serves the read.
    let sent = periodic(&mut l);
    assert_eq!(sent.len(), 2);
    l.step(answer(2, sent[0].1)).unwrap();
    assert_eq!(l.ready().reads, vec![ReadState { id: 1, result: Ok(2) }]);
}

/// A follower of node 2 in term 2 (ids: this node is 1), started with `seed`.
fn follower_of_2(seed: u64) -> Raft {
    let mut config = Config::new(1);
    config.seed = seed;
    let state = InitialState {
        hard_state: HardState { term: 2, vote: Some(2), commit: 0 },
        ..InitialState::new_group(vec![1, 2, 3])
    };
    let mut node = Raft::new(config, state).unwrap();
    let hb = raft_core::message::Heartbeat { commit: 0, round: 1 };
    node.step(to_1(2, 2, MessageBody::Heartbeat(hb))).unwrap();
    assert_eq!(node.leader(), Some(2));
    let rd = node.ready();
    node.on_persisted(rd.number);
    node
}

/// The read index request a follower's Ready forwards.
fn forwarded_seq(node: &mut Raft) -> u64 {
    let rd = node.ready();
    node.on_persisted(rd.number);
    rd.messages
        .iter()
        .find_map(|m| match m.body {
            MessageBody::ReadIndex(req) => Some(req.seq),
            _ => None,
        })
        .expect("a read index request")
}

/// A late answer to a read the node forwarded before it restarted carries an index from before
/// the restart, perhaps older than what the node served then (it restarts from an older
/// snapshot): it must not release the reads of the new incarnation.
#[test]
fn an_answer_to_a_request_from_before_a_restart_releases_nothing() {
    // Restarted (the node driver draws a new seed for every start); the worst case is an old
    // request numbered above the new one, which an ordered check alone would take as answered.
    let (old_seq, mut after, new_seq) = (1..100)
        .find_map(|seed| {
            let mut before = follower_of_2(seed);
            before.read_index(7).unwrap();
            let old_seq = forwarded_seq(&mut before);
            let mut after = follower_of_2(seed + 1000);
            after.read_index(8).unwrap();
            let new_seq = forwarded_seq(&mut after);
            (old_seq > new_seq).then_some((old_seq, after, new_seq))
        })
        .unwrap();
    let answer = |seq| {
        let resp = raft_core::message::ReadIndexResponse { seq, index: Some(5) };
        to_1(2, 2, MessageBody::ReadIndexResponse(resp))
    };
    after.step(answer(old_seq)).unwrap();
    assert!(after.ready().reads.is_empty(), "the old answer released a read");
    after.step(answer(new_seq)).unwrap();
    assert_eq!(after.ready().reads, vec![ReadState { id: 8, result: Ok(5) }]);
}
