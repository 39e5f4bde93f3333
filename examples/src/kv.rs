//! The replicated key-value state machine and the encoding of its commands in log entries.
//!
//! Writes (SET, DEL, INCR) are log entries; reads run on the state machine through the node's
//! read barrier. An entry is `tag u8` followed by length-prefixed (u32, little endian)
//! arguments.

use std::collections::HashMap;
use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};
use raft_core::{Entry, EntryKind, StateMachine};

/// A write command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvWrite {
    /// Set `key` to `value`.
    Set {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Delete keys; answers how many existed.
    Del {
        /// The keys.
        keys: Vec<Vec<u8>>,
    },
    /// Add `by` to the integer at `key` (0 if absent); answers the new value.
    IncrBy {
        /// The key.
        key: Vec<u8>,
        /// The increment.
        by: i64,
    },
}

const TAG_SET: u8 = 1;
const TAG_DEL: u8 = 2;
const TAG_INCRBY: u8 = 3;

impl KvWrite {
    /// The command as a log entry's data.
    pub fn encode(&self) -> Bytes {
        let (tag, args): (u8, Vec<&[u8]>) = match self {
            KvWrite::Set { key, value } => (TAG_SET, vec![key, value]),
            KvWrite::Del { keys } => (TAG_DEL, keys.iter().map(Vec::as_slice).collect()),
            KvWrite::IncrBy { key, .. } => (TAG_INCRBY, vec![key]),
        };
        let by = match self {
            KvWrite::IncrBy { by, .. } => Some(*by),
            _ => None,
        };
        let size = 1 + 8 + args.iter().map(|a| 4 + a.len()).sum::<usize>();
        let mut buf = BytesMut::with_capacity(size);
        buf.put_u8(tag);
        if let Some(by) = by {
            buf.put_i64_le(by);
        }
        for arg in args {
            buf.put_u32_le(arg.len() as u32);
            buf.put_slice(arg);
        }
        buf.freeze()
    }

    /// Decodes a log entry's data; `None` if it is not a command of this machine.
    pub fn decode(data: &[u8]) -> Option<KvWrite> {
        let (&tag, mut rest) = data.split_first()?;
        let by = if tag == TAG_INCRBY {
            let (b, r) = rest.split_at_checked(8)?;
            rest = r;
            Some(i64::from_le_bytes(b.try_into().ok()?))
        } else {
            None
        };
        let mut args = Vec::new();
        while !rest.is_empty() {
            let (len, r) = rest.split_at_checked(4)?;
            let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
            let (arg, r) = r.split_at_checked(len)?;
            args.push(arg.to_vec());
            rest = r;
        }
        match (tag, by) {
            (TAG_SET, None) if args.len() == 2 => {
                let value = args.pop()?;
                let key = args.pop()?;
                Some(KvWrite::Set { key, value })
            }
            (TAG_DEL, None) if !args.is_empty() => Some(KvWrite::Del { keys: args }),
            (TAG_INCRBY, Some(by)) if args.len() == 1 => {
                Some(KvWrite::IncrBy { key: args.pop()?, by })
            }
            _ => None,
        }
    }
}

/// What applying a write returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Done (`+OK`).
    Ok,
    /// A number (`:n`).
    Integer(i64),
    /// The command could not be carried out (`-ERR ...`); nothing changed.
    Error(String),
}

/// The key-value map.
#[derive(Debug, Default)]
pub struct KvMachine {
    map: HashMap<Vec<u8>, Vec<u8>>,
}

impl KvMachine {
    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// How many keys exist.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn execute(&mut self, write: KvWrite) -> Output {
        match write {
            KvWrite::Set { key, value } => {
                self.map.insert(key, value);
                Output::Ok
            }
            KvWrite::Del { keys } => {
                Output::Integer(keys.iter().filter(|k| self.map.remove(*k).is_some()).count() as i64)
            }
            KvWrite::IncrBy { key, by } => {
                let current = match self.map.get(&key) {
                    None => 0,
                    Some(v) => {
                        match std::str::from_utf8(v).ok().and_then(|s| s.parse::<i64>().ok()) {
                            Some(n) => n,
                            None => {
                                return Output::Error(
                                    "ERR value is not an integer or out of range".into(),
                                )
                            }
                        }
                    }
                };
                match current.checked_add(by) {
                    Some(n) => {
                        self.map.insert(key, n.to_string().into_bytes());
                        Output::Integer(n)
                    }
                    None => Output::Error("ERR increment or decrement would overflow".into()),
                }
            }
        }
    }
}

impl StateMachine for KvMachine {
    type Output = Output;

    fn apply(&mut self, entry: &Entry) -> Output {
        if entry.kind != EntryKind::Normal {
            return Output::Ok;
        }
        match KvWrite::decode(&entry.data) {
            Some(write) => self.execute(write),
            // Every replica skips the same undecodable entry the same way.
            None => Output::Error("ERR undecodable command".into()),
        }
    }

    /// `count u64`, then per key in sorted order `len u32, key, len u32, value`: the same map
    /// always gives the same bytes.
    fn snapshot(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut keys: Vec<&Vec<u8>> = self.map.keys().collect();
        keys.sort_unstable();
        let mut buf = Vec::with_capacity(64 << 10);
        buf.extend_from_slice(&(keys.len() as u64).to_le_bytes());
        for key in keys {
            let value = &self.map[key];
            for field in [key, value] {
                buf.extend_from_slice(&(field.len() as u32).to_le_bytes());
                buf.extend_from_slice(field);
            }
            if buf.len() >= 64 << 10 {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        out.write_all(&buf)
    }

    fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        let mut input = std::io::BufReader::with_capacity(64 << 10, input);
        let mut word = [0u8; 8];
        input.read_exact(&mut word)?;
        let count = u64::from_le_bytes(word);
        let mut map = HashMap::new();
        let field = |input: &mut std::io::BufReader<&mut dyn Read>| -> std::io::Result<Vec<u8>> {
            let mut len = [0u8; 4];
            input.read_exact(&mut len)?;
            let len = u32::from_le_bytes(len) as u64;
            let mut data = Vec::new();
            input.by_ref().take(len).read_to_end(&mut data)?;
            if data.len() as u64 != len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "snapshot ends inside a field",
                ));
            }
            Ok(data)
        };
        for _ in 0..count {
            let key = field(&mut input)?;
            let value = field(&mut input)?;
            map.insert(key, value);
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
        for w in [
            KvWrite::Set { key: b"k".to_vec(), value: b"".to_vec() },
            KvWrite::Del { keys: vec![b"a".to_vec(), b"b".to_vec()] },
            KvWrite::IncrBy { key: b"n".to_vec(), by: -3 },
        ] {
            assert_eq!(KvWrite::decode(&w.encode()), Some(w));
        }
        assert_eq!(KvWrite::decode(b""), None);
        assert_eq!(KvWrite::decode(&[TAG_SET, 9, 0, 0, 0, b'x']), None);
    }

    #[test]
    fn snapshot_restores_the_same_map() {
        let mut kv = KvMachine::default();
        for i in 0..1000 {
            kv.execute(KvWrite::Set {
                key: format!("k{i}").into_bytes(),
                value: vec![i as u8; i % 50],
            });
        }
        assert_eq!(kv.execute(KvWrite::IncrBy { key: b"n".to_vec(), by: 5 }), Output::Integer(5));
        assert!(matches!(
            kv.execute(KvWrite::IncrBy { key: b"k3".to_vec(), by: 1 }),
            Output::Error(_)
        ));
        let mut bytes = Vec::new();
        kv.snapshot(&mut bytes).expect("snapshot");
        let mut again = Vec::new();
        kv.snapshot(&mut again).expect("snapshot");
        assert_eq!(bytes, again, "deterministic");
        let mut restored = KvMachine::default();
        restored.restore(&mut &bytes[..]).expect("restore");
        assert_eq!(restored.map, kv.map);
        assert!(KvMachine::default().restore(&mut &bytes[..bytes.len() - 1]).is_err());
    }
}
