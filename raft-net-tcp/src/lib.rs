//! # raft-net-tcp
//!
//! A TCP [`Transport`] for raft-core on std threads.
//!
//! - **One connection per peer pair**, shared by every group of the two processes and used in
//!   both directions. The node with the lower id dials; the other accepts. A broken connection
//!   is redialled with exponential backoff and jitter.
//! - **Handshake**: the dialer names its cluster id, node id, the node it means to reach and
//!   its protocol version; the acceptor answers with a verdict. A peer of another cluster or
//!   version, or an unknown node, is refused with a clear reason on both sides (logged and
//!   counted) and never gets a message into the node.
//! - **Frames**: length, CRC32C, payload (a [`Message`] in raft-core's [`wire`](raft_core::wire) encoding); see [`frame`]. A frame over
//!   the maximum or with a bad checksum closes the connection and is counted; the claimed length
//!   is never allocated up front; decoding never panics.
//! - **Queues**: each peer has a bounded queue and a writer thread that sends everything queued
//!   in one write (TCP_NODELAY on). A full queue drops the message and counts it: Raft resends.
//!   Snapshot chunks wait in a separate, small queue and go out one at a time between batches of
//!   other messages, so heartbeats and appends never queue behind a snapshot.
//! - **Metrics** per peer ([`PeerMetrics`]): connected, frames and bytes each way, drops,
//!   reconnects, bad frames, refused handshakes.
//!
//! ```no_run
//! use std::sync::Arc;
//! use raft_core::Router;
//! use raft_net_tcp::{TcpConfig, TcpTransport};
//!
//! let router = Arc::new(Router::new());
//! let mut config = TcpConfig::new(42, 1, "127.0.0.1:7001".parse().unwrap());
//! config.peers.insert(2, "127.0.0.1:7002".parse().unwrap());
//! config.peers.insert(3, "127.0.0.1:7003".parse().unwrap());
//! let transport = TcpTransport::start(config, router.clone()).unwrap();
//! // Start a raft_core::node::Node with `transport`, then
//! // router.register(group, node.inbound())?.
//! # drop(transport);
//! ```

#![deny(missing_docs)]

pub mod frame;
mod peer;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use raft_core::{GroupId, Inbound, Membership, Message, NodeId, Transport};

use frame::{Answer, Hello, Verdict, ANSWER_LEN, HELLO_LEN, PROTOCOL_VERSION};
use peer::Peer;
use raft_core::wire::MESSAGE_FORMAT_VERSION;

/// Transport settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    /// Identifies the cluster: peers with another id are refused.
    pub cluster_id: u64,
    /// This node's id.
    pub node_id: NodeId,
    /// Where to listen for peers.
    pub listen: SocketAddr,
    /// Every other node of the cluster and its address.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Largest frame payload accepted or sent, in bytes. Must exceed the core's largest message
    /// (`append_bytes_max`, `snapshot_chunk_bytes`, plus a little).
    pub max_frame_bytes: u32,
    /// Messages queued per peer before new ones are dropped.
    pub queue_capacity: usize,
    /// Snapshot chunks queued per peer before new ones are dropped.
    pub bulk_queue_capacity: usize,
    /// First wait before redialling a peer; doubles per failure up to `backoff_max`, with up to
    /// half of it added at random.
    pub backoff_min: Duration,
    /// Longest wait between dials. Short by default (250 ms): only the lower id of a pair
    /// dials, so a restarted peer with the higher id is reachable only once the other side's
    /// next dial comes, and a dial to a dead peer is cheap.
    pub backoff_max: Duration,
    /// Longest a dial, or a handshake, may take.
    pub connect_timeout: Duration,
}

impl TcpConfig {
    /// Settings for node `node_id` of cluster `cluster_id` listening on `listen`, with no peers
    /// yet and every other setting at its default.
    pub fn new(cluster_id: u64, node_id: NodeId, listen: SocketAddr) -> TcpConfig {
        TcpConfig {
            cluster_id,
            node_id,
            listen,
            peers: BTreeMap::new(),
            max_frame_bytes: 64 << 20,
            queue_capacity: 8192,
            bulk_queue_capacity: 4,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// Settings for node `node_id` of a cluster whose every node's address is in `nodes`
    /// (this node's included): it listens on its own address, and the others are its peers. So
    /// one map of the cluster, shared by every node, configures them all.
    ///
    /// # Errors
    /// [`NetError::Config`] if `node_id` is not in `nodes`.
    pub fn for_cluster(
        cluster_id: u64,
        node_id: NodeId,
        nodes: &BTreeMap<NodeId, SocketAddr>,
    ) -> Result<TcpConfig, NetError> {
        let Some(&listen) = nodes.get(&node_id) else {
            let known: Vec<NodeId> = nodes.keys().copied().collect();
            return Err(NetError::Config(format!("node {node_id} is not among {known:?}")));
        };
        let mut config = TcpConfig::new(cluster_id, node_id, listen);
        config.peers =
            nodes.iter().filter(|(&id, _)| id != node_id).map(|(&id, &a)| (id, a)).collect();
        Ok(config)
    }

    fn validate(&self) -> Result<(), NetError> {
        let bad = |what: String| Err(NetError::Config(what));
        if self.node_id == 0 {
            return bad("node id 0 is reserved".into());
        }
        if self.peers.contains_key(&self.node_id) {
            return bad(format!("node {} is listed among its own peers", self.node_id));
        }
        if self.peers.contains_key(&0) {
            return bad("peer id 0 is reserved".into());
        }
        if self.max_frame_bytes < 1024 {
            return bad(format!("max_frame_bytes {} is below 1024", self.max_frame_bytes));
        }
        if self.queue_capacity == 0 || self.bulk_queue_capacity == 0 {
            return bad("queue capacities must be positive".into());
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad("backoff_min must be positive and at most backoff_max".into());
        }
        Ok(())
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The settings contradict themselves.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("could not start a thread: {0}")]
    Spawn(std::io::Error),
}

/// One peer's counters, as seen by [`TcpTransport::metrics`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMetrics {
    /// The peer.
    pub peer: NodeId,
    /// Its address.
    pub addr: Option<SocketAddr>,
    /// Whether a connection is up.
    pub connected: bool,
    /// Frames written to the peer.
    pub frames_sent: u64,
    /// Bytes written to the peer (headers included).
    pub bytes_sent: u64,
    /// Frames received from the peer.
    pub frames_received: u64,
    /// Bytes received from the peer (headers included).
    pub bytes_received: u64,
    /// Messages dropped because the peer's queue was full.
    pub dropped: u64,
    /// Connections established after the first.
    pub reconnects: u64,
    /// Connections closed for a frame that was too large, corrupt or undecodable, or a
    /// message that named another sender or receiver.
    pub bad_frames: u64,
    /// Handshakes refused (by either side).
    pub refused: u64,
}

/// Counters of the whole transport.
#[derive(Debug, Default)]
struct Counters {
    unknown_peer: AtomicU64,
    refused_unknown: AtomicU64,
}

/// What the threads share.
struct Inner {
    config: TcpConfig,
    /// Peers by id; added and replaced at runtime ([`TcpTransport::add_peer`]).
    peers: RwLock<BTreeMap<NodeId, Arc<Peer>>>,
    inbound: Arc<dyn Inbound>,
    closed: AtomicBool,
    counters: Counters,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A running TCP transport. Cheap to share (`Arc`); [`shutdown`](TcpTransport::shutdown) (or
/// dropping the last handle) closes every connection and joins every thread.
pub struct TcpTransport {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("node", &self.inner.config.node_id)
            .field("listen", &self.local_addr)
            .finish()
    }
}

impl TcpTransport {
    /// Binds the listening address and starts the acceptor and one writer per peer. Messages
    /// received are handed to `inbound` (a [`Router`](raft_core::Router) for many groups).
    pub fn start(config: TcpConfig, inbound: Arc<dyn Inbound>) -> Result<TcpTransport, NetError> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen)
            .map_err(|source| NetError::Bind { addr: config.listen, source })?;
        TcpTransport::start_with_listener(config, listener, inbound)
    }

    /// [`start`](TcpTransport::start) on a listener the caller bound already (`config.listen`
    /// is then ignored): lets a caller bind port 0 for every node first, then tell each node
    /// its peers' addresses.
    pub fn start_with_listener(
        config: TcpConfig,
        listener: TcpListener,
        inbound: Arc<dyn Inbound>,
    ) -> Result<TcpTransport, NetError> {
        config.validate()?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| NetError::Bind { addr: config.listen, source })?;
        let peers = config
            .peers
            .iter()
            .map(|(&id, &addr)| (id, Arc::new(Peer::new(id, addr, &config))))
            .collect();
        let inner = Arc::new(Inner {
            config,
            peers: RwLock::new(peers),
            inbound,
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            threads: Mutex::new(Vec::new()),
        });
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name).spawn(f).map_err(NetError::Spawn)
        };
        let me = inner.config.node_id;
        let acceptor = {
            let inner = inner.clone();
            spawn(format!("net-{me}-accept"), Box::new(move || accept_loop(&inner, listener)))?
        };
        inner.threads.lock().push(acceptor);
        let peers: Vec<Arc<Peer>> = inner.peers.read().values().cloned().collect();
        for peer in &peers {
            start_writer(&inner, peer)?;
        }
        tracing::info!(node = me, listen = %local_addr, peers = peers.len(), "transport started");
        Ok(TcpTransport { inner, local_addr })
    }

    /// Adds peer `id` at `addr` (or moves it there), while the transport runs: messages for it
    /// are queued from now on, and the lower id of the two dials. Adding a peer again at the
    /// same address does nothing.
    ///
    /// # Errors
    /// [`NetError::Config`] for this node's own id or id 0, or once the transport is shut down;
    /// [`NetError::Spawn`] if its writer thread cannot start.
    pub fn add_peer(&self, id: NodeId, addr: SocketAddr) -> Result<(), NetError> {
        let me = self.inner.config.node_id;
        if id == me || id == 0 {
            return Err(NetError::Config(format!("node {me} cannot have peer {id}")));
        }
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(NetError::Config("the transport is shut down".into()));
        }
        let peer = {
            let mut peers = self.inner.peers.write();
            if peers.get(&id).is_some_and(|p| p.addr == addr) {
                return Ok(());
            }
            let peer = Arc::new(Peer::new(id, addr, &self.inner.config));
            if let Some(old) = peers.insert(id, peer.clone()) {
                tracing::info!(peer = id, from = %old.addr, to = %addr, "peer moved");
                old.close();
            } else {
                tracing::info!(peer = id, %addr, "peer added");
            }
            peer
        };
        start_writer(&self.inner, &peer)
    }

    /// Drops peer `id`: its connection closes, messages for it are dropped (and counted as for
    /// an unknown node), and its connections are refused. Returns whether it was a peer.
    pub fn remove_peer(&self, id: NodeId) -> bool {
        let removed = self.inner.peers.write().remove(&id);
        if let Some(peer) = &removed {
            tracing::info!(peer = id, addr = %peer.addr, "peer removed");
            peer.close();
        }
        removed.is_some()
    }

    /// The peers and their addresses, by id.
    pub fn peers(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.inner.peers.read().iter().map(|(&id, p)| (id, p.addr)).collect()
    }

    /// The address the transport listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Per-peer counters, ordered by peer id.
    pub fn metrics(&self) -> Vec<PeerMetrics> {
        self.inner.peers.read().values().map(|p| p.metrics()).collect()
    }

    /// Messages handed to [`send`](Transport::send) for a node that is not a peer.
    pub fn unknown_peer_messages(&self) -> u64 {
        self.inner.counters.unknown_peer.load(Ordering::Relaxed)
    }

    /// Handshakes refused because the dialer was not a known peer (or not a raftkit node).
    pub fn refused_unknown(&self) -> u64 {
        self.inner.counters.refused_unknown.load(Ordering::Relaxed)
    }

    /// Closes every connection and joins every thread. Queued messages are dropped.
    pub fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        for peer in self.inner.peers.read().values() {
            peer.close();
        }
        // Wake the acceptor, which is blocked in accept().
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_millis(200));
        let threads: Vec<_> = self.inner.threads.lock().drain(..).collect();
        for thread in threads {
            let _ = thread.join();
        }
        tracing::info!(node = self.inner.config.node_id, "transport stopped");
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Transport for TcpTransport {
    fn send(&self, msg: Message) {
        self.send_to(msg.to, vec![msg]);
    }

    /// A group's new members become peers at the address their configuration gives (see
    /// [`raft_address`]); members that moved are redialled at their new address. Nodes that
    /// left stay peers (so a removed node that still runs hears that it was removed) until
    /// [`remove_peer`](TcpTransport::remove_peer).
    fn membership_changed(&self, group: GroupId, membership: &Membership) {
        for (&id, address) in &membership.addresses {
            if id == self.inner.config.node_id {
                continue;
            }
            match raft_address(address) {
                Some(addr) => {
                    if let Err(err) = self.add_peer(id, addr) {
                        tracing::warn!(group, peer = id, %err, "could not add a new member as a peer");
                    }
                }
                None => tracing::warn!(
                    group,
                    peer = id,
                    address,
                    "a member's address is not HOST:PORT; it is not a peer"
                ),
            }
        }
    }

    /// Messages for one peer that come together leave together: one write for all of them
    /// (a follower's acknowledgements of several appends, a leader's appends and heartbeat).
    fn send_all(&self, msgs: Vec<Message>) {
        let mut run: Vec<Message> = Vec::new();
        for msg in msgs {
            if run.last().is_some_and(|last| last.to != msg.to) {
                let to = run[0].to;
                self.send_to(to, std::mem::take(&mut run));
            }
            run.push(msg);
        }
        if let Some(first) = run.first() {
            self.send_to(first.to, run);
        }
    }
}

/// Starts the thread that writes to `peer` (and dials it, from the lower id).
fn start_writer(inner: &Arc<Inner>, peer: &Arc<Peer>) -> Result<(), NetError> {
    let (inner2, peer2) = (inner.clone(), peer.clone());
    let writer = std::thread::Builder::new()
        .name(format!("net-{}-to-{}", inner.config.node_id, peer.id))
        .spawn(move || peer::writer_loop(&inner2, &peer2))
        .map_err(NetError::Spawn)?;
    let mut threads = inner.threads.lock();
    // Writers of peers removed or moved have ended: let go of their handles.
    threads.retain(|t| !t.is_finished());
    threads.push(writer);
    Ok(())
}

/// The socket address at the start of a member's address: `HOST:PORT`, optionally followed by
/// `,` and anything else (an application's own data, such as a client port).
pub fn raft_address(address: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    let first = address.split(',').next()?.trim();
    first.parse().ok().or_else(|| first.to_socket_addrs().ok()?.next())
}

impl TcpTransport {
    /// Sends messages that are all for node `to`.
    fn send_to(&self, to: NodeId, msgs: Vec<Message>) {
        match self.inner.peers.read().get(&to) {
            Some(peer) => peer.enqueue(msgs, self.inner.config.max_frame_bytes),
            None => {
                let n = msgs.len() as u64;
                self.inner.counters.unknown_peer.fetch_add(n, Ordering::Relaxed);
                tracing::debug!(to, "message for a node that is not a peer dropped");
            }
        }
    }
}

/// Accepts connections; each gets a thread that runs the handshake and then reads frames.
fn accept_loop(inner: &Arc<Inner>, listener: TcpListener) {
    for stream in listener.incoming() {
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let inner2 = inner.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("net-{}-in", inner.config.node_id))
            .spawn(move || {
                if let Some((peer, stream, generation)) = answer_hello(&inner2, stream) {
                    peer::read_loop(&inner2, &peer, stream, generation);
                }
            });
        match spawned {
            // Reader threads end when their connection does; they are not joined.
            Ok(handle) => drop(handle),
            Err(err) => tracing::error!(%err, "could not start a connection thread"),
        }
    }
}

/// The acceptor's side of the handshake. Returns the peer and the stream, installed as the
/// peer's connection, if the dialer is accepted.
fn answer_hello(inner: &Arc<Inner>, mut stream: TcpStream) -> Option<(Arc<Peer>, TcpStream, u64)> {
    let config = &inner.config;
    let remote = stream.peer_addr().ok();
    let _ = stream.set_read_timeout(Some(config.connect_timeout));
    let mut hello = [0u8; HELLO_LEN];
    if let Err(err) = stream.read_exact(&mut hello) {
        if !inner.closed.load(Ordering::SeqCst) {
            tracing::debug!(?remote, %err, "connection closed before its handshake");
        }
        return None;
    }
    let Some(hello) = Hello::decode(&hello) else {
        inner.counters.refused_unknown.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(?remote, "refused a connection that is not a raftkit peer (bad magic)");
        return None;
    };
    let peer = inner.peers.read().get(&hello.from).cloned();
    let verdict = if hello.version != PROTOCOL_VERSION {
        Verdict::WrongVersion
    } else if hello.format != MESSAGE_FORMAT_VERSION {
        Verdict::WrongMessageFormat
    } else if hello.cluster != config.cluster_id {
        Verdict::WrongCluster
    } else if peer.is_none() {
        Verdict::UnknownNode
    } else if hello.to != config.node_id {
        Verdict::WrongTarget
    } else if hello.from > config.node_id {
        Verdict::WrongDirection
    } else {
        Verdict::Accepted
    };
    let answer = Answer {
        version: PROTOCOL_VERSION,
        verdict,
        cluster: config.cluster_id,
        node: config.node_id,
    };
    let _ = stream.write_all(&answer.encode());
    if verdict != Verdict::Accepted {
        match &peer {
            Some(p) => p.count_refused(),
            None => {
                inner.counters.refused_unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
        tracing::error!(
            ?remote,
            ?verdict,
            their_node = hello.from,
            their_cluster = hello.cluster,
            their_version = hello.version,
            their_message_format = hello.format,
            our_cluster = config.cluster_id,
            our_version = PROTOCOL_VERSION,
            our_message_format = MESSAGE_FORMAT_VERSION,
            "refused a peer's connection"
        );
        let _ = stream.shutdown(Shutdown::Both);
        return None;
    }
    let peer = peer?;
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_nodelay(true);
    let reader = stream.try_clone().ok()?;
    let generation = peer.install(stream)?;
    tracing::info!(peer = peer.id, ?remote, "peer connected (accepted)");
    Some((peer, reader, generation))
}

/// The dialer's side: connect, send the hello, check the answer.
fn dial(inner: &Inner, peer: &Peer) -> Result<TcpStream, String> {
    let config = &inner.config;
    let mut stream = TcpStream::connect_timeout(&peer.addr, config.connect_timeout)
        .map_err(|e| format!("connect to {}: {e}", peer.addr))?;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(config.connect_timeout));
    let hello = Hello {
        version: PROTOCOL_VERSION,
        format: MESSAGE_FORMAT_VERSION,
        cluster: config.cluster_id,
        from: config.node_id,
        to: peer.id,
    };
    stream.write_all(&hello.encode()).map_err(|e| format!("send hello: {e}"))?;
    let mut answer = [0u8; ANSWER_LEN];
    stream.read_exact(&mut answer).map_err(|e| format!("read answer: {e}"))?;
    let answer = Answer::decode(&answer).ok_or("the peer is not a raftkit node (bad magic)")?;
    if answer.verdict != Verdict::Accepted {
        peer.count_refused();
        return Err(format!(
            "refused by the peer: {:?} (peer node {}, cluster {}, version {}; ours: cluster {}, version {}, message format {})",
            answer.verdict, answer.node, answer.cluster, answer.version, config.cluster_id, PROTOCOL_VERSION, MESSAGE_FORMAT_VERSION
        ));
    }
    if answer.node != peer.id || answer.cluster != config.cluster_id {
        peer.count_refused();
        return Err(format!(
            "expected node {} of cluster {}, found node {} of cluster {}",
            peer.id, config.cluster_id, answer.node, answer.cluster
        ));
    }
    let _ = stream.set_read_timeout(None);
    Ok(stream)
}
