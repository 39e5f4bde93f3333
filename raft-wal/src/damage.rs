//! The record of damage not yet repaired: the `DAMAGE` file beside the segments.
//!
//! When the WAL is opened over damage ([`crate::salvage`]), the groups that lost entries are
//! listed here with what each lost ([`LogDamage`]); the node reads it through
//! [`LogStore::damage`](raft_core::LogStore::damage) and repairs from its peers before it votes
//! again. The file outlives restarts, so a crash in the middle of a repair does not forget the
//! damage; a group leaves it once the node says it is repaired (after the entries it got back are
//! durable).
//!
//! Layout: `RKDAMAGE` magic, a `u32` count, then per group `group u64, from u64, has_last u8,
//! last_index u64, last_term u64`, then a CRC32C of everything before it (little endian). It is
//! replaced atomically (a temporary file, synced, renamed, the directory synced). A file that
//! does not check out is itself damage: every group of the WAL is then taken as damaged with an
//! unknown end, which is safe (those nodes repair before voting).

use std::collections::BTreeMap;
use std::path::Path;

use raft_core::{GroupId, LogDamage};

use crate::error::WalError;
use crate::segment::sync_dir;

/// The file's name in the WAL directory.
pub(crate) const FILE: &str = "DAMAGE";
const MAGIC: &[u8; 8] = b"RKDAMAGE";
const ROW: usize = 8 + 8 + 1 + 8 + 8;

/// What the `DAMAGE` file says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Loaded {
    /// No file: nothing is being repaired.
    None,
    /// The groups being repaired.
    Groups(BTreeMap<GroupId, LogDamage>),
    /// The file is there but unreadable.
    Unreadable(String),
}

/// Reads the `DAMAGE` file of `dir`.
pub(crate) fn load(dir: &Path) -> Result<Loaded, WalError> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::None),
        Err(e) => return Err(WalError::io(&path, e)),
    };
    Ok(match decode(&bytes) {
        Ok(groups) => Loaded::Groups(groups),
        Err(why) => Loaded::Unreadable(why),
    })
}

/// The body of a small file framed as `magic, body..., CRC32C of everything before it`, once
/// its magic, length (at least `head` bytes before the CRC) and checksum check out; `what`
/// names the file in the error. Shared with the copy of the votes (`crate::votes`).
pub(crate) fn checked_body<'a>(
    b: &'a [u8],
    magic: &[u8; 8],
    head: usize,
    what: &str,
) -> Result<&'a [u8], String> {
    if b.len() < head + 4 || &b[..magic.len()] != magic {
        return Err(format!("not a {what} (bad magic or too short)"));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(body)
}

/// The little-endian `u64` at `at` of `body` (the caller checked the length).
pub(crate) fn u64_at(body: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&body[at..at + 8]);
    u64::from_le_bytes(raw)
}

fn decode(b: &[u8]) -> Result<BTreeMap<GroupId, LogDamage>, String> {
    let body = checked_body(b, MAGIC, MAGIC.len() + 4, "damage record")?;
    let u64_at = |at: usize| u64_at(body, at);
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&body[8..12]);
    let count = u32::from_le_bytes(raw) as usize;
    if body.len() != 12 + count * ROW {
        return Err(format!("{count} rows do not fit {} bytes", body.len()));
    }
    let mut out = BTreeMap::new();
    for i in 0..count {
        let at = 12 + i * ROW;
        let group = u64_at(at);
        let from = u64_at(at + 8);
        let last = match body[at + 16] {
            0 => None,
            1 => Some((u64_at(at + 17), u64_at(at + 25))),
            other => return Err(format!("row {i}: flag {other}")),
        };
        out.insert(group, LogDamage::new(from, last));
    }
    Ok(out)
}

fn encode(groups: &BTreeMap<GroupId, LogDamage>) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + groups.len() * ROW);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&(groups.len() as u32).to_le_bytes());
    for (&group, d) in groups {
        b.extend_from_slice(&group.to_le_bytes());
        b.extend_from_slice(&d.from.to_le_bytes());
        let (flag, (index, term)) = match d.last {
            Some(last) => (1u8, last),
            None => (0u8, (0, 0)),
        };
        b.push(flag);
        b.extend_from_slice(&index.to_le_bytes());
        b.extend_from_slice(&term.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Replaces the `DAMAGE` file of `dir` with `groups` (removes it when there are none), durably.
pub(crate) fn store(dir: &Path, groups: &BTreeMap<GroupId, LogDamage>) -> Result<(), WalError> {
    let path = dir.join(FILE);
    if groups.is_empty() {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(WalError::io(&path, e)),
        }
        return sync_dir(dir);
    }
    let tmp = dir.join(format!("{FILE}.tmp"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| WalError::io(&tmp, e))?;
        f.write_all(&encode(groups)).map_err(|e| WalError::io(&tmp, e))?;
        f.sync_all().map_err(|e| WalError::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| WalError::io(&path, e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_flipped_bytes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::None);
        let groups: BTreeMap<GroupId, LogDamage> =
            [(1, LogDamage::new(5, Some((9, 2)))), (7, LogDamage::new(1, None))]
                .into_iter()
                .collect();
        store(dir.path(), &groups).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Groups(groups.clone()));
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(load(dir.path()).unwrap(), Loaded::Unreadable(_)));
        store(dir.path(), &BTreeMap::new()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::None);
    }
}
