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

use super::runtime::Timed;
use crate::storage::{LogStore, Lsn};

/// A persist stage waiting for its round to be durable. Nothing is allocated for it: the node
/// names its store, and is told how far a sync was tried when it is called back
/// ([`Timed::persist_synced`]).
pub(crate) struct SyncWait {
    /// The node whose persist stage waits.
    pub(crate) node: Weak<dyn Timed>,
    /// The round's position in the node's store.
    pub(crate) lsn: Lsn,
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

/// Syncs each store of `batch` once, to the highest position asked of it, then calls every
/// node back (a node dropped meanwhile has nothing to call).
fn sync_all(batch: &mut Vec<SyncWait>) {
    let nodes: Vec<(Arc<dyn Timed>, Lsn)> =
        batch.drain(..).filter_map(|w| Some((w.node.upgrade()?, w.lsn))).collect();
    let mut stores: Vec<(&Arc<dyn LogStore>, Lsn)> = Vec::new();
    for (node, lsn) in &nodes {
        let log = node.log_store();
        match stores.iter_mut().find(|(l, _)| same_store(l, log)) {
            Some((_, at)) => *at = (*at).max(*lsn),
            None => stores.push((log, *lsn)),
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
    // What the stages release leaves together, a write per peer for the whole batch, and the
    // tasks they queue wake the lanes once.
    super::runtime::deferring_wakes(None, || {
        crate::outbox::gathered(|| {
            for (node, lsn) in &nodes {
                node.persist_synced(*lsn);
            }
        })
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

    /// A node that only counts being called back, and how far the sync was tried.
    struct Waiting {
        log: Arc<dyn LogStore>,
        woken: Arc<AtomicUsize>,
        tried: std::sync::atomic::AtomicU64,
    }

    impl Timed for Waiting {
        fn on_timer(&self, _: Instant) -> Option<Instant> {
            None
        }
        fn sleeping_under(&self) -> Option<crate::NodeId> {
            None
        }
        fn leads_asleep(&self) -> bool {
            false
        }
        fn wake_up(&self) {}
        fn persist_synced(&self, lsn: Lsn) {
            self.tried.fetch_max(lsn.0, Ordering::Relaxed);
            self.woken.fetch_add(1, Ordering::Relaxed);
        }
        fn log_store(&self) -> &Arc<dyn LogStore> {
            &self.log
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
        let mut nodes = Vec::new();
        for group in 0..100u64 {
            let store: Arc<Counting> = if group % 10 == 0 { b.clone() } else { a.clone() };
            let hs = HardState { term: 1, vote: None, commit: 0 };
            let lsn = store
                .write(&[LogWrite { group, hard_state: Some(hs), entries: &[] }])
                .expect("write");
            let node: Arc<Waiting> = Arc::new(Waiting {
                log: store,
                woken: woken.clone(),
                tried: std::sync::atomic::AtomicU64::new(0),
            });
            let weak: Arc<dyn Timed> = node.clone();
            batch.push(SyncWait { node: Arc::downgrade(&weak), lsn });
            nodes.push((node, lsn));
        }
        // A node dropped before the sync is not called back, and costs nothing.
        let gone: Arc<dyn Timed> = Arc::new(Waiting {
            log: a.clone(),
            woken: woken.clone(),
            tried: std::sync::atomic::AtomicU64::new(0),
        });
        batch.push(SyncWait { node: Arc::downgrade(&gone), lsn: Lsn(u64::MAX) });
        drop(gone);
        sync_all(&mut batch);
        assert_eq!(a.syncs.load(Ordering::Relaxed), 1, "90 requests, one sync");
        assert_eq!(b.syncs.load(Ordering::Relaxed), 1, "10 requests, one sync");
        assert_eq!(woken.load(Ordering::Relaxed), 100);
        for (node, lsn) in &nodes {
            assert_eq!(node.tried.load(Ordering::Relaxed), lsn.0, "told how far it was tried");
        }
        assert!(batch.is_empty());
    }
}
