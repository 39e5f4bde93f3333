//! [`Runtime`]: a fixed set of threads shared by every node started on it, so a process hosts
//! many groups and a group costs memory, not threads.
//!
//! A node started on its own ([`Node::start`](super::Node::start)) has a thread per stage and
//! a raft loop that ticks it. On a runtime ([`NodeOptions::runtime`](super::NodeOptions)), a
//! stage whose worker is called becomes a task on one of three lanes instead: the core's rounds
//! on the core lane; applying on the apply lane (a slow state machine holds up only that lane,
//! never another group's messages); log writes and syncs and snapshot chunk I/O on the I/O lane
//! (they wait for disks). One timer thread ticks every node on time and wakes a persist stage
//! whose store ran out of space when its retry is due.
//!
//! **Invariant:** a called stage is run. *Enforced by:* a stage calls its waker on every
//! transition of its `called` flag from false to true (and when it closes); the task it queues
//! clears the flag before each run of the stage and runs again while it finds it set, so a call
//! that lands during a run is seen by that task or queues another.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A unit of work on a lane.
pub(crate) type Task = Box<dyn FnOnce() + Send>;

/// Which lane a task runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// The core's rounds: quick, never waiting for a disk.
    Core,
    /// Applying committed entries (as slow as the state machine).
    Apply,
    /// Log writes and syncs, snapshot chunks and snapshots from views.
    Io,
}

/// Something the timer calls on every beat (a node's driver).
pub(crate) trait Timed: Send + Sync {
    /// One beat of the timer at `now`.
    fn on_timer(&self, now: Instant);
}

/// How many threads a [`Runtime`] has, and how often its timer beats.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeOptions {
    /// Threads running the cores' rounds.
    pub core_threads: usize,
    /// Threads applying committed entries.
    pub apply_threads: usize,
    /// Threads writing and syncing logs and reading and writing snapshots.
    pub io_threads: usize,
    /// How often the timer looks at every node (a node ticks at its own `tick`, to this
    /// resolution).
    pub timer: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> RuntimeOptions {
        RuntimeOptions {
            core_threads: 2,
            apply_threads: 2,
            io_threads: 4,
            timer: Duration::from_millis(1),
        }
    }
}

/// A fixed set of threads that runs every node started on it, so a group costs memory, not
/// threads: a node's stages become tasks on three lanes (the cores' rounds; applying, so a slow
/// state machine holds up only that lane; log writes, syncs and snapshot I/O, which wait for
/// disks), and one timer ticks every node. See the [node module docs](super#many-groups-in-one-process).
///
/// Cloning gives another handle to the same threads; they stop when the last handle and the
/// last node on them are gone.
#[derive(Clone)]
pub struct Runtime {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("nodes", &self.pool.timed.lock().len()).finish()
    }
}

impl PartialEq for Runtime {
    fn eq(&self, other: &Runtime) -> bool {
        Arc::ptr_eq(&self.pool, &other.pool)
    }
}

impl Eq for Runtime {}

/// One lane: a queue of tasks and the threads that run them.
struct Queue {
    tasks: Mutex<VecDeque<Task>>,
    ready: Condvar,
}

pub(crate) struct Pool {
    lanes: [Queue; 3],
    timed: Mutex<Vec<Weak<dyn Timed>>>,
    timer: Duration,
    stop: AtomicBool,
    /// The threads (never joined, see `Drop`), kept for their names in a debugger.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Runtime {
    /// Starts the runtime's threads.
    pub fn new(options: RuntimeOptions) -> std::io::Result<Runtime> {
        let queue = || Queue { tasks: Mutex::new(VecDeque::new()), ready: Condvar::new() };
        let pool = Arc::new(Pool {
            lanes: [queue(), queue(), queue()],
            timed: Mutex::new(Vec::new()),
            timer: options.timer.max(Duration::from_micros(100)),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        });
        let mut threads = Vec::new();
        let lanes = [
            (Lane::Core, options.core_threads, "raft-core"),
            (Lane::Apply, options.apply_threads, "raft-apply"),
            (Lane::Io, options.io_threads, "raft-io"),
        ];
        for (lane, count, name) in lanes {
            for i in 0..count.max(1) {
                let weak = Arc::downgrade(&pool);
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("{name}-{i}"))
                        .spawn(move || work(weak, lane))?,
                );
            }
        }
        let weak = Arc::downgrade(&pool);
        threads
            .push(std::thread::Builder::new().name("raft-timer".into()).spawn(move || beat(weak))?);
        *pool.threads.lock() = threads;
        Ok(Runtime { pool })
    }

    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Nodes started on this runtime and not yet dropped.
    pub fn nodes(&self) -> usize {
        self.pool.timed.lock().iter().filter(|t| t.strong_count() > 0).count()
    }
}

/// The pool lives while a runtime handle or a node on it does; its threads hold it only
/// weakly between tasks and end at their next look once it is gone (none is joined: the last
/// reference may be dropped on one of them).
impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Pool {
    /// Queues `task` on `lane`.
    pub(crate) fn spawn(&self, lane: Lane, task: Task) {
        let q = &self.lanes[lane as usize];
        q.tasks.lock().push_back(task);
        q.ready.notify_one();
    }

    /// Calls `timed` at every beat until it is dropped.
    pub(crate) fn register(&self, timed: Weak<dyn Timed>) {
        self.timed.lock().push(timed);
    }
}

/// A lane's thread: runs tasks until the pool is gone.
fn work(pool: Weak<Pool>, lane: Lane) {
    loop {
        let Some(p) = pool.upgrade() else { return };
        let q = &p.lanes[lane as usize];
        let task = {
            let mut tasks = q.tasks.lock();
            loop {
                if let Some(t) = tasks.pop_front() {
                    break Some(t);
                }
                if p.stop.load(Ordering::Acquire) {
                    break None;
                }
                // Woken by a new task; the timeout lets a thread notice a dropped pool.
                q.ready.wait_for(&mut tasks, Duration::from_millis(100));
                if tasks.is_empty() {
                    break None;
                }
            }
        };
        drop(p);
        if let Some(task) = task {
            task();
        }
    }
}

/// The timer thread: calls every registered node at each beat.
fn beat(pool: Weak<Pool>) {
    loop {
        let Some(p) = pool.upgrade() else { return };
        if p.stop.load(Ordering::Acquire) {
            return;
        }
        let period = p.timer;
        let now = Instant::now();
        let live: Vec<Arc<dyn Timed>> = {
            let mut timed = p.timed.lock();
            timed.retain(|t| t.strong_count() > 0);
            timed.iter().filter_map(Weak::upgrade).collect()
        };
        drop(p);
        for t in live {
            t.on_timer(now);
        }
        std::thread::sleep(period.saturating_sub(now.elapsed()));
    }
}

// ----- a node's driver on a runtime -----

use super::stage::Take;
use super::threads::{Driver, Input};
use crate::storage::StateMachine;

/// A node's stages, as the tasks that run them name them.
#[derive(Clone, Copy, Debug)]
enum StageId {
    Core,
    Persist,
    Apply,
    SnapshotIo,
    Views,
}

impl<M> Driver<M>
where
    M: StateMachine + Send + 'static,
    M::Output: Send + 'static,
{
    /// Makes every stage's worker a task on the runtime's lanes and has the timer tick the
    /// node (called once, right after the driver is built).
    pub(crate) fn run_on_pool(self: &Arc<Self>) {
        let Some(pool) = self.pool.clone() else { return };
        let wire = |stage: StageId, lane: Lane| -> Box<dyn Fn() + Send + Sync> {
            let driver = Arc::downgrade(self);
            let pool = Arc::downgrade(&pool);
            Box::new(move || {
                let (Some(p), driver) = (pool.upgrade(), driver.clone()) else { return };
                p.spawn(
                    lane,
                    Box::new(move || {
                        if let Some(d) = driver.upgrade() {
                            d.run_called(stage);
                        }
                    }),
                );
            })
        };
        self.core.set_waker(wire(StageId::Core, Lane::Core));
        self.persist.set_waker(wire(StageId::Persist, Lane::Io));
        self.apply.set_waker(wire(StageId::Apply, Lane::Apply));
        if let Some(stage) = &self.snapshot_io {
            stage.set_waker(wire(StageId::SnapshotIo, Lane::Io));
        }
        if let Some(stage) = &self.views {
            stage.set_waker(wire(StageId::Views, Lane::Io));
        }
        let timed: Arc<dyn Timed> = self.clone();
        pool.register(Arc::downgrade(&timed));
    }

    /// A task's run of a called stage: again while it was called meanwhile.
    fn run_called(&self, stage: StageId) {
        match stage {
            StageId::Core => {
                while self.core.take_called() {
                    self.run_core(Take::Wait);
                    self.follow_up();
                }
            }
            StageId::Persist => {
                while self.persist.take_called() {
                    self.run_persist();
                }
            }
            StageId::Apply => {
                while self.apply.take_called() {
                    self.apply.run(Take::Wait, &mut |a, jobs| self.apply_round(a, jobs, false));
                }
            }
            StageId::SnapshotIo => {
                if let Some(s) = &self.snapshot_io {
                    while s.take_called() {
                        s.run(Take::Wait, &mut |io, jobs| self.snapshot_round(io, jobs));
                    }
                }
            }
            StageId::Views => {
                if let Some(s) = &self.views {
                    while s.take_called() {
                        s.run(Take::Wait, &mut |store, jobs| self.view_round(store, jobs));
                    }
                }
            }
        }
    }
}

impl<M: StateMachine> Driver<M> {
    /// After the core stopped (on a runtime): runs what the other stages still hold on the
    /// caller's thread, then writes the commit index held back, as the node's own threads
    /// would before they end.
    pub(crate) fn finish_on_caller(&self) {
        self.run_persist();
        self.apply.run(Take::Wait, &mut |a, jobs| self.apply_round(a, jobs, false));
        if let Some(s) = &self.snapshot_io {
            s.run(Take::Wait, &mut |io, jobs| self.snapshot_round(io, jobs));
        }
        if let Some(s) = &self.views {
            s.run(Take::Wait, &mut |store, jobs| self.view_round(store, jobs));
        }
        self.run_persist();
        self.flush_held_commit();
    }
}

impl<M> Timed for Driver<M>
where
    M: StateMachine + Send + 'static,
    M::Output: Send + 'static,
{
    /// Ticks the core when its tick is due (a clock that fell behind gives up the lease, as the
    /// raft loop does), and wakes a stalled persist stage when its retry is due.
    fn on_timer(&self, now: Instant) {
        if self.stopped() {
            return;
        }
        let due = {
            let mut next = self.next_tick.lock();
            if now < *next {
                false
            } else {
                *next += self.tick;
                if *next <= now {
                    self.core.push(Input::ClockStalled);
                    *next = now + self.tick;
                }
                true
            }
        };
        if due {
            self.core.push(Input::Tick);
            self.core.call_worker();
        }
        let retry = *self.persist_retry.lock();
        if retry.is_some_and(|at| now >= at) {
            self.persist.call_worker();
        }
    }
}
