//! A local cluster of server processes on loopback, each with its own data directory under one
//! temporary directory: what the demo, the process tests and the cluster benchmark run.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raft_core::node::ReadMode;
use raft_core::NodeId;
use raft_wal::Durability;

use crate::client::{info_field, Client};
use crate::resp::Reply;
use crate::server::{LogStoreKind, ServerArgs};

/// How to build a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Number of nodes (ids 1..=nodes).
    pub nodes: usize,
    /// The cluster id every node is given.
    pub cluster_id: u64,
    /// The log store of every node.
    pub log_store: LogStoreKind,
    /// The log store's durability mode on every node.
    pub durability: Durability,
    /// WAL segment size of every node, in MiB.
    pub wal_segment_mib: u64,
    /// Where the nodes' data directories go (`<root>/node-<id>`); by default the cluster's
    /// temporary directory. (A test can mount a small filesystem there first.)
    pub data_root: Option<PathBuf>,
    /// Snapshot every this many applied entries.
    pub snapshot_entries: u64,
    /// Raft tick (`None`: the server's default for the shard count, see
    /// [`default_tick`](crate::server::default_tick)).
    pub tick: Option<Duration>,
    /// How reads are made linearizable.
    pub read_mode: ReadMode,
    /// Accept `RAFTKIT.DEBUG` (fault injection).
    pub debug_commands: bool,
    /// Request timeout of every node.
    pub request_timeout: Duration,
    /// `RUST_LOG` for the nodes (their logs go to `node-<id>.log` in the cluster's directory).
    pub log_filter: String,
    /// `--shards` of every node.
    pub shards: usize,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            nodes: 3,
            cluster_id: 1,
            log_store: LogStoreKind::Wal,
            durability: Durability::Always,
            wal_segment_mib: 64,
            shards: 1,
            data_root: None,
            snapshot_entries: 100_000,
            tick: None,
            read_mode: ReadMode::Index,
            debug_commands: false,
            request_timeout: Duration::from_secs(3),
            log_filter: "info".into(),
        }
    }
}

/// Server processes on loopback.
pub struct LocalCluster {
    dir: tempfile::TempDir,
    program: PathBuf,
    prefix: Vec<String>,
    specs: BTreeMap<NodeId, ServerArgs>,
    children: BTreeMap<NodeId, Child>,
    log_filter: String,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("dir", &self.dir.path())
            .field("running", &self.running())
            .finish()
    }
}

/// Free loopback ports, found by binding port 0 (released again before the nodes bind them).
fn free_addrs(n: usize) -> io::Result<Vec<SocketAddr>> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    listeners.iter().map(TcpListener::local_addr).collect()
}

impl LocalCluster {
    /// Starts `options.nodes` processes of `program prefix... <server flags>`.
    pub fn start(
        program: impl Into<PathBuf>,
        prefix: Vec<String>,
        options: &ClusterOptions,
    ) -> io::Result<LocalCluster> {
        let dir = tempfile::Builder::new().prefix("raftkit-cluster-").tempdir()?;
        let addrs = free_addrs(options.nodes * 2)?;
        let ids: Vec<NodeId> = (1..=options.nodes as u64).collect();
        let addr_of = |id: NodeId| (addrs[(id as usize - 1) * 2], addrs[(id as usize - 1) * 2 + 1]);
        let mut specs = BTreeMap::new();
        for &id in &ids {
            let (raft_addr, client_addr) = addr_of(id);
            specs.insert(
                id,
                ServerArgs {
                    id,
                    cluster_id: options.cluster_id,
                    raft_addr,
                    client_addr,
                    peers: ids.iter().filter(|&&p| p != id).map(|&p| (p, addr_of(p))).collect(),
                    data_dir: options
                        .data_root
                        .as_deref()
                        .unwrap_or(dir.path())
                        .join(format!("node-{id}")),
                    log_store: options.log_store,
                    durability: options.durability,
                    wal_segment_mib: options.wal_segment_mib,
                    request_timeout: options.request_timeout,
                    snapshot_entries: options.snapshot_entries,
                    tick: options
                        .tick
                        .unwrap_or_else(|| crate::server::default_tick(options.shards)),
                    heartbeat_ticks: crate::server::default_heartbeat_ticks(
                        options.shards,
                        options.read_mode,
                    ),
                    read_mode: options.read_mode,
                    debug_commands: options.debug_commands,
                    join: None,
                    shards: options.shards,
                },
            );
        }
        let mut cluster = LocalCluster {
            dir,
            program: program.into(),
            prefix,
            specs,
            children: BTreeMap::new(),
            log_filter: options.log_filter.clone(),
        };
        for id in ids {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// The cluster's temporary directory (data directories and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The settings node `id` runs with; change them before [`spawn`](LocalCluster::spawn).
    pub fn spec_mut(&mut self, id: NodeId) -> Option<&mut ServerArgs> {
        self.specs.get_mut(&id)
    }

    /// Node ids, running or not.
    pub fn ids(&self) -> Vec<NodeId> {
        self.specs.keys().copied().collect()
    }

    /// Node ids with a running process.
    pub fn running(&self) -> Vec<NodeId> {
        self.children.keys().copied().collect()
    }

    /// Where node `id` logs.
    pub fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    /// Node `id`'s client address.
    pub fn client_addr(&self, id: NodeId) -> SocketAddr {
        self.specs[&id].client_addr
    }

    /// The process id of node `id`, if running.
    pub fn pid(&self, id: NodeId) -> Option<u32> {
        self.children.get(&id).map(Child::id)
    }

    /// Starts node `id`'s process (its log is appended to).
    pub fn spawn(&mut self, id: NodeId) -> io::Result<()> {
        let spec = self.specs.get(&id).ok_or_else(|| io::Error::other(format!("no node {id}")))?;
        let log = OpenOptions::new().create(true).append(true).open(self.log_path(id))?;
        let child = Command::new(&self.program)
            .args(&self.prefix)
            .args(spec.to_args())
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.children.insert(id, child);
        Ok(())
    }

    /// Kills node `id` with SIGKILL and reaps it.
    pub fn kill(&mut self, id: NodeId) -> io::Result<()> {
        if let Some(mut child) = self.children.remove(&id) {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`...) to node `id`'s process.
    pub fn signal(&self, id: NodeId, signal: &str) -> io::Result<()> {
        let pid =
            self.pid(id).ok_or_else(|| io::Error::other(format!("node {id} is not running")))?;
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
        if !status.success() {
            return Err(io::Error::other(format!("kill -{signal} {pid} failed")));
        }
        Ok(())
    }

    /// Whether node `id`'s process has exited (reaping it if so).
    pub fn exited(&mut self, id: NodeId) -> bool {
        match self.children.get_mut(&id).map(Child::try_wait) {
            Some(Ok(Some(_))) => {
                self.children.remove(&id);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// A client of node `id`.
    pub fn client(&self, id: NodeId, timeout: Duration) -> io::Result<Client> {
        Client::connect(self.client_addr(id), timeout)
    }

    /// Node `id`'s own copy of `keys` (`RAFTKIT.LOCALMGET`: not through the leader, possibly
    /// stale), `None` for a missing key.
    pub fn local_values(&self, id: NodeId, keys: &[String]) -> io::Result<Vec<Option<String>>> {
        let mut client = self.client(id, Duration::from_secs(5))?;
        let mut args: Vec<&[u8]> = vec![b"RAFTKIT.LOCALMGET"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        match client.call(&args)? {
            Reply::Array(Some(values)) => Ok(values.iter().map(Reply::as_text).collect()),
            other => Err(io::Error::other(format!("LOCALMGET answered {other:?}"))),
        }
    }

    /// Node `id`'s `INFO raft` fields.
    pub fn info(&self, id: NodeId) -> io::Result<Vec<(String, String)>> {
        self.client(id, Duration::from_secs(2))?.info()
    }

    /// A numeric `INFO raft` field of node `id`.
    pub fn info_u64(&self, id: NodeId, field: &str) -> Option<u64> {
        let info = self.info(id).ok()?;
        info_field(&info, field)?.parse().ok()
    }

    /// The leader and its term, once a running node says it leads (and no running node with
    /// a higher term disagrees), waiting at most `timeout`.
    pub fn wait_for_leader(&self, timeout: Duration) -> Option<(NodeId, u64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut best: Option<(NodeId, u64)> = None;
            let mut max_term = 0;
            for id in self.running() {
                let Ok(info) = self.info(id) else { continue };
                let term: u64 = info_field(&info, "term").and_then(|t| t.parse().ok()).unwrap_or(0);
                max_term = max_term.max(term);
                if info_field(&info, "role") == Some("leader") && best.is_none_or(|(_, t)| term > t)
                {
                    best = Some((id, term));
                }
            }
            if let Some((id, term)) = best {
                if term >= max_term {
                    return Some((id, term));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes `{value_prefix}{i}` to `keys[i]` for every key through node `id`, pipelined 500 at
    /// a time, writing again those not acknowledged until every one is (a SET may be repeated
    /// safely).
    pub fn set_all(
        &self,
        id: NodeId,
        keys: &[String],
        value_prefix: &str,
        timeout: Duration,
    ) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut left: Vec<usize> = (0..keys.len()).collect();
        while !left.is_empty() {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("{} writes never acknowledged", left.len())));
            }
            let Ok(mut client) = self.client(id, Duration::from_secs(30)) else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let mut retry = Vec::new();
            for chunk in left.chunks(500) {
                for &i in chunk {
                    let value = format!("{value_prefix}{i}");
                    client.send(&[b"SET", keys[i].as_bytes(), value.as_bytes()])?;
                }
                client.flush()?;
                for &i in chunk {
                    match client.read() {
                        Ok(Reply::Simple(ok)) if ok == "OK" => {}
                        _ => retry.push(i),
                    }
                }
            }
            left = retry;
            if !left.is_empty() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// Waits until every running node has applied at least `index`.
    pub fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .running()
                .iter()
                .all(|&id| self.info_u64(id, "applied_index").is_some_and(|a| a >= index))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts node `id` as a new process that joins the cluster through node `via` (its
    /// `--join`), with the settings of node `like` and fresh addresses and data directory. The
    /// node asks to be added as a learner.
    pub fn spawn_joining(&mut self, id: NodeId, via: NodeId, like: NodeId) -> io::Result<()> {
        let addrs = free_addrs(2)?;
        let mut spec =
            self.specs.get(&like).cloned().ok_or_else(|| io::Error::other("no such node"))?;
        spec.id = id;
        spec.raft_addr = addrs[0];
        spec.client_addr = addrs[1];
        spec.peers = BTreeMap::new();
        spec.join = Some(self.client_addr(via));
        spec.data_dir = self.dir.path().join(format!("node-{id}"));
        self.specs.insert(id, spec);
        self.spawn(id)
    }

    /// Kills node `id` and deletes its data directory (a disk that is gone).
    pub fn wipe(&mut self, id: NodeId) -> io::Result<()> {
        self.kill(id)?;
        let dir = self.specs.get(&id).map(|s| s.data_dir.clone());
        match dir {
            Some(dir) if dir.exists() => std::fs::remove_dir_all(dir),
            _ => Ok(()),
        }
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: NodeId) -> Option<PathBuf> {
        self.specs.get(&id).map(|s| s.data_dir.clone())
    }

    /// Kills every node.
    pub fn kill_all(&mut self) {
        for id in self.running() {
            let _ = self.kill(id);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            // A stopped process must be continued to die promptly on some systems.
            let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
