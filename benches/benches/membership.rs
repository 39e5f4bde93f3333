//! Membership changes on a kv-server cluster on loopback (this binary, re-executed with
//! `--serve`), measured from the clients' side.
//!
//! 1. **Writes during changes.** 16 connections SET 64-byte values through one follower that
//!    stays a member throughout (it forwards to the leader), one closed-loop load for the whole
//!    run, while the cluster grows from 3 voters to 5 (two nodes join with `--join` and are
//!    promoted together), shrinks to 3 (the leader and another voter removed in one change),
//!    and replaces a voter whose data directory is deleted (removed, rejoined under its id on an
//!    empty disk, promoted). For each change: how long it took, the writes' rate and p99 while
//!    it ran, against the steady state before it. Any error reply (`-TIMEOUT` included) aborts
//!    the load, so a printed table means there was none.
//! 2. **A learner that needs a large snapshot.** The cluster holds `RAFTKIT_MEMBERSHIP_MB` of
//!    values (default 1024, 64 KiB each) and has compacted its log, so a new node must receive
//!    a snapshot of it all: the time from its start (`--join`) until it is added, has
//!    installed the snapshot, has caught up and is promoted, with the leader's write p99
//!    meanwhile against before.
//!
//! `cargo bench -p raftkit-benches --bench membership`; `RAFTKIT_MEMBERSHIP_MB` sets the data
//! size of part 2 (0 skips it).

#![allow(clippy::print_stdout)] // A bench binary that prints its figures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_core::NodeId;
use raftkit_benches::load::{self, LoadResult, Op};
use raftkit_examples::cluster::{ClusterOptions, LocalCluster};
use raftkit_examples::resp::Reply;
use raftkit_examples::server::fetch_members;

const WAIT: Duration = Duration::from_secs(120);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn leader(cluster: &LocalCluster) -> Result<NodeId, String> {
    Ok(cluster.wait_for_leader(Duration::from_secs(20)).ok_or("no leader")?.0)
}

/// Runs an admin command on the leader until `+OK`, retrying on `-TRYAGAIN`, `-LAGGING`,
/// `-NOLEADER`.
fn admin(cluster: &LocalCluster, args: &[&str]) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    while Instant::now() < deadline {
        let l = leader(cluster)?;
        let reply = cluster.client(l, Duration::from_secs(30)).and_then(|mut c| c.call(&args));
        match reply {
            Ok(Reply::Simple(_)) => return Ok(()),
            Ok(r) if matches!(r.error_code(), Some("TRYAGAIN" | "LAGGING" | "NOLEADER")) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
            other => return Err(format!("{:?}: {other:?}", String::from_utf8_lossy(args[0]))),
        }
    }
    Err(format!("{:?} never succeeded", String::from_utf8_lossy(args[0])))
}

/// Waits until the leader lists exactly `want` as `(id, role)`.
fn wait_members(cluster: &LocalCluster, want: &[(NodeId, &str)]) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let l = leader(cluster)?;
        let got: Vec<(NodeId, String)> =
            fetch_members(cluster.client_addr(l), Duration::from_secs(5))
                .map(|m| m.into_iter().map(|m| (m.id, m.role)).collect())
                .unwrap_or_default();
        if got.iter().map(|(i, r)| (*i, r.as_str())).eq(want.iter().copied()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("members {got:?}, wanted {want:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until each of `ids` has applied what the leader had committed when asked.
fn wait_caught_up(cluster: &LocalCluster, ids: &[NodeId]) -> Result<(), String> {
    let l = leader(cluster)?;
    let target = cluster.info_u64(l, "commit_index").ok_or("no commit index")?;
    let deadline = Instant::now() + WAIT;
    for &id in ids {
        while cluster.info_u64(id, "applied_index").unwrap_or(0) < target {
            if Instant::now() > deadline {
                return Err(format!("node {id} did not catch up to {target}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

fn voters(ids: &[NodeId]) -> Vec<(NodeId, &'static str)> {
    ids.iter().map(|&id| (id, "voter")).collect()
}

/// A measured window of the load: `[from, to)` microseconds since the measurement began.
struct Window {
    what: String,
    from: u64,
    to: u64,
}

fn row(what: &str, load: &LoadResult, from: u64, to: u64, steady_p99: Option<u64>) {
    let n = load.sent_us.iter().filter(|&&t| t >= from && t < to).count();
    let secs = (to - from) as f64 / 1e6;
    let p50 = load.quantile_us(0.5, |t| t >= from && t < to);
    let p99 = load.quantile_us(0.99, |t| t >= from && t < to);
    let ratio =
        steady_p99.map_or(String::new(), |s| format!("{:.2}x", p99 as f64 / s.max(1) as f64));
    println!(
        "{what:<44} {:>8.2} {:>9.0} {:>8.2} {:>8.2} {ratio:>8}",
        secs,
        n as f64 / secs.max(1e-9),
        p50 as f64 / 1e3,
        p99 as f64 / 1e3
    );
}

fn writes_during_changes(exe: &std::path::Path) -> Result<(), String> {
    let options = ClusterOptions { log_filter: "warn".into(), ..ClusterOptions::default() };
    let mut cluster =
        LocalCluster::start(exe, vec!["--serve".into()], &options).map_err(|e| e.to_string())?;
    let first = leader(&cluster)?;
    // The clients' node: a follower that every change keeps.
    let stable = (1..=3).find(|&id| id != first).ok_or("no follower")?;
    let addrs: Vec<SocketAddr> = vec![cluster.client_addr(stable); 16];
    let steady = Duration::from_secs(env_or("RAFTKIT_MEMBERSHIP_STEADY_SECS", 3));
    let total = Duration::from_secs(120);
    let stop = Arc::new(AtomicBool::new(false));
    let stop_load = stop.clone();
    // Two seconds of warm-up, not measured (connections, caches, the first elections' dust).
    let warmup = Duration::from_secs(2);
    let load = std::thread::spawn(move || {
        load::run_until(&addrs, Op::Set { value: 64 }, warmup, total, &stop_load)
    });
    std::thread::sleep(warmup);
    let began = Instant::now();
    let now_us = || began.elapsed().as_micros() as u64;
    let mut windows = Vec::new();
    let pause = |windows: &mut Vec<Window>, what: &str| {
        let from = now_us();
        std::thread::sleep(steady);
        windows.push(Window { what: what.into(), from, to: now_us() });
    };
    pause(&mut windows, "steady, 3 voters");

    let from = now_us();
    cluster.spawn_joining(4, stable, stable).map_err(|e| e.to_string())?;
    cluster.spawn_joining(5, stable, stable).map_err(|e| e.to_string())?;
    wait_members(
        &cluster,
        &[(1, "voter"), (2, "voter"), (3, "voter"), (4, "learner"), (5, "learner")],
    )?;
    let to = now_us();
    windows.push(Window { what: "start 2 processes, added as learners".into(), from, to });
    let from = now_us();
    wait_caught_up(&cluster, &[4, 5])?;
    windows.push(Window { what: "the 2 learners catch up".into(), from, to: now_us() });
    pause(&mut windows, "steady, 3 voters and 2 learners");
    let from = now_us();
    admin(&cluster, &["RAFTKIT.PROMOTE", "4", "5"])?;
    wait_members(&cluster, &voters(&[1, 2, 3, 4, 5]))?;
    windows.push(Window { what: "promote both (joint consensus)".into(), from, to: now_us() });
    pause(&mut windows, "steady, 5 voters");

    let l = leader(&cluster)?;
    let other = (1..=5).find(|&id| id != l && id != stable).ok_or("no other voter")?;
    let from = now_us();
    admin(&cluster, &["RAFTKIT.REMOVE", &l.to_string(), &other.to_string()])?;
    let left: Vec<NodeId> = (1..=5).filter(|&id| id != l && id != other).collect();
    wait_members(&cluster, &voters(&left))?;
    windows.push(Window {
        what: format!("remove the leader ({l}) and node {other}"),
        from,
        to: now_us(),
    });
    pause(&mut windows, "steady, 3 voters again");

    let l = leader(&cluster)?;
    let lost = *left.iter().find(|&&id| id != l && id != stable).ok_or("no node to replace")?;
    cluster.wipe(lost).map_err(|e| e.to_string())?;
    let from = now_us();
    admin(&cluster, &["RAFTKIT.REMOVE", &lost.to_string()])?;
    let rest: Vec<NodeId> = left.iter().copied().filter(|&id| id != lost).collect();
    wait_members(&cluster, &voters(&rest))?;
    windows.push(Window {
        what: format!("remove node {lost}, its disk deleted"),
        from,
        to: now_us(),
    });
    let from = now_us();
    cluster.spawn_joining(lost, stable, stable).map_err(|e| e.to_string())?;
    let mut want = voters(&left);
    want.iter_mut().filter(|(id, _)| *id == lost).for_each(|m| m.1 = "learner");
    wait_members(&cluster, &want)?;
    wait_caught_up(&cluster, &[lost])?;
    windows.push(Window {
        what: format!("node {lost} restarts empty, rejoins, catches up"),
        from,
        to: now_us(),
    });
    pause(&mut windows, "steady, 2 voters and a learner");
    let from = now_us();
    admin(&cluster, &["RAFTKIT.PROMOTE", &lost.to_string()])?;
    wait_members(&cluster, &voters(&left))?;
    windows.push(Window { what: format!("promote node {lost}"), from, to: now_us() });
    pause(&mut windows, "steady, after the replacement");
    stop.store(true, Ordering::Relaxed);
    let load = load
        .join()
        .map_err(|_| "load panicked")?
        .map_err(|e| format!("the load failed during the changes: {e}"))?;
    cluster.kill_all();
    println!(
        "\nwrites during membership changes: 16 clients, SET 64 B through node {stable} (a follower kept throughout)"
    );
    println!(
        "{:<44} {:>8} {:>9} {:>8} {:>8} {:>8}",
        "phase", "secs", "writes/s", "p50 ms", "p99 ms", "p99/steady"
    );
    let mut steady_p99 = None;
    for w in &windows {
        if w.what.starts_with("steady") {
            steady_p99 = Some(load.quantile_us(0.99, |t| t >= w.from && t < w.to));
            row(&w.what, &load, w.from, w.to, None);
        } else {
            row(&w.what, &load, w.from, w.to, steady_p99);
        }
    }
    Ok(())
}

fn main() {
    raftkit_benches::serve_if_node();
    let exe = std::env::current_exe().expect("own path");
    if let Err(e) = writes_during_changes(&exe) {
        println!("writes during changes: FAILED: {e}");
    }
    let mb: u64 = env_or("RAFTKIT_MEMBERSHIP_MB", 1024);
    if mb > 0 {
        if let Err(e) = large_snapshot(&exe, mb) {
            println!("a learner that needs a {mb} MiB snapshot: FAILED: {e}");
        }
    }
}

/// Part 2: a learner that must receive `mb` MiB by snapshot.
fn large_snapshot(exe: &std::path::Path, mb: u64) -> Result<(), String> {
    // Small snapshot thresholds so the log is compacted well behind the data.
    let options = ClusterOptions {
        log_filter: "warn".into(),
        snapshot_entries: 2_000,
        request_timeout: Duration::from_secs(10),
        ..ClusterOptions::default()
    };
    let mut cluster =
        LocalCluster::start(exe, vec!["--serve".into()], &options).map_err(|e| e.to_string())?;
    let l = leader(&cluster)?;
    let value = vec![b'v'; 64 << 10];
    let keys = mb * 16;
    let fill_started = Instant::now();
    let mut client = cluster.client(l, Duration::from_secs(60)).map_err(|e| e.to_string())?;
    for chunk in (0..keys).collect::<Vec<_>>().chunks(64) {
        for k in chunk {
            let key = format!("big:{k}");
            client.send(&[b"SET", key.as_bytes(), &value]).map_err(|e| e.to_string())?;
        }
        client.flush().map_err(|e| e.to_string())?;
        for _ in chunk {
            match client.read().map_err(|e| e.to_string())? {
                Reply::Simple(_) => {}
                other => return Err(format!("fill: {other:?}")),
            }
        }
    }
    let fill = fill_started.elapsed();
    // Let every node snapshot and compact.
    let leader_commit = cluster.info_u64(l, "commit_index").unwrap_or(0);
    let deadline = Instant::now() + WAIT;
    while cluster.info_u64(l, "snapshot_index").unwrap_or(0) + 4_000 < leader_commit {
        if Instant::now() > deadline {
            return Err("the leader took no snapshot".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "\na learner that needs a snapshot: {mb} MiB in {keys} values of 64 KiB, written in {:.1} s",
        fill.as_secs_f64()
    );

    // Steady writes on the leader, then the same while node 4 joins, catches up, is promoted.
    let addrs: Vec<SocketAddr> = vec![cluster.client_addr(l); 16];
    let steady = Duration::from_secs(3);
    let total = Duration::from_secs(600);
    let stop = Arc::new(AtomicBool::new(false));
    let stop_load = stop.clone();
    let load = std::thread::spawn(move || {
        load::run_until(&addrs, Op::Set { value: 64 }, Duration::ZERO, total, &stop_load)
    });
    let began = Instant::now();
    let now_us = || began.elapsed().as_micros() as u64;
    std::thread::sleep(steady);
    let join_at = now_us();
    let t0 = Instant::now();
    cluster.spawn_joining(4, l, l).map_err(|e| e.to_string())?;
    wait_members(&cluster, &[(1, "voter"), (2, "voter"), (3, "voter"), (4, "learner")])?;
    let added = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut installed = None;
    loop {
        let snap = cluster.info_u64(4, "snapshot_index").unwrap_or(0);
        if installed.is_none() && snap > 0 {
            installed = Some(t0.elapsed());
        }
        let applied = cluster.info_u64(4, "applied_index").unwrap_or(0);
        let commit = cluster.info_u64(l, "commit_index").unwrap_or(u64::MAX);
        if snap > 0 && applied + 1_000 >= commit {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("node 4 did not catch up (applied {applied} of {commit})"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let caught_up = t0.elapsed();
    admin(&cluster, &["RAFTKIT.PROMOTE", "4"])?;
    wait_members(&cluster, &voters(&[1, 2, 3, 4]))?;
    let promoted = t0.elapsed();
    let done_at = now_us();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let load = load
        .join()
        .map_err(|_| "load panicked")?
        .map_err(|e| format!("the leader's writes failed: {e}"))?;
    cluster.kill_all();
    println!(
        "node 4 added {:.2} s after it started, snapshot installed at {:.2} s, caught up at {:.2} s, promoted at {:.2} s",
        added.as_secs_f64(),
        installed.map_or(f64::NAN, |d| d.as_secs_f64()),
        caught_up.as_secs_f64(),
        promoted.as_secs_f64()
    );
    println!(
        "{:<44} {:>8} {:>9} {:>8} {:>8} {:>8}",
        "phase", "secs", "writes/s", "p50 ms", "p99 ms", "p99/steady"
    );
    let steady_p99 = load.quantile_us(0.99, |t| t < join_at);
    row("steady, 16 clients SET 64 B on the leader", &load, 0, join_at, None);
    row("while node 4 joins, catches up, is promoted", &load, join_at, done_at, Some(steady_p99));
    Ok(())
}
