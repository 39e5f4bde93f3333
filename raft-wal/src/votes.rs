//! A second copy of every group's term and vote, beside the segments: the `VOTES-A` and
//! `VOTES-B` files.
//!
//! A node must never vote twice in a term, so losing its vote to damage is the one loss it
//! cannot repair from its peers. The log's hard-state records are the first copy; this is the
//! second, written by the sync that makes a changed term or vote durable, before that sync
//! returns (so before any vote or acknowledgement that depends on it leaves the node). Salvage
//! takes term and vote from here when the records that held them are lost; a normal open
//! compares it with the log and trusts whichever is newer (a newer copy here means the log's
//! tail lost records a sync had covered: the group is then reported damaged too).
//!
//! The two files are written in turn, in place (one `pwrite` and one `fdatasync`, no rename):
//! a write torn by a crash spoils only the file being written, and the other still holds the
//! previous image, which is all a crash before the sync returned may keep. Layout of each:
//! `RKVOTES1` magic, a `u64` generation, a `u32` count, then per group `group u64, term u64,
//! vote u64` (0: none), then a CRC32C of everything before it (little endian). The valid file
//! with the higher generation wins.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use raft_core::{GroupId, NodeId, Term};

use crate::error::WalError;
use crate::segment::sync_dir;

/// The two files' names.
pub(crate) const FILES: [&str; 2] = ["VOTES-A", "VOTES-B"];
const MAGIC: &[u8; 8] = b"RKVOTES1";
const ROW: usize = 24;

/// Term and vote per group.
pub(crate) type Votes = BTreeMap<GroupId, (Term, Option<NodeId>)>;

/// The newest valid image: its generation and rows (generation 0 and nothing when neither file
/// holds one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Loaded {
    pub(crate) generation: u64,
    pub(crate) votes: Votes,
    /// Why a file that exists could not be used, if one could not.
    pub(crate) unreadable: Vec<String>,
}

/// The two files, open for writing in turn.
#[derive(Debug)]
pub(crate) struct VoteFiles {
    files: [File; 2],
    generation: u64,
}

/// Reads both files of `dir` and keeps the newest valid image.
pub(crate) fn load(dir: &Path) -> Result<Loaded, WalError> {
    let mut best = Loaded::default();
    for name in FILES {
        let path = dir.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(WalError::io(&path, e)),
        };
        if bytes.is_empty() {
            continue; // Created, never written.
        }
        match decode(&bytes) {
            Ok((generation, votes)) if generation > best.generation => {
                best.generation = generation;
                best.votes = votes;
            }
            Ok(_) => {}
            Err(why) => best.unreadable.push(format!("{name}: {why}")),
        }
    }
    Ok(best)
}

impl VoteFiles {
    /// Opens (creating, durably, if missing) the two files of `dir`; the next image written gets
    /// a generation above `generation`.
    pub(crate) fn open(dir: &Path, generation: u64) -> Result<VoteFiles, WalError> {
        let mut created = false;
        let mut open = |name: &str| {
            let path = dir.join(name);
            created |= !path.exists();
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| WalError::io(&path, e))
        };
        let files = [open(FILES[0])?, open(FILES[1])?];
        if created {
            sync_dir(dir)?;
        }
        Ok(VoteFiles { files, generation })
    }

    /// Writes `votes` over the older file and makes it durable.
    pub(crate) fn write(&mut self, dir: &Path, votes: &Votes) -> Result<(), WalError> {
        let generation = self.generation + 1;
        let slot = (generation % 2) as usize;
        let bytes = encode(generation, votes);
        let file = &self.files[slot];
        let path = dir.join(FILES[slot]);
        file.write_all_at(&bytes, 0).map_err(|e| WalError::io(&path, e))?;
        file.set_len(bytes.len() as u64).map_err(|e| WalError::io(&path, e))?;
        file.sync_data().map_err(|e| WalError::io(&path, e))?;
        self.generation = generation;
        Ok(())
    }
}

fn encode(generation: u64, votes: &Votes) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + votes.len() * ROW);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(&(votes.len() as u32).to_le_bytes());
    for (&group, &(term, vote)) in votes {
        b.extend_from_slice(&group.to_le_bytes());
        b.extend_from_slice(&term.to_le_bytes());
        b.extend_from_slice(&vote.unwrap_or(0).to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Result<(u64, Votes), String> {
    let head = MAGIC.len() + 8 + 4;
    let body = crate::damage::checked_body(b, MAGIC, head, "votes file")?;
    let u64_at = |at: usize| crate::damage::u64_at(body, at);
    let generation = u64_at(8);
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&body[16..20]);
    let count = u32::from_le_bytes(raw) as usize;
    if body.len() != head + count.saturating_mul(ROW) {
        return Err(format!("{count} rows do not fit {} bytes", body.len()));
    }
    let mut votes = Votes::new();
    for i in 0..count {
        let at = head + i * ROW;
        let vote = u64_at(at + 16);
        votes.insert(u64_at(at), (u64_at(at + 8), (vote != 0).then_some(vote)));
    }
    Ok((generation, votes))
}

/// Whether `(term, vote)` from this copy is newer than `than` (a later term, or the same term
/// with a vote where `than` has none).
pub(crate) fn newer(copy: (Term, Option<NodeId>), than: (Term, Option<NodeId>)) -> bool {
    copy.0 > than.0 || (copy.0 == than.0 && copy.1.is_some() && than.1.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_valid_image_wins_and_a_torn_one_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::default());
        let mut files = VoteFiles::open(dir.path(), 0).unwrap();
        let first: Votes = [(1, (3, Some(2))), (9, (1, None))].into_iter().collect();
        files.write(dir.path(), &first).unwrap();
        let second: Votes = [(1, (4, Some(1))), (9, (1, None))].into_iter().collect();
        files.write(dir.path(), &second).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!((loaded.generation, &loaded.votes), (2, &second));
        // The newer file torn (a crash mid-write): the older image is what remains.
        let newer_path = dir.path().join(FILES[0]);
        let mut bytes = std::fs::read(&newer_path).unwrap();
        bytes[30] ^= 0x08;
        std::fs::write(&newer_path, &bytes).unwrap();
        let loaded = load(dir.path()).unwrap();
        assert_eq!((loaded.generation, &loaded.votes), (1, &first));
        assert_eq!(loaded.unreadable.len(), 1);
        // Writing on from the loaded generation overwrites the torn file first.
        let mut files = VoteFiles::open(dir.path(), loaded.generation).unwrap();
        files.write(dir.path(), &second).unwrap();
        assert_eq!(load(dir.path()).unwrap().votes, second);
        assert!(newer((4, None), (3, Some(1))));
        assert!(newer((3, Some(1)), (3, None)));
        assert!(!newer((3, None), (3, Some(1))));
        assert!(!newer((3, Some(2)), (3, Some(1))));
    }
}
