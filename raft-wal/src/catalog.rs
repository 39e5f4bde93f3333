//! A durable catalogue of the groups a process hosts: which groups exist, the voters each was
//! created with (its first configuration, which a node of the group needs at every start until
//! the group's log or a snapshot holds one), an application's own bytes per group, and which
//! groups were destroyed (their ids are never used again, so a late message of a destroyed
//! group can never reach a new one).
//!
//! It is a small journal file, `CATALOG`, in a directory of its own choosing (the WAL's, say):
//! one record per creation or destruction, each with its length and a CRC32C, appended and
//! fsynced before the call returns. At open the records are replayed; a record cut short by a
//! crash at the end of the file is dropped (its call never returned), and damage anywhere else
//! is an error ([`CatalogError::Corrupt`]) rather than a silently shorter list. When most
//! records are history the journal is rewritten (a new file renamed over the old one).
//!
//! A group's life with a runtime:
//! 1. [`Catalog::create`] (durable), then start its node on every member;
//! 2. [`Catalog::destroy`] (durable), then [`Router::destroy`](raft_core::Router::destroy) and
//!    [`Node::destroy`](raft_core::node::Node::destroy) (which removes its log and snapshots);
//!    a crash in between finds the group destroyed, and its leftovers are removed again;
//! 3. at a restart, start a node for every group of [`Catalog::groups`] with its voters, and
//!    mark every id of [`Catalog::destroyed`] destroyed in the router.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use raft_core::{GroupId, NodeId};

/// The journal's file name.
pub const CATALOG_FILE: &str = "CATALOG";

const KIND_CREATE: u8 = 1;
const KIND_DESTROY: u8 = 2;
/// `len u32, crc u32`, then the body (`kind u8, group u64, ...`).
const HEADER: usize = 8;
/// The largest record body accepted (a group's voters and its application bytes).
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// A group in the catalogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRecord {
    /// The group.
    pub group: GroupId,
    /// The voters it was created with (its first configuration).
    pub voters: Vec<NodeId>,
    /// The application's own bytes (a key range, a tenant...).
    pub data: Vec<u8>,
}

/// Why the catalogue refused a call or could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// Reading or writing the journal failed. Nothing the failed call asked for was done.
    #[error("catalogue {path}: {source}")]
    Io {
        /// The journal.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The journal is damaged before its end: the list of groups cannot be trusted.
    #[error("catalogue {path} is damaged at byte {offset}: {why}")]
    Corrupt {
        /// The journal.
        path: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong with it.
        why: String,
    },
    /// The group exists already.
    #[error("group {0} exists already")]
    Exists(GroupId),
    /// The group was destroyed; its id is not used again.
    #[error("group {0} was destroyed; its id is not used again")]
    Destroyed(GroupId),
    /// No such group.
    #[error("group {0} is not in the catalogue")]
    Unknown(GroupId),
    /// A group needs at least one voter, and its record must fit [`MAX_RECORD_BYTES`].
    #[error("invalid group record: {0}")]
    Invalid(String),
}

/// The catalogue: see the [module docs](self).
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    dir: PathBuf,
    file: File,
    len: u64,
    groups: BTreeMap<GroupId, GroupRecord>,
    destroyed: BTreeSet<GroupId>,
    /// Records in the journal (live or history).
    records: usize,
}

impl Catalog {
    /// Opens the catalogue in `dir` (created, empty, if it has none).
    ///
    /// # Errors
    /// [`CatalogError::Io`], or [`CatalogError::Corrupt`] for damage before the journal's end.
    pub fn open(dir: &Path) -> Result<Catalog, CatalogError> {
        let path = dir.join(CATALOG_FILE);
        let io = |source| CatalogError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let existed = path.exists();
        let mut file =
            OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io)?;
        if !existed {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut catalog = Catalog {
            path: path.clone(),
            dir: dir.to_path_buf(),
            file,
            len: 0,
            groups: BTreeMap::new(),
            destroyed: BTreeSet::new(),
            records: 0,
        };
        let mut at = 0usize;
        while at < bytes.len() {
            match record_at(&bytes, at) {
                Ok((body, end)) => {
                    catalog.replay(body).map_err(|why| CatalogError::Corrupt {
                        path: path.clone(),
                        offset: at as u64,
                        why,
                    })?;
                    catalog.records += 1;
                    at = end;
                }
                Err(Bad::Torn) => {
                    // The record a crash cut short: its call never returned. Cut it off so the
                    // next record follows the last good one.
                    tracing::warn!(path = %path.display(), offset = at, "catalogue: dropping a torn last record");
                    catalog.file.set_len(at as u64).map_err(io)?;
                    catalog.file.sync_data().map_err(io)?;
                    break;
                }
                Err(Bad::Damaged(why)) => {
                    return Err(CatalogError::Corrupt { path, offset: at as u64, why })
                }
            }
        }
        catalog.len = at as u64;
        Ok(catalog)
    }

    /// Records a new group with its first voters and the application's bytes; durable when it
    /// returns.
    ///
    /// # Errors
    /// [`CatalogError::Exists`], [`CatalogError::Destroyed`], [`CatalogError::Invalid`] (no
    /// voter, too large), [`CatalogError::Io`].
    pub fn create(
        &mut self,
        group: GroupId,
        voters: &[NodeId],
        data: &[u8],
    ) -> Result<(), CatalogError> {
        self.check_new(group)?;
        if voters.is_empty() || voters.contains(&0) {
            return Err(CatalogError::Invalid(format!("group {group}: voters {voters:?}")));
        }
        let body = create_body(group, voters, data);
        if body.len() > MAX_RECORD_BYTES {
            return Err(CatalogError::Invalid(format!(
                "group {group}: a record of {} bytes (at most {MAX_RECORD_BYTES})",
                body.len()
            )));
        }
        self.append(&body)?;
        self.groups
            .insert(group, GroupRecord { group, voters: voters.to_vec(), data: data.to_vec() });
        self.compact_if_mostly_history()
    }

    /// Records that a group is destroyed (its id is never used again); durable when it returns.
    ///
    /// # Errors
    /// [`CatalogError::Unknown`], [`CatalogError::Destroyed`] (already), [`CatalogError::Io`].
    pub fn destroy(&mut self, group: GroupId) -> Result<(), CatalogError> {
        if self.destroyed.contains(&group) {
            return Err(CatalogError::Destroyed(group));
        }
        if !self.groups.contains_key(&group) {
            return Err(CatalogError::Unknown(group));
        }
        self.append(&destroy_body(group))?;
        self.groups.remove(&group);
        self.destroyed.insert(group);
        self.compact_if_mostly_history()
    }

    /// The live groups, by id.
    pub fn groups(&self) -> impl Iterator<Item = &GroupRecord> {
        self.groups.values()
    }

    /// A live group.
    pub fn get(&self, group: GroupId) -> Option<&GroupRecord> {
        self.groups.get(&group)
    }

    /// The destroyed groups' ids.
    pub fn destroyed(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.destroyed.iter().copied()
    }

    /// Whether `group` was destroyed.
    pub fn is_destroyed(&self, group: GroupId) -> bool {
        self.destroyed.contains(&group)
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_new(&self, group: GroupId) -> Result<(), CatalogError> {
        if self.destroyed.contains(&group) {
            Err(CatalogError::Destroyed(group))
        } else if self.groups.contains_key(&group) {
            Err(CatalogError::Exists(group))
        } else {
            Ok(())
        }
    }

    /// Appends one record and syncs; on failure the journal is cut back to where it was, so a
    /// half-written record never sits before the next one.
    fn append(&mut self, body: &[u8]) -> Result<(), CatalogError> {
        let mut record = Vec::with_capacity(HEADER + body.len());
        frame(&mut record, body);
        let written = self.file.write_all(&record).and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            let _ = self.file.set_len(self.len);
            return Err(CatalogError::Io { path: self.path.clone(), source });
        }
        self.len += record.len() as u64;
        self.records += 1;
        Ok(())
    }

    fn replay(&mut self, body: &[u8]) -> Result<(), String> {
        let group = u64_at(body, 1).ok_or("record too short")?;
        match body[0] {
            KIND_CREATE => {
                let n = u32_at(body, 9).ok_or("record too short")? as usize;
                let mut at = 13usize;
                let mut voters = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    voters.push(u64_at(body, at).ok_or("voters cut short")?);
                    at += 8;
                }
                let len = u32_at(body, at).ok_or("data length missing")? as usize;
                let data = body.get(at + 4..at + 4 + len).ok_or("data cut short")?.to_vec();
                if self.groups.contains_key(&group) || self.destroyed.contains(&group) {
                    return Err(format!("group {group} created twice"));
                }
                self.groups.insert(group, GroupRecord { group, voters, data });
            }
            KIND_DESTROY => {
                // (A compacted journal keeps a destroyed group's destruction alone.)
                self.groups.remove(&group);
                if !self.destroyed.insert(group) {
                    return Err(format!("group {group} destroyed twice"));
                }
            }
            other => return Err(format!("unknown record kind {other}")),
        }
        Ok(())
    }

    /// Rewrites the journal once history outweighs the live records by half (destructions are
    /// kept: they keep ids from being reused; the creation of a destroyed group is dropped).
    fn compact_if_mostly_history(&mut self) -> Result<(), CatalogError> {
        let live = self.groups.len() + self.destroyed.len();
        if self.records < live * 3 / 2 + 32 {
            return Ok(());
        }
        let tmp = self.dir.join(format!("{CATALOG_FILE}.tmp"));
        let io = |source| CatalogError::Io { path: tmp.clone(), source };
        let mut bytes = Vec::new();
        for g in self.groups.values() {
            frame(&mut bytes, &create_body(g.group, &g.voters, &g.data));
        }
        for &g in &self.destroyed {
            frame(&mut bytes, &destroy_body(g));
        }
        let mut file = File::create(&tmp).map_err(io)?;
        file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)?;
        self.file = OpenOptions::new().read(true).append(true).open(&self.path).map_err(io)?;
        self.len = bytes.len() as u64;
        self.records = live;
        Ok(())
    }
}

fn create_body(group: GroupId, voters: &[NodeId], data: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(17 + voters.len() * 8 + data.len());
    body.push(KIND_CREATE);
    body.extend_from_slice(&group.to_le_bytes());
    body.extend_from_slice(&(voters.len() as u32).to_le_bytes());
    for v in voters {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(&(data.len() as u32).to_le_bytes());
    body.extend_from_slice(data);
    body
}

fn destroy_body(group: GroupId) -> Vec<u8> {
    let mut body = vec![KIND_DESTROY];
    body.extend_from_slice(&group.to_le_bytes());
    body
}

/// Appends a record: `len u32, crc u32, body`.
fn frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// Why a record cannot be read.
enum Bad {
    /// It runs past the end of the file: a crash cut it short.
    Torn,
    /// It is whole but wrong.
    Damaged(String),
}

/// The body of the record at `at` and where the next one starts.
fn record_at(bytes: &[u8], at: usize) -> Result<(&[u8], usize), Bad> {
    let (Some(len), Some(crc)) = (u32_at(bytes, at), u32_at(bytes, at + 4)) else {
        return Err(Bad::Torn);
    };
    let len = len as usize;
    if !(9..=MAX_RECORD_BYTES).contains(&len) {
        // A length no record has: at the very end a torn header, otherwise damage.
        return if bytes.len() - at < HEADER + 9 {
            Err(Bad::Torn)
        } else {
            Err(Bad::Damaged(format!("record length {len}")))
        };
    }
    let end = at + HEADER + len;
    let Some(body) = bytes.get(at + HEADER..end) else { return Err(Bad::Torn) };
    if crc32c::crc32c(body) != crc {
        return if end == bytes.len() {
            Err(Bad::Torn) // The last record, half on disk.
        } else {
            Err(Bad::Damaged("checksum mismatch".into()))
        };
    }
    Ok((body, end))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_destructions_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut c = Catalog::open(dir.path()).unwrap();
            c.create(1, &[1, 2, 3], b"range a").unwrap();
            c.create(2, &[1, 2, 3], b"").unwrap();
            c.create(3, &[2, 3, 4], b"range c").unwrap();
            c.destroy(2).unwrap();
            assert!(matches!(c.create(1, &[1], b""), Err(CatalogError::Exists(1))));
            assert!(matches!(c.create(2, &[1], b""), Err(CatalogError::Destroyed(2))));
            assert!(matches!(c.destroy(2), Err(CatalogError::Destroyed(2))));
            assert!(matches!(c.destroy(9), Err(CatalogError::Unknown(9))));
            assert!(matches!(c.create(5, &[], b""), Err(CatalogError::Invalid(_))));
        }
        let c = Catalog::open(dir.path()).unwrap();
        let groups: Vec<_> = c.groups().cloned().collect();
        assert_eq!(
            groups,
            vec![
                GroupRecord { group: 1, voters: vec![1, 2, 3], data: b"range a".to_vec() },
                GroupRecord { group: 3, voters: vec![2, 3, 4], data: b"range c".to_vec() },
            ]
        );
        assert_eq!(c.destroyed().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_damage_before_the_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut c = Catalog::open(dir.path()).unwrap();
            c.create(1, &[1], b"x").unwrap();
            c.create(2, &[1], b"y").unwrap();
        }
        let path = dir.path().join(CATALOG_FILE);
        let whole = std::fs::read(&path).unwrap();
        // Cut inside the second record: it never happened.
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        {
            let mut c = Catalog::open(dir.path()).unwrap();
            assert_eq!(c.groups().map(|g| g.group).collect::<Vec<_>>(), vec![1]);
            c.create(4, &[1], b"z").unwrap(); // Appends after the last good record.
        }
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.groups().map(|g| g.group).collect::<Vec<_>>(), vec![1, 4]);
        drop(c);
        // A flipped byte in the first record, with another after it: refused.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 2] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(Catalog::open(dir.path()), Err(CatalogError::Corrupt { offset: 0, .. })));
    }

    #[test]
    fn history_is_compacted_and_destroyed_ids_stay_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(dir.path()).unwrap();
        for g in 1..=300 {
            c.create(g, &[1, 2, 3], b"").unwrap();
            if g % 3 != 0 {
                c.destroy(g).unwrap();
            }
        }
        let len = std::fs::metadata(c.path()).unwrap().len();
        drop(c);
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.groups().count(), 100);
        assert_eq!(c.destroyed().count(), 200);
        assert!(c.is_destroyed(1) && !c.is_destroyed(3));
        // 300 creations and 200 destructions: 18.1 KB as written; compacted, 100 creations and
        // 200 destructions are 8.3 KB (plus what came after the last compaction).
        assert!(len < 13_000, "journal of {len} bytes");
    }
}
