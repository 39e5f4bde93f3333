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

mod background;
mod read;
mod retire;
mod scrub;
mod sync;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use raft_core::storage::validate_append;
use raft_core::{
    Entry, EntryKind, GroupId, HardState, Index, LogDamage, LogState, LogStore, LogWrite, Lsn,
    StorageError, Term,
};

use crate::config::{Durability, RecoveryMode, WalConfig};
use crate::doorbell::Doorbell;
use crate::error::WalError;
use crate::format::{self, Kind, SegmentHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::index::{GroupIndex, Loc};
use crate::recovery::{recover, Recovered, RecoveryReport};
use crate::segment::{self, Mapping, SegmentFile};
use crate::state::{
    drop_live, end_batch, flush_staged, put_checkpoint, put_entries, put_record, write_header,
    DurablePosition, Segment, State,
};
use crate::{damage, salvage};
use sync::{Arrivals, Durable, LeaderNotes};

/// Bytes of records a write may leave staged for the next sync to write (see
/// `Shared::maybe_flush_staged`); past this the writer writes them itself.
const STAGED_MAX: usize = 1 << 20;

/// State shared by the `Wal` handle and its background threads.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) config: WalConfig,
    /// Groups whose log lost entries to damage and are not repaired yet (the `DAMAGE` file).
    damage: Mutex<BTreeMap<GroupId, LogDamage>>,
    /// The background scrubber's findings and counters.
    scrub: scrub::Scrub,
    /// The second copy of every group's term and vote (`crate::votes`), written by syncs.
    votes: Mutex<crate::votes::VoteFiles>,
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
    /// Payload bytes the scrubber checked since the WAL opened.
    pub scrubbed_bytes: u64,
    /// Complete scrub passes over every live entry in sealed segments.
    pub scrub_passes: u64,
    /// Damaged entries the scrubber found.
    pub scrub_damaged: u64,
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, recovering what it holds. See
    /// [`RecoveryReport`] for what recovery found.
    pub fn open(
        dir: impl AsRef<Path>,
        config: WalConfig,
    ) -> Result<(Wal, RecoveryReport), WalError> {
        config.validate()?;
        let dir = dir.as_ref();
        salvage::finish_interrupted(dir)?;
        let (recovered, salvaged) = match recover(dir, &config) {
            Err(e @ WalError::Corrupt { .. }) if config.recovery == RecoveryMode::Salvage => {
                let report = salvage::salvage(dir, &config, e.to_string())?;
                (recover(dir, &config)?, Some(report))
            }
            other => (other?, None),
        };
        let Recovered { mut state, lock, mut report, durable } = recovered;
        let loaded = crate::votes::load(dir)?;
        for why in &loaded.unreadable {
            tracing::warn!(dir = %dir.display(), %why, "a copy of the votes is unreadable; the other is used");
        }
        let vote_files = crate::votes::VoteFiles::open(dir, loaded.generation)?;
        let newer = adopt_newer_votes(&mut state, &loaded.votes);
        let damage = match damage::load(dir)? {
            damage::Loaded::None => BTreeMap::new(),
            damage::Loaded::Groups(groups) => groups,
            damage::Loaded::Unreadable(why) => {
                // Which groups were being repaired is lost: all of them repair (safe, if slow).
                tracing::error!(dir = %dir.display(), %why, "the damage record is unreadable; every group repairs");
                let all: BTreeMap<GroupId, LogDamage> = state
                    .groups
                    .iter()
                    .map(|(&id, g)| (id, LogDamage::new(g.last_index() + 1, None)))
                    .collect();
                damage::store(dir, &all)?;
                all
            }
        };
        let mut damage = damage;
        if !newer.is_empty() {
            // The log's tail lost records a sync had covered (the copy is written after the
            // log is synced): the entries beside them may be lost too.
            for &group in &newer {
                let from = state.groups.get(&group).map_or(1, |g| g.last_index() + 1);
                let d = LogDamage::new(from, None);
                let merged = damage.get(&group).map_or(d, |old: &LogDamage| old.merged(d));
                damage.insert(group, merged);
            }
            tracing::error!(dir = %dir.display(), groups = ?newer, "the copy of the votes is newer than the log: its tail lost synced records; those groups repair");
            damage::store(dir, &damage)?;
        }
        if !damage.is_empty() {
            tracing::warn!(dir = %dir.display(), groups = damage.len(), "groups repairing damage: {damage:?}");
        }
        report.damage = damage.clone();
        report.salvage = salvaged;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            config,
            damage: Mutex::new(damage),
            scrub: scrub::Scrub::default(),
            votes: Mutex::new(vote_files),
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
        if shared.config.scrub_bytes_per_sec > 0 {
            let s = Arc::clone(&shared);
            let rate = shared.config.scrub_bytes_per_sec;
            threads.push(
                std::thread::Builder::new()
                    .name("raft-wal-scrub".into())
                    .spawn(move || s.run_scrubber(rate))
                    .map_err(|e| WalError::io(&shared.dir, e))?,
            );
        }
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

    /// Records that `group`'s whole log was lost (the node's disk was replaced, or it joins a
    /// group it was a member of before): until the node has caught up with a leader and marked
    /// it repaired ([`LogStore::mark_repaired`]), [`LogStore::damage`] reports it, so the node
    /// votes by none of the configurations its old incarnation's entries hold as it replays
    /// them. Durable on return.
    pub fn mark_lost(&self, group: GroupId) -> Result<(), WalError> {
        let mut damage = self.shared.damage.lock();
        let mut all = damage.clone();
        let from = self.shared.group_state(group, |_, g| g.map_or(1, |g| g.first_index()));
        all.insert(group, LogDamage::new(from, None));
        damage::store(&self.shared.dir, &all)?;
        *damage = all;
        Ok(())
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
            scrubbed_bytes: self.shared.scrub.bytes.load(Ordering::Relaxed),
            scrub_passes: self.shared.scrub.passes.load(Ordering::Relaxed),
            scrub_damaged: self.shared.scrub.damaged.load(Ordering::Relaxed),
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

impl Shared {
    // ----- durability -----

    // ----- compaction and retirement -----

    // ----- reading -----
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

    fn damage(&self, group: GroupId) -> Option<LogDamage> {
        self.shared.damage.lock().get(&group).copied()
    }

    fn take_damage_found(&self, group: GroupId) -> Option<Index> {
        self.shared.scrub.found.lock().remove(&group)
    }

    /// Makes everything written so far durable, then drops the group from the `DAMAGE` file.
    fn mark_repaired(&self, group: GroupId) -> Result<Lsn, StorageError> {
        let mut damage = self.shared.damage.lock();
        if damage.contains_key(&group) {
            self.shared.flush_all()?;
            let mut rest = damage.clone();
            rest.remove(&group);
            crate::damage::store(&self.shared.dir, &rest)?;
            *damage = rest;
            tracing::info!(dir = %self.shared.dir.display(), group, "group repaired: damage record cleared");
        }
        Ok(self.durable_lsn())
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

    /// Finds membership entries through the index (which keeps every entry's kind), reading
    /// only their payloads.
    fn config_entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
    ) -> Result<Vec<Entry>, StorageError> {
        self.shared.check_poison()?;
        let st = self.shared.state.read();
        let Some(g) = st.groups.get(&group) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for index in lo.max(g.base_index + 1)..=hi.min(g.last_index()) {
            let Some(loc) = g.loc(index) else { break };
            if loc.kind() == EntryKind::Config {
                let data = read::read_payload(&st, group, index, loc)?;
                let term = g.term(index).unwrap_or_default();
                out.push(Entry { term, index, kind: EntryKind::Config, data });
            }
        }
        Ok(out)
    }
}

/// Takes term and vote from the second copy for every group where it is newer than the log
/// (or the log holds no record of the group at all); returns those groups.
fn adopt_newer_votes(state: &mut State, votes: &crate::votes::Votes) -> Vec<GroupId> {
    let mut adopted = Vec::new();
    for (&group, &(term, vote)) in votes {
        let g = state.groups.entry(group).or_default();
        let hs = g.hard_state;
        if crate::votes::newer((term, vote), (hs.term, hs.vote)) {
            g.hard_state = raft_core::HardState { term, vote, ..hs };
            adopted.push(group);
        }
    }
    adopted
}
