//! Snapshot benchmarks (a bench binary that prints its figures):
//!
//! 1. fio's sequential bandwidth on the same disk: 1 MiB writes to a fresh file with one fsync
//!    at the end, and 1 MiB reads of the file just written (page cache warm, like the snapshot
//!    reads below).
//! 2. `FileSnapshotStore` write throughput (stream in, frame, CRC, fsync, rename) and read
//!    throughput (every frame's CRC checked), for the same size.
//! 3. Streaming a snapshot between two stores through the real protocol: the leader's core asks
//!    for chunks, they travel as InstallSnapshot messages, the follower's core hands them to a
//!    `SnapshotReceiver` writing the receiving store, answers flow back. Each size runs in a
//!    fresh child process, which reports its time and peak resident memory above its baseline.
//!
//! ```text
//! cargo bench -p raftkit-benches --bench snapshot
//! RAFTKIT_BENCH_DIR=/path/on/disk RAFTKIT_SNAPSHOT_SIZES_MIB=256,1024 cargo bench -p raftkit-benches --bench snapshot
//! ```

#![allow(clippy::unwrap_used, clippy::print_stdout)] // A bench binary: its output is the point.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use raft_core::message::{AppendResponse, MessageBody, VoteResponse};
use raft_core::ready::SnapshotRequest;
use raft_core::snapshot::SnapshotReceiver;
use raft_core::{
    Config, HardState, InitialState, Message, Raft, RoleKind, SnapshotMeta, SnapshotStore,
};
use raft_snapshot::{FileSnapshotStore, SnapshotStoreOptions};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = MIB;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--stream-child") {
        let size: u64 = args[pos + 1].parse().unwrap();
        let dir = &args[pos + 2];
        stream_child(size, Path::new(dir));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // cargo test --benches asks for a list; there is nothing to run there.
    }
    let base = std::env::var("RAFTKIT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let sizes: Vec<u64> = std::env::var("RAFTKIT_SNAPSHOT_SIZES_MIB")
        .unwrap_or_else(|_| "256,1024".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let throughput_size = sizes.iter().copied().max().unwrap_or(256) * MIB;
    let dir = tempfile::tempdir_in(&base).unwrap();

    println!("# snapshot benchmarks in {}", base.display());
    let (fio_write, fio_read) = fio_sequential(dir.path(), throughput_size);
    let (write_mbs, read_mbs) = store_throughput(dir.path(), throughput_size);
    println!();
    println!("## sequential throughput, {} MiB (one run each)", throughput_size / MIB);
    println!("| what | MB/s | ratio to fio |");
    println!("|---|---:|---:|");
    let ratio = |x: f64, f: Option<f64>| f.map_or("-".into(), |f| format!("{:.2}", x / f));
    if let Some(f) = fio_write {
        println!("| fio write 1 MiB, fsync at end | {f:.0} | 1.00 |");
    }
    println!(
        "| snapshot write (frames, CRC32C, fsync, rename) | {write_mbs:.0} | {} |",
        ratio(write_mbs, fio_write)
    );
    if let Some(f) = fio_read {
        println!("| fio read 1 MiB (page cache warm) | {f:.0} | 1.00 |");
    }
    println!(
        "| snapshot read (CRC32C per frame) | {read_mbs:.0} | {} |",
        ratio(read_mbs, fio_read)
    );

    println!();
    println!(
        "## streaming between two stores through InstallSnapshot chunks of {} KiB",
        CHUNK / 1024
    );
    println!("| snapshot | time s | MB/s | chunks | peak RSS above baseline MiB |");
    println!("|---:|---:|---:|---:|---:|");
    let exe = std::env::current_exe().unwrap();
    for size in sizes {
        let child_dir = tempfile::tempdir_in(&base).unwrap();
        let out = std::process::Command::new(&exe)
            .args([
                "--stream-child",
                &(size * MIB).to_string(),
                &child_dir.path().display().to_string(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().find(|l| l.starts_with("STREAM ")) {
            Some(line) => {
                let f: Vec<f64> =
                    line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
                println!("| {size} MiB | {:.2} | {:.0} | {:.0} | {:.1} |", f[0], f[1], f[2], f[3]);
            }
            None => println!("| {size} MiB | failed: {} |", String::from_utf8_lossy(&out.stderr)),
        }
    }
}

/// fio: sequential 1 MiB writes of `size` bytes with one fsync at the end, then reads of it.
fn fio_sequential(dir: &Path, size: u64) -> (Option<f64>, Option<f64>) {
    let run = |rw: &str, extra: &[&str]| -> Option<f64> {
        let out = dir.join(format!("fio-{rw}.json"));
        let mut args = vec![
            "--name=seq".to_string(),
            format!("--directory={}", dir.display()),
            "--filename=fio-seq".into(),
            "--ioengine=sync".into(),
            format!("--rw={rw}"),
            "--bs=1m".into(),
            format!("--size={}m", size / MIB),
            "--numjobs=1".into(),
            "--output-format=json".into(),
            format!("--output={}", out.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let status = std::process::Command::new("fio")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).ok()?).ok()?;
        let bw = if rw == "write" {
            &json["jobs"][0]["write"]["bw_bytes"]
        } else {
            &json["jobs"][0]["read"]["bw_bytes"]
        };
        bw.as_f64().map(|b| b / 1e6)
    };
    // A fresh, unallocated file like a snapshot's, and the page cache kept warm for the read
    // like the snapshot reads below (fio invalidates it by default).
    let write = run("write", &["--end_fsync=1", "--fallocate=none"]);
    let read = run("read", &["--invalidate=0"]);
    let _ = std::fs::remove_file(dir.join("fio-seq"));
    (write, read)
}

fn fill(buf: &mut [u8], seed: &mut u64) {
    for word in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let bytes = seed.to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

fn write_snapshot(store: &FileSnapshotStore, size: u64) -> SnapshotMeta {
    let request = SnapshotRequest {
        group: 0,
        index: 100,
        term: 2,
        membership: raft_core::Membership::new([1, 2, 3]),
    };
    let mut w = store.create(&request).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        fill(&mut buf[..n], &mut seed);
        w.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    w.finish().unwrap()
}

fn store_throughput(dir: &Path, size: u64) -> (f64, f64) {
    let (store, _) =
        FileSnapshotStore::open(dir.join("store"), SnapshotStoreOptions::default()).unwrap();
    let started = Instant::now();
    let meta = write_snapshot(&store, size);
    let write = size as f64 / started.elapsed().as_secs_f64() / 1e6;
    let started = Instant::now();
    let mut r = store.open(&meta).unwrap();
    let mut offset = 0;
    while offset < meta.size {
        offset += r.read_at(offset, MIB as usize).unwrap().len() as u64;
    }
    let read = size as f64 / started.elapsed().as_secs_f64() / 1e6;
    (write, read)
}

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { group: 0, from, to, term, body }
}

/// Node 1 restored from `meta`, elected leader of term 3 in {1, 2, 3}.
fn leader(meta: &SnapshotMeta) -> Raft {
    let state = InitialState {
        hard_state: HardState { term: 2, vote: None, commit: meta.index },
        membership: raft_core::Membership::new([1, 2, 3]),
        config_entries: Vec::new(),
        base_index: meta.index,
        base_term: meta.term,
        last_index: meta.index,
        term_runs: Vec::new(),
        applied: meta.index,
        snapshot: Some(meta.clone()),
        damage: None,
    };
    let cfg = {
        let mut c = Config::default();
        c.id = 1;
        c.snapshot_chunk_bytes = CHUNK;
        c
    };
    let mut r = Raft::new(cfg, state).unwrap();
    while r.role() == RoleKind::Follower {
        r.tick();
    }
    let rd = r.ready();
    r.on_persisted(rd.number);
    for pre_vote in [true, false] {
        r.step(msg(2, 1, 3, MessageBody::VoteResponse(VoteResponse { pre_vote, granted: true })))
            .unwrap();
        let rd = r.ready();
        r.on_persisted(rd.number);
    }
    assert!(r.is_leader());
    r
}

/// Streams a `size`-byte snapshot from one store to another through two cores; prints
/// `STREAM seconds MB/s chunks peak_rss_above_baseline_mib`.
fn stream_child(size: u64, dir: &Path) {
    let (src, _) =
        FileSnapshotStore::open(dir.join("src"), SnapshotStoreOptions::default()).unwrap();
    let (dst, _) =
        FileSnapshotStore::open(dir.join("dst"), SnapshotStoreOptions::default()).unwrap();
    let meta = write_snapshot(&src, size);
    let mut leader = leader(&meta);
    let mut follower = Raft::new(
        {
            let mut c = Config::default();
            c.id = 2;
            c.snapshot_chunk_bytes = CHUNK;
            c
        },
        InitialState::new_group(vec![1, 2, 3]),
    )
    .unwrap();
    let mut receiver = SnapshotReceiver::new();
    let baseline = rss_kib("VmRSS:");
    let started = Instant::now();
    // The follower's empty log does not match the leader's: the leader turns to the snapshot.
    let conflict = AppendResponse::Conflict { rejected: meta.index, hint_index: 0, hint_term: 0 };
    leader.step(msg(2, 1, 3, MessageBody::AppendResponse(conflict))).unwrap();
    let mut reader = src.open_for_send(&meta).unwrap();
    let mut chunks = 0u64;
    while follower.status().snapshot_index != meta.index {
        let rd = leader.ready();
        leader.on_persisted(rd.number);
        for read in rd.snapshot_reads {
            let data = reader.read_at(read.offset, read.max_bytes);
            leader.on_snapshot_read(read, data);
        }
        let rd = leader.ready();
        leader.on_persisted(rd.number);
        for m in rd.messages.into_iter().filter(|m| m.to == 2) {
            if matches!(m.body, MessageBody::InstallSnapshot(_)) {
                chunks += 1;
                follower.step(m).unwrap();
            }
        }
        let frd = follower.ready();
        follower.on_persisted(frd.number);
        for chunk in frd.snapshot_chunks {
            let result = receiver.write(&dst, &chunk);
            follower.on_snapshot_chunk(chunk, result);
        }
        let frd = follower.ready();
        follower.on_persisted(frd.number);
        for m in frd.messages.into_iter().chain(frd.persisted_messages).filter(|m| m.to == 1) {
            leader.step(m).unwrap();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let peak = rss_kib("VmHWM:");
    assert_eq!(dst.latest(0).unwrap().map(|m| m.checksum), Some(meta.checksum));
    println!(
        "STREAM {secs:.3} {:.1} {chunks} {:.1}",
        size as f64 / secs / 1e6,
        peak.saturating_sub(baseline) as f64 / 1024.0
    );
}
