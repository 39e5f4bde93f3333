//! Durability and group commit: one sync at a time, no lock on a caller's path. A caller whose
//! record is not durable wins the `leading` flag and syncs, or waits on the doorbell; the leader
//! writes every staged record, fdatasyncs, publishes what is durable and rings once.

use super::*;

/// What is durable, written by sync leaders and read by `durable_position`.
pub(super) struct Durable {
    /// Highest record `seq` known durable.
    pub(super) seq: u64,
    /// Where the durable log ends: (segment, offset).
    pub(super) end: (u64, u64),
    /// Why the WAL is poisoned, once it is.
    pub(super) poison: Option<String>,
}

/// What only the current sync leader touches: how the previous round went.
#[derive(Default)]
pub(super) struct LeaderNotes {
    /// Callers waiting when the previous sync ended (covered or not), its leader included: how
    /// many the next sync waits for.
    pub(super) last_round: usize,
}

/// Callers waiting for a sync, counted by the doorbell ring they arrived after (high 32 bits:
/// the ring; low 32: how many arrived since it). A leader gathering for the next sync counts
/// only callers that arrived after the last ring, not those that ring woke and that have not
/// run yet.
pub(super) struct Arrivals(pub(super) AtomicU64);

impl Arrivals {
    /// Counts a caller that read ring `seen` before deciding to wait; returns how many arrived
    /// since that ring (0 if a newer ring came meanwhile: its wait returns at once).
    pub(super) fn arrive(&self, seen: u32) -> u32 {
        let mut v = self.0.load(Ordering::Acquire);
        loop {
            let (ring, n) = ((v >> 32) as u32, v as u32);
            let next = if ring == seen {
                n.saturating_add(1)
            } else if (seen.wrapping_sub(ring) as i32) > 0 {
                1 // The first to arrive after ring `seen`.
            } else {
                return 0; // A newer ring already came: not waiting for long.
            };
            match self.0.compare_exchange_weak(
                v,
                (u64::from(seen) << 32) | u64::from(next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return next,
                Err(now) => v = now,
            }
        }
    }

    /// How many arrived after ring `ring`.
    pub(super) fn since(&self, ring: u32) -> u32 {
        let v = self.0.load(Ordering::Acquire);
        if (v >> 32) as u32 == ring {
            v as u32
        } else {
            0
        }
    }
}

impl Shared {
    /// Waits until every record up to `lsn` is durable, leading a sync if the mode asks callers
    /// to and nobody is.
    pub(crate) fn sync_to(&self, lsn: u64) -> Result<(), WalError> {
        self.wait_durable(lsn, false)
    }

    /// Waits until every record up to `lsn` is durable; `force` syncs even in the modes where
    /// callers do not (`Never`, `Interval`).
    pub(super) fn wait_durable(&self, lsn: u64, force: bool) -> Result<(), WalError> {
        loop {
            // The ring first: a sync that ends after this read rings again, so the wait below
            // returns (see `leading`).
            let seen = self.bell.seen();
            self.check_poison()?;
            if self.durable_seq.load(Ordering::Acquire) >= lsn {
                return Ok(());
            }
            let timeout = match self.config.durability {
                Durability::Never if !force => return Ok(()),
                // The background thread syncs; look again now and then in case it stopped.
                Durability::Interval(_) if !force => Some(Duration::from_millis(50)),
                _ => {
                    if self.try_lead() {
                        self.lead_sync();
                        continue;
                    }
                    None
                }
            };
            let arrived = self.arrivals.arrive(seen);
            if arrived >= self.gather_want.load(Ordering::Acquire) {
                self.gather_bell.ring();
            }
            match timeout {
                // Another thread leads a sync that ends soon.
                None => self.bell.wait_spinning(seen, self.spin(), None),
                Some(_) => self.bell.wait(seen, timeout),
            }
        }
    }

    /// How long a thread waiting for a sync, or a leader gathering, yields before it sleeps:
    /// [`WalConfig::spin_wait`] while syncs take no longer than that, else nothing (a thread
    /// that would spin through most of a slow sync only burns the CPU).
    pub(super) fn spin(&self) -> Duration {
        let limit = self.config.spin_wait;
        if self.last_sync() <= limit {
            limit
        } else {
            Duration::ZERO
        }
    }

    /// How long the last sync took.
    pub(super) fn last_sync(&self) -> Duration {
        Duration::from_nanos(self.last_sync_ns.load(Ordering::Relaxed))
    }

    /// Becomes the sync leader, unless another thread is.
    pub(super) fn try_lead(&self) -> bool {
        self.leading.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Runs one sync as the leader (the caller won `try_lead`); then publishes what is durable
    /// and rings once, which wakes every waiter: the covered return, and the first of the rest
    /// to look leads the next sync.
    ///
    /// Gathering: a leader that started the moment the previous sync returned would cover only
    /// the callers quickest to write again, and the rest would wait a whole extra sync. So, when
    /// several callers were waiting as the previous sync ended, the leader first waits (at most
    /// as long as the previous sync took, and never more than 500 us) until as many wait again;
    /// only the arrival that completes the count wakes it. A lone writer never waits. With an
    /// explicit `max_delay`, it waits up to that long or until `max_bytes` are pending instead.
    pub(super) fn lead_sync(&self) {
        let mut notes = self.leader_notes.lock();
        let ring = self.bell.seen();
        match self.config.durability {
            Durability::GroupCommit { max_delay, max_bytes } if !max_delay.is_zero() => {
                self.gather_until(u32::MAX, Instant::now() + max_delay, || {
                    self.pending_bytes.load(Ordering::Acquire) >= max_bytes
                });
            }
            Durability::Always | Durability::GroupCommit { .. } if notes.last_round > 1 => {
                let want = (notes.last_round - 1).min(u32::MAX as usize - 1) as u32;
                let deadline = Instant::now() + self.last_sync().min(Duration::from_micros(500));
                self.gather_until(want, deadline, || self.arrivals.since(ring) >= want);
            }
            _ => {}
        }
        let started = Instant::now();
        let result = self.flush();
        self.last_sync_ns.store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match result {
            Ok(end) => {
                self.syncs.fetch_add(1, Ordering::Relaxed);
                let mut d = self.durable.lock();
                if end.seq > d.seq {
                    d.seq = end.seq;
                    d.end = (end.segment, end.offset);
                    self.durable_seq.store(end.seq, Ordering::Release);
                }
            }
            Err(e) => self.poison(format!("sync failed: {e}")),
        }
        // Everyone who arrived during this round waits now, covered or not.
        notes.last_round = self.arrivals.since(ring) as usize + 1;
        drop(notes);
        self.leading.store(false, Ordering::Release);
        self.bell.ring();
    }

    /// The leader's wait before a sync: until `done()`, the deadline, or poison. Arrivals
    /// counted to `want` (or `account`, past the byte limit) ring the gather bell.
    pub(super) fn gather_until(&self, want: u32, deadline: Instant, done: impl Fn() -> bool) {
        self.gather_want.store(want, Ordering::Release);
        self.gathering.store(true, Ordering::Release);
        loop {
            let seen = self.gather_bell.seen();
            if done() || self.poisoned.load(Ordering::Acquire) {
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            self.gather_bell.wait_spinning(seen, self.spin(), Some(deadline));
        }
        self.gathering.store(false, Ordering::Release);
        self.gather_want.store(u32::MAX, Ordering::Release);
    }

    /// Makes everything written so far durable; returns where the durable log then ends.
    pub(super) fn flush(&self) -> Result<DurablePosition, WalError> {
        let (end, files, votes) = {
            let mut st = self.state.write();
            // What writers left staged goes to the file with one call (see
            // `maybe_flush_staged`); a failure poisons the instance like a failed sync.
            flush_staged(&mut st)?;
            let mut files = std::mem::take(&mut st.unsynced_sealed);
            if let Some(seg) = st.segments.get(&st.active) {
                files.push(Arc::clone(&seg.file.file));
            }
            let end = DurablePosition {
                seq: st.next_seq - 1,
                segment: st.active,
                offset: st.offset as u64,
            };
            self.pending_bytes.store(0, Ordering::Release);
            let votes = std::mem::take(&mut st.votes_dirty).then(|| {
                st.groups
                    .iter()
                    .map(|(&id, g)| (id, (g.hard_state.term, g.hard_state.vote)))
                    .collect::<crate::votes::Votes>()
            });
            (end, files, votes)
        };
        fail::fail_point!("wal::sync", |_| Err(WalError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other("injected fdatasync failure"),
        }));
        for f in &files {
            f.sync_data().map_err(|e| WalError::io(&self.dir, e))?;
        }
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = segment::sync_dir(&self.dir) {
                self.dir_dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        // The second copy of changed terms and votes, after the log's (so a copy newer than
        // the log means the log lost synced records), before the sync returns (so before any
        // vote it covers is sent).
        if let Some(votes) = votes {
            self.votes.lock().write(&self.dir, &votes)?;
        }
        Ok(end)
    }

    /// Syncs whatever is written, whatever the durability mode (used by `close` and before
    /// deleting segments).
    pub(super) fn flush_all(&self) -> Result<(), WalError> {
        self.check_poison()?;
        let written = self.state.read().next_seq - 1;
        self.wait_durable(written, true)?;
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = segment::sync_dir(&self.dir) {
                self.dir_dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        self.check_poison()
    }
}
