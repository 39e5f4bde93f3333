//! Typed errors of the WAL.

use std::path::PathBuf;

use raft_core::StorageError;

/// Everything that can go wrong opening or using a WAL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// The directory does not exist.
    #[error("WAL directory {path} does not exist")]
    MissingDirectory {
        /// The directory.
        path: PathBuf,
    },
    /// The directory cannot be written to.
    #[error("WAL directory {path} is not writable: {source}")]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Another process (or another `Wal` in this one) has the directory open.
    #[error("WAL directory {path} is in use by another process (lock file {lock})")]
    Locked {
        /// The directory.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// A segment was written by a newer format version than this build understands.
    #[error(
        "segment {path} has format version {version}; this build reads up to version {supported}"
    )]
    NewerVersion {
        /// The segment file.
        path: PathBuf,
        /// Its format version.
        version: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// A segment was written by an older format version that this build no longer reads.
    #[error(
        "segment {path} has format version {version}, which this build no longer reads (it \
         reads version {supported}); open it with the raft-wal release that wrote it"
    )]
    OlderVersion {
        /// The segment file.
        path: PathBuf,
        /// Its format version.
        version: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// Salvaging a damaged log found that a group's hard state (its term and vote) may have
    /// been in the damaged records, with no later record to restore it from. The node could
    /// vote twice in a term with it, so it must not start: remove it from the group, wipe the
    /// directory, and add it back (see the README on storage faults).
    #[error(
        "WAL {path}: the hard state (term and vote) of group {group} may have been lost to \
         damage; remove the node from the group, clear its data directory and add it back"
    )]
    HardStateLost {
        /// The WAL directory.
        path: PathBuf,
        /// The group.
        group: raft_core::GroupId,
    },
    /// Data that was acknowledged durable is damaged, or the directory is inconsistent (a
    /// missing segment, say). Open with `RecoveryMode::TruncateAtCorruption` to cut the log
    /// there instead.
    #[error("corrupt WAL segment {path} at offset {offset}: {detail}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset in that file.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The disk is full: a new segment could not be written. Nothing of the write that needed
    /// it was accepted; the WAL stays usable once space is freed.
    #[error("disk full while {action} ({path})")]
    DiskFull {
        /// What the WAL was doing.
        action: &'static str,
        /// The file it was writing.
        path: PathBuf,
    },
    /// An earlier failure (a failed sync) means the WAL can no longer promise durability; it
    /// refuses all work until reopened.
    #[error("WAL is poisoned by an earlier failure: {0}")]
    Poisoned(String),
    /// The settings are unusable.
    #[error("invalid WAL configuration: {0}")]
    InvalidConfig(String),
    /// An entry is too large for a segment.
    #[error("entry of {len} bytes does not fit in a segment (at most {max} bytes)")]
    EntryTooLarge {
        /// The entry's payload length.
        len: u64,
        /// The largest payload a segment can hold.
        max: u64,
    },
    /// An I/O error.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A write that breaks the log's rules (a gap, entries below the compaction point, ...).
    #[error(transparent)]
    Invalid(#[from] StorageError),
}

impl WalError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> WalError {
        let path = path.into();
        if source.raw_os_error() == Some(28) {
            // ENOSPC
            return WalError::DiskFull { action: "writing", path };
        }
        WalError::Io { path, source }
    }
}

impl From<WalError> for StorageError {
    fn from(e: WalError) -> StorageError {
        match e {
            WalError::Invalid(inner) => inner,
            WalError::Poisoned(msg) => StorageError::Poisoned(msg),
            WalError::DiskFull { .. } => StorageError::Full(e.to_string()),
            WalError::Corrupt { .. } => StorageError::Corrupt(e.to_string()),
            other => StorageError::Other(Box::new(other)),
        }
    }
}
