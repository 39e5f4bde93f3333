//! Snapshots in the protocol: asking for one when the applied log passes a threshold and
//! compacting after it, streaming one to a follower that needs compacted entries, and
//! receiving and installing one as a follower.
//!
//! ```text
//!  leader                                     follower
//!  needs entry < first index ──► Snapshot state
//!  SnapshotRead(offset) ─► caller reads chunk
//!  on_snapshot_read ──────── InstallSnapshot{meta, offset, data, done} ──►
//!                                             same snapshot and offset? SnapshotChunk ─► caller
//!                                             writes it; on_snapshot_chunk
//!  offset = answer  ◄──────── Receiving{offset} / Installed / Stale / Failed
//! ```
//! One chunk is outstanding per follower; a chunk or answer that is lost is resent after
//! [`resend_ticks`] ticks from the offset the follower acknowledged. A follower answers a chunk it
//! cannot use with the offset it holds, so a new leader sending the same snapshot resumes there.

use super::{Raft, Role, SnapshotTaking};
use crate::error::{SnapshotError, StepError};
use crate::message::{InstallSnapshot, InstallSnapshotResponse, MessageBody, SnapshotStatus};
use crate::ready::{SnapshotChunk, SnapshotRead, SnapshotRequest};
use crate::tracker::ProgressState;
use crate::types::{Index, NodeId, SnapshotMeta, Term};

/// A transfer received by a follower.
#[derive(Clone, Debug)]
pub(super) struct Receiving {
    pub(super) meta: SnapshotMeta,
    /// Bytes written so far.
    pub(super) offset: u64,
    /// A chunk is being written by the caller.
    pub(super) writing: bool,
}

/// Ticks a snapshot transfer waits for a chunk's read or answer before resending it.
pub(super) fn resend_ticks(heartbeat_ticks: u32) -> u32 {
    (2 * heartbeat_ticks).max(2)
}

impl Raft {
    // ----- taking snapshots and compacting -----

    /// Asks for a snapshot if enough was applied since the last one. Called when a Ready is
    /// built, after its committed entries were taken (they end at `applying`).
    pub(super) fn maybe_request_snapshot(&mut self, applied_bytes: u64) -> Option<SnapshotRequest> {
        self.applied_bytes_since_snapshot += applied_bytes;
        if !self.snapshot_due() {
            return None;
        }
        let applied = self.log.applying();
        let term = self.log.term(applied)?;
        self.snapshot_taking = SnapshotTaking::Requested;
        Some(SnapshotRequest {
            group: self.group,
            index: applied,
            term,
            membership: self.membership_at(applied),
        })
    }

    /// The caller took the snapshot a Ready asked for (or failed to). On success the log prefix
    /// it covers is compacted, keeping [`log_keep_entries`](crate::Config::log_keep_entries).
    /// A failure is logged and the snapshot is asked for again after a tick, then after
    /// doubling pauses while failures go on (up to about 32 election timeouts).
    pub fn on_snapshot_taken(&mut self, result: Result<SnapshotMeta, SnapshotError>) {
        let meta = match result {
            Ok(meta) => meta,
            Err(err) => {
                let failures = self.snapshot_failures.saturating_add(1);
                self.snapshot_failures = failures;
                let wait = if failures == 1 {
                    0
                } else {
                    self.cfg.election_ticks.saturating_mul(1 << (failures - 2).min(5))
                };
                if failures <= 2 || failures.is_power_of_two() {
                    tracing::warn!(group = self.group, id = self.id, %err, failures, "taking a snapshot failed; retrying later");
                }
                self.snapshot_taking = SnapshotTaking::Failed { wait };
                return;
            }
        };
        self.snapshot_failures = 0;
        self.snapshot_taking = SnapshotTaking::Idle;
        let previous = self.snapshot.as_ref().map_or(0, |s| s.index);
        self.record_snapshot(meta);
        let Some(meta) = self.snapshot.as_ref() else { return };
        // The log is kept back to the previous snapshot: if the new one is found damaged after
        // a restart, the node restores the previous one and replays the log from there.
        let mut through = meta.index.saturating_sub(self.cfg.log_keep_entries).min(previous);
        if self.repair.applied_damage.is_some_and(|d| d <= meta.index) {
            // Entries kept for lagging followers are worthless once one of them is damaged.
            through = meta.index;
        }
        if let Some(term) = self.log.compact_prefix(through) {
            self.queue_compaction(through, term);
            self.repair_after_compaction(through);
        }
        self.debug_check();
    }

    /// Remembers `meta` as the newest local snapshot if it is newer than the one known.
    fn record_snapshot(&mut self, meta: SnapshotMeta) {
        if meta.group != self.group {
            tracing::error!(group = self.group, id = self.id, ?meta, "snapshot of another group");
            return;
        }
        // A damaged snapshot is replaced by a fresh one, at the same index if nothing was
        // applied since.
        let replaces_damaged =
            self.snapshot_damaged && self.snapshot.as_ref().is_some_and(|s| s.index == meta.index);
        if self.snapshot.as_ref().is_some_and(|s| s.index >= meta.index) && !replaces_damaged {
            return;
        }
        self.snapshot_damaged = false;
        self.applied_bytes_since_snapshot = 0;
        self.snapshot = Some(meta);
    }

    /// The snapshot store found snapshot `meta` damaged or gone (its scrubber, or a read for a
    /// follower that failed its checksum). If it is this node's newest, a fresh one is taken
    /// at once, so followers that need a snapshot get a good one (and a restart has one).
    pub fn report_snapshot_damaged(&mut self, meta: &SnapshotMeta) {
        if self.snapshot.as_ref().is_some_and(|s| s.same_data(meta)) && !self.snapshot_damaged {
            tracing::warn!(
                group = self.group,
                id = self.id,
                index = meta.index,
                "the newest snapshot is damaged; taking a fresh one"
            );
            self.snapshot_damaged = true;
        }
    }

    fn queue_compaction(&mut self, index: Index, term: Term) {
        if self.out.compact.is_none_or(|(i, _)| i < index) {
            self.out.compact = Some((index, term));
        }
    }

    // ----- leader: sending -----

    /// Starts (or continues) sending a snapshot to the follower at position `i`, which needs
    /// entries before the log's first index. Returns whether anything was asked for.
    pub(super) fn send_snapshot(&mut self, i: usize) -> bool {
        let Some(latest) = self.snapshot.clone() else {
            let Role::Leader(leader) = &self.role else { return false };
            tracing::error!(
                group = self.group,
                id = self.id,
                to = leader.progress[i].id,
                first_index = self.log.first_index(),
                "follower needs compacted entries but no snapshot is known"
            );
            return false;
        };
        let chunk = self.cfg.snapshot_chunk_bytes;
        let term = self.term;
        let Role::Leader(leader) = &mut self.role else { return false };
        let p = &mut leader.progress[i];
        if p.state != ProgressState::Snapshot {
            tracing::info!(
                group = self.group,
                id = self.id,
                to = p.id,
                index = latest.index,
                size = latest.size,
                next_index = p.next_index,
                "sending snapshot"
            );
            p.become_snapshot(latest);
        }
        let to = p.id;
        let Some(send) = p.snapshot.as_mut() else { return false };
        if send.waiting {
            return false;
        }
        send.waiting = true;
        send.idle_ticks = 0;
        let read = SnapshotRead {
            to,
            term,
            meta: send.meta.clone(),
            offset: send.offset,
            max_bytes: usize::try_from(chunk).unwrap_or(usize::MAX),
        };
        self.out.snapshot_reads.push(read);
        true
    }

    /// The answer to a [`SnapshotRead`]: the chunk goes to the follower. A read that failed
    /// (the snapshot was replaced, say) is retried after the resend timeout, with the newest
    /// snapshot if it changed.
    pub fn on_snapshot_read(
        &mut self,
        read: SnapshotRead,
        result: Result<bytes::Bytes, SnapshotError>,
    ) {
        let (group, id) = (self.group, self.id);
        let Some(p) = self.progress_mut_in_term(read.to, read.term) else { return };
        let Some(send) = p.snapshot.as_mut() else { return };
        if !send.waiting || send.offset != read.offset || !send.meta.same_data(&read.meta) {
            return; // The transfer moved on while reading.
        }
        let data = match result {
            Ok(data) => data,
            Err(err) => {
                tracing::warn!(group, id, to = read.to, %err, "reading a snapshot chunk failed");
                // The resend timeout restarts the transfer from the newest snapshot (a fresh
                // one, if this one is damaged or gone).
                send.offset = 0;
                send.idle_ticks = 0;
                if matches!(
                    err,
                    SnapshotError::ChecksumMismatch { .. }
                        | SnapshotError::Corrupt(_)
                        | SnapshotError::NotFound { .. }
                ) {
                    self.report_snapshot_damaged(&read.meta);
                }
                return;
            }
        };
        let end = read.offset + data.len() as u64;
        if end > read.meta.size || (data.is_empty() && read.meta.size > read.offset) {
            tracing::error!(
                group,
                id,
                to = read.to,
                offset = read.offset,
                len = data.len(),
                size = read.meta.size,
                "snapshot read returned a chunk that does not fit the snapshot"
            );
            return;
        }
        send.idle_ticks = 0;
        let done = end == read.meta.size;
        let req = InstallSnapshot { meta: read.meta, offset: read.offset, data, done };
        self.send(read.to, MessageBody::InstallSnapshot(req));
        self.debug_check();
    }

    /// Leader side: a follower's answer to a chunk.
    pub(super) fn handle_snapshot_response(&mut self, from: NodeId, resp: InstallSnapshotResponse) {
        let last_index = self.log.last_index();
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(i) = leader.progress.iter().position(|p| p.id == from) else { return };
        let p = &mut leader.progress[i];
        p.recent_active = true;
        match resp.status {
            SnapshotStatus::Installed => {
                // The follower's log now starts right after the snapshot.
                if resp.meta.index > last_index {
                    return;
                }
                p.maybe_update(resp.meta.index);
                p.become_probe();
                leader.replicate_pending = true;
                self.maybe_commit();
                if let Some(i) = self.progress_position(from) {
                    self.maybe_send_append(i, true);
                }
            }
            SnapshotStatus::Stale { commit } => {
                // Committed entries match every leader's log (Leader Completeness), and the
                // follower answered only once they were durable.
                p.maybe_update(commit.min(last_index));
                if p.state == ProgressState::Snapshot {
                    p.become_probe();
                }
                leader.replicate_pending = true;
                self.maybe_commit();
                if let Some(i) = self.progress_position(from) {
                    self.maybe_send_append(i, true);
                }
            }
            SnapshotStatus::Receiving { offset } => {
                let Some(send) = p.snapshot.as_mut() else { return };
                if !send.meta.same_data(&resp.meta) || offset > send.meta.size {
                    return; // About a snapshot this transfer no longer sends.
                }
                send.offset = offset;
                send.waiting = false;
                send.idle_ticks = 0;
                self.send_snapshot(i);
            }
            SnapshotStatus::Failed => {
                let Some(send) = p.snapshot.as_mut() else { return };
                if !send.meta.same_data(&resp.meta) {
                    return;
                }
                tracing::warn!(
                    group = self.group,
                    id = self.id,
                    from,
                    "follower failed to install snapshot; restarting it"
                );
                // Start over with the newest snapshot.
                p.become_probe();
                self.send_snapshot(i);
            }
        }
    }

    /// Leader tick: transfers whose chunk or answer went missing are resent.
    pub(super) fn tick_snapshot_sends(&mut self) {
        let resend = resend_ticks(self.cfg.heartbeat_ticks);
        let Role::Leader(leader) = &mut self.role else { return };
        let mut stalled = Vec::new();
        for (i, p) in leader.progress.iter_mut().enumerate() {
            if let Some(send) = p.snapshot.as_mut() {
                send.idle_ticks += 1;
                if send.waiting && send.idle_ticks >= resend {
                    send.waiting = false;
                    stalled.push(i);
                }
            }
        }
        for i in stalled {
            if let Role::Leader(leader) = &mut self.role {
                // A newer snapshot replaces an older transfer that stalled.
                let p = &mut leader.progress[i];
                let newer = match (&p.snapshot, &self.snapshot) {
                    (Some(send), Some(latest)) => latest.index > send.meta.index,
                    _ => false,
                };
                if newer {
                    p.become_probe();
                }
            }
            self.send_snapshot(i);
        }
    }

    // ----- follower: receiving -----

    /// Follower side of InstallSnapshot.
    pub(super) fn handle_install_snapshot(
        &mut self,
        from: NodeId,
        req: InstallSnapshot,
    ) -> Result<(), StepError> {
        if !self.follow(from, "install-snapshot") {
            return Ok(());
        }
        let commit = self.log.committed();
        if req.meta.index <= commit {
            // Stale: everything it holds is already committed here. The answer promises those
            // entries durable, so it waits for pending writes.
            if self.receiving.as_ref().is_some_and(|r| r.meta.index <= commit) {
                self.receiving = None;
            }
            let status = SnapshotStatus::Stale { commit };
            let body = MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
                meta: req.meta,
                status,
            });
            self.send_after_persist(from, body);
            return Ok(());
        }
        let current = self.receiving.as_ref().filter(|r| r.meta.same_data(&req.meta));
        let reply_offset = match current {
            Some(r) if r.writing => return Ok(()), // Its answer follows the write in progress.
            Some(r) if r.offset == req.offset => None,
            Some(r) => Some(r.offset),
            None if req.offset == 0 => None,
            None => Some(0),
        };
        if let Some(offset) = reply_offset {
            self.reply_snapshot(from, req.meta, SnapshotStatus::Receiving { offset });
            return Ok(());
        }
        if current.is_none() {
            tracing::info!(
                group = self.group,
                id = self.id,
                from,
                index = req.meta.index,
                term = req.meta.term,
                size = req.meta.size,
                "receiving snapshot"
            );
        }
        self.receiving =
            Some(Receiving { meta: req.meta.clone(), offset: req.offset, writing: true });
        self.out.snapshot_chunks.push(SnapshotChunk {
            from,
            meta: req.meta,
            offset: req.offset,
            data: req.data,
            done: req.done,
        });
        Ok(())
    }

    /// The caller wrote a chunk from [`Ready::snapshot_chunks`](crate::Ready::snapshot_chunks)
    /// to the snapshot store (for the last chunk: verified and installed it), or failed to.
    pub fn on_snapshot_chunk(&mut self, chunk: SnapshotChunk, result: Result<(), SnapshotError>) {
        let matches = self.receiving.as_ref().is_some_and(|r| {
            r.writing && r.offset == chunk.offset && r.meta.same_data(&chunk.meta)
        });
        if !matches {
            // Superseded by a newer transfer, or a crash of the transfer's state. A finished
            // snapshot the store installed anyway is harmless: only `snapshot` meta counts.
            return;
        }
        let to = self.leader().unwrap_or(chunk.from);
        if let Err(err) = result {
            tracing::warn!(group = self.group, id = self.id, %err, index = chunk.meta.index, "snapshot chunk failed");
            self.receiving = None;
            self.reply_snapshot(to, chunk.meta, SnapshotStatus::Failed);
            return;
        }
        let end = chunk.offset + chunk.data.len() as u64;
        if !chunk.done {
            if let Some(r) = self.receiving.as_mut() {
                r.offset = end;
                r.writing = false;
            }
            self.reply_snapshot(to, chunk.meta, SnapshotStatus::Receiving { offset: end });
            return;
        }
        self.receiving = None;
        let meta = chunk.meta;
        if meta.index > self.log.committed() {
            self.install_snapshot(meta.clone());
            self.reply_snapshot(to, meta, SnapshotStatus::Installed);
        } else {
            // Entries committed meanwhile overtook the snapshot; the log already has them.
            let commit = self.log.committed();
            self.record_snapshot(meta.clone());
            let body = MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
                meta,
                status: SnapshotStatus::Stale { commit },
            });
            self.send_after_persist(to, body);
        }
        self.debug_check();
    }

    /// Moves this node onto the installed snapshot `meta`.
    fn install_snapshot(&mut self, meta: SnapshotMeta) {
        tracing::info!(
            group = self.group,
            id = self.id,
            index = meta.index,
            term = meta.term,
            "installed snapshot"
        );
        self.log.install_snapshot(meta.index, meta.term);
        self.out.fetched_apply.clear();
        self.apply_fetch = super::ApplyFetch::Idle;
        self.membership_after_snapshot(meta.index, meta.membership.clone());
        self.queue_compaction(meta.index, meta.term);
        self.repair_after_compaction(meta.index);
        if let Some(d) = &mut self.repair.damage {
            d.from = d.from.max(meta.index + 1);
        }
        self.out.restore_snapshot = Some(meta.clone());
        self.applied_bytes_since_snapshot = 0;
        self.snapshot = Some(meta);
    }

    fn reply_snapshot(&mut self, to: NodeId, meta: SnapshotMeta, status: SnapshotStatus) {
        let body = MessageBody::InstallSnapshotResponse(InstallSnapshotResponse { meta, status });
        self.send(to, body);
    }

    /// The newest snapshot this node holds.
    pub fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    /// Whether a received snapshot transfer is in progress, and how far it got.
    pub fn receiving_snapshot(&self) -> Option<(Index, u64)> {
        self.receiving.as_ref().map(|r| (r.meta.index, r.offset))
    }
}
