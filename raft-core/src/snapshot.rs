//! Snapshots: the storage seam ([`SnapshotStore`]), the helpers that connect a store to the
//! core and to a [`StateMachine`], and an in-memory store for tests.
//!
//! # What a snapshot is
//!
//! A snapshot is the state machine's state after applying the log up to an index, as a stream
//! of bytes, plus its [`SnapshotMeta`]. It is written to a store completely (size and CRC32C
//! then known) before anything reads it: a node takes one when the core asks
//! ([`Ready::snapshot_request`](crate::Ready::snapshot_request)), a follower receives one chunk by
//! chunk from its leader ([`Ready::snapshot_chunks`](crate::Ready::snapshot_chunks)), and only a
//! finished, verified snapshot is ever restored or sent.
//!
//! # What happens to the log
//!
//! Once a snapshot at `(index, term)` exists, the log prefix up to it is no longer needed: the
//! core asks for the log store to be compacted through `index` (or a little before it, see
//! [`Config::log_keep_entries`](crate::Config::log_keep_entries)). A follower that installs a
//! snapshot from its leader keeps the entries after `index` only if its log holds
//! `(index, term)`; otherwise its whole log is discarded and continues at `index + 1`. After a
//! crash, [`load_initial_state`](crate::storage::load_initial_state) finishes a compaction that the
//! snapshot store shows was due, so the log never has a hole between the snapshot and its
//! first entry.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::SnapshotError;
use crate::ready::{SnapshotChunk, SnapshotRead, SnapshotRequest};
use crate::storage::{SnapshotView, StateMachine};
use crate::types::{GroupId, SnapshotMeta};

/// Durable storage for snapshots of many groups.
///
/// Implementations must make [`SnapshotWriter::finish`] atomic (a crash leaves the old snapshot
/// or the new one, never a half one that looks whole), verify received data against its
/// metadata, and never delete a snapshot while a [`SnapshotReader`] for it is open.
pub trait SnapshotStore: Send + Sync {
    /// Starts writing a snapshot of the local state machine at `(index, term)`. The writer
    /// computes size and checksum as the data streams in.
    fn create(&self, request: &SnapshotRequest) -> Result<Box<dyn SnapshotWriter>, SnapshotError>;

    /// Starts receiving the snapshot `meta` from a leader. [`SnapshotWriter::finish`] fails with
    /// a typed error unless exactly `meta.size` bytes with checksum `meta.checksum` arrived.
    fn receive(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotWriter>, SnapshotError>;

    /// The newest complete snapshot of `group`, if any.
    fn latest(&self, group: GroupId) -> Result<Option<SnapshotMeta>, SnapshotError>;

    /// Opens the complete snapshot `meta` for reading.
    fn open(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotReader>, SnapshotError>;

    /// Opens the complete snapshot `meta` for sending to a follower. A store that limits the
    /// bandwidth snapshots take from the network applies the limit to these readers only (so
    /// local restores run at full speed).
    fn open_for_send(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotReader>, SnapshotError> {
        self.open(meta)
    }

    /// A snapshot of `group` the store's own checks (background scrubbing) found damaged since
    /// the last call, and set aside: the node then takes a fresh one
    /// ([`Raft::report_snapshot_damaged`](crate::Raft::report_snapshot_damaged)). The node
    /// driver asks at every tick. The default finds nothing.
    fn take_damage_found(&self, group: GroupId) -> Option<SnapshotMeta> {
        let _ = group;
        None
    }

    /// Deletes every snapshot of a destroyed group (called from
    /// [`Node::destroy`](crate::node::Node::destroy) after its node stopped). The default keeps
    /// them (a store that cannot delete: the application's catalogue says the group is gone).
    fn remove_group(&self, group: GroupId) -> Result<(), SnapshotError> {
        let _ = group;
        Ok(())
    }
}

/// A snapshot being written. Dropping it without [`finish`](SnapshotWriter::finish) abandons it:
/// nothing of it becomes visible.
pub trait SnapshotWriter: Write + Send {
    /// Bytes written so far.
    fn written(&self) -> u64;

    /// Makes the snapshot durable and visible atomically, and returns its metadata.
    fn finish(self: Box<Self>) -> Result<SnapshotMeta, SnapshotError>;
}

/// An open, complete snapshot.
pub trait SnapshotReader: Send {
    /// The snapshot's metadata.
    fn meta(&self) -> &SnapshotMeta;

    /// Up to `max_bytes` of the snapshot's data from `offset` (fewer only at the end; empty
    /// exactly at the end).
    fn read_at(&mut self, offset: u64, max_bytes: usize) -> Result<Bytes, SnapshotError>;
}

impl<T: SnapshotStore + ?Sized> SnapshotStore for Arc<T> {
    fn create(&self, request: &SnapshotRequest) -> Result<Box<dyn SnapshotWriter>, SnapshotError> {
        (**self).create(request)
    }
    fn receive(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotWriter>, SnapshotError> {
        (**self).receive(meta)
    }
    fn latest(&self, group: GroupId) -> Result<Option<SnapshotMeta>, SnapshotError> {
        (**self).latest(group)
    }
    fn open(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotReader>, SnapshotError> {
        (**self).open(meta)
    }
    fn open_for_send(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotReader>, SnapshotError> {
        (**self).open_for_send(meta)
    }
    fn take_damage_found(&self, group: GroupId) -> Option<SnapshotMeta> {
        (**self).take_damage_found(group)
    }
    fn remove_group(&self, group: GroupId) -> Result<(), SnapshotError> {
        (**self).remove_group(group)
    }
}

/// Reads a whole snapshot as a stream, `chunk` bytes per store read.
pub struct SnapshotStream<'a> {
    reader: &'a mut dyn SnapshotReader,
    offset: u64,
    chunk: usize,
    buffered: Bytes,
}

impl<'a> SnapshotStream<'a> {
    /// A stream over `reader` from its start.
    pub fn new(reader: &'a mut dyn SnapshotReader, chunk: usize) -> SnapshotStream<'a> {
        SnapshotStream { reader, offset: 0, chunk: chunk.max(1), buffered: Bytes::new() }
    }
}

impl Read for SnapshotStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.buffered.is_empty() {
            if self.offset >= self.reader.meta().size {
                return Ok(0);
            }
            self.buffered =
                self.reader.read_at(self.offset, self.chunk).map_err(std::io::Error::other)?;
            if self.buffered.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "snapshot ended before its size",
                ));
            }
            self.offset += self.buffered.len() as u64;
        }
        let n = buf.len().min(self.buffered.len());
        buf[..n].copy_from_slice(&self.buffered[..n]);
        let _ = self.buffered.split_to(n);
        Ok(n)
    }
}

/// Takes the snapshot the core asked for: streams the state machine into the store and
/// finishes it. Pass the result to [`Raft::on_snapshot_taken`](crate::Raft::on_snapshot_taken).
pub fn take_snapshot<M: StateMachine + ?Sized>(
    machine: &mut M,
    store: &dyn SnapshotStore,
    request: &SnapshotRequest,
) -> Result<SnapshotMeta, SnapshotError> {
    write_snapshot(store, request, |out| machine.snapshot(out))
}

/// Writes the snapshot `request` asks for from a [`SnapshotView`] (see
/// [`StateMachine::snapshot_view`]) and finishes it in the store.
pub fn take_snapshot_view(
    view: Box<dyn SnapshotView>,
    store: &dyn SnapshotStore,
    request: &SnapshotRequest,
) -> Result<SnapshotMeta, SnapshotError> {
    write_snapshot(store, request, |out| view.write_to(out))
}

/// Creates the snapshot in the store, lets `write` fill it, and finishes it.
fn write_snapshot(
    store: &dyn SnapshotStore,
    request: &SnapshotRequest,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<SnapshotMeta, SnapshotError> {
    let mut writer = store.create(request)?;
    write(&mut writer)?;
    writer.flush()?;
    writer.finish()
}

/// Restores `machine` from the complete snapshot `meta`, streaming it from the store in
/// `chunk`-byte reads (memory stays bounded by the chunk, whatever the snapshot's size).
pub fn restore_snapshot<M: StateMachine + ?Sized>(
    machine: &mut M,
    store: &dyn SnapshotStore,
    meta: &SnapshotMeta,
    chunk: usize,
) -> Result<(), SnapshotError> {
    let mut reader = store.open(meta)?;
    let mut stream = SnapshotStream::new(&mut *reader, chunk);
    machine.restore(&mut stream)?;
    Ok(())
}

/// Reads what a [`SnapshotRead`] asks for; pass the result to
/// [`Raft::on_snapshot_read`](crate::Raft::on_snapshot_read). A driver that streams large
/// snapshots may keep the reader open between chunks instead.
pub fn serve_snapshot_read(
    store: &dyn SnapshotStore,
    read: &SnapshotRead,
) -> Result<Bytes, SnapshotError> {
    let mut reader = store.open_for_send(&read.meta)?;
    reader.read_at(read.offset, read.max_bytes)
}

/// The receiving side of snapshot transfers for one node: writes the chunks the core hands out
/// ([`Ready::snapshot_chunks`](crate::Ready::snapshot_chunks)) into the store, one transfer per
/// group at a time, so memory is bounded by one chunk.
#[derive(Default)]
pub struct SnapshotReceiver {
    transfers: BTreeMap<GroupId, (SnapshotMeta, Box<dyn SnapshotWriter>)>,
}

impl std::fmt::Debug for SnapshotReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open: Vec<_> = self
            .transfers
            .values()
            .map(|(meta, writer)| (meta.group, meta.index, meta.term, writer.written()))
            .collect();
        f.debug_struct("SnapshotReceiver").field("open", &open).finish()
    }
}

impl SnapshotReceiver {
    /// A receiver with no transfer open.
    pub fn new() -> SnapshotReceiver {
        SnapshotReceiver::default()
    }

    /// Writes one chunk. A chunk of another snapshot than the group's open transfer must start at
    /// offset 0 and abandons that transfer. The last chunk finishes the snapshot: verified,
    /// durable and visible in the store when this returns `Ok`. Pass the result to
    /// [`Raft::on_snapshot_chunk`](crate::Raft::on_snapshot_chunk).
    pub fn write(
        &mut self,
        store: &dyn SnapshotStore,
        chunk: &SnapshotChunk,
    ) -> Result<(), SnapshotError> {
        let group = chunk.meta.group;
        let same = self.transfers.get(&group).is_some_and(|(meta, _)| meta.same_data(&chunk.meta));
        if !same {
            self.transfers.remove(&group);
            if chunk.offset != 0 {
                return Err(SnapshotError::OutOfOrder { expected: 0, got: chunk.offset });
            }
            let writer = store.receive(&chunk.meta)?;
            self.transfers.insert(group, (chunk.meta.clone(), writer));
        }
        let result = self.write_open(chunk);
        if result.is_err() {
            self.transfers.remove(&group);
        }
        result
    }

    fn write_open(&mut self, chunk: &SnapshotChunk) -> Result<(), SnapshotError> {
        let group = chunk.meta.group;
        let Some((_, writer)) = self.transfers.get_mut(&group) else {
            return Err(SnapshotError::OutOfOrder { expected: 0, got: chunk.offset });
        };
        if writer.written() != chunk.offset {
            return Err(SnapshotError::OutOfOrder {
                expected: writer.written(),
                got: chunk.offset,
            });
        }
        writer.write_all(&chunk.data)?;
        if chunk.done {
            if let Some((_, writer)) = self.transfers.remove(&group) {
                writer.finish()?;
            }
        }
        Ok(())
    }

    /// Abandons every open transfer (what a crash does).
    pub fn clear(&mut self) {
        self.transfers.clear();
    }

    /// Bytes received so far of `group`'s open transfer.
    pub fn received(&self, group: GroupId) -> Option<(SnapshotMeta, u64)> {
        self.transfers.get(&group).map(|(meta, writer)| (meta.clone(), writer.written()))
    }
}

/// Checks metadata a store is handed before it writes anything.
pub fn validate_meta(meta: &SnapshotMeta) -> Result<(), SnapshotError> {
    if meta.index == 0 {
        return Err(SnapshotError::InvalidMeta("index 0 is the empty log, not a snapshot".into()));
    }
    if meta.membership.voters.is_empty() {
        return Err(SnapshotError::InvalidMeta("no voters".into()));
    }
    meta.membership.validate().map_err(|e| SnapshotError::InvalidMeta(e.to_string()))?;
    if meta.term == 0 {
        return Err(SnapshotError::InvalidMeta(format!("index {} with term 0", meta.index)));
    }
    Ok(())
}

/// Snapshots held in memory: complete snapshots survive [`crash`](MemSnapshotStore::crash),
/// as if every finish had been fsynced; transfers in progress do not (their writers belong to
/// the caller). Keeps the newest `retain` snapshots per group; an open reader keeps its
/// snapshot's data alive whatever retention does.
#[derive(Debug, Clone)]
pub struct MemSnapshotStore {
    inner: Arc<Mutex<MemSnapshots>>,
}

#[derive(Debug)]
struct MemSnapshots {
    /// Per group, complete snapshots ordered by `(index, term)`.
    groups: BTreeMap<GroupId, Vec<(SnapshotMeta, Bytes)>>,
    retain: usize,
}

impl Default for MemSnapshotStore {
    fn default() -> MemSnapshotStore {
        MemSnapshotStore::new(2)
    }
}

impl MemSnapshotStore {
    /// A store keeping the newest `retain` (at least 1) snapshots of each group.
    pub fn new(retain: usize) -> MemSnapshotStore {
        let inner = MemSnapshots { groups: BTreeMap::new(), retain: retain.max(1) };
        MemSnapshotStore { inner: Arc::new(Mutex::new(inner)) }
    }

    /// Complete snapshots of `group`, oldest first.
    pub fn list(&self, group: GroupId) -> Vec<SnapshotMeta> {
        let inner = self.inner.lock();
        inner.groups.get(&group).map_or(Vec::new(), |v| v.iter().map(|(m, _)| m.clone()).collect())
    }

    /// Simulates a power loss: complete snapshots are durable, so nothing changes here.
    pub fn crash(&self) {}

    fn install(&self, meta: SnapshotMeta, data: Bytes) {
        let mut inner = self.inner.lock();
        let retain = inner.retain;
        let list = inner.groups.entry(meta.group).or_default();
        list.retain(|(m, _)| !m.same_data(&meta));
        list.push((meta, data));
        list.sort_by_key(|(m, _)| (m.index, m.term));
        let excess = list.len().saturating_sub(retain);
        list.drain(..excess);
    }
}

struct MemWriter {
    store: MemSnapshotStore,
    request: SnapshotRequest,
    expected: Option<SnapshotMeta>,
    data: Vec<u8>,
}

impl Write for MemWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SnapshotWriter for MemWriter {
    fn written(&self) -> u64 {
        self.data.len() as u64
    }

    fn finish(self: Box<Self>) -> Result<SnapshotMeta, SnapshotError> {
        let this = *self;
        let checksum = crc32c::crc32c(&this.data);
        let size = this.data.len() as u64;
        if let Some(expected) = &this.expected {
            if size != expected.size {
                return Err(SnapshotError::SizeMismatch { expected: expected.size, actual: size });
            }
            if checksum != expected.checksum {
                return Err(SnapshotError::ChecksumMismatch {
                    expected: expected.checksum,
                    actual: checksum,
                });
            }
        }
        let r = &this.request;
        let meta = SnapshotMeta {
            group: r.group,
            index: r.index,
            term: r.term,
            membership: r.membership.clone(),
            size,
            checksum,
        };
        this.store.install(meta.clone(), Bytes::from(this.data));
        Ok(meta)
    }
}

struct MemReader {
    meta: SnapshotMeta,
    data: Bytes,
}

impl SnapshotReader for MemReader {
    fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    fn read_at(&mut self, offset: u64, max_bytes: usize) -> Result<Bytes, SnapshotError> {
        let size = self.data.len() as u64;
        if offset > size {
            return Err(SnapshotError::OutOfRange { offset, size });
        }
        let start = offset as usize;
        let end = start + max_bytes.min(self.data.len() - start);
        Ok(self.data.slice(start..end))
    }
}

impl SnapshotStore for MemSnapshotStore {
    fn create(&self, request: &SnapshotRequest) -> Result<Box<dyn SnapshotWriter>, SnapshotError> {
        validate_meta(&request.meta_with(0, 0))?;
        Ok(Box::new(MemWriter {
            store: self.clone(),
            request: request.clone(),
            expected: None,
            data: Vec::new(),
        }))
    }

    fn receive(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotWriter>, SnapshotError> {
        validate_meta(meta)?;
        Ok(Box::new(MemWriter {
            store: self.clone(),
            request: SnapshotRequest::of(meta),
            expected: Some(meta.clone()),
            data: Vec::new(),
        }))
    }

    fn latest(&self, group: GroupId) -> Result<Option<SnapshotMeta>, SnapshotError> {
        let inner = self.inner.lock();
        Ok(inner.groups.get(&group).and_then(|v| v.last()).map(|(m, _)| m.clone()))
    }

    fn remove_group(&self, group: GroupId) -> Result<(), SnapshotError> {
        self.inner.lock().groups.remove(&group);
        Ok(())
    }

    fn open(&self, meta: &SnapshotMeta) -> Result<Box<dyn SnapshotReader>, SnapshotError> {
        let inner = self.inner.lock();
        let found = inner
            .groups
            .get(&meta.group)
            .and_then(|v| v.iter().find(|(m, _)| m.same_data(meta)))
            .map(|(m, data)| MemReader { meta: m.clone(), data: data.clone() });
        match found {
            Some(reader) => Ok(Box::new(reader)),
            None => Err(SnapshotError::NotFound {
                group: meta.group,
                index: meta.index,
                term: meta.term,
            }),
        }
    }
}
