//! Many groups per process, as real processes: three kv-server nodes (this binary, re-executed
//! with `--serve`) with `--shards N` (default 10,000; `RAFTKIT_SHARDS`), raft-wal logs, on
//! loopback. Prints, from one run:
//!
//! - how long until every group has a leader, and until each has committed a write;
//! - idle: once every group sleeps, the CPU of the three processes together over 10 s (as a
//!   share of one core), and each process's resident memory per group (its RSS less that of a
//!   one-group node started in the same run, divided by N);
//! - restart: a node SIGKILLed and started again, the time until every group serves a read
//!   through it, and until the leaders are balanced again (within one of even);
//! - failover: that node killed for good once every group sleeps again, the time until every
//!   group it led has another leader (as node 1 sees it), and until every group serves a read
//!   through node 1;
//! - how many groups each node leads.
//!
//! `cargo bench -p raftkit-benches --bench shards`

#![allow(clippy::print_stdout)] // A bench binary that prints its figures.

use std::time::{Duration, Instant};

use raftkit_benches::procstat::total_cpu_seconds;
use raftkit_examples::client::Client;
use raftkit_examples::cluster::{ClusterOptions, LocalCluster};
use raftkit_examples::resp::Reply;
use raftkit_examples::server::one_key_per_shard;

/// `(leader, asleep)` of every group, as node `via` sees it.
fn shard_lines(cluster: &LocalCluster, via: u64) -> Option<Vec<(u64, bool)>> {
    let mut client = cluster.client(via, Duration::from_secs(30)).ok()?;
    let Reply::Array(Some(lines)) = client.call(&[b"RAFTKIT.SHARDS"]).ok()? else { return None };
    lines
        .iter()
        .map(|l| {
            let text = l.as_text()?;
            let field = |name: &str| {
                text.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            };
            Some((field("leader")?.parse().ok()?, field("asleep")? == "1"))
        })
        .collect()
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Reads every key of `left` back through node `via` (GETs, 500 pipelined), keeping in `left`
/// those that did not read `{value}{i}` (as `set_all` wrote them); returns the first error reply
/// seen.
fn read_back(
    cluster: &LocalCluster,
    via: u64,
    keys: &[String],
    left: &mut Vec<usize>,
    value: &str,
) -> Option<String> {
    let Ok(mut client) = cluster.client(via, Duration::from_secs(30)) else {
        return Some("cannot connect".into());
    };
    let mut failed = Vec::new();
    let mut first_error = None;
    for chunk in left.chunks(500) {
        // GETs pipelined: each group answers for itself.
        for &i in chunk {
            if client.send(&[b"GET", keys[i].as_bytes()]).is_err() {
                return Some("send failed".into());
            }
        }
        if client.flush().is_err() {
            return Some("send failed".into());
        }
        for &i in chunk {
            match client.read() {
                Ok(v) if v.as_text() == Some(format!("{value}{i}")) => {}
                other => {
                    first_error.get_or_insert(format!("{other:?}"));
                    failed.push(i);
                }
            }
        }
    }
    *left = failed;
    first_error
}

/// How many replicas sleep, over every node that answers.
fn replicas_asleep(cluster: &LocalCluster, ids: &[u64]) -> usize {
    ids.iter()
        .filter_map(|&id| shard_lines(cluster, id))
        .map(|l| l.iter().filter(|x| x.1).count())
        .sum()
}

fn counts(lines: &[(u64, bool)], ids: &[u64]) -> Vec<usize> {
    ids.iter().map(|&id| lines.iter().filter(|l| l.0 == id).count()).collect()
}

fn balanced(c: &[usize]) -> bool {
    c.iter().max().copied().unwrap_or(0) - c.iter().min().copied().unwrap_or(0) <= 1
}

fn main() {
    raftkit_benches::serve_if_node();
    let exe = std::env::current_exe().expect("own path");
    let n: usize =
        std::env::var("RAFTKIT_SHARDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    if let Err(e) = run(&exe, n) {
        println!("failed: {e}");
        std::process::exit(1);
    }
}

fn run(exe: &std::path::Path, n: usize) -> Result<(), String> {
    // A one-group node's resident memory, for the baseline.
    let one = LocalCluster::start(
        exe,
        vec!["--serve".into()],
        &ClusterOptions { nodes: 1, log_filter: "warn".into(), ..ClusterOptions::default() },
    )
    .map_err(|e| e.to_string())?;
    one.wait_for_leader(Duration::from_secs(20)).ok_or("the one-group node never led")?;
    std::thread::sleep(Duration::from_secs(1));
    let base_rss = one.pid(1).map_or(0, rss_bytes);
    drop(one);

    let mut options =
        ClusterOptions { shards: n, log_filter: "warn".into(), ..ClusterOptions::default() };
    if let Some(ms) = std::env::var("RAFTKIT_TICK_MS").ok().and_then(|v| v.parse().ok()) {
        options.tick = Some(Duration::from_millis(ms));
    }
    let started = Instant::now();
    let mut cluster =
        LocalCluster::start(exe, vec!["--serve".into()], &options).map_err(|e| e.to_string())?;
    let ids = cluster.ids();
    println!(
        "3 kv-server processes, {n} groups each (--shards {n}, --tick-ms {}), raft-wal, loopback",
        options.tick.unwrap_or_else(|| raftkit_examples::server::default_tick(n)).as_millis()
    );
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if shard_lines(&cluster, 1).is_some_and(|l| l.iter().all(|x| x.0 != 0)) {
            break;
        }
        if Instant::now() > deadline {
            return Err("not every group elected a leader within 15 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("start: every group has a leader after {:.1} s", started.elapsed().as_secs_f64());
    let keys = one_key_per_shard(n);
    cluster.set_all(1, &keys, "a", Duration::from_secs(600)).map_err(|e| e.to_string())?;
    println!("start: every group committed a write after {:.1} s", started.elapsed().as_secs_f64());

    // Idle: wait for every group to sleep on every node.
    let idle_from = Instant::now();
    loop {
        let asleep = replicas_asleep(&cluster, &ids);
        if asleep == 3 * n {
            break;
        }
        if idle_from.elapsed() > Duration::from_secs(120) {
            println!("idle: only {asleep} of {} replicas asleep after 120 s", 3 * n);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "idle: every replica asleep {:.1} s after the writes",
        idle_from.elapsed().as_secs_f64()
    );
    let pids: Vec<u32> = ids.iter().filter_map(|&id| cluster.pid(id)).collect();
    let cpu_before = total_cpu_seconds(&pids);
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let cpu = (total_cpu_seconds(&pids) - cpu_before) / window.as_secs_f64();
    let rss: Vec<u64> = pids.iter().map(|&p| rss_bytes(p)).collect();
    println!(
        "idle: CPU of the three processes together {:.1}% of one core (goal: at most 5%)",
        cpu * 100.0
    );
    for (id, r) in ids.iter().zip(&rss) {
        println!(
            "idle: node {id} resident {:.1} MiB, {:.1} KiB per group above a one-group node's {:.1} MiB (goal: at most 16 KiB)",
            *r as f64 / (1 << 20) as f64,
            r.saturating_sub(base_rss) as f64 / n as f64 / 1024.0,
            base_rss as f64 / (1 << 20) as f64
        );
    }
    if let Some(l) = shard_lines(&cluster, 1) {
        println!("leaders before the restart: {:?} (nodes {ids:?})", counts(&l, &ids));
    }

    // Restart: node 3 killed, started again; every group must serve a read through it.
    cluster.kill(3).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(2));
    let restarted = Instant::now();
    cluster.spawn(3).map_err(|e| e.to_string())?;
    let mut left: Vec<usize> = (0..n).collect();
    let mut reported = Instant::now();
    let mut listening = false;
    loop {
        let error = if Client::connect(cluster.client_addr(3), Duration::from_secs(1)).is_ok() {
            if !listening {
                listening = true;
                println!(
                    "restart: node 3 listens {:.2} s after it was started",
                    restarted.elapsed().as_secs_f64()
                );
            }
            let before = left.len();
            let pass_from = restarted.elapsed().as_secs_f64();
            let e = read_back(&cluster, 3, &keys, &mut left, "a");
            if left.len() != before || pass_from < 1.5 {
                println!(
                    "restart: {pass_from:.2}-{:.2} s: {} groups serve, {} left{}",
                    restarted.elapsed().as_secs_f64(),
                    n - left.len(),
                    left.len(),
                    e.as_deref().map(|e| format!(" (first failure: {e})")).unwrap_or_default()
                );
            }
            e
        } else {
            Some("not listening yet".into())
        };
        if left.is_empty() {
            break;
        }
        if reported.elapsed() > Duration::from_secs(10) {
            println!(
                "restart: after {:.0} s, {} groups do not serve through node 3 yet ({})",
                restarted.elapsed().as_secs_f64(),
                left.len(),
                error.unwrap_or_default()
            );
            reported = Instant::now();
        }
        if restarted.elapsed() > Duration::from_secs(300) {
            return Err("the restarted node did not serve every group within 5 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "restart: every group serves through the restarted node {:.2} s after it was started (goal: at most 3 s)",
        restarted.elapsed().as_secs_f64()
    );
    let mut last = Vec::new();
    loop {
        if let Some(l) = shard_lines(&cluster, 1) {
            last = counts(&l, &ids);
            if l.iter().all(|x| x.0 != 0) && balanced(&last) {
                break;
            }
        }
        if restarted.elapsed() > Duration::from_secs(300) {
            println!("restart: leaders not balanced within 5 minutes: {last:?}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "restart: leaders balanced within one of even {:.1} s after the restart: {last:?} (nodes {ids:?})",
        restarted.elapsed().as_secs_f64()
    );

    // Failover: once every replica sleeps again, node 3 is killed for good; the groups it led
    // must find out (the liveness check) and elect another leader.
    let idle_from = Instant::now();
    while idle_from.elapsed() < Duration::from_secs(120) {
        let asleep = replicas_asleep(&cluster, &ids);
        if asleep == 3 * n {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    cluster.kill(3).map_err(|e| e.to_string())?;
    let killed = Instant::now();
    // First the elections, as node 1 sees them: a read meanwhile waits out the server's
    // request timeout (3 s) for a group whose leader is dead, which would round the figure up
    // to the next read that came after it.
    loop {
        if shard_lines(&cluster, 1).is_some_and(|l| l.iter().all(|x| x.0 != 0 && x.0 != 3)) {
            break;
        }
        if killed.elapsed() > Duration::from_secs(300) {
            return Err("groups still led by the dead node 5 minutes after its death".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "failover: every group led by another node {:.2} s after node 3 (leading a third of the sleeping groups) was killed",
        killed.elapsed().as_secs_f64()
    );
    let mut left: Vec<usize> = (0..n).collect();
    while !left.is_empty() {
        read_back(&cluster, 1, &keys, &mut left, "a");
        if killed.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "{} groups did not serve within 5 minutes of a node's death",
                left.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "failover: every group serves through node 1 {:.2} s after node 3 was killed",
        killed.elapsed().as_secs_f64()
    );
    Ok(())
}
