//! A small key-value state machine, its operation encoding, its sequential model and the
//! workload the chaos scenario runs on it.

use std::collections::BTreeMap;
use std::io::Read;

use bytes::{BufMut, Bytes, BytesMut};

use super::linearizability::{Model, Operation};
use super::workload::Workload;
use crate::rng::Rng;
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

/// An operation that could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed KV operation: {0}")]
pub struct DecodeError(&'static str);

// Layout, little endian:
//
// ```text
// +-----+---------+-----------+-------------+
// | tag | key u16 | key bytes | value bytes |
// +-----+---------+-----------+-------------+
//   1B      2B        len          rest
// ```
const TAG_GET: u8 = 1;
const TAG_PUT: u8 = 2;
const TAG_APPEND: u8 = 3;
const HEADER: usize = 1 + 2;

impl KvOp {
    /// Encodes the operation for a log entry.
    pub fn encode(&self) -> Bytes {
        let (tag, key, value) = match self {
            KvOp::Get { key } => (TAG_GET, key, ""),
            KvOp::Put { key, value } => (TAG_PUT, key, value.as_str()),
            KvOp::Append { key, value } => (TAG_APPEND, key, value.as_str()),
        };
        let key_len = u16::try_from(key.len()).unwrap_or(u16::MAX);
        let key = &key.as_bytes()[..key_len as usize];
        let mut buf = BytesMut::with_capacity(HEADER + key.len() + value.len());
        buf.put_u8(tag);
        buf.put_u16_le(key_len);
        buf.put_slice(key);
        buf.put_slice(value.as_bytes());
        buf.freeze()
    }

    /// Decodes an operation, rejecting anything malformed.
    pub fn decode(data: &[u8]) -> Result<KvOp, DecodeError> {
        if data.len() < HEADER {
            return Err(DecodeError("shorter than the header"));
        }
        let key_len = u16::from_le_bytes([data[1], data[2]]) as usize;
        let rest = &data[HEADER..];
        if rest.len() < key_len {
            return Err(DecodeError("key runs past the end"));
        }
        let key =
            std::str::from_utf8(&rest[..key_len]).map_err(|_| DecodeError("key is not UTF-8"))?;
        let value =
            std::str::from_utf8(&rest[key_len..]).map_err(|_| DecodeError("value is not UTF-8"))?;
        let (key, value) = (key.to_owned(), value.to_owned());
        match data[0] {
            TAG_GET => Ok(KvOp::Get { key }),
            TAG_PUT => Ok(KvOp::Put { key, value }),
            TAG_APPEND => Ok(KvOp::Append { key, value }),
            _ => Err(DecodeError("unknown operation tag")),
        }
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
    /// What executing the operation returned; `None` for no-ops and for entries that do not
    /// decode (which are skipped, identically on every replica).
    type Output = Option<String>;

    fn apply(&mut self, entry: &Entry) -> Self::Output {
        if entry.kind != EntryKind::Normal {
            return None;
        }
        let op = KvOp::decode(&entry.data).ok()?;
        Some(self.execute(&op))
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

/// The model of the simulator's key-value store, partitioned by key.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = String;
    type Input = KvOp;
    type Output = String;
    type Partition = String;

    fn init(&self) -> String {
        String::new()
    }

    fn step(&self, state: &String, input: &KvOp, output: &String) -> Option<String> {
        match input {
            KvOp::Get { .. } => (output == state).then(|| state.clone()),
            KvOp::Put { value, .. } => Some(value.clone()),
            KvOp::Append { value, .. } => Some(format!("{state}{value}")),
        }
    }

    fn partition(&self, input: &KvOp) -> String {
        input.key().to_owned()
    }
}

/// Drops writes with unknown outcome whose value no read ever returned, from a key-value
/// history in which every written value is unique and no value contains another.
///
/// Sound: if the remaining history is linearizable, placing the dropped write after every
/// other operation (its return time is unbounded) keeps it so, since nothing reads after it;
/// conversely, in any linearization that includes such a write, no read falls between it and
/// the next put of its key (that read would have returned its value), so removing it changes
/// no read's result. Timed-out writes are what make the search explode (each may take effect
/// at any later point), and most of them are never observed.
pub fn prune_unobserved_unknown_writes(history: &mut Vec<Operation<KvOp, String>>) {
    let reads: Vec<&str> = history
        .iter()
        .filter(|op| matches!(op.input, KvOp::Get { .. }))
        .map(|op| op.output.as_str())
        .collect();
    let observed = |value: &str| reads.iter().any(|r| r.contains(value));
    let keep: Vec<bool> = history
        .iter()
        .map(|op| match &op.input {
            KvOp::Put { value, .. } | KvOp::Append { value, .. } if op.ret == u64::MAX => {
                observed(value)
            }
            _ => true,
        })
        .collect();
    let mut i = 0;
    history.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

/// The key-value workload of the chaos scenario: clients put, append and get values on a few
/// keys, each written value unique (`[client.op]`), checked against [`KvModel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvWorkload {
    /// Keys the operations spread over.
    pub keys: usize,
    /// Percentage of reads; the rest are half puts, half appends.
    pub read_pct: u64,
}

impl Default for KvWorkload {
    fn default() -> KvWorkload {
        KvWorkload { keys: 5, read_pct: 40 }
    }
}

impl Workload for KvWorkload {
    type Machine = KvStore;
    type Op = KvOp;
    type Output = String;
    type Model = KvModel;

    fn name(&self) -> &'static str {
        "kv"
    }

    fn machine(&self) -> KvStore {
        KvStore::default()
    }

    fn model(&self) -> KvModel {
        KvModel
    }

    fn next_op(&self, client: u64, op_id: u64, rng: &mut Rng) -> KvOp {
        let key = format!("k{}", rng.below(self.keys.max(1) as u64));
        let roll = rng.below(100);
        let value = format!("[{client}.{op_id}]");
        if roll < self.read_pct {
            KvOp::Get { key }
        } else if roll.is_multiple_of(2) {
            KvOp::Put { key, value }
        } else {
            KvOp::Append { key, value }
        }
    }

    fn encode(&self, _client: u64, _op_id: u64, op: &KvOp) -> Bytes {
        op.encode()
    }

    fn output(&self, applied: Option<String>) -> String {
        applied.unwrap_or_default()
    }

    fn is_write(&self, op: &KvOp) -> bool {
        op.is_write()
    }

    fn query(&self, machine: &KvStore, op: &KvOp) -> Option<String> {
        match op {
            KvOp::Get { key } => Some(machine.get(key).unwrap_or_default().to_owned()),
            KvOp::Put { .. } | KvOp::Append { .. } => None,
        }
    }

    fn prepare_history(&self, history: &mut Vec<Operation<KvOp, String>>) {
        prune_unobserved_unknown_writes(history);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip() {
        for op in [
            KvOp::Get { key: "k".into() },
            KvOp::Put { key: "key".into(), value: "v1".into() },
            KvOp::Append { key: "".into(), value: "tail".into() },
        ] {
            assert_eq!(KvOp::decode(&op.encode()), Ok(op));
        }
    }

    #[test]
    fn malformed_operations_are_errors() {
        assert!(KvOp::decode(b"").is_err());
        let mut bad = KvOp::Get { key: "abc".into() }.encode().to_vec();
        bad[0] = 42;
        assert!(KvOp::decode(&bad).is_err());
        bad[0] = TAG_GET;
        bad.truncate(HEADER + 1);
        assert!(KvOp::decode(&bad).is_err());
        let mut not_utf8 = KvOp::Put { key: "k".into(), value: "v".into() }.encode().to_vec();
        not_utf8[HEADER] = 0xff;
        assert!(KvOp::decode(&not_utf8).is_err());
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
