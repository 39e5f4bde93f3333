//! A [`LogStore`] over tikv's raft-engine (the log engine TiKV runs), so a node can keep its log
//! in a store we did not design, chosen with `kv-server --log-store raft-engine`.
//!
//! How our contract maps onto raft-engine's:
//!
//! - **Entries** are raft-engine entries (`eraftpb::Entry`) of region `group`: term, index, the
//!   payload as `data`, and our entry kind in `context` (empty: a command, `n`: a no-op, `c`: a
//!   membership change). Appending at or below the last index replaces the suffix, as raft-engine
//!   does; we check first that the append leaves no hole and does not reach into the compacted
//!   prefix (raft-engine panics on either).
//! - **Hard state** and the **compaction boundary** `(index, term)` are key-values of the region,
//!   written in the same batch as the entries, so they are exactly as durable.
//! - **Durability**: writes go to raft-engine without a sync (readable at once); `sync(lsn)`
//!   notes how many writes had completed, writes a one-key marker with `sync` (an `fdatasync`,
//!   which raft-engine's write groups share between concurrent callers; its own `Engine::sync`
//!   writes an empty batch, which 0.4 skips without syncing), and only then reports that many
//!   durable. A write that completes while a sync runs is not claimed by it.
//! - A batch of several writes of one group (a node writes several Readies at once) is merged
//!   per group and checked as one append.
//! - **Compaction** through `(through, term)` keeps the entries after it if the log holds it, and
//!   otherwise drops the whole log (a snapshot replaced it), as [`LogStore::compact`] asks; old
//!   files are purged by raft-engine's purge (run after each compaction).
//!
//! What the trait asks that raft-engine does differently: raft-engine panics, by design, if an
//! `fdatasync` fails (TiKV restarts the process); our own WAL poisons itself and returns an error
//! instead. Under this store a failed sync therefore ends the process.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use raft_core::storage::validate_append;
use raft_core::{
    Entry, EntryKind, GroupId, HardState, Index, LogState, LogStore, LogWrite, Lsn, StorageError,
    Term,
};
use raft_engine::{Engine, LogBatch, MessageExt};
use raft_proto::eraftpb;

/// The key of a group's hard state.
const HARD_STATE_KEY: &[u8] = b"raftkit-hard-state";
/// The key of a group's compaction boundary `(index, term)`.
const BASE_KEY: &[u8] = b"raftkit-base";
/// The region and key of the marker a sync writes; no group of this store may have this id.
const SYNC_REGION: u64 = u64::MAX;
const SYNC_KEY: &[u8] = b"raftkit-sync";

struct EntryCodec;

impl MessageExt for EntryCodec {
    type Entry = eraftpb::Entry;

    fn index(e: &eraftpb::Entry) -> u64 {
        e.index
    }
}

fn to_engine(e: &Entry) -> eraftpb::Entry {
    let context: &'static [u8] = match e.kind {
        EntryKind::Noop => b"n",
        EntryKind::Config => b"c",
        _ => b"",
    };
    eraftpb::Entry {
        term: e.term,
        index: e.index,
        data: e.data.clone(),
        context: Bytes::from_static(context),
        ..Default::default()
    }
}

fn from_engine(e: eraftpb::Entry) -> Result<Entry, StorageError> {
    let kind = match &e.context[..] {
        b"" => EntryKind::Normal,
        b"n" => EntryKind::Noop,
        b"c" => EntryKind::Config,
        other => {
            return Err(StorageError::Corrupt(format!(
                "raft-engine entry {} has an unknown kind marker {other:?}",
                e.index
            )))
        }
    };
    Ok(Entry { term: e.term, index: e.index, kind, data: e.data })
}

fn engine_error(err: raft_engine::Error) -> StorageError {
    StorageError::Other(Box::new(err))
}

fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    let mut v = Vec::with_capacity(25);
    v.extend_from_slice(&hs.term.to_le_bytes());
    v.extend_from_slice(&hs.vote.unwrap_or(0).to_le_bytes());
    v.push(u8::from(hs.vote.is_some()));
    v.extend_from_slice(&hs.commit.to_le_bytes());
    v
}

fn decode_hard_state(b: &[u8]) -> Result<HardState, StorageError> {
    if b.len() != 25 {
        return Err(StorageError::Corrupt(format!("hard state of {} bytes", b.len())));
    }
    let u = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let vote = match b[16] {
        0 => None,
        1 => Some(u(8)),
        other => return Err(StorageError::Corrupt(format!("hard state vote flag {other}"))),
    };
    Ok(HardState { term: u(0), vote, commit: u(17) })
}

fn encode_base(index: Index, term: Term) -> Vec<u8> {
    let mut v = index.to_le_bytes().to_vec();
    v.extend_from_slice(&term.to_le_bytes());
    v
}

/// A log store over raft-engine, for many groups.
pub struct EngineStore {
    engine: Engine,
    /// Writes completed so far (each one's position).
    written: AtomicU64,
    /// The highest position known durable.
    durable: AtomicU64,
    /// Serialises a group's read-check-write in `write` and `compact` (appends are validated
    /// against the log's current end).
    groups: Mutex<()>,
    /// Whether `sync` calls `fdatasync`; without, writes count as durable at once (like raft-wal's
    /// `Durability::Never`: a power loss may lose acknowledged writes).
    syncs: bool,
}

impl std::fmt::Debug for EngineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineStore").field("dir", &self.engine.path()).finish()
    }
}

impl EngineStore {
    /// Opens (or creates) the store in `dir`, recovering what raft-engine finds there; every
    /// `sync` is an `fdatasync`.
    pub fn open(dir: &Path) -> Result<EngineStore, StorageError> {
        EngineStore::open_with(dir, true)
    }

    /// [`open`](EngineStore::open), choosing whether `sync` really syncs.
    pub fn open_with(dir: &Path, syncs: bool) -> Result<EngineStore, StorageError> {
        std::fs::create_dir_all(dir)?;
        let config = raft_engine::Config {
            dir: dir.to_string_lossy().into_owned(),
            // Payloads are compressed by nobody else either; keep the comparison fair.
            batch_compression_threshold: raft_engine::ReadableSize(0),
            ..raft_engine::Config::default()
        };
        // raft-engine releases its directory lock when the last of its threads lets go of it,
        // which can be a moment after the previous `Engine` of this directory was dropped (in
        // this process: a reopen). Wait a little for it rather than fail.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let engine = loop {
            match Engine::open(config.clone()) {
                Ok(engine) => break engine,
                Err(err)
                    if err.to_string().contains("Failed to lock file")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(err) => return Err(engine_error(err)),
            }
        };
        Ok(EngineStore {
            engine,
            written: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            groups: Mutex::new(()),
            syncs,
        })
    }

    /// The compaction boundary of `group`: `(index, term)` (0, 0 if never compacted).
    fn base(&self, group: GroupId) -> Result<(Index, Term), StorageError> {
        match self.engine.get(group, BASE_KEY) {
            None => Ok((0, 0)),
            Some(b) if b.len() == 16 => {
                let u =
                    |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
                Ok((u(0), u(8)))
            }
            Some(b) => {
                Err(StorageError::Corrupt(format!("compaction boundary of {} bytes", b.len())))
            }
        }
    }

    /// The last index of `group`'s log (its base if it holds no entry).
    fn last_index(&self, group: GroupId, base: Index) -> Index {
        self.engine.last_index(group).unwrap_or(base).max(base)
    }

    fn entry(&self, group: GroupId, index: Index) -> Result<Option<eraftpb::Entry>, StorageError> {
        self.engine.get_entry::<EntryCodec>(group, index).map_err(engine_error)
    }

    /// Writes `batch` without a sync and returns its position.
    fn commit_batch(&self, batch: &mut LogBatch) -> Result<Lsn, StorageError> {
        self.engine.write(batch, false).map_err(engine_error)?;
        Ok(Lsn(self.written.fetch_add(1, Ordering::AcqRel) + 1))
    }
}

impl LogStore for EngineStore {
    fn write(&self, batch: &[LogWrite<'_>]) -> Result<Lsn, StorageError> {
        let _checks = self.groups.lock();
        // A batch may hold several writes of one group (a node writes several Readies at once),
        // each continuing or replacing the one before: merge them per group first, so each
        // group's entries are checked against the store once, as one append.
        let mut merged: Vec<(GroupId, Vec<Entry>, Option<HardState>)> = Vec::new();
        for w in batch {
            if w.group == SYNC_REGION {
                return Err(StorageError::InvalidEntries {
                    group: w.group,
                    reason: "group id u64::MAX is reserved by the raft-engine store".into(),
                });
            }
            let at = match merged.iter().position(|(g, _, _)| *g == w.group) {
                Some(at) => at,
                None => {
                    merged.push((w.group, Vec::new(), None));
                    merged.len() - 1
                }
            };
            let (_, entries, hard_state) = &mut merged[at];
            if let Some(first) = w.entries.first() {
                // Entries at or after `first` are replaced (the same rule as the store's).
                entries.retain(|e| e.index < first.index);
                entries.extend_from_slice(w.entries);
            }
            if w.hard_state.is_some() {
                *hard_state = w.hard_state;
            }
        }
        let mut engine_batch = LogBatch::default();
        for (group, entries, hard_state) in &merged {
            if !entries.is_empty() {
                let (base_index, base_term) = self.base(*group)?;
                let last = self.last_index(*group, base_index);
                validate_append(*group, entries, base_index, last, |i| {
                    if i == base_index {
                        Some(base_term)
                    } else {
                        self.entry(*group, i).ok().flatten().map(|e| e.term)
                    }
                })?;
                let converted: Vec<eraftpb::Entry> = entries.iter().map(to_engine).collect();
                engine_batch.add_entries::<EntryCodec>(*group, &converted).map_err(engine_error)?;
            }
            if let Some(hs) = hard_state {
                engine_batch
                    .put(*group, HARD_STATE_KEY.to_vec(), encode_hard_state(hs))
                    .map_err(engine_error)?;
            }
        }
        self.commit_batch(&mut engine_batch)
    }

    fn sync(&self, lsn: Lsn) -> Result<(), StorageError> {
        if self.durable.load(Ordering::Acquire) >= lsn.0 {
            return Ok(());
        }
        // Every write counted here completed before the sync starts, so the sync covers it.
        let covered = self.written.load(Ordering::Acquire);
        if self.syncs {
            // `Engine::sync` writes an empty batch, which raft-engine 0.4 returns from without
            // syncing anything; a one-key batch written with `sync` makes it fdatasync.
            let mut marker = LogBatch::default();
            marker
                .put(SYNC_REGION, SYNC_KEY.to_vec(), covered.to_le_bytes().to_vec())
                .map_err(engine_error)?;
            self.engine.write(&mut marker, true).map_err(engine_error)?;
        }
        self.durable.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }

    fn durable_lsn(&self) -> Lsn {
        Lsn(self.durable.load(Ordering::Acquire))
    }

    fn compact(&self, group: GroupId, through: Index, term: Term) -> Result<Lsn, StorageError> {
        let _checks = self.groups.lock();
        let (base_index, _) = self.base(group)?;
        if through <= base_index {
            return Ok(Lsn(self.written.load(Ordering::Acquire)));
        }
        let last = self.last_index(group, base_index);
        let holds = through <= last && self.entry(group, through)?.is_some_and(|e| e.term == term);
        let mut batch = LogBatch::default();
        // Keep the entries after `through` only if they extend the same log.
        let compact_before = if holds { through + 1 } else { last.max(through) + 1 };
        batch.add_command(group, raft_engine::Command::Compact { index: compact_before });
        batch.put(group, BASE_KEY.to_vec(), encode_base(through, term)).map_err(engine_error)?;
        let lsn = self.commit_batch(&mut batch)?;
        // Files whose entries were all compacted away can go.
        self.engine.purge_expired_files().map_err(engine_error)?;
        Ok(lsn)
    }

    fn entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let (base_index, _) = self.base(group)?;
        if lo <= base_index {
            return Err(StorageError::Compacted { group, index: lo, first: base_index + 1 });
        }
        let last = self.last_index(group, base_index);
        if hi > last || lo > hi {
            return Err(StorageError::Unavailable { group, index: hi.max(lo), last });
        }
        // The byte limit is ours (`Entry::size_bytes`), not raft-engine's own measure: read
        // in runs and stop where our count says.
        const RUN: u64 = 256;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut next = lo;
        let mut run = Vec::new();
        while next <= hi {
            let end = hi.min(next + RUN - 1);
            run.clear();
            self.engine
                .fetch_entries_to::<EntryCodec>(group, next, end + 1, None, &mut run)
                .map_err(engine_error)?;
            if run.len() as u64 != end + 1 - next {
                return Err(StorageError::Corrupt(format!(
                    "group {group}: raft-engine returned {} entries for {next}..={end}",
                    run.len()
                )));
            }
            for e in run.drain(..) {
                let entry = from_engine(e)?;
                let size = entry.size_bytes();
                if bytes + size > max_bytes && !out.is_empty() {
                    return Ok(out);
                }
                bytes += size;
                out.push(entry);
            }
            next = end + 1;
        }
        Ok(out)
    }

    fn term(&self, group: GroupId, index: Index) -> Result<Term, StorageError> {
        let (base_index, base_term) = self.base(group)?;
        if index == base_index {
            return Ok(base_term);
        }
        if index < base_index {
            return Err(StorageError::Compacted { group, index, first: base_index + 1 });
        }
        match self.entry(group, index)? {
            Some(e) => Ok(e.term),
            None => Err(StorageError::Unavailable {
                group,
                index,
                last: self.last_index(group, base_index),
            }),
        }
    }

    fn log_state(&self, group: GroupId) -> Result<LogState, StorageError> {
        let (base_index, base_term) = self.base(group)?;
        let hard_state = match self.engine.get(group, HARD_STATE_KEY) {
            Some(b) => decode_hard_state(&b)?,
            None => HardState::default(),
        };
        Ok(LogState {
            hard_state,
            first_index: base_index + 1,
            last_index: self.last_index(group, base_index),
            base_term,
        })
    }

    fn groups(&self) -> Result<Vec<GroupId>, StorageError> {
        let mut groups = self.engine.raft_groups();
        groups.retain(|&g| g != SYNC_REGION);
        groups.sort_unstable();
        Ok(groups)
    }
}
