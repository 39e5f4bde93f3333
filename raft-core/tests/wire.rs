//! The message encoding is pinned: one message of every kind, encoded, must give exactly the
//! bytes recorded for the current [`MESSAGE_FORMAT_VERSION`] in `testdata/wire-v{N}.txt`. A
//! change to a message type that changes its bytes fails here until the version is bumped (so
//! nodes of the two builds refuse each other at the handshake instead of misreading messages)
//! and the new version's file is recorded with `UPDATE_GOLDEN=1 cargo test -p raft-core --test
//! wire`.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use bytes::Bytes;
use raft_core::message::{
    AppendRequest, AppendResponse, Heartbeat, HeartbeatResponse, Hibernate, InstallSnapshot,
    InstallSnapshotResponse, MessageBody, NotAMember, ReadIndexRequest, ReadIndexResponse,
    RepairRequest, RepairResponse, SnapshotStatus, VoteRequest, VoteResponse,
};
use raft_core::wire::{decode, encode, MESSAGE_FORMAT_VERSION};
use raft_core::{Entry, Membership, Message, SnapshotMeta};

/// One message of every body kind, with values that exercise every varint width.
fn samples() -> Vec<(&'static str, Message)> {
    let meta = SnapshotMeta {
        group: 7,
        index: 70_000,
        term: 9,
        membership: Membership {
            voters: vec![1, 2, 300],
            outgoing: vec![1, 2, 3],
            learners: vec![9],
            addresses: [(300, "10.0.0.3:7000".to_owned()), (9, "[::1]:7009".to_owned())]
                .into_iter()
                .collect(),
        },
        size: 5_000_000_000,
        checksum: 0xDEAD_BEEF,
    };
    let msg = |body| Message { group: 7, from: 1, to: 2, term: 250, body };
    vec![
        (
            "append",
            msg(MessageBody::Append(AppendRequest {
                prev_index: 65_536,
                prev_term: 251,
                entries: vec![
                    Entry::normal(251, 65_537, Bytes::from_static(b"set x 1")),
                    Entry::noop(252, 65_538),
                    Entry::config(252, 65_539, &Membership::new([1, 2]).with_learners([3])),
                ],
                commit: 65_535,
            })),
        ),
        (
            "append-success",
            msg(MessageBody::AppendResponse(AppendResponse::Success { match_index: 1 << 40 })),
        ),
        (
            "append-conflict",
            msg(MessageBody::AppendResponse(AppendResponse::Conflict {
                rejected: 10,
                hint_index: 8,
                hint_term: 3,
            })),
        ),
        (
            "vote",
            msg(MessageBody::Vote(VoteRequest {
                pre_vote: true,
                last_index: 9,
                last_term: 2,
                transfer: false,
            })),
        ),
        (
            "vote-response",
            msg(MessageBody::VoteResponse(VoteResponse { pre_vote: false, granted: true })),
        ),
        ("heartbeat", msg(MessageBody::Heartbeat(Heartbeat { commit: 9, round: 300 }))),
        (
            "heartbeat-response",
            msg(MessageBody::HeartbeatResponse(HeartbeatResponse { round: 70_000 })),
        ),
        (
            "install-snapshot",
            msg(MessageBody::InstallSnapshot(InstallSnapshot {
                meta: meta.clone(),
                offset: 4096,
                data: Bytes::from_static(&[0, 1, 2, 255]),
                done: false,
            })),
        ),
        (
            "install-snapshot-response",
            msg(MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
                meta,
                status: SnapshotStatus::Stale { commit: 80_000 },
            })),
        ),
        ("read-index", msg(MessageBody::ReadIndex(ReadIndexRequest { seq: 1 << 33 }))),
        (
            "read-index-response",
            msg(MessageBody::ReadIndexResponse(ReadIndexResponse { seq: 5, index: Some(65_536) })),
        ),
        (
            "read-index-refused",
            msg(MessageBody::ReadIndexResponse(ReadIndexResponse { seq: 6, index: None })),
        ),
        ("timeout-now", msg(MessageBody::TimeoutNow)),
        ("not-a-member", msg(MessageBody::NotAMember(NotAMember { config_index: 1 << 20 }))),
        (
            "repair",
            msg(MessageBody::Repair(RepairRequest { from: 70_000, last: Some((70_300, 250)) })),
        ),
        ("repair-unknown-end", msg(MessageBody::Repair(RepairRequest { from: 3, last: None }))),
        (
            "repair-response",
            msg(MessageBody::RepairResponse(RepairResponse {
                prev_index: 69_999,
                prev_term: 249,
                entries: vec![Entry::normal(250, 70_000, Bytes::from_static(b"lost"))],
            })),
        ),
        (
            "vote-transfer",
            msg(MessageBody::Vote(VoteRequest {
                pre_vote: false,
                last_index: 70_000,
                last_term: 250,
                transfer: true,
            })),
        ),
        ("hibernate", msg(MessageBody::Hibernate(Hibernate { commit: 70_000, round: 12 }))),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_message_kind_encodes_to_the_recorded_bytes() {
    let path =
        format!("{}/tests/testdata/wire-v{MESSAGE_FORMAT_VERSION}.txt", env!("CARGO_MANIFEST_DIR"));
    let mut lines = format!(
        "# Message encoding, format {MESSAGE_FORMAT_VERSION}: kind, then the hex of one message.\n"
    );
    for (kind, msg) in samples() {
        let mut bytes = Vec::new();
        encode(&msg, &mut bytes).unwrap();
        assert_eq!(decode(&bytes, 1 << 20).unwrap(), msg, "{kind} round-trips");
        lines.push_str(&format!("{kind} {}\n", hex(&bytes)));
    }
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &lines).unwrap();
        return;
    }
    let recorded = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!("no recorded bytes for message format {MESSAGE_FORMAT_VERSION}: record them with UPDATE_GOLDEN=1")
    });
    for (want, got) in recorded.lines().zip(lines.lines()) {
        assert_eq!(
            got, want,
            "the encoding of a message changed under format {MESSAGE_FORMAT_VERSION}: bump \
             raft_core::wire::MESSAGE_FORMAT_VERSION and record the new bytes"
        );
    }
    assert_eq!(recorded.lines().count(), lines.lines().count(), "message kinds added or removed");
}
