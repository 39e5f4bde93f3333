//! Reads: entries by range through the index, payloads checked against their checksums unless
//! their segment was verified.

use super::*;

/// Copies an entry's payload out of its segment, checking its checksum unless the segment is
/// known verified.
pub(super) fn read_payload(
    st: &State,
    group: GroupId,
    index: Index,
    loc: Loc,
) -> Result<Bytes, StorageError> {
    let corrupt =
        |why: String| StorageError::Corrupt(format!("group {group} entry {index}: {why}"));
    let Some(seg) = st.segments.get(&(loc.segment as u64)) else {
        return Err(corrupt(format!("segment {} is not open", loc.segment)));
    };
    let start = loc.offset as usize;
    let end = start + loc.data_len();
    if loc.segment as u64 == st.active && !st.staging.is_empty() && start >= st.staging.at() {
        // Written by a call that left it for the next sync to write.
        return match st.staging.get(start, end - start) {
            Some(data) => Ok(Bytes::copy_from_slice(data)),
            None => Err(corrupt(format!("payload {start}..{end} is not in the staged records"))),
        };
    }
    let Some(data) = seg.file.bytes().get(start..end) else {
        return Err(corrupt(format!("payload {start}..{end} is outside segment {}", loc.segment)));
    };
    if !seg.verified && crc32c::crc32c(data) != loc.crc {
        return Err(StorageError::Damaged {
            group,
            index,
            detail: format!("payload checksum mismatch in {}", seg.file.path.display()),
        });
    }
    Ok(Bytes::copy_from_slice(data))
}

impl Shared {
    pub(super) fn group_state<R>(
        &self,
        group: GroupId,
        f: impl FnOnce(&State, Option<&GroupIndex>) -> R,
    ) -> R {
        let st = self.state.read();
        f(&st, st.groups.get(&group))
    }

    pub(crate) fn entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.check_poison()?;
        let st = self.state.read();
        let empty = GroupIndex::default();
        let g = st.groups.get(&group).unwrap_or(&empty);
        if lo <= g.base_index {
            return Err(StorageError::Compacted { group, index: lo, first: g.first_index() });
        }
        if hi > g.last_index() || lo > hi {
            return Err(StorageError::Unavailable {
                group,
                index: hi.max(lo),
                last: g.last_index(),
            });
        }
        let mut out = Vec::with_capacity((hi - lo + 1).min(4096) as usize);
        let mut bytes = 0u64;
        for index in lo..=hi {
            let Some(loc) = g.loc(index) else { break };
            let size = loc.data_len() as u64 + Entry::OVERHEAD_BYTES;
            if bytes + size > max_bytes && !out.is_empty() {
                break;
            }
            bytes += size;
            let data = read_payload(&st, group, index, loc)?;
            let term = g.term(index).unwrap_or_default();
            out.push(Entry { term, index, kind: loc.kind(), data });
        }
        Ok(out)
    }
}
