//! Three raft-core nodes in one thread: messages handed over in memory, the in-memory log
//! store, no fsync. It measures the consensus core itself: how many entries per second a
//! leader commits, and how long a proposal takes to commit, with a client keeping a fixed
//! number of proposals in flight.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::execute::{ApplyWork, Executor, LogWriter, PersistWrite, ReadyHandler};
use raft_core::ready::{FetchRequest, ReadState, SnapshotChunk, SnapshotRead};
use raft_core::storage::serve_fetch;
use raft_core::{
    Config, Entry, EntryKind, InitialState, MemLogStore, Message, Raft, SnapshotError,
    SnapshotMeta, StorageError,
};

/// What one run measured.
#[derive(Clone, Debug)]
pub struct RunStats {
    /// Proposals committed on the leader.
    pub committed: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Propose-to-commit latency of every proposal, in nanoseconds, sorted.
    pub latencies_ns: Vec<u64>,
    /// Heap allocations during the run (from [`crate::alloc`], if installed).
    pub allocations: u64,
}

impl RunStats {
    /// Committed entries per second.
    pub fn entries_per_sec(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` (0..=1).
    pub fn latency(&self, q: f64) -> Duration {
        if self.latencies_ns.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies_ns.len() - 1) as f64 * q).round() as usize;
        Duration::from_nanos(self.latencies_ns[i])
    }

    /// Allocations per committed entry.
    pub fn allocations_per_entry(&self) -> f64 {
        self.allocations as f64 / self.committed.max(1) as f64
    }
}

/// A three-node group in one thread.
pub struct Cluster {
    nodes: Vec<Raft>,
    executors: Vec<Executor>,
    writers: Vec<LogWriter>,
    stores: Vec<MemLogStore>,
    /// Messages waiting to be stepped into each node.
    inboxes: Vec<Vec<Message>>,
    leader: usize,
}

impl Cluster {
    /// Builds the group and elects node 1.
    pub fn new(config: Config) -> Cluster {
        let voters = vec![1, 2, 3];
        let nodes: Vec<Raft> = voters
            .iter()
            .map(|&id| {
                let cfg = {
                    let mut c = config.clone();
                    c.id = id;
                    c.seed = id;
                    c.snapshot_bytes = 0;
                    c
                };
                Raft::new(cfg, InitialState::new_group(voters.clone())).expect("valid config")
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            executors: vec![Executor::new(); 3],
            writers: vec![LogWriter::new(); 3],
            stores: (0..3).map(|_| MemLogStore::new()).collect(),
            inboxes: vec![Vec::new(); 3],
            leader: 0,
        };
        // Node 1 campaigns first: tick it alone until it leads.
        while !cluster.nodes[0].is_leader() {
            cluster.nodes[0].tick();
            cluster.pump(&mut |_| {});
        }
        // Let the no-op commit everywhere.
        for _ in 0..10 {
            cluster.pump(&mut |_| {});
        }
        cluster
    }

    /// Carries out every node's Ready and delivers messages until nothing moves.
    fn pump(&mut self, on_commit: &mut dyn FnMut(usize)) {
        while self.pump_once(on_commit) {}
    }

    /// One pass over the nodes: each steps the messages waiting for it, then carries out its
    /// Ready. Calls `on_commit` with the number of client entries the leader committed.
    /// Returns whether anything happened.
    fn pump_once(&mut self, on_commit: &mut dyn FnMut(usize)) -> bool {
        let mut moved = false;
        for i in 0..3 {
            let mut inbox = std::mem::take(&mut self.inboxes[i]);
            for msg in inbox.drain(..) {
                // Messages between correct nodes are never refused.
                let _ = self.nodes[i].step(msg);
                moved = true;
            }
            // Hand the (now empty) buffer back so its capacity is reused.
            if self.inboxes[i].is_empty() {
                self.inboxes[i] = inbox;
            }
            let mut io = NodeIo {
                inboxes: &mut self.inboxes,
                store: &self.stores[i],
                writer: &mut self.writers[i],
                leader: i == self.leader,
                committed: 0,
            };
            let carried = self.executors[i].run(&mut self.nodes[i], &mut io);
            if carried.expect("in-memory store never fails") > 0 {
                moved = true;
            }
            if io.committed > 0 {
                on_commit(io.committed);
            }
        }
        moved
    }

    /// Proposes `total` entries of `payload`, keeping `in_flight` uncommitted at a time, and
    /// measures until the last one commits on the leader.
    pub fn run(&mut self, total: u64, in_flight: u64, payload: &[u8]) -> RunStats {
        let mut proposed_at: VecDeque<Instant> = VecDeque::with_capacity(in_flight as usize);
        let mut latencies_ns = Vec::with_capacity(total as usize);
        let (mut proposed, mut committed) = (0u64, 0u64);
        let allocations_before = crate::alloc::allocations();
        let start = Instant::now();
        while committed < total {
            let now = Instant::now();
            while proposed - committed < in_flight && proposed < total {
                let data = Bytes::copy_from_slice(payload);
                self.nodes[self.leader].propose(data).expect("leader accepts");
                proposed_at.push_back(now);
                proposed += 1;
            }
            let mut newly = 0;
            self.pump_once(&mut |n| newly += n);
            if newly > 0 {
                let now = Instant::now();
                for _ in 0..newly {
                    let at = proposed_at.pop_front().expect("a commit answers a proposal");
                    latencies_ns.push(now.duration_since(at).as_nanos() as u64);
                }
                committed += newly as u64;
            }
        }
        let elapsed = start.elapsed();
        let allocations = crate::alloc::allocations() - allocations_before;
        latencies_ns.sort_unstable();
        RunStats { committed, elapsed, latencies_ns, allocations }
    }
}

/// How a bench node carries out its Readies: messages into the peers' inboxes, writes to the
/// in-memory store (durable on acceptance, so every write is acknowledged at once), committed
/// entries counted on the leader.
struct NodeIo<'a> {
    inboxes: &'a mut [Vec<Message>],
    store: &'a MemLogStore,
    writer: &'a mut LogWriter,
    leader: bool,
    /// Client entries the leader committed in this pass.
    committed: usize,
}

impl ReadyHandler for NodeIo<'_> {
    type Error = StorageError;

    fn send(&mut self, messages: Vec<Message>) -> Result<(), StorageError> {
        for msg in messages {
            self.inboxes[(msg.to - 1) as usize].push(msg);
        }
        Ok(())
    }

    fn release_reads(&mut self, _reads: Vec<ReadState>) -> Result<(), StorageError> {
        Ok(()) // The bench proposes; it asks for no reads.
    }

    fn persist(
        &mut self,
        _raft: &Raft,
        mut write: PersistWrite,
    ) -> Result<Option<Vec<Message>>, StorageError> {
        self.writer.write(self.store, std::slice::from_mut(&mut write))?;
        Ok(Some(std::mem::take(&mut write.messages)))
    }

    fn apply(
        &mut self,
        work: ApplyWork,
    ) -> Result<Option<Result<SnapshotMeta, SnapshotError>>, StorageError> {
        if self.leader {
            self.committed += work.entries.iter().filter(|e| e.kind == EntryKind::Normal).count();
        }
        Ok(None) // Snapshots are off in this cluster (see `Cluster::new`).
    }

    fn fetch(
        &mut self,
        request: &FetchRequest,
    ) -> Result<Option<Result<Vec<Entry>, StorageError>>, StorageError> {
        Ok(Some(serve_fetch(self.store, request)))
    }

    fn read_snapshot(
        &mut self,
        read: &SnapshotRead,
    ) -> Result<Option<Result<bytes::Bytes, SnapshotError>>, StorageError> {
        Ok(Some(Err(SnapshotError::NotFound {
            group: read.meta.group,
            index: read.meta.index,
            term: read.meta.term,
        })))
    }

    fn write_snapshot_chunk(
        &mut self,
        chunk: &SnapshotChunk,
    ) -> Result<Option<Result<(), SnapshotError>>, StorageError> {
        Ok(Some(Err(SnapshotError::NotFound {
            group: chunk.meta.group,
            index: chunk.meta.index,
            term: chunk.meta.term,
        })))
    }
}
