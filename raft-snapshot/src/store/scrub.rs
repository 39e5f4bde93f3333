//! Background scrubbing: every complete snapshot is read back and checked (each frame's CRC and
//! the whole data's checksum) at a configured rate, so damage is found before the snapshot is
//! needed for a restore or a follower. A damaged snapshot is set aside (`*.damaged`) and left
//! out of the index, counted, and reported to the node through
//! [`SnapshotStore::take_damage_found`](raft_core::SnapshotStore::take_damage_found), which takes
//! a fresh one.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use raft_core::{SnapshotError, SnapshotMeta};

use super::{read_frame, read_layout, set_aside, Shared};
use crate::format;

/// How often the scrubber wakes; each round reads a tenth of the per-second budget.
const ROUND: Duration = Duration::from_millis(100);

/// Where the scrubber is: the snapshot it checks, the next frame, the checksum so far, and the
/// file it started on (a snapshot retaken under the same name is a new file: started over).
#[derive(Default)]
struct Cursor {
    current: Option<(SnapshotMeta, u64)>,
    frame: u64,
    crc: u32,
}

/// The scrubber thread's body: runs until the store is dropped.
pub(super) fn run(store: Weak<Shared>, bytes_per_sec: u64) {
    let budget = (bytes_per_sec / 10).max(1);
    let mut cursor = Cursor::default();
    loop {
        std::thread::sleep(ROUND);
        let Some(shared) = store.upgrade() else { return };
        let mut left = budget;
        while left > 0 {
            match step(&shared, &mut cursor, left) {
                Some(read) => left = left.saturating_sub(read.max(1)),
                None => break, // Nothing to scrub.
            }
        }
    }
}

/// Checks up to `budget` bytes of the snapshot under the cursor (picking the next one if
/// none); returns the bytes read, or `None` when the store holds no snapshot.
fn step(shared: &Shared, cursor: &mut Cursor, budget: u64) -> Option<u64> {
    let (meta, ino) = match cursor.current.clone() {
        Some(current) => current,
        None => {
            let meta = next_after(shared, None)?;
            (meta, 0)
        }
    };
    let path = shared.dir.join(format::file_name(&meta));
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(_) => {
            // Removed by retention (or replaced) meanwhile: on to the next.
            advance(shared, cursor, &meta);
            return Some(0);
        }
    };
    let file_ino = file.metadata().map(|m| m.ino()).unwrap_or(0);
    if cursor.current.is_none() || file_ino != ino {
        *cursor = Cursor { current: Some((meta.clone(), file_ino)), frame: 0, crc: 0 };
    }
    let checked = (|| -> Result<(u64, bool), SnapshotError> {
        let (found, chunk) = read_layout(&file, &path)?;
        let frames = format::frame_count(found.size, chunk);
        let mut read = 0u64;
        let mut buf = Vec::new();
        while cursor.frame < frames && read < budget {
            read_frame(&file, &path, cursor.frame, chunk, found.size, &mut buf)?;
            cursor.crc = crc32c::crc32c_append(cursor.crc, &buf);
            cursor.frame += 1;
            read += buf.len() as u64 + format::FRAME_HEADER_LEN;
        }
        if cursor.frame < frames {
            return Ok((read, false));
        }
        if cursor.crc != found.checksum {
            return Err(SnapshotError::ChecksumMismatch {
                expected: found.checksum,
                actual: cursor.crc,
            });
        }
        Ok((read, true))
    })();
    match checked {
        Ok((read, done)) => {
            shared.scrub.bytes.fetch_add(read, Ordering::Relaxed);
            if done {
                advance(shared, cursor, &meta);
            }
            Some(read)
        }
        Err(SnapshotError::File { .. }) => {
            advance(shared, cursor, &meta); // An I/O error, not damage: next time round.
            Some(0)
        }
        Err(err) => {
            found_damaged(shared, &meta, &err);
            advance(shared, cursor, &meta);
            Some(0)
        }
    }
}

/// Moves the cursor past `meta`; a pass ends when it wraps around.
fn advance(shared: &Shared, cursor: &mut Cursor, meta: &SnapshotMeta) {
    *cursor = Cursor::default();
    match next_after(shared, Some(meta)) {
        Some(next) => cursor.current = Some((next, 0)),
        None => {
            shared.scrub.passes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The snapshot after `meta` in (group, index, term) order, or the first when `meta` is
/// `None`.
fn next_after(shared: &Shared, meta: Option<&SnapshotMeta>) -> Option<SnapshotMeta> {
    let key = |m: &SnapshotMeta| (m.group, m.index, m.term);
    let index = shared.index.lock();
    let all = index.values().flatten();
    match meta {
        None => all.min_by_key(|m| key(m)).cloned(),
        Some(after) => all.filter(|m| key(m) > key(after)).min_by_key(|m| key(m)).cloned(),
    }
}

/// Sets a damaged snapshot aside, leaves it out of the index and tells the node.
fn found_damaged(shared: &Shared, meta: &SnapshotMeta, err: &SnapshotError) {
    let path = shared.dir.join(format::file_name(meta));
    if let Some(list) = shared.index.lock().get_mut(&meta.group) {
        list.retain(|m| !m.same_data(meta));
    }
    match set_aside(&path) {
        Ok(to) => tracing::error!(
            group = meta.group,
            index = meta.index,
            path = %to.display(),
            %err,
            "scrubbing found a damaged snapshot; set aside"
        ),
        Err(e) => {
            tracing::error!(group = meta.group, index = meta.index, %err, %e, "scrubbing found a damaged snapshot; could not set it aside")
        }
    }
    shared.scrub.found.lock().insert(meta.group, meta.clone());
    // Counted last: whoever sees the count sees the rest done.
    shared.scrub.damaged.fetch_add(1, Ordering::Release);
}
