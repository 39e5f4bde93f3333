//! The wire format: a fixed-size handshake, then frames.
//!
//! ```text
//! hello (dialer -> acceptor), 32 bytes:
//!   magic "RKNT" | version u16 | message format u16 | cluster id u64 | from node u64 | to node u64
//! answer (acceptor -> dialer), 24 bytes:
//!   magic "RKNT" | version u16 | code u16 | cluster id u64 | node id u64
//! frame:
//!   payload length u32 | CRC32C of the payload u32 | payload (one raft-core Message)
//! ```
//!
//! Integers are little endian. `version` is this transport's own protocol (the handshake and
//! the framing); `message format` is raft-core's [`MESSAGE_FORMAT_VERSION`](raft_core::wire::MESSAGE_FORMAT_VERSION), the encoding of the
//! payload, whose layout is drawn in [`raft_core::wire`] next to its encoder. The acceptor
//! refuses a dialer that differs in either. The handshake is fixed-size and free of the payload
//! encoding so that a peer of any later version can still read it and say why it refuses.

use std::io::{self, Read};

use raft_core::wire;
use raft_core::{Message, NodeId};

/// The transport protocol version this build speaks (handshake and framing). Version 2 added
/// the message format to the hello.
pub const PROTOCOL_VERSION: u16 = 2;
/// The first bytes of every handshake.
pub const MAGIC: [u8; 4] = *b"RKNT";
/// Bytes of a frame's header (length and checksum).
pub const FRAME_HEADER_LEN: usize = 8;
/// Bytes of the dialer's hello.
pub const HELLO_LEN: usize = 32;
/// Bytes of the acceptor's answer.
pub const ANSWER_LEN: usize = 24;

/// Why a frame could not be read. The connection it came from is closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header claims more than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The claimed payload length.
        len: u32,
        /// The configured maximum.
        max: u32,
    },
    /// The payload does not match its checksum.
    #[error("frame checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    Checksum {
        /// The checksum in the header.
        expected: u32,
        /// The checksum of the payload received.
        actual: u32,
    },
    /// The payload is not a message of this protocol version.
    #[error("undecodable frame payload: {0}")]
    Decode(String),
    /// The connection failed or ended (mid-frame: `UnexpectedEof`).
    #[error("connection: {0}")]
    Io(#[from] io::Error),
}

/// Appends one framed message to `out`.
pub fn encode_frame(msg: &Message, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    wire::encode(msg, out).map_err(|e| FrameError::Decode(e.to_string()))?;
    let payload = &out[start + FRAME_HEADER_LEN..];
    let len = u32::try_from(payload.len())
        .map_err(|_| FrameError::TooLarge { len: u32::MAX, max: u32::MAX })?;
    let crc = crc32c::crc32c(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Reads one frame from `input` into `buf` (reused between calls) and decodes it. Returns the
/// message and the frame's size on the wire.
///
/// Never allocates the claimed length up front: the payload buffer grows as bytes arrive, so a
/// header that lies about its length costs no more memory than the bytes actually sent.
pub fn read_frame(
    input: &mut impl Read,
    buf: &mut Vec<u8>,
    max: u32,
) -> Result<(Message, usize), FrameError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    input.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let expected = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    buf.clear();
    let got = input.take(u64::from(len)).read_to_end(buf)?;
    if got < len as usize {
        return Err(FrameError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection ended {got} bytes into a {len}-byte frame"),
        )));
    }
    let actual = crc32c::crc32c(buf);
    if actual != expected {
        return Err(FrameError::Checksum { expected, actual });
    }
    let msg = decode_payload(buf, max)?;
    Ok((msg, FRAME_HEADER_LEN + len as usize))
}

/// Decodes a frame's payload. Never panics, whatever the bytes.
pub fn decode_payload(payload: &[u8], max: u32) -> Result<Message, FrameError> {
    wire::decode(payload, u64::from(max)).map_err(|e| FrameError::Decode(e.to_string()))
}

/// The dialer's opening of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the dialer speaks.
    pub version: u16,
    /// The message format the dialer speaks ([`MESSAGE_FORMAT_VERSION`](raft_core::wire::MESSAGE_FORMAT_VERSION)).
    pub format: u16,
    /// The dialer's cluster.
    pub cluster: u64,
    /// The dialer's node id.
    pub from: NodeId,
    /// The node the dialer means to reach.
    pub to: NodeId,
}

impl Hello {
    /// The hello's bytes.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.format.to_le_bytes());
        b[8..16].copy_from_slice(&self.cluster.to_le_bytes());
        b[16..24].copy_from_slice(&self.from.to_le_bytes());
        b[24..32].copy_from_slice(&self.to.to_le_bytes());
        b
    }

    /// Parses a hello; `None` if the magic is wrong (not a raftkit peer).
    pub fn decode(b: &[u8; HELLO_LEN]) -> Option<Hello> {
        if b[0..4] != MAGIC {
            return None;
        }
        Some(Hello {
            version: u16::from_le_bytes([b[4], b[5]]),
            format: u16::from_le_bytes([b[6], b[7]]),
            cluster: u64_at(b, 8),
            from: u64_at(b, 16),
            to: u64_at(b, 24),
        })
    }
}

/// The acceptor's verdict on a hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted: frames may flow both ways.
    Accepted,
    /// The dialer belongs to another cluster.
    WrongCluster,
    /// The dialer speaks another protocol version.
    WrongVersion,
    /// The dialer's node id is not among the acceptor's peers.
    UnknownNode,
    /// The dialer encodes messages in another format ([`MESSAGE_FORMAT_VERSION`](raft_core::wire::MESSAGE_FORMAT_VERSION)).
    WrongMessageFormat,
    /// The dialer addressed another node (a stale address).
    WrongTarget,
    /// The dialer should be the one accepting: the lower id of a pair dials.
    WrongDirection,
    /// A code this build does not know.
    Other(u16),
}

impl Verdict {
    fn code(self) -> u16 {
        match self {
            Verdict::Accepted => 0,
            Verdict::WrongCluster => 1,
            Verdict::WrongVersion => 2,
            Verdict::UnknownNode => 3,
            Verdict::WrongTarget => 4,
            Verdict::WrongDirection => 5,
            Verdict::WrongMessageFormat => 6,
            Verdict::Other(code) => code,
        }
    }

    fn from_code(code: u16) -> Verdict {
        match code {
            0 => Verdict::Accepted,
            1 => Verdict::WrongCluster,
            2 => Verdict::WrongVersion,
            3 => Verdict::UnknownNode,
            4 => Verdict::WrongTarget,
            5 => Verdict::WrongDirection,
            6 => Verdict::WrongMessageFormat,
            other => Verdict::Other(other),
        }
    }
}

/// The acceptor's answer to a hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The protocol version the acceptor speaks.
    pub version: u16,
    /// Whether the connection is accepted, and if not why.
    pub verdict: Verdict,
    /// The acceptor's cluster.
    pub cluster: u64,
    /// The acceptor's node id.
    pub node: NodeId,
}

impl Answer {
    /// The answer's bytes.
    pub fn encode(&self) -> [u8; ANSWER_LEN] {
        let mut b = [0u8; ANSWER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.verdict.code().to_le_bytes());
        b[8..16].copy_from_slice(&self.cluster.to_le_bytes());
        b[16..24].copy_from_slice(&self.node.to_le_bytes());
        b
    }

    /// Parses an answer; `None` if the magic is wrong.
    pub fn decode(b: &[u8; ANSWER_LEN]) -> Option<Answer> {
        if b[0..4] != MAGIC {
            return None;
        }
        Some(Answer {
            version: u16::from_le_bytes([b[4], b[5]]),
            verdict: Verdict::from_code(u16::from_le_bytes([b[6], b[7]])),
            cluster: u64_at(b, 8),
            node: u64_at(b, 16),
        })
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::message::{Heartbeat, MessageBody};
    use raft_core::wire::MESSAGE_FORMAT_VERSION;

    fn heartbeat() -> Message {
        Message {
            group: 3,
            from: 1,
            to: 2,
            term: 9,
            body: MessageBody::Heartbeat(Heartbeat { commit: 4, round: 1 }),
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut wire = Vec::new();
        encode_frame(&heartbeat(), &mut wire).expect("encode");
        encode_frame(&heartbeat(), &mut wire).expect("encode");
        let mut input = &wire[..];
        let mut buf = Vec::new();
        for _ in 0..2 {
            let (msg, size) = read_frame(&mut input, &mut buf, 1 << 20).expect("decode");
            assert_eq!(msg, heartbeat());
            assert_eq!(size * 2, wire.len());
        }
        assert!(matches!(read_frame(&mut input, &mut buf, 1 << 20), Err(FrameError::Io(_))));
    }

    #[test]
    fn a_flipped_bit_is_a_checksum_error() {
        let mut wire = Vec::new();
        encode_frame(&heartbeat(), &mut wire).expect("encode");
        let last = wire.len() - 1;
        wire[last] ^= 0x10;
        let err = read_frame(&mut &wire[..], &mut Vec::new(), 1 << 20).unwrap_err();
        assert!(matches!(err, FrameError::Checksum { .. }), "{err}");
    }

    #[test]
    fn an_oversized_claim_is_refused_before_reading_it() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&u32::MAX.to_le_bytes());
        wire.extend_from_slice(&0u32.to_le_bytes());
        let mut buf = Vec::new();
        let err = read_frame(&mut &wire[..], &mut buf, 1 << 20).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: u32::MAX, max: 1048576 }), "{err}");
        assert_eq!(buf.capacity(), 0, "nothing was allocated for the claimed length");
    }

    #[test]
    fn a_lying_length_allocates_only_what_arrives() {
        // Claims 64 MiB, sends 10 bytes, then the connection ends.
        let mut wire = Vec::new();
        wire.extend_from_slice(&(64u32 << 20).to_le_bytes());
        wire.extend_from_slice(&0u32.to_le_bytes());
        wire.extend_from_slice(&[7; 10]);
        let mut buf = Vec::new();
        let err = read_frame(&mut &wire[..], &mut buf, 128 << 20).unwrap_err();
        assert!(matches!(&err, FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof));
        assert!(buf.capacity() < 1 << 16, "grew to {} bytes", buf.capacity());
    }

    #[test]
    fn handshakes_round_trip() {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            format: MESSAGE_FORMAT_VERSION,
            cluster: 77,
            from: 1,
            to: 3,
        };
        assert_eq!(Hello::decode(&hello.encode()), Some(hello));
        let answer = Answer {
            version: PROTOCOL_VERSION,
            verdict: Verdict::WrongCluster,
            cluster: 78,
            node: 3,
        };
        assert_eq!(Answer::decode(&answer.encode()), Some(answer));
        let mut bad = hello.encode();
        bad[0] = b'X';
        assert_eq!(Hello::decode(&bad), None);
    }
}
