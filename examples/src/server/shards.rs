//! Sharding (`--shards N`): the keys are hashed over N Raft groups (groups 1 to N), all hosted by
//! one [`Runtime`](raft_core::node::Runtime) per process, so a group costs memory, not threads.
//!
//! - A key lives in group `crc32c(key) % N + 1` on every node; the count is recorded in the
//!   data directory, and a node started with another count is refused (its keys would be looked
//!   for in the wrong groups).
//! - A command on one key goes to its group's leader, as with one group. A command on several
//!   keys (`MGET`, `EXISTS`, `DEL`) is split by group, the parts run side by side, and their
//!   answers are put back in the keys' order. Each part is linearizable on its own; a `DEL`
//!   over several groups is not atomic across them. `DBSIZE` adds up every group's count.
//! - A command forwarded between nodes names its group (`RAFTKIT.SHARD g N <command>`), so the
//!   node that runs it never hashes differently from the one that received it.
//! - Leaders are balanced: group `g` prefers the voter at `(g - 1) % voters` of the sorted
//!   voters, and a node leading a group whose preferred voter is up and caught up hands the
//!   group to it (a few at a time). After a restart the node gets its groups back, so every
//!   node leads N/3 groups (within one) again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use raft_core::node::{Batch, Node};
use raft_core::NodeId;

use super::io::ReplyTo;
use super::Waits;
use super::{Server, ServerError};
use crate::kv::KvMachine;
use crate::resp::{self, Reply};

/// The file in the data directory that records the shard count.
const SHARDS_FILE: &str = "shards";

/// The shard (0-based; its group is one more) key `key` lives in, out of `n`.
pub fn shard_of(key: &[u8], n: usize) -> usize {
    if n <= 1 {
        0
    } else {
        crc32c::crc32c(key) as usize % n
    }
}

/// A key in each of `n` shards (`keys[s]` lives in shard `s`): `g0`, `g1`... as they fall.
pub fn one_key_per_shard(n: usize) -> Vec<String> {
    let mut keys = vec![String::new(); n];
    let (mut left, mut i) = (n, 0u64);
    while left > 0 {
        let key = format!("g{i}");
        let s = shard_of(key.as_bytes(), n);
        if keys[s].is_empty() {
            keys[s] = key;
            left -= 1;
        }
        i += 1;
    }
    keys
}

/// Checks the shard count against the one the data directory was created with, recording it
/// in a new directory. A directory from before sharding (a log, no record) holds one shard.
pub(super) fn check_count(dir: &std::path::Path, n: usize) -> Result<(), ServerError> {
    let path = dir.join(SHARDS_FILE);
    let bad = |why: String| ServerError::Shards(why);
    match std::fs::read(&path) {
        Ok(bytes) => match String::from_utf8_lossy(&bytes).trim().parse::<usize>() {
            Ok(had) if had != n => Err(bad(format!(
                "the data directory holds {had} shards and --shards is {n}: keys would be \
                 looked for in the wrong groups (start with --shards {had})"
            ))),
            Ok(_) => Ok(()),
            Err(_) => {
                // A damaged record: the command line is taken (the log's groups are checked
                // against it once it is open) and the record written again.
                tracing::warn!(path = %path.display(), "the shard count record is damaged: rewriting it");
                record(dir, n)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let holds_data = ["wal", "raft-engine", "snapshots"].iter().any(|d| {
                std::fs::read_dir(dir.join(d)).map(|mut it| it.next().is_some()).unwrap_or(false)
            });
            if holds_data && n != 1 {
                return Err(bad(format!(
                    "the data directory holds one shard's data and --shards is {n}: start with \
                     --shards 1"
                )));
            }
            record(dir, n)
        }
        Err(source) => Err(ServerError::DataDir { path, source }),
    }
}

/// Writes the shard count record (atomically: a new file renamed over the old).
fn record(dir: &std::path::Path, n: usize) -> Result<(), ServerError> {
    let path = dir.join(SHARDS_FILE);
    let tmp = dir.join(format!("{SHARDS_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{n}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|source| ServerError::DataDir { path, source })
}

/// Refuses a log holding groups beyond the shard count (a count lowered while its record was
/// lost).
pub(super) fn check_log_groups(log: &dyn raft_core::LogStore, n: usize) -> Result<(), ServerError> {
    let groups = log.groups().map_err(|e| ServerError::LogStore(e.to_string()))?;
    match groups.iter().find(|&&g| g == 0 || g > n as u64) {
        Some(g) => Err(ServerError::Shards(format!(
            "the log holds group {g} and --shards is {n}: start with the count the cluster was \
             created with"
        ))),
        None => Ok(()),
    }
}

/// A batch per shard that gets requests in one event-loop round: each shard's requests reach
/// its node together when the batches are submitted (or dropped).
pub(crate) struct Batches<'a> {
    server: &'a Server,
    /// The first shard's batch (with one shard, the only one: no map on that path).
    first: Option<(usize, Batch<'a, KvMachine>)>,
    more: HashMap<usize, Batch<'a, KvMachine>>,
}

impl<'a> Batches<'a> {
    /// No batch yet.
    pub(crate) fn new(server: &'a Server) -> Batches<'a> {
        Batches { server, first: None, more: HashMap::new() }
    }

    /// Shard `shard`'s batch.
    pub(crate) fn get(&mut self, shard: usize) -> &mut Batch<'a, KvMachine> {
        let server = self.server;
        match self.first {
            Some((s, _)) if s != shard => {
                self.more.entry(shard).or_insert_with(|| server.shards[shard].batch())
            }
            _ => &mut self.first.get_or_insert_with(|| (shard, server.shards[shard].batch())).1,
        }
    }

    /// Hands every batch to its node.
    pub(crate) fn submit(self) {
        drop(self);
    }
}

impl Server {
    /// How many shards (groups) the keys are spread over.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Every shard's node, shard 0 (group 1) first.
    pub fn shards(&self) -> &[Node<KvMachine>] {
        &self.shards
    }

    /// The words to start a command of shard `shard` anywhere: itself with one shard, otherwise
    /// prefixed with `RAFTKIT.SHARD g N`.
    pub(super) fn in_shard(&self, shard: usize, args: &[Vec<u8>]) -> Vec<Vec<u8>> {
        if self.shards.len() == 1 {
            return args.to_vec();
        }
        let mut out = Vec::with_capacity(args.len() + 3);
        out.push(b"RAFTKIT.SHARD".to_vec());
        out.push((shard + 1).to_string().into_bytes());
        out.push(self.shards.len().to_string().into_bytes());
        out.extend_from_slice(args);
        out
    }

    /// Runs `RAFTKIT.SHARD g N <command>`: the command in group `g`, if this node has `N`
    /// shards too.
    pub(super) fn start_shard_command(
        self: &Arc<Self>,
        args: Vec<Vec<u8>>,
        forwarded: bool,
        reply: &ReplyTo,
        batches: &mut Batches<'_>,
    ) -> Waits {
        let number = |a: &[u8]| std::str::from_utf8(a).ok().and_then(|s| s.parse::<usize>().ok());
        let n = self.shards.len();
        let fail = |line: String| {
            let mut r = Vec::new();
            resp::error(&mut r, &line);
            reply.send(r);
            Waits::No
        };
        match (number(&args[1]), number(&args[2])) {
            (Some(g), Some(count)) if count == n && (1..=n).contains(&g) => {
                let mut args = args;
                args.drain(..3);
                self.start_in_shard(g - 1, args, forwarded, reply, batches)
            }
            (_, Some(count)) if count != n => fail(format!(
                "ERR shard count mismatch: this node has {n} shards, the sender {count}"
            )),
            _ => fail(format!("ERR no such shard (groups are 1 to {n})")),
        }
    }

    /// Starts a command on keys (`args[1..]`, or none for `DBSIZE`): in the one shard they all
    /// live in, or split over their shards with the answers combined.
    pub(super) fn start_keyed(
        self: &Arc<Self>,
        name: &str,
        args: Vec<Vec<u8>>,
        forwarded: bool,
        reply: &ReplyTo,
        batches: &mut Batches<'_>,
    ) -> Waits {
        let n = self.shards.len();
        if n == 1 {
            return self.start_in_shard(0, args, forwarded, reply, batches);
        }
        // The keys' positions, by shard.
        let mut by_shard: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        if name == "DBSIZE" {
            by_shard.extend((0..n).map(|s| (s, Vec::new())));
        } else {
            for (i, key) in args[1..].iter().enumerate() {
                by_shard.entry(shard_of(key, n)).or_default().push(i);
            }
        }
        if by_shard.len() == 1 {
            let shard = *by_shard.keys().next().expect("one shard");
            return self.start_in_shard(shard, args, forwarded, reply, batches);
        }
        let positions: Vec<Vec<usize>> = by_shard.values().cloned().collect();
        let combine: super::io::Combine = match name {
            "MGET" | "RAFTKIT.LOCALMGET" => Box::new(move |parts| combine_mget(&parts, &positions)),
            "DEL" => Box::new(|parts| combine_sum(&parts, true)),
            _ => Box::new(|parts| combine_sum(&parts, false)),
        };
        let parts = reply.split(by_shard.len(), combine);
        let mut waits = Waits::No;
        for ((shard, keys), part) in by_shard.into_iter().zip(parts) {
            let mut sub = Vec::with_capacity(keys.len() + 1);
            sub.push(args[0].clone());
            sub.extend(keys.iter().map(|&i| args[i + 1].clone()));
            waits = waits.max(self.start_in_shard(shard, sub, forwarded, &part, batches));
        }
        waits
    }

    /// `RAFTKIT.SHARDS`: one line per shard, `group=G leader=L role=R term=T commit=C
    /// applied=A asleep=0|1`.
    pub(super) fn shards_reply(&self) -> Vec<u8> {
        let mut r = Vec::new();
        resp::array_header(&mut r, self.shards.len());
        for (i, node) in self.shards.iter().enumerate() {
            let asleep = node.is_asleep();
            let line = format!(
                "group={} leader={} role={} term={} commit={} applied={} asleep={}",
                i + 1,
                node.leader().unwrap_or(0),
                node.role(),
                node.term(),
                node.commit_index(),
                node.applied_index(),
                u8::from(asleep)
            );
            resp::bulk(&mut r, Some(line.as_bytes()));
        }
        r
    }

    /// `INFO`'s summary of the shards: how many this node leads, how many sleep, how many have
    /// no known leader.
    pub(super) fn shard_summary(&self, line: &mut dyn FnMut(&str, String)) {
        let (mut leading, mut asleep, mut leaderless) = (0, 0, 0);
        for node in &self.shards {
            leading += usize::from(node.is_leader());
            leaderless += usize::from(node.leader().is_none());
            asleep += usize::from(node.is_asleep());
        }
        line("shards", self.shards.len().to_string());
        line("shards_leading", leading.to_string());
        line("shards_hibernating", asleep.to_string());
        line("shards_without_leader", leaderless.to_string());
    }
}

/// How often the balancer looks at the leaders, and how many groups a node hands over per
/// look (a transfer costs an election; thousands at once would be a storm).
const BALANCE_EVERY: Duration = Duration::from_millis(500);
const BALANCE_PER_ROUND: usize = 256;

/// The voter group `shard` prefers as its leader: its turn of the voters, sorted.
fn preferred_leader(shard: usize, sorted: &[NodeId]) -> Option<NodeId> {
    (!sorted.is_empty()).then(|| sorted[shard % sorted.len()])
}

/// Hands each group this node leads to its preferred voter once that one is connected and
/// caught up, until the server is gone.
///
/// A look at every group touches each one's state, which with ten thousand groups was most of
/// an idle server's CPU: the thread looks again only when a group here changed its leader or
/// role (the runtime counts them, [`Runtime::leader_changes`](raft_core::node::Runtime::leader_changes)),
/// the connected peers changed, or the last look found a group to hand over.
pub(super) fn balance_leaders(server: Weak<Server>) {
    let mut trim = TrimWatch::default();
    // The leader changes and connected peers the last look saw, if it found nothing to do.
    let mut settled: Option<(u64, Vec<NodeId>)> = None;
    loop {
        std::thread::sleep(BALANCE_EVERY);
        let Some(server) = server.upgrade() else { return };
        if trim.due() {
            let asleep = match server.runtime() {
                Some(runtime) => runtime.asleep_nodes() as usize,
                None => server.shards.iter().filter(|n| n.is_asleep()).count(),
            };
            if trim.fell_asleep(asleep, server.shards.len()) {
                release_free_heap();
            }
        }
        let me = server.args.id;
        // With shards the members never change (membership changes need one shard), so the
        // voters are the command line's: no status is read for a group that is where it should
        // be, which is nearly all of them once balanced.
        let mut voters: Vec<NodeId> = server.args.peers.keys().copied().chain([me]).collect();
        voters.sort_unstable();
        let connected: Vec<NodeId> =
            server.transport.metrics().iter().filter(|m| m.connected).map(|m| m.peer).collect();
        // Read before the look, so a change during it brings another.
        let now = server.runtime().map(|r| (r.leader_changes(), connected.clone()));
        if now.is_some() && now == settled {
            continue;
        }
        let mut pending = false;
        let mut moved = 0;
        for (shard, node) in server.shards.iter().enumerate() {
            if moved >= BALANCE_PER_ROUND {
                break;
            }
            let Some(to) = preferred_leader(shard, &voters) else { break };
            if to == me || !node.is_leader() {
                continue;
            }
            // Led here, preferring another voter: looked at again until it has moved.
            pending = true;
            if !connected.contains(&to) || !server.cuts.passes(to) {
                continue;
            }
            let Ok(status) = node.status() else { continue };
            let raft = &status.raft;
            let caught_up =
                raft.progress.iter().any(|p| p.id == to && p.match_index >= raft.commit_index);
            if raft.transfer_target.is_none() && caught_up {
                tracing::debug!(group = shard + 1, to, "handing the group to its preferred leader");
                node.transfer_leader_with(to, |_| {});
                moved += 1;
            }
        }
        settled = if pending { None } else { now };
    }
}

/// How often the balancing thread looks whether many groups fell asleep (in balancing rounds).
const TRIM_LOOK_ROUNDS: u32 = 4;

/// Watches the number of sleeping groups: when a tenth of them (or more) fell asleep since the
/// last trim, or more than then sleep and the count held still since the last look (the wave is
/// over), the memory their bursts used is free on the heap, and worth handing back.
#[derive(Debug, Default)]
struct TrimWatch {
    rounds: u32,
    /// Sleeping groups at the last look.
    looked: usize,
    /// Sleeping groups at the last trim.
    trimmed: usize,
}

impl TrimWatch {
    /// Whether this balancing round looks.
    fn due(&mut self) -> bool {
        self.rounds += 1;
        self.rounds.is_multiple_of(TRIM_LOOK_ROUNDS)
    }

    /// Records `asleep` of `shards` groups sleeping; whether to trim now.
    fn fell_asleep(&mut self, asleep: usize, shards: usize) -> bool {
        let settled = asleep == std::mem::replace(&mut self.looked, asleep);
        let trim =
            asleep >= self.trimmed + (shards / 10).max(1) || (settled && asleep > self.trimmed);
        if trim {
            self.trimmed = asleep;
        } else {
            self.trimmed = self.trimmed.min(asleep);
        }
        trim
    }
}

/// Hands the heap's free pages back to the system. Groups that fall asleep give back their
/// queues and caches, but glibc keeps freed memory in its arenas: with thousands of groups that
/// is a few KiB each of resident memory nobody uses.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and has no preconditions; glibc serialises it
        // with every other allocator call.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(released = released != 0, "groups fell asleep: heap trimmed");
    }
}

/// `MGET`'s parts put back in the keys' order; the first error if a part failed.
fn combine_mget(parts: &[Vec<u8>], positions: &[Vec<usize>]) -> Vec<u8> {
    let total = positions.iter().map(Vec::len).sum();
    let mut values: Vec<Option<Reply>> = vec![None; total];
    for (part, keys) in parts.iter().zip(positions) {
        match parse(part) {
            Some(Reply::Array(Some(items))) if items.len() == keys.len() => {
                for (item, &i) in items.into_iter().zip(keys) {
                    values[i] = Some(item);
                }
            }
            Some(err @ Reply::Error(_)) => return encoded(&err),
            _ => return bad_part(),
        }
    }
    encoded(&Reply::Array(Some(
        values.into_iter().map(|v| v.unwrap_or(Reply::Bulk(None))).collect(),
    )))
}

/// The sum of the parts' integers (`EXISTS`, `DBSIZE`, `DEL`). A failed part fails the whole;
/// for a write some of whose parts did succeed, the reply says the outcome is unknown.
fn combine_sum(parts: &[Vec<u8>], write: bool) -> Vec<u8> {
    let mut sum = 0i64;
    let mut failed = None;
    let mut succeeded = false;
    for part in parts {
        match parse(part) {
            Some(Reply::Integer(n)) => {
                sum = sum.saturating_add(n);
                succeeded = true;
            }
            Some(Reply::Error(line)) => {
                failed.get_or_insert(line);
            }
            _ => return bad_part(),
        }
    }
    match failed {
        None => encoded(&Reply::Integer(sum)),
        Some(line) if write && succeeded => {
            let mut r = Vec::new();
            resp::error(
                &mut r,
                &format!(
                    "TIMEOUT the keys of some shards were deleted ({sum}), another failed ({line}): \
                     the outcome is unknown"
                ),
            );
            r
        }
        Some(line) => encoded(&Reply::Error(line)),
    }
}

fn parse(part: &[u8]) -> Option<Reply> {
    let mut input = part;
    resp::read_reply(&mut input, None).ok()
}

fn encoded(reply: &Reply) -> Vec<u8> {
    let mut r = Vec::new();
    resp::encode(&mut r, reply);
    r
}

fn bad_part() -> Vec<u8> {
    let mut r = Vec::new();
    resp::error(&mut r, "ERR a shard answered something unexpected");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(n: i64) -> Vec<u8> {
        encoded(&Reply::Integer(n))
    }

    #[test]
    fn the_heap_is_trimmed_when_a_tenth_of_the_groups_fell_asleep() {
        let mut w = TrimWatch::default();
        let looks: Vec<bool> = (0..TRIM_LOOK_ROUNDS * 2).map(|_| w.due()).collect();
        assert_eq!(
            looks.iter().filter(|&&l| l).count(),
            2,
            "one look per {TRIM_LOOK_ROUNDS} rounds"
        );
        assert!(w.fell_asleep(1_000, 10_000), "a tenth fell asleep");
        assert!(!w.fell_asleep(1_500, 10_000), "half a tenth more, still falling asleep");
        assert!(w.fell_asleep(1_500, 10_000), "the wave is over: what it freed goes back");
        assert!(!w.fell_asleep(1_500, 10_000), "nothing new");
        assert!(!w.fell_asleep(1_000, 10_000), "groups waking is no reason");
        assert!(!w.fell_asleep(1_400, 10_000), "falling asleep again, not a tenth yet");
        assert!(w.fell_asleep(2_000, 10_000), "a tenth more than at the last trim");
        assert!(w.fell_asleep(9_000, 10_000));
        assert!(!w.fell_asleep(9_000, 10_000), "nothing new");
        assert!(TrimWatch::default().fell_asleep(1, 1), "one group of one");
    }

    #[test]
    fn keys_spread_over_every_shard_and_one_shard_takes_all() {
        let mut seen = [0usize; 8];
        for i in 0..8000 {
            seen[shard_of(format!("key:{i}").as_bytes(), 8)] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        assert_eq!(shard_of(b"anything", 1), 0);
        assert_eq!(shard_of(b"k", 5), shard_of(b"k", 5));
    }

    #[test]
    fn mget_parts_go_back_in_key_order_and_an_error_wins() {
        let a =
            encoded(&Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec())), Reply::Bulk(None)])));
        let b = encoded(&Reply::Array(Some(vec![Reply::Bulk(Some(b"y".to_vec()))])));
        let whole = combine_mget(&[a.clone(), b], &[vec![0, 2], vec![1]]);
        assert_eq!(whole, b"*3\r\n$1\r\nx\r\n$1\r\ny\r\n$-1\r\n".to_vec());
        let err = b"-NOLEADER gone\r\n".to_vec();
        assert_eq!(combine_mget(&[a, err.clone()], &[vec![0, 2], vec![1]]), err);
        assert_eq!(combine_mget(&[b"garbage".to_vec()], &[vec![0]]), bad_part());
    }

    #[test]
    fn sums_add_up_and_a_partly_failed_delete_is_an_unknown_outcome() {
        assert_eq!(combine_sum(&[int(2), int(3)], false), int(5));
        let err = b"-NOLEADER gone\r\n".to_vec();
        assert_eq!(combine_sum(&[int(2), err.clone()], false), err);
        let partial = combine_sum(&[int(2), err.clone()], true);
        assert!(partial.starts_with(b"-TIMEOUT"), "{}", String::from_utf8_lossy(&partial));
        assert_eq!(combine_sum(&[err.clone(), err.clone()], true), err);
    }

    #[test]
    fn the_default_tick_and_heartbeat_follow_the_shard_count() {
        use super::super::default_tick;
        let ms = |n| default_tick(n).as_millis();
        assert_eq!(
            (ms(1), ms(1000), ms(1001), ms(5000), ms(10_000), ms(100_000)),
            (10, 10, 20, 50, 100, 100)
        );
        let args = |extra: &[&str]| {
            let mut a: Vec<String> = [
                "--id",
                "1",
                "--raft-addr",
                "127.0.0.1:1",
                "--client-addr",
                "127.0.0.1:2",
                "--data-dir",
                "/x",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            a.extend(extra.iter().map(|s| s.to_string()));
            super::super::ServerArgs::parse(a).unwrap().unwrap()
        };
        assert_eq!(args(&["--shards", "10000"]).tick.as_millis(), 100);
        assert_eq!(args(&["--shards", "10000", "--tick-ms", "7"]).tick.as_millis(), 7);
        assert_eq!(args(&[]).tick.as_millis(), 10);
        // Heartbeats: every 2 ticks for one group or lease reads, 5 with shards, or as asked.
        assert_eq!(args(&[]).heartbeat_ticks, 2);
        assert_eq!(args(&["--shards", "256"]).heartbeat_ticks, 5);
        assert_eq!(args(&["--shards", "256", "--heartbeat-ticks", "3"]).heartbeat_ticks, 3);
        assert_eq!(args(&["--shards", "256", "--read-mode", "lease"]).heartbeat_ticks, 2);
        let parsed = args(&["--heartbeat-ticks", "9"]);
        assert_eq!(super::super::ServerArgs::parse(parsed.to_args()).unwrap().unwrap(), parsed);
        for bad in ["0", "10"] {
            let mut a: Vec<String> = args(&[]).to_args();
            a.extend(["--heartbeat-ticks".to_string(), bad.to_string()]);
            let err = super::super::ServerArgs::parse(a).unwrap_err();
            assert!(err.contains("--heartbeat-ticks must be 1 to 9"), "{err}");
        }
    }

    #[test]
    fn preferred_leaders_take_turns_over_sorted_voters() {
        let mut voters = [3, 1, 2];
        voters.sort_unstable();
        let picks: Vec<_> = (0..6).map(|s| preferred_leader(s, &voters).unwrap()).collect();
        assert_eq!(picks, vec![1, 2, 3, 1, 2, 3]);
        assert_eq!(preferred_leader(0, &[]), None);
    }

    #[test]
    fn the_shard_count_is_recorded_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        check_count(dir.path(), 4).unwrap();
        check_count(dir.path(), 4).unwrap();
        assert!(matches!(check_count(dir.path(), 3), Err(ServerError::Shards(_))));
        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(old.path().join("wal")).unwrap();
        std::fs::write(old.path().join("wal").join("seg"), b"x").unwrap();
        assert!(matches!(check_count(old.path(), 4), Err(ServerError::Shards(_))));
        check_count(old.path(), 1).unwrap();
        // A damaged record is taken from the command line, and written again.
        std::fs::write(dir.path().join(SHARDS_FILE), b"\x00garbage").unwrap();
        check_count(dir.path(), 4).unwrap();
        assert!(matches!(check_count(dir.path(), 3), Err(ServerError::Shards(_))));
        let log = raft_core::MemLogStore::new();
        let hs = raft_core::HardState { term: 1, vote: None, commit: 0 };
        raft_core::LogStore::write(
            &log,
            &[raft_core::LogWrite { group: 5, hard_state: Some(hs), entries: &[] }],
        )
        .unwrap();
        assert!(check_log_groups(&log, 8).is_ok());
        assert!(matches!(check_log_groups(&log, 4), Err(ServerError::Shards(_))));
    }
}
