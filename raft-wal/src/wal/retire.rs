//! Retiring segments: a segment is deleted (or recycled as a prepared file) once no group has a
//! live entry in it and the first segment kept, whose checkpoint replaces what it held, is
//! durable.

use super::*;

impl Shared {
    /// Deletes (or recycles) the oldest segments while no group has entries in them.
    pub(super) fn retire_dead_segments(&self) -> Result<(), WalError> {
        let dead: Vec<u64> = {
            let st = self.state.read();
            st.segments
                .iter()
                .take_while(|(&seq, seg)| seq != st.active && seg.live == 0)
                .map(|(&seq, _)| seq)
                .collect()
        };
        if dead.is_empty() {
            return Ok(());
        }
        // The first segment kept starts with the checkpoint that replaces what the deleted
        // ones held (hard states, compaction points): it must be durable before they go.
        self.flush_all()?;
        let mut retired = Vec::new();
        {
            let mut st = self.state.write();
            for seq in dead {
                if let Some(seg) = st.segments.remove(&seq) {
                    retired.push(seg.file.path.clone());
                }
            }
        }
        for path in retired {
            let recycle = self.config.recycle_segments && {
                let st = self.state.read();
                st.prepared.len() < self.config.prepared_segments + 2
            };
            if recycle {
                let id = {
                    let mut st = self.state.write();
                    st.next_prepared_id += 1;
                    st.next_prepared_id - 1
                };
                match segment::recycle(&self.dir, &path, id) {
                    Ok(p) => {
                        self.state.write().prepared.push_back(p);
                        continue;
                    }
                    Err(e) => tracing::warn!(%e, "recycling a segment failed; deleting it"),
                }
            }
            std::fs::remove_file(&path).map_err(|e| WalError::io(&path, e))?;
        }
        segment::sync_dir(&self.dir)
    }
}
