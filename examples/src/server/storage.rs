//! Where a server keeps its log: `--log-store wal|raft-engine|memory`, and the refusal of a data
//! directory that holds the other persistent store's log.

use std::path::PathBuf;
use std::sync::Arc;

use raft_wal::{Durability, Wal, WalConfig};

use super::{ServerArgs, ServerError};

/// Which log store a server keeps its log in (`--log-store`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogStoreKind {
    /// raft-wal (the default).
    #[default]
    Wal,
    /// tikv's raft-engine (feature `raft-engine`, on by default).
    RaftEngine,
    /// In memory: nothing survives a restart.
    Memory,
}

impl LogStoreKind {
    /// The flag value: `wal`, `raft-engine` or `memory`.
    pub fn name(self) -> &'static str {
        match self {
            LogStoreKind::Wal => "wal",
            LogStoreKind::RaftEngine => "raft-engine",
            LogStoreKind::Memory => "memory",
        }
    }
}

impl std::str::FromStr for LogStoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<LogStoreKind, String> {
        match s {
            "wal" => Ok(LogStoreKind::Wal),
            "raft-engine" => Ok(LogStoreKind::RaftEngine),
            "memory" => Ok(LogStoreKind::Memory),
            other => Err(format!("expected wal, raft-engine or memory, got {other}")),
        }
    }
}

/// Opens the log store `--log-store` names in the data directory, refusing a directory that
/// holds the other persistent store's log (starting on an empty log would forget the node's
/// votes and acknowledged entries).
///
/// `snapshots` holds each group's newest usable snapshot index (0 for none): a group whose log
/// was compacted past it is reset and repaired from the leader.
pub(super) fn open_log_store(
    args: &ServerArgs,
    snapshots: &[(raft_core::GroupId, raft_core::Index)],
) -> Result<Arc<dyn raft_core::LogStore>, ServerError> {
    let wal_dir = args.data_dir.join("wal");
    let engine_dir = args.data_dir.join("raft-engine");
    let holds = |dir: &std::path::Path| {
        std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false)
    };
    let other = match args.log_store {
        LogStoreKind::Wal => Some((&engine_dir, "raft-engine")),
        LogStoreKind::RaftEngine => Some((&wal_dir, "wal")),
        LogStoreKind::Memory => None,
    };
    if let Some((dir, name)) = other {
        if holds(dir) {
            return Err(ServerError::LogStore(format!(
                "{} holds a {name} log: start with --log-store {name} (or use another data directory)",
                dir.display()
            )));
        }
    }
    let dir_err = |path: PathBuf| move |source| ServerError::DataDir { path, source };
    match args.log_store {
        LogStoreKind::Wal => {
            std::fs::create_dir_all(&wal_dir).map_err(dir_err(wal_dir.clone()))?;
            let wal_config = WalConfig {
                durability: wal_durability(args),
                segment_size_bytes: args.wal_segment_mib << 20,
                ..WalConfig::default()
            };
            let (wal, report) = Wal::open(&wal_dir, wal_config.clone())?;
            tracing::info!(?report, "WAL opened");
            let snapshot_of = |group| snapshots.iter().find(|s| s.0 == group).map_or(0, |s| s.1);
            let state = raft_core::LogStore::log_state(&wal, super::GROUP).ok();
            let empty = state.is_some_and(|s| s.last_index == 0 && s.hard_state.term == 0);
            if args.join.is_some() && empty && snapshot_of(super::GROUP) == 0 {
                // A node joining with nothing may be an old member under its old id: as it
                // catches up it replays configurations that made its old incarnation a voter,
                // and must vote by none of them until it holds the group's log.
                wal.mark_lost(super::GROUP)?;
            }
            // Groups whose log was compacted past every snapshot this node still has (the newer
            // ones were damaged): their state machines cannot be rebuilt here. Forget their
            // logs (keeping the term and vote) and get everything from the leader, not voting
            // until then.
            let stranded: Vec<(raft_core::GroupId, raft_core::Index, raft_core::Index)> = snapshots
                .iter()
                .filter_map(|&(group, snapshot_index)| {
                    let state = raft_core::LogStore::log_state(&wal, group).ok()?;
                    let base = state.first_index.saturating_sub(1);
                    (base > snapshot_index).then_some((group, snapshot_index, base))
                })
                .collect();
            if stranded.is_empty() {
                return Ok(Arc::new(wal));
            }
            wal.close()?;
            for (group, snapshot_index, log_base) in stranded {
                tracing::error!(
                    group,
                    snapshot_index,
                    log_base,
                    "no usable snapshot reaches the log: repairing this node from the leader"
                );
                raft_wal::salvage::reset_group(&wal_dir, &wal_config, group)?;
            }
            let (wal, report) = Wal::open(&wal_dir, wal_config)?;
            tracing::info!(?report, "WAL reopened");
            Ok(Arc::new(wal))
        }
        LogStoreKind::RaftEngine => open_engine(&engine_dir, args.durability),
        LogStoreKind::Memory => {
            tracing::warn!(
                "--log-store memory: the log is kept in memory only; NOTHING survives a restart \
                 of this node (its votes and acknowledged writes are forgotten). For tests only."
            );
            Ok(Arc::new(raft_core::MemLogStore::new()))
        }
    }
}

/// The WAL's mode for `--durability`. With shards, `always` opens the WAL in group commit: the
/// guarantee is the same (the node syncs every round before anything in it counts), but a
/// write no longer syncs on the thread that makes it, so the rounds of every group written
/// meanwhile share the runtime's next sync.
fn wal_durability(args: &ServerArgs) -> Durability {
    match args.durability {
        Durability::Always if args.shards > 1 => Durability::group_commit(),
        d => d,
    }
}

#[cfg(feature = "raft-engine")]
fn open_engine(
    dir: &std::path::Path,
    durability: Durability,
) -> Result<Arc<dyn raft_core::LogStore>, ServerError> {
    let syncs = match durability {
        Durability::Always | Durability::GroupCommit { .. } => true,
        Durability::Never => false,
        Durability::Interval(_) => return Err(ServerError::LogStore(
            "--durability interval is a raft-wal mode; raft-engine takes always, group or never"
                .into(),
        )),
    };
    let store = crate::engine_store::EngineStore::open_with(dir, syncs)
        .map_err(|e| ServerError::LogStore(format!("raft-engine in {}: {e}", dir.display())))?;
    tracing::info!(dir = %dir.display(), syncs, "raft-engine opened");
    Ok(Arc::new(store))
}

#[cfg(not(feature = "raft-engine"))]
fn open_engine(
    _dir: &std::path::Path,
    _durability: Durability,
) -> Result<Arc<dyn raft_core::LogStore>, ServerError> {
    Err(ServerError::LogStore(
        "this build has no raft-engine: build with `--features raft-engine` (cargo build --release -p raftkit-examples --features raft-engine)".into(),
    ))
}
