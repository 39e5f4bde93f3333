//! [`Runtime`]: a fixed set of threads shared by every node started on it, so a process hosts
//! many groups and a group costs memory, not threads.
//!
//! A node started on its own ([`Node::start`](super::Node::start)) has a thread per stage and
//! a raft loop that ticks it. On a runtime ([`NodeOptions::runtime`](super::NodeOptions)), a
//! stage whose worker is called becomes a task on one of three lanes instead: the core's rounds
//! on the core lane; applying on the apply lane (a slow state machine holds up only that lane,
//! never another group's messages); log writes and snapshot chunk I/O on the I/O lane (they
//! wait for disks). A persist stage does not hold an I/O thread through its sync: one sync
//! thread serves every node, one sync per store for all the rounds written meanwhile
//! ([`shared_sync`](super::shared_sync)). One timer thread ticks every node on time and wakes a
//! persist stage whose store ran out of space when its retry is due.
//!
//! **Invariant:** a called stage is run. *Enforced by:* a stage calls its waker on every
//! transition of its `called` flag from false to true (and when it closes); the task it queues
//! clears the flag before each run of the stage and runs again while it finds it set, so a call
//! that lands during a run is seen by that task or queues another.

use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::message::{Heartbeat, Message, MessageBody};
use crate::transport::{PeerLiveness, Router, Transport, LIVENESS_GROUP, LIVENESS_HELLO};
use crate::types::NodeId;

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

/// Something the timer calls when it is due (a node's driver).
pub(crate) trait Timed: Send + Sync {
    /// Its time came at `now`: returns when it is due next, or `None` to be left alone until it
    /// asks again ([`Pool::schedule`]; a sleeping node is not visited at all).
    fn on_timer(&self, now: Instant) -> Option<Instant>;
    /// The peer it sleeps under as a follower, if it sleeps as one.
    fn sleeping_under(&self) -> Option<NodeId>;
    /// Whether it leads a group that sleeps.
    fn leads_asleep(&self) -> bool;
    /// The peer it sleeps under is down: count down to an election again (or, for a sleeping
    /// leader, a peer came back: heartbeat, so it learns who leads).
    fn wake_up(&self);
    /// The sync its persist stage asked the runtime for was tried up to `lsn`: run the stage.
    fn persist_synced(&self, lsn: crate::storage::Lsn);
    /// The log store its persist stage writes to (the sync thread syncs it).
    fn log_store(&self) -> &Arc<dyn crate::storage::LogStore>;
}

/// A timer entry: `node` is due at `at` (the heap's order is the earliest first).
struct Due {
    at: Instant,
    seq: u64,
    node: Weak<dyn Timed>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Due) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Due) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq)) // Reversed: a min-heap.
    }
}

/// The liveness check between this process's nodes and their peers
/// ([`Runtime::watch_peers`]).
struct PeerWatch {
    local: NodeId,
    transport: Arc<dyn Transport>,
    liveness: Arc<PeerLiveness>,
    every: Duration,
    down_after: Duration,
    next_ping: Instant,
    down: HashSet<NodeId>,
    /// Peers pinged so far: the first ping to each says hello (see [`LIVENESS_HELLO`]).
    greeted: HashSet<NodeId>,
    /// Peers pinged whether heard from or not (the others are pinged once heard from).
    known: Vec<NodeId>,
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
    /// Most snapshot transfers the runtime's nodes send at once, across all their groups;
    /// the others wait their turn (see [`Runtime::snapshot_sends`]).
    pub snapshot_sends: usize,
}

impl Default for RuntimeOptions {
    fn default() -> RuntimeOptions {
        RuntimeOptions {
            core_threads: 2,
            apply_threads: 2,
            io_threads: 4,
            timer: Duration::from_millis(1),
            snapshot_sends: 2,
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
    /// Every node started on the runtime (for the count, and to find the sleepers of a peer
    /// found down).
    timed: Mutex<Vec<Weak<dyn Timed>>>,
    /// Nodes by when they are due (sleeping ones are not in it).
    timers: Mutex<BinaryHeap<Due>>,
    timer_bell: Condvar,
    timer_seq: AtomicU64,
    watch: Mutex<Option<PeerWatch>>,
    timer: Duration,
    /// Ticks fall on multiples of the tick from here, so nodes with the same tick are due
    /// together: the timer visits them in one wake and the lanes run them in one batch.
    epoch: Instant,
    stop: AtomicBool,
    /// Syncs shared by the persist stages of every node (see [`shared_sync`](super::shared_sync)).
    pub(crate) sync: Arc<super::shared_sync::SharedSync>,
    /// The snapshot transfers sent at once.
    pub(crate) transfers: super::snapshots::TransferBudget,
    /// What the runtime's nodes count for it (see [`Runtime::failed_nodes`]).
    pub(crate) counts: Arc<NodeCounts>,
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
            timers: Mutex::new(BinaryHeap::new()),
            timer_bell: Condvar::new(),
            timer_seq: AtomicU64::new(0),
            watch: Mutex::new(None),
            timer: options.timer.max(Duration::from_micros(100)),
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
            sync: Arc::new(super::shared_sync::SharedSync::default()),
            transfers: super::snapshots::TransferBudget::new(options.snapshot_sends),
            counts: Arc::new(NodeCounts::default()),
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
        let weak = Arc::downgrade(&pool.sync);
        threads.push(
            std::thread::Builder::new()
                .name("raft-sync".into())
                .spawn(move || super::shared_sync::SharedSync::run(weak))?,
        );
        *pool.threads.lock() = threads;
        Ok(Runtime { pool })
    }

    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The snapshot-transfer budget's figures: transfers sending now, the most at once, chunk
    /// reads put off for want of a slot.
    pub fn snapshot_sends(&self) -> super::SnapshotSendStats {
        self.pool.transfers.stats()
    }

    /// Nodes the timer is waiting to call (sleeping ones are not among them).
    pub fn ticking(&self) -> usize {
        self.pool.timers.lock().iter().filter(|d| d.node.strong_count() > 0).count()
    }

    /// How many nodes started on this runtime have failed (a log store's error, say; see
    /// [`Node::failure`](super::Node::failure)) since it started: one atomic read, so an
    /// application hosting thousands of groups looks here often and asks its nodes which only
    /// when this moved, instead of locking every node's state each time.
    pub fn failed_nodes(&self) -> u64 {
        self.pool.counts.failed.load(Ordering::Acquire)
    }

    /// How many times a node on this runtime saw its group's leader or its own role change
    /// since the runtime started: one atomic read, so an application that balances leaders
    /// over thousands of groups looks at them again only when this moved.
    pub fn leader_changes(&self) -> u64 {
        self.pool.counts.leader_changes.load(Ordering::Acquire)
    }

    /// How many nodes on this runtime sleep now (their groups hibernate, see
    /// [`Node::is_asleep`](super::Node::is_asleep)): one atomic read instead of a look at each.
    pub fn asleep_nodes(&self) -> u64 {
        self.pool.counts.asleep.load(Ordering::Acquire)
    }

    /// Nodes started on this runtime and not yet dropped.
    pub fn nodes(&self) -> usize {
        self.pool.timed.lock().iter().filter(|t| t.strong_count() > 0).count()
    }

    /// Turns on the liveness check that lets idle groups sleep safely (see
    /// [`Config::hibernate_ticks`](crate::Config::hibernate_ticks)): every `every`, node
    /// `local` pings each of `peers` and each other peer it has heard from, once per pair of
    /// nodes whatever the number of groups ([`LIVENESS_GROUP`](crate::LIVENESS_GROUP)); a peer
    /// not heard from (by any message, `router` records them) for `down_after` is taken as
    /// down, and every node of this runtime sleeping under it as its leader is woken, so its
    /// group elects another. The first ping, sent at once, says hello: the peers' sleeping
    /// leaders then heartbeat, so call this once every group here is registered.
    pub fn watch_peers(
        &self,
        local: NodeId,
        peers: &[NodeId],
        transport: Arc<dyn Transport>,
        router: &Router,
        every: Duration,
        down_after: Duration,
    ) {
        // A hello is acted on at once, not at the next ping.
        let pool = Arc::downgrade(&self.pool);
        router.liveness().on_hello(move || {
            if let Some(p) = pool.upgrade() {
                p.timer_bell.notify_one();
            }
        });
        *self.pool.watch.lock() = Some(PeerWatch {
            local,
            transport,
            liveness: router.liveness(),
            every,
            down_after,
            next_ping: Instant::now(),
            down: HashSet::new(),
            greeted: HashSet::new(),
            known: peers.to_vec(),
        });
        self.pool.timer_bell.notify_one();
    }
}

/// The pool lives while a runtime handle or a node on it does; its threads hold it only
/// weakly between tasks and end at their next look once it is gone (none is joined: the last
/// reference may be dropped on one of them).
impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.sync.stop();
    }
}

impl Pool {
    /// Queues `task` on `lane` and wakes one of its threads, or, inside [`deferring_wakes`],
    /// notes the task for the wake-up at the end of the batch.
    pub(crate) fn spawn(self: &Arc<Self>, lane: Lane, task: Task) {
        let q = &self.lanes[lane as usize];
        q.tasks.lock().push_back(task);
        let deferred = DEFERRED.with_borrow_mut(|deferred| {
            let Some(batch) = deferred else { return false };
            match batch.queued.iter_mut().find(|(pool, _)| Arc::ptr_eq(pool, self)) {
                Some((_, counts)) => counts[lane as usize] += 1,
                None => {
                    let mut counts = [0; 3];
                    counts[lane as usize] = 1;
                    batch.queued.push((Arc::clone(self), counts));
                }
            }
            true
        });
        if !deferred {
            q.ready.notify_one();
        }
    }

    /// The first multiple of `tick` (counted from the runtime's start) at or after `at`.
    pub(crate) fn aligned(&self, at: Instant, tick: Duration) -> Instant {
        let tick_ns = tick.as_nanos().max(1);
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        let ticks = since.div_ceil(tick_ns);
        let ns = u64::try_from(ticks * tick_ns).unwrap_or(u64::MAX);
        self.epoch + Duration::from_nanos(ns)
    }

    /// Counts `timed` among the runtime's nodes and has the timer call it at `at`.
    pub(crate) fn register(&self, timed: Weak<dyn Timed>, at: Instant) {
        self.timed.lock().push(timed.clone());
        self.schedule(timed, at);
    }

    /// Has the timer call `node` at `at` (again: after it was left alone, or once more).
    pub(crate) fn schedule(&self, node: Weak<dyn Timed>, at: Instant) {
        let seq = self.timer_seq.fetch_add(1, Ordering::Relaxed);
        let mut timers = self.timers.lock();
        let earliest = timers.peek().is_none_or(|d| at < d.at);
        timers.push(Due { at, seq, node });
        drop(timers);
        if earliest {
            self.timer_bell.notify_one();
        }
    }

    /// Pings the watched peers when due, and wakes the sleepers of peers found down. Returns
    /// when it is due next.
    fn watch_peers(&self, now: Instant) -> Option<Instant> {
        let mut guard = self.watch.lock();
        let w = guard.as_mut()?;
        if now < w.next_ping {
            // Between pings, only hellos: a restarted peer learns its leaders at once.
            let back = w.liveness.take_hellos();
            let next = w.next_ping;
            drop(guard);
            if !back.is_empty() {
                self.wake_sleepers(&[], &back);
            }
            return Some(next);
        }
        w.next_ping = now + w.every;
        let peers = w.liveness.peers();
        let local = w.local;
        let mut to: Vec<NodeId> =
            peers.iter().map(|&(peer, _)| peer).chain(w.known.iter().copied()).collect();
        to.sort_unstable();
        to.dedup();
        let mut pings: Vec<Message> = Vec::with_capacity(to.len());
        for peer in to.into_iter().filter(|&peer| peer != local) {
            let round = if w.greeted.insert(peer) { LIVENESS_HELLO } else { 0 };
            pings.push(Message {
                group: LIVENESS_GROUP,
                from: local,
                to: peer,
                term: 0,
                body: MessageBody::Heartbeat(Heartbeat { commit: 0, round }),
            });
        }
        let mut newly_down = Vec::new();
        let mut back = Vec::new();
        for (peer, last) in peers {
            if now.saturating_duration_since(last) >= w.down_after {
                if w.down.insert(peer) {
                    newly_down.push(peer);
                }
            } else if w.down.remove(&peer) {
                back.push(peer);
            }
        }
        // A peer that just started (it said hello) is back too, however short its absence.
        for peer in w.liveness.take_hellos() {
            if !back.contains(&peer) {
                back.push(peer);
            }
        }
        let transport = w.transport.clone();
        let next = w.next_ping;
        drop(guard);
        transport.send_all(pings);
        self.wake_sleepers(&newly_down, &back);
        Some(next)
    }

    /// Wakes the nodes sleeping under a peer found down, and every sleeping leader when a peer
    /// is back.
    fn wake_sleepers(&self, newly_down: &[NodeId], back: &[NodeId]) {
        if newly_down.is_empty() && back.is_empty() {
            return;
        }
        if !newly_down.is_empty() {
            tracing::info!(peers = ?newly_down, "peers not heard from: waking the groups sleeping under them");
        }
        if !back.is_empty() {
            // A node that comes back (a restart, say) does not know who leads its groups, and a
            // sleeping leader sends nothing: every sleeping leader here heartbeats once, so it
            // learns at once instead of campaigning in every group.
            tracing::info!(peers = ?back, "peers heard from again: waking the sleeping leaders");
        }
        let nodes: Vec<Arc<dyn Timed>> =
            self.timed.lock().iter().filter_map(Weak::upgrade).collect();
        for node in nodes {
            let follows_dead = node.sleeping_under().is_some_and(|l| newly_down.contains(&l));
            if follows_dead || (!back.is_empty() && node.leads_asleep()) {
                node.wake_up();
            }
        }
    }
}

/// What a runtime's nodes count for it, each in one atomic, so an application hosting
/// thousands of nodes reads one number instead of looking at every node.
#[derive(Debug, Default)]
pub(crate) struct NodeCounts {
    /// Nodes that failed (a node counts its first failure).
    pub(crate) failed: AtomicU64,
    /// Changes of a node's leader or role.
    pub(crate) leader_changes: AtomicU64,
    /// Nodes asleep now (a node counts itself when it falls asleep, and uncounts itself when it
    /// wakes or is dropped asleep).
    pub(crate) asleep: AtomicU64,
}

/// Tasks a thread queued during its batch, by pool and lane, whose threads are not woken yet.
struct Deferred {
    /// The lane whose thread this is, if it is one: it takes its own lane's next tasks itself.
    own: Option<Lane>,
    queued: Vec<(Arc<Pool>, [usize; 3])>,
}

thread_local! {
    /// `Some` while this thread works through a batch ([`deferring_wakes`]).
    static DEFERRED: std::cell::RefCell<Option<Deferred>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f`, holding back the wake-ups of the lanes' threads for the tasks it queues until it
/// returns: a thread working through a batch (a lane's tasks, the shared sync's callbacks, a
/// transport reader's burst, the timer's due nodes) then wakes a lane's thread once for every
/// [`TASKS_PER_BATCH`] tasks it queued there, instead of once a task (which woke a thread that
/// ran one task and slept again while the batch went on queuing). `own`: the lane this thread
/// works for, whose tasks it takes itself after the batch (a thread is woken only for those
/// beyond its next batch). Inside another such batch it just runs `f` (the outer one wakes).
///
/// A task waits at most until the batch ends (bounded: a lane's batch is at most
/// [`TASKS_PER_BATCH`] tasks, a burst is what one read returned); nothing inside a batch waits
/// for a task it queued (only a stage's worker ever waits for a stage, and it waits for the
/// runner, not for a task).
pub(crate) fn deferring_wakes<R>(own: Option<Lane>, f: impl FnOnce() -> R) -> R {
    let outer = DEFERRED.with_borrow_mut(|deferred| {
        let outer = deferred.is_some();
        if !outer {
            *deferred = Some(Deferred { own, queued: Vec::new() });
        }
        outer
    });
    if outer {
        return f();
    }
    // Woken even if `f` panics, so no task waits for a thread's 100 ms look.
    struct Wake;
    impl Drop for Wake {
        fn drop(&mut self) {
            let Some(batch) = DEFERRED.with_borrow_mut(Option::take) else { return };
            for (pool, counts) in batch.queued {
                for (i, &queued) in counts.iter().enumerate() {
                    let own = batch.own.is_some_and(|l| l as usize == i);
                    for _ in 0..wakes_for(queued, own) {
                        pool.lanes[i].ready.notify_one();
                    }
                }
            }
        }
    }
    let _wake = Wake;
    f()
}

/// How many of a lane's threads a batch wakes for the `queued` tasks it put there: one for
/// every [`TASKS_PER_BATCH`], but none for the first batch's worth on the batch's `own` lane,
/// which its thread takes next.
fn wakes_for(queued: usize, own: bool) -> usize {
    let taken_here = if own { TASKS_PER_BATCH } else { 0 };
    queued.saturating_sub(taken_here).div_ceil(TASKS_PER_BATCH)
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
            // The tasks queued behind it run in the same batch (up to a bound, so no message
            // waits long), and what their nodes send leaves together at the end, as do the
            // wake-ups for the tasks they queue.
            deferring_wakes(Some(lane), || {
                crate::outbox::gathered(|| {
                    task();
                    for _ in 1..TASKS_PER_BATCH {
                        let Some(p) = pool.upgrade() else { return };
                        let next = p.lanes[lane as usize].tasks.lock().pop_front();
                        drop(p);
                        match next {
                            Some(task) => task(),
                            None => return,
                        }
                    }
                })
            });
        }
    }
}

/// Most tasks a lane thread runs before what their nodes sent leaves.
const TASKS_PER_BATCH: usize = 64;

/// The timer thread: calls each node when it is due (sleeping ones are not in its heap), and
/// runs the liveness check.
fn beat(pool: Weak<Pool>) {
    loop {
        let Some(p) = pool.upgrade() else { return };
        if p.stop.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut timers = p.timers.lock();
            while timers.peek().is_some_and(|d| d.at <= now) {
                due.extend(timers.pop());
            }
        }
        // The due nodes' tick rounds go to the core lane as one batch, with one wake-up.
        deferring_wakes(None, || {
            for d in due {
                let Some(node) = d.node.upgrade() else { continue };
                if let Some(at) = node.on_timer(now) {
                    p.schedule(d.node, at);
                }
            }
        });
        let watch_next = p.watch_peers(now);
        // Sleep until the next node is due (at most a resolution step late), the next ping, or
        // a new earlier entry; never longer than 100 ms (a dropped pool is noticed then).
        let mut timers = p.timers.lock();
        let next = timers
            .peek()
            .map(|d| d.at.max(now + p.timer))
            .into_iter()
            .chain(watch_next)
            .min()
            .unwrap_or(now + Duration::from_millis(100))
            .min(now + Duration::from_millis(100));
        let bell = &p.timer_bell;
        bell.wait_until(&mut timers, next);
        drop(timers);
        drop(p);
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
        let _ = self.me.set(Arc::downgrade(&timed));
        let first = pool.aligned(Instant::now() + self.tick, self.tick);
        *self.next_tick.lock() = first;
        pool.register(Arc::downgrade(&timed), first);
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
        self.finish_synced();
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
    /// raft loop does) and wakes a stalled persist stage when its retry is due. A sleeping
    /// node is left alone: its next round that finds it awake asks the timer again
    /// ([`Driver::resume_timer`]).
    fn on_timer(&self, now: Instant) -> Option<Instant> {
        if self.stopped() {
            return None;
        }
        let retry = self.persist_retry.get();
        if retry.is_some_and(|at| now >= at) {
            self.persist.call_worker();
        }
        let mut next = self.next_tick.lock();
        if now >= *next {
            *next += self.tick;
            let mut run = false;
            if *next <= now {
                self.core.push(Input::ClockStalled);
                run = true;
                *next = match &self.pool {
                    Some(pool) => pool.aligned(now + self.tick, self.tick),
                    None => now + self.tick,
                };
            }
            // The tick is owed to the core, which takes every owed tick before its next input:
            // only one that does more than count (`Raft::quiet_ticks`) needs a round now. So
            // the followers of busy groups are not run once per tick.
            let owed = self.shared.owed_ticks.fetch_add(1, Ordering::SeqCst) + 1;
            if run || owed > self.shared.quiet_ticks.load(Ordering::SeqCst) {
                self.core.push(Input::OwedTicks);
                self.core.call_worker();
            }
        }
        if retry.is_none() && self.shared.asleep.load(Ordering::SeqCst) {
            // Parked; then look again, so a round that woke the node meanwhile (and found it not
            // parked yet) is not missed. Whoever takes the parked flag back schedules the node,
            // exactly once: this look, or the round's `resume_timer`.
            self.timer_parked.store(true, Ordering::SeqCst);
            if self.shared.asleep.load(Ordering::SeqCst)
                || !self.timer_parked.swap(false, Ordering::SeqCst)
            {
                return None;
            }
        }
        Some(retry.map_or(*next, |r| r.min(*next)))
    }

    fn leads_asleep(&self) -> bool {
        self.shared.asleep.load(Ordering::SeqCst) && self.shared.is_leader()
    }

    fn sleeping_under(&self) -> Option<NodeId> {
        if !self.shared.asleep.load(Ordering::SeqCst) {
            return None;
        }
        let leader = self.shared.leader.load(Ordering::Relaxed);
        (leader != 0 && !self.shared.is_leader()).then_some(leader)
    }

    fn wake_up(&self) {
        self.core.push(Input::Wake);
        self.core.call_worker();
    }

    fn persist_synced(&self, lsn: crate::storage::Lsn) {
        self.synced(lsn);
    }

    fn log_store(&self) -> &Arc<dyn crate::storage::LogStore> {
        &self.log
    }
}

impl<M: StateMachine> Driver<M> {
    /// After a core round: a node the timer left alone while it slept and that is awake now
    /// asks the timer again (its ticks resume from now).
    pub(crate) fn resume_timer(&self) {
        if self.shared.asleep.load(Ordering::SeqCst) {
            return;
        }
        // Looked at first: the timer parks a node only while it sleeps, and a swap every round
        // would take the flag's line from the timer.
        if self.timer_parked.load(Ordering::SeqCst)
            && self.timer_parked.swap(false, Ordering::SeqCst)
        {
            let (Some(pool), Some(me)) = (&self.pool, self.me.get()) else { return };
            let at = pool.aligned(Instant::now() + self.tick, self.tick);
            *self.next_tick.lock() = at;
            pool.schedule(me.clone(), at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_wakes_a_thread_per_batch_of_tasks_it_queued() {
        assert_eq!(wakes_for(0, false), 0);
        assert_eq!(wakes_for(1, false), 1);
        assert_eq!(wakes_for(TASKS_PER_BATCH, false), 1);
        assert_eq!(wakes_for(TASKS_PER_BATCH + 1, false), 2);
        // A lane's own thread takes its next batch itself.
        assert_eq!(wakes_for(1, true), 0);
        assert_eq!(wakes_for(TASKS_PER_BATCH, true), 0);
        assert_eq!(wakes_for(TASKS_PER_BATCH + 1, true), 1);
    }

    /// No task queued inside a batch is lost: all run once it ends, on every lane and however
    /// many (a nested batch leaves the waking to the outer one), and so do those of a batch
    /// that panicked.
    #[test]
    fn tasks_queued_in_a_batch_run_once_it_ends() {
        let runtime = Runtime::new(RuntimeOptions::default()).expect("runtime");
        let pool = runtime.pool.clone();
        let ran = Arc::new(AtomicU64::new(0));
        let queue = |n: usize| {
            for i in 0..n {
                let ran = ran.clone();
                let lane = [Lane::Core, Lane::Apply, Lane::Io][i % 3];
                pool.spawn(
                    lane,
                    Box::new(move || {
                        ran.fetch_add(1, Ordering::SeqCst);
                    }),
                );
            }
        };
        let wait_for = |n: u64| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while ran.load(Ordering::SeqCst) < n {
                assert!(
                    Instant::now() < deadline,
                    "{} of {n} tasks ran",
                    ran.load(Ordering::SeqCst)
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        deferring_wakes(None, || {
            queue(10);
            deferring_wakes(Some(Lane::Core), || queue(200));
        });
        wait_for(210);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            deferring_wakes(None, || {
                queue(5);
                panic!("a batch that fails");
            })
        }));
        assert!(panicked.is_err());
        wait_for(215);
        // Outside a batch a task wakes its lane at once.
        queue(1);
        wait_for(216);
    }

    #[test]
    fn ticks_fall_on_multiples_of_the_tick_from_the_runtimes_start() {
        let runtime = Runtime::new(RuntimeOptions::default()).expect("runtime");
        let pool = &runtime.pool;
        let tick = Duration::from_millis(10);
        for offset_us in [0u64, 1, 4_999, 10_000, 10_001, 123_456] {
            let at = pool.epoch + Duration::from_micros(offset_us);
            let aligned = pool.aligned(at, tick);
            let since = aligned.duration_since(pool.epoch);
            assert!(aligned >= at, "{offset_us}: never earlier than asked");
            assert!(aligned - at < tick, "{offset_us}: less than a tick later");
            assert_eq!(since.as_nanos() % tick.as_nanos(), 0, "{offset_us}: on a multiple");
        }
        // Two nodes started apart are due at the same instants.
        let a = pool.aligned(pool.epoch + Duration::from_micros(3_100), tick);
        let b = pool.aligned(pool.epoch + Duration::from_micros(8_900), tick);
        assert_eq!(a, b);
    }
}
