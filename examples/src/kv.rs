//! The replicated key-value state machine and the encoding of its commands in log entries.
//!
//! Writes (SET, DEL, INCR) are log entries; reads run on the state machine through the node's
//! read barrier. An entry is `tag u8` followed by length-prefixed (u32, little endian)
//! arguments.

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use raft_core::{Entry, EntryKind, SnapshotView, StateMachine};

/// One shard of the map: keys and values share the bytes of the log entries that wrote them (no
/// copy when applying). hashbrown's default hasher is fast and seeded per process, which
/// matters for a map whose keys clients choose.
type Map = hashbrown::HashMap<Bytes, Bytes>;

/// Shards of the map. A snapshot view shares every shard; the first write to a shard after a
/// view copies that shard alone (its table, not its data), so taking a view costs microseconds
/// and the copying is spread over later writes, a 256th of the map at a time.
const SHARDS: usize = 256;

/// The part (of `parts`) a key lives in: the same on every replica (unlike the maps' seeded
/// hasher), so that snapshots, written part by part, are the same bytes everywhere.
fn shard_of(key: &[u8], parts: usize) -> usize {
    // FNV-1a: cheap, deterministic, and spreads keys well enough for picking a shard.
    let mut h: u32 = 0x811c_9dc5;
    for &b in key {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (h as usize) % parts
}

/// A write command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvWrite {
    /// Set `key` to `value`.
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Delete keys; answers how many existed.
    Del {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// Add `by` to the integer at `key` (0 if absent); answers the new value.
    IncrBy {
        /// The key.
        key: Bytes,
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
        let (tag, args): (u8, Vec<&Bytes>) = match self {
            KvWrite::Set { key, value } => (TAG_SET, vec![key, value]),
            KvWrite::Del { keys } => (TAG_DEL, keys.iter().collect()),
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

    /// Decodes a log entry's data; `None` if it is not a command of this machine. The keys and
    /// values are slices of `data` (no copy).
    pub fn decode(data: &Bytes) -> Option<KvWrite> {
        let (&tag, _) = data.split_first()?;
        let mut at = 1;
        let by = if tag == TAG_INCRBY {
            let b = data.get(at..at + 8)?;
            at += 8;
            Some(i64::from_le_bytes(b.try_into().ok()?))
        } else {
            None
        };
        let mut args = Vec::new();
        while at < data.len() {
            let len = data.get(at..at + 4)?;
            let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
            let start = at + 4;
            let end = start.checked_add(len).filter(|&e| e <= data.len())?;
            args.push(data.slice(start..end));
            at = end;
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvMachine {
    shards: Vec<Arc<Map>>,
    len: usize,
}

impl Default for KvMachine {
    fn default() -> KvMachine {
        KvMachine::with_parts(SHARDS)
    }
}

impl KvMachine {
    /// An empty map in `parts` parts (1 to 256; 256 by default). While a snapshot is written the
    /// map is copied on write part by part, so a large map wants many parts; a process hosting
    /// thousands of small maps wants few, since every part costs memory even when empty.
    pub fn with_parts(parts: usize) -> KvMachine {
        let parts = parts.clamp(1, SHARDS);
        KvMachine { shards: (0..parts).map(|_| Arc::new(Map::new())).collect(), len: 0 }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.shards[shard_of(key, self.shards.len())].get(key).map(|v| &v[..])
    }

    /// How many keys exist.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn insert(&mut self, key: Bytes, value: Bytes) {
        let part = shard_of(&key, self.shards.len());
        let shard = Arc::make_mut(&mut self.shards[part]);
        if shard.insert(key, value).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        let part = shard_of(key, self.shards.len());
        let shard = &mut self.shards[part];
        if !shard.contains_key(key) {
            return false; // Leaves a shard a view shares alone.
        }
        Arc::make_mut(shard).remove(key);
        self.len -= 1;
        true
    }

    fn execute(&mut self, write: KvWrite) -> Output {
        match write {
            KvWrite::Set { key, value } => {
                self.insert(key, value);
                Output::Ok
            }
            KvWrite::Del { keys } => {
                Output::Integer(keys.iter().filter(|k| self.remove(k)).count() as i64)
            }
            KvWrite::IncrBy { key, by } => {
                let current = match self.get(&key) {
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
                        self.insert(key, Bytes::from(n.to_string()));
                        Output::Integer(n)
                    }
                    None => Output::Error("ERR increment or decrement would overflow".into()),
                }
            }
        }
    }
}

/// Writes the map as a snapshot: `count u64`, then shard by shard, per key in sorted order,
/// `len u32, key, len u32, value`, so the same map always gives the same bytes.
fn write_snapshot(shards: &[Arc<Map>], len: usize, out: &mut dyn Write) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(64 << 10);
    buf.extend_from_slice(&(len as u64).to_le_bytes());
    let mut keys: Vec<&Bytes> = Vec::new();
    for shard in shards {
        keys.clear();
        keys.extend(shard.keys());
        keys.sort_unstable();
        for &key in &keys {
            let value = &shard[key];
            for field in [key, value] {
                buf.extend_from_slice(&(field.len() as u32).to_le_bytes());
                buf.extend_from_slice(field);
            }
            if buf.len() >= 64 << 10 {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
    }
    out.write_all(&buf)
}

/// The map's shards as they were: shared with the machine until it writes to them.
struct MapView {
    shards: Vec<Arc<Map>>,
    len: usize,
}

impl SnapshotView for MapView {
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> std::io::Result<()> {
        write_snapshot(&self.shards, self.len, out)
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

    /// `count u64`, then shard by shard (a key's shard is a fixed hash of it), per key in
    /// sorted order, `len u32, key, len u32, value`: the same map always gives the same bytes.
    fn snapshot(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        write_snapshot(&self.shards, self.len, out)
    }

    fn snapshot_view(&mut self) -> Option<Box<dyn SnapshotView>> {
        Some(Box::new(MapView { shards: self.shards.clone(), len: self.len }))
    }

    fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        let mut input = std::io::BufReader::with_capacity(64 << 10, input);
        let mut word = [0u8; 8];
        input.read_exact(&mut word)?;
        let count = u64::from_le_bytes(word);
        let mut restored = KvMachine::with_parts(self.shards.len());
        let field = |input: &mut std::io::BufReader<&mut dyn Read>| -> std::io::Result<Bytes> {
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
            Ok(Bytes::from(data))
        };
        for _ in 0..count {
            let key = field(&mut input)?;
            let value = field(&mut input)?;
            restored.insert(key, value);
        }
        // A snapshot with bytes after its last key is not one this machine wrote: refuse it
        // rather than restore a state that may be missing what the extra bytes held.
        if input.read(&mut [0u8; 1])? != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "trailing bytes after the snapshot's last key",
            ));
        }
        *self = restored;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    #[test]
    fn commands_round_trip() {
        for w in [
            KvWrite::Set { key: b(b"k"), value: b(b"") },
            KvWrite::Del { keys: vec![b(b"a"), b(b"b")] },
            KvWrite::IncrBy { key: b(b"n"), by: -3 },
        ] {
            assert_eq!(KvWrite::decode(&w.encode()), Some(w));
        }
        assert_eq!(KvWrite::decode(&b(b"")), None);
        assert_eq!(KvWrite::decode(&b(&[TAG_SET, 9, 0, 0, 0, b'x'])), None);
        // A length that runs past the end, even one that would overflow.
        assert_eq!(KvWrite::decode(&b(&[TAG_SET, 0xff, 0xff, 0xff, 0xff])), None);
        assert_eq!(KvWrite::decode(&b(&[TAG_INCRBY, 1, 2, 3])), None);
    }

    #[test]
    fn snapshot_restores_the_same_map() {
        let mut kv = KvMachine::default();
        for i in 0..1000 {
            kv.execute(KvWrite::Set {
                key: Bytes::from(format!("k{i}")),
                value: Bytes::from(vec![i as u8; i % 50]),
            });
        }
        assert_eq!(kv.execute(KvWrite::IncrBy { key: b(b"n"), by: 5 }), Output::Integer(5));
        assert!(matches!(kv.execute(KvWrite::IncrBy { key: b(b"k3"), by: 1 }), Output::Error(_)));
        let mut bytes = Vec::new();
        kv.snapshot(&mut bytes).expect("snapshot");
        let mut again = Vec::new();
        kv.snapshot(&mut again).expect("snapshot");
        assert_eq!(bytes, again, "deterministic");
        let mut restored = KvMachine::default();
        restored.restore(&mut &bytes[..]).expect("restore");
        assert_eq!(restored, kv);
        assert!(KvMachine::default().restore(&mut &bytes[..bytes.len() - 1]).is_err());
        // A view taken now writes the same bytes later, whatever is applied in between.
        let view = kv.snapshot_view().expect("the map offers a view");
        kv.execute(KvWrite::Set { key: b(b"k1"), value: b(b"changed") });
        kv.execute(KvWrite::Del { keys: vec![b(b"k2")] });
        let mut from_view = Vec::new();
        view.write_to(&mut from_view).expect("write the view");
        assert_eq!(from_view, bytes, "the view is frozen");
        let mut now = Vec::new();
        kv.snapshot(&mut now).expect("snapshot");
        assert_ne!(now, bytes, "the machine moved on");
    }

    #[test]
    fn a_view_shares_every_shard_until_it_is_written() {
        let mut kv = KvMachine::default();
        for i in 0..5000 {
            kv.execute(KvWrite::Set { key: Bytes::from(format!("k{i}")), value: b(b"v") });
        }
        let view = MapView { shards: kv.shards.clone(), len: kv.len };
        kv.execute(KvWrite::Set { key: b(b"k1"), value: b(b"new") });
        kv.execute(KvWrite::Del { keys: vec![b(b"absent")] });
        let copied: Vec<usize> =
            (0..SHARDS).filter(|&i| !Arc::ptr_eq(&kv.shards[i], &view.shards[i])).collect();
        assert_eq!(copied, vec![shard_of(b"k1", SHARDS)], "only the shard written to was copied");
    }

    #[test]
    fn the_same_state_snapshots_to_the_same_bytes_whatever_the_order_of_writes() {
        let keys: Vec<String> = (0..3000).map(|i| format!("key-{}", i * 7919 % 3001)).collect();
        let (mut a, mut b2) = (KvMachine::default(), KvMachine::default());
        for k in &keys {
            a.execute(KvWrite::Set { key: Bytes::from(k.clone()), value: Bytes::from(k.clone()) });
        }
        for k in keys.iter().rev() {
            b2.execute(KvWrite::Set { key: Bytes::from(k.clone()), value: Bytes::from(k.clone()) });
        }
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.snapshot(&mut x).expect("snapshot");
        b2.snapshot(&mut y).expect("snapshot");
        assert!(x == y, "replicas with the same state write the same snapshot");
        assert_eq!(a.len(), 3000);
    }
}
