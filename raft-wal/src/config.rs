//! WAL settings: segment size, durability mode, recovery mode.

use std::time::Duration;

use crate::error::WalError;
use crate::format::{checkpoint_len, RECORD_HEADER_LEN, SEAL_RECORD_LEN, SEGMENT_HEADER_LEN};

/// When appended records become durable. Chosen per WAL at open.
///
/// Whatever the mode, [`durable_lsn`](raft_core::LogStore::durable_lsn) never reports a
/// position durable before an fdatasync covering it has returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every write is durable before it returns. Concurrent writers share syncs, gathered as
    /// in `GroupCommit` with a zero `max_delay`.
    Always,
    /// Writes return once readable; [`sync`](raft_core::LogStore::sync) waits for a sync that
    /// covers the position, and concurrent callers share it (group commit).
    ///
    /// With a zero `max_delay` (see [`Durability::group_commit`]) the WAL gathers on its own:
    /// a lone caller's sync starts at once; when several callers were waiting as the previous
    /// sync ended, the next waits until as many are waiting again, at most as long as the
    /// previous sync took (and never above 500 us). With a `max_delay`, a sync waits up to that
    /// long for more writes, or until `max_bytes` are pending.
    GroupCommit {
        /// Longest time the first waiter holds the sync back to gather more writes.
        max_delay: Duration,
        /// Pending bytes that start the sync without waiting out `max_delay`.
        max_bytes: u64,
    },
    /// A background thread syncs every interval; `sync` waits for the next one that covers the
    /// position (it does not start one).
    Interval(Duration),
    /// Nothing is synced except when a segment is retired: `sync` returns at once without making
    /// anything durable, and `durable_lsn` tells the truth. For benchmarks and tests: a crash
    /// may lose writes a caller treated as durable.
    Never,
}

impl Durability {
    /// Group commit without waiting for more writers: writers that arrive during a sync share
    /// the next one.
    pub const fn group_commit() -> Durability {
        Durability::GroupCommit { max_delay: Duration::ZERO, max_bytes: 1 << 20 }
    }
}

/// How appended records reach the active segment file.
///
/// Either way the active segment stays memory-mapped and every read is a lookup and a copy
/// from the mapping (which is coherent with the page cache on Linux).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AppendVia {
    /// Records of a batch are encoded into a buffer and written with one positional write.
    /// On ext4 this keeps each fdatasync as cheap as a plain file's.
    #[default]
    Write,
    /// Records are encoded straight into the mapping. Saves a copy, but on ext4 pages dirtied
    /// through a mapping make every fdatasync about three times as slow (measured: 1.5k-2k vs
    /// 4.2k-5.8k syncs/s for 1 KiB writes on the same file); kept for filesystems where that
    /// does not hold, and for comparison.
    Mmap,
}

/// What to do with corruption found before the tail of the log at open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Open anyway: keep every record that can be trusted, move the damaged segments aside,
    /// and report which groups lost which entries
    /// ([`RecoveryReport::damage`](crate::RecoveryReport::damage), and
    /// [`LogStore::damage`](raft_core::LogStore::damage) until the node repaired them from its
    /// peers). See the crate docs on storage faults.
    #[default]
    Salvage,
    /// Refuse to open with [`WalError::Corrupt`].
    Strict,
    /// Cut the log at the first corrupt record, dropping it and everything after it, and say
    /// so in the [`RecoveryReport`](crate::RecoveryReport).
    TruncateAtCorruption,
}

/// WAL settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// Bytes per segment file. Every file is this long from creation on (pre-written, not
    /// sparse). At least 64 KiB, below 4 GiB.
    pub segment_size_bytes: u64,
    /// When writes become durable.
    pub durability: Durability,
    /// What to do with corruption before the tail.
    pub recovery: RecoveryMode,
    /// Segment files kept written and ready ahead of the writer, so rolling to a new segment
    /// never waits for a file to be created.
    pub prepared_segments: usize,
    /// Reuse the files of deleted segments as new segments (their blocks are already written).
    pub recycle_segments: bool,
    /// How records reach the active segment.
    pub append_via: AppendVia,
    /// How long a thread waiting for a sync that another thread leads (and a leader gathering
    /// writers for its sync) yields the CPU in a loop before it sleeps; only while syncs take no
    /// longer than this, so on a slow disk waiters sleep at once. Zero: always sleep.
    ///
    /// On a virtual machine, waking a sleeping thread on an idle CPU costs an interrupt through
    /// the hypervisor; with 16 writers sharing a ~110 us fdatasync on 2 vCPUs those wake-ups
    /// took longer than the sync itself, and the default (250 us) raised group commit from
    /// ~60k to ~95k appends/s of 1 KiB, for about twice the CPU time while waiting. A lone
    /// writer never spins: it syncs itself.
    pub spin_wait: Duration,
    /// Bytes per second of live entries in sealed segments read back and checked against their
    /// checksums in the background, so damage is found before the entries are needed (0: off).
    /// What is found reaches the node through `LogStore::take_damage_found`.
    pub scrub_bytes_per_sec: u64,
}

impl Default for WalConfig {
    fn default() -> WalConfig {
        WalConfig {
            segment_size_bytes: 64 << 20,
            durability: Durability::group_commit(),
            recovery: RecoveryMode::Salvage,
            prepared_segments: 2,
            recycle_segments: true,
            append_via: AppendVia::Write,
            spin_wait: Duration::from_micros(250),
            scrub_bytes_per_sec: 4 << 20,
        }
    }
}

/// The longest [`WalConfig::spin_wait`] accepted: spinning is for waits shorter than a
/// sleep and a wake-up, not for slow disks.
pub const SPIN_WAIT_MAX: Duration = Duration::from_millis(10);

/// The smallest segment size accepted.
pub const SEGMENT_SIZE_MIN: u64 = 64 << 10;

impl WalConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), WalError> {
        if self.segment_size_bytes < SEGMENT_SIZE_MIN || self.segment_size_bytes >= u32::MAX as u64
        {
            return Err(WalError::InvalidConfig(format!(
                "segment_size_bytes must be in [{SEGMENT_SIZE_MIN}, {}), got {}",
                u32::MAX,
                self.segment_size_bytes
            )));
        }
        if !self.segment_size_bytes.is_multiple_of(8) {
            return Err(WalError::InvalidConfig(
                "segment_size_bytes must be a multiple of 8".into(),
            ));
        }
        if self.spin_wait > SPIN_WAIT_MAX {
            return Err(WalError::InvalidConfig(format!(
                "spin_wait must be at most {SPIN_WAIT_MAX:?}, got {:?}",
                self.spin_wait
            )));
        }
        match self.durability {
            Durability::Interval(d) if d.is_zero() => {
                return Err(WalError::InvalidConfig("the sync interval must be positive".into()))
            }
            Durability::GroupCommit { max_bytes: 0, .. } => {
                return Err(WalError::InvalidConfig(
                    "group commit max_bytes must be positive".into(),
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// Bytes a segment offers to records after its header, checkpoint (for `groups` groups)
    /// and the room kept for its seal.
    pub(crate) fn usable_bytes(&self, groups: usize) -> usize {
        (self.segment_size_bytes as usize)
            .saturating_sub(SEGMENT_HEADER_LEN)
            .saturating_sub(RECORD_HEADER_LEN + checkpoint_len(groups) + 8)
            .saturating_sub(SEAL_RECORD_LEN)
    }
}
