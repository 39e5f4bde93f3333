//! What the runtime costs per write, apart from the network, the server and the disk: three
//! nodes, each its own `Runtime`, `Router` and raft-wal log (group commit, as a sharded server
//! runs it, in `/dev/shm` where there is one, so a sync is cheap), in one process, messages
//! handed over by raft-core's `MemNetwork` (a delivery thread per node, as a transport's
//! reader). One thread keeps
//! `in_flight` proposals outstanding over N groups (each on its group's leader, the next one
//! proposed as an answer comes back, those of one group in one `Batch`, submitted on the
//! thread, as a server's event loop does), for one, then many groups.
//!
//! Printed per group count: writes/s, the CPU time of the whole process per write, and its
//! threads' context switches per write (from /proc), in one run; then each figure against the
//! first group count's. With many groups each write is a Raft round of its own in its group,
//! where one group shares its rounds among all the writes in flight: the difference is what
//! the runtime's per-round machinery (stages, wake-ups, hand-offs, the shared sync) costs,
//! without TCP, a state machine of any weight or a disk.
//!
//! `cargo bench -p raftkit-benches --bench runtime_groups`; environment:
//! `RAFTKIT_RUNTIME_GROUPS` (default `1,256`), `RAFTKIT_RUNTIME_IN_FLIGHT` (default 64),
//! `RAFTKIT_RUNTIME_SECS` (measured seconds per group count, default 5).

#![allow(clippy::print_stdout)] // A bench binary that prints its figures.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::node::{Node, NodeBuilder, NodeError, Runtime, RuntimeOptions};
use raft_core::{GroupId, MemNetwork, NodeId, Router, Transport};
use raft_wal::{Durability, Wal, WalConfig};
use raftkit_benches::count::Count;
use raftkit_benches::procstat::{context_switches, cpu_seconds};

/// What one group count measured.
#[derive(Clone, Copy)]
struct Figures {
    groups: u64,
    writes_per_sec: f64,
    cpu_us_per_write: f64,
    switches_per_write: f64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Three nodes hosting `groups` groups, and the load on them once every group has a leader.
fn run(groups: u64, in_flight: usize, secs: f64) -> Result<Figures, String> {
    let network = MemNetwork::new(1 << 20);
    // In memory (tmpfs) where there is one, so a sync costs what the kernel does for it and not
    // what a disk takes.
    let shm = std::path::Path::new("/dev/shm");
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut runtimes = Vec::new();
    let mut nodes: HashMap<(NodeId, GroupId), Node<Count>> = HashMap::new();
    for id in 1..=3u64 {
        let runtime = Runtime::new(RuntimeOptions::default()).map_err(|e| e.to_string())?;
        let router = Arc::new(Router::new());
        let port: Arc<dyn Transport> =
            Arc::new(network.join(id, router.clone()).map_err(|e| e.to_string())?);
        // The mode a sharded server runs (`--durability always` with shards): group commit, the
        // runtime's sync thread syncing for every group.
        let config = WalConfig {
            durability: Durability::group_commit(),
            segment_size_bytes: 16 << 20,
            ..WalConfig::default()
        };
        let (wal, _) =
            Wal::open(dirs[id as usize - 1].path(), config).map_err(|e| e.to_string())?;
        let log = Arc::new(wal);
        for group in 0..groups {
            let node = NodeBuilder::new(id)
                .group(group)
                .voters([1, 2, 3])
                .tick(Duration::from_millis(10))
                .options(|o| o.runtime = Some(runtime.clone()))
                .shared_log(log.clone())
                .transport(port.clone())
                .router(router.clone())
                .start(Count::default())
                .map_err(|e| e.to_string())?;
            nodes.insert((id, group), node);
        }
        runtime.watch_peers(
            id,
            &[1, 2, 3],
            port,
            &router,
            Duration::from_millis(100),
            Duration::from_millis(1_000),
        );
        runtimes.push(runtime);
    }
    let figures = load(&nodes, groups, in_flight, secs);
    for (_, node) in nodes.drain() {
        node.shutdown();
    }
    drop(runtimes);
    figures
}

/// Keeps `in_flight` proposals outstanding on the groups' leaders: a second of warm-up, then
/// `secs` measured.
fn load(
    nodes: &HashMap<(NodeId, GroupId), Node<Count>>,
    groups: u64,
    in_flight: usize,
    secs: f64,
) -> Result<Figures, String> {
    let pid = std::process::id();
    let leader_of = |g: GroupId| (1..=3u64).find(|&id| nodes[&(id, g)].is_leader());
    let deadline = Instant::now() + Duration::from_secs(120);
    while (0..groups).any(|g| leader_of(g).is_none()) {
        if Instant::now() > deadline {
            return Err("some group never elected a leader".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Client `c` writes to groups c, c + in_flight, ... in turn; each answer comes back on the
    // channel and the next write of that client is proposed from this thread.
    let (done_tx, done_rx) = mpsc::channel::<(usize, Result<u64, NodeError>)>();
    let mut turn = vec![0u64; in_flight];
    let group_of = |c: usize, turn: u64| (c as u64 + turn * in_flight as u64) % groups;
    // As a server's event loop hands requests over: every answer that came in is followed by
    // its client's next write, those of one group in one batch, whose submission runs the
    // node's round on this thread if no other thread is running it.
    let propose_all = |clients: &[usize], turn: &[u64]| {
        let mut by_group: HashMap<GroupId, Vec<usize>> = HashMap::new();
        for &c in clients {
            by_group.entry(group_of(c, turn[c])).or_default().push(c);
        }
        for (g, cs) in by_group {
            let leader = leader_of(g).unwrap_or(1);
            let mut batch = nodes[&(leader, g)].batch();
            for c in cs {
                let tx = done_tx.clone();
                batch.propose_with(Bytes::from_static(&[b'x'; 64]), move |r| {
                    let _ = tx.send((c, r));
                });
            }
            batch.submit();
        }
    };
    propose_all(&(0..in_flight).collect::<Vec<_>>(), &turn);
    let started = Instant::now();
    let measure_from = started + Duration::from_secs(1);
    let end = measure_from + Duration::from_secs_f64(secs);
    let mut measuring = false;
    let (mut writes, mut failed) = (0u64, 0u64);
    let (mut cpu0, mut switches0, mut t0) = (0.0, 0, Instant::now());
    let mut answered = Vec::with_capacity(in_flight);
    loop {
        let now = Instant::now();
        if !measuring && now >= measure_from {
            measuring = true;
            (cpu0, switches0, t0) = (cpu_seconds(pid), context_switches(pid), now);
        }
        if now >= end {
            break;
        }
        let Ok(first) = done_rx.recv_timeout(Duration::from_secs(5)) else {
            return Err("no answer for five seconds".into());
        };
        answered.clear();
        for (c, result) in std::iter::once(first).chain(done_rx.try_iter()) {
            match result {
                Ok(_) => {
                    turn[c] += 1;
                    writes += u64::from(measuring);
                }
                Err(_) => failed += 1, // Leadership moved: asked again of whoever leads now.
            }
            answered.push(c);
        }
        propose_all(&answered, &turn);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let switches = context_switches(pid).saturating_sub(switches0);
    if failed > writes / 100 {
        return Err(format!("{failed} proposals failed against {writes} writes"));
    }
    let per_write = |x: f64| x / writes.max(1) as f64;
    Ok(Figures {
        groups,
        writes_per_sec: writes as f64 / elapsed,
        cpu_us_per_write: per_write(cpu * 1e6),
        switches_per_write: per_write(switches as f64),
    })
}

fn main() {
    let groups: Vec<u64> = std::env::var("RAFTKIT_RUNTIME_GROUPS")
        .unwrap_or_else(|_| "1,256".into())
        .split(',')
        .filter_map(|g| g.trim().parse().ok())
        .filter(|&g| g > 0)
        .collect();
    let in_flight: usize = env_or("RAFTKIT_RUNTIME_IN_FLIGHT", 64usize).max(1);
    let secs: f64 = env_or("RAFTKIT_RUNTIME_SECS", 5.0);
    println!(
        "3 nodes in one process (a Runtime each, MemNetwork, raft-wal group commit on tmpfs), \
         {in_flight} writes of 64 B in flight, {secs} s per group count"
    );
    println!(
        "{:>7} {:>10} {:>13} {:>15} {:>9} {:>9} {:>9}",
        "groups", "writes/s", "CPU us/write", "switches/write", "writes x", "CPU x", "switch x"
    );
    let mut first: Option<Figures> = None;
    for g in groups {
        match run(g, in_flight, secs) {
            Ok(f) => {
                let base = *first.get_or_insert(f);
                println!(
                    "{:>7} {:>10.0} {:>13.1} {:>15.2} {:>9.2} {:>9.2} {:>9.2}",
                    f.groups,
                    f.writes_per_sec,
                    f.cpu_us_per_write,
                    f.switches_per_write,
                    f.writes_per_sec / base.writes_per_sec,
                    f.cpu_us_per_write / base.cpu_us_per_write,
                    f.switches_per_write / base.switches_per_write.max(1e-9)
                );
            }
            Err(e) => println!("{g:>7} failed: {e}"),
        }
    }
}
