//! The background threads: the preparer keeps segment files ready ahead of the writer, and the
//! interval syncer makes writes durable on a timer (`Durability::Interval`).

use super::*;

impl Shared {
    pub(super) fn run_interval_sync(&self, every: Duration) {
        while !self.shutdown.load(Ordering::Acquire) {
            {
                let mut g = self.bg.lock();
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
                self.bg_cv.wait_for(&mut g, every);
            }
            if self.poisoned.load(Ordering::Acquire) {
                return;
            }
            let written = self.state.read().next_seq - 1;
            if self.durable_seq.load(Ordering::Acquire) < written && self.try_lead() {
                self.lead_sync();
            }
        }
    }

    pub(super) fn run_preparer(&self) {
        // One warning when preparing starts failing (a full disk retries every 200 ms for as
        // long as it lasts), one note when it works again.
        let mut failing = false;
        loop {
            let want = self.config.prepared_segments;
            let id = {
                let mut st = self.state.write();
                if st.prepared.len() >= want {
                    None
                } else {
                    let id = st.next_prepared_id;
                    st.next_prepared_id += 1;
                    Some(id)
                }
            };
            if let Some(id) = id {
                let size = self.config.segment_size_bytes;
                match segment::prepare_new(&self.dir, id, size, segment::Fill::Zeros) {
                    Ok(path) => {
                        self.state.write().prepared.push_back(path);
                        if std::mem::take(&mut failing) {
                            tracing::info!(dir = %self.dir.display(), "preparing segments works again");
                        }
                        continue;
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(dir = %self.dir.display(), %e, "preparing a segment failed; retrying every 200 ms")
                    }
                    Err(e) => {
                        tracing::debug!(dir = %self.dir.display(), %e, "preparing a segment failed again")
                    }
                }
            }
            let mut g = self.bg.lock();
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
            let wait =
                if id.is_some() { Duration::from_millis(200) } else { Duration::from_secs(1) };
            self.bg_cv.wait_for(&mut g, wait);
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
        }
    }
}
