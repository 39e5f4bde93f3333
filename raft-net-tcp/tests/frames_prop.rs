//! Property tests of the frame codec: arbitrary bytes never panic the decoder nor make it
//! allocate beyond what arrived; any message survives a round trip; any single-byte corruption
//! of a frame is caught.

use bytes::Bytes;
use proptest::prelude::*;
use raft_core::message::{
    AppendRequest, AppendResponse, Heartbeat, HeartbeatResponse, InstallSnapshot,
    InstallSnapshotResponse, MessageBody, ReadIndexRequest, ReadIndexResponse, SnapshotStatus,
    VoteRequest, VoteResponse,
};
use raft_core::{Entry, EntryKind, Message, SnapshotMeta};
use raft_net_tcp::frame::{decode_payload, encode_frame, read_frame, FrameError};

fn entry() -> impl Strategy<Value = Entry> {
    (any::<u64>(), any::<u64>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64))
        .prop_map(|(term, index, noop, data)| Entry {
            term,
            index,
            kind: if noop { EntryKind::Noop } else { EntryKind::Normal },
            data: Bytes::from(data),
        })
}

fn meta() -> impl Strategy<Value = SnapshotMeta> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u64>(), 0..5),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(|(group, index, term, voters, size, checksum)| SnapshotMeta {
            group,
            index,
            term,
            membership: raft_core::Membership {
                learners: voters.iter().map(|v| v ^ 1).collect(),
                addresses: voters.iter().map(|&v| (v, format!("h{v}:7000"))).collect(),
                voters,
                outgoing: Vec::new(),
            },
            size,
            checksum,
        })
}

fn body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), proptest::collection::vec(entry(), 0..4), any::<u64>())
            .prop_map(|(prev_index, prev_term, entries, commit)| MessageBody::Append(
                AppendRequest { prev_index, prev_term, entries, commit }
            )),
        any::<u64>()
            .prop_map(|m| MessageBody::AppendResponse(AppendResponse::Success { match_index: m })),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(rejected, hint_index, hint_term)| {
            MessageBody::AppendResponse(AppendResponse::Conflict {
                rejected,
                hint_index,
                hint_term,
            })
        }),
        (any::<bool>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(pre_vote, last_index, last_term, transfer)| {
                MessageBody::Vote(VoteRequest { pre_vote, last_index, last_term, transfer })
            }
        ),
        (any::<bool>(), any::<bool>()).prop_map(|(pre_vote, granted)| MessageBody::VoteResponse(
            VoteResponse { pre_vote, granted }
        )),
        (any::<u64>(), any::<u64>())
            .prop_map(|(commit, round)| MessageBody::Heartbeat(Heartbeat { commit, round })),
        any::<u64>().prop_map(|round| MessageBody::HeartbeatResponse(HeartbeatResponse { round })),
        any::<u64>().prop_map(|seq| MessageBody::ReadIndex(ReadIndexRequest { seq })),
        (any::<u64>(), any::<Option<u64>>()).prop_map(|(seq, index)| {
            MessageBody::ReadIndexResponse(ReadIndexResponse { seq, index })
        }),
        Just(MessageBody::TimeoutNow),
        (meta(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..256), any::<bool>())
            .prop_map(|(meta, offset, data, done)| MessageBody::InstallSnapshot(InstallSnapshot {
                meta,
                offset,
                data: Bytes::from(data),
                done
            })),
        (meta(), any::<u64>()).prop_map(|(meta, offset)| {
            MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
                meta,
                status: SnapshotStatus::Receiving { offset },
            })
        }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), body())
        .prop_map(|(group, from, to, term, body)| Message { group, from, to, term, body })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_payload(&bytes, 1 << 20);
    }

    #[test]
    fn arbitrary_streams_never_panic_nor_overallocate(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut input = &bytes[..];
        let mut buf = Vec::new();
        while let Ok(_) | Err(FrameError::Checksum { .. } | FrameError::Decode(_)) =
            read_frame(&mut input, &mut buf, 1 << 30)
        {
            prop_assert!(buf.capacity() <= 4096.max(bytes.len() * 2), "buffer grew to {}", buf.capacity());
            if input.is_empty() {
                break;
            }
        }
    }

    #[test]
    fn messages_round_trip(msg in message()) {
        let mut wire = Vec::new();
        encode_frame(&msg, &mut wire).expect("encode");
        let (back, size) = read_frame(&mut &wire[..], &mut Vec::new(), 1 << 20).expect("decode");
        prop_assert_eq!(back, msg);
        prop_assert_eq!(size, wire.len());
    }

    #[test]
    fn any_corrupted_byte_is_caught(msg in message(), at in any::<usize>(), flip in 1u8..=255) {
        let mut wire = Vec::new();
        encode_frame(&msg, &mut wire).expect("encode");
        let at = at % wire.len();
        wire[at] ^= flip;
        let result = read_frame(&mut &wire[..], &mut Vec::new(), 1 << 20);
        prop_assert!(result.is_err(), "corruption at {} went unnoticed: {:?}", at, result);
    }
}
