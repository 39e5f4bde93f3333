//! The raftkit demo: a local 3-node cluster of `kv-server` processes (this binary, re-executed
//! with `--serve`), WAL-backed, in a temporary directory. Clients write through every node
//! while the leader is killed with SIGKILL, a new one is elected, and the killed node restarts
//! and catches up; then every acknowledged write is checked on all three nodes.
//!
//! Exits non-zero if any acknowledged write is missing or wrong on any node.
//!
//! `demo --log-store raft-engine` keeps every node's log in tikv's raft-engine instead of
//! raft-wal (`memory` keeps it in memory: the restarted node then rejoins with nothing).
//! `demo --shards N` hashes the keys over N Raft groups (the node killed is group 1's leader,
//! which leads about a third of them), and shows the leaders balanced again after the restart.

#![allow(clippy::print_stdout)] // The demo's output is its purpose.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use raft_core::NodeId;
use raftkit_examples::client::Client;
use raftkit_examples::cluster::{ClusterOptions, LocalCluster};
use raftkit_examples::resp::Reply;
use raftkit_examples::server::LogStoreKind;

const CLIENTS: u64 = 16;
const PHASE: Duration = Duration::from_secs(4);

/// What the clients share.
#[derive(Default)]
struct Stats {
    acked: AtomicU64,
    no_leader: AtomicU64,
    timeouts: AtomicU64,
    conn_errors: AtomicU64,
    /// Acknowledged writes: key -> value.
    written: Mutex<HashMap<String, String>>,
    /// Latency of every acknowledged write, in microseconds.
    latencies: Mutex<Vec<u64>>,
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--serve") {
        args.next();
        std::process::exit(raftkit_examples::server_main(args));
    }
    let usage = "usage: demo [--log-store wal|raft-engine|memory] [--shards N]";
    let mut log_store = LogStoreKind::Wal;
    let mut shards = 1;
    while let Some(flag) = args.next() {
        let value = args.next();
        let parsed = match (flag.as_str(), value.as_deref()) {
            ("--log-store", Some(v)) => v.parse::<LogStoreKind>().map(|k| log_store = k),
            ("--shards", Some(v)) => match v.parse::<usize>() {
                Ok(n) if (1..=raftkit_examples::server::MAX_SHARDS as usize).contains(&n) => {
                    shards = n;
                    Ok(())
                }
                _ => Err(format!("--shards: expected a count of groups, got {v}")),
            },
            (_, None) if flag.starts_with("--") => Err(format!("{flag} needs a value")),
            _ => Err(format!("unknown argument {flag}")),
        };
        if let Err(why) = parsed {
            eprintln!("demo: {why}; {usage}");
            std::process::exit(2);
        }
    }
    match run(log_store, shards) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(err) => {
            eprintln!("demo failed: {err}");
            std::process::exit(2);
        }
    }
}

fn say(start: Instant, what: &str) {
    println!("[{:6.2}s] {what}", start.elapsed().as_secs_f64());
}

fn run(log_store: LogStoreKind, shards: usize) -> Result<bool, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let options =
        ClusterOptions { snapshot_entries: 20_000, log_store, shards, ..ClusterOptions::default() };
    let start = Instant::now();
    let mut cluster = LocalCluster::start(exe, vec!["--serve".into()], &options)?;
    say(
        start,
        &format!(
            "started 3 nodes ({}, every write fsynced on a quorum before it is acknowledged) in {}",
            log_store.name(),
            cluster.dir().display()
        ),
    );
    for id in cluster.ids() {
        say(
            start,
            &format!(
                "  node {id}: clients at {}  (redis-cli -p {})",
                cluster.client_addr(id),
                cluster.client_addr(id).port()
            ),
        );
    }
    let (leader, term) =
        cluster.wait_for_leader(Duration::from_secs(10)).ok_or("no leader elected within 10 s")?;
    if shards > 1 {
        say(start, &format!("keys hashed over {shards} Raft groups; {}", leaders_line(&cluster)));
    }
    say(start, &format!("node {leader} is leader (term {term}{})", group_one(shards)));

    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let addrs: Vec<_> = cluster.ids().iter().map(|&id| cluster.client_addr(id)).collect();
    let workload_start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stats, stop, addrs) = (stats.clone(), stop.clone(), addrs.clone());
            std::thread::spawn(move || client_loop(c, &addrs, &stats, &stop))
        })
        .collect();

    let progress = {
        let (stats, stop) = (stats.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let acked = stats.acked.load(Ordering::Relaxed);
                say(
                    start,
                    &format!(
                        "progress: {acked} writes acknowledged ({}/s), NOLEADER {} TIMEOUT {} reconnects {}",
                        acked - last,
                        stats.no_leader.load(Ordering::Relaxed),
                        stats.timeouts.load(Ordering::Relaxed),
                        stats.conn_errors.load(Ordering::Relaxed),
                    ),
                );
                last = acked;
            }
        })
    };

    std::thread::sleep(PHASE);
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).ok_or("lost the leader")?;
    say(
        start,
        &format!(
            "SIGKILL leader node {leader}{} (pid {})",
            group_one(shards),
            cluster.pid(leader).unwrap_or(0)
        ),
    );
    let killed_at = Instant::now();
    cluster.kill(leader)?;
    let (new_leader, new_term) =
        cluster.wait_for_leader(Duration::from_secs(10)).ok_or("no new leader within 10 s")?;
    say(
        start,
        &format!("node {new_leader} elected leader in term {new_term}, {} ms after the kill; writes continue", killed_at.elapsed().as_millis()),
    );
    let acked_at_kill = stats.acked.load(Ordering::Relaxed);
    std::thread::sleep(PHASE);
    let acked_without = stats.acked.load(Ordering::Relaxed) - acked_at_kill;
    say(start, &format!("{acked_without} writes acknowledged by the two remaining nodes"));

    say(start, &format!("restarting node {leader}"));
    cluster.spawn(leader)?;
    let restarted = Instant::now();
    let caught_up = loop {
        let target = cluster.info_u64(new_leader, "commit_index").unwrap_or(0);
        let applied = cluster.info_u64(leader, "applied_index").unwrap_or(0);
        if applied >= target && target > 0 && shards_caught_up(&cluster, leader, new_leader) {
            break applied;
        }
        if restarted.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "node {leader} did not catch up within 30 s (applied {applied} of {target})"
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    say(
        start,
        &format!(
            "node {leader} caught up: applied index {caught_up} reached {} ms after restart",
            restarted.elapsed().as_millis()
        ),
    );
    std::thread::sleep(PHASE / 2);
    if shards > 1 {
        say(start, &format!("after the restart: {}", leaders_line(&cluster)));
    }

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let _ = progress.join();
    let elapsed = workload_start.elapsed();
    let acked = stats.acked.load(Ordering::Relaxed);

    // Every node must hold every acknowledged write.
    let (leader, _) =
        cluster.wait_for_leader(Duration::from_secs(10)).ok_or("no leader at the end")?;
    let commit = cluster.info_u64(leader, "commit_index").ok_or("no commit index")?;
    if !cluster.wait_applied(commit, Duration::from_secs(30)) {
        return Err("nodes did not apply the final commit index within 30 s".into());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.ids().iter().all(|&id| shards_caught_up(&cluster, id, leader)) {
        if Instant::now() > deadline {
            return Err("nodes did not apply every group's commit index within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let written = stats.written.lock().clone();
    let keys: Vec<&String> = written.keys().collect();
    let mut ok = true;
    for id in cluster.ids() {
        let (present, wrong) = verify_node(&cluster, id, &keys, &written)?;
        say(
            start,
            &format!(
                "node {id}: {present} of {} acknowledged writes present, {wrong} missing or wrong",
                written.len()
            ),
        );
        ok &= wrong == 0 && present == written.len();
    }
    let mut lat = stats.latencies.lock().clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!();
    println!("throughput: {acked} acknowledged writes in {:.1} s = {:.0} writes/s ({CLIENTS} clients, leader killed and restarted)", elapsed.as_secs_f64(), acked as f64 / elapsed.as_secs_f64());
    println!(
        "latency of acknowledged writes: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        pct(0.50) as f64 / 1e3,
        pct(0.90) as f64 / 1e3,
        pct(0.99) as f64 / 1e3,
        lat.last().copied().unwrap_or(0) as f64 / 1e3
    );
    println!(
        "errors (nothing lost: NOLEADER means not done, TIMEOUT means unknown and the write was retried): NOLEADER {}, TIMEOUT {}, reconnects {}",
        stats.no_leader.load(Ordering::Relaxed),
        stats.timeouts.load(Ordering::Relaxed),
        stats.conn_errors.load(Ordering::Relaxed)
    );
    if ok && acked > 0 {
        println!("OK: every acknowledged write is on all three nodes");
    } else {
        println!(
            "FAILED: acknowledged writes are missing (node logs in {})",
            cluster.dir().display()
        );
        let kept = cluster.dir().to_path_buf();
        cluster.kill_all();
        std::mem::forget(cluster); // Keep the directory for inspection.
        eprintln!("kept {}", kept.display());
    }
    Ok(ok && acked > 0)
}

/// " of group 1" when there are shards (the leader the demo follows is group 1's).
fn group_one(shards: usize) -> &'static str {
    if shards > 1 {
        " of group 1"
    } else {
        ""
    }
}

/// Each group's `(leader, commit, applied)` as node `id` sees it (`RAFTKIT.SHARDS`).
fn shard_states(cluster: &LocalCluster, id: NodeId) -> Option<Vec<(u64, u64, u64)>> {
    let mut client = cluster.client(id, Duration::from_secs(5)).ok()?;
    let Reply::Array(Some(lines)) = client.call(&[b"RAFTKIT.SHARDS"]).ok()? else { return None };
    lines
        .iter()
        .map(|line| {
            let text = line.as_text()?;
            let field = |name: &str| -> Option<u64> {
                text.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((field("leader")?, field("commit")?, field("applied")?))
        })
        .collect()
}

/// Whether node `id` has applied, in every group, what node `reference` knows is committed.
fn shards_caught_up(cluster: &LocalCluster, id: NodeId, reference: NodeId) -> bool {
    // The reference first: what it has committed, the node must have applied since.
    let theirs = shard_states(cluster, reference);
    match (shard_states(cluster, id), theirs) {
        (Some(mine), Some(theirs)) if mine.len() == theirs.len() => {
            mine.iter().zip(&theirs).all(|(m, t)| m.2 >= t.1)
        }
        _ => false,
    }
}

/// How many groups each node leads.
fn leaders_line(cluster: &LocalCluster) -> String {
    let Some(states) = cluster.running().first().and_then(|&id| shard_states(cluster, id)) else {
        return "leaders unknown".into();
    };
    let counts: Vec<String> = cluster
        .ids()
        .iter()
        .map(|&id| format!("node {id} leads {}", states.iter().filter(|s| s.0 == id).count()))
        .collect();
    counts.join(", ")
}

/// Reads every key from node `id`'s own state machine; returns (present and right, missing or
/// wrong).
fn verify_node(
    cluster: &LocalCluster,
    id: NodeId,
    keys: &[&String],
    written: &HashMap<String, String>,
) -> Result<(usize, usize), Box<dyn std::error::Error>> {
    let mut client = cluster.client(id, Duration::from_secs(10))?;
    let (mut present, mut wrong) = (0, 0);
    for batch in keys.chunks(500) {
        let mut args: Vec<&[u8]> = vec![b"RAFTKIT.LOCALMGET"];
        args.extend(batch.iter().map(|k| k.as_bytes()));
        let Reply::Array(Some(values)) = client.call(&args)? else {
            return Err("LOCALMGET failed".into());
        };
        for (key, value) in batch.iter().zip(values) {
            if value.as_text().as_deref() == Some(written[*key].as_str()) {
                present += 1;
            } else {
                wrong += 1;
            }
        }
    }
    Ok((present, wrong))
}

/// One client: writes unique keys through node `c % 3` (so followers forward), retrying a
/// write until it is acknowledged, and moving to another node when its node goes away.
fn client_loop(c: u64, addrs: &[std::net::SocketAddr], stats: &Stats, stop: &AtomicBool) {
    let mut node = c as usize % addrs.len();
    let mut client: Option<Client> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("demo:{c}:{i}");
        let value = format!("v{i}-{}", c * 7919 + i);
        let began = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let conn = match client.as_mut() {
                Some(conn) => conn,
                None => match Client::connect(addrs[node], Duration::from_secs(5)) {
                    Ok(conn) => client.insert(conn),
                    Err(_) => {
                        stats.conn_errors.fetch_add(1, Ordering::Relaxed);
                        node = (node + 1) % addrs.len();
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                },
            };
            match conn.call(&[b"SET", key.as_bytes(), value.as_bytes()]) {
                Ok(Reply::Simple(s)) if s == "OK" => {
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                    stats.written.lock().insert(key.clone(), value.clone());
                    stats.latencies.lock().push(began.elapsed().as_micros() as u64);
                    break;
                }
                Ok(reply) => {
                    // Retrying the same SET is safe whatever the first attempt did.
                    match reply.error_code() {
                        Some("TIMEOUT") => stats.timeouts.fetch_add(1, Ordering::Relaxed),
                        _ => stats.no_leader.fetch_add(1, Ordering::Relaxed),
                    };
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(_) => {
                    stats.conn_errors.fetch_add(1, Ordering::Relaxed);
                    client = None;
                    node = (node + 1) % addrs.len();
                }
            }
        }
        i += 1;
    }
}
