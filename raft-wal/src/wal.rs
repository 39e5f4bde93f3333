//! The WAL: one log shared by many Raft groups, implementing [`LogStore`].
//!
//! # The write path
//!
//! 1. Validate every part of the batch against the index (a batch that breaks the log's rules
//!    is refused before anything is written).
//! 2. Reserve space: if the batch does not fit in the active segment, take (or create) enough
//!    prepared segment files first. This is the only step of a write that can fail on I/O (a
//!    full disk), and it fails before any byte is written.
//! 3. Encode each record straight into the active segment's mapping; when a segment fills up:
//!    write its SEAL record, rename a prepared file to the next segment's name, write its header
//!    and a CHECKPOINT of every group's metadata, and continue there.
//! 4. Update the index. The batch is now readable; its position (the last record's `seq`) is
//!    the returned [`Lsn`].
//! 5. Durability (`sync`): one caller at a time leads a sync: it snapshots the written position,
//!    fdatasyncs every segment file with unsynced writes, and fsyncs the directory if a segment
//!    was created since the last sync. Callers that arrive meanwhile wait and are covered by the
//!    next sync (group commit). A failed fdatasync poisons the WAL: it is never retried, because
//!    a retry can report success for pages the kernel already dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use raft_core::{
    validate_append, Entry, EntryKind, GroupId, HardState, Index, LogState, LogStore, LogWrite,
    Lsn, StorageError, Term,
};

use crate::config::{AppendVia, Durability, WalConfig};
use crate::doorbell::Doorbell;
use crate::error::WalError;
use crate::format::{
    self, CheckpointRow, Kind, SegmentHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::index::{GroupIndex, Loc};
use crate::recovery::RecoveryReport;
use crate::segment::{self, Mapping, SegmentFile};
use crate::staging::{self, Staging};

/// Bytes of records a write may leave staged for the next sync to write (see
/// `Shared::maybe_flush_staged`); past this the writer writes them itself.
const STAGED_MAX: usize = 1 << 20;

/// A segment in use.
pub(crate) struct Segment {
    pub(crate) file: SegmentFile,
    /// Entries of any group whose payload is in this segment.
    pub(crate) live: u64,
    /// Every payload checksum in it was verified, or it was written by this process: reads
    /// skip the check.
    pub(crate) verified: bool,
}

/// Everything the write lock protects.
pub(crate) struct State {
    pub(crate) segments: BTreeMap<u64, Segment>,
    /// The segment appended to.
    pub(crate) active: u64,
    /// Where the next record goes in the active segment.
    pub(crate) offset: usize,
    /// The active segment is sealed (found so at open): roll before the next record.
    pub(crate) active_sealed: bool,
    /// The `seq` the next record gets.
    pub(crate) next_seq: u64,
    pub(crate) groups: HashMap<GroupId, GroupIndex>,
    /// Prepared segment files, ready to become segments.
    pub(crate) prepared: VecDeque<PathBuf>,
    pub(crate) next_prepared_id: u64,
    /// Sealed segments written since the last sync started.
    pub(crate) unsynced_sealed: Vec<Arc<File>>,
    /// Where the last record written starts: `(segment, offset)`.
    pub(crate) last_record: (u64, usize),
    /// How records reach the active segment.
    pub(crate) append_via: AppendVia,
    /// With `AppendVia::Write`: records encoded but not yet written to the active segment.
    /// Flushed before the write lock is released, so readers never see an index entry whose
    /// bytes are not in the file.
    pub(crate) staging: Staging,
    /// Long flushes start writeback as they go (every mode but `Never`, which leaves writing
    /// to the OS).
    pub(crate) start_writeback: bool,
}

/// What is durable, written by sync leaders and read by `durable_position`.
struct Durable {
    /// Highest record `seq` known durable.
    seq: u64,
    /// Where the durable log ends: (segment, offset).
    end: (u64, u64),
    /// Why the WAL is poisoned, once it is.
    poison: Option<String>,
}

/// What only the current sync leader touches: how the previous round went.
#[derive(Default)]
struct LeaderNotes {
    /// Callers waiting when the previous sync ended (covered or not), its leader included: how
    /// many the next sync waits for.
    last_round: usize,
}

/// Callers waiting for a sync, counted by the doorbell ring they arrived after (high 32 bits:
/// the ring; low 32: how many arrived since it). A leader gathering for the next sync counts
/// only callers that arrived after the last ring, not those that ring woke and that have not
/// run yet.
struct Arrivals(AtomicU64);

impl Arrivals {
    /// Counts a caller that read ring `seen` before deciding to wait; returns how many arrived
    /// since that ring (0 if a newer ring came meanwhile: its wait returns at once).
    fn arrive(&self, seen: u32) -> u32 {
        let mut v = self.0.load(Ordering::Acquire);
        loop {
            let (ring, n) = ((v >> 32) as u32, v as u32);
            let next = if ring == seen {
                n.saturating_add(1)
            } else if (seen.wrapping_sub(ring) as i32) > 0 {
                1 // The first to arrive after ring `seen`.
            } else {
                return 0; // A newer ring already came: not waiting for long.
            };
            match self.0.compare_exchange_weak(
                v,
                (u64::from(seen) << 32) | u64::from(next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return next,
                Err(now) => v = now,
            }
        }
    }

    /// How many arrived after ring `ring`.
    fn since(&self, ring: u32) -> u32 {
        let v = self.0.load(Ordering::Acquire);
        if (v >> 32) as u32 == ring {
            v as u32
        } else {
            0
        }
    }
}

/// State shared by the `Wal` handle and its background threads.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) config: WalConfig,
    pub(crate) state: RwLock<State>,
    /// Group commit, without a lock on the callers' path: a caller whose record is not durable
    /// either becomes the leader (`leading`, one at a time: on ext4 two fdatasyncs of one file
    /// take longer together than one after the other) or waits for the `bell`, which the
    /// leader rings once when its sync ends. Every waiter reads the ring before it looks at
    /// `durable_seq`, so it cannot miss the ring that covers it.
    leading: AtomicBool,
    /// A leader is gathering before it syncs: arrivals that complete the gathering ring the
    /// `gather_bell`.
    gathering: AtomicBool,
    /// How many arrivals complete the gathering (`u32::MAX` when it waits for bytes).
    gather_want: AtomicU32,
    gather_bell: Doorbell,
    arrivals: Arrivals,
    /// Wakes the callers waiting for a sync when it ends.
    bell: Doorbell,
    durable: Mutex<Durable>,
    leader_notes: Mutex<LeaderNotes>,
    /// Mirror of `Durable::seq`, read without a lock.
    durable_seq: AtomicU64,
    /// How long the last sync took, in nanoseconds: how long the next leader gathers, and
    /// whether waiting for a sync is worth a spin (see [`WalConfig::spin_wait`]).
    last_sync_ns: AtomicU64,
    /// Syncs completed.
    syncs: AtomicU64,

    /// Bytes written since the last sync began.
    pending_bytes: AtomicU64,
    poisoned: AtomicBool,
    /// A segment file was created or renamed since the last directory fsync.
    dir_dirty: AtomicBool,
    /// Wakes the background threads.
    bg: Mutex<()>,
    bg_cv: Condvar,
    shutdown: AtomicBool,
    /// Held for the life of the WAL: the directory lock.
    _lock: File,
}

/// A segmented, memory-mapped write-ahead log hosting the logs of many Raft groups.
///
/// `Wal` implements [`LogStore`]; it is `Send + Sync` and meant to be shared (wrap it in an
/// `Arc`). Dropping it stops its background threads; [`Wal::close`] also makes everything
/// written durable first.
pub struct Wal {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("dir", &self.shared.dir).finish_non_exhaustive()
    }
}

/// Where the durable part of the log ends, for tests that emulate a power loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurablePosition {
    /// The `seq` of the last durable record.
    pub seq: u64,
    /// The segment holding it.
    pub segment: u64,
    /// The byte offset just past it in that segment.
    pub offset: u64,
}

/// Counters describing a WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalStats {
    /// Segment files in use.
    pub segments: usize,
    /// Prepared segment files ready.
    pub prepared: usize,
    /// Groups held.
    pub groups: usize,
    /// Entries held across groups.
    pub entries: u64,
    /// Bytes the in-memory index holds.
    pub index_bytes: u64,
    /// Records written (the next record's sequence number minus one).
    pub last_seq: u64,
    /// Highest record sequence number known durable.
    pub durable_seq: u64,
    /// Syncs (rounds of `fdatasync`) completed since the WAL opened; records written divided
    /// by syncs shows how well group commit gathers.
    pub syncs: u64,
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, recovering what it holds. See
    /// [`RecoveryReport`] for what recovery found.
    pub fn open(
        dir: impl AsRef<Path>,
        config: WalConfig,
    ) -> Result<(Wal, RecoveryReport), WalError> {
        config.validate()?;
        let (state, lock, report, durable) = crate::recovery::recover(dir.as_ref(), &config)?;
        let shared = Arc::new(Shared {
            dir: dir.as_ref().to_path_buf(),
            config,
            durable_seq: AtomicU64::new(durable.seq),
            last_sync_ns: AtomicU64::new(0),
            syncs: AtomicU64::new(0),

            leading: AtomicBool::new(false),
            gathering: AtomicBool::new(false),
            gather_want: AtomicU32::new(u32::MAX),
            gather_bell: Doorbell::new(),
            arrivals: Arrivals(AtomicU64::new(0)),
            durable: Mutex::new(Durable {
                seq: durable.seq,
                end: (durable.segment, durable.offset),
                poison: None,
            }),
            leader_notes: Mutex::new(LeaderNotes::default()),
            state: RwLock::new(state),
            bell: Doorbell::new(),
            pending_bytes: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            dir_dirty: AtomicBool::new(false),
            bg: Mutex::new(()),
            bg_cv: Condvar::new(),
            shutdown: AtomicBool::new(false),
            _lock: lock,
        });
        let mut threads = Vec::new();
        let s = Arc::clone(&shared);
        threads.push(
            std::thread::Builder::new()
                .name("raft-wal-prepare".into())
                .spawn(move || s.run_preparer())
                .map_err(|e| WalError::io(&shared.dir, e))?,
        );
        if let Durability::Interval(every) = shared.config.durability {
            let s = Arc::clone(&shared);
            threads.push(
                std::thread::Builder::new()
                    .name("raft-wal-interval".into())
                    .spawn(move || s.run_interval_sync(every))
                    .map_err(|e| WalError::io(&shared.dir, e))?,
            );
        }
        Ok((Wal { shared, threads }, report))
    }

    /// Makes everything written durable, then closes the WAL.
    pub fn close(mut self) -> Result<(), WalError> {
        let result = self.shared.flush_all();
        self.stop();
        result
    }

    fn stop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.bg.lock();
            self.shared.bg_cv.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// The directory the WAL lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Where the durable log ends.
    pub fn durable_position(&self) -> DurablePosition {
        let d = self.shared.durable.lock();
        DurablePosition { seq: d.seq, segment: d.end.0, offset: d.end.1 }
    }

    /// Counters, including the memory the index takes.
    pub fn stats(&self) -> WalStats {
        let st = self.shared.state.read();
        let index_bytes: usize = st.groups.values().map(GroupIndex::heap_bytes).sum();
        WalStats {
            segments: st.segments.len(),
            prepared: st.prepared.len(),
            groups: st.groups.len(),
            entries: st.groups.values().map(|g| g.locs.len() as u64).sum(),
            index_bytes: index_bytes as u64,
            last_seq: st.next_seq - 1,
            durable_seq: self.shared.durable_seq.load(Ordering::Acquire),
            syncs: self.shared.syncs.load(Ordering::Relaxed),
        }
    }

    /// Waits until at least `n` prepared segment files are ready (or `timeout` passes), so a
    /// benchmark can start with segments written ahead, as they are in a running system.
    pub fn wait_prepared(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.shared.state.read().prepared.len() >= n {
                return true;
            }
            {
                let _g = self.shared.bg.lock();
                self.shared.bg_cv.notify_all();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.stop();
    }
}

// ----- writing -----

/// An upper bound of the bytes the records of `batch` take (each may need splitting).
fn batch_bytes_bound(batch: &[LogWrite<'_>]) -> usize {
    let mut total = 0usize;
    for w in batch {
        if w.hard_state.is_some() {
            total += format::align(RECORD_HEADER_LEN + format::HARD_STATE_LEN);
        }
        if !w.entries.is_empty() {
            total += format::align(RECORD_HEADER_LEN + format::TRUNCATE_LEN);
            for e in w.entries {
                total += format::ENTRY_ROW_LEN + e.data.len();
            }
            total += format::align(RECORD_HEADER_LEN + format::ENTRIES_META_FIXED);
        }
    }
    total
}

impl Shared {
    fn check_poison(&self) -> Result<(), WalError> {
        if self.poisoned.load(Ordering::Acquire) {
            let msg = self.durable.lock().poison.clone().unwrap_or_default();
            return Err(WalError::Poisoned(msg));
        }
        Ok(())
    }

    /// Poisons the WAL for good and wakes everyone waiting on a sync to see it.
    fn poison(&self, why: String) {
        tracing::error!(dir = %self.dir.display(), %why, "WAL poisoned");
        self.durable.lock().poison.get_or_insert(why);
        self.poisoned.store(true, Ordering::Release);
        self.bell.ring();
        self.gather_bell.ring();
    }

    pub(crate) fn write(&self, batch: &[LogWrite<'_>]) -> Result<u64, WalError> {
        self.check_poison()?;
        let mut st = self.state.write();
        validate_batch(&st, batch)?;
        self.check_entry_sizes(&st, batch)?;
        // Reserve every segment the batch may need before writing a byte: a full disk must
        // fail the write cleanly, not half-way through it.
        let need = batch_bytes_bound(batch);
        let room = self.room(&st);
        if need > room || st.active_sealed {
            let groups = st.groups.len() + batch.len();
            let per_segment = self.config.usable_bytes(groups).max(1);
            let segments = 1 + need.saturating_sub(room) / per_segment + 1;
            self.reserve_prepared(&mut st, segments)?;
        }
        let before = st.next_seq;
        let written = self.write_records(&mut st, batch);
        if written.is_ok() && st.next_seq > before {
            end_batch(&mut st);
        }
        fail::fail_point!("wal::write::short", |_| {
            // The last record's second half never reached the file.
            let (segment, at) = st.last_record;
            if let Some((_, bytes)) = record_mut(&mut st, segment, at) {
                let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                // A staged record with payloads written from the caller's buffers is only its
                // header and table here: damage what there is.
                let total = format::align(RECORD_HEADER_LEN + len as usize).min(bytes.len());
                bytes[total / 2..total].fill(0);
            }
            let _ = flush_staged(&mut st);
            self.poison("short write (injected)".into());
            Err(WalError::Io {
                path: self.dir.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "short write (injected)",
                ),
            })
        });
        let written = written.and_then(|()| self.maybe_flush_staged(&mut st));
        let lsn = st.next_seq - 1;
        drop(st);
        if let Err(e) = written {
            // Past the reservation only renames and mappings can fail; the log's tail can no
            // longer be trusted to match the index.
            self.poison(format!("segment roll failed mid-write: {e}"));
            return Err(e);
        }
        if self.config.durability == Durability::Always {
            self.sync_to(lsn)?;
        }
        Ok(lsn)
    }

    /// Writes the staged records to the file now, or leaves them for the next sync to write in
    /// the same call as everyone else's: in the syncing modes a write is only acknowledged by a
    /// sync, which writes what is staged first, so concurrent appenders make one `pwritev`
    /// instead of one each (and hold the state lock for an encode, not a system call). Records
    /// left staged are read from memory until then. `Never` and `Interval` write at once, so
    /// that a crash of the process alone loses nothing the OS had been given; so does any
    /// write that leaves [`STAGED_MAX`] or more staged.
    fn maybe_flush_staged(&self, st: &mut State) -> Result<(), WalError> {
        let syncing =
            matches!(self.config.durability, Durability::Always | Durability::GroupCommit { .. });
        if syncing && st.staging.len() < STAGED_MAX {
            return Ok(());
        }
        flush_staged(st)
    }

    fn check_entry_sizes(&self, st: &State, batch: &[LogWrite<'_>]) -> Result<(), WalError> {
        let max =
            self.config.usable_bytes(st.groups.len() + batch.len()).saturating_sub(
                RECORD_HEADER_LEN + format::ENTRIES_META_FIXED + format::ENTRY_ROW_LEN,
            ) as u64;
        let max = max.min(format::ENTRY_DATA_MAX);
        for w in batch {
            for e in w.entries {
                if e.data.len() as u64 > max {
                    return Err(WalError::EntryTooLarge { len: e.data.len() as u64, max });
                }
            }
        }
        Ok(())
    }

    /// Bytes free for records in the active segment (its seal's room excluded).
    fn room(&self, st: &State) -> usize {
        let len = st.segments.get(&st.active).map_or(0, |s| s.file.len());
        len.saturating_sub(st.offset + format::SEAL_RECORD_LEN)
    }

    /// Makes sure `n` prepared segments are ready, creating any missing ones now. The writer
    /// holds the state lock here, so it allocates rather than zero-fills them (milliseconds
    /// rather than the time to write a whole segment, during which no one could append or read):
    /// syncs into those segments cost more until they are recycled.
    fn reserve_prepared(&self, st: &mut State, n: usize) -> Result<(), WalError> {
        if st.prepared.len() < n {
            tracing::debug!(
                ready = st.prepared.len(),
                needed = n,
                "no prepared segment ready: allocating"
            );
        }
        while st.prepared.len() < n {
            let id = st.next_prepared_id;
            st.next_prepared_id += 1;
            let size = self.config.segment_size_bytes;
            let path = segment::prepare_new(&self.dir, id, size, segment::Fill::Allocate)?;
            st.prepared.push_back(path);
        }
        Ok(())
    }

    fn write_records(&self, st: &mut State, batch: &[LogWrite<'_>]) -> Result<(), WalError> {
        for w in batch {
            if let Some(hs) = w.hard_state {
                self.append(
                    st,
                    Kind::HardState,
                    format::HARD_STATE_LEN,
                    format::HARD_STATE_LEN,
                    |p, _| format::encode_hard_state(p, w.group, &hs),
                )?;
                st.groups.entry(w.group).or_default().hard_state = hs;
            }
            let Some(first) = w.entries.first() else { continue };
            let last = st.groups.get(&w.group).map_or(0, GroupIndex::last_index);
            if first.index <= last {
                let kept = first.index - 1;
                self.append(
                    st,
                    Kind::Truncate,
                    format::TRUNCATE_LEN,
                    format::TRUNCATE_LEN,
                    |p, _| format::encode_truncate(p, w.group, kept),
                )?;
                let State { groups, segments, .. } = st;
                if let Some(g) = groups.get_mut(&w.group) {
                    g.truncate_after(kept, |loc| drop_live(segments, loc));
                }
                fail::fail_point!("wal::truncate::between", |_| Err(WalError::Io {
                    path: self.dir.clone(),
                    source: std::io::Error::other("injected failure between truncation and append"),
                }));
            }
            self.append_entries(st, w.group, w.entries)?;
        }
        Ok(())
    }

    /// Writes `entries` as one or more ENTRIES records, splitting at segment boundaries.
    fn append_entries(
        &self,
        st: &mut State,
        group: GroupId,
        entries: &[Entry],
    ) -> Result<(), WalError> {
        let mut rest = entries;
        while !rest.is_empty() {
            if st.active_sealed {
                self.roll(st)?;
            }
            let overhead = RECORD_HEADER_LEN + format::ENTRIES_META_FIXED;
            let mut room = self.room(st).saturating_sub(overhead);
            let mut count = 0;
            let mut data = 0usize;
            for e in rest {
                let need = format::ENTRY_ROW_LEN + e.data.len();
                if need > room {
                    break;
                }
                room -= need;
                data += e.data.len();
                count += 1;
            }
            if count == 0 {
                self.roll(st)?;
                continue;
            }
            let (chunk, tail) = rest.split_at(count);
            rest = tail;
            // The count above ignored the record's alignment padding.
            let meta_len = format::ENTRIES_META_FIXED + count * format::ENTRY_ROW_LEN;
            if format::align(RECORD_HEADER_LEN + meta_len + data) > self.room(st) {
                self.roll(st)?;
            }
            let durable = self.durable_seq.load(Ordering::Acquire);
            let (total, locs) = put_entries(st, group, chunk, durable);
            self.account(total);
            let g = st.groups.entry(group).or_default();
            for (e, loc) in chunk.iter().zip(locs) {
                debug_assert_eq!(e.index, g.last_index() + 1, "validated entries are consecutive");
                g.push(e.term, loc);
            }
            if let Some(seg) = st.segments.get_mut(&st.active) {
                seg.live += count as u64;
            }
        }
        Ok(())
    }

    /// Appends one record to the active segment, rolling first if it does not fit. `fill`
    /// writes the payload, given its offset in the segment.
    fn append(
        &self,
        st: &mut State,
        kind: Kind,
        payload_len: usize,
        meta_len: usize,
        fill: impl FnOnce(&mut [u8], u32),
    ) -> Result<(), WalError> {
        let total = format::align(RECORD_HEADER_LEN + payload_len);
        if st.active_sealed || total > self.room(st) {
            self.roll(st)?;
        }
        self.put_record(st, kind, payload_len, meta_len, fill);
        Ok(())
    }

    /// Encodes a record at the write position; the caller made sure it fits.
    fn put_record(
        &self,
        st: &mut State,
        kind: Kind,
        payload_len: usize,
        meta_len: usize,
        fill: impl FnOnce(&mut [u8], u32),
    ) {
        let durable = self.durable_seq.load(Ordering::Acquire);
        let total = put_record(st, kind, payload_len, meta_len, durable, fill);
        self.account(total);
    }

    /// Counts `total` bytes written towards the group commit byte limit.
    fn account(&self, total: usize) {
        let pending = self.pending_bytes.fetch_add(total as u64, Ordering::AcqRel) + total as u64;
        if let Durability::GroupCommit { max_bytes, .. } = self.config.durability {
            if pending >= max_bytes && self.gathering.load(Ordering::Acquire) {
                self.gather_bell.ring();
            }
        }
    }

    /// Seals the active segment and continues in a new one.
    fn roll(&self, st: &mut State) -> Result<(), WalError> {
        let path = match st.prepared.pop_front() {
            Some(p) => p,
            None => {
                self.reserve_prepared(st, 1)?;
                st.prepared
                    .pop_front()
                    .ok_or_else(|| WalError::InvalidConfig("no prepared segment".into()))?
            }
        };
        let old = st.active;
        let new = old + 1;
        if !st.active_sealed {
            self.put_record(st, Kind::Seal, format::SEAL_LEN, format::SEAL_LEN, |p, _| {
                format::encode_seal(p, new)
            });
            if let Some(seg) = st.segments.get(&old) {
                st.unsynced_sealed.push(Arc::clone(&seg.file.file));
            }
        }
        flush_staged(st)?;
        fail::fail_point!("wal::roll::after-seal", |_| Err(WalError::Io {
            path: path.clone(),
            source: std::io::Error::other("injected failure after sealing"),
        }));
        let dest = self.dir.join(segment::segment_name(new));
        std::fs::rename(&path, &dest).map_err(|e| WalError::io(&dest, e))?;
        self.dir_dirty.store(true, Ordering::Release);
        fail::fail_point!("wal::roll::after-rename", |_| Err(WalError::Io {
            path: dest.clone(),
            source: std::io::Error::other("injected failure after renaming"),
        }));
        // Appends through the mapping want its pages present; appends by write calls only read
        // through it, and populating a recycled (cold) file would read it all from disk.
        let mut file = SegmentFile::open(&dest, new, Mapping::for_appends(st.append_via, true))?;
        if file.len() as u64 != self.config.segment_size_bytes {
            return Err(WalError::Corrupt {
                path: dest,
                offset: 0,
                detail: format!(
                    "prepared segment is {} bytes, expected {}",
                    file.len(),
                    self.config.segment_size_bytes
                ),
            });
        }
        let header = SegmentHeader { seq: new, first_seq: st.next_seq, size: file.len() as u64 };
        write_header(&mut file, &header)?;
        st.segments.insert(new, Segment { file, live: 0, verified: true });
        st.active = new;
        st.offset = SEGMENT_HEADER_LEN;
        st.staging.reset(SEGMENT_HEADER_LEN);
        st.active_sealed = false;
        self.write_checkpoint(st);
        // Ask for the next prepared file.
        let _g = self.bg.lock();
        self.bg_cv.notify_all();
        Ok(())
    }

    /// Writes every group's metadata at the start of a new segment, so older segments can be
    /// deleted once no group needs their entries.
    fn write_checkpoint(&self, st: &mut State) {
        let durable = self.durable_seq.load(Ordering::Acquire);
        let total = put_checkpoint(st, durable);
        self.pending_bytes.fetch_add(total as u64, Ordering::AcqRel);
    }

    // ----- durability -----

    /// Waits until every record up to `lsn` is durable, leading a sync if the mode asks callers
    /// to and nobody is.
    pub(crate) fn sync_to(&self, lsn: u64) -> Result<(), WalError> {
        self.wait_durable(lsn, false)
    }

    /// Waits until every record up to `lsn` is durable; `force` syncs even in the modes where
    /// callers do not (`Never`, `Interval`).
    fn wait_durable(&self, lsn: u64, force: bool) -> Result<(), WalError> {
        loop {
            // The ring first: a sync that ends after this read rings again, so the wait below
            // returns (see `leading`).
            let seen = self.bell.seen();
            self.check_poison()?;
            if self.durable_seq.load(Ordering::Acquire) >= lsn {
                return Ok(());
            }
            let timeout = match self.config.durability {
                Durability::Never if !force => return Ok(()),
                // The background thread syncs; look again now and then in case it stopped.
                Durability::Interval(_) if !force => Some(Duration::from_millis(50)),
                _ => {
                    if self.try_lead() {
                        self.lead_sync();
                        continue;
                    }
                    None
                }
            };
            let arrived = self.arrivals.arrive(seen);
            if arrived >= self.gather_want.load(Ordering::Acquire) {
                self.gather_bell.ring();
            }
            match timeout {
                // Another thread leads a sync that ends soon.
                None => self.bell.wait_spinning(seen, self.spin(), None),
                Some(_) => self.bell.wait(seen, timeout),
            }
        }
    }

    /// How long a thread waiting for a sync, or a leader gathering, yields before it sleeps:
    /// [`WalConfig::spin_wait`] while syncs take no longer than that, else nothing (a thread
    /// that would spin through most of a slow sync only burns the CPU).
    fn spin(&self) -> Duration {
        let limit = self.config.spin_wait;
        if self.last_sync() <= limit {
            limit
        } else {
            Duration::ZERO
        }
    }

    /// How long the last sync took.
    fn last_sync(&self) -> Duration {
        Duration::from_nanos(self.last_sync_ns.load(Ordering::Relaxed))
    }

    /// Becomes the sync leader, unless another thread is.
    fn try_lead(&self) -> bool {
        self.leading.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Runs one sync as the leader (the caller won `try_lead`); then publishes what is durable
    /// and rings once, which wakes every waiter: the covered return, and the first of the rest
    /// to look leads the next sync.
    ///
    /// Gathering: a leader that started the moment the previous sync returned would cover only
    /// the callers quickest to write again, and the rest would wait a whole extra sync. So, when
    /// several callers were waiting as the previous sync ended, the leader first waits (at most
    /// as long as the previous sync took, and never more than 500 us) until as many wait again;
    /// only the arrival that completes the count wakes it. A lone writer never waits. With an
    /// explicit `max_delay`, it waits up to that long or until `max_bytes` are pending instead.
    fn lead_sync(&self) {
        let mut notes = self.leader_notes.lock();
        let ring = self.bell.seen();
        match self.config.durability {
            Durability::GroupCommit { max_delay, max_bytes } if !max_delay.is_zero() => {
                self.gather_until(u32::MAX, Instant::now() + max_delay, || {
                    self.pending_bytes.load(Ordering::Acquire) >= max_bytes
                });
            }
            Durability::Always | Durability::GroupCommit { .. } if notes.last_round > 1 => {
                let want = (notes.last_round - 1).min(u32::MAX as usize - 1) as u32;
                let deadline = Instant::now() + self.last_sync().min(Duration::from_micros(500));
                self.gather_until(want, deadline, || self.arrivals.since(ring) >= want);
            }
            _ => {}
        }
        let started = Instant::now();
        let result = self.flush();
        self.last_sync_ns.store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match result {
            Ok(end) => {
                self.syncs.fetch_add(1, Ordering::Relaxed);
                let mut d = self.durable.lock();
                if end.seq > d.seq {
                    d.seq = end.seq;
                    d.end = (end.segment, end.offset);
                    self.durable_seq.store(end.seq, Ordering::Release);
                }
            }
            Err(e) => self.poison(format!("sync failed: {e}")),
        }
        // Everyone who arrived during this round waits now, covered or not.
        notes.last_round = self.arrivals.since(ring) as usize + 1;
        drop(notes);
        self.leading.store(false, Ordering::Release);
        self.bell.ring();
    }

    /// The leader's wait before a sync: until `done()`, the deadline, or poison. Arrivals
    /// counted to `want` (or `account`, past the byte limit) ring the gather bell.
    fn gather_until(&self, want: u32, deadline: Instant, done: impl Fn() -> bool) {
        self.gather_want.store(want, Ordering::Release);
        self.gathering.store(true, Ordering::Release);
        loop {
            let seen = self.gather_bell.seen();
            if done() || self.poisoned.load(Ordering::Acquire) {
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            self.gather_bell.wait_spinning(seen, self.spin(), Some(deadline));
        }
        self.gathering.store(false, Ordering::Release);
        self.gather_want.store(u32::MAX, Ordering::Release);
    }

    /// Makes everything written so far durable; returns where the durable log then ends.
    fn flush(&self) -> Result<DurablePosition, WalError> {
        let (end, files) = {
            let mut st = self.state.write();
            // What writers left staged goes to the file with one call (see
            // `maybe_flush_staged`); a failure poisons the instance like a failed sync.
            flush_staged(&mut st)?;
            let mut files = std::mem::take(&mut st.unsynced_sealed);
            if let Some(seg) = st.segments.get(&st.active) {
                files.push(Arc::clone(&seg.file.file));
            }
            let end = DurablePosition {
                seq: st.next_seq - 1,
                segment: st.active,
                offset: st.offset as u64,
            };
            self.pending_bytes.store(0, Ordering::Release);
            (end, files)
        };
        fail::fail_point!("wal::sync", |_| Err(WalError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other("injected fdatasync failure"),
        }));
        for f in &files {
            f.sync_data().map_err(|e| WalError::io(&self.dir, e))?;
        }
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = segment::sync_dir(&self.dir) {
                self.dir_dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(end)
    }

    /// Syncs whatever is written, whatever the durability mode (used by `close` and before
    /// deleting segments).
    fn flush_all(&self) -> Result<(), WalError> {
        self.check_poison()?;
        let written = self.state.read().next_seq - 1;
        self.wait_durable(written, true)?;
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = segment::sync_dir(&self.dir) {
                self.dir_dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        self.check_poison()
    }

    fn run_interval_sync(&self, every: Duration) {
        while !self.shutdown.load(Ordering::Acquire) {
            {
                let mut g = self.bg.lock();
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
                self.bg_cv.wait_for(&mut g, every);
            }
            if self.poisoned.load(Ordering::Acquire) {
                return;
            }
            let written = self.state.read().next_seq - 1;
            if self.durable_seq.load(Ordering::Acquire) < written && self.try_lead() {
                self.lead_sync();
            }
        }
    }

    fn run_preparer(&self) {
        loop {
            let want = self.config.prepared_segments;
            let id = {
                let mut st = self.state.write();
                if st.prepared.len() >= want {
                    None
                } else {
                    let id = st.next_prepared_id;
                    st.next_prepared_id += 1;
                    Some(id)
                }
            };
            if let Some(id) = id {
                let size = self.config.segment_size_bytes;
                match segment::prepare_new(&self.dir, id, size, segment::Fill::Zeros) {
                    Ok(path) => {
                        self.state.write().prepared.push_back(path);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(dir = %self.dir.display(), %e, "preparing a segment failed; retrying")
                    }
                }
            }
            let mut g = self.bg.lock();
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
            let wait =
                if id.is_some() { Duration::from_millis(200) } else { Duration::from_secs(1) };
            self.bg_cv.wait_for(&mut g, wait);
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
        }
    }

    // ----- compaction and retirement -----

    pub(crate) fn compact(
        &self,
        group: GroupId,
        through: Index,
        term: Term,
    ) -> Result<u64, WalError> {
        self.check_poison()?;
        let lsn;
        {
            let mut st = self.state.write();
            if through == 0 || st.groups.get(&group).is_some_and(|g| through <= g.base_index) {
                return Ok(st.next_seq - 1);
            }
            self.reserve_room(&mut st, format::COMPACT_LEN)?;
            self.append(
                &mut st,
                Kind::Compact,
                format::COMPACT_LEN,
                format::COMPACT_LEN,
                |p, _| format::encode_compact(p, group, through, term),
            )?;
            end_batch(&mut st);
            if let Err(e) = self.maybe_flush_staged(&mut st) {
                drop(st);
                self.poison(format!("writing a compaction record failed: {e}"));
                return Err(e);
            }
            let State { groups, segments, .. } = &mut *st;
            // A group may start with a compaction: a snapshot installed on a fresh node.
            groups.entry(group).or_default().compact(through, term, |loc| drop_live(segments, loc));
            lsn = st.next_seq - 1;
        }
        if self.config.durability == Durability::Always {
            self.sync_to(lsn)?;
        }
        self.retire_dead_segments()?;
        Ok(lsn)
    }

    /// Makes sure a small record fits, rolling (which may need a prepared file) first.
    fn reserve_room(&self, st: &mut State, payload_len: usize) -> Result<(), WalError> {
        if st.active_sealed || format::align(RECORD_HEADER_LEN + payload_len) > self.room(st) {
            self.reserve_prepared(st, 1)?;
        }
        Ok(())
    }

    /// Deletes (or recycles) the oldest segments while no group has entries in them.
    fn retire_dead_segments(&self) -> Result<(), WalError> {
        let dead: Vec<u64> = {
            let st = self.state.read();
            st.segments
                .iter()
                .take_while(|(&seq, seg)| seq != st.active && seg.live == 0)
                .map(|(&seq, _)| seq)
                .collect()
        };
        if dead.is_empty() {
            return Ok(());
        }
        // The first segment kept starts with the checkpoint that replaces what the deleted
        // ones held (hard states, compaction points): it must be durable before they go.
        self.flush_all()?;
        let mut retired = Vec::new();
        {
            let mut st = self.state.write();
            for seq in dead {
                if let Some(seg) = st.segments.remove(&seq) {
                    retired.push(seg.file.path.clone());
                }
            }
        }
        for path in retired {
            let recycle = self.config.recycle_segments && {
                let st = self.state.read();
                st.prepared.len() < self.config.prepared_segments + 2
            };
            if recycle {
                let id = {
                    let mut st = self.state.write();
                    st.next_prepared_id += 1;
                    st.next_prepared_id - 1
                };
                match segment::recycle(&self.dir, &path, id) {
                    Ok(p) => {
                        self.state.write().prepared.push_back(p);
                        continue;
                    }
                    Err(e) => tracing::warn!(%e, "recycling a segment failed; deleting it"),
                }
            }
            std::fs::remove_file(&path).map_err(|e| WalError::io(&path, e))?;
        }
        segment::sync_dir(&self.dir)
    }

    // ----- reading -----

    fn group_state<R>(
        &self,
        group: GroupId,
        f: impl FnOnce(&State, Option<&GroupIndex>) -> R,
    ) -> R {
        let st = self.state.read();
        f(&st, st.groups.get(&group))
    }

    pub(crate) fn entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.check_poison()?;
        let st = self.state.read();
        let empty = GroupIndex::default();
        let g = st.groups.get(&group).unwrap_or(&empty);
        if lo <= g.base_index {
            return Err(StorageError::Compacted { group, index: lo, first: g.first_index() });
        }
        if hi > g.last_index() || lo > hi {
            return Err(StorageError::Unavailable {
                group,
                index: hi.max(lo),
                last: g.last_index(),
            });
        }
        let mut out = Vec::with_capacity((hi - lo + 1).min(4096) as usize);
        let mut bytes = 0u64;
        for index in lo..=hi {
            let Some(loc) = g.loc(index) else { break };
            let size = loc.data_len() as u64 + Entry::OVERHEAD_BYTES;
            if bytes + size > max_bytes && !out.is_empty() {
                break;
            }
            bytes += size;
            let data = read_payload(&st, group, index, loc)?;
            let term = g.term(index).unwrap_or_default();
            let kind = if loc.is_noop() { EntryKind::Noop } else { EntryKind::Normal };
            out.push(Entry { term, index, kind, data });
        }
        Ok(out)
    }
}

/// Encodes a record at the write position of the active segment (the caller made sure it
/// fits) and returns its length.
pub(crate) fn put_record(
    st: &mut State,
    kind: Kind,
    payload_len: usize,
    meta_len: usize,
    durable: u64,
    fill: impl FnOnce(&mut [u8], u32),
) -> usize {
    let total = format::align(RECORD_HEADER_LEN + payload_len);
    let seq = st.next_seq;
    let at = st.offset;
    let Some(seg) = st.segments.get_mut(&st.active) else {
        unreachable!("the active segment {} is always mapped", st.active)
    };
    let segment_seq = seg.file.seq;
    let buf = match st.append_via {
        AppendVia::Mmap => match seg.file.bytes_mut() {
            Some(map) => &mut map[at..at + total],
            None => unreachable!("segments of a WAL appending through the mapping map writable"),
        },
        AppendVia::Write => {
            if st.staging.is_empty() {
                st.staging.reset(at);
            }
            debug_assert_eq!(st.staging.end(), at, "staged records are contiguous");
            st.staging.inline_mut(total)
        }
    };
    fill(
        &mut buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + payload_len],
        (at + RECORD_HEADER_LEN) as u32,
    );
    format::finish_record(buf, segment_seq, kind, seq, durable, payload_len, meta_len);
    st.last_record = (st.active, at);
    st.offset += total;
    st.next_seq += 1;
    total
}

/// Encodes one ENTRIES record of `chunk` (which fits at the write position) and returns its
/// length and where each payload went. Through `AppendVia::Write`, payloads of at least
/// [`staging::EXTERNAL_MIN`] bytes are not copied: the flush writes them from the entries'
/// own buffers.
pub(crate) fn put_entries(
    st: &mut State,
    group: GroupId,
    chunk: &[Entry],
    durable: u64,
) -> (usize, Vec<Loc>) {
    let count = chunk.len();
    let meta_len = format::ENTRIES_META_FIXED + count * format::ENTRY_ROW_LEN;
    let data: usize = chunk.iter().map(|e| e.data.len()).sum();
    let segment = st.active as u32;
    let mut locs = Vec::with_capacity(count);
    let first_index = chunk.first().map_or(0, |e| e.index);
    let encode_row = |p: &mut [u8], i: usize, e: &Entry, crc: u32| {
        let noop = e.kind == EntryKind::Noop;
        format::encode_row(
            p,
            i,
            format::EntryRow { term: e.term, len: e.data.len() as u32, noop, crc },
        );
    };
    if st.append_via == AppendVia::Mmap {
        let total =
            put_record(st, Kind::Entries, meta_len + data, meta_len, durable, |p, payload_at| {
                format::encode_entries_meta(p, group, first_index, count as u32);
                let mut at = meta_len;
                for (i, e) in chunk.iter().enumerate() {
                    let len = e.data.len();
                    p[at..at + len].copy_from_slice(&e.data);
                    let crc = crc32c::crc32c(&e.data);
                    encode_row(p, i, e, crc);
                    locs.push(Loc::new(
                        segment,
                        payload_at + at as u32,
                        len as u32,
                        e.kind == EntryKind::Noop,
                        crc,
                    ));
                    at += len;
                }
            });
        return (total, locs);
    }
    let payload_len = meta_len + data;
    let total = format::align(RECORD_HEADER_LEN + payload_len);
    let seq = st.next_seq;
    let at = st.offset;
    let Some(seg) = st.segments.get(&st.active) else {
        unreachable!("the active segment {} is always mapped", st.active)
    };
    let segment_seq = seg.file.seq;
    if st.staging.is_empty() {
        st.staging.reset(at);
    }
    debug_assert_eq!(st.staging.end(), at, "staged records are contiguous");
    // Header and entry table first (each row needs its payload's checksum), then the payloads.
    let head = st.staging.inline_mut(RECORD_HEADER_LEN + meta_len);
    format::encode_entries_meta(&mut head[RECORD_HEADER_LEN..], group, first_index, count as u32);
    let mut payload_at = at + RECORD_HEADER_LEN + meta_len;
    for (i, e) in chunk.iter().enumerate() {
        let len = e.data.len();
        let crc = crc32c::crc32c(&e.data);
        encode_row(&mut head[RECORD_HEADER_LEN..], i, e, crc);
        locs.push(Loc::new(segment, payload_at as u32, len as u32, e.kind == EntryKind::Noop, crc));
        payload_at += len;
    }
    format::finish_header(head, segment_seq, Kind::Entries, seq, durable, payload_len, meta_len);
    for e in chunk {
        if e.data.len() >= staging::EXTERNAL_MIN {
            st.staging.push_external(e.data.clone());
        } else {
            st.staging.push_copy(&e.data);
        }
    }
    st.staging.inline_mut(total - RECORD_HEADER_LEN - payload_len);
    st.last_record = (st.active, at);
    st.offset += total;
    st.next_seq += 1;
    (total, locs)
}

/// The bytes of the record starting at `at` in `segment`, wherever they are now (staged, or in
/// the segment's mapping): at least its header and metadata.
fn record_mut(st: &mut State, segment: u64, at: usize) -> Option<(u64, &mut [u8])> {
    let staged_here = segment == st.active && !st.staging.is_empty() && at >= st.staging.at();
    let seg = st.segments.get_mut(&segment)?;
    let seq = seg.file.seq;
    if staged_here {
        Some((seq, st.staging.inline_at(at)?))
    } else {
        // Only appends through the mapping leave a batch's last record unstaged (writes through
        // write calls stay staged until the batch is complete), and their mapping is writable.
        Some((seq, seg.file.bytes_mut()?.get_mut(at..)?))
    }
}

/// Writes the staged records to the active segment file.
pub(crate) fn flush_staged(st: &mut State) -> Result<(), WalError> {
    if st.staging.is_empty() {
        return Ok(());
    }
    let Some(seg) = st.segments.get(&st.active) else {
        unreachable!("the active segment {} is always mapped", st.active)
    };
    st.staging
        .write_to(&seg.file.file, st.start_writeback)
        .map_err(|e| WalError::io(&seg.file.path, e))?;
    st.staging.reset(st.offset);
    Ok(())
}

/// Writes a segment header the way records are appended (a write call, or the mapping).
pub(crate) fn write_header(file: &mut SegmentFile, header: &SegmentHeader) -> Result<(), WalError> {
    let mut bytes = [0u8; SEGMENT_HEADER_LEN];
    header.encode(&mut bytes);
    match file.bytes_mut() {
        Some(map) => {
            map[..SEGMENT_HEADER_LEN].copy_from_slice(&bytes);
            Ok(())
        }
        None => file.write_at(0, &bytes),
    }
}

/// Marks the last record written as the end of its batch: recovery replays a batch only if its
/// end is on disk.
pub(crate) fn end_batch(st: &mut State) {
    let (segment, at) = st.last_record;
    let marked =
        record_mut(st, segment, at).map(|(seq, record)| format::mark_batch_end(record, seq));
    debug_assert!(marked.is_some(), "a batch's last record is staged or in a writable mapping");
}

/// Writes a CHECKPOINT of every group's metadata at the write position; returns its length.
pub(crate) fn put_checkpoint(st: &mut State, durable: u64) -> usize {
    let mut rows: Vec<CheckpointRow> = st
        .groups
        .iter()
        .map(|(&group, g)| CheckpointRow {
            group,
            base_index: g.base_index,
            base_term: g.base_term,
            hard_state: g.hard_state,
        })
        .collect();
    rows.sort_unstable_by_key(|r| r.group);
    let len = format::checkpoint_len(rows.len());
    put_record(st, Kind::Checkpoint, len, len, durable, |p, _| format::encode_checkpoint(p, &rows))
}

/// Copies an entry's payload out of its segment, checking its checksum unless the segment is
/// known verified.
fn read_payload(st: &State, group: GroupId, index: Index, loc: Loc) -> Result<Bytes, StorageError> {
    let corrupt =
        |why: String| StorageError::Corrupt(format!("group {group} entry {index}: {why}"));
    let Some(seg) = st.segments.get(&(loc.segment as u64)) else {
        return Err(corrupt(format!("segment {} is not open", loc.segment)));
    };
    let start = loc.offset as usize;
    let end = start + loc.data_len();
    if loc.segment as u64 == st.active && !st.staging.is_empty() && start >= st.staging.at() {
        // Written by a call that left it for the next sync to write.
        return match st.staging.get(start, end - start) {
            Some(data) => Ok(Bytes::copy_from_slice(data)),
            None => Err(corrupt(format!("payload {start}..{end} is not in the staged records"))),
        };
    }
    let Some(data) = seg.file.bytes().get(start..end) else {
        return Err(corrupt(format!("payload {start}..{end} is outside segment {}", loc.segment)));
    };
    if !seg.verified && crc32c::crc32c(data) != loc.crc {
        return Err(corrupt(format!("payload checksum mismatch in {}", seg.file.path.display())));
    }
    Ok(Bytes::copy_from_slice(data))
}

/// Counts an entry's payload as gone from its segment.
pub(crate) fn drop_live(segments: &mut BTreeMap<u64, Segment>, loc: Loc) {
    if let Some(seg) = segments.get_mut(&(loc.segment as u64)) {
        seg.live = seg.live.saturating_sub(1);
    }
}

/// A group's log as an earlier part of the batch being validated left it.
struct Staged {
    base: Index,
    last: Index,
    /// `(index, term)` of the entries the batch wrote so far.
    written: Vec<(Index, Term)>,
}

/// Checks a batch against the index before anything is written (a group written twice in one
/// batch is checked against its state after the earlier part).
fn validate_batch(st: &State, batch: &[LogWrite<'_>]) -> Result<(), WalError> {
    let mut staged: HashMap<GroupId, Staged> = HashMap::new();
    for w in batch {
        let Some(first) = w.entries.first() else { continue };
        let g = st.groups.get(&w.group);
        let before = staged.remove(&w.group).unwrap_or_else(|| Staged {
            base: g.map_or(0, |g| g.base_index),
            last: g.map_or(0, GroupIndex::last_index),
            written: Vec::new(),
        });
        let term_before = |i: Index| {
            before
                .written
                .iter()
                .rev()
                .find(|&&(idx, _)| idx == i)
                .map(|&(_, t)| t)
                .or_else(|| g.and_then(|g| g.term(i)).or_else(|| (i == 0).then_some(0)))
        };
        validate_append(w.group, w.entries, before.base, before.last, term_before)?;
        let mut written: Vec<(Index, Term)> =
            before.written.into_iter().filter(|&(i, _)| i < first.index).collect();
        written.extend(w.entries.iter().map(|e| (e.index, e.term)));
        let last = w.entries.last().map_or(before.last, |e| e.index);
        staged.insert(w.group, Staged { base: before.base, last, written });
    }
    Ok(())
}

impl LogStore for Wal {
    fn write(&self, batch: &[LogWrite<'_>]) -> Result<Lsn, StorageError> {
        Ok(Lsn(self.shared.write(batch)?))
    }

    fn sync(&self, lsn: Lsn) -> Result<(), StorageError> {
        Ok(self.shared.sync_to(lsn.0)?)
    }

    fn durable_lsn(&self) -> Lsn {
        Lsn(self.shared.durable_seq.load(Ordering::Acquire))
    }

    fn compact(&self, group: GroupId, through: Index, term: Term) -> Result<Lsn, StorageError> {
        Ok(Lsn(self.shared.compact(group, through, term)?))
    }

    fn entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.shared.entries(group, lo, hi, max_bytes)
    }

    fn term(&self, group: GroupId, index: Index) -> Result<Term, StorageError> {
        self.shared.check_poison()?;
        self.shared.group_state(group, |_, g| {
            let (base, last) = g.map_or((0, 0), |g| (g.base_index, g.last_index()));
            if index < base {
                return Err(StorageError::Compacted { group, index, first: base + 1 });
            }
            match g {
                Some(g) => g.term(index),
                None => (index == 0).then_some(0),
            }
            .ok_or(StorageError::Unavailable { group, index, last })
        })
    }

    fn log_state(&self, group: GroupId) -> Result<LogState, StorageError> {
        self.shared.check_poison()?;
        Ok(self.shared.group_state(group, |_, g| match g {
            Some(g) => LogState {
                hard_state: g.hard_state,
                first_index: g.first_index(),
                last_index: g.last_index(),
                base_term: g.base_term,
            },
            None => LogState {
                hard_state: HardState::default(),
                first_index: 1,
                last_index: 0,
                base_term: 0,
            },
        }))
    }

    fn groups(&self) -> Result<Vec<GroupId>, StorageError> {
        self.shared.check_poison()?;
        let mut groups: Vec<GroupId> = self.shared.state.read().groups.keys().copied().collect();
        groups.sort_unstable();
        Ok(groups)
    }
}
