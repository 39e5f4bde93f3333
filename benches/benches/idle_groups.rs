//! What idle groups cost: three nodes (each its own `Runtime` and `Router`, as three processes
//! would have, in one process here) host N groups of three replicas each, with hibernation on.
//! Every group elects a leader and commits a write, then everything goes quiet. Printed: how
//! long until every group slept, the CPU the whole process uses per second while idle (as a
//! share of one core), resident memory per group replica, and how long one group takes to
//! answer a write after sleeping.
//!
//! `cargo bench -p raftkit-benches --bench idle_groups` (10,000 groups);
//! `RAFTKIT_GROUPS=1000` for fewer.

#![allow(clippy::print_stdout)] // A bench binary that prints its figures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::RwLock;
use raft_core::node::{Node, NodeBuilder, Runtime, RuntimeOptions};
use raft_core::{GroupId, Inbound, MemLogStore, Message, NodeId, Router, Transport};
use raftkit_benches::count::Count;
use raftkit_benches::procstat::cpu_seconds;

/// The system allocator, keeping count of the bytes live on the heap.
struct LiveAlloc;

static LIVE: AtomicU64 = AtomicU64::new(0);
/// Live bytes by allocation size class (powers of two), to see what dominates.
static LIVE_BY_CLASS: [std::sync::atomic::AtomicI64; 40] =
    [const { std::sync::atomic::AtomicI64::new(0) }; 40];

fn class(size: usize) -> usize {
    (usize::BITS - size.max(1).leading_zeros()) as usize % 40
}

fn account(size: usize, sign: i64) {
    LIVE_BY_CLASS[class(size)].fetch_add(sign * size as i64, Ordering::Relaxed);
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged,
// so the `GlobalAlloc` contract holds as it does for `System`; the counter is a relaxed atomic
// that never touches the memory handed out.
unsafe impl std::alloc::GlobalAlloc for LiveAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed);
        account(layout.size(), 1);
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        account(layout.size(), -1);
        // SAFETY: `ptr` came from `System` through this allocator with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as u64, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        account(new, 1);
        account(layout.size(), -1);
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller upholds `realloc`'s
        // contract for `new`.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: LiveAlloc = LiveAlloc;

#[derive(Default)]
struct Net {
    routers: RwLock<HashMap<NodeId, Arc<Router>>>,
    raft_messages: AtomicU64,
}

struct Port {
    net: Arc<Net>,
}

impl Transport for Port {
    fn send(&self, msg: Message) {
        if msg.group != raft_core::LIVENESS_GROUP {
            self.net.raft_messages.fetch_add(1, Ordering::Relaxed);
        }
        let router = self.net.routers.read().get(&msg.to).cloned();
        if let Some(router) = router {
            router.deliver(msg);
        }
    }
}

/// Resident memory of this process, in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let groups: u64 =
        std::env::var("RAFTKIT_GROUPS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let pid = std::process::id();
    let net = Arc::new(Net::default());
    let rss_before = rss_bytes();
    let live_before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut runtimes = Vec::new();
    let mut nodes: HashMap<(NodeId, GroupId), Node<Count>> = HashMap::new();
    for id in 1..=3u64 {
        let runtime = Runtime::new(RuntimeOptions::default()).expect("runtime");
        let router = Arc::new(Router::new());
        let port: Arc<dyn Transport> = Arc::new(Port { net: net.clone() });
        runtime.watch_peers(
            id,
            &[1, 2, 3],
            port.clone(),
            &router,
            Duration::from_millis(100),
            Duration::from_millis(1_000),
        );
        net.routers.write().insert(id, router.clone());
        let log = Arc::new(MemLogStore::new());
        for group in 0..groups {
            let node = NodeBuilder::new(id)
                .group(group)
                .voters([1, 2, 3])
                .tick(Duration::from_millis(10))
                .config(|c| c.hibernate_ticks = 20)
                .options(|o| o.runtime = Some(runtime.clone()))
                .shared_log(log.clone())
                .transport(port.clone())
                .router(router.clone())
                .start(Count::default())
                .expect("node starts");
            nodes.insert((id, group), node);
        }
        runtimes.push(runtime);
    }
    println!(
        "{groups} groups x 3 replicas started in {:.1} s ({:.1} KiB live per replica)",
        started.elapsed().as_secs_f64(),
        LIVE.load(Ordering::Relaxed).saturating_sub(live_before) as f64
            / (3 * groups) as f64
            / 1024.0
    );
    // Every group elects a leader and commits one write (asked again only if it did not commit
    // within a few seconds: leadership may have moved).
    let mut pending: HashMap<GroupId, Option<Instant>> = (0..groups).map(|g| (g, None)).collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "{} groups never committed", pending.len());
        pending.retain(|&g, asked| {
            if (1..=3).any(|id| nodes[&(id, g)].commit_index() >= 2) {
                return false;
            }
            let Some(leader) = (1..=3).find(|&id| nodes[&(id, g)].is_leader()) else { return true };
            if asked.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                nodes[&(leader, g)].propose_with(Bytes::from_static(b"x"), |_| {});
                *asked = Some(Instant::now());
            }
            true
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("every group committed a write after {:.1} s", started.elapsed().as_secs_f64());
    let quiet = Instant::now();
    let deadline = quiet + Duration::from_secs(600);
    loop {
        let awake = nodes.values().filter(|n| n.status().is_ok_and(|s| !s.raft.asleep)).count();
        let ticking: usize = runtimes.iter().map(Runtime::ticking).sum();
        if awake == 0 && ticking == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{awake} replicas still awake, {ticking} ticked");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("every replica asleep {:.1} s after the last write", quiet.elapsed().as_secs_f64());
    let replicas = (3 * groups) as f64;
    let rss_kept = rss_bytes().saturating_sub(rss_before);
    // What the allocator kept from the election storm goes back to the system first (glibc
    // returns freed memory lazily; a server would do the same after a burst).
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
    let rss = rss_bytes().saturating_sub(rss_before);
    let live = LIVE.load(Ordering::Relaxed).saturating_sub(live_before);
    let window = Duration::from_secs(10);
    let (cpu0, msgs0, t0) =
        (cpu_seconds(pid), net.raft_messages.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(window);
    let cpu = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    let msgs = net.raft_messages.load(Ordering::Relaxed) - msgs0;
    println!(
        "idle: CPU {:.2}% of one core for the three nodes together; {msgs} Raft messages in {} s",
        cpu * 100.0,
        window.as_secs()
    );
    println!(
        "memory per group replica: {:.1} KiB live on the heap, {:.1} KiB resident after \
         malloc_trim ({:.1} KiB before it; {:.0} MiB resident for {} replicas, logs in memory)",
        live as f64 / replicas / 1024.0,
        rss as f64 / replicas / 1024.0,
        rss_kept as f64 / replicas / 1024.0,
        rss as f64 / (1 << 20) as f64,
        replicas
    );
    let mut classes: Vec<(usize, i64)> = LIVE_BY_CLASS
        .iter()
        .enumerate()
        .map(|(c, b)| (c, b.load(Ordering::Relaxed)))
        .filter(|&(_, b)| b > 0)
        .collect();
    classes.sort_by_key(|&(_, b)| std::cmp::Reverse(b));
    let top: Vec<String> = classes
        .iter()
        .take(4)
        .map(|&(c, b)| {
            format!(
                "{}-{} B: {:.1} KiB/replica",
                1u64 << c.saturating_sub(1),
                (1u64 << c) - 1,
                b as f64 / replicas / 1024.0
            )
        })
        .collect();
    println!("live heap by allocation size (largest shares): {}", top.join("; "));
    // One group wakes for a write.
    let g = groups / 2;
    let leader = (1..=3).find(|&id| nodes[&(id, g)].is_leader()).unwrap_or(1);
    let t = Instant::now();
    nodes[&(leader, g)].propose(Bytes::from_static(b"y"), Duration::from_secs(10)).expect("write");
    println!("a write to a sleeping group answered in {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
    for (_, node) in nodes.drain() {
        node.shutdown();
    }
}
