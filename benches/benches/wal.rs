//! raft-wal benchmarks, printed as tables, with the disk's own limit (fio) measured in the same
//! run:
//! - the durability matrix: every mode x entry size {64 B, 1 KiB, 16 KiB} x batch {1, 16, 256} x
//!   appenders {1, 16}: entries/s, MB/s, p50/p99 append-to-durable latency, and the ratio of
//!   appends/s to fio's writes/s (one write + fdatasync) for the same size on a pre-written file,
//!   fio run right before each run of a synced cell (the disk's rate drifts within minutes);
//! - the same matrix on a plain file (write + fdatasync per batch), the baseline, and, with
//!   `--features compare`, on tikv's raft-engine (default settings, no compression);
//! - every synced one-appender cell against a bare write + fdatasync of the same payload bytes
//!   on a pre-written file, taken turn about append by append (immune to the disk's drift);
//! - group commit with 16 appenders against `Always` with one (1 KiB), in alternating runs;
//! - a multi-group run: 16 appenders over 1,000 groups;
//! - recovery of a 1 GiB WAL (warm page cache) and the index's bytes per entry;
//! - read throughput of sealed segments;
//! - background scrubbing: the scrubber's CPU per MiB, one group against 256 interleaved.
//!
//! `cargo bench -p raftkit-benches --bench wal` (about 10 minutes).
//! `RAFTKIT_BENCH_DIR` picks the disk (default: the system temp dir), `RAFTKIT_BENCH_SECS` the
//! seconds per run (default 1), `RAFTKIT_BENCH_PARTS` a comma-separated subset of
//! `fio,matrix,interleaved,pair,plain,raft-engine,multigroup,recovery,read,scrub`,
//! `RAFTKIT_BENCH_FILTER` matrix (and interleaved) cells
//! as `backend-or-mode/entry/batch/appenders` patterns (`*` for any), comma-separated; backends
//! are `plain`, `raft-engine`, `raft-engine-nosync`, modes `always`, `group`, `interval-2ms`,
//! `never`.
#![allow(missing_docs, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::{Entry, LogStore, LogWrite};
use raft_wal::{Durability, Wal, WalConfig};
use raftkit_benches::wal_matrix::{
    fio_limit, median, median_fio, run_cell, run_interleaved, settle, AdjacentFio, Backend, Cell,
    CellStats, FioLimit, PlainFileBackend, RawFile, WalBackend,
};

const ENTRY_SIZES: [usize; 3] = [64, 1024, 16 * 1024];
const BATCHES: [usize; 3] = [1, 16, 256];
const APPENDERS: [usize; 2] = [1, 16];
const RUNS: usize = 3;

fn bench_dir() -> PathBuf {
    std::env::var_os("RAFTKIT_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

fn parts() -> Vec<String> {
    std::env::var("RAFTKIT_BENCH_PARTS")
        .unwrap_or_else(|_| {
            "fio,matrix,interleaved,pair,plain,raft-engine,multigroup,recovery,read,scrub".into()
        })
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn secs() -> Duration {
    let s: f64 =
        std::env::var("RAFTKIT_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
    Duration::from_secs_f64(s)
}

fn mode_name(d: Durability) -> &'static str {
    match d {
        Durability::Always => "always",
        Durability::GroupCommit { .. } => "group",
        Durability::Interval(_) => "interval-2ms",
        Durability::Never => "never",
    }
}

fn synced(d: Durability) -> bool {
    matches!(d, Durability::Always | Durability::GroupCommit { .. })
}

fn fio_size_name(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{}m", b >> 20),
        b if b >= 1 << 10 => format!("{}k", b >> 10),
        b => b.to_string(),
    }
}

/// Whether `RAFTKIT_BENCH_FILTER` (`mode/entry/batch/appenders`, `*` for any) selects a cell.
fn wanted(mode: &str, cell: Cell) -> bool {
    let Ok(filter) = std::env::var("RAFTKIT_BENCH_FILTER") else { return true };
    let have = [
        mode.to_string(),
        cell.entry_bytes.to_string(),
        cell.batch.to_string(),
        cell.appenders.to_string(),
    ];
    filter
        .split(',')
        .any(|f| f.split('/').zip(have.iter()).all(|(want, got)| want == "*" || want == got))
}

/// Three runs of `cell` on `backend`, each on fresh groups (numbered from `*groups`). With
/// `adjacent`, each run comes right after a fio run of the same length and write size, and the
/// median of those fio runs comes back with the cell's.
fn measure(
    backend: &Arc<dyn Backend>,
    cell: Cell,
    groups: &mut u64,
    adjacent: Option<&AdjacentFio>,
) -> (CellStats, Option<FioLimit>) {
    let mut fio_runs = Vec::new();
    let runs: Vec<CellStats> = (0..RUNS)
        .map(|_| {
            if let Some(fio) = adjacent {
                fio_runs.extend(fio.run(cell.entry_bytes * cell.batch, secs()));
                settle(&bench_dir());
            }
            let base = *groups;
            *groups += cell.appenders as u64;
            run_cell(Arc::clone(backend), cell, secs(), base)
        })
        .collect();
    (median(&runs), median_fio(&fio_runs))
}

fn main() {
    let parts = parts();
    let has = |p: &str| parts.iter().any(|x| x == p);
    let dir = bench_dir();
    println!(
        "raft-wal benchmarks in {} ({} s per run, median of {RUNS} runs)\n",
        dir.display(),
        secs().as_secs_f64()
    );

    // ---- the disk's limit ----
    let mut fio: BTreeMap<usize, (Option<FioLimit>, Option<FioLimit>)> = BTreeMap::new();
    if has("fio") {
        println!("## fio: one write + fdatasync per write, sequential, one job\n");
        println!(
            "| write size | written: writes/s | p50 write us | p50 fdatasync us | p99 fdatasync us | fallocated: writes/s |"
        );
        println!("|---|---|---|---|---|---|");
        let mut sizes: Vec<usize> =
            ENTRY_SIZES.iter().flat_map(|e| BATCHES.iter().map(move |b| e * b)).collect();
        sizes.sort_unstable();
        sizes.dedup();
        for bs in sizes {
            let fio_dir = tempfile::tempdir_in(&dir).expect("fio dir");
            let written = fio_limit(fio_dir.path(), bs, true);
            let fallocated = fio_limit(fio_dir.path(), bs, false);
            match written {
                Some(w) => println!(
                    "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                    fio_size_name(bs),
                    w.writes_per_sec,
                    w.write_p50_us,
                    w.sync_p50_us,
                    w.sync_p99_us,
                    fallocated.map_or("-".into(), |f| format!("{:.0}", f.writes_per_sec))
                ),
                None => println!("| {} | fio not available | | | | |", fio_size_name(bs)),
            }
            fio.insert(bs, (written, fallocated));
        }
        println!();
        // fio deleted its files: let the filesystem's discards drain before timing anything.
        std::thread::sleep(Duration::from_secs(10));
    }
    // Synced cells are judged against fio runs taken next to them.
    let adjacent = has("fio").then(|| AdjacentFio::new(&dir));

    // ---- the durability matrix ----
    let mut ratios: Vec<(String, f64)> = Vec::new();
    let mut start_ratios: Vec<f64> = Vec::new();
    let mut always_1: BTreeMap<(usize, usize), (CellStats, Option<FioLimit>)> = BTreeMap::new();
    let mut group_16: BTreeMap<(usize, usize), CellStats> = BTreeMap::new();
    if has("matrix") {
        println!("## raft-wal durability matrix (64 MiB segments)\n");
        if adjacent.is_some() {
            println!("fio writes/s: the median of fio runs (same write size, pre-written file) taken right before each run of the cell; cells that sync nothing use the table above.\n");
        }
        println!("| mode | entry | batch | appenders | entries/s | MB/s | appends/s | p50 us | p99 us | fio writes/s | appends/s / fio | / start-of-run fio |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        let modes = [
            Durability::Always,
            Durability::group_commit(),
            Durability::Interval(Duration::from_millis(2)),
            Durability::Never,
        ];
        for mode in modes {
            // One WAL per mode for the whole matrix, as in a running system: each run writes
            // fresh groups and compacts them afterwards, so segments are recycled rather than
            // created (zero-filled) during a run or deleted after it.
            let wal_dir = tempfile::tempdir_in(&dir).expect("bench dir");
            let backend: Arc<dyn Backend> =
                Arc::new(WalBackend::open(wal_dir.path(), mode, 64 << 20));
            let mut groups = 0u64;
            for entry_bytes in ENTRY_SIZES {
                for batch in BATCHES {
                    for appenders in APPENDERS {
                        let cell = Cell { entry_bytes, batch, appenders };
                        if !wanted(mode_name(mode), cell) {
                            continue;
                        }
                        let near = adjacent.as_ref().filter(|_| synced(mode));
                        let (s, near) = measure(&backend, cell, &mut groups, near);
                        let limit =
                            near.or_else(|| fio.get(&(entry_bytes * batch)).and_then(|f| f.0));
                        let ratio = limit.map(|l| s.appends_per_sec / l.writes_per_sec);
                        // Against the table at the start of the run as well: the adjacent runs
                        // see the disk as the cells leave it, which on a throttled virtual disk
                        // can be slower than a rested one.
                        let start_ratio = fio
                            .get(&(entry_bytes * batch))
                            .and_then(|f| f.0)
                            .map(|l| s.appends_per_sec / l.writes_per_sec);
                        if synced(mode) {
                            start_ratios.extend(start_ratio);
                            if let Some(r) = ratio {
                                ratios.push((
                                    format!(
                                        "{} {}B x{} /{}",
                                        mode_name(mode),
                                        entry_bytes,
                                        batch,
                                        appenders
                                    ),
                                    r,
                                ));
                            }
                        }
                        if mode == Durability::Always && appenders == 1 {
                            always_1.insert((entry_bytes, batch), (s.clone(), limit));
                        }
                        if matches!(mode, Durability::GroupCommit { .. }) && appenders == 16 {
                            group_16.insert((entry_bytes, batch), s.clone());
                        }
                        println!(
                            "| {} | {} | {} | {} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
                            mode_name(mode),
                            entry_bytes,
                            batch,
                            appenders,
                            s.entries_per_sec,
                            s.mb_per_sec,
                            s.appends_per_sec,
                            s.p50_us,
                            s.p99_us,
                            limit.map_or("-".into(), |l| format!("{:.0}", l.writes_per_sec)),
                            ratio.map_or("-".into(), |r| format!("{r:.2}")),
                            start_ratio.map_or("-".into(), |r| format!("{r:.2}"))
                        );
                    }
                }
            }
        }
        println!();
        if !start_ratios.is_empty() {
            start_ratios.sort_by(f64::total_cmp);
            println!(
                "synced cells vs the start-of-run fio table: min {:.2}, median {:.2}, {} of {} cells at 0.85 or more",
                start_ratios[0],
                start_ratios[start_ratios.len() / 2],
                start_ratios.iter().filter(|&&r| r >= 0.85).count(),
                start_ratios.len()
            );
        }
        if !ratios.is_empty() {
            let mut r: Vec<f64> = ratios.iter().map(|x| x.1).collect();
            r.sort_by(f64::total_cmp);
            let (worst, _) =
                ratios.iter().min_by(|a, b| a.1.total_cmp(&b.1)).cloned().unwrap_or_default();
            println!(
                "synced cells vs fio (appends/s / fio writes/s, same write size, pre-written file): min {:.2} ({worst}), median {:.2}, over {} cells",
                r[0],
                r[r.len() / 2],
                r.len()
            );
        }
        for entry_bytes in ENTRY_SIZES {
            for batch in BATCHES {
                if let (Some((a, _)), Some(g)) =
                    (always_1.get(&(entry_bytes, batch)), group_16.get(&(entry_bytes, batch)))
                {
                    if entry_bytes == 1024 {
                        println!(
                            "group commit x16 vs always x1, 1 KiB entries, batch {batch}: {:.1}x entries/s",
                            g.entries_per_sec / a.entries_per_sec
                        );
                    }
                }
                if let Some((a, Some(l))) = always_1.get(&(entry_bytes, batch)) {
                    if l.sync_p50_us > 0.0 {
                        println!(
                            "always x1, {entry_bytes} B x {batch}: p50 append-to-durable {:.0} us vs fio fdatasync p50 {:.0} us: {:.2}x; vs fio write + fdatasync p50 {:.0} us: {:.2}x",
                            a.p50_us,
                            l.sync_p50_us,
                            a.p50_us / l.sync_p50_us,
                            l.sync_p50_us + l.write_p50_us,
                            a.p50_us / (l.sync_p50_us + l.write_p50_us)
                        );
                    }
                }
            }
        }
        println!();
    }

    // ---- one appender against a bare file, turn about ----
    if has("interleaved") {
        println!("## one appender vs a bare write + fdatasync, taken turn about\n");
        println!("Each append (returning once durable) is followed by one write + fdatasync of the same payload bytes at the next offset of a pre-written file; both see the same disk.\n");
        println!("| mode | entry | batch | p50 us | bare p50 us | p50 / bare | rate / bare |");
        println!("|---|---|---|---|---|---|---|");
        let mut rates = Vec::new();
        let mut p50s = Vec::new();
        for mode in [Durability::Always, Durability::group_commit()] {
            let wal_dir = tempfile::tempdir_in(&dir).expect("bench dir");
            let backend = WalBackend::open(wal_dir.path(), mode, 64 << 20);
            let mut raw = RawFile::create(wal_dir.path(), 256 << 20);
            let mut group = 0u64;
            for entry_bytes in ENTRY_SIZES {
                for batch in BATCHES {
                    let cell = Cell { entry_bytes, batch, appenders: 1 };
                    if !wanted(mode_name(mode), cell) {
                        continue;
                    }
                    settle(&dir);
                    group += 1;
                    let r = run_interleaved(&backend, &mut raw, cell, secs() * 2, group);
                    let p50_ratio = r.backend_p50_us / r.raw_p50_us.max(f64::MIN_POSITIVE);
                    rates.push(r.rate_ratio);
                    if mode == Durability::Always {
                        p50s.push(p50_ratio);
                    }
                    println!(
                        "| {} | {entry_bytes} | {batch} | {:.0} | {:.0} | {p50_ratio:.2} | {:.2} |",
                        mode_name(mode),
                        r.backend_p50_us,
                        r.raw_p50_us,
                        r.rate_ratio
                    );
                }
            }
        }
        println!();
        for v in [&mut rates, &mut p50s] {
            v.sort_by(f64::total_cmp);
        }
        if !rates.is_empty() {
            println!(
                "rate vs bare: min {:.2}, median {:.2}, {} of {} cells at 0.85 or more",
                rates[0],
                rates[rates.len() / 2],
                rates.iter().filter(|&&r| r >= 0.85).count(),
                rates.len()
            );
        }
        if !p50s.is_empty() {
            println!(
                "always p50 vs bare write + fdatasync p50: max {:.2}, median {:.2}\n",
                p50s[p50s.len() - 1],
                p50s[p50s.len() / 2]
            );
        }
    }

    // ---- baselines ----
    if has("plain") {
        let plain_dir = tempfile::tempdir_in(&dir).expect("bench dir");
        let backend: Arc<dyn Backend> = Arc::new(PlainFileBackend::open(plain_dir.path()));
        baseline(
            "plain file baseline: write + fdatasync per batch, no group commit",
            "plain",
            &backend,
            &fio,
            adjacent.as_ref(),
        );
    }
    #[cfg(feature = "compare")]
    if has("raft-engine") {
        use raftkit_benches::wal_matrix::RaftEngineBackend;
        for sync in [true, false] {
            let engine_dir = tempfile::tempdir_in(&dir).expect("bench dir");
            let backend: Arc<dyn Backend> =
                Arc::new(RaftEngineBackend::open(engine_dir.path(), sync));
            let (title, name) = if sync {
                (
                    "tikv raft-engine 0.4, default settings, no compression, write(sync = true)",
                    "raft-engine",
                )
            } else {
                (
                    "tikv raft-engine 0.4, default settings, no compression, write(sync = false)",
                    "raft-engine-nosync",
                )
            };
            baseline(title, name, &backend, &fio, adjacent.as_ref().filter(|_| sync));
        }
    }

    if has("pair") {
        group_commit_pair(&dir);
    }
    if has("multigroup") {
        multigroup(&dir);
    }
    if has("recovery") || has("read") {
        recovery_and_reads(&dir, has("recovery"), has("read"));
    }
    if has("scrub") {
        scrub(&dir);
    }
}

/// Background scrubbing of sealed segments: the scrubber thread's CPU per MiB checked, with one
/// group's log and with the same entries from 256 groups interleaved record by record (as many
/// groups writing one entry at a time leave them). The rate is set beyond what the thread can
/// do, so every round runs to the end of a pass.
fn scrub(dir: &Path) {
    println!("## scrubbing: scrubber CPU per MiB of 64 B entries checked (three 8 MiB segments)\n");
    println!("| groups | passes | MiB checked | scrubber CPU ms | CPU ms per MiB | ns per entry |");
    println!("|---|---|---|---|---|---|");
    for groups in [1u64, 256] {
        let d = tempfile::tempdir_in(dir).expect("dir");
        let config = WalConfig {
            durability: Durability::Never,
            segment_size_bytes: 8 << 20,
            prepared_segments: 1,
            scrub_bytes_per_sec: 0,
            ..WalConfig::default()
        };
        let payload = Bytes::from(vec![5u8; 64]);
        // About three segments of one-entry records (136 bytes each with their framing).
        let per_group = 3 * (8 << 20) / 136 / groups;
        {
            let (wal, _) = Wal::open(d.path(), config.clone()).expect("open");
            for i in 1..=per_group {
                for group in 1..=groups {
                    let e = [Entry::normal(1, i, payload.clone())];
                    wal.write(&[LogWrite { group, hard_state: None, entries: &e }]).expect("write");
                }
            }
            wal.close().expect("close");
        }
        let scrubbing = WalConfig { scrub_bytes_per_sec: 1 << 40, ..config };
        let (wal, _) = Wal::open(d.path(), scrubbing).expect("reopen");
        let wait_passes = |n: u64| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while wal.stats().scrub_passes < n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        // The first pass reads the pages in; measure the next ones.
        wait_passes(1);
        let (passes0, bytes0, cpu0) =
            (wal.stats().scrub_passes, wal.stats().scrubbed_bytes, scrubber_cpu_ns());
        std::thread::sleep(Duration::from_secs(2));
        let (passes1, bytes1, cpu1) =
            (wal.stats().scrub_passes, wal.stats().scrubbed_bytes, scrubber_cpu_ns());
        let mib = (bytes1 - bytes0) as f64 / (1 << 20) as f64;
        let cpu_ms = (cpu1 - cpu0) as f64 / 1e6;
        let entries = (bytes1 - bytes0) as f64 / 64.0;
        println!(
            "| {groups} | {} | {mib:.1} | {cpu_ms:.1} | {:.2} | {:.0} |",
            passes1 - passes0,
            cpu_ms / mib.max(1e-9),
            (cpu1 - cpu0) as f64 / entries.max(1.0)
        );
        wal.close().expect("close");
    }
    println!();
}

/// CPU time of this process's `raft-wal-scrub` threads so far, in nanoseconds
/// (`/proc/self/task/*/schedstat`); 0 where there is no `/proc`.
fn scrubber_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "raft-wal-scrub")
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The matrix on another backend, with each cell's ratio to fio.
fn baseline(
    title: &str,
    name: &str,
    backend: &Arc<dyn Backend>,
    fio: &BTreeMap<usize, (Option<FioLimit>, Option<FioLimit>)>,
    adjacent: Option<&AdjacentFio>,
) {
    println!("## {title}\n");
    println!("| entry | batch | appenders | entries/s | MB/s | appends/s | p50 us | p99 us | appends/s / fio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut groups = 0u64;
    let mut ratios = Vec::new();
    for entry_bytes in ENTRY_SIZES {
        for batch in BATCHES {
            for appenders in APPENDERS {
                let cell = Cell { entry_bytes, batch, appenders };
                if !wanted(name, cell) {
                    continue;
                }
                let (s, near) = measure(backend, cell, &mut groups, adjacent);
                let ratio = near
                    .or_else(|| fio.get(&(entry_bytes * batch)).and_then(|f| f.0))
                    .map(|l| s.appends_per_sec / l.writes_per_sec);
                ratios.extend(ratio);
                println!(
                    "| {entry_bytes} | {batch} | {appenders} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {} |",
                    s.entries_per_sec,
                    s.mb_per_sec,
                    s.appends_per_sec,
                    s.p50_us,
                    s.p99_us,
                    ratio.map_or("-".into(), |r| format!("{r:.2}"))
                );
            }
        }
    }
    if !ratios.is_empty() {
        ratios.sort_by(f64::total_cmp);
        println!(
            "\n{name} vs fio: min {:.2}, median {:.2}, over {} cells",
            ratios[0],
            ratios[ratios.len() / 2],
            ratios.len()
        );
    }
    println!();
}

/// Group commit with 16 appenders against `Always` with one, 1 KiB entries one per append:
/// five pairs of runs, alternating, so both sides of each ratio see the same disk.
fn group_commit_pair(dir: &Path) {
    println!("## group commit x16 vs always x1 (1 KiB entries, batch 1), alternating runs\n");
    println!("| pair | always x1 appends/s | group x16 appends/s | ratio |");
    println!("|---|---|---|---|");
    let always_dir = tempfile::tempdir_in(dir).expect("bench dir");
    let group_dir = tempfile::tempdir_in(dir).expect("bench dir");
    let always: Arc<dyn Backend> =
        Arc::new(WalBackend::open(always_dir.path(), Durability::Always, 64 << 20));
    let group: Arc<dyn Backend> =
        Arc::new(WalBackend::open(group_dir.path(), Durability::group_commit(), 64 << 20));
    let (mut a_groups, mut g_groups) = (0u64, 0u64);
    let run = |backend: &Arc<dyn Backend>, appenders: usize, groups: &mut u64| {
        settle(dir);
        let cell = Cell { entry_bytes: 1024, batch: 1, appenders };
        let stats = run_cell(Arc::clone(backend), cell, secs(), *groups);
        *groups += appenders as u64;
        stats
    };
    let mut ratios = Vec::new();
    for pair in 1..=5 {
        let a = run(&always, 1, &mut a_groups);
        let g = run(&group, 16, &mut g_groups);
        let r = g.entries_per_sec / a.entries_per_sec;
        ratios.push(r);
        println!("| {pair} | {:.0} | {:.0} | {r:.2} |", a.entries_per_sec, g.entries_per_sec);
    }
    ratios.sort_by(f64::total_cmp);
    println!("\nmedian ratio {:.2} (min {:.2}, max {:.2})\n", ratios[2], ratios[0], ratios[4]);
}

/// 16 appenders, each owning 1,000 / 16 groups and writing 16 x 1 KiB to one of them at a time,
/// round robin: 1,000 groups interleaved in one WAL with group commit.
fn multigroup(dir: &Path) {
    println!(
        "## multi-group: 16 appenders over 1,000 groups, 16 x 1 KiB per append, group commit\n"
    );
    let runs: Vec<CellStats> = (0..RUNS)
        .map(|_| {
            let d = tempfile::tempdir_in(dir).expect("dir");
            let backend =
                Arc::new(WalBackend::open(d.path(), Durability::group_commit(), 64 << 20));
            let payload = Bytes::from(vec![7u8; 1024]);
            let start = Instant::now();
            let deadline = start + secs();
            let threads: Vec<_> = (0..16u64)
                .map(|t| {
                    let backend = Arc::clone(&backend);
                    let payload = payload.clone();
                    std::thread::spawn(move || {
                        let groups: Vec<u64> = (0..1000u64).filter(|g| g % 16 == t).collect();
                        let mut next = vec![1u64; groups.len()];
                        let (mut lat, mut n, mut k) = (Vec::new(), 0u64, 0usize);
                        while Instant::now() < deadline {
                            let g = k % groups.len();
                            let es: Vec<Entry> = (next[g]..next[g] + 16)
                                .map(|i| Entry::normal(1, i, payload.clone()))
                                .collect();
                            let t0 = Instant::now();
                            backend.append(groups[g] + 1, &es).expect("append");
                            lat.push(t0.elapsed().as_nanos() as u64);
                            next[g] += 16;
                            n += 16;
                            k += 1;
                        }
                        (n, lat)
                    })
                })
                .collect();
            let (mut n, mut lat) = (0u64, Vec::new());
            for t in threads {
                let (a, b) = t.join().expect("appender");
                n += a;
                lat.extend(b);
            }
            let secs = start.elapsed().as_secs_f64();
            lat.sort_unstable();
            let pct = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize] as f64 / 1e3;
            CellStats {
                entries_per_sec: n as f64 / secs,
                mb_per_sec: n as f64 * 1024.0 / secs / 1e6,
                appends_per_sec: lat.len() as f64 / secs,
                p50_us: pct(0.5),
                p99_us: pct(0.99),
            }
        })
        .collect();
    let s = median(&runs);
    println!(
        "| groups | entries/s | MB/s | appends/s | p50 us | p99 us |\n|---|---|---|---|---|---|"
    );
    println!(
        "| 1000 | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} |\n",
        s.entries_per_sec, s.mb_per_sec, s.appends_per_sec, s.p50_us, s.p99_us
    );
}

/// Builds a 1 GiB WAL (16 groups, 1 KiB entries, batches of 256), then times reopening it with
/// a warm page cache and reading each group's last entry, and reading its sealed segments.
fn recovery_and_reads(dir: &Path, recovery: bool, read: bool) {
    let d = tempfile::tempdir_in(dir).expect("dir");
    let config =
        WalConfig { durability: Durability::Never, prepared_segments: 2, ..WalConfig::default() };
    let payload = Bytes::from(vec![3u8; 1024]);
    let groups = 16u64;
    let per_group = (1u64 << 30) / 1024 / groups;
    {
        let (wal, _) = Wal::open(d.path(), config.clone()).expect("open");
        let mut next = vec![1u64; groups as usize];
        while next[0] <= per_group {
            for (group, first) in next.iter_mut().enumerate() {
                let es: Vec<Entry> =
                    (*first..*first + 256).map(|i| Entry::normal(1, i, payload.clone())).collect();
                wal.write(&[LogWrite { group: group as u64, hard_state: None, entries: &es }])
                    .expect("write");
                *first += 256;
            }
        }
        wal.close().expect("close");
    }
    let total_entries = groups * per_group.div_ceil(256) * 256;
    if recovery {
        println!("## recovery: reopen a 1 GiB WAL ({total_entries} entries of 1 KiB, {groups} groups), warm page cache\n");
        let mut times = Vec::new();
        let mut index_bytes = 0;
        let mut verified = 0;
        for _ in 0..5 {
            let start = Instant::now();
            let (wal, report) = Wal::open(d.path(), config.clone()).expect("reopen");
            for g in 0..groups {
                let s = wal.log_state(g).expect("state");
                let last =
                    wal.entries(g, s.last_index, s.last_index, u64::MAX).expect("last entry");
                assert_eq!(last.len(), 1);
            }
            times.push(start.elapsed().as_secs_f64());
            let stats = wal.stats();
            index_bytes = stats.index_bytes;
            verified = report.payloads_verified;
        }
        times.sort_by(f64::total_cmp);
        println!(
            "open + read each group's last entry: median {:.3} s (min {:.3}, max {:.3}); payload checksums verified at open: {verified} records (the tail not proven durable)",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
        println!(
            "index: {index_bytes} bytes for {total_entries} entries = {:.1} bytes per entry\n",
            index_bytes as f64 / total_entries as f64
        );
    }
    if read {
        let (wal, _) = Wal::open(d.path(), config).expect("reopen");
        println!("## reads of sealed segments (1 KiB entries)\n");
        let start = Instant::now();
        let mut bytes = 0u64;
        let mut entries = 0u64;
        for g in 0..groups {
            let s = wal.log_state(g).expect("state");
            let mut lo = s.first_index;
            while lo <= s.last_index {
                let es = wal.entries(g, lo, s.last_index, 4 << 20).expect("read");
                for e in &es {
                    bytes += e.data.len() as u64;
                }
                entries += es.len() as u64;
                lo += es.len() as u64;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "sequential: {:.0} entries/s, {:.0} MB/s ({entries} entries, payload checksums verified on read)",
            entries as f64 / secs,
            bytes as f64 / secs / 1e6
        );
        let mut rng = raft_core::rng::Rng::new(9);
        let n = 200_000;
        let start = Instant::now();
        for _ in 0..n {
            let g = rng.below(groups);
            let s = wal.log_state(g).expect("state");
            let i = rng.range(s.first_index, s.last_index);
            let e = wal.entries(g, i, i, u64::MAX).expect("read");
            std::hint::black_box(e);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "random single-entry reads: {:.0} reads/s, {:.2} us each\n",
            n as f64 / secs,
            secs * 1e6 / n as f64
        );
    }
}
