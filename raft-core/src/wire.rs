//! The on-wire encoding of a [`Message`], and its version.
//!
//! The message types live in this crate, so their encoding and its version live here too: a
//! change to a message type that changes the bytes must bump [`MESSAGE_FORMAT_VERSION`] in the
//! same change (the golden test `tests/wire.rs` fails until it does), and a transport carries
//! the version in its handshake so nodes of different formats refuse each other instead of
//! misreading each other's messages. Any transport may use [`encode`] and [`decode`]; raft-net-tcp
//! frames their bytes with a length and a CRC32C.
//!
//! # Layout (format 5)
//!
//! bincode 1 with variable-length integers: an integer below 251 is one byte; 251, 252 and 253
//! announce a `u16`, `u32` or `u64` that follows (little endian). An enum is its variant's
//! number (a varint, in declaration order) followed by its fields; an `Option` is a byte 0 or 1
//! then the value; a `bool` one byte; a `Vec` or `Bytes` its length (varint) then its items.
//! Fields follow in declaration order, with nothing between them:
//!
//! ```text
//! Message     | group | from | to | term | body                                  (all varints)
//! body        | variant | fields
//!   0 Append                   | prev_index | prev_term | entries: len, Entry* | commit
//!   1 AppendResponse           | 0 Success  | match_index
//!                              | 1 Conflict | rejected | hint_index | hint_term
//!   2 Vote                     | pre_vote u8 | last_index | last_term | transfer u8
//!   3 VoteResponse             | pre_vote u8 | granted u8
//!   4 Heartbeat                | commit | round
//!   5 HeartbeatResponse        | round
//!   6 InstallSnapshot          | SnapshotMeta | offset | data: len, bytes | done u8
//!   7 InstallSnapshotResponse  | SnapshotMeta | status: 0 Receiving offset | 1 Installed
//!                              |              |         2 Stale commit     | 3 Failed
//!   8 ReadIndex                | seq
//!   9 ReadIndexResponse        | seq | index: Option
//!  10 TimeoutNow               | (nothing)
//!  11 NotAMember               | config_index
//!  12 Repair                   | from | last: Option, (index, term)
//!  13 RepairResponse           | prev_index | prev_term | entries: len, Entry*
//!  14 Hibernate                | commit | round
//! Entry       | term | index | kind: 0 Normal, 1 Noop, 2 Config | data: len, bytes
//! SnapshotMeta| group | index | term | Membership | size | checksum (varint u32)
//! Membership  | voters: len, ids | outgoing: len, ids | learners: len, ids
//!             | addresses: len, (id, string: len, UTF-8 bytes)* in id order
//! ```
//!
//! A payload holds exactly one message: trailing bytes are refused.

use bincode::Options;

use crate::message::Message;

/// The version of the message encoding this build speaks (5: `Hibernate`, for idle groups;
/// 4: `Repair` and `RepairResponse`,
/// for nodes whose storage lost entries; 3: membership changes: the
/// `Config` entry kind, the snapshot's whole membership, `NotAMember`; 2: heartbeat rounds,
/// ReadIndex, TimeoutNow and the vote's transfer flag; 1: the first). Bump it with any change to
/// [`Message`] or a type inside it that changes its bytes (a new variant, a new field, a
/// reordering), and regenerate the golden file (`UPDATE_GOLDEN=1 cargo test -p raft-core
/// --test wire`).
pub const MESSAGE_FORMAT_VERSION: u16 = 5;

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The bytes are not one message of this format (or exceed the limit given).
    #[error("undecodable message: {0}")]
    Decode(String),
    /// The message could not be encoded.
    #[error("unencodable message: {0}")]
    Encode(String),
}

/// The codec: bincode with variable-length integers, a byte limit, and trailing bytes rejected.
/// Decoding reads from the payload slice, so it never reads past it; a length prefix inside
/// that claims more than the payload holds fails when the bytes run out (serde preallocates at
/// most a small, fixed number of items whatever a prefix claims). Transports bound the payload
/// itself before decoding (raft-net-tcp checks the frame length first).
fn codec(max: u64) -> impl Options {
    bincode::DefaultOptions::new().with_limit(max).reject_trailing_bytes()
}

/// Appends the encoding of `msg` to `out`.
pub fn encode(msg: &Message, out: &mut Vec<u8>) -> Result<(), WireError> {
    codec(u64::MAX).serialize_into(out, msg).map_err(|e| WireError::Encode(e.to_string()))
}

/// The size of `msg`'s encoding.
pub fn encoded_len(msg: &Message) -> Result<u64, WireError> {
    codec(u64::MAX).serialized_size(msg).map_err(|e| WireError::Encode(e.to_string()))
}

/// Decodes one message from `payload` (at most `max_bytes` long). Never panics and never
/// allocates much more than the payload, whatever the bytes.
pub fn decode(payload: &[u8], max_bytes: u64) -> Result<Message, WireError> {
    if payload.len() as u64 > max_bytes {
        let len = payload.len();
        return Err(WireError::Decode(format!("payload of {len} bytes exceeds {max_bytes}")));
    }
    codec(max_bytes).deserialize(payload).map_err(|e| WireError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use bytes::Bytes;

    use crate::message::{AppendRequest, Heartbeat, MessageBody};
    use crate::types::Entry;

    #[test]
    fn round_trip_and_garbage() {
        let msg = Message {
            group: 3,
            from: 1,
            to: 2,
            term: 300,
            body: MessageBody::Heartbeat(Heartbeat { commit: 70_000, round: 12 }),
        };
        let mut bytes = Vec::new();
        encode(&msg, &mut bytes).unwrap();
        assert_eq!(encoded_len(&msg).unwrap(), bytes.len() as u64);
        assert_eq!(decode(&bytes, 1 << 20).unwrap(), msg);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, 1 << 20).is_err(), "trailing bytes");
        assert!(decode(&bytes, 3).is_err(), "over the limit");
    }

    #[test]
    fn a_lying_length_prefix_is_refused() {
        let entries = (1..=10).map(|i| Entry::normal(1, i, Bytes::from(vec![7u8; 100]))).collect();
        let append = AppendRequest { prev_index: 0, prev_term: 0, entries, commit: 0 };
        let msg = Message { group: 1, from: 1, to: 2, term: 1, body: MessageBody::Append(append) };
        let mut bytes = Vec::new();
        encode(&msg, &mut bytes).unwrap();
        assert_eq!(decode(&bytes, bytes.len() as u64).unwrap(), msg);
        // A length prefix that claims far more than is there fails without allocating it: the
        // entries' count (after the seven one-byte fields before it) says 2^60.
        let mut lying = bytes[..7].to_vec();
        lying.push(253);
        lying.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode(&lying, 1 << 20).is_err());
    }
}
