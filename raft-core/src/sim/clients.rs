//! The simulated clients: each runs one operation of the [`Workload`] at a time through the
//! cluster, retries where nothing was done, gives up after a timeout (outcome unknown), and
//! records every call and answer for the linearizability check.

use bytes::{BufMut, Bytes, BytesMut};

use super::cluster::{Cluster, Event, Pending, ReadFor, Reply, SimRead};
use super::linearizability::Operation;
use super::workload::Workload;
use crate::error::{ProposeError, ReadError};
use crate::node::ReadMode;
use crate::ready::ReadId;
use crate::types::{Entry, EntryKind, Index, NodeId};

/// Settings of the clients.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// Concurrent clients, each issuing one operation at a time.
    pub clients: usize,
    /// A client gives up on an operation (outcome unknown) after this long.
    pub timeout_us: u64,
    /// Pause between a client's operations.
    pub think_max_us: u64,
}

impl Default for WorkloadOptions {
    fn default() -> WorkloadOptions {
        WorkloadOptions { clients: 4, timeout_us: 800_000, think_max_us: 20_000 }
    }
}

/// The operation a client is waiting for.
struct InFlight<W: Workload> {
    op_id: u64,
    op: W::Op,
    /// What the client proposes: the tag and the workload's encoding.
    data: Bytes,
    /// A read-only operation served without the log.
    read: bool,
    call: u64,
}

struct Client<W: Workload> {
    id: u64,
    target: NodeId,
    current: Option<InFlight<W>>,
    next_op_id: u64,
}

/// The clients and what they recorded.
pub(super) struct Clients<W: Workload> {
    opts: WorkloadOptions,
    clients: Vec<Client<W>>,
    history: Vec<Operation<W::Op, W::Output>>,
    running: bool,
    last_completion_us: u64,
}

// A client's entry starts with a tag naming the client and its operation, so the node that
// applies it can answer the right client (and tell an entry that replaced the proposal at its
// index). The machine is handed the entry without it, as the workload encoded it.
//
// ```text
// +-----------+------------+-----------+--------------------+
// | "sim\0"   | client u64 | op_id u64 | workload's bytes   |
// +-----------+------------+-----------+--------------------+
//     4B           8B          8B
// ```
const TAG_MAGIC: &[u8; 4] = b"sim\0";
const TAG_LEN: usize = 4 + 8 + 8;

/// `data` with the tag of `client`'s operation `op_id` in front.
fn tagged(client: u64, op_id: u64, data: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(TAG_LEN + data.len());
    buf.put_slice(TAG_MAGIC);
    buf.put_u64_le(client);
    buf.put_u64_le(op_id);
    buf.put_slice(data);
    buf.freeze()
}

/// The client and operation an entry was proposed for, and the entry as the machine sees it
/// (without the tag). Entries without a tag (proposed directly by a test) pass unchanged.
pub(super) fn untag(entry: &Entry) -> (Option<(u64, u64)>, Entry) {
    let data = &entry.data;
    if entry.kind != EntryKind::Normal || data.len() < TAG_LEN || &data[..4] != TAG_MAGIC {
        return (None, entry.clone());
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let inner = Entry { data: data.slice(TAG_LEN..), ..entry.clone() };
    (Some((word(4), word(12))), inner)
}

impl<W: Workload> Cluster<W> {
    /// Starts `opts.clients` clients running the workload's operations through Raft.
    pub fn start_workload(&mut self, opts: WorkloadOptions) {
        let n = self.opts.nodes as u64;
        let clients = (0..opts.clients as u64)
            .map(|id| Client { id, target: 1 + id % n, current: None, next_op_id: 1 })
            .collect();
        let count = opts.clients as u64;
        self.clients = Some(Clients {
            opts,
            clients,
            history: Vec::new(),
            running: true,
            last_completion_us: 0,
        });
        for client in 0..count {
            let delay = self.rng.range(0, 10_000);
            self.schedule(delay, Event::ClientNext { client });
        }
    }

    /// Clients finish their current operation (or time out) and start no new one.
    pub fn stop_workload(&mut self) {
        if let Some(w) = &mut self.clients {
            w.running = false;
        }
    }

    /// Clients start operations again after [`stop_workload`](Cluster::stop_workload).
    pub fn resume_workload(&mut self) {
        let Some(w) = &mut self.clients else { return };
        if w.running {
            return;
        }
        w.running = true;
        let count = w.clients.len() as u64;
        for client in 0..count {
            let delay = self.rng.range(0, 10_000);
            self.schedule(delay, Event::ClientNext { client });
        }
    }

    /// Virtual time of the last completed client operation.
    pub fn last_completion_us(&self) -> u64 {
        self.clients.as_ref().map_or(0, |w| w.last_completion_us)
    }

    /// The clients with an operation in flight: `(client, target node, op id, read, called at)`.
    pub fn busy_clients(&self) -> Vec<(u64, NodeId, u64, bool, u64)> {
        let Some(w) = &self.clients else { return Vec::new() };
        w.clients
            .iter()
            .filter_map(|c| {
                c.current.as_ref().map(|op| (c.id, c.target, op.op_id, op.read, op.call))
            })
            .collect()
    }

    /// Whether every client is idle.
    pub fn clients_idle(&self) -> bool {
        self.clients.as_ref().is_none_or(|w| w.clients.iter().all(|c| c.current.is_none()))
    }

    /// The recorded history: completed operations, plus writes whose outcome is unknown (with
    /// return time `u64::MAX`). Reads without an answer tell nothing and are left out.
    pub fn history(&self) -> Vec<Operation<W::Op, W::Output>> {
        let Some(w) = &self.clients else { return Vec::new() };
        let mut history = w.history.clone();
        for c in &w.clients {
            if let Some(op) = &c.current {
                if self.workload.is_write(&op.op) {
                    history.push(Operation {
                        client: c.id,
                        input: op.op.clone(),
                        output: W::Output::default(),
                        call: op.call,
                        ret: u64::MAX,
                    });
                }
            }
        }
        history
    }

    /// A client's request reaches node `node`: it proposes it, or answers that it cannot.
    pub(super) fn handle_request(
        &mut self,
        node: NodeId,
        client: u64,
        op_id: u64,
        data: Bytes,
    ) -> Option<NodeId> {
        let raft = self.raft_mut(node)?;
        match raft.propose(data) {
            Ok(id) => {
                let pending = Pending { term: id.term, client, op_id };
                self.nodes[(node - 1) as usize].pending.insert(id.index, pending);
                Some(node)
            }
            Err(ProposeError::NotLeader { leader }) => {
                self.reply(client, op_id, Reply::NotLeader(leader));
                None
            }
            Err(_) => {
                self.reply(client, op_id, Reply::Failed);
                None
            }
        }
    }

    /// A read reaches node `node`: the core confirms it (or the node answers that it cannot).
    pub(super) fn start_read(&mut self, node: NodeId, mut read: SimRead<W>) -> Option<NodeId> {
        let n = &mut self.nodes[(node - 1) as usize];
        n.take_owed_ticks();
        let raft = n.raft.as_mut()?;
        read.on_follower = !raft.is_leader();
        let id = n.next_read;
        match raft.read_index(id) {
            Ok(()) => {
                n.next_read += 1;
                n.reads.insert(id, read);
                Some(node)
            }
            Err(err) => {
                self.answer_read(node, read.to, Err(err));
                None
            }
        }
    }

    /// The core released read `id` of node `idx` (or failed it): serve it once the machine has
    /// applied its index.
    pub(super) fn read_released(
        &mut self,
        idx: usize,
        id: ReadId,
        result: Result<Index, ReadError>,
    ) {
        let node = &mut self.nodes[idx];
        let Some(read) = node.reads.remove(&id) else { return };
        match result {
            Ok(index) => {
                node.read_waiting.push((index, read));
                self.serve_reads(idx);
            }
            Err(err) => {
                let id = node.id;
                self.answer_read(id, read.to, Err(err));
            }
        }
    }

    /// Serves the reads of node `idx` whose index its machine has applied.
    pub(super) fn serve_reads(&mut self, idx: usize) {
        let node = &mut self.nodes[idx];
        if node.read_waiting.is_empty() {
            return;
        }
        let applied = node.applied_index;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut node.read_waiting).into_iter().partition(|(i, _)| *i <= applied);
        node.read_waiting = waiting;
        let id = node.id;
        for (_, read) in ready {
            let node = &self.nodes[idx];
            let Some(output) = self.workload.query(&node.machine, &read.op) else { continue };
            self.stats.reads_served += 1;
            if read.on_follower {
                self.stats.follower_reads += 1;
            }
            self.answer_read(id, read.to, Ok(output));
        }
    }

    /// Answers a read served without the log.
    fn answer_read(&mut self, node: NodeId, to: ReadFor, result: Result<W::Output, ReadError>) {
        match to {
            ReadFor::Direct(ticket) => {
                self.direct_reads.insert(ticket, result);
            }
            ReadFor::Client { client, op_id } => {
                let reply = match result {
                    Ok(output) => Reply::Done(output),
                    Err(ReadError::NotLeader { leader }) => Reply::NotLeader(leader),
                    Err(_) => Reply::Failed,
                };
                let _ = node;
                self.reply(client, op_id, reply);
            }
        }
    }

    /// Sends a reply to a client: delayed and maybe lost, never duplicated.
    pub(super) fn reply(&mut self, client: u64, op_id: u64, reply: Reply<W::Output>) {
        if self.rng.chance(self.opts.net.loss) {
            return;
        }
        let delay = self.net_delay();
        self.schedule(delay, Event::Reply { client, op_id, reply });
    }

    /// Sends `client`'s current operation to its target after `backoff_us` and a network delay.
    fn send_request(&mut self, client: u64, backoff_us: u64) {
        let Some(w) = &self.clients else { return };
        let c = &w.clients[client as usize];
        let Some(op) = &c.current else { return };
        let (node, op_id, data) = (c.target, op.op_id, op.data.clone());
        let read = op.read.then(|| op.op.clone());
        if backoff_us == 0 && self.rng.chance(self.opts.net.loss) {
            return; // The timeout will notice.
        }
        let delay = backoff_us + self.net_delay();
        self.schedule(delay, Event::Request { node, client, op_id, data, read });
    }

    pub(super) fn client_next(&mut self, client: u64) {
        let Some(w) = &mut self.clients else { return };
        if !w.running || w.clients[client as usize].current.is_some() {
            return;
        }
        let c = &mut w.clients[client as usize];
        let op_id = c.next_op_id;
        c.next_op_id += 1;
        let op = self.workload.next_op(client, op_id, &mut self.rng);
        let data = tagged(client, op_id, &self.workload.encode(client, op_id, &op));
        // Whether the workload can serve the operation by a query (asked of any node's machine:
        // the answer depends on the operation, not the state).
        let read = self.opts.read_mode != ReadMode::Log
            && !self.workload.is_write(&op)
            && self.workload.query(&self.nodes[0].machine, &op).is_some();
        c.current = Some(InFlight { op_id, op, data, read, call: self.now });
        let timeout = w.opts.timeout_us;
        self.schedule(timeout, Event::ClientTimeout { client, op_id });
        self.send_request(client, 0);
    }

    pub(super) fn client_reply(&mut self, client: u64, op_id: u64, reply: Reply<W::Output>) {
        let n = self.opts.nodes as u64;
        let Some(w) = &mut self.clients else { return };
        let think_max = w.opts.think_max_us;
        let c = &mut w.clients[client as usize];
        if c.current.as_ref().is_none_or(|op| op.op_id != op_id) {
            return; // An answer to an operation already given up on.
        }
        match reply {
            Reply::Done(output) => {
                let Some(op) = c.current.take() else { return };
                w.history.push(Operation {
                    client,
                    input: op.op,
                    output,
                    call: op.call,
                    ret: self.now,
                });
                w.last_completion_us = self.now;
                self.stats.ops_completed += 1;
                let think = self.rng.range(0, think_max);
                self.schedule(think, Event::ClientNext { client });
            }
            Reply::NotLeader(hint) => {
                // Nothing was done: resending the same operation is safe.
                let (target, backoff) = match hint {
                    Some(leader) if leader != c.target => (leader, 0),
                    _ => (1 + self.rng.below(n), 20_000),
                };
                c.target = target;
                self.send_request(client, backoff);
            }
            Reply::Failed => {
                c.target = 1 + self.rng.below(n);
                self.send_request(client, 10_000);
            }
        }
    }

    pub(super) fn client_timeout(&mut self, client: u64, op_id: u64) {
        let n = self.opts.nodes as u64;
        let Some(w) = &mut self.clients else { return };
        let c = &mut w.clients[client as usize];
        if c.current.as_ref().is_none_or(|op| op.op_id != op_id) {
            return;
        }
        c.target = 1 + self.rng.below(n);
        if self.workload.retries() {
            // The machine applies the operation at most once: ask again, elsewhere.
            let timeout = w.opts.timeout_us;
            self.stats.ops_retried += 1;
            self.schedule(timeout, Event::ClientTimeout { client, op_id });
            self.send_request(client, 0);
            return;
        }
        let Some(op) = c.current.take() else { return };
        if self.workload.is_write(&op.op) {
            // The write may still take effect at any later time.
            w.history.push(Operation {
                client,
                input: op.op,
                output: W::Output::default(),
                call: op.call,
                ret: u64::MAX,
            });
        }
        self.stats.ops_timed_out += 1;
        let think = self.rng.range(0, w.opts.think_max_us);
        self.schedule(think, Event::ClientNext { client });
    }
}
