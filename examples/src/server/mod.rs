//! The replicated key-value server: one process per node, a Redis-protocol client port, Raft
//! over raft-net-tcp, the log in raft-wal, snapshots in raft-snapshot.
//!
//! # Replies clients can rely on
//!
//! - A success (`+OK`, an integer, a value) is only ever sent for a command that committed on a
//!   quorum (every write fsynced there, with `--durability always` or `group`) and was applied.
//! - `-NOLEADER ...`: no leader is known, or leadership changed before the command was
//!   appended (or, for a read, before it was confirmed). Nothing was done; retrying is safe.
//! - `-BUSY ...`: the leader has too many uncommitted writes. Nothing was done; retry later.
//! - `-TIMEOUT ...`: no answer in time. The outcome is unknown: the write may or may not take
//!   effect.
//! - `-ERR ...`: the command is malformed or unsupported, or (for INCR) the value is not an
//!   integer. Nothing was done.
//!
//! Any node accepts any command. Reads (`GET`, `MGET`, `EXISTS`, `DBSIZE`) are answered by the
//! node that receives them, linearizably, by the `--read-mode`: `index` (the default; a
//! follower asks the leader for the read index and serves from its own state machine),
//! `lease` (the leader answers from its lease; every node must run with it), or `log` (a read
//! barrier through the leader's log, forwarded there). A follower forwards writes to the
//! leader's client port (as `RAFTKIT.LEADER <command>`, which a node only executes while it
//! leads) and relays the reply.
//!
//! `RAFTKIT.TRANSFER <id>` hands leadership to node `id` and answers `+OK` once the node that
//! ran it follows the new leader. Writes that arrive while leadership moves wait for the new
//! leader (they are neither refused nor timed out).

mod args;
mod faults;
mod forward;
mod info;
mod io;
mod members;
mod shards;
mod storage;

pub use args::{
    default_heartbeat_ticks, default_tick, durability_name, ServerArgs, MAX_SHARDS, USAGE,
};
pub use members::{fetch_members, format_address, parse_address, MemberInfo};
pub use shards::{one_key_per_shard, shard_of};
pub use storage::LogStoreKind;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use raft_core::node::{Node, NodeError, NodeOptions, ReadMode, Runtime, RuntimeOptions};
use raft_core::{NodeId, Router, SnapshotStore};
use raft_net_tcp::{TcpConfig, TcpTransport};
use raft_snapshot::{FileSnapshotStore, SnapshotStoreOptions};

use crate::kv::{KvMachine, KvWrite, Output};
use crate::resp;
use forward::Forwarder;
use io::{Kind, ReplyTo};

/// The Raft group the server's data lives in with one shard (shard `s` is group `s + 1`).
pub const GROUP: u64 = 1;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The WAL could not be opened.
    #[error("write-ahead log: {0}")]
    Wal(#[from] raft_wal::WalError),
    /// The log store named by `--log-store` cannot be used.
    #[error("log store: {0}")]
    LogStore(String),
    /// The snapshot store could not be opened.
    #[error("snapshot store: {0}")]
    Snapshot(#[from] raft_core::SnapshotError),
    /// The transport could not start.
    #[error("transport: {0}")]
    Net(#[from] raft_net_tcp::NetError),
    /// The Raft node could not start.
    #[error("raft node: {0}")]
    Node(#[from] NodeError),
    /// Serving clients failed (the event loop could not poll).
    #[error("serving clients: {source}")]
    Serve {
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The Raft node stopped working (its log store failed: a failed fsync cannot be retried
    /// safely). Nothing unacknowledged was acknowledged; restart the server, which recovers
    /// from its data directory.
    #[error("the Raft node failed and the server stops (restart it to recover): {0}")]
    NodeFailed(String),
    /// The cluster to join could not be asked for its members.
    #[error("cannot join the cluster of {addr}: {why}")]
    Join {
        /// The client address given with `--join`.
        addr: SocketAddr,
        /// What went wrong.
        why: String,
    },
    /// `--shards` does not fit the data directory.
    #[error("shards: {0}")]
    Shards(String),
    /// The client port could not be bound.
    #[error("cannot listen for clients on {addr}: {source}")]
    ClientBind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// A running server.
pub struct Server {
    args: ServerArgs,
    /// One node per shard: shard `s` is group `s + 1`.
    shards: Vec<Node<KvMachine>>,
    /// The threads every shard runs on (with more than one shard).
    runtime: Option<Runtime>,
    transport: Arc<TcpTransport>,
    /// The way to each leader this node has forwarded to.
    forwarders: Mutex<HashMap<NodeId, Arc<Forwarder>>>,
    /// Writes that arrived while leadership moved, waiting for the new leader.
    parked: Sender<Parked>,
    /// Links cut by `RAFTKIT.DEBUG CUT`.
    cuts: Arc<faults::Cuts>,
    /// Armed by `RAFTKIT.DEBUG FAILSYNC`.
    sync_fault: Arc<faults::SyncFault>,
    /// The members and their addresses.
    book: Arc<members::Book>,
}

/// A write held while leadership moves.
struct Parked {
    args: Vec<Vec<u8>>,
    reply: ReplyTo,
}

impl Server {
    /// Opens the node's storage, starts Raft (a node per shard) and binds the client port.
    pub fn start(args: ServerArgs) -> Result<(Arc<Server>, TcpListener), ServerError> {
        let dir_err = |path: PathBuf| move |source| ServerError::DataDir { path, source };
        let shard_count = args.shards;
        if shard_count > 1 && args.join.is_some() {
            return Err(ServerError::Shards(
                "--join works with one shard only: membership changes are not sharded yet".into(),
            ));
        }
        std::fs::create_dir_all(&args.data_dir).map_err(dir_err(args.data_dir.clone()))?;
        shards::check_count(&args.data_dir, shard_count)?;
        let groups: Vec<u64> = (1..=shard_count as u64).collect();
        let snap_dir = args.data_dir.join("snapshots");
        std::fs::create_dir_all(&snap_dir).map_err(dir_err(snap_dir.clone()))?;
        // Snapshots first: a damaged one is set aside, and the log must reach back to the newest
        // that remains (storage::open_log_store sees to it).
        let (snapshots, snap_report) =
            FileSnapshotStore::open(&snap_dir, SnapshotStoreOptions::default())?;
        tracing::info!(?snap_report, "snapshot store opened");
        let snapshots = Arc::new(snapshots);
        let latest: Vec<(u64, u64)> = groups
            .iter()
            .map(|&g| {
                let snap = raft_core::SnapshotStore::latest(&*snapshots, g).ok().flatten();
                (g, snap.map_or(0, |s| s.index))
            })
            .collect();
        let mut log = storage::open_log_store(&args, &latest)?;
        shards::check_log_groups(&*log, shard_count)?;
        let sync_fault = Arc::new(faults::SyncFault::default());
        if args.debug_commands {
            log = Arc::new(faults::FaultyLog { inner: log, fault: sync_fault.clone() });
        }

        let router = Arc::new(Router::new());
        // Every address known at start: the --peer nodes, or the members of the cluster joined.
        let mut known = args.peers.clone();
        if let Some(join) = args.join {
            let members = members::discover(join)?;
            // A voter that lost its disk must not come back as if nothing happened: it would
            // have forgotten its votes and what it acknowledged. It is removed first, then
            // joins afresh (as a learner).
            let empty = log
                .log_state(GROUP)
                .map(|s| s.last_index == 0 && s.hard_state.term == 0)
                .unwrap_or(false)
                && raft_core::SnapshotStore::latest(&*snapshots, GROUP).ok().flatten().is_none();
            if let Some(me) = members.iter().find(|m| m.id == args.id && m.role != "learner") {
                if empty {
                    return Err(ServerError::Join {
                        addr: join,
                        why: format!(
                            "node {} is a {} of that cluster but its data directory is empty: \
                             remove it first (RAFTKIT.REMOVE {}), then join again",
                            args.id, me.role, args.id
                        ),
                    });
                }
            }
            for m in members {
                if let (Some(raft), Some(client)) = (m.raft, m.client) {
                    if m.id != args.id {
                        known.insert(m.id, (raft, client));
                    }
                }
            }
        }
        let mut net = TcpConfig::new(args.cluster_id, args.id, args.raft_addr);
        net.peers = known.iter().map(|(&id, &(raft, _))| (id, raft)).collect();
        let transport = Arc::new(TcpTransport::start(net, router.clone())?);
        let mut addresses = known.clone();
        addresses.insert(args.id, (args.raft_addr, args.client_addr));
        let book = Arc::new(members::Book::with(addresses.clone()));
        let book_transport = Arc::new(members::BookTransport {
            inner: transport.clone() as Arc<dyn raft_core::Transport>,
            book: book.clone(),
        });
        let cuts = Arc::new(faults::Cuts::default());
        let cut_transport = faults::transport(book_transport, &cuts, args.debug_commands);

        // Many shards share a fixed set of threads; idle ones sleep, and one liveness ping per
        // pair of nodes stands in for their heartbeats (started below, once every group is).
        let runtime = if shard_count > 1 {
            let runtime = Runtime::new(RuntimeOptions::default())
                .map_err(|e| ServerError::Node(NodeError::Spawn(e)))?;
            Some(runtime)
        } else {
            None
        };

        // A new cluster starts with the --peer nodes as voters; a joining node with none (it
        // waits to be added). Either way, once the log or a snapshot holds a configuration,
        // that is what counts.
        let voters: Vec<NodeId> = if args.join.is_some() {
            Vec::new()
        } else {
            args.peers.keys().copied().chain([args.id]).collect()
        };
        let address_list: std::collections::BTreeMap<NodeId, String> = addresses
            .iter()
            .map(|(&id, &(raft, client))| (id, format_address(raft, client)))
            .collect();
        let mut nodes = Vec::with_capacity(shard_count);
        for &group in &groups {
            let mut options = NodeOptions::new(args.id, group, voters.clone());
            options.addresses = address_list.clone();
            options.tick = args.tick;
            options.raft.heartbeat_ticks = args.heartbeat_ticks;
            options.read_mode = args.read_mode;
            options.raft.snapshot_entries = args.snapshot_entries;
            // A large map is snapshotted less often than a small one: writing snapshots then
            // costs the disk at most what writing the log does.
            options.raft.snapshot_log_ratio_pct = 100;
            if let Some(runtime) = &runtime {
                options.runtime = Some(runtime.clone());
                options.raft.hibernate_ticks = HIBERNATE_TICKS;
            }
            let machine = KvMachine::with_parts(kv_parts(shard_count));
            let node = Node::start(
                options,
                log.clone(),
                Some(snapshots.clone() as Arc<dyn SnapshotStore>),
                cut_transport.clone(),
                machine,
            )?;
            router
                .register(group, faults::inbound(node.inbound(), &cuts, args.debug_commands))
                .map_err(|e| ServerError::Node(NodeError::Group(e)))?;
            nodes.push(node);
        }
        if let Some(runtime) = &runtime {
            // Only once every group is registered: the first ping to each peer says hello, and
            // the peer's sleeping leaders then heartbeat, which every group here must hear.
            let peers: Vec<NodeId> = args.peers.keys().copied().collect();
            runtime.watch_peers(
                args.id,
                &peers,
                cut_transport.clone(),
                &router,
                liveness_ping(args.tick),
                liveness_ping(args.tick) * LIVENESS_DOWN_PINGS,
            );
        }
        let listener = TcpListener::bind(args.client_addr)
            .map_err(|source| ServerError::ClientBind { addr: args.client_addr, source })?;
        tracing::info!(
            id = args.id,
            client = %args.client_addr,
            raft = %args.raft_addr,
            shards = shard_count,
            "serving"
        );
        let (parked, parked_rx) = std::sync::mpsc::channel();
        let server = Arc::new(Server {
            args,
            shards: nodes,
            runtime,
            transport,
            forwarders: Mutex::new(HashMap::new()),
            parked,
            cuts,
            sync_fault,
            book,
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map(drop)
                .map_err(|e| ServerError::Node(NodeError::Spawn(e)))
        };
        let weak = Arc::downgrade(&server);
        spawn("kv-parked", Box::new(move || retry_parked(weak, parked_rx)))?;
        if let Some(join) = server.args.join {
            let weak = Arc::downgrade(&server);
            spawn("kv-join", Box::new(move || members::join_cluster(weak, join)))?;
        }
        if shard_count > 1 {
            let weak = Arc::downgrade(&server);
            spawn("kv-balance", Box::new(move || shards::balance_leaders(weak)))?;
        }
        Ok((server, listener))
    }

    /// Serves clients on `listener` until the process ends: one event-loop thread reads every
    /// connection; replies are written by whichever thread finishes the command.
    pub fn serve(self: &Arc<Server>, listener: TcpListener) -> std::io::Result<()> {
        io::serve(self, listener)
    }

    /// The Raft node of the first shard (group 1; with one shard, the only one).
    pub fn node(&self) -> &Node<KvMachine> {
        &self.shards[0]
    }

    /// The runtime the shards run on (`None` with one shard, whose node has threads of its
    /// own).
    pub fn runtime(&self) -> Option<&Runtime> {
        self.runtime.as_ref()
    }

    /// Starts a command: answers it at once, or hands it to Raft (through its shard's batch) or
    /// to the leader, whose answer goes to `reply` later. Says which deadline the command needs.
    fn start_command(
        self: &Arc<Self>,
        args: Vec<Vec<u8>>,
        forwarded: bool,
        reply: &ReplyTo,
        batches: &mut shards::Batches<'_>,
    ) -> Waits {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let argc = args.len() - 1;
        let done = |f: &dyn Fn(&mut Vec<u8>)| answer_now(reply, f);
        let wrong_arity = || done(&|r| arity_error(r, &name));
        match name.as_str() {
            "PING" => match argc {
                0 => done(&|r| resp::simple(r, "PONG")),
                1 => done(&|r| resp::bulk(r, Some(&args[1]))),
                _ => wrong_arity(),
            },
            "ECHO" if argc == 1 => done(&|r| resp::bulk(r, Some(&args[1]))),
            "SELECT" if argc == 1 => match &args[1][..] {
                b"0" => done(&|r| resp::simple(r, "OK")),
                _ => done(&|r| resp::error(r, "ERR DB index is out of range")),
            },
            "COMMAND" => done(&|r| resp::array_header(r, 0)),
            "CLIENT" => done(&|r| resp::simple(r, "OK")),
            "CONFIG" if argc == 2 && args[1].eq_ignore_ascii_case(b"GET") => done(&|r| {
                resp::array_header(r, 2);
                resp::bulk(r, Some(&args[2]));
                resp::bulk(r, Some(b""));
            }),
            "INFO" => {
                let info = self.info();
                done(&|r| resp::bulk(r, Some(info.as_bytes())))
            }
            "RAFTKIT.TRANSFER" if argc == 1 || argc == 2 => {
                // An optional second word names the group (1 to --shards; 1 by default).
                let group = match args.get(2) {
                    None => Some(1),
                    Some(g) => std::str::from_utf8(g).ok().and_then(|s| s.parse::<usize>().ok()),
                };
                match group {
                    Some(g) if (1..=self.shards.len()).contains(&g) => {
                        let args = args[..2].to_vec();
                        self.start_in_shard(g - 1, args, forwarded, reply, batches)
                    }
                    _ => done(&|r| {
                        resp::error(
                            r,
                            &format!("ERR no such group (groups are 1 to {})", self.shards.len()),
                        )
                    }),
                }
            }
            "RAFTKIT.SHARD" if argc >= 3 => {
                self.start_shard_command(args, forwarded, reply, batches)
            }
            "RAFTKIT.SHARDS" => {
                reply.send(self.shards_reply());
                Waits::No
            }
            "RAFTKIT.MEMBERS" => {
                let r = self.book.members_reply();
                reply.send(r);
                Waits::No
            }
            "RAFTKIT.ADDLEARNER" | "RAFTKIT.PROMOTE" | "RAFTKIT.REMOVE" | "RAFTKIT.CHANGE" => {
                if self.shards.len() > 1 {
                    return done(&|r| {
                        resp::error(r, "ERR membership changes need --shards 1 (not sharded yet)")
                    });
                }
                let changes = match members::parse_changes(&name, &args[1..]) {
                    Ok(changes) => changes,
                    Err(line) => return done(&|r| resp::error(r, &line)),
                };
                match self.route(0, forwarded) {
                    Route::Local => self.change_membership(changes, reply.clone()),
                    Route::Forward(leader) => self.forward(leader, &args, false, reply.clone()),
                    Route::NoLeader => done(&|r| r.extend_from_slice(&no_leader())),
                }
            }
            "RAFTKIT.DEBUG" if !self.args.debug_commands => {
                done(&|r| resp::error(r, "ERR RAFTKIT.DEBUG needs --enable-debug-commands"))
            }
            "RAFTKIT.DEBUG" if argc >= 2 && args[1].eq_ignore_ascii_case(b"CUT") => {
                let ids: Option<Vec<NodeId>> = args[2..]
                    .iter()
                    .map(|a| std::str::from_utf8(a).ok().and_then(|s| s.parse().ok()))
                    .collect();
                match ids {
                    Some(ids) => {
                        tracing::warn!(?ids, "RAFTKIT.DEBUG: cutting Raft links");
                        self.cuts.cut(ids);
                        done(&|r| resp::simple(r, "OK"))
                    }
                    None => done(&|r| resp::error(r, "ERR node id is not a number")),
                }
            }
            "RAFTKIT.DEBUG" if argc == 1 && args[1].eq_ignore_ascii_case(b"FAILSYNC") => {
                tracing::warn!("RAFTKIT.DEBUG: every later sync of the log fails");
                self.sync_fault.arm();
                done(&|r| resp::simple(r, "OK"))
            }
            "RAFTKIT.DEBUG" if argc == 1 && args[1].eq_ignore_ascii_case(b"HEAL") => {
                tracing::warn!("RAFTKIT.DEBUG: healing Raft links");
                self.cuts.heal();
                done(&|r| resp::simple(r, "OK"))
            }
            "RAFTKIT.LEADER" if argc >= 1 => {
                let mut args = args;
                args.remove(0);
                self.start_command(args, true, reply, batches)
            }
            "RAFTKIT.LOCALMGET" | "GET" | "MGET" | "EXISTS" | "DBSIZE" | "SET" | "DEL" | "INCR"
            | "DECR" | "INCRBY" | "DECRBY" => {
                let arity_ok = match name.as_str() {
                    "GET" | "INCR" | "DECR" => argc == 1,
                    "DBSIZE" => argc == 0,
                    "SET" | "INCRBY" | "DECRBY" => argc >= 2,
                    _ => argc >= 1,
                };
                if !arity_ok {
                    return wrong_arity();
                }
                match name.as_str() {
                    // Several keys, or every shard: split over the shards they live in.
                    "RAFTKIT.LOCALMGET" | "MGET" | "EXISTS" | "DEL" | "DBSIZE" => {
                        self.start_keyed(&name, args, forwarded, reply, batches)
                    }
                    _ => {
                        let shard = shards::shard_of(&args[1], self.shards.len());
                        self.start_in_shard(shard, args, forwarded, reply, batches)
                    }
                }
            }
            _ => done(&|r| unknown_command(r, &args[0])),
        }
    }

    /// Starts a command of shard `shard` (a command on its keys, or `RAFTKIT.TRANSFER`).
    fn start_in_shard(
        self: &Arc<Self>,
        shard: usize,
        args: Vec<Vec<u8>>,
        forwarded: bool,
        reply: &ReplyTo,
        batches: &mut shards::Batches<'_>,
    ) -> Waits {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let argc = args.len() - 1;
        let node = &self.shards[shard];
        let done = |f: &dyn Fn(&mut Vec<u8>)| answer_now(reply, f);
        let wrong_arity = || done(&|r| arity_error(r, &name));
        match name.as_str() {
            "RAFTKIT.TRANSFER" => {
                let Some(to) = std::str::from_utf8(&args[1]).ok().and_then(|s| s.parse().ok())
                else {
                    return done(&|r| resp::error(r, "ERR node id is not a number"));
                };
                match self.route(shard, forwarded) {
                    Route::Local => self.transfer(shard, to, reply.clone()),
                    Route::Forward(leader) => {
                        let mut args = args;
                        if self.shards.len() > 1 {
                            args.push((shard + 1).to_string().into_bytes());
                        }
                        self.forward(leader, &args, false, reply.clone())
                    }
                    Route::NoLeader => done(&|r| r.extend_from_slice(&no_leader())),
                }
            }
            "RAFTKIT.LOCALMGET" if argc >= 1 => {
                let keys: Vec<Vec<u8>> = args[1..].to_vec();
                let r = reply.clone();
                node.read_local_with(
                    move |kv: &KvMachine| mget_reply(kv, &keys),
                    move |result| match result {
                        Ok(bytes) => r.send(bytes),
                        Err(err) => r.send(error_reply(&err)),
                    },
                );
                Waits::Local
            }
            "GET" | "MGET" | "EXISTS" | "DBSIZE" => {
                let arity_ok = match name.as_str() {
                    "GET" => argc == 1,
                    "DBSIZE" => argc == 0,
                    _ => argc >= 1,
                };
                if !arity_ok {
                    return wrong_arity();
                }
                self.start_read(shard, name, args, forwarded, reply, batches)
            }
            "SET" | "DEL" | "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
                let write = match (name.as_str(), argc) {
                    ("SET", 2) => KvWrite::Set {
                        key: Bytes::copy_from_slice(&args[1]),
                        value: Bytes::copy_from_slice(&args[2]),
                    },
                    ("SET", n) if n > 2 => {
                        return done(&|r| {
                            resp::error(r, "ERR syntax error (SET options are not supported)")
                        })
                    }
                    ("DEL", n) if n >= 1 => KvWrite::Del {
                        keys: args[1..].iter().map(|k| Bytes::copy_from_slice(k)).collect(),
                    },
                    ("INCR", 1) => KvWrite::IncrBy { key: Bytes::copy_from_slice(&args[1]), by: 1 },
                    ("DECR", 1) => {
                        KvWrite::IncrBy { key: Bytes::copy_from_slice(&args[1]), by: -1 }
                    }
                    ("INCRBY" | "DECRBY", 2) => {
                        let Some(by) =
                            std::str::from_utf8(&args[2]).ok().and_then(|s| s.parse::<i64>().ok())
                        else {
                            return done(&|r| {
                                resp::error(r, "ERR value is not an integer or out of range")
                            });
                        };
                        let by = if name == "DECRBY" {
                            by.checked_neg().unwrap_or(i64::MAX)
                        } else {
                            by
                        };
                        KvWrite::IncrBy { key: Bytes::copy_from_slice(&args[1]), by }
                    }
                    _ => return wrong_arity(),
                };
                match self.route(shard, forwarded) {
                    Route::Local => {
                        let server = self.clone();
                        let r = reply.clone();
                        batches.get(shard).propose_with(write.encode(), move |result| {
                            let mut out = Vec::new();
                            match result {
                                Ok(Output::Ok) => resp::simple(&mut out, "OK"),
                                Ok(Output::Integer(n)) => resp::integer(&mut out, n),
                                Ok(Output::Error(e)) => resp::error(&mut out, &e),
                                Err(err) => {
                                    return server.failed(shard, err, &args, forwarded, false, r)
                                }
                            }
                            r.send(out);
                        });
                        Waits::Local
                    }
                    Route::Forward(leader) => {
                        self.forward(leader, &self.in_shard(shard, &args), false, reply.clone())
                    }
                    Route::NoLeader if forwarded => done(&|r| r.extend_from_slice(&no_leader())),
                    Route::NoLeader => {
                        // Leadership is changing hands: the write waits for the new leader.
                        self.park(self.in_shard(shard, &args), reply.clone());
                        Waits::Local
                    }
                }
            }
            _ => done(&|r| unknown_command(r, &args[0])),
        }
    }

    /// Starts a read: served here (ReadIndex and the lease work on every node), or forwarded
    /// to the leader in log mode, where reads are barriers in the leader's log.
    fn start_read(
        self: &Arc<Self>,
        shard: usize,
        name: String,
        args: Vec<Vec<u8>>,
        forwarded: bool,
        reply: &ReplyTo,
        batches: &mut shards::Batches<'_>,
    ) -> Waits {
        // A node whose disk is full cannot write what the leader sends, so it falls behind and
        // its own reads would wait: the leader answers them meanwhile.
        if self.args.read_mode == ReadMode::Log || self.shards[shard].storage_full().is_some() {
            match self.route(shard, forwarded) {
                Route::Forward(leader) => {
                    return self.forward(leader, &self.in_shard(shard, &args), true, reply.clone())
                }
                Route::NoLeader => {
                    reply.send(no_leader());
                    return Waits::No;
                }
                Route::Local => {}
            }
        }
        let keys: Vec<Vec<u8>> = args[1..].to_vec();
        let query = move |kv: &KvMachine| {
            let mut r = Vec::new();
            match name.as_str() {
                "GET" => resp::bulk(&mut r, kv.get(&keys[0])),
                "MGET" => return mget_reply(kv, &keys),
                "EXISTS" => resp::integer(
                    &mut r,
                    keys.iter().filter(|k| kv.get(k).is_some()).count() as i64,
                ),
                _ => resp::integer(&mut r, kv.len() as i64),
            }
            r
        };
        let server = self.clone();
        let r = reply.clone();
        let done = move |result: Result<Vec<u8>, NodeError>| match result {
            Ok(bytes) => r.send(bytes),
            Err(err) => server.failed(shard, err, &args, forwarded, true, r),
        };
        batches.get(shard).read_with(query, done);
        Waits::Local
    }

    /// Answers a command the node refused or could not finish: forwarded to the new leader
    /// if leadership moved before anything was done, otherwise the error.
    fn failed(
        &self,
        shard: usize,
        err: NodeError,
        args: &[Vec<u8>],
        forwarded: bool,
        read_only: bool,
        reply: ReplyTo,
    ) {
        match err {
            NodeError::NotLeader { leader: Some(l) }
                if !forwarded && l != self.args.id && !self.reads_here(read_only) =>
            {
                // The deadline the command already has covers the forwarded trip too.
                let _ = self.forward(l, &self.in_shard(shard, args), read_only, reply);
            }
            NodeError::Transferring { .. } | NodeError::NotLeader { leader: None }
                if !read_only && !forwarded =>
            {
                // Nothing was done: the write waits for the new leader. Its deadline stands.
                self.park(self.in_shard(shard, args), reply);
            }
            err => reply.send(error_reply(&err)),
        }
    }

    /// Holds a write that nothing was done with until a leader is known (see [`retry_parked`]).
    fn park(&self, args: Vec<Vec<u8>>, reply: ReplyTo) {
        if let Err(std::sync::mpsc::SendError(p)) = self.parked.send(Parked { args, reply }) {
            p.reply.send(no_leader());
        }
    }

    /// Whether a command is served by this node whoever leads (reads, except in log mode).
    fn reads_here(&self, read_only: bool) -> bool {
        read_only && self.args.read_mode != ReadMode::Log
    }

    /// Runs `RAFTKIT.TRANSFER` in shard `shard`: answered once this node follows `to` (or the
    /// transfer failed).
    fn transfer(&self, shard: usize, to: NodeId, reply: ReplyTo) -> Waits {
        self.shards[shard].transfer_leader_with(to, move |result| {
            let mut r = Vec::new();
            match result {
                Ok(()) => resp::simple(&mut r, "OK"),
                Err(NodeError::NotAVoter(id)) => {
                    resp::error(&mut r, &format!("ERR node {id} is not a voter"))
                }
                Err(err) => r = error_reply(&err),
            }
            reply.send(r);
        });
        Waits::Local
    }

    fn route(&self, shard: usize, forwarded: bool) -> Route {
        let node = &self.shards[shard];
        if node.is_leader() {
            return Route::Local;
        }
        match node.leader() {
            Some(leader) if !forwarded && leader != self.args.id => Route::Forward(leader),
            _ => Route::NoLeader,
        }
    }

    /// Hands a command to the leader's client port; its reply goes to `reply`.
    fn forward(&self, leader: NodeId, args: &[Vec<u8>], read_only: bool, reply: ReplyTo) -> Waits {
        let Some(addr) = self.book.client_addr(leader) else {
            reply.send(no_leader());
            return Waits::No;
        };
        let forwarder = {
            let mut all = self.forwarders.lock();
            match all.get(&leader) {
                Some(f) => f.clone(),
                None => {
                    let stuck_after = self.args.request_timeout + Duration::from_secs(2);
                    let parked = self.parked.clone();
                    let retry: forward::Retry = Arc::new(move |args, reply| {
                        let _ = parked.send(Parked { args, reply });
                    });
                    match Forwarder::start(addr, stuck_after, retry) {
                        Ok(f) => all.entry(leader).or_insert(Arc::new(f)).clone(),
                        Err(err) => {
                            tracing::error!(%err, "cannot start a forwarding thread");
                            reply.send(no_leader());
                            return Waits::No;
                        }
                    }
                }
            }
        };
        forwarder.send(args, read_only, reply);
        Waits::Forwarded
    }
}

/// Whether a command reads or writes the data (for the order of a connection's commands).
fn command_kind(args: &[Vec<u8>]) -> Kind {
    let name = &args[0];
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if ["GET", "MGET", "EXISTS", "DBSIZE"].iter().any(|n| is(n)) {
        Kind::Read
    } else if ["SET", "DEL", "INCR", "DECR", "INCRBY", "DECRBY"].iter().any(|n| is(n)) {
        Kind::Write
    } else {
        Kind::Other
    }
}

enum Route {
    Local,
    Forward(NodeId),
    NoLeader,
}

/// Which deadline a started command needs (the longest of its parts' for a split command).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Waits {
    /// None: it was answered.
    No,
    /// The request timeout: it waits for this node.
    Local,
    /// A little more: it waits for the leader, which has its own timeout.
    Forwarded,
}

/// Answers at once with what `f` writes.
fn answer_now(reply: &ReplyTo, f: &dyn Fn(&mut Vec<u8>)) -> Waits {
    let mut r = Vec::new();
    f(&mut r);
    reply.send(r);
    Waits::No
}

fn arity_error(r: &mut Vec<u8>, name: &str) {
    let line = format!("ERR wrong number of arguments for '{}' command", name.to_lowercase());
    resp::error(r, &line);
}

fn unknown_command(r: &mut Vec<u8>, name: &[u8]) {
    resp::error(r, &format!("ERR unknown command '{}'", String::from_utf8_lossy(name)));
}

fn mget_reply(kv: &KvMachine, keys: &[Vec<u8>]) -> Vec<u8> {
    let mut r = Vec::new();
    resp::array_header(&mut r, keys.len());
    for k in keys {
        resp::bulk(&mut r, kv.get(k));
    }
    r
}

fn no_leader() -> Vec<u8> {
    let mut r = Vec::new();
    resp::error(&mut r, "NOLEADER no leader is known; nothing was done, retry");
    r
}

/// The error reply for a node error.
fn error_reply(err: &NodeError) -> Vec<u8> {
    let mut r = Vec::new();
    resp::error(&mut r, &error_line(err));
    r
}

/// The error line for a node error, by whether anything may have happened.
fn error_line(err: &NodeError) -> String {
    match err {
        NodeError::Busy { .. } => format!("BUSY {err}"),
        NodeError::StorageFull { .. } => format!("DISKFULL {err}"),
        e if e.nothing_done() => format!("NOLEADER {err}"),
        _ => format!("TIMEOUT {err}"),
    }
}

/// How often parked writes are started again: a transfer takes a few milliseconds, and a
/// parked write should follow the new leader within a fraction of that.
const PARK_RETRY: Duration = Duration::from_micros(250);

/// Starts parked writes again every `PARK_RETRY`, as if each had just arrived, so it goes to
/// whichever node leads now. A write parked for half its request timeout is answered
/// `-NOLEADER` (nothing was done) rather than left to time out with its outcome unknown.
fn retry_parked(server: std::sync::Weak<Server>, parked: Receiver<Parked>) {
    let mut waiting: Vec<Parked> = Vec::new();
    loop {
        if waiting.is_empty() {
            match parked.recv() {
                Ok(p) => waiting.push(p),
                Err(_) => return,
            }
        }
        std::thread::sleep(PARK_RETRY);
        waiting.extend(parked.try_iter());
        let Some(server) = server.upgrade() else { return };
        let give_up = server.args.request_timeout / 2;
        let mut batches = shards::Batches::new(&server);
        for p in waiting.drain(..) {
            if p.reply.age() > give_up {
                p.reply.send(no_leader());
            } else {
                let _ = server.start_command(p.args, false, &p.reply, &mut batches);
            }
        }
        batches.submit();
    }
}

/// How often [`run`] looks for a failed node.
const FAILURE_CHECK: Duration = Duration::from_millis(50);

/// With shards, how often each node pings each other one, standing in for the heartbeats of
/// its sleeping groups: every 10 ticks, and at least every 200 ms (a long tick, with many
/// shards, must not make a dead node's groups wait longer to find out).
fn liveness_ping(tick: Duration) -> Duration {
    (tick * 10).min(Duration::from_millis(200))
}

/// After how many pings' worth of silence a peer counts as down: its sleeping groups then wake
/// and elect another leader (a false alarm costs only a heartbeat: the leader answers the
/// campaign).
const LIVENESS_DOWN_PINGS: u32 = 10;

/// With shards, the ticks a group with nothing to do waits before it sleeps (a few election
/// timeouts: a busy group never sleeps, an idle one soon does).
const HIBERNATE_TICKS: u32 = 50;

/// How many parts each shard's map has: the map is copied on write part by part while a
/// snapshot is written, so a big map wants many; thousands of small shards want few (each part
/// costs memory even when empty).
fn kv_parts(shards: usize) -> usize {
    (256 / shards).clamp(1, 256)
}

/// Runs a server until the process is killed, or until its Raft node fails (a failed fsync,
/// say): then it returns [`ServerError::NodeFailed`], and a restart recovers from the data
/// directory.
pub fn run(args: ServerArgs) -> Result<(), ServerError> {
    let (server, listener) = Server::start(args)?;
    let serving = server.clone();
    let clients = std::thread::Builder::new()
        .name("kv-serve".into())
        .spawn(move || serving.serve(listener))
        .map_err(|e| ServerError::Node(NodeError::Spawn(e)))?;
    loop {
        // With shards, the runtime counts failed nodes: ten thousand nodes' states are locked
        // only once one failed (locking each every 50 ms was most of an idle server's CPU).
        if server.runtime().is_none_or(|r| r.failed_nodes() > 0) {
            if let Some(why) = server.shards.iter().find_map(Node::failure) {
                return Err(ServerError::NodeFailed(why));
            }
        }
        if clients.is_finished() {
            return match clients.join() {
                Ok(result) => result.map_err(|source| ServerError::Serve { source }),
                Err(_) => Err(ServerError::Serve { source: std::io::Error::other("panicked") }),
            };
        }
        std::thread::sleep(FAILURE_CHECK);
    }
}
