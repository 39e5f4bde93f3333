//! Direct tests of the core: inputs in, exact actions out. No simulator, no threads.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use bytes::Bytes;
use raft_core::message::{
    AppendRequest, AppendResponse, Heartbeat, HeartbeatResponse, MessageBody, VoteRequest,
    VoteResponse,
};
use raft_core::ready::FetchPurpose;
use raft_core::{
    Config, ConfigError, Entry, HardState, InitialState, Membership, Message, ProposeError, Raft,
    Ready, RoleKind, StepError,
};

fn config(id: u64) -> Config {
    let mut c = Config::new(id);
    c.election_ticks = 10;
    c.heartbeat_ticks = 2;
    c
}

fn node(id: u64, voters: &[u64]) -> Raft {
    Raft::new(config(id), InitialState::new_group(voters.to_vec())).expect("valid")
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { group: 0, from, to, term, body }
}

/// Ticks until the node starts campaigning and returns the Ready that holds its requests.
fn tick_until_campaign(raft: &mut Raft) -> Ready {
    for _ in 0..100 {
        raft.tick();
        if raft.role() != RoleKind::Follower {
            return raft.ready();
        }
    }
    panic!("node never campaigned");
}

/// Makes node 1 of {1, 2, 3} leader in term 1 (pre-vote on), acknowledging its writes.
fn leader_of_three() -> Raft {
    let mut r = node(1, &[1, 2, 3]);
    let rd = tick_until_campaign(&mut r);
    r.on_persisted(rd.number);
    let grant = |from| {
        msg(from, 1, 1, MessageBody::VoteResponse(VoteResponse { pre_vote: true, granted: true }))
    };
    r.step(grant(2)).expect("pre-vote grant");
    assert_eq!(r.role(), RoleKind::Candidate);
    let rd = r.ready();
    r.on_persisted(rd.number);
    let vote = |from| {
        msg(from, 1, 1, MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted: true }))
    };
    r.step(vote(2)).expect("vote");
    assert!(r.is_leader());
    let rd = r.ready();
    r.on_persisted(rd.number);
    // Both followers take the leader's no-op (index 1): they move from probing to replicating.
    for from in [2, 3] {
        let ack = AppendResponse::Success { match_index: 1 };
        r.step(msg(from, 1, 1, MessageBody::AppendResponse(ack))).expect("ack");
    }
    assert_eq!(r.commit_index(), 1);
    let _ = r.ready();
    r
}

#[test]
fn configuration_errors_are_typed() {
    let bad = |c: Config| c.validate().expect_err("invalid");
    assert_eq!(
        bad({
            let mut c = config(1);
            c.heartbeat_ticks = 0;
            c
        }),
        ConfigError::ZeroHeartbeat
    );
    assert_eq!(
        bad({
            let mut c = config(1);
            c.election_ticks = 2;
            c.heartbeat_ticks = 2;
            c
        }),
        ConfigError::ElectionNotAboveHeartbeat { election_ticks: 2, heartbeat_ticks: 2 }
    );
    assert_eq!(
        bad({
            let mut c = config(1);
            c.inflight_msgs_max = 0;
            c
        }),
        ConfigError::ZeroLimit { name: "inflight_msgs_max" }
    );
    let new = |voters: Vec<u64>| {
        Raft::new(config(1), InitialState::new_group(voters)).expect_err("invalid")
    };
    // No members at all is a node waiting to be added to a group; learners alone are not a group.
    let joining = Raft::new(config(1), InitialState::new_group(Vec::new())).expect("joining");
    assert!(!joining.is_voter() && joining.membership().is_empty());
    let learners_only = Membership::default().with_learners([1]);
    assert_eq!(
        Raft::new(config(1), InitialState::new_group(learners_only)).expect_err("invalid"),
        ConfigError::NoVoters
    );
    assert_eq!(bad(config(0)), ConfigError::ZeroNodeId);
    assert_eq!(new(vec![0, 1]), ConfigError::ZeroNodeId);
    assert_eq!(new(vec![1, 2, 2]), ConfigError::DuplicateVoter(2));
    assert!(matches!(new(vec![2, 3]), ConfigError::NotAVoter { id: 1, .. }));
    // A log whose terms run past the hard state's term is inconsistent.
    let state = InitialState {
        hard_state: HardState { term: 1, vote: None, commit: 0 },
        last_index: 2,
        term_runs: vec![(1, 1), (2, 3)],
        ..InitialState::new_group(vec![1])
    };
    assert!(matches!(Raft::new(config(1), state), Err(ConfigError::InconsistentState(_))));
    let state = InitialState {
        hard_state: HardState { term: 3, vote: None, commit: 1 },
        last_index: 2,
        term_runs: vec![(1, 1)],
        applied: 2,
        ..InitialState::new_group(vec![1])
    };
    assert!(matches!(Raft::new(config(1), state), Err(ConfigError::InconsistentState(_))));
}

#[test]
fn proposals_off_the_leader_fail_fast_with_a_hint() {
    let mut f = node(2, &[1, 2, 3]);
    assert_eq!(f.propose("x".into()), Err(ProposeError::NotLeader { leader: None }));
    f.step(msg(1, 2, 1, MessageBody::Heartbeat(Heartbeat { commit: 0, round: 1 })))
        .expect("heartbeat");
    assert_eq!(f.propose("x".into()), Err(ProposeError::NotLeader { leader: Some(1) }));
    assert_eq!(f.last_index(), 0, "nothing was appended");
}

#[test]
fn a_vote_leaves_only_after_it_is_persisted() {
    let mut f = node(2, &[1, 2, 3]);
    let req = VoteRequest { pre_vote: false, last_index: 0, last_term: 0, transfer: false };
    f.step(msg(1, 2, 5, MessageBody::Vote(req))).expect("vote request");
    let rd = f.ready();
    assert_eq!(rd.hard_state, Some(HardState { term: 5, vote: Some(1), commit: 0 }));
    assert!(rd.messages.is_empty(), "the vote must not leave before it is durable");
    assert_eq!(
        rd.persisted_messages,
        vec![msg(
            2,
            1,
            5,
            MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted: true })
        )]
    );
    // One vote per term: another candidate is refused, the same one is answered again.
    f.step(msg(3, 2, 5, MessageBody::Vote(req))).expect("second candidate");
    f.step(msg(1, 2, 5, MessageBody::Vote(req))).expect("repeated request");
    let rd = f.ready();
    let granted: Vec<(u64, bool)> = rd
        .persisted_messages
        .iter()
        .map(|m| match m.body {
            MessageBody::VoteResponse(v) => (m.to, v.granted),
            _ => panic!("unexpected {m:?}"),
        })
        .collect();
    assert_eq!(granted, vec![(3, false), (1, true)]);
}

#[test]
fn a_candidate_asks_for_votes_only_after_persisting_its_term() {
    let mut c = Raft::new(
        {
            let mut c = config(1);
            c.pre_vote = false;
            c
        },
        InitialState::new_group(vec![1, 2, 3]),
    )
    .expect("valid");
    let rd = tick_until_campaign(&mut c);
    assert_eq!(c.role(), RoleKind::Candidate);
    assert_eq!(rd.hard_state, Some(HardState { term: 1, vote: Some(1), commit: 0 }));
    assert!(rd.messages.is_empty());
    assert_eq!(rd.persisted_messages.len(), 2);
    assert!(rd
        .persisted_messages
        .iter()
        .all(|m| matches!(m.body, MessageBody::Vote(v) if !v.pre_vote)));
}

#[test]
fn pre_vote_changes_no_state() {
    let mut c = node(1, &[1, 2, 3]);
    let rd = tick_until_campaign(&mut c);
    assert_eq!(c.role(), RoleKind::PreCandidate);
    assert_eq!(c.term(), 0, "a pre-candidate keeps its term");
    assert_eq!(rd.hard_state, None);
    assert_eq!(rd.messages.len(), 2, "pre-votes leave at once: they promise nothing");
    for m in &rd.messages {
        assert_eq!(m.term, 1, "a pre-vote names the term it would campaign in");
        assert!(matches!(m.body, MessageBody::Vote(v) if v.pre_vote));
    }
}

#[test]
fn a_node_that_hears_its_leader_ignores_vote_requests() {
    let mut f = node(2, &[1, 2, 3]);
    f.step(msg(1, 2, 3, MessageBody::Heartbeat(Heartbeat { commit: 0, round: 1 })))
        .expect("heartbeat");
    let _ = f.ready();
    for pre_vote in [true, false] {
        let req = VoteRequest { pre_vote, last_index: 10, last_term: 9, transfer: false };
        f.step(msg(3, 2, 4, MessageBody::Vote(req))).expect("vote request");
        assert_eq!(f.term(), 3, "the term must not move while the leader is alive");
        let rd = f.ready();
        assert!(
            rd.messages.is_empty() && rd.persisted_messages.is_empty(),
            "ignored, not answered"
        );
    }
    // Once the lease ran out (no leader heard for an election timeout), it answers.
    for _ in 0..10 {
        f.tick();
    }
    let req = VoteRequest { pre_vote: true, last_index: 10, last_term: 9, transfer: false };
    f.step(msg(3, 2, 4, MessageBody::Vote(req))).expect("pre-vote");
    let rd = f.ready();
    assert_eq!(
        rd.messages,
        vec![msg(
            2,
            3,
            4,
            MessageBody::VoteResponse(VoteResponse { pre_vote: true, granted: true })
        )]
    );
    assert_eq!(f.term(), 3, "granting a pre-vote changes no term");
}

#[test]
fn a_stale_leader_is_told_the_newer_term() {
    let mut f = node(2, &[1, 2, 3]);
    f.step(msg(3, 2, 7, MessageBody::Heartbeat(Heartbeat { commit: 0, round: 1 })))
        .expect("new leader");
    f.step(msg(1, 2, 4, MessageBody::Heartbeat(Heartbeat { commit: 0, round: 1 })))
        .expect("old leader");
    let rd = f.ready();
    assert!(rd.messages.contains(&msg(
        2,
        1,
        7,
        MessageBody::HeartbeatResponse(HeartbeatResponse { round: 0 })
    )));
}

#[test]
fn the_leader_counts_itself_only_once_its_write_is_durable() {
    let mut l = leader_of_three();
    let committed_before = l.commit_index();
    let id = l.propose("x".into()).expect("leader");
    let rd = l.ready();
    assert_eq!(rd.entries.last().map(|e| e.index), Some(id.index));
    assert!(!rd.messages.is_empty(), "the leader replicates while it writes");
    // A follower acknowledges before the leader's own write is durable: one of three is not
    // a quorum.
    l.step(msg(
        2,
        1,
        1,
        MessageBody::AppendResponse(AppendResponse::Success { match_index: id.index }),
    ))
    .expect("ack");
    assert_eq!(l.commit_index(), committed_before);
    l.on_persisted(rd.number);
    assert_eq!(l.commit_index(), id.index, "committed once the leader's own copy is durable");
}

#[test]
fn entries_of_an_earlier_term_do_not_commit_by_counting() {
    // Node 1 restarts in term 2 holding entries 1-2 of term 1 (never committed) and wins term 3.
    let state = InitialState {
        hard_state: HardState { term: 2, vote: None, commit: 0 },
        last_index: 2,
        term_runs: vec![(1, 1)],
        ..InitialState::new_group(vec![1, 2, 3])
    };
    let mut l = Raft::new(
        {
            let mut c = config(1);
            c.pre_vote = false;
            c
        },
        state,
    )
    .expect("valid");
    let rd = tick_until_campaign(&mut l);
    l.on_persisted(rd.number);
    let vote = MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted: true });
    l.step(msg(2, 1, 3, vote)).expect("vote");
    assert!(l.is_leader());
    let rd = l.ready();
    l.on_persisted(rd.number);
    // A follower acknowledges the old entries only: a quorum holds index 2, of term 1.
    l.step(msg(2, 1, 3, MessageBody::AppendResponse(AppendResponse::Success { match_index: 2 })))
        .expect("ack");
    assert_eq!(
        l.commit_index(),
        0,
        "Figure 8: an entry of an older term is not committed by counting"
    );
    // Once the no-op of term 3 (index 3) is on a quorum, everything before it commits too.
    l.step(msg(2, 1, 3, MessageBody::AppendResponse(AppendResponse::Success { match_index: 3 })))
        .expect("ack");
    assert_eq!(l.commit_index(), 3);
}

#[test]
fn check_quorum_steps_down_within_an_election_timeout() {
    let mut l = leader_of_three();
    let mut ticks = 0;
    while l.is_leader() {
        l.tick();
        let _ = l.ready();
        ticks += 1;
        assert!(ticks <= 2 * 10, "still leading after {ticks} ticks without hearing a quorum");
    }
    assert_eq!(l.role(), RoleKind::Follower);
    // With one follower answering, it stays.
    let mut l = leader_of_three();
    for _ in 0..50 {
        l.tick();
        let _ = l.ready();
        l.step(msg(2, 1, 1, MessageBody::HeartbeatResponse(HeartbeatResponse { round: 1 })))
            .expect("answer");
    }
    assert!(l.is_leader());
}

#[test]
fn bad_messages_are_refused_without_changing_state() {
    let mut f = node(2, &[1, 2, 3]);
    // The first Ready hands out the configuration (for the transport).
    assert_eq!(f.ready().membership, Some(vec![1, 2, 3].into()));
    assert!(!f.has_ready());
    let hb = MessageBody::Heartbeat(Heartbeat { commit: 0, round: 1 });
    let wrong_group = Message { group: 9, ..msg(1, 2, 1, hb.clone()) };
    assert_eq!(f.step(wrong_group), Err(StepError::WrongGroup { expected: 0, got: 9 }));
    assert_eq!(f.step(msg(1, 3, 1, hb.clone())), Err(StepError::WrongNode { expected: 2, got: 3 }));
    // Answers come from members only; a leader's messages are heard from anyone (it may have
    // joined by an entry this node has not received yet).
    let answer = MessageBody::HeartbeatResponse(HeartbeatResponse { round: 1 });
    assert_eq!(f.step(msg(8, 2, 1, answer)), Err(StepError::UnknownPeer(8)));
    assert_eq!(f.step(msg(2, 2, 1, hb.clone())), Err(StepError::UnknownPeer(2)));
    assert_eq!(f.step(msg(0, 2, 1, hb)), Err(StepError::UnknownPeer(0)));
    let append = |entries: Vec<Entry>, prev_index, term| {
        msg(
            1,
            2,
            term,
            MessageBody::Append(AppendRequest { prev_index, prev_term: 0, entries, commit: 0 }),
        )
    };
    let skipping = vec![Entry::normal(1, 1, Bytes::new()), Entry::normal(1, 3, Bytes::new())];
    assert!(matches!(f.step(append(skipping, 0, 1)), Err(StepError::Malformed { .. })));
    let future_term = vec![Entry::normal(5, 1, Bytes::new())];
    assert!(matches!(f.step(append(future_term, 0, 1)), Err(StepError::Malformed { .. })));
    let overflow = vec![Entry::normal(1, u64::MAX, Bytes::new())];
    assert!(matches!(f.step(append(overflow, u64::MAX - 1, 1)), Err(StepError::Malformed { .. })));
    assert_eq!(f.term(), 0);
    assert_eq!(f.last_index(), 0);
    assert!(!f.has_ready());
}

#[test]
fn committed_entries_are_never_replaced() {
    let mut f = node(2, &[1, 2, 3]);
    let es: Vec<Entry> = (1..=5).map(|i| Entry::normal(1, i, Bytes::from(vec![i as u8]))).collect();
    let req = AppendRequest { prev_index: 0, prev_term: 0, entries: es, commit: 5 };
    f.step(msg(1, 2, 1, MessageBody::Append(req))).expect("append");
    assert_eq!(f.commit_index(), 5);
    // A (faulty) leader of term 2 sends entries that conflict at a committed index, with a
    // prev_index past our commit index so they are not skipped as committed.
    let conflicting = vec![Entry::normal(2, 6, Bytes::new())];
    let _ = f.ready();
    let req = AppendRequest { prev_index: 5, prev_term: 1, entries: conflicting, commit: 5 };
    f.step(msg(3, 2, 2, MessageBody::Append(req))).expect("a consistent append is fine");
    assert_eq!(f.term_at(5), Some(1));
}

#[test]
fn a_diverged_follower_answers_with_a_hint_that_skips_its_term() {
    // The follower holds 1 of term 1 and then 2..=100 of term 2 from a failed leader.
    let state = InitialState {
        hard_state: HardState { term: 2, vote: None, commit: 1 },
        last_index: 100,
        term_runs: vec![(1, 1), (2, 2)],
        ..InitialState::new_group(vec![1, 2, 3])
    };
    let mut f = Raft::new(config(2), state).expect("valid");
    // The new leader of term 3 probes at its own last entry, (60, 3).
    let req = AppendRequest { prev_index: 60, prev_term: 3, entries: vec![], commit: 1 };
    f.step(msg(1, 2, 3, MessageBody::Append(req))).expect("probe");
    let rd = f.ready();
    let reply = &rd.persisted_messages[0];
    // Every index up to 60 with a term <= 3 matches at most up to 60: the hint is 60 itself,
    // with term 2; the leader then jumps to the last index of term <= 2 in its own log.
    assert_eq!(
        reply.body,
        MessageBody::AppendResponse(AppendResponse::Conflict {
            rejected: 60,
            hint_index: 60,
            hint_term: 2
        })
    );
}

#[test]
fn an_acknowledgement_of_a_duplicate_append_waits_for_durability() {
    let mut f = node(2, &[1, 2, 3]);
    let es = vec![Entry::normal(1, 1, Bytes::from_static(b"a"))];
    let req = AppendRequest { prev_index: 0, prev_term: 0, entries: es, commit: 0 };
    f.step(msg(1, 2, 1, MessageBody::Append(req.clone()))).expect("append");
    let first = f.ready();
    assert_eq!(first.entries.len(), 1);
    // The same append again (a network duplicate) before the first write is durable: the Ready
    // has nothing to write, yet its acknowledgement promises the earlier write's durability.
    f.step(msg(1, 2, 1, MessageBody::Append(req))).expect("duplicate");
    let second = f.ready();
    assert!(!second.must_persist());
    assert_eq!(
        second.persisted_messages,
        vec![msg(2, 1, 1, MessageBody::AppendResponse(AppendResponse::Success { match_index: 1 }))],
        "the caller must hold this behind the first Ready's write (see the ready module's contract)"
    );
}

#[test]
fn proposals_beyond_the_uncommitted_limit_are_refused() {
    let mut l = leader_of_three();
    let mut cfg_limit = 0;
    loop {
        match l.propose(Bytes::from(vec![0u8; 1 << 20])) {
            Ok(_) => cfg_limit += 1,
            Err(ProposeError::Backpressure { uncommitted_bytes, limit_bytes }) => {
                assert!(uncommitted_bytes <= limit_bytes);
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(cfg_limit < 1_000, "no backpressure");
    }
    assert!(cfg_limit >= 200, "the default limit (256 MiB) admits about 255 one-MiB proposals");
}

#[test]
fn a_restarted_node_fetches_committed_entries_to_apply() {
    let state = InitialState {
        hard_state: HardState { term: 2, vote: None, commit: 5 },
        last_index: 8,
        term_runs: vec![(1, 1), (4, 2)],
        ..InitialState::new_group(vec![1, 2, 3])
    };
    let mut r = Raft::new(
        {
            let mut c = config(1);
            c.apply_bytes_max = 1 << 20;
            c
        },
        state,
    )
    .expect("valid");
    let rd = r.ready();
    assert!(rd.committed_entries.is_empty());
    assert_eq!(rd.fetches.len(), 1);
    let fetch = rd.fetches[0];
    assert_eq!((fetch.purpose, fetch.lo, fetch.hi), (FetchPurpose::Apply, 1, 5));
    // An answer that does not match the log (a read that raced a truncation) is ignored and
    // asked again.
    r.on_fetched(fetch, Ok(vec![Entry::normal(9, 1, Bytes::new())]));
    let rd = r.ready();
    assert!(rd.committed_entries.is_empty());
    assert_eq!(rd.fetches, vec![fetch], "asked again");
    let entries: Vec<Entry> =
        (1..=5).map(|i| Entry::normal(if i < 4 { 1 } else { 2 }, i, Bytes::new())).collect();
    r.on_fetched(rd.fetches[0], Ok(entries.clone()));
    assert_eq!(r.ready().committed_entries, entries);
    assert_eq!(r.applied_index(), 5);
}

#[test]
fn lost_and_failed_fetches_are_asked_again() {
    let state = InitialState {
        hard_state: HardState { term: 2, vote: None, commit: 5 },
        last_index: 5,
        term_runs: vec![(1, 2)],
        ..InitialState::new_group(vec![1, 2, 3])
    };
    let mut r = Raft::new(config(1), state).expect("valid");
    let first = r.ready().fetches[0];
    // The answer is lost: nothing is asked again for a while (the read may just be slow) ...
    for _ in 0..9 {
        r.tick();
        assert!(r.ready().fetches.is_empty(), "a slow read is not duplicated");
    }
    // ... but after an election timeout it is.
    r.tick();
    let second = r.ready().fetches;
    assert_eq!(second, vec![first]);
    // A failed read is retried at the next tick.
    let err = raft_core::StorageError::Corrupt("bad sector".into());
    r.on_fetched(second[0], Err(err));
    assert!(r.ready().fetches.is_empty());
    r.tick();
    assert_eq!(r.ready().fetches, vec![first]);
}

#[test]
fn a_lagging_follower_is_served_from_the_store() {
    // A leader whose cache keeps nothing beyond what is unapplied.
    let mut l = Raft::new(
        {
            let mut c = config(1);
            c.log_cache_bytes_max = 0;
            c
        },
        InitialState::new_group(vec![1, 2, 3]),
    )
    .expect("valid");
    let rd = tick_until_campaign(&mut l);
    l.on_persisted(rd.number);
    l.step(msg(2, 1, 1, MessageBody::VoteResponse(VoteResponse { pre_vote: true, granted: true })))
        .unwrap();
    let rd = l.ready();
    l.on_persisted(rd.number);
    l.step(msg(
        2,
        1,
        1,
        MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted: true }),
    ))
    .unwrap();
    for i in 0..5u8 {
        l.propose(Bytes::from(vec![i])).expect("leader");
    }
    let rd = l.ready();
    l.on_persisted(rd.number);
    // Follower 2 acknowledges everything; commit and apply move, and the cache empties.
    l.step(msg(2, 1, 1, MessageBody::AppendResponse(AppendResponse::Success { match_index: 6 })))
        .unwrap();
    let rd = l.ready();
    assert_eq!(rd.committed_entries.len(), 6);
    let _ = l.ready();
    assert_eq!(l.status().cached_entries, 0);
    // Follower 3 rejects everything from index 1: the leader must read the entries.
    let reject = AppendResponse::Conflict { rejected: 0, hint_index: 0, hint_term: 0 };
    l.step(msg(3, 1, 1, MessageBody::AppendResponse(reject))).unwrap();
    let rd = l.ready();
    let fetch =
        rd.fetches.iter().find(|f| matches!(f.purpose, FetchPurpose::Replicate { to: 3, .. }));
    assert!(fetch.is_some(), "leader asks for entries it no longer caches: {:?}", rd.fetches);
}

#[test]
fn a_restart_replays_the_log_in_large_reads_and_small_apply_batches() {
    let state = InitialState {
        hard_state: HardState { term: 1, vote: None, commit: 100 },
        last_index: 100,
        term_runs: vec![(1, 1)],
        ..InitialState::new_group(vec![1, 2, 3])
    };
    let cfg = {
        let mut c = config(1);
        c.apply_bytes_max = 100;
        c
    };
    let mut r = Raft::new(cfg, state).expect("valid");
    let rd = r.ready();
    let fetch = rd.fetches[0];
    assert_eq!((fetch.lo, fetch.hi), (1, 100));
    assert!(fetch.max_bytes >= 1 << 20, "one read covers many apply batches");
    let entries: Vec<Entry> =
        (1..=100).map(|i| Entry::normal(1, i, Bytes::from(vec![0u8; 20]))).collect();
    r.on_fetched(fetch, Ok(entries.clone()));
    let mut applied = Vec::new();
    let mut readies = 0;
    while r.has_ready() {
        let rd = r.ready();
        assert!(rd.fetches.is_empty(), "no second read");
        let bytes: u64 = rd.committed_entries.iter().map(Entry::size_bytes).sum();
        assert!(bytes <= 100 || rd.committed_entries.len() == 1, "batch of {bytes} bytes");
        applied.extend(rd.committed_entries);
        readies += 1;
    }
    assert_eq!(applied, entries);
    assert!(readies >= 40, "{readies} batches for 100 entries of 44 bytes each");
}

/// A leader that sent appends within a heartbeat interval calls the ticks before it owes a
/// follower a heartbeat quiet; ticking through them sends nothing, and the first tick past them
/// heartbeats. A read waiting for a round makes no tick quiet.
#[test]
fn a_busy_leader_counts_quiet_ticks_until_a_heartbeat_is_owed() {
    let mut r = leader_of_three();
    r.propose(Bytes::from_static(b"x")).expect("leader");
    let rd = r.ready();
    assert_eq!(rd.messages.len(), 2, "an append to each follower");
    r.on_persisted(rd.number);
    // Appends just went to both followers: with heartbeats every 2 ticks, the next tick only
    // counts, the one after owes both a heartbeat.
    assert_eq!(r.quiet_ticks(), 1);
    r.tick();
    assert!(!r.has_ready(), "a quiet tick sends nothing");
    assert_eq!(r.quiet_ticks(), 0);
    r.tick();
    let beats = r.ready().messages;
    assert_eq!(beats.len(), 2, "the tick after the quiet one heartbeats both followers");
    assert!(beats.iter().all(|m| matches!(m.body, MessageBody::Heartbeat(_))));
    // A read waits for a round: its expiry is counted in ticks, none is quiet.
    r.read_index(7).expect("leader");
    assert_eq!(r.quiet_ticks(), 0);
}

/// With lease reads the lease is counted in ticks and read between rounds: no tick of a leader
/// is quiet. Without, the same single-node leader counts ticks until check-quorum.
#[test]
fn a_leader_with_a_lease_has_no_quiet_ticks() {
    for lease_reads in [false, true] {
        let mut c = config(1);
        c.lease_reads = lease_reads;
        let mut l = Raft::new(c, InitialState::new_group(vec![1])).expect("valid");
        for _ in 0..30 {
            l.tick();
            let rd = l.ready();
            l.on_persisted(rd.number);
        }
        assert!(l.is_leader());
        if lease_reads {
            assert_eq!(l.quiet_ticks(), 0);
        } else {
            assert!(l.quiet_ticks() > 0, "only check-quorum is due");
        }
    }
}

/// A leader's own acknowledgement matters only once it is what the commit waits for; a
/// follower's once entries it knows committed wait for it to be applied.
#[test]
fn acknowledgements_matter_only_when_a_commit_or_an_apply_waits_for_them() {
    let mut r = leader_of_three();
    r.propose(Bytes::from_static(b"x")).expect("leader");
    let rd = r.ready();
    assert!(!r.persist_acks_matter(), "no follower holds entry 2: the commit waits for them");
    let ack = AppendResponse::Success { match_index: 2 };
    r.step(msg(2, 1, 1, MessageBody::AppendResponse(ack))).expect("ack");
    assert_eq!(r.commit_index(), 1, "the leader's own log is not durable yet");
    assert!(r.persist_acks_matter(), "now the commit waits only for the leader's own log");
    r.on_persisted(rd.number);
    assert_eq!(r.commit_index(), 2);
    assert!(!r.persist_acks_matter());

    // A follower that learns entries committed before its log is durable.
    let mut f = node(2, &[1, 2, 3]);
    let entries = vec![Entry::normal(1, 1, "a".into()), Entry::normal(1, 2, "b".into())];
    let append = AppendRequest { prev_index: 0, prev_term: 0, entries, commit: 0 };
    f.step(msg(1, 2, 1, MessageBody::Append(append))).expect("append");
    let rd = f.ready();
    assert!(!f.persist_acks_matter(), "nothing committed waits");
    let beat = Heartbeat { commit: 2, round: 1 };
    f.step(msg(1, 2, 1, MessageBody::Heartbeat(beat))).expect("heartbeat");
    assert!(f.persist_acks_matter(), "committed entries wait for the follower's own log");
    f.on_persisted(rd.number);
    assert!(!f.persist_acks_matter());
}
