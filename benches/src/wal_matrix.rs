//! The WAL durability matrix: appenders writing batches to a log backend and waiting for them to
//! be durable, measured for throughput and append-to-durable latency; plus the disk's own limit
//! measured with fio in the same run, to compare against.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::{Entry, LogStore, LogWrite};
use raft_wal::{Durability, Wal, WalConfig};

/// A log backend the matrix can drive.
pub trait Backend: Send + Sync {
    /// Appends `entries` to `group` and returns once the backend's durability mode says they are
    /// durable (for a mode that never syncs: once accepted).
    fn append(&self, group: u64, entries: &[Entry]) -> Result<(), String>;
    /// Drops entries of `group` up to `through` (the snapshot-driven compaction of a real system),
    /// so log space is reused.
    fn compact(&self, group: u64, through: u64, term: u64) -> Result<(), String>;
}

/// raft-wal.
pub struct WalBackend {
    /// The WAL.
    pub wal: Wal,
}

impl WalBackend {
    /// Opens a WAL in `dir` and waits for its prepared segments, so the run starts as a running
    /// system would: with segment files written ahead of the writer.
    pub fn open(dir: &Path, durability: Durability, segment_size_bytes: u64) -> WalBackend {
        let config = WalConfig {
            segment_size_bytes,
            durability,
            prepared_segments: 6,
            ..WalConfig::default()
        };
        let (wal, _) = Wal::open(dir, config).expect("open WAL");
        wal.wait_prepared(6, Duration::from_secs(120));
        WalBackend { wal }
    }
}

impl Backend for WalBackend {
    fn append(&self, group: u64, entries: &[Entry]) -> Result<(), String> {
        let lsn = self
            .wal
            .write(&[LogWrite { group, hard_state: None, entries }])
            .map_err(|e| e.to_string())?;
        self.wal.sync(lsn).map_err(|e| e.to_string())
    }

    fn compact(&self, group: u64, through: u64, term: u64) -> Result<(), String> {
        self.wal.compact(group, through, term).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The simplest durable log: one file, each batch written with `write` and made durable with
/// `fdatasync` before the next (no group commit). A baseline, not a log store: it cannot read.
pub struct PlainFileBackend {
    file: parking_lot::Mutex<std::fs::File>,
}

impl PlainFileBackend {
    /// Creates the file in `dir`.
    pub fn open(dir: &Path) -> PlainFileBackend {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("plain.log"))
            .expect("open plain file");
        PlainFileBackend { file: parking_lot::Mutex::new(file) }
    }
}

impl Backend for PlainFileBackend {
    fn append(&self, group: u64, entries: &[Entry]) -> Result<(), String> {
        use std::io::Write;
        let mut buf = Vec::with_capacity(entries.iter().map(|e| e.data.len() + 24).sum());
        for e in entries {
            buf.extend_from_slice(&group.to_le_bytes());
            buf.extend_from_slice(&e.index.to_le_bytes());
            buf.extend_from_slice(&(e.data.len() as u64).to_le_bytes());
            buf.extend_from_slice(&e.data);
        }
        let mut f = self.file.lock();
        f.write_all(&buf).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())
    }

    fn compact(&self, _group: u64, _through: u64, _term: u64) -> Result<(), String> {
        Ok(())
    }
}

/// tikv's raft-engine (feature `compare`), default settings except compression, which is off.
/// `write(sync = true)` is its durable append; concurrent writers share a sync in its own write
/// groups. Compaction is `compact_to` followed by a purge of expired files, which a running TiKV
/// does on a timer.
#[cfg(feature = "compare")]
pub struct RaftEngineBackend {
    engine: raft_engine::Engine,
    sync: bool,
}

#[cfg(feature = "compare")]
struct EntryExt;

#[cfg(feature = "compare")]
impl raft_engine::MessageExt for EntryExt {
    type Entry = raft_proto::eraftpb::Entry;

    fn index(e: &Self::Entry) -> u64 {
        e.index
    }
}

#[cfg(feature = "compare")]
impl RaftEngineBackend {
    /// Opens an engine in `dir`; `sync` makes every write durable before it returns.
    pub fn open(dir: &Path, sync: bool) -> RaftEngineBackend {
        let config = raft_engine::Config {
            dir: dir.to_string_lossy().into_owned(),
            batch_compression_threshold: raft_engine::ReadableSize(0),
            ..raft_engine::Config::default()
        };
        let engine = raft_engine::Engine::open(config).expect("open raft-engine");
        RaftEngineBackend { engine, sync }
    }
}

#[cfg(feature = "compare")]
impl Backend for RaftEngineBackend {
    fn append(&self, group: u64, entries: &[Entry]) -> Result<(), String> {
        let converted: Vec<raft_proto::eraftpb::Entry> = entries
            .iter()
            .map(|e| raft_proto::eraftpb::Entry {
                term: e.term,
                index: e.index,
                data: e.data.clone(),
                ..Default::default()
            })
            .collect();
        let mut batch = raft_engine::LogBatch::default();
        batch.add_entries::<EntryExt>(group, &converted).map_err(|e| e.to_string())?;
        self.engine.write(&mut batch, self.sync).map(|_| ()).map_err(|e| e.to_string())
    }

    fn compact(&self, group: u64, through: u64, _term: u64) -> Result<(), String> {
        self.engine.compact_to(group, through + 1);
        self.engine.purge_expired_files().map(|_| ()).map_err(|e| e.to_string())
    }
}

/// One cell of the matrix.
#[derive(Clone, Copy, Debug)]
pub struct Cell {
    /// Payload bytes per entry.
    pub entry_bytes: usize,
    /// Entries per append.
    pub batch: usize,
    /// Concurrent appenders (each writes its own group).
    pub appenders: usize,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct CellStats {
    /// Entries made durable per second.
    pub entries_per_sec: f64,
    /// Payload megabytes (10^6) made durable per second.
    pub mb_per_sec: f64,
    /// Appends (batches) per second, all appenders together.
    pub appends_per_sec: f64,
    /// Median append-to-durable latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
}

/// Log bytes the appenders of a cell keep between them: each compacts its group back to its
/// share once it holds twice that, as a running system compacts after its snapshots.
pub const RETAINED_BYTES: usize = 32 << 20;

/// One appender's group: appends batches of the next entries, and compacts the group back to
/// its share of log bytes once it holds twice that, as a running system compacts after its
/// snapshots.
struct Appender {
    group: u64,
    batch: u64,
    payload: Bytes,
    /// Entries kept after a compaction.
    keep: u64,
    first: u64,
    next: u64,
}

impl Appender {
    fn new(group: u64, cell: Cell, payload: Bytes, share_bytes: usize) -> Appender {
        let keep = (share_bytes / cell.entry_bytes).max(cell.batch) as u64;
        Appender { group, batch: cell.batch as u64, payload, keep, first: 1, next: 1 }
    }

    /// Appends one batch; returns how long it took to be durable.
    fn append(&mut self, backend: &dyn Backend) -> Duration {
        let entries: Vec<Entry> = (self.next..self.next + self.batch)
            .map(|i| Entry::normal(1, i, self.payload.clone()))
            .collect();
        let t0 = Instant::now();
        backend.append(self.group, &entries).expect("append");
        let took = t0.elapsed();
        self.next += self.batch;
        if self.next - self.first > 2 * self.keep {
            let through = self.next - 1 - self.keep;
            backend.compact(self.group, through, 1).expect("compact");
            self.first = through + 1;
        }
        took
    }

    /// Compacts the whole group, so a backend that recycles log space gets it back.
    fn finish(&self, backend: &dyn Backend) {
        backend.compact(self.group, self.next - 1, 1).expect("compact");
    }
}

/// Runs `cell` against `backend` for `duration`; appenders own groups `group_base + 1 ..=
/// group_base + appenders`, keep their share of [`RETAINED_BYTES`], and compact their group
/// completely at the end, so a backend that recycles log space gets it back for the next run.
pub fn run_cell(
    backend: Arc<dyn Backend>,
    cell: Cell,
    duration: Duration,
    group_base: u64,
) -> CellStats {
    let payload = Bytes::from(vec![0x5Au8; cell.entry_bytes]);
    let start = Instant::now();
    let deadline = start + duration;
    let threads: Vec<_> = (0..cell.appenders)
        .map(|t| {
            let backend = Arc::clone(&backend);
            let payload = payload.clone();
            std::thread::spawn(move || {
                let group = group_base + t as u64 + 1;
                let mut lat = Vec::new();
                let mut batches = 0u64;
                let mut appender =
                    Appender::new(group, cell, payload, RETAINED_BYTES / cell.appenders);
                while Instant::now() < deadline {
                    lat.push(appender.append(&*backend).as_nanos() as u64);
                    batches += 1;
                }
                appender.finish(&*backend);
                (batches, lat)
            })
        })
        .collect();
    let mut batches = 0u64;
    let mut lat: Vec<u64> = Vec::new();
    for t in threads {
        let (b, l) = t.join().expect("appender");
        batches += b;
        lat.extend(l);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * q) as usize).copied().unwrap_or(0) as f64 / 1e3
    };
    let entries = batches as f64 * cell.batch as f64;
    CellStats {
        entries_per_sec: entries / secs,
        mb_per_sec: entries * cell.entry_bytes as f64 / secs / 1e6,
        appends_per_sec: batches as f64 / secs,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    }
}

/// A pre-written file for the bare baseline of [`run_interleaved`]: each write goes at the next
/// offset (wrapping), followed by `fdatasync`, as fio's jobs do.
pub struct RawFile {
    file: std::fs::File,
    size: u64,
    at: u64,
}

impl RawFile {
    /// Creates `dir/raw-baseline` of `size` bytes, every block written and synced.
    pub fn create(dir: &Path, size: u64) -> RawFile {
        use std::io::Write;
        let path = dir.join("raw-baseline");
        let mut file = std::fs::File::create(&path).expect("create raw baseline file");
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..size.div_ceil(zeros.len() as u64) {
            file.write_all(&zeros).expect("fill raw baseline file");
        }
        file.sync_all().expect("sync raw baseline file");
        RawFile { file, size: size.div_ceil(1 << 20) << 20, at: 0 }
    }

    /// Writes `bytes` at the next offset and makes them durable.
    pub fn write_sync(&mut self, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        if self.at + bytes.len() as u64 > self.size {
            self.at = 0;
        }
        self.file.write_all_at(bytes, self.at).expect("raw write");
        self.file.sync_data().expect("raw fdatasync");
        self.at += bytes.len() as u64;
    }
}

/// What [`run_interleaved`] measured: the backend's appends and the bare writes, taken turn
/// about, so both saw the same disk.
#[derive(Clone, Copy, Debug, Default)]
pub struct Interleaved {
    /// Median append-to-durable latency of the backend, microseconds.
    pub backend_p50_us: f64,
    /// Median write + fdatasync latency of the bare file, microseconds.
    pub raw_p50_us: f64,
    /// Time the bare writes took over time the appends took: the backend's rate as a fraction
    /// of the bare file's.
    pub rate_ratio: f64,
}

/// One appender (group `group`) against a bare file, turn about for `duration`: an append of
/// `cell.batch` entries of `cell.entry_bytes` to `backend` (returning once durable), then one
/// write + fdatasync of the same payload bytes to `raw`. A virtual disk's speed drifts within
/// seconds; alternating append by append cancels that drift out of the comparison, which runs
/// taken one after the other (as against fio) cannot.
pub fn run_interleaved(
    backend: &dyn Backend,
    raw: &mut RawFile,
    cell: Cell,
    duration: Duration,
    group: u64,
) -> Interleaved {
    let payload = Bytes::from(vec![0x5Au8; cell.entry_bytes]);
    let bare = vec![0x5Au8; cell.entry_bytes * cell.batch];
    let mut appender = Appender::new(group, cell, payload, RETAINED_BYTES);
    let (mut wal_lat, mut raw_lat) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        wal_lat.push(appender.append(backend));
        let t0 = Instant::now();
        raw.write_sync(&bare);
        raw_lat.push(t0.elapsed());
    }
    appender.finish(backend);
    let total = |l: &[Duration]| l.iter().sum::<Duration>().as_secs_f64();
    let rate_ratio = total(&raw_lat) / total(&wal_lat).max(f64::MIN_POSITIVE);
    let p50 = |l: &mut Vec<Duration>| {
        l.sort_unstable();
        l.get(l.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Interleaved { backend_p50_us: p50(&mut wal_lat), raw_p50_us: p50(&mut raw_lat), rate_ratio }
}

/// The median of each field over several runs.
pub fn median(runs: &[CellStats]) -> CellStats {
    let m = |f: fn(&CellStats) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    CellStats {
        entries_per_sec: m(|s| s.entries_per_sec),
        mb_per_sec: m(|s| s.mb_per_sec),
        appends_per_sec: m(|s| s.appends_per_sec),
        p50_us: m(|s| s.p50_us),
        p99_us: m(|s| s.p99_us),
    }
}

/// fio's figure for one write size: one write plus fdatasync per write, sequential, one job.
#[derive(Clone, Copy, Debug, Default)]
pub struct FioLimit {
    /// Writes (each followed by fdatasync) per second.
    pub writes_per_sec: f64,
    /// fdatasync latency p50, microseconds.
    pub sync_p50_us: f64,
    /// fdatasync latency p99, microseconds.
    pub sync_p99_us: f64,
    /// Latency p50 of the write call itself (into the page cache), microseconds.
    pub write_p50_us: f64,
}

/// Runs fio as `shared/tools/disk-limit.sh` does, for `bs` bytes per write, on a file whose
/// blocks are already written (`prewritten`) or merely fallocated. None if fio is missing.
pub fn fio_limit(dir: &Path, bs: usize, prewritten: bool) -> Option<FioLimit> {
    let size = fio_file_size(bs);
    run_fio(
        dir,
        &[
            &format!("--directory={}", dir.display()),
            &format!("--bs={bs}"),
            &format!("--size={size}"),
            &format!("--overwrite={}", u8::from(prewritten)),
            "--runtime=5",
            "--time_based=0",
            "--unlink=1",
        ],
    )
}

/// The file fio writes for `bs`-byte writes: big enough that a run rarely wraps around.
fn fio_file_size(bs: usize) -> &'static str {
    if bs <= 4096 {
        "64m"
    } else if bs <= 65536 {
        "256m"
    } else {
        "1g"
    }
}

/// fio runs taken right next to the benchmark runs they are compared with, because this disk's
/// rate moves by 30% or more within minutes: one fio figure taken at the start of a long matrix
/// would judge late cells against a different disk. Each write size gets one pre-written file,
/// laid out on first use (not timed) and kept, so no run pays for creating or discarding it.
pub struct AdjacentFio {
    dir: tempfile::TempDir,
}

impl AdjacentFio {
    /// Keeps fio's files in a new directory under `parent`.
    pub fn new(parent: &Path) -> AdjacentFio {
        AdjacentFio { dir: tempfile::tempdir_in(parent).expect("fio dir") }
    }

    /// One write + fdatasync per write of `bs` bytes, sequential, for `duration`, on the
    /// pre-written file for `bs`. None if fio is missing or failed.
    pub fn run(&self, bs: usize, duration: Duration) -> Option<FioLimit> {
        settle(self.dir.path());
        let file = self.dir.path().join(format!("fio-{bs}"));
        run_fio(
            self.dir.path(),
            &[
                &format!("--filename={}", file.display()),
                &format!("--bs={bs}"),
                &format!("--size={}", fio_file_size(bs)),
                "--overwrite=1",
                &format!("--runtime={}ms", duration.as_millis().max(1)),
                "--time_based=1",
                "--unlink=0",
            ],
        )
    }
}

/// Lets the disk settle between timed runs: commits the filesystem holding `dir` (which also
/// issues the discards of files deleted by the previous run, on a filesystem mounted with
/// `discard`), then pauses briefly, so no run pays for the one before it.
pub fn settle(dir: &Path) {
    let _ = std::process::Command::new("sync").arg("-f").arg(dir).status();
    std::thread::sleep(Duration::from_millis(300));
}

/// The median of each field over several fio runs.
pub fn median_fio(runs: &[FioLimit]) -> Option<FioLimit> {
    if runs.is_empty() {
        return None;
    }
    let m = |f: fn(&FioLimit) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Some(FioLimit {
        writes_per_sec: m(|l| l.writes_per_sec),
        sync_p50_us: m(|l| l.sync_p50_us),
        sync_p99_us: m(|l| l.sync_p99_us),
        write_p50_us: m(|l| l.write_p50_us),
    })
}

/// Runs one sequential fio write job (one write + fdatasync per write, one job) with `args`
/// added, and reads its JSON report.
fn run_fio(dir: &Path, args: &[&str]) -> Option<FioLimit> {
    let out = dir.join("fio.json");
    let status = std::process::Command::new("fio")
        .args([
            "--name=limit",
            "--ioengine=sync",
            "--rw=write",
            "--fdatasync=1",
            "--numjobs=1",
            "--output-format=json",
            &format!("--output={}", out.display()),
        ])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).ok()?).ok()?;
    let job = &json["jobs"][0];
    let pct = |p: &str| job["sync"]["lat_ns"]["percentile"][p].as_f64().unwrap_or(0.0) / 1e3;
    Some(FioLimit {
        writes_per_sec: job["write"]["iops"].as_f64()?,
        sync_p50_us: pct("50.000000"),
        sync_p99_us: pct("99.000000"),
        write_p50_us: job["write"]["clat_ns"]["percentile"]["50.000000"].as_f64().unwrap_or(0.0)
            / 1e3,
    })
}
