//! Reads and leadership transfer on a 3-node kv-server cluster on loopback (this binary,
//! re-executed with `--serve`), with Redis as the reference in the same run.
//!
//! Every figure comes from one closed-loop load generator (one thread, N connections, one
//! command outstanding each, as `redis-benchmark` drives a server), pointed at our nodes or at
//! a `redis-server` (no persistence) started here. GETs read 64-byte values of 1000 keys. `CPU
//! us` is the CPU time all server processes spent per command (user + system, from `/proc`).
//!
//! - SET, 64 clients on the leader (`--durability always`): the write path reads are compared
//!   with.
//! - GET by ReadIndex (the default): 1 client and 64 on the leader, and 64 spread over all
//!   three nodes (follower reads).
//! - GET from the lease (`--read-mode lease`), and through the log (`--read-mode log`).
//! - Redis GET, 1 client and 64.
//! - Leadership transfer while 16 clients write through every node: the time from sending
//!   `RAFTKIT.TRANSFER` to the new leader acknowledging a write, and the writes' p99 while
//!   transfers run against the p99 without them.
//!
//! `cargo bench -p raftkit-benches --bench reads`; environment: `RAFTKIT_READS_SECS` (measured
//! seconds per cell, default 5), `RAFTKIT_READS_TRANSFERS` (default 20).

#![allow(clippy::print_stdout)] // A bench binary that prints its figures.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raft_core::node::ReadMode;
use raft_core::NodeId;
use raftkit_benches::load::{self, LoadResult, Op};
use raftkit_benches::procstat::total_cpu_seconds;
use raftkit_examples::client::Client;
use raftkit_examples::cluster::{ClusterOptions, LocalCluster};
use raftkit_examples::resp::Reply;

const KEYS: u64 = 1000;
const WARMUP: Duration = Duration::from_secs(1);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn start_cluster(exe: &std::path::Path, read_mode: ReadMode) -> Result<LocalCluster, String> {
    let options =
        ClusterOptions { read_mode, log_filter: "warn".into(), ..ClusterOptions::default() };
    let cluster =
        LocalCluster::start(exe, vec!["--serve".into()], &options).map_err(|e| e.to_string())?;
    cluster.wait_for_leader(Duration::from_secs(10)).ok_or("no leader")?;
    Ok(cluster)
}

fn leader(cluster: &LocalCluster) -> Result<NodeId, String> {
    Ok(cluster.wait_for_leader(Duration::from_secs(10)).ok_or("no leader")?.0)
}

/// Writes `bench:0` .. `bench:999` (64 bytes each) through `addr`, pipelined.
fn preload(addr: SocketAddr) -> Result<(), String> {
    let mut client = Client::connect(addr, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let value = vec![b'v'; 64];
    for k in 0..KEYS {
        let key = format!("bench:{k}");
        client.send(&[b"SET", key.as_bytes(), &value]).map_err(|e| e.to_string())?;
    }
    client.flush().map_err(|e| e.to_string())?;
    for _ in 0..KEYS {
        match client.read().map_err(|e| e.to_string())? {
            Reply::Simple(_) => {}
            other => return Err(format!("preload: {other:?}")),
        }
    }
    Ok(())
}

/// A measured cell: the load's figures and the CPU the servers spent per command.
struct Measured {
    load: LoadResult,
    cpu_us: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.load.rate()
    }
}

/// Runs `op` from one connection per address, measuring the CPU `pids` spend meanwhile.
fn run(addrs: Vec<SocketAddr>, op: Op, secs: f64, pids: &[u32]) -> Result<Measured, String> {
    let measure = Duration::from_secs_f64(secs);
    let load = std::thread::spawn(move || load::run(&addrs, op, WARMUP, measure));
    std::thread::sleep(WARMUP);
    let before = total_cpu_seconds(pids);
    let load = load.join().map_err(|_| "load panicked")?.map_err(|e| e.to_string())?;
    let spent = total_cpu_seconds(pids) - before;
    let cpu_us = spent * 1e6 / load.latencies_us.len().max(1) as f64;
    Ok(Measured { load, cpu_us })
}

fn print_row(what: &str, clients: usize, m: &Measured) {
    let r = &m.load;
    println!(
        "{:<34} {:>7} {:>10.0} {:>9.3} {:>9.3} {:>8.1}",
        what,
        clients,
        r.rate(),
        r.quantile_us(0.5, |_| true) as f64 / 1e3,
        r.quantile_us(0.99, |_| true) as f64 / 1e3,
        m.cpu_us
    );
}

fn pids(cluster: &LocalCluster) -> Vec<u32> {
    cluster.ids().iter().filter_map(|&id| cluster.pid(id)).collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// A `redis-server` without persistence, for the reference figures.
struct Redis(Child, SocketAddr);

impl Redis {
    fn start() -> Option<Redis> {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Client::connect(addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Redis(child, addr))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads in every mode, SET for reference. Returns (SET 64, index GET 64, index GET 1 p50,
/// follower GET 64, lease GET 64, lease GET 1 p50) for the summary.
fn reads(exe: &std::path::Path, secs: f64) -> Result<[f64; 6], String> {
    println!(
        "{:<34} {:>7} {:>10} {:>9} {:>9} {:>8}",
        "3-node cluster (loopback)", "clients", "ops/s", "p50 ms", "p99 ms", "CPU us"
    );
    let cluster = start_cluster(exe, ReadMode::Index)?;
    let l = leader(&cluster)?;
    let at_leader = cluster.client_addr(l);
    preload(at_leader)?;
    let p = pids(&cluster);
    let set = run(vec![at_leader; 64], Op::Set { value: 64 }, secs, &p)?;
    print_row("SET, leader (fsync always)", 64, &set);
    let one = run(vec![at_leader], Op::Get { keys: KEYS }, secs, &p)?;
    print_row("GET ReadIndex, leader", 1, &one);
    let index = run(vec![at_leader; 64], Op::Get { keys: KEYS }, secs, &p)?;
    print_row("GET ReadIndex, leader", 64, &index);
    let all: Vec<SocketAddr> = cluster.ids().iter().map(|&id| cluster.client_addr(id)).collect();
    let spread: Vec<SocketAddr> = (0..64).map(|i| all[i % all.len()]).collect();
    let follower = run(spread, Op::Get { keys: KEYS }, secs, &p)?;
    print_row("GET ReadIndex, spread over 3 nodes", 64, &follower);
    drop(cluster);

    let cluster = start_cluster(exe, ReadMode::Lease)?;
    let at_leader = cluster.client_addr(leader(&cluster)?);
    preload(at_leader)?;
    let p = pids(&cluster);
    let lease_one = run(vec![at_leader], Op::Get { keys: KEYS }, secs, &p)?;
    print_row("GET lease, leader", 1, &lease_one);
    let lease = run(vec![at_leader; 64], Op::Get { keys: KEYS }, secs, &p)?;
    print_row("GET lease, leader", 64, &lease);
    drop(cluster);

    let cluster = start_cluster(exe, ReadMode::Log)?;
    let at_leader = cluster.client_addr(leader(&cluster)?);
    preload(at_leader)?;
    let p = pids(&cluster);
    let log = run(vec![at_leader; 64], Op::Get { keys: KEYS }, secs, &p)?;
    print_row("GET through the log, leader", 64, &log);
    drop(cluster);

    match Redis::start() {
        Some(redis) => {
            preload(redis.1)?;
            let p = [redis.0.id()];
            let r1 = run(vec![redis.1], Op::Get { keys: KEYS }, secs, &p)?;
            print_row("Redis GET (1 node, no persistence)", 1, &r1);
            let r64 = run(vec![redis.1; 64], Op::Get { keys: KEYS }, secs, &p)?;
            print_row("Redis GET (1 node, no persistence)", 64, &r64);
            println!("\nlease GET 64 / Redis GET 64: {:.2}", lease.rate() / r64.rate().max(1e-9));
        }
        None => println!("redis-server not found (apt-get install redis-server): no reference"),
    }
    let p50 = |m: &Measured| m.load.quantile_us(0.5, |_| true) as f64;
    Ok([set.rate(), index.rate(), p50(&one), follower.rate(), lease.rate(), p50(&lease_one)])
}

/// Transfers leadership round the cluster while 16 clients write through every node.
fn transfers(exe: &std::path::Path, count: usize) -> Result<(), String> {
    let cluster = start_cluster(exe, ReadMode::Index)?;
    let all: Vec<SocketAddr> = cluster.ids().iter().map(|&id| cluster.client_addr(id)).collect();
    let writers: Vec<SocketAddr> = (0..16).map(|i| all[i % all.len()]).collect();
    // A steady stretch first, then a transfer every 500 ms.
    let steady = Duration::from_secs(3);
    let period = Duration::from_millis(500);
    let measure = steady + period * count as u32 + period;
    let load =
        std::thread::spawn(move || load::run(&writers, Op::Set { value: 64 }, WARMUP, measure));
    std::thread::sleep(WARMUP + steady);
    let began = Instant::now() - steady; // When the load's measurement began.
    let mut took = Vec::new();
    let mut windows = Vec::new();
    for _ in 0..count {
        let from = leader(&cluster)?;
        let to = from % 3 + 1;
        let mut admin = Client::connect(cluster.client_addr(from), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let mut probe = Client::connect(cluster.client_addr(to), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let id = to.to_string();
        let t0 = Instant::now();
        match admin.call(&[b"RAFTKIT.TRANSFER", id.as_bytes()]) {
            Ok(Reply::Simple(_)) => {}
            other => return Err(format!("transfer: {other:?}")),
        }
        match probe.call(&[b"SET", b"probe", id.as_bytes()]) {
            Ok(Reply::Simple(_)) => {}
            other => return Err(format!("probe write: {other:?}")),
        }
        let t1 = Instant::now();
        took.push(t1 - t0);
        let start = t0.duration_since(began).as_micros() as u64;
        windows.push((start, t1.duration_since(began).as_micros() as u64 + 20_000));
        std::thread::sleep(period.saturating_sub(t1 - t0));
    }
    let result = load.join().map_err(|_| "load panicked")?.map_err(|e| e.to_string())?;
    took.sort_unstable();
    let median = took[took.len() / 2];
    let in_transfer = |at: u64| windows.iter().any(|&(a, b)| at >= a && at <= b);
    let steady_us = steady.as_micros() as u64;
    let steady_p99 = result.quantile_us(0.99, |at| at < steady_us);
    let transfer_p99 = result.quantile_us(0.99, in_transfer);
    let transfer_writes = result.sent_us.iter().filter(|&&at| in_transfer(at)).count();
    println!(
        "\nleadership transfer under 16 writers (SET spread over 3 nodes), {count} transfers:"
    );
    println!(
        "  command to the new leader acknowledging a write: median {:.1} ms, max {:.1} ms",
        median.as_secs_f64() * 1e3,
        took.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
    println!(
        "  write p99 steady {:.2} ms; during transfers {:.2} ms ({transfer_writes} writes); ratio {:.2}",
        steady_p99 as f64 / 1e3,
        transfer_p99 as f64 / 1e3,
        transfer_p99 as f64 / steady_p99.max(1) as f64
    );
    Ok(())
}

fn main() {
    raftkit_benches::serve_if_node();
    let exe = std::env::current_exe().expect("own path");
    let secs: f64 = env_or("RAFTKIT_READS_SECS", 5.0);
    match reads(&exe, secs) {
        Ok([set, index, index_p50, follower, lease, lease_p50]) => {
            println!("ReadIndex GET 64 / SET 64: {:.2}", index / set.max(1e-9));
            println!("ReadIndex GET 1-client p50: {:.0} us", index_p50);
            println!("spread GET 64 / leader GET 64: {:.2}", follower / index.max(1e-9));
            println!("lease GET 64: {lease:.0}/s, 1-client p50: {lease_p50:.0} us");
        }
        Err(e) => println!("reads failed: {e}"),
    }
    if let Err(e) = transfers(&exe, env_or("RAFTKIT_READS_TRANSFERS", 20)) {
        println!("transfers failed: {e}");
    }
}
