//! A small key-value state machine and its command encoding, used by the simulator's workload
//! and by the linearizability checker's model.

use std::collections::BTreeMap;
use std::io::Read;

use bytes::{BufMut, Bytes, BytesMut};

use crate::storage::StateMachine;
use crate::types::{Entry, EntryKind};

/// A key-value operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Read a key ("" if absent).
    Get {
        /// The key.
        key: String,
    },
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Append to a key's value.
    Append {
        /// The key.
        key: String,
        /// What to append.
        value: String,
    },
}

impl KvOp {
    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            KvOp::Get { key } | KvOp::Put { key, .. } | KvOp::Append { key, .. } => key,
        }
    }

    /// Whether the operation changes state.
    pub fn is_write(&self) -> bool {
        !matches!(self, KvOp::Get { .. })
    }
}

/// A client command as carried in a log entry: who sent it, and the operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The sending client.
    pub client: u64,
    /// The client's operation number.
    pub op_id: u64,
    /// The operation.
    pub op: KvOp,
}

/// A command that could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed KV command: {0}")]
pub struct DecodeError(&'static str);

// Layout, little endian:
//
// ```text
// +-----+------------+------------+---------+-----------+-------------+
// | tag | client u64 | op_id u64  | key u16 | key bytes | value bytes |
// +-----+------------+------------+---------+-----------+-------------+
//   1B       8B           8B          2B        len        rest
// ```
const TAG_GET: u8 = 1;
const TAG_PUT: u8 = 2;
const TAG_APPEND: u8 = 3;
const HEADER: usize = 1 + 8 + 8 + 2;

impl Command {
    /// Encodes the command for a log entry.
    pub fn encode(&self) -> Bytes {
        let (tag, key, value) = match &self.op {
            KvOp::Get { key } => (TAG_GET, key, ""),
            KvOp::Put { key, value } => (TAG_PUT, key, value.as_str()),
            KvOp::Append { key, value } => (TAG_APPEND, key, value.as_str()),
        };
        let key_len = u16::try_from(key.len()).unwrap_or(u16::MAX);
        let key = &key.as_bytes()[..key_len as usize];
        let mut buf = BytesMut::with_capacity(HEADER + key.len() + value.len());
        buf.put_u8(tag);
        buf.put_u64_le(self.client);
        buf.put_u64_le(self.op_id);
        buf.put_u16_le(key_len);
        buf.put_slice(key);
        buf.put_slice(value.as_bytes());
        buf.freeze()
    }

    /// Decodes a command, rejecting anything malformed.
    pub fn decode(data: &[u8]) -> Result<Command, DecodeError> {
        if data.len() < HEADER {
            return Err(DecodeError("shorter than the header"));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let client = u64_at(1);
        let op_id = u64_at(9);
        let key_len = u16::from_le_bytes([data[17], data[18]]) as usize;
        let rest = &data[HEADER..];
        if rest.len() < key_len {
            return Err(DecodeError("key runs past the end"));
        }
        let key =
            std::str::from_utf8(&rest[..key_len]).map_err(|_| DecodeError("key is not UTF-8"))?;
        let value =
            std::str::from_utf8(&rest[key_len..]).map_err(|_| DecodeError("value is not UTF-8"))?;
        let (key, value) = (key.to_owned(), value.to_owned());
        let op = match data[0] {
            TAG_GET => KvOp::Get { key },
            TAG_PUT => KvOp::Put { key, value },
            TAG_APPEND => KvOp::Append { key, value },
            _ => return Err(DecodeError("unknown operation tag")),
        };
        Ok(Command { client, op_id, op })
    }
}

/// An in-memory key-value map, replicated by applying commands in log order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<String, String>,
}

impl KvStore {
    /// Applies one operation and returns what the client sees: the value for a read, the
    /// empty string for a write.
    pub fn execute(&mut self, op: &KvOp) -> String {
        match op {
            KvOp::Get { key } => self.map.get(key).cloned().unwrap_or_default(),
            KvOp::Put { key, value } => {
                self.map.insert(key.clone(), value.clone());
                String::new()
            }
            KvOp::Append { key, value } => {
                self.map.entry(key.clone()).or_default().push_str(value);
                String::new()
            }
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl StateMachine for KvStore {
    /// The decoded command and what executing it returned; `None` for no-ops and for entries
    /// that do not decode (which are skipped, identically on every replica).
    type Output = Option<(Command, String)>;

    fn apply(&mut self, entry: &Entry) -> Self::Output {
        if entry.kind != EntryKind::Normal {
            return None;
        }
        let command = Command::decode(&entry.data).ok()?;
        let out = self.execute(&command.op);
        Some((command, out))
    }

    /// The map as `count u64`, then per key in order `key_len u32, key, value_len u32, value`
    /// (little endian): the same map always gives the same bytes.
    fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&(self.map.len() as u64).to_le_bytes())?;
        for (key, value) in &self.map {
            for field in [key, value] {
                let len = u32::try_from(field.len()).map_err(std::io::Error::other)?;
                out.write_all(&len.to_le_bytes())?;
                out.write_all(field.as_bytes())?;
            }
        }
        Ok(())
    }

    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let mut word = [0u8; 8];
        input.read_exact(&mut word)?;
        let count = u64::from_le_bytes(word);
        let mut map = BTreeMap::new();
        for _ in 0..count {
            let mut pair = [String::new(), String::new()];
            for field in &mut pair {
                let mut len = [0u8; 4];
                input.read_exact(&mut len)?;
                let mut bytes = Vec::new();
                let len = u64::from(u32::from_le_bytes(len));
                // `take` bounds the read by what is really there, never by the claimed length.
                let read = (&mut *input).take(len).read_to_end(&mut bytes)?;
                if read as u64 != len {
                    return Err(invalid("snapshot ends inside a field"));
                }
                *field = String::from_utf8(bytes).map_err(|_| invalid("field is not UTF-8"))?;
            }
            let [key, value] = pair;
            map.insert(key, value);
        }
        let mut rest = [0u8; 1];
        if input.read(&mut rest)? != 0 {
            return Err(invalid("trailing bytes after the last key"));
        }
        self.map = map;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        for op in [
            KvOp::Get { key: "k".into() },
            KvOp::Put { key: "key".into(), value: "v1".into() },
            KvOp::Append { key: "".into(), value: "tail".into() },
        ] {
            let c = Command { client: 7, op_id: 99, op };
            assert_eq!(Command::decode(&c.encode()), Ok(c));
        }
    }

    #[test]
    fn malformed_commands_are_errors() {
        assert!(Command::decode(b"").is_err());
        let mut bad =
            Command { client: 1, op_id: 1, op: KvOp::Get { key: "abc".into() } }.encode().to_vec();
        bad[0] = 42;
        assert!(Command::decode(&bad).is_err());
        bad[0] = TAG_GET;
        bad.truncate(HEADER + 1);
        assert!(Command::decode(&bad).is_err());
    }

    #[test]
    fn snapshot_round_trips_and_rejects_garbage() {
        let mut kv = KvStore::default();
        kv.execute(&KvOp::Put { key: "a".into(), value: "1".into() });
        kv.execute(&KvOp::Put { key: "b".into(), value: "".into() });
        let mut bytes = Vec::new();
        kv.snapshot(&mut bytes).unwrap();
        let mut back = KvStore::default();
        back.restore(&mut &bytes[..]).unwrap();
        assert_eq!(back, kv);
        for cut in 0..bytes.len() {
            let mut partial = KvStore::default();
            assert!(partial.restore(&mut &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = 1u64.to_le_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(KvStore::default().restore(&mut &huge[..]).is_err());
    }

    #[test]
    fn kv_semantics() {
        let mut kv = KvStore::default();
        assert_eq!(kv.execute(&KvOp::Get { key: "a".into() }), "");
        kv.execute(&KvOp::Append { key: "a".into(), value: "x".into() });
        kv.execute(&KvOp::Append { key: "a".into(), value: "y".into() });
        assert_eq!(kv.execute(&KvOp::Get { key: "a".into() }), "xy");
        kv.execute(&KvOp::Put { key: "a".into(), value: "z".into() });
        assert_eq!(kv.get("a"), Some("z"));
    }
}
