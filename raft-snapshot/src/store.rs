//! [`FileSnapshotStore`]: snapshots as checksummed files, installed atomically.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use raft_core::ready::SnapshotRequest;
use raft_core::snapshot::validate_meta;
use raft_core::{
    GroupId, SnapshotError, SnapshotMeta, SnapshotReader, SnapshotStore, SnapshotWriter,
};

use crate::format;

mod scrub;

/// Settings of a [`FileSnapshotStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotStoreOptions {
    /// Complete snapshots kept per group (at least 1); older ones are deleted once a newer one
    /// is installed, unless a reader holds them open.
    pub retain: usize,
    /// Data bytes per checksummed frame in the file. Writers buffer one frame, so this is also
    /// what a writer holds in memory.
    pub frame_bytes: u32,
    /// Limit on the bytes per second read for sending to followers
    /// ([`SnapshotStore::open_for_send`]); `None` for no limit. Local restores are not limited.
    pub send_rate_bytes_per_sec: Option<u64>,
    /// At open, read the newest snapshot of every group whole and check every frame and the
    /// whole-data checksum (otherwise only the header and trailer are checked at open, and
    /// frames when they are read).
    pub verify_on_open: bool,
    /// Background scrubbing: bytes per second of snapshot files read back and checked (every
    /// frame's CRC and the whole data's checksum), so damage is found before a restore or a
    /// follower needs the snapshot. A damaged one is set aside and reported to the node
    /// ([`SnapshotStore::take_damage_found`]), which takes a fresh one. 0 turns it off.
    pub scrub_bytes_per_sec: u64,
}

impl Default for SnapshotStoreOptions {
    fn default() -> SnapshotStoreOptions {
        SnapshotStoreOptions {
            retain: 2,
            frame_bytes: 1 << 20,
            send_rate_bytes_per_sec: None,
            verify_on_open: true,
            scrub_bytes_per_sec: 4 << 20,
        }
    }
}

/// What [`FileSnapshotStore::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Complete snapshots found.
    pub snapshots: usize,
    /// Temporary files of interrupted writes or transfers, deleted.
    pub temp_files_removed: usize,
    /// Bytes of snapshot data verified against their checksums.
    pub bytes_verified: u64,
    /// Snapshot files found damaged and set aside (renamed to `*.damaged`), with why. Each
    /// group falls back to its newest snapshot that checks out.
    pub damaged: Vec<(PathBuf, String)>,
}

/// Renames a damaged snapshot file out of the way (`<name>.damaged`), keeping it for the
/// operator; returns its new path.
fn set_aside(path: &Path) -> Result<PathBuf, SnapshotError> {
    let mut to = path.as_os_str().to_owned();
    to.push(".damaged");
    let to = PathBuf::from(to);
    std::fs::rename(path, &to)
        .map_err(|source| SnapshotError::File { path: to.clone(), source })?;
    Ok(to)
}

/// Snapshots of many groups in one directory.
///
/// A snapshot is written under a temporary name, frame by frame with a CRC32C per frame, then
/// fsynced, renamed to its final name and the directory fsynced: a crash at any point leaves
/// either the old snapshot or the new one, and temporary files are deleted at the next open.
/// A lock file keeps a second process out. See the [crate docs](crate) for the format.
#[derive(Clone, Debug)]
pub struct FileSnapshotStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    options: SnapshotStoreOptions,
    /// Held for the store's life: the directory's lock.
    _lock: File,
    /// Complete snapshots per group, oldest first.
    index: Mutex<BTreeMap<GroupId, Vec<SnapshotMeta>>>,
    /// Open readers per file name: retention skips these.
    readers: Mutex<HashMap<String, usize>>,
    next_temp: AtomicU64,
    limiter: Option<Mutex<Bucket>>,
    scrub: ScrubState,
}

/// What the scrubber counted and found.
#[derive(Debug, Default)]
struct ScrubState {
    bytes: AtomicU64,
    passes: AtomicU64,
    damaged: AtomicU64,
    /// Damaged snapshots not yet handed to the node, per group.
    found: Mutex<HashMap<GroupId, SnapshotMeta>>,
}

/// Counters of a [`FileSnapshotStore`] ([`FileSnapshotStore::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotStats {
    /// Bytes of snapshot files read back by scrubbing.
    pub scrubbed_bytes: u64,
    /// Complete passes of scrubbing over every snapshot.
    pub scrub_passes: u64,
    /// Snapshots scrubbing found damaged (and set aside).
    pub scrub_damaged: u64,
}

impl FileSnapshotStore {
    /// Opens (creating if needed) the snapshot directory `dir`: takes its lock, deletes
    /// temporary files left by a crash, and checks every snapshot's header and trailer (and,
    /// with [`verify_on_open`](SnapshotStoreOptions::verify_on_open), the newest snapshot of
    /// each group whole).
    ///
    /// A snapshot file that does not check out (its header or trailer, or with
    /// `verify_on_open` the whole of each group's newest) is never restored: it is renamed to
    /// `*.damaged`, listed in [`OpenReport::damaged`], and the group falls back to its newest
    /// snapshot that checks out (raft-core keeps the log back to the previous snapshot for
    /// this; a node left with none gets a fresh one from its leader).
    ///
    /// # Errors
    /// [`SnapshotError::Locked`] if another process holds the directory,
    /// [`SnapshotError::UnsupportedVersion`] for a newer snapshot file, [`SnapshotError::File`]
    /// for I/O.
    pub fn open(
        dir: impl AsRef<Path>,
        options: SnapshotStoreOptions,
    ) -> Result<(FileSnapshotStore, OpenReport), SnapshotError> {
        let dir = dir.as_ref().to_path_buf();
        let ctx = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotError::File { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(ctx(&dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(ctx(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(SnapshotError::Locked { path: dir }),
            Err(TryLockError::Error(e)) => {
                return Err(SnapshotError::File { path: lock_path, source: e })
            }
        }
        let mut report = OpenReport::default();
        let mut index: BTreeMap<GroupId, Vec<SnapshotMeta>> = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(ctx(&dir))? {
            let entry = entry.map_err(ctx(&dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = entry.path();
            if format::is_temp_name(name) {
                std::fs::remove_file(&path).map_err(ctx(&path))?;
                report.temp_files_removed += 1;
            } else if format::is_snapshot_name(name) {
                let file = File::open(&path).map_err(ctx(&path))?;
                let checked = match read_layout(&file, &path) {
                    Ok((meta, _)) if format::file_name(&meta) == name => Ok(meta),
                    Ok((meta, _)) => Err(SnapshotError::Corrupt(format!(
                        "metadata {meta:?} does not match the file name"
                    ))),
                    Err(e @ SnapshotError::UnsupportedVersion { .. }) => return Err(e),
                    Err(e) => Err(e),
                };
                match checked {
                    Ok(meta) => {
                        index.entry(meta.group).or_default().push(meta);
                        report.snapshots += 1;
                    }
                    Err(e) => report.damaged.push((set_aside(&path)?, e.to_string())),
                }
            }
        }
        if report.temp_files_removed > 0 {
            sync_dir(&dir)?;
            tracing::info!(dir = %dir.display(), removed = report.temp_files_removed, "removed unfinished snapshot files");
        }
        for list in index.values_mut() {
            list.sort_by_key(|m| (m.index, m.term));
        }
        let limiter = options.send_rate_bytes_per_sec.map(|rate| Mutex::new(Bucket::new(rate)));
        let store = FileSnapshotStore {
            shared: Arc::new(Shared {
                dir,
                options: SnapshotStoreOptions { retain: options.retain.max(1), ..options },
                _lock: lock,
                index: Mutex::new(index),
                readers: Mutex::new(HashMap::new()),
                next_temp: AtomicU64::new(0),
                limiter,
                scrub: ScrubState::default(),
            }),
        };
        if store.shared.options.verify_on_open {
            let groups: Vec<GroupId> = store.shared.index.lock().keys().copied().collect();
            for group in groups {
                // The newest that checks out; damaged ones are set aside.
                while let Some(meta) = store.list(group).last().cloned() {
                    match store.verify(&meta) {
                        Ok(bytes) => {
                            report.bytes_verified += bytes;
                            break;
                        }
                        Err(e @ SnapshotError::File { .. }) => return Err(e),
                        Err(e) => {
                            let path = store.shared.dir.join(format::file_name(&meta));
                            report.damaged.push((set_aside(&path)?, e.to_string()));
                            if let Some(list) = store.shared.index.lock().get_mut(&group) {
                                list.retain(|m| !m.same_data(&meta));
                            }
                            report.snapshots -= 1;
                        }
                    }
                }
            }
        }
        for (path, why) in &report.damaged {
            tracing::error!(path = %path.display(), %why, "damaged snapshot set aside; falling back to an older one");
        }
        if !report.damaged.is_empty() {
            sync_dir(&store.shared.dir)?;
        }
        let rate = store.shared.options.scrub_bytes_per_sec;
        if rate > 0 {
            let weak = Arc::downgrade(&store.shared);
            std::thread::Builder::new()
                .name("snapshot-scrub".into())
                .spawn(move || scrub::run(weak, rate))
                .map_err(|source| SnapshotError::File { path: store.shared.dir.clone(), source })?;
        }
        Ok((store, report))
    }

    /// What the store counted: scrubbing's bytes, passes and damaged snapshots.
    pub fn stats(&self) -> SnapshotStats {
        let s = &self.shared.scrub;
        SnapshotStats {
            scrubbed_bytes: s.bytes.load(Ordering::Relaxed),
            scrub_passes: s.passes.load(Ordering::Relaxed),
            scrub_damaged: s.damaged.load(Ordering::Acquire),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Complete snapshots of `group`, oldest first.
    pub fn list(&self, group: GroupId) -> Vec<SnapshotMeta> {
        self.shared.index.lock().get(&group).cloned().unwrap_or_default()
    }

    /// Reads snapshot `meta` whole, checking every frame's CRC and the data's checksum.
    /// Returns the bytes verified.
    pub fn verify(&self, meta: &SnapshotMeta) -> Result<u64, SnapshotError> {
        let path = self.shared.dir.join(format::file_name(meta));
        let file = File::open(&path)
            .map_err(|source| SnapshotError::File { path: path.clone(), source })?;
        let (found, chunk) = read_layout(&file, &path)?;
        let mut crc = 0u32;
        let mut buf = Vec::new();
        for k in 0..format::frame_count(found.size, chunk) {
            read_frame(&file, &path, k, chunk, found.size, &mut buf)?;
            crc = crc32c::crc32c_append(crc, &buf);
        }
        if crc != found.checksum {
            return Err(SnapshotError::ChecksumMismatch { expected: found.checksum, actual: crc });
        }
        Ok(found.size)
    }

    fn temp_path(&self, what: &str) -> PathBuf {
        let n = self.shared.next_temp.fetch_add(1, Ordering::Relaxed);
        self.shared.dir.join(format!("tmp-{what}-{}-{n}.part", std::process::id()))
    }

    fn writer(
        &self,
        request: SnapshotRequest,
        expected: Option<SnapshotMeta>,
    ) -> Result<Box<dyn SnapshotWriter>, SnapshotError> {
        let path = self.temp_path(if expected.is_some() { "recv" } else { "take" });
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| SnapshotError::File { path: path.clone(), source })?;
        let chunk = self.shared.options.frame_bytes.clamp(1, format::MAX_CHUNK);
        let mut writer = FileWriter {
            store: self.clone(),
            file: Some(file),
            path,
            request,
            expected,
            chunk,
            frame: Vec::with_capacity(format::FRAME_HEADER_LEN as usize + chunk as usize),
            written: 0,
            crc: 0,
        };
        writer.put(&format::encode_header(chunk))?;
        writer.frame.resize(format::FRAME_HEADER_LEN as usize, 0);
        Ok(Box::new(writer))
    }

    /// Records a finished snapshot and applies retention.
    fn installed(&self, meta: SnapshotMeta) -> Result<(), SnapshotError> {
        let doomed: Vec<SnapshotMeta> = {
            let mut index = self.shared.index.lock();
            let list = index.entry(meta.group).or_default();
            list.retain(|m| !m.same_data(&meta));
            list.push(meta.clone());
            list.sort_by_key(|m| (m.index, m.term));
            let readers = self.shared.readers.lock();
            let excess = list.len().saturating_sub(self.shared.options.retain);
            let mut doomed = Vec::new();
            let mut kept = Vec::new();
            for (i, m) in list.drain(..).enumerate() {
                let busy = readers.get(&format::file_name(&m)).is_some_and(|&n| n > 0);
                if i < excess && !busy {
                    doomed.push(m);
                } else {
                    kept.push(m);
                }
            }
            *list = kept;
            doomed
        };
        self.delete_files(&doomed)?;
        for m in &doomed {
            tracing::debug!(group = m.group, index = m.index, "snapshot removed by retention");
        }
        Ok(())
    }

    /// Deletes the files of `doomed` (gone already is fine), then syncs the directory.
    fn delete_files(&self, doomed: &[SnapshotMeta]) -> Result<(), SnapshotError> {
        for m in doomed {
            let path = self.shared.dir.join(format::file_name(m));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(SnapshotError::File { path, source }),
            }
        }
        if !doomed.is_empty() {
            sync_dir(&self.shared.dir)?;
        }
        Ok(())
    }

    fn open_reader(
        &self,
        meta: &SnapshotMeta,
        limited: bool,
    ) -> Result<Box<dyn SnapshotReader>, SnapshotError> {
        let name = format::file_name(meta);
        // Register the reader before looking the snapshot up, so retention cannot remove it
        // between the two.
        *self.shared.readers.lock().entry(name.clone()).or_insert(0) += 1;
        let guard = ReaderGuard { store: self.clone(), name: name.clone() };
        let known = self
            .shared
            .index
            .lock()
            .get(&meta.group)
            .is_some_and(|v| v.iter().any(|m| m.same_data(meta)));
        if !known {
            return Err(SnapshotError::NotFound {
                group: meta.group,
                index: meta.index,
                term: meta.term,
            });
        }
        let path = self.shared.dir.join(&name);
        let file = File::open(&path)
            .map_err(|source| SnapshotError::File { path: path.clone(), source })?;
        let (found, chunk) = read_layout(&file, &path)?;
        Ok(Box::new(FileReader {
            file,
            path,
            meta: found,
            chunk,
            limited: limited && self.shared.limiter.is_some(),
            store: self.clone(),
            buf: Vec::new(),
            _guard: guard,
        }))
    }
}

impl SnapshotStore for FileSnapshotStore {
    fn create(&self, request: &SnapshotRequest) -> Result<Box<dyn SnapshotWriter>, SnapshotError> {
        validate_meta(&request.meta_with(0, 0))?;
        self.writer(request.clone(), None)
    }

    fn receive(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotWriter>, SnapshotError> {
        validate_meta(meta)?;
        self.writer(SnapshotRequest::of(meta), Some(meta.clone()))
    }

    fn latest(&self, group: GroupId) -> Result<Option<SnapshotMeta>, SnapshotError> {
        Ok(self.shared.index.lock().get(&group).and_then(|v| v.last().cloned()))
    }

    fn open(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotReader>, SnapshotError> {
        self.open_reader(meta, false)
    }

    fn open_for_send(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotReader>, SnapshotError> {
        self.open_reader(meta, true)
    }

    fn take_damage_found(&self, group: GroupId) -> Option<SnapshotMeta> {
        self.shared.scrub.found.lock().remove(&group)
    }

    /// Deletes every snapshot file of `group` (a reader still open keeps reading its file:
    /// the data goes when it closes), then syncs the directory.
    fn remove_group(&self, group: GroupId) -> Result<(), SnapshotError> {
        let doomed = self.shared.index.lock().remove(&group).unwrap_or_default();
        self.shared.scrub.found.lock().remove(&group);
        self.delete_files(&doomed)?;
        if !doomed.is_empty() {
            tracing::info!(group, snapshots = doomed.len(), "destroyed group's snapshots removed");
        }
        Ok(())
    }
}

/// Reads and checks a file's header and trailer; returns its metadata and frame size.
/// Verifies the snapshot file at `path` whole (header, trailer, every frame's CRC, the data's
/// checksum) without opening a store (no lock, nothing changed): for offline checks of a data
/// directory. Returns its metadata.
pub fn verify_file(path: &Path) -> Result<SnapshotMeta, SnapshotError> {
    let file = File::open(path)
        .map_err(|source| SnapshotError::File { path: path.to_path_buf(), source })?;
    let (meta, chunk) = read_layout(&file, path)?;
    let mut crc = 0u32;
    let mut buf = Vec::new();
    for k in 0..format::frame_count(meta.size, chunk) {
        read_frame(&file, path, k, chunk, meta.size, &mut buf)?;
        crc = crc32c::crc32c_append(crc, &buf);
    }
    if crc != meta.checksum {
        return Err(SnapshotError::ChecksumMismatch { expected: meta.checksum, actual: crc });
    }
    Ok(meta)
}

fn read_layout(file: &File, path: &Path) -> Result<(SnapshotMeta, u32), SnapshotError> {
    let io = |source| SnapshotError::File { path: path.to_path_buf(), source };
    let len = file.metadata().map_err(io)?.len();
    if len < format::HEADER_LEN + format::TRAILER_TAIL_LEN {
        return Err(SnapshotError::Corrupt(format!(
            "{}: {len} bytes is too short",
            path.display()
        )));
    }
    let mut header = [0u8; format::HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0).map_err(io)?;
    let (version, chunk) = format::decode_header(&header)?;
    let mut tail = [0u8; format::TRAILER_TAIL_LEN as usize];
    file.read_exact_at(&mut tail, len - format::TRAILER_TAIL_LEN).map_err(io)?;
    let (meta_len, meta_crc) = format::decode_trailer_tail(&tail)?;
    let meta_len = u64::from(meta_len);
    if meta_len > len - format::HEADER_LEN - format::TRAILER_TAIL_LEN {
        return Err(SnapshotError::Corrupt(format!(
            "{}: metadata length {meta_len} past the file",
            path.display()
        )));
    }
    let mut meta_bytes = vec![0u8; meta_len as usize];
    file.read_exact_at(&mut meta_bytes, len - format::TRAILER_TAIL_LEN - meta_len).map_err(io)?;
    let meta = format::decode_meta(&meta_bytes, meta_crc, version)?;
    let expected = format::file_len(meta_len, meta.size, chunk);
    if expected != len {
        return Err(SnapshotError::Corrupt(format!(
            "{}: {len} bytes where {} bytes of data in frames of {chunk} need {expected}",
            path.display(),
            meta.size
        )));
    }
    Ok((meta, chunk))
}

/// Reads frame `k` into `buf` (its data only), checking its length and CRC.
fn read_frame(
    file: &File,
    path: &Path,
    k: u64,
    chunk: u32,
    size: u64,
    buf: &mut Vec<u8>,
) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::File { path: path.to_path_buf(), source };
    let start = format::frame_offset(k, chunk);
    let want = (size - k * u64::from(chunk)).min(u64::from(chunk));
    let mut header = [0u8; format::FRAME_HEADER_LEN as usize];
    file.read_exact_at(&mut header, start).map_err(io)?;
    let len = u64::from(u32::from_le_bytes([header[0], header[1], header[2], header[3]]));
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len != want {
        return Err(SnapshotError::Corrupt(format!(
            "{}: frame {k} holds {len} bytes, expected {want}",
            path.display()
        )));
    }
    buf.resize(len as usize, 0);
    file.read_exact_at(buf, start + format::FRAME_HEADER_LEN).map_err(io)?;
    let actual = crc32c::crc32c(buf);
    if actual != crc {
        return Err(SnapshotError::ChecksumMismatch { expected: crc, actual });
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SnapshotError::File { path: dir.to_path_buf(), source })
}

/// A snapshot being written to a temporary file. Dropped unfinished, the file is deleted.
struct FileWriter {
    store: FileSnapshotStore,
    file: Option<File>,
    path: PathBuf,
    request: SnapshotRequest,
    expected: Option<SnapshotMeta>,
    chunk: u32,
    /// The frame being filled: 8 header bytes, then data.
    frame: Vec<u8>,
    /// Data bytes accepted.
    written: u64,
    crc: u32,
}

impl FileWriter {
    fn put(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let Some(file) = self.file.as_mut() else {
            return Err(SnapshotError::Corrupt("writer already finished".into()));
        };
        file.write_all(bytes)
            .map_err(|source| SnapshotError::File { path: self.path.clone(), source })
    }

    /// Writes the frame being filled, if it holds data.
    fn emit_frame(&mut self) -> Result<(), SnapshotError> {
        let data_len = self.frame.len() - format::FRAME_HEADER_LEN as usize;
        if data_len == 0 {
            return Ok(());
        }
        let crc = crc32c::crc32c(&self.frame[format::FRAME_HEADER_LEN as usize..]);
        self.frame[..4].copy_from_slice(&(data_len as u32).to_le_bytes());
        self.frame[4..8].copy_from_slice(&crc.to_le_bytes());
        let frame = std::mem::take(&mut self.frame);
        let result = self.put(&frame);
        self.frame = frame;
        self.frame.truncate(format::FRAME_HEADER_LEN as usize);
        result
    }
}

impl Write for FileWriter {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let total = buf.len();
        if let Some(expected) = &self.expected {
            if self.written + total as u64 > expected.size {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    SnapshotError::SizeMismatch {
                        expected: expected.size,
                        actual: self.written + total as u64,
                    },
                ));
            }
        }
        while !buf.is_empty() {
            let room = self.chunk as usize + format::FRAME_HEADER_LEN as usize - self.frame.len();
            let n = room.min(buf.len());
            self.frame.extend_from_slice(&buf[..n]);
            self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
            self.written += n as u64;
            buf = &buf[n..];
            if self.frame.len() == self.chunk as usize + format::FRAME_HEADER_LEN as usize {
                self.emit_frame().map_err(std::io::Error::other)?;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SnapshotWriter for FileWriter {
    fn written(&self) -> u64 {
        self.written
    }

    fn finish(mut self: Box<Self>) -> Result<SnapshotMeta, SnapshotError> {
        if let Some(expected) = &self.expected {
            if self.written != expected.size {
                return Err(SnapshotError::SizeMismatch {
                    expected: expected.size,
                    actual: self.written,
                });
            }
            if self.crc != expected.checksum {
                return Err(SnapshotError::ChecksumMismatch {
                    expected: expected.checksum,
                    actual: self.crc,
                });
            }
        }
        self.emit_frame()?;
        let meta = self.request.meta_with(self.written, self.crc);
        self.put(&format::encode_trailer(&meta))?;
        let file = self
            .file
            .take()
            .ok_or_else(|| SnapshotError::Corrupt("writer already finished".into()))?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotError::File { path, source }
        };
        file.sync_data().map_err(io(&self.path))?;
        drop(file);
        let dir = self.store.shared.dir.clone();
        let final_path = dir.join(format::file_name(&meta));
        std::fs::rename(&self.path, &final_path).map_err(io(&final_path))?;
        sync_dir(&dir)?;
        tracing::debug!(
            group = meta.group,
            index = meta.index,
            size = meta.size,
            "snapshot installed"
        );
        self.store.installed(meta.clone())?;
        Ok(meta)
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Unfinished: nothing of it may become visible.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Keeps a snapshot's file out of retention's reach while open.
#[derive(Debug)]
struct ReaderGuard {
    store: FileSnapshotStore,
    name: String,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut readers = self.store.shared.readers.lock();
        if let Some(n) = readers.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                readers.remove(&self.name);
            }
        }
    }
}

struct FileReader {
    file: File,
    path: PathBuf,
    meta: SnapshotMeta,
    chunk: u32,
    limited: bool,
    store: FileSnapshotStore,
    buf: Vec<u8>,
    _guard: ReaderGuard,
}

impl SnapshotReader for FileReader {
    fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    fn read_at(&mut self, offset: u64, max_bytes: usize) -> Result<Bytes, SnapshotError> {
        let size = self.meta.size;
        if offset > size {
            return Err(SnapshotError::OutOfRange { offset, size });
        }
        let end = offset.saturating_add(max_bytes as u64).min(size);
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut at = offset;
        let chunk = u64::from(self.chunk);
        while at < end {
            let k = at / chunk;
            read_frame(&self.file, &self.path, k, self.chunk, size, &mut self.buf)?;
            let within = (at - k * chunk) as usize;
            let take = ((end - at) as usize).min(self.buf.len() - within);
            out.extend_from_slice(&self.buf[within..within + take]);
            at += take as u64;
        }
        if self.limited {
            if let Some(limiter) = &self.store.shared.limiter {
                let wait = limiter.lock().take(out.len() as u64);
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
            }
        }
        Ok(Bytes::from(out))
    }
}

/// A token bucket: `rate` bytes per second, bursts up to one second's worth.
#[derive(Debug)]
struct Bucket {
    rate: u64,
    /// Tokens available (may go negative: the debt a caller sleeps off).
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Bucket {
        Bucket { rate: rate.max(1), tokens: rate.max(1) as f64, last: Instant::now() }
    }

    /// Takes `n` bytes' worth; returns how long the caller must wait before using them.
    fn take(&mut self, n: u64) -> Duration {
        let now = Instant::now();
        let rate = self.rate as f64;
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}
