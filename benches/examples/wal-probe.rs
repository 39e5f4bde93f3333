//! One WAL configuration in a tight loop, for profilers and syscall tracers:
//! `cargo run --release -p raftkit-benches --example wal-probe -- always 64 5000 [appenders] [batch]`.
//!
//! Each appender thread writes its own group, `batch` entries (default 1) per write, and waits
//! for them to be durable before the next. Prints appends per second, latency percentiles and how many appends
//! each sync covered.
#![allow(missing_docs, clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use raft_core::{Entry, LogStore, LogWrite};
use raft_wal::{Durability, Wal, WalConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.first().map(String::as_str) {
        Some("group") => Durability::group_commit(),
        Some("never") => Durability::Never,
        _ => Durability::Always,
    };
    let size: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(64);
    let n: u64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(5000);
    let appenders: u64 = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(1);
    let batch: u64 = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(1);
    let dir = tempfile::tempdir_in(
        std::env::var_os("RAFTKIT_BENCH_DIR").unwrap_or_else(|| "/tmp".into()),
    )
    .expect("dir");
    let config = WalConfig { durability: mode, prepared_segments: 2, ..WalConfig::default() };
    let (wal, _) = Wal::open(dir.path(), config).expect("open");
    wal.wait_prepared(2, std::time::Duration::from_secs(30));
    let wal = Arc::new(wal);
    let payload = Bytes::from(vec![1u8; size]);
    let start = Instant::now();
    let threads: Vec<_> = (0..appenders)
        .map(|t| {
            let wal = Arc::clone(&wal);
            let payload = payload.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let e: Vec<Entry> = (1..=batch)
                        .map(|k| Entry::normal(1, i * batch + k, payload.clone()))
                        .collect();
                    let t0 = Instant::now();
                    let lsn = wal
                        .write(&[LogWrite { group: t + 1, hard_state: None, entries: &e }])
                        .expect("write");
                    wal.sync(lsn).expect("sync");
                    lat.push(t0.elapsed().as_micros());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<u128> = threads.into_iter().flat_map(|t| t.join().expect("join")).collect();
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let stats = wal.stats();

    println!(
        "{:.0} appends/s, p50 {} us, p99 {} us, {:.2} appends per sync",
        lat.len() as f64 / secs,
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        stats.last_seq as f64 / stats.syncs.max(1) as f64
    );
}
