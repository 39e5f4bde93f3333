//! The server's command line: [`ServerArgs`], `--help` ([`USAGE`]) and the parser.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use raft_core::node::ReadMode;
use raft_core::NodeId;
use raft_wal::Durability;

use super::LogStoreKind;

/// Command-line settings of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerArgs {
    /// This node's id (1 or more).
    pub id: NodeId,
    /// The cluster's id; nodes of another cluster are refused.
    pub cluster_id: u64,
    /// Where this node talks Raft to its peers.
    pub raft_addr: SocketAddr,
    /// Where this node serves Redis-protocol clients.
    pub client_addr: SocketAddr,
    /// Every other node: its Raft address and client address.
    pub peers: BTreeMap<NodeId, (SocketAddr, SocketAddr)>,
    /// Where the WAL and the snapshots live.
    pub data_dir: PathBuf,
    /// Where the log lives.
    pub log_store: LogStoreKind,
    /// When log writes are synced.
    pub durability: Durability,
    /// Size of each WAL segment file, in MiB (`--log-store wal`).
    pub wal_segment_mib: u64,
    /// How long a command may wait for its entry to apply before `-TIMEOUT`.
    pub request_timeout: Duration,
    /// Take a snapshot every this many applied entries (0: by size only, 64 MiB).
    pub snapshot_entries: u64,
    /// Real time per Raft tick (elections after 10 to 20).
    pub tick: Duration,
    /// Ticks between a leader's heartbeats to a follower it sent nothing else to (and between
    /// its heartbeat rounds for reads and leases): 1 to 9.
    pub heartbeat_ticks: u32,
    /// How reads are made linearizable.
    pub read_mode: ReadMode,
    /// Accept `RAFTKIT.DEBUG` (fault injection for tests).
    pub debug_commands: bool,
    /// Join the running cluster that the server at this client address belongs to (instead of
    /// starting a new one with the `--peer` nodes).
    pub join: Option<SocketAddr>,
    /// How many Raft groups the keys are hashed over (1: one group, as before sharding).
    pub shards: usize,
}

/// The most shards (groups) `--shards` takes.
pub const MAX_SHARDS: u64 = 100_000;

/// `--help` text.
pub const USAGE: &str = "\
kv-server: one node of a replicated key-value store that speaks the Redis protocol.

USAGE:
    kv-server --id N --raft-addr HOST:PORT --client-addr HOST:PORT --data-dir DIR
              [--peer ID=RAFT_HOST:PORT,CLIENT_HOST:PORT]... [OPTIONS]

REQUIRED:
    --id N                  this node's id (a positive integer, unique in the cluster)
    --raft-addr ADDR        address for Raft traffic between nodes
    --client-addr ADDR      address for Redis-protocol clients (redis-cli, redis-benchmark)
    --data-dir DIR          directory for the write-ahead log and snapshots (created if missing)
    --peer ID=RAFT,CLIENT   every other node of a new cluster: its id, Raft address and
                            client address (repeat the flag once per peer). Used only to
                            start a new cluster: after the first membership change the
                            members come from the log
    --join CLIENT_ADDR      instead of --peer: join the running cluster of the server at
                            CLIENT_ADDR; the node asks to be added as a learner (promote it
                            with RAFTKIT.PROMOTE once it has caught up)

OPTIONS:
    --cluster-id N          cluster id; nodes with another id are refused [default: 1]
    --log-store STORE       wal | raft-engine | memory [default: wal]
                            wal: raft-wal, every --durability mode; raft-engine: tikv's
                            raft-engine (always and group sync, never does not; interval is
                            refused); memory: nothing survives a restart (tests only)
    --durability MODE       always | group | interval:MS | never [default: always]
                            always: every log write is fsynced before it counts (the
                            node batches the writes of concurrent requests, so they share
                            an fsync; with --shards, the same as group); group: the WAL
                            also gathers concurrent writers of many groups into one fsync
                            (still fsynced before they count);
                            interval:MS: fsync every MS milliseconds;
                            never: no fsync (a power loss can lose acknowledged writes)
    --wal-segment-mib N     size of each WAL segment file (the WAL keeps two more ready
                            ahead of the writer) [default: 64]
    --request-timeout-ms N  how long a command waits before -TIMEOUT [default: 3000]
    --snapshot-entries N    snapshot every N applied entries, and no sooner than the log
                            since the last snapshot is as large as it [default: 100000]
    --tick-ms N             Raft tick; elections after 10-20 ticks [default: 10; with
                            --shards above 1000, 10 per 1000 shards, at most 100]
    --heartbeat-ticks N     ticks between a leader's heartbeats, 1 to 9; a follower that
                            was sent anything else meanwhile gets none [default: 2; with
                            --shards above 1, 5, unless --read-mode lease]
    --read-mode MODE        index | lease | log [default: index]
                            index: the node that gets a read confirms with the leader that
                            it still leads (one heartbeat round shared by concurrent reads)
                            and answers from its own state once it has applied that far;
                            lease: the leader answers from its lease without a round (every
                            node must use lease; clocks must not drift by more than 2 ticks
                            per election timeout); log: a read barrier through the log
    --shards N              hash the keys over N Raft groups (1 to 100000), every node
                            hosting all of them on a fixed set of threads; idle groups
                            sleep; each node leads about N/nodes of them. Every node of
                            the cluster must use the same N, for the data directory's
                            life [default: 1]
    --enable-debug-commands accept RAFTKIT.DEBUG (fault injection for tests)
    -h, --help              print this help

COMMANDS:
    GET, MGET, EXISTS, DBSIZE, SET, DEL, INCR, DECR, INCRBY, DECRBY, PING, ECHO, INFO
    INFO raft               the node's Raft state, read mode and lease
    RAFTKIT.TRANSFER ID [G] hand leadership of group G (default 1) to node ID; +OK once
                            this node follows it
    RAFTKIT.SHARDS          one line per group: leader, role, term, commit, applied, asleep
    RAFTKIT.MEMBERS         every member: [id, voter|learner|leaving, raft addr, client addr]
    RAFTKIT.ADDLEARNER ID RAFT CLIENT   add node ID as a learner (receives the log, no vote)
    RAFTKIT.PROMOTE ID...   make learners voters (refused with -LAGGING until caught up)
    RAFTKIT.REMOVE ID...    remove voters or learners (the leader too: it hands over)
    RAFTKIT.CHANGE OP...    one change of any ADD ID RAFT CLIENT, PROMOTE ID, REMOVE ID
                            (a change of voters goes through a joint configuration);
                            +OK once complete
    RAFTKIT.DEBUG CUT ID... drop Raft messages to and from nodes ID (--enable-debug-commands)
    RAFTKIT.DEBUG HEAL      restore them
    RAFTKIT.DEBUG FAILSYNC  make every later fsync of the log fail (the server then exits)

REPLIES:
    -NOLEADER   no leader known, or leadership changed: nothing was done, retrying is safe
    -BUSY       too many uncommitted writes: nothing was done, retry later
    -DISKFULL   the leader's disk is full: nothing was done. It hands leadership to a
                node with space; retry, or free space (the node recovers by itself)
    -TIMEOUT    no answer in time: the outcome is unknown (the write may or may not apply)
    -TRYAGAIN   a membership change is in flight (or the leader is new): nothing was done
    -LAGGING    the learner to promote has not caught up yet: nothing was done
    -ERR        malformed or unsupported command: nothing was done
";

impl ServerArgs {
    /// Parses command-line arguments (without the program name). `Err` carries a message for
    /// the user; `Ok(None)` means `--help` was asked for.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<ServerArgs>, String> {
        let mut id = None;
        let mut cluster_id = 1;
        let mut raft_addr = None;
        let mut client_addr = None;
        let mut peers = BTreeMap::new();
        let mut data_dir = None;
        let mut durability = Durability::Always;
        let mut wal_segment_mib = 64;
        let mut log_store = LogStoreKind::Wal;
        let mut request_timeout = Duration::from_millis(3000);
        let mut snapshot_entries = 100_000;
        let mut tick = None;
        let mut heartbeat_ticks = None;
        let mut read_mode = ReadMode::Index;
        let mut debug_commands = false;
        let mut join = None;
        let mut shards = 1;
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if flag == "-h" || flag == "--help" {
                return Ok(None);
            }
            if flag == "--enable-debug-commands" {
                debug_commands = true;
                continue;
            }
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            let number =
                |v: String| v.parse::<u64>().map_err(|_| format!("{flag}: not a number: {v}"));
            let addr = |v: String| -> Result<SocketAddr, String> {
                v.parse().map_err(|_| format!("{flag}: not an address (HOST:PORT with an IP): {v}"))
            };
            match flag.as_str() {
                "--id" => id = Some(number(value()?)?),
                "--cluster-id" => cluster_id = number(value()?)?,
                "--raft-addr" => raft_addr = Some(addr(value()?)?),
                "--client-addr" => client_addr = Some(addr(value()?)?),
                "--data-dir" => data_dir = Some(PathBuf::from(value()?)),
                "--join" => join = Some(addr(value()?)?),
                "--peer" => {
                    let v = value()?;
                    let bad = || format!("--peer: expected ID=RAFT_ADDR,CLIENT_ADDR, got {v}");
                    let (pid, rest) = v.split_once('=').ok_or_else(bad)?;
                    let (raft, client) = rest.split_once(',').ok_or_else(bad)?;
                    let pid: NodeId = pid.parse().map_err(|_| bad())?;
                    let raft = raft.parse().map_err(|_| bad())?;
                    let client = client.parse().map_err(|_| bad())?;
                    if peers.insert(pid, (raft, client)).is_some() {
                        return Err(format!("--peer {pid} is given twice"));
                    }
                }
                "--log-store" => {
                    log_store = value()?.parse().map_err(|e| format!("--log-store: {e}"))?
                }
                "--durability" => {
                    let v = value()?;
                    durability = match v.as_str() {
                        "always" => Durability::Always,
                        "group" => Durability::group_commit(),
                        "never" => Durability::Never,
                        other => match other.strip_prefix("interval:").map(str::parse::<u64>) {
                            Some(Ok(ms)) if ms > 0 => Durability::Interval(Duration::from_millis(ms)),
                            _ => return Err(format!("--durability: expected always, group, interval:MS or never, got {v}")),
                        },
                    }
                }
                "--wal-segment-mib" => {
                    wal_segment_mib = number(value()?)?;
                    if !(1..=4095).contains(&wal_segment_mib) {
                        return Err(format!(
                            "--wal-segment-mib must be 1 to 4095, got {wal_segment_mib}"
                        ));
                    }
                }
                "--request-timeout-ms" => {
                    request_timeout = Duration::from_millis(number(value()?)?.max(1))
                }
                "--snapshot-entries" => snapshot_entries = number(value()?)?,
                "--shards" => {
                    let n = number(value()?)?;
                    if !(1..=MAX_SHARDS).contains(&n) {
                        return Err(format!("--shards must be 1 to {MAX_SHARDS}, got {n}"));
                    }
                    shards = n as usize;
                }
                "--tick-ms" => tick = Some(Duration::from_millis(number(value()?)?.max(1))),
                "--heartbeat-ticks" => {
                    let n = number(value()?)?;
                    if !(1..=9).contains(&n) {
                        return Err(format!(
                            "--heartbeat-ticks must be 1 to 9 (elections come after 10 to 20 ticks), got {n}"
                        ));
                    }
                    heartbeat_ticks = Some(n as u32);
                }
                "--read-mode" => {
                    read_mode = value()?.parse().map_err(|e| format!("--read-mode: {e}"))?
                }
                other => return Err(format!("unknown flag {other} (see --help)")),
            }
        }
        let id = id.ok_or("--id is required")?;
        if id == 0 {
            return Err("--id must be positive".into());
        }
        if peers.contains_key(&id) {
            return Err(format!("--peer {id} is this node's own id"));
        }
        if shards > 1 && join.is_some() {
            return Err("--join needs --shards 1: membership changes are not sharded yet".into());
        }
        Ok(Some(ServerArgs {
            id,
            cluster_id,
            raft_addr: raft_addr.ok_or("--raft-addr is required")?,
            client_addr: client_addr.ok_or("--client-addr is required")?,
            peers,
            data_dir: data_dir.ok_or("--data-dir is required")?,
            log_store,
            durability,
            wal_segment_mib,
            request_timeout,
            snapshot_entries,
            tick: tick.unwrap_or_else(|| default_tick(shards)),
            heartbeat_ticks: heartbeat_ticks
                .unwrap_or_else(|| default_heartbeat_ticks(shards, read_mode)),
            read_mode,
            debug_commands,
            join,
            shards,
        }))
    }

    /// The arguments that [`parse`](ServerArgs::parse) turns back into these settings.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "--id".into(),
            self.id.to_string(),
            "--cluster-id".into(),
            self.cluster_id.to_string(),
            "--raft-addr".into(),
            self.raft_addr.to_string(),
            "--client-addr".into(),
            self.client_addr.to_string(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--log-store".into(),
            self.log_store.name().into(),
            "--durability".into(),
            durability_name(self.durability),
            "--wal-segment-mib".into(),
            self.wal_segment_mib.to_string(),
            "--request-timeout-ms".into(),
            self.request_timeout.as_millis().to_string(),
            "--snapshot-entries".into(),
            self.snapshot_entries.to_string(),
            "--tick-ms".into(),
            self.tick.as_millis().to_string(),
            "--heartbeat-ticks".into(),
            self.heartbeat_ticks.to_string(),
            "--read-mode".into(),
            self.read_mode.to_string(),
            "--shards".into(),
            self.shards.to_string(),
        ];
        if self.debug_commands {
            a.push("--enable-debug-commands".into());
        }
        if let Some(join) = self.join {
            a.push("--join".into());
            a.push(join.to_string());
        }
        for (id, (raft, client)) in &self.peers {
            a.push("--peer".into());
            a.push(format!("{id}={raft},{client}"));
        }
        a
    }
}

/// `--tick-ms` when not given: 10 ms, and with more than 1,000 shards 10 ms per 1,000 (at most
/// 100 ms). An awake group costs the runtime's timer and core threads a visit per tick, so
/// thousands of groups awake at once (starting, or catching up a restarted node) would otherwise
/// take more than two cores; elections take 10 to 20 ticks either way.
pub fn default_tick(shards: usize) -> Duration {
    Duration::from_millis((10 * shards.div_ceil(1000) as u64).clamp(10, 100))
}

/// `--heartbeat-ticks` when not given: 2, and 5 with more than one shard unless reads use the
/// lease (whose rounds go to every follower every interval, and keep the lease only while they
/// come often enough).
///
/// A leader heartbeats a follower only after that many ticks in which it sent it nothing else,
/// and with many groups each one's writes are spread thin: at 2 ticks (20 ms) a group taking a
/// write every few milliseconds still falls silent that long often enough that heartbeats and
/// their answers were a fifth of all Raft messages in the 256-group cluster bench, each a round
/// of the leader's and the follower's cores. At 5 ticks, still at most half the shortest
/// election timeout, they fall to a twentieth of the appends (from over a quarter) and the cell
/// does 37,300 writes/s at 42.1 us of CPU each instead of 35,900 at 43.8 (the median of four
/// alternating runs each).
pub fn default_heartbeat_ticks(shards: usize, read_mode: ReadMode) -> u32 {
    if shards > 1 && read_mode != ReadMode::Lease {
        5
    } else {
        2
    }
}

/// The flag value naming a durability mode.
pub fn durability_name(d: Durability) -> String {
    match d {
        Durability::Always => "always".into(),
        Durability::GroupCommit { .. } => "group".into(),
        Durability::Interval(i) => format!("interval:{}", i.as_millis()),
        Durability::Never => "never".into(),
    }
}
