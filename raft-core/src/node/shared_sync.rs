//! One sync for many groups: on a [`Runtime`](super::Runtime), a node's persist stage writes its
//! round, then, instead of holding an I/O thread through the sync, asks the runtime's sync
//! thread for it and lets the thread go. The sync thread takes every request that arrived,
//! syncs each log store once to the highest position asked of it, and calls the stages back.
//! So a thousand groups writing at once share one fsync, where each waiting on its own would
//! share it only with the few that found an I/O thread.
//!
//! The sync thread only speeds things up: a stage called back looks at the store's durable
//! position, and if its round is still not durable (the sync failed, say) it syncs itself, and
//! meets the error exactly as a node with threads of its own does.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::storage::{LogStore, Lsn};

/// A persist stage waiting for its round to be durable.
pub(crate) struct SyncWait {
    /// The store written to.
    pub(crate) log: Arc<dyn LogStore>,
    /// The round's position.
    pub(crate) lsn: Lsn,
    /// Set once a sync covering `lsn` was tried (whatever came of it).
    pub(crate) tried: Arc<AtomicBool>,
    /// Calls the stage back.
    pub(crate) wake: Box<dyn FnOnce() + Send>,
}

/// The requests for the sync thread.
pub(crate) struct SharedSync {
    waiting: Mutex<Vec<SyncWait>>,
    bell: Condvar,
    /// While the thread gathers: how many requests wake it (fewer wait for its timeout, so a
    /// gathering sync is not woken by every request). Otherwise `usize::MAX`: only the first
    /// request wakes it (a thread busy syncing takes the others when it looks again).
    want: AtomicUsize,
    stop: AtomicBool,
}

impl Default for SharedSync {
    fn default() -> SharedSync {
        SharedSync {
            waiting: Mutex::new(Vec::new()),
            bell: Condvar::new(),
            want: AtomicUsize::new(usize::MAX),
            stop: AtomicBool::new(false),
        }
    }
}

impl SharedSync {
    /// Asks for a sync covering `wait.lsn`.
    pub(crate) fn request(&self, wait: SyncWait) {
        let mut waiting = self.waiting.lock();
        waiting.push(wait);
        let n = waiting.len();
        drop(waiting);
        if n == 1 || n >= self.want.load(Ordering::Acquire) {
            self.bell.notify_one();
        }
    }

    /// Ends the sync thread (after the requests it has).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.bell.notify_all();
    }

    /// The sync thread: until stopped, takes every request that arrived, syncs each store once,
    /// and calls the stages back.
    pub(crate) fn run(me: Weak<SharedSync>) {
        let mut batch: Vec<SyncWait> = Vec::new();
        // The last sync: how many rounds it covered and how long it took.
        let (mut last_batch, mut last_sync) = (0usize, Duration::ZERO);
        loop {
            let Some(shared) = me.upgrade() else { return };
            {
                let mut waiting = shared.waiting.lock();
                while waiting.is_empty() {
                    if shared.stop.load(Ordering::Acquire) {
                        return;
                    }
                    // The timeout lets the thread notice a dropped runtime.
                    shared.bell.wait_for(&mut waiting, Duration::from_millis(100));
                }
                // Fewer rounds than the last sync covered: wait a little (at most as long as a
                // sync takes) for the rest of the groups that are writing, so one sync covers
                // them too instead of each paying for its own.
                if waiting.len() < last_batch {
                    let until = Instant::now() + last_sync.min(GATHER_MAX);
                    // The request that makes the batch as large as the last one wakes it.
                    shared.want.store(last_batch, Ordering::Release);
                    while waiting.len() < last_batch
                        && !shared.bell.wait_until(&mut waiting, until).timed_out()
                    {
                    }
                    shared.want.store(usize::MAX, Ordering::Release);
                }
                std::mem::swap(&mut *waiting, &mut batch);
            }
            drop(shared);
            last_batch = batch.len();
            let started = Instant::now();
            sync_all(&mut batch);
            last_sync = started.elapsed();
        }
    }
}

/// The longest a sync waits to gather more rounds.
const GATHER_MAX: Duration = Duration::from_micros(1000);

/// Syncs each store of `batch` once, to the highest position asked of it, then wakes them all.
fn sync_all(batch: &mut Vec<SyncWait>) {
    let mut stores: Vec<(Arc<dyn LogStore>, Lsn)> = Vec::new();
    for w in batch.iter() {
        match stores.iter_mut().find(|(log, _)| same_store(log, &w.log)) {
            Some((_, lsn)) => *lsn = (*lsn).max(w.lsn),
            None => stores.push((w.log.clone(), w.lsn)),
        }
    }
    for (log, lsn) in stores {
        if log.durable_lsn() < lsn {
            // An error is met again by the stage, which syncs itself when it finds its round
            // not durable.
            if let Err(err) = log.sync(lsn) {
                tracing::debug!(%err, "shared sync failed; each stage retries on its own");
            }
        }
    }
    // What the stages release leaves together, a write per peer for the whole batch.
    crate::outbox::gathered(|| {
        for w in batch.drain(..) {
            w.tried.store(true, Ordering::Release);
            (w.wake)();
        }
    });
}

/// Whether two handles name the same store (their data, not their vtables).
fn same_store(a: &Arc<dyn LogStore>, b: &Arc<dyn LogStore>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemLogStore;
    use crate::storage::LogWrite;
    use crate::types::HardState;
    use std::sync::atomic::AtomicUsize;

    /// A store that counts its syncs.
    struct Counting {
        inner: MemLogStore,
        syncs: AtomicUsize,
    }

    impl LogStore for Counting {
        fn write(&self, batch: &[LogWrite<'_>]) -> Result<Lsn, crate::StorageError> {
            self.inner.write(batch)
        }
        fn sync(&self, lsn: Lsn) -> Result<(), crate::StorageError> {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            self.inner.sync(lsn)
        }
        fn durable_lsn(&self) -> Lsn {
            Lsn(0) // Never durable until synced: every request needs a sync.
        }
        fn compact(&self, g: u64, t: u64, term: u64) -> Result<Lsn, crate::StorageError> {
            self.inner.compact(g, t, term)
        }
        fn entries(
            &self,
            g: u64,
            lo: u64,
            hi: u64,
            max: u64,
        ) -> Result<Vec<crate::Entry>, crate::StorageError> {
            self.inner.entries(g, lo, hi, max)
        }
        fn term(&self, g: u64, i: u64) -> Result<u64, crate::StorageError> {
            self.inner.term(g, i)
        }
        fn log_state(&self, g: u64) -> Result<crate::storage::LogState, crate::StorageError> {
            self.inner.log_state(g)
        }
        fn groups(&self) -> Result<Vec<u64>, crate::StorageError> {
            self.inner.groups()
        }
    }

    #[test]
    fn requests_waiting_together_share_one_sync_per_store() {
        let a: Arc<Counting> =
            Arc::new(Counting { inner: MemLogStore::new(), syncs: AtomicUsize::new(0) });
        let b: Arc<Counting> =
            Arc::new(Counting { inner: MemLogStore::new(), syncs: AtomicUsize::new(0) });
        let woken = Arc::new(AtomicUsize::new(0));
        let mut batch = Vec::new();
        for group in 0..100u64 {
            let store: Arc<Counting> = if group % 10 == 0 { b.clone() } else { a.clone() };
            let hs = HardState { term: 1, vote: None, commit: 0 };
            let lsn = store
                .write(&[LogWrite { group, hard_state: Some(hs), entries: &[] }])
                .expect("write");
            let woken = woken.clone();
            batch.push(SyncWait {
                log: store,
                lsn,
                tried: Arc::new(AtomicBool::new(false)),
                wake: Box::new(move || {
                    woken.fetch_add(1, Ordering::Relaxed);
                }),
            });
        }
        let tried: Vec<_> = batch.iter().map(|w| w.tried.clone()).collect();
        sync_all(&mut batch);
        assert_eq!(a.syncs.load(Ordering::Relaxed), 1, "90 requests, one sync");
        assert_eq!(b.syncs.load(Ordering::Relaxed), 1, "10 requests, one sync");
        assert_eq!(woken.load(Ordering::Relaxed), 100);
        assert!(tried.iter().all(|t| t.load(Ordering::Acquire)));
        assert!(batch.is_empty());
    }
}
