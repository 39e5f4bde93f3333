//! Direct tests of the snapshot protocol in the core: exact messages in and out, no simulator.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use bytes::Bytes;
use raft_core::message::{
    AppendRequest, AppendResponse, InstallSnapshot, InstallSnapshotResponse, MessageBody,
    SnapshotStatus, VoteResponse,
};
use raft_core::ready::SnapshotChunk;
use raft_core::storage::load_initial_state;
use raft_core::{
    Config, Entry, HardState, InitialState, LogStore, LogWrite, MemLogStore, Message, Raft, Ready,
    RoleKind, SnapshotMeta, StepError,
};
use raft_core::{Membership, ProgressState};

const SIZE: u64 = 10;

fn config(id: u64) -> Config {
    {
        let mut c = Config::new(id);
        c.election_ticks = 10;
        c.heartbeat_ticks = 2;
        c.snapshot_chunk_bytes = 4;
        c.log_keep_entries = 0;
        c
    }
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { group: 0, from, to, term, body }
}

fn meta(index: u64, term: u64, checksum: u32) -> SnapshotMeta {
    SnapshotMeta {
        group: 0,
        index,
        term,
        membership: Membership::new([1, 2, 3]),
        size: SIZE,
        checksum,
    }
}

/// Node 1 of {1, 2, 3} restored from a snapshot at (100, 2), elected leader in term 3, with its
/// no-op at 101 sent. Follower 2 has an empty log.
fn leader_from_snapshot(snap: &SnapshotMeta) -> Raft {
    let state = InitialState {
        hard_state: HardState { term: 2, vote: None, commit: 100 },
        membership: Membership::new([1, 2, 3]),
        config_entries: Vec::new(),
        base_index: 100,
        base_term: 2,
        last_index: 100,
        term_runs: Vec::new(),
        applied: 100,
        snapshot: Some(snap.clone()),
        damage: None,
    };
    let mut r = Raft::new(config(1), state).unwrap();
    for _ in 0..100 {
        r.tick();
        if r.role() != RoleKind::Follower {
            break;
        }
    }
    let rd = r.ready();
    r.on_persisted(rd.number);
    let grant = |pre_vote| MessageBody::VoteResponse(VoteResponse { pre_vote, granted: true });
    r.step(msg(2, 1, 3, grant(true))).unwrap();
    let rd = r.ready();
    r.on_persisted(rd.number);
    r.step(msg(2, 1, 3, grant(false))).unwrap();
    assert!(r.is_leader());
    let rd = r.ready();
    r.on_persisted(rd.number);
    r
}

fn follower(id: u64) -> Raft {
    Raft::new(config(id), InitialState::new_group(vec![1, 2, 3])).unwrap()
}

fn sent(rd: &Ready, to: u64) -> Vec<MessageBody> {
    rd.messages
        .iter()
        .chain(&rd.persisted_messages)
        .filter(|m| m.to == to)
        .map(|m| m.body.clone())
        .collect()
}

fn data() -> Bytes {
    Bytes::from_static(b"0123456789")
}

/// The leader reads and sends the chunk at `offset`; returns the InstallSnapshot it sent to 2.
fn leader_sends_chunk(leader: &mut Raft, offset: u64) -> InstallSnapshot {
    let rd = leader.ready();
    assert_eq!(rd.snapshot_reads.len(), 1, "one chunk read at a time: {rd:?}");
    let read = rd.snapshot_reads[0].clone();
    assert_eq!(read.offset, offset);
    leader.on_persisted(rd.number);
    let end = (offset as usize + read.max_bytes).min(SIZE as usize);
    leader.on_snapshot_read(read, Ok(data().slice(offset as usize..end)));
    let rd = leader.ready();
    leader.on_persisted(rd.number);
    match sent(&rd, 2).as_slice() {
        [MessageBody::InstallSnapshot(req)] => req.clone(),
        other => panic!("expected one chunk, got {other:?}"),
    }
}

fn deliver_chunk(follower: &mut Raft, req: &InstallSnapshot, term: u64) -> Ready {
    follower.step(msg(1, 2, term, MessageBody::InstallSnapshot(req.clone()))).unwrap();
    follower.ready()
}

fn response(rd: &Ready) -> InstallSnapshotResponse {
    match sent(rd, 1).as_slice() {
        [MessageBody::InstallSnapshotResponse(resp)] => resp.clone(),
        other => panic!("expected one snapshot response, got {other:?}"),
    }
}

/// The leader starts a snapshot transfer to follower 2, whose log is empty.
fn start_transfer(leader: &mut Raft) {
    let conflict = AppendResponse::Conflict { rejected: 100, hint_index: 0, hint_term: 0 };
    leader.step(msg(2, 1, 3, MessageBody::AppendResponse(conflict))).unwrap();
    let p = leader.status().progress.into_iter().find(|p| p.id == 2).unwrap();
    assert_eq!(p.state, ProgressState::Snapshot);
}

#[test]
fn chunks_stream_and_the_follower_installs() {
    let snap = meta(100, 2, crc32c::crc32c(&data()));
    let mut l = leader_from_snapshot(&snap);
    let mut f = follower(2);
    start_transfer(&mut l);
    let mut offset = 0;
    loop {
        let req = leader_sends_chunk(&mut l, offset);
        assert_eq!(req.meta, snap);
        let rd = deliver_chunk(&mut f, &req, 3);
        assert_eq!(rd.snapshot_chunks.len(), 1);
        let chunk: SnapshotChunk = rd.snapshot_chunks[0].clone();
        assert_eq!((chunk.offset, chunk.done), (offset, req.done));
        f.on_persisted(rd.number);
        f.on_snapshot_chunk(chunk, Ok(()));
        let rd = f.ready();
        f.on_persisted(rd.number);
        let resp = response(&rd);
        l.step(msg(2, 1, 3, MessageBody::InstallSnapshotResponse(resp.clone()))).unwrap();
        if req.done {
            assert_eq!(resp.status, SnapshotStatus::Installed);
            // The follower restores its state machine and compacts its (empty) log onto it.
            assert_eq!(rd.restore_snapshot.as_ref(), Some(&snap));
            assert_eq!(rd.compact, Some((100, 2)));
            assert_eq!((f.commit_index(), f.applied_index(), f.first_index()), (100, 100, 101));
            break;
        }
        offset = req.offset + req.data.len() as u64;
        assert_eq!(resp.status, SnapshotStatus::Receiving { offset });
    }
    // The leader goes back to appends right after the snapshot.
    let rd = l.ready();
    let appends: Vec<_> = sent(&rd, 2)
        .into_iter()
        .filter_map(|b| if let MessageBody::Append(a) = b { Some(a) } else { None })
        .collect();
    assert_eq!(appends.first().map(|a| (a.prev_index, a.prev_term)), Some((100, 2)));
    let p = l.status().progress.into_iter().find(|p| p.id == 2).unwrap();
    assert_eq!(p.match_index, 100);
}

#[test]
fn a_lost_chunk_is_resent_from_the_acknowledged_offset() {
    let snap = meta(100, 2, 7);
    let mut l = leader_from_snapshot(&snap);
    let mut f = follower(2);
    start_transfer(&mut l);
    // Chunk 0..4 arrives and is acknowledged.
    let first = leader_sends_chunk(&mut l, 0);
    let rd = deliver_chunk(&mut f, &first, 3);
    f.on_snapshot_chunk(rd.snapshot_chunks[0].clone(), Ok(()));
    let resp = response(&f.ready());
    l.step(msg(2, 1, 3, MessageBody::InstallSnapshotResponse(resp))).unwrap();
    // Chunk 4..8 is lost: after the resend timeout the leader reads offset 4 again.
    let _lost = leader_sends_chunk(&mut l, 4);
    for _ in 0..4 {
        l.tick();
    }
    let again = leader_sends_chunk(&mut l, 4);
    assert_eq!(&again.data[..], b"4567");
    // A stale duplicate of chunk 0..4 only tells the leader where the follower is.
    let rd = deliver_chunk(&mut f, &first, 3);
    assert!(rd.snapshot_chunks.is_empty(), "nothing is written twice");
    assert_eq!(response(&rd).status, SnapshotStatus::Receiving { offset: 4 });
}

#[test]
fn a_new_leader_with_the_same_snapshot_resumes_where_the_follower_is() {
    let snap = meta(100, 2, 7);
    let mut f = follower(2);
    // Leader 1 of term 3 got 8 bytes across, then lost leadership.
    let mut l = leader_from_snapshot(&snap);
    start_transfer(&mut l);
    for offset in [0, 4] {
        let req = leader_sends_chunk(&mut l, offset);
        let rd = deliver_chunk(&mut f, &req, 3);
        f.on_snapshot_chunk(rd.snapshot_chunks[0].clone(), Ok(()));
        let resp = response(&f.ready());
        l.step(msg(2, 1, 3, MessageBody::InstallSnapshotResponse(resp))).unwrap();
    }
    assert_eq!(f.receiving_snapshot(), Some((100, 8)));
    // A leader of term 4 sends the same snapshot from the start: the follower points it to 8.
    let req =
        InstallSnapshot { meta: snap.clone(), offset: 0, data: data().slice(0..4), done: false };
    let rd = deliver_chunk(&mut f, &req, 4);
    assert!(rd.snapshot_chunks.is_empty());
    assert_eq!(response(&rd).status, SnapshotStatus::Receiving { offset: 8 });
    // A different snapshot (another checksum) at offset 0 supersedes the transfer.
    let other = meta(100, 2, 8);
    let req =
        InstallSnapshot { meta: other.clone(), offset: 0, data: data().slice(0..4), done: false };
    let rd = deliver_chunk(&mut f, &req, 4);
    assert_eq!(rd.snapshot_chunks.len(), 1);
    assert_eq!(f.receiving_snapshot(), Some((100, 0)));
    // A late chunk of the superseded one is answered, not written.
    let late = InstallSnapshot { meta: snap, offset: 8, data: data().slice(8..10), done: true };
    f.on_snapshot_chunk(rd.snapshot_chunks[0].clone(), Ok(()));
    f.ready();
    let rd = deliver_chunk(&mut f, &late, 4);
    assert!(rd.snapshot_chunks.is_empty());
    assert_eq!(response(&rd).status, SnapshotStatus::Receiving { offset: 0 });
}

#[test]
fn a_stale_snapshot_is_answered_with_the_commit_index() {
    let mut f = follower(2);
    // The follower holds and commits entries 1..=5 of term 1.
    let entries: Vec<Entry> = (1..=5).map(|i| Entry::normal(1, i, Bytes::new())).collect();
    let append = AppendRequest { prev_index: 0, prev_term: 0, entries, commit: 5 };
    f.step(msg(1, 2, 1, MessageBody::Append(append))).unwrap();
    let rd = f.ready();
    f.on_persisted(rd.number);
    let old = SnapshotMeta { index: 3, term: 1, ..meta(3, 1, 1) };
    let req = InstallSnapshot { meta: old, offset: 0, data: data().slice(0..4), done: false };
    let rd = deliver_chunk(&mut f, &req, 1);
    assert!(rd.snapshot_chunks.is_empty(), "a stale snapshot is not written");
    assert_eq!(response(&rd).status, SnapshotStatus::Stale { commit: 5 });
    assert_eq!(f.first_index(), 1, "the log is untouched");
}

#[test]
fn a_failed_write_restarts_the_transfer() {
    let snap = meta(100, 2, 7);
    let mut f = follower(2);
    let req = InstallSnapshot { meta: snap, offset: 0, data: data().slice(0..4), done: false };
    let rd = deliver_chunk(&mut f, &req, 3);
    let err = raft_core::SnapshotError::ChecksumMismatch { expected: 7, actual: 9 };
    f.on_snapshot_chunk(rd.snapshot_chunks[0].clone(), Err(err));
    assert_eq!(response(&f.ready()).status, SnapshotStatus::Failed);
    assert_eq!(f.receiving_snapshot(), None);
    assert_eq!(f.commit_index(), 0, "nothing was installed");
}

#[test]
fn malformed_chunks_are_rejected_before_anything_changes() {
    let mut f = follower(2);
    let good = InstallSnapshot { meta: meta(100, 2, 7), offset: 0, data: data(), done: true };
    let bad = [
        InstallSnapshot { done: false, ..good.clone() },
        InstallSnapshot { offset: 4, ..good.clone() },
        InstallSnapshot { offset: u64::MAX, ..good.clone() },
        InstallSnapshot { meta: SnapshotMeta { term: 9, ..good.meta.clone() }, ..good.clone() },
        InstallSnapshot {
            meta: SnapshotMeta { membership: Membership::default(), ..good.meta.clone() },
            ..good.clone()
        },
        InstallSnapshot { meta: SnapshotMeta { group: 5, ..good.meta.clone() }, ..good.clone() },
    ];
    for req in bad {
        let err = f.step(msg(1, 2, 3, MessageBody::InstallSnapshot(req.clone()))).unwrap_err();
        assert!(matches!(err, StepError::Malformed { .. }), "{req:?} gave {err:?}");
        assert_eq!(f.term(), 0, "a rejected message changes nothing");
    }
    f.step(msg(1, 2, 3, MessageBody::InstallSnapshot(good))).unwrap();
    assert_eq!(f.ready().snapshot_chunks.len(), 1);
}

#[test]
fn a_snapshot_taken_compacts_the_log_and_a_restart_finishes_an_interrupted_compaction() {
    // A single-node group applies 20 entries and asks for a snapshot at 20 every 20 entries.
    let store = MemLogStore::new();
    let cfg = {
        let mut c = config(1);
        c.id = 1;
        c.snapshot_entries = 20;
        c.log_keep_entries = 5;
        c
    };
    let mut r = Raft::new(cfg.clone(), InitialState::new_group(vec![1])).unwrap();
    let mut request = None;
    for tick in 0..200 {
        r.tick();
        if r.is_leader() && tick % 5 == 0 && r.last_index() < 20 {
            for _ in 0..5 {
                let _ = r.propose(Bytes::from_static(b"x"));
            }
        }
        while r.has_ready() {
            let rd = r.ready();
            if let Some((index, term)) = rd.compact {
                store.compact(0, index, term).unwrap();
            }
            let w = LogWrite { group: 0, hard_state: rd.hard_state, entries: &rd.entries };
            store.write(&[w]).unwrap();
            r.on_persisted(rd.number);
            if let Some(req) = rd.snapshot_request {
                request = Some(req);
            }
        }
        if request.is_some() {
            break;
        }
    }
    let request = request.expect("a snapshot was asked for");
    assert!(request.index >= 20);
    let taken = request.meta_with(3, 0xABC);
    r.on_snapshot_taken(Ok(taken.clone()));
    // The first snapshot compacts nothing: the log is kept back to the previous snapshot (here,
    // the start), for a restart that finds this one damaged.
    assert_eq!(r.ready().compact, None);
    assert_eq!(r.first_index(), 1);
    // A restart from the snapshot keeps the log that holds it whole.
    let state = load_initial_state(&store, 0, vec![1], Some(taken.clone()), 0).unwrap();
    assert_eq!((state.base_index, state.applied), (0, request.index));
    assert_eq!(store.log_state(0).unwrap().first_index, 1);
    let r = Raft::new(cfg, state).unwrap();
    assert_eq!(r.commit_index(), request.index);
    assert_eq!(r.status().snapshot_index, request.index);
}

#[test]
fn a_restart_adopts_the_term_of_a_snapshot_installed_before_its_hard_state_was_synced() {
    // The snapshot (of term 5) is durable; the hard state that recorded term 5 was lost.
    let snap = meta(100, 5, 7);
    let state = InitialState {
        hard_state: HardState { term: 3, vote: Some(2), commit: 40 },
        membership: Membership::new([1, 2, 3]),
        config_entries: Vec::new(),
        base_index: 100,
        base_term: 5,
        last_index: 100,
        term_runs: Vec::new(),
        applied: 100,
        snapshot: Some(snap),
        damage: None,
    };
    let mut r = Raft::new(config(1), state).unwrap();
    assert_eq!((r.term(), r.commit_index()), (5, 100));
    // The adopted term is persisted with the first Ready, with no vote in it.
    let rd = r.ready();
    assert_eq!(rd.hard_state, Some(HardState { term: 5, vote: None, commit: 100 }));
}

/// A single-node group that proposes one 100-byte entry at a time; returns the index of the
/// first snapshot request, if one comes within `max` entries.
fn next_snapshot_request(r: &mut Raft, max: u64) -> Option<raft_core::ready::SnapshotRequest> {
    let start = r.last_index();
    while r.last_index() < start + max {
        r.propose(Bytes::from(vec![b'x'; 100])).unwrap();
        while r.has_ready() {
            let rd = r.ready();
            r.on_persisted(rd.number);
            if let Some(req) = rd.snapshot_request {
                return Some(req);
            }
        }
    }
    None
}

#[test]
fn a_large_snapshot_is_not_retaken_until_the_log_since_it_is_as_large() {
    let cfg = {
        let mut c = config(1);
        c.id = 1;
        c.snapshot_entries = 5;
        c.snapshot_log_ratio_pct = 100;
        c
    };
    let mut r = Raft::new(cfg, InitialState::new_group(vec![1])).unwrap();
    while !r.is_leader() {
        r.tick();
        while r.has_ready() {
            let rd = r.ready();
            r.on_persisted(rd.number);
        }
    }
    // With no snapshot yet, the count alone decides.
    let first = next_snapshot_request(&mut r, 20).expect("a first snapshot");
    assert!(first.index <= 6, "{first:?}");
    // A snapshot of 50 entries' worth of bytes: the next one waits for 50 entries more, not 5.
    let entry_bytes = Entry::normal(1, 1, Bytes::from(vec![b'x'; 100])).size_bytes();
    r.on_snapshot_taken(Ok(first.meta_with(50 * entry_bytes, 1)));
    let second = next_snapshot_request(&mut r, 200).expect("a second snapshot");
    let gap = second.index - first.index;
    assert!((50..=52).contains(&gap), "asked for again after {gap} entries");
    // A small snapshot lets the count decide again.
    r.on_snapshot_taken(Ok(second.meta_with(entry_bytes, 2)));
    let third = next_snapshot_request(&mut r, 200).expect("a third snapshot");
    assert!(third.index - second.index <= 6, "{third:?}");
}

/// The newest snapshot found damaged (by the store's scrubber, or a read for a follower that
/// failed its checksum) is replaced at once by a fresh one, at the same index when nothing was
/// applied since; a report about an older snapshot changes nothing.
#[test]
fn a_damaged_newest_snapshot_is_retaken_at_once() {
    let snap = meta(100, 2, 7);
    let mut leader = leader_from_snapshot(&snap);
    let drain = |r: &mut Raft| {
        let mut asked = None;
        while r.has_ready() {
            let rd = r.ready();
            r.on_persisted(rd.number);
            asked = asked.or(rd.snapshot_request);
        }
        asked
    };
    drain(&mut leader);
    leader.report_snapshot_damaged(&meta(90, 2, 1));
    assert_eq!(drain(&mut leader), None, "not this node's newest: nothing to do");
    // A chunk read for a follower fails its checksum.
    start_transfer(&mut leader);
    let rd = leader.ready();
    leader.on_persisted(rd.number);
    let read = rd.snapshot_reads[0].clone();
    let err = raft_core::SnapshotError::ChecksumMismatch { expected: 1, actual: 2 };
    leader.on_snapshot_read(read, Err(err));
    let request = drain(&mut leader).expect("a fresh snapshot is asked for");
    assert_eq!(request.index, leader.applied_index());
    let fresh = request.meta_with(SIZE, 8);
    leader.on_snapshot_taken(Ok(fresh.clone()));
    assert_eq!(leader.status().snapshot_index, fresh.index);
    assert_eq!(drain(&mut leader), None, "asked once");
}
