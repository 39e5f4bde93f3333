//! End-to-end cluster benchmark: a 3-node kv-server cluster on loopback (this binary,
//! re-executed with `--serve`), with each log store, in a temporary directory, driven by N concurrent
//! Redis-protocol clients doing SET on the leader, each with one command outstanding, all on one
//! event-loop thread (as `redis-benchmark` drives a server). Every write is fsynced on a quorum
//! before it is acknowledged (durability `always` or `group`).
//!
//! Prints, per cell, throughput, p50/p99 latency, the CPU time the three node processes spent
//! per write (user + system) and their threads' context switches per write (voluntary and not:
//! how often a write's path put a thread to sleep and woke it, or preempted one), both from
//! /proc, measured in one run.
//!
//! `cargo bench -p raftkit-benches --bench cluster`; environment:
//! `RAFTKIT_CLUSTER_SECS` (measured seconds per cell, default 5), `RAFTKIT_CLUSTER_CLIENTS`
//! (default `1,16,64`), `RAFTKIT_CLUSTER_VALUES` (bytes, default `64,1024`),
//! `RAFTKIT_CLUSTER_MODES` (default `always,group`; `never` runs without fsync, to show what the
//! cluster costs apart from the disk), `RAFTKIT_CLUSTER_STORES` (default `wal`, plus
//! `raft-engine` when built with `--features compare`), `RAFTKIT_CLUSTER_SHARDS` (default `1`;
//! e.g. `1,256`: with N shards the keys are hashed over N groups, every node leads about a
//! third, and each client writes the keys of a few groups to the node leading them, as a
//! cluster-aware client does; the groups share each node's WAL and its fsyncs),
//! `RAFTKIT_CLUSTER_TICK_MS` (the servers' Raft tick; default: theirs for the shard count),
//! `RAFTKIT_CLUSTER_REPEAT` (default 1: run the whole grid that many times, each repeat every
//! cell once; with several shard counts the bench ends with each cell's writes/s against the
//! same cell with the first shard count, the ratio within each repeat and their median: cells
//! compared within a repeat ran close together, and this machine's noise comes and goes).
//! fio's limit on the same disk (one write plus fdatasync per write, for each value size) is
//! printed first, from the same run.

#![allow(clippy::print_stdout)] // A bench binary that prints its figures.

use std::time::Duration;

use raft_wal::Durability;
use raftkit_benches::load;
use raftkit_benches::procstat::{total_context_switches, total_cpu_seconds};
use raftkit_benches::wal_matrix::fio_limit;
use raftkit_examples::cluster::{ClusterOptions, LocalCluster};
use raftkit_examples::resp::Reply;
use raftkit_examples::server::{shard_of, LogStoreKind};

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect()
}

struct Cell {
    shards: usize,
    store: String,
    mode: String,
    clients: usize,
    value: usize,
    writes: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    cpu_us_per_write: f64,
    switches_per_write: f64,
}

/// Each group's leader, as node `via` sees it (`RAFTKIT.SHARDS`); `None` until every group has
/// one.
fn shard_leaders(cluster: &LocalCluster, via: u64) -> Option<Vec<u64>> {
    let mut client = cluster.client(via, Duration::from_secs(5)).ok()?;
    let Reply::Array(Some(lines)) = client.call(&[b"RAFTKIT.SHARDS"]).ok()? else { return None };
    let leaders: Option<Vec<u64>> = lines
        .iter()
        .map(|l| {
            let text = l.as_text()?;
            text.split_whitespace().find_map(|kv| kv.strip_prefix("leader="))?.parse().ok()
        })
        .collect();
    leaders.filter(|l| l.iter().all(|&id| id != 0))
}

/// With shards: waits for the leaders to be balanced (within one), then gives each of
/// `clients` connections the keys of some groups, and the address of the node leading them.
fn routed_targets(
    cluster: &LocalCluster,
    shards: usize,
    clients: usize,
) -> Result<Vec<(std::net::SocketAddr, Vec<String>)>, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let leaders = loop {
        if let Some(l) = shard_leaders(cluster, 1) {
            let counts: Vec<usize> =
                cluster.ids().iter().map(|&id| l.iter().filter(|&&x| x == id).count()).collect();
            let (lo, hi) = (counts.iter().min().copied(), counts.iter().max().copied());
            if hi.unwrap_or(0) - lo.unwrap_or(0) <= 1 {
                break l;
            }
        }
        if std::time::Instant::now() > deadline {
            return Err("leaders never balanced".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // A few keys per group.
    let mut keys: Vec<Vec<String>> = vec![Vec::new(); shards];
    let mut i = 0u64;
    while keys.iter().any(|k| k.len() < 8) {
        let key = format!("bench:{i}");
        let g = shard_of(key.as_bytes(), shards);
        if keys[g].len() < 8 {
            keys[g].push(key);
        }
        i += 1;
    }
    let ids = cluster.ids();
    let mut targets = Vec::with_capacity(clients);
    for c in 0..clients {
        let node = ids[c % ids.len()];
        let mine: Vec<usize> = (0..shards).filter(|&g| leaders[g] == node).collect();
        let on_node = (clients - c % ids.len()).div_ceil(ids.len());
        let index = c / ids.len();
        let groups: Vec<usize> =
            mine.iter().copied().skip(index % mine.len().max(1)).step_by(on_node.max(1)).collect();
        let client_keys: Vec<String> = groups.iter().flat_map(|&g| keys[g].clone()).collect();
        if client_keys.is_empty() {
            return Err(format!("node {node} leads no group"));
        }
        targets.push((cluster.client_addr(node), client_keys));
    }
    Ok(targets)
}

fn run_cell(
    exe: &std::path::Path,
    shards: usize,
    store: &str,
    mode: &str,
    clients: usize,
    value: usize,
    secs: f64,
) -> Result<Cell, String> {
    let durability = match mode {
        "always" => Durability::Always,
        "group" => Durability::group_commit(),
        // Not a durable configuration: shows what the cluster costs without the disk.
        "never" => Durability::Never,
        other => return Err(format!("unknown mode {other}")),
    };
    let log_store = store.parse::<LogStoreKind>()?;
    let options = ClusterOptions {
        durability,
        log_store,
        log_filter: "warn".into(),
        shards,
        tick: std::env::var("RAFTKIT_CLUSTER_TICK_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis),
        ..ClusterOptions::default()
    };
    let cluster =
        LocalCluster::start(exe, vec!["--serve".into()], &options).map_err(|e| e.to_string())?;
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).ok_or("no leader")?;
    let targets = if shards > 1 {
        routed_targets(&cluster, shards, clients)?
    } else {
        vec![(cluster.client_addr(leader), Vec::new()); clients]
    };
    let pids: Vec<u32> = cluster.ids().iter().filter_map(|&id| cluster.pid(id)).collect();
    // A new WAL writes its first segments out in full (two kept ready, 64 MiB each, per node);
    // their writeback landing in the measured seconds took a third off some runs. Measure the
    // steady state: everything written so far goes to the disk first.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs_f64(secs);
    let load = std::thread::spawn(move || load::run_sets(&targets, value, warmup, measure));
    std::thread::sleep(warmup);
    let cpu_before = total_cpu_seconds(&pids);
    let switches_before = total_context_switches(&pids);
    let result = load.join().map_err(|_| "load generator panicked")?;
    let cpu_after = total_cpu_seconds(&pids);
    let switches_after = total_context_switches(&pids);
    let result = result.map_err(|e| format!("load: {e}"))?;
    let elapsed = result.measured.as_secs_f64();
    let mut lat = result.latencies_us;
    lat.sort_unstable();
    let writes = lat.len() as u64;
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as u64
    };
    Ok(Cell {
        shards,
        store: store.into(),
        mode: mode.into(),
        clients,
        value,
        writes,
        secs: elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        cpu_us_per_write: (cpu_after - cpu_before) * 1e6 / writes.max(1) as f64,
        switches_per_write: switches_after.saturating_sub(switches_before) as f64
            / writes.max(1) as f64,
    })
}

fn main() {
    raftkit_benches::serve_if_node();
    let exe = std::env::current_exe().expect("own path");
    let secs: f64 =
        std::env::var("RAFTKIT_CLUSTER_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let values = env_list("RAFTKIT_CLUSTER_VALUES", "64,1024");
    let disk = tempfile::tempdir().expect("a temporary directory");
    for value in &values {
        if let Ok(bs) = value.parse::<usize>() {
            match fio_limit(disk.path(), bs, true) {
                Some(f) => println!(
                    "fio on this disk, {bs} B write + fdatasync: {:.0}/s, fdatasync p50 {:.0} us, p99 {:.0} us",
                    f.writes_per_sec, f.sync_p50_us, f.sync_p99_us
                ),
                None => println!("fio is not installed: no disk limit for {bs} B (apt-get install fio)"),
            }
        }
    }
    let default_stores = if cfg!(feature = "compare") { "wal,raft-engine" } else { "wal" };
    let repeat: usize = std::env::var("RAFTKIT_CLUSTER_REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    println!("3-node cluster on loopback, SET on the leader, every write fsynced on a quorum (unless `never`); {secs} s per cell");
    println!(
        "{:>6} {:<12} {:<7} {:>7} {:>6} {:>10} {:>9} {:>9} {:>13} {:>15}",
        "shards",
        "store",
        "mode",
        "clients",
        "value",
        "writes/s",
        "p50 ms",
        "p99 ms",
        "CPU us/write",
        "switches/write"
    );
    let mut specs: Vec<Spec> = Vec::new();
    for shards in env_list("RAFTKIT_CLUSTER_SHARDS", "1") {
        let Ok(shards) = shards.parse::<usize>() else {
            eprintln!("bad shard count {shards}");
            continue;
        };
        for store in env_list("RAFTKIT_CLUSTER_STORES", default_stores) {
            for mode in env_list("RAFTKIT_CLUSTER_MODES", "always,group") {
                for value in &values {
                    for clients in env_list("RAFTKIT_CLUSTER_CLIENTS", "1,16,64") {
                        let (Ok(value), Ok(clients)) =
                            (value.parse::<usize>(), clients.parse::<usize>())
                        else {
                            eprintln!("bad cell {store} {mode} {value} {clients}");
                            continue;
                        };
                        specs.push(Spec {
                            shards,
                            store: store.clone(),
                            mode: mode.clone(),
                            clients,
                            value,
                        });
                    }
                }
            }
        }
    }
    // Every repeat runs every cell once, in order, so cells compared within a repeat ran close
    // together in time (the machine's noise comes and goes).
    let mut results: Vec<Vec<Option<f64>>> = vec![Vec::new(); specs.len()];
    for _ in 0..repeat {
        for (i, spec) in specs.iter().enumerate() {
            let cell = run_cell(
                &exe,
                spec.shards,
                &spec.store,
                &spec.mode,
                spec.clients,
                spec.value,
                secs,
            );
            match &cell {
                Ok(c) => println!(
                    "{:>6} {:<12} {:<7} {:>7} {:>6} {:>10.0} {:>9.3} {:>9.3} {:>13.1} {:>15.2}",
                    c.shards,
                    c.store,
                    c.mode,
                    c.clients,
                    c.value,
                    c.writes as f64 / c.secs,
                    c.p50_us as f64 / 1e3,
                    c.p99_us as f64 / 1e3,
                    c.cpu_us_per_write,
                    c.switches_per_write
                ),
                Err(e) => println!(
                    "{:>6} {:<12} {:<7} {:>7} {:>6} failed: {e}",
                    spec.shards, spec.store, spec.mode, spec.clients, spec.value
                ),
            }
            results[i].push(cell.ok().map(|c| c.writes as f64 / c.secs));
        }
    }
    print_ratios(&specs, &results);
}

/// One cell of the grid.
#[derive(Clone, Debug, PartialEq)]
struct Spec {
    shards: usize,
    store: String,
    mode: String,
    clients: usize,
    value: usize,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// With more than one shard count: each cell's writes/s against the same cell with the first
/// shard count, as ratios within each repeat (cells that ran close together), and their median.
fn print_ratios(specs: &[Spec], results: &[Vec<Option<f64>>]) {
    let Some(first) = specs.first().map(|s| s.shards) else { return };
    let mut printed_header = false;
    for (i, spec) in specs.iter().enumerate() {
        if spec.shards == first {
            continue;
        }
        let base = specs.iter().position(|b| {
            b.shards == first
                && (&b.store, &b.mode, b.clients, b.value)
                    == (&spec.store, &spec.mode, spec.clients, spec.value)
        });
        let Some(base) = base else { continue };
        let ratios: Vec<f64> = results[i]
            .iter()
            .zip(&results[base])
            .filter_map(|(&many, &one)| Some(many? / one?))
            .collect();
        let Some(mid) = median(ratios.clone()) else { continue };
        if !printed_header {
            println!("ratios to {first} shard(s), within each repeat (median first):");
            printed_header = true;
        }
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{:>6} {:<12} {:<7} {:>7} {:>6} {:>6.2}x  ({})",
            spec.shards,
            spec.store,
            spec.mode,
            spec.clients,
            spec.value,
            mid,
            each.join(" ")
        );
    }
}
