//! A stage of the node driver: a queue of jobs that at most one thread works through at a time.
//!
//! Whichever thread brings work may run it at once if no other thread is running the stage
//! ([`Stage::try_run`]), which spares the wake-up of a worker thread (on a virtual machine, tens
//! of microseconds each). The stage's worker thread ([`Stage::work`]) runs whatever an inline
//! runner leaves: work it hands off on purpose (a slow job), work past its round limit, and work
//! nobody brought a thread for.
//!
//! **Invariant:** a queued job is never stranded. A thread that queues a job and finds the stage
//! busy leaves it to the runner, and every runner looks at the queue again *after* it lets go of
//! the stage, so a job queued while it was finishing is seen by it or by the next runner. (The
//! queue's lock orders the two: the pusher's unlock of the queue happens before the runner's
//! later look at it, and the runner's release of the stage happens before that look.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, MutexGuard};

/// What one round of a stage's work asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Round {
    /// Carry on: run another round if jobs are queued (jobs left in the round's deque go back
    /// to the front of the queue).
    Continue,
    /// Stop running inline: the jobs left in the round's deque go back to the front of the
    /// queue and the worker thread is called to run them.
    HandOff,
    /// The jobs cannot be done now (a store out of space): they go back to the front of the
    /// queue and nobody is called. The stage's worker retries them when its own deadline
    /// passes (see [`Stage::wait_called`]); the stage is the one exception to the invariant
    /// below while it stalls.
    Stall,
}

/// How [`Stage::run`] gets the stage.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Take {
    /// Only if no other thread is running it, and for at most this many rounds (then the worker
    /// is called for the rest).
    Try {
        /// Rounds before handing the rest to the worker.
        max_rounds: usize,
    },
    /// Wait for the stage; run until the queue is empty.
    Wait,
}

/// Why [`Stage::wait_called`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Called {
    /// The worker was called.
    Yes,
    /// The deadline passed.
    Deadline,
    /// The stage is closed and its queue is empty.
    Closed,
}

/// A queue of jobs and the state only the current runner may touch.
pub(crate) struct Stage<S, J> {
    queue: Mutex<Queue<J>>,
    /// How many jobs are queued, and whether the stage is closed (it takes no more jobs):
    /// written under the queue's lock, so exact for a look under it, and read without it by the
    /// looks that only steer ([`Stage::is_idle`],
    /// [`Stage::is_closed`], a runner's look for more work between rounds). Every round takes
    /// the queue's lock many times over, on a line the threads that bring work hold; these
    /// looks need not. The look that keeps the invariant above is still made under the lock.
    queued: AtomicUsize,
    closed: AtomicBool,
    signal: Condvar,
    /// On a [`Runtime`](super::Runtime): queues a task that runs the stage, instead of waking a
    /// thread of its own. Called on every call of an uncalled stage, and when it closes.
    waker: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Give the deques' memory back at the end of the current run (see
    /// [`Stage::shrink_when_idle`]).
    shrink: AtomicBool,
    /// The runner's state, and a spare deque the runner swaps with the queue's (so taking the
    /// queued jobs neither allocates nor copies).
    state: Mutex<(S, VecDeque<J>)>,
}

struct Queue<J> {
    jobs: VecDeque<J>,
    /// Someone asked the worker to run the stage.
    called: bool,
}

impl<S, J> Stage<S, J> {
    /// A stage with an empty queue.
    pub(crate) fn new(state: S) -> Stage<S, J> {
        Stage {
            queue: Mutex::new(Queue { jobs: VecDeque::new(), called: false }),
            queued: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            signal: Condvar::new(),
            waker: OnceLock::new(),
            shrink: AtomicBool::new(false),
            state: Mutex::new((state, VecDeque::new())),
        }
    }

    /// Queues a job. A closed stage drops it (a request inside answers
    /// [`NodeError::Stopped`](super::NodeError::Stopped) when dropped) and says so.
    pub(crate) fn push(&self, job: J) -> bool {
        let mut q = self.queue.lock();
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        q.jobs.push_back(job);
        self.queued.store(q.jobs.len(), Ordering::Release);
        true
    }

    /// Queues several jobs, in order (or drops them all, if the stage is closed).
    pub(crate) fn push_all(&self, jobs: impl IntoIterator<Item = J>) -> bool {
        let mut q = self.queue.lock();
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        q.jobs.extend(jobs);
        self.queued.store(q.jobs.len(), Ordering::Release);
        true
    }

    /// Whether nothing is queued (as last seen: a job queued by another thread meanwhile is
    /// run by that thread or the current runner, see the invariant).
    pub(crate) fn is_idle(&self) -> bool {
        self.queued.load(Ordering::Acquire) == 0
    }

    /// Asks the worker (a thread, or a task on a runtime) to run the stage.
    pub(crate) fn call_worker(&self) {
        let mut q = self.queue.lock();
        if !q.called {
            q.called = true;
            drop(q);
            match self.waker.get() {
                Some(wake) => wake(),
                None => {
                    self.signal.notify_one();
                }
            }
        }
    }

    /// Takes no more jobs (later pushes drop theirs) and wakes the worker so it can finish
    /// what is queued and return.
    pub(crate) fn close(&self) {
        // Set under the queue's lock: a look made under it (a push, the worker's wait) is exact.
        let q = self.queue.lock();
        self.closed.store(true, Ordering::Release);
        drop(q);
        self.signal.notify_all();
        if self.waker.get().is_some() {
            self.call_worker();
        }
    }

    /// Gives back the memory the stage's queues hold (a node whose group went to sleep: with
    /// thousands of groups, deques a burst grew would add up): now if no runner holds the
    /// stage, else at the end of the runner's run.
    pub(crate) fn shrink_when_idle(&self) {
        self.shrink.store(true, Ordering::Release);
        if let Some(mut state) = self.state.try_lock() {
            state.1.shrink_to_fit();
            drop(state);
            let mut q = self.queue.lock();
            if q.jobs.is_empty() {
                q.jobs.shrink_to_fit();
            }
        }
    }

    /// Makes the stage's worker a task `wake` queues (a stage on a runtime has no thread).
    pub(crate) fn set_waker(&self, wake: Box<dyn Fn() + Send + Sync>) {
        let _ = self.waker.set(wake);
    }

    /// A task's look at the stage: whether it was called (clearing the call), so the task
    /// runs it again.
    pub(crate) fn take_called(&self) -> bool {
        std::mem::take(&mut self.queue.lock().called)
    }

    /// Whether the stage is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The worker's wait: until it is called, `deadline` passes, or the stage is closed with
    /// nothing queued.
    pub(crate) fn wait_called(&self, deadline: Option<Instant>) -> Called {
        let mut q = self.queue.lock();
        loop {
            if q.called {
                q.called = false;
                return Called::Yes;
            }
            let closed = self.closed.load(Ordering::Acquire);
            if closed && q.jobs.is_empty() {
                return Called::Closed;
            }
            if closed {
                return Called::Yes; // Finish what is queued.
            }
            match deadline {
                Some(at) => {
                    if Instant::now() >= at || self.signal.wait_until(&mut q, at).timed_out() {
                        if q.called {
                            continue;
                        }
                        return Called::Deadline;
                    }
                }
                None => self.signal.wait(&mut q),
            }
        }
    }

    /// Runs rounds of queued jobs on this thread: each round gets the runner's state and every
    /// job queued since the last round. Returns false if another thread held the stage (with
    /// [`Take::Try`]); that thread, or the worker, runs what this one queued.
    pub(crate) fn run(
        &self,
        take: Take,
        round: &mut dyn FnMut(&mut S, &mut VecDeque<J>) -> Round,
    ) -> bool {
        let mut rounds = 0usize;
        loop {
            let guard = match take {
                Take::Try { .. } => match self.state.try_lock() {
                    Some(g) => g,
                    None => return false,
                },
                Take::Wait => self.state.lock(),
            };
            match self.run_held(guard, take, &mut rounds, round) {
                Some(handed_off) => {
                    if handed_off {
                        self.call_worker();
                    }
                    return true;
                }
                None => {
                    // Let go with jobs queued after the last look: take the stage again (unless
                    // someone else has it now, who then runs them).
                }
            }
        }
    }

    /// Rounds while holding the stage. `Some(handed_off)` when done, `None` when jobs arrived
    /// after the stage was let go (the caller takes it again).
    fn run_held(
        &self,
        mut guard: MutexGuard<'_, (S, VecDeque<J>)>,
        take: Take,
        rounds: &mut usize,
        round: &mut dyn FnMut(&mut S, &mut VecDeque<J>) -> Round,
    ) -> Option<bool> {
        let (state, jobs) = &mut *guard;
        loop {
            // Nothing queued as far as this thread can see: the look after the release (under
            // the lock) catches a job queued meanwhile.
            if self.queued.load(Ordering::Acquire) == 0 {
                break;
            }
            {
                let mut q = self.queue.lock();
                if q.jobs.is_empty() {
                    break;
                }
                if let Take::Try { max_rounds } = take {
                    if *rounds >= max_rounds {
                        return Some(true);
                    }
                }
                debug_assert!(jobs.is_empty(), "the spare deque is empty between rounds");
                std::mem::swap(&mut q.jobs, jobs);
                self.queued.store(0, Ordering::Release);
            }
            *rounds += 1;
            let next = round(state, jobs);
            if !jobs.is_empty() {
                // Left for later: back to the front of the queue, ahead of newer jobs.
                let mut q = self.queue.lock();
                jobs.append(&mut q.jobs);
                std::mem::swap(&mut q.jobs, jobs);
                self.queued.store(q.jobs.len(), Ordering::Release);
            }
            match next {
                Round::HandOff => return Some(true),
                Round::Stall => return Some(false),
                Round::Continue => {}
            }
        }
        // A burst (an election storm, a catch-up) can leave a deque thousands of jobs large; a
        // node that fell asleep gives that memory back (thousands of idle groups would keep
        // it all). Only then: shrinking after every run would reallocate under steady load.
        let shrink = self.shrink.swap(false, Ordering::AcqRel);
        if shrink {
            jobs.shrink_to_fit();
        }
        drop(guard);
        // Anything queued between the last look and the release is ours to run (see the module
        // docs for why this look cannot miss a job).
        let mut q = self.queue.lock();
        if q.jobs.is_empty() {
            if shrink {
                q.jobs.shrink_to_fit();
            }
            Some(false)
        } else {
            None
        }
    }

    /// The worker thread's loop: waits to be called, then runs the stage until its queue is
    /// empty; returns once the stage is closed and drained. (The raft loop, which also ticks,
    /// and the persist worker, which retries stalled writes, write their own loops with
    /// [`Stage::wait_called`].)
    pub(crate) fn work(&self, round: &mut dyn FnMut(&mut S, &mut VecDeque<J>) -> Round) {
        while self.wait_called(None) != Called::Closed {
            self.run(Take::Wait, round);
        }
    }

    /// Runs `f` on the runner's state if no runner holds it now.
    pub(crate) fn try_with_state<R>(&self, f: impl FnOnce(&mut S) -> R) -> Option<R> {
        self.state.try_lock().map(|mut s| f(&mut s.0))
    }

    /// Runs `f` on the runner's state, waiting for any runner to finish first.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut self.state.lock().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn try_run_runs_queued_jobs_in_order() {
        let stage: Stage<Vec<u32>, u32> = Stage::new(Vec::new());
        assert!(stage.push_all([1, 2, 3]));
        assert!(stage.run(Take::Try { max_rounds: 8 }, &mut |seen, jobs| {
            seen.extend(jobs.drain(..));
            Round::Continue
        }));
        assert!(stage.is_idle());
        assert_eq!(stage.with_state(|s| s.clone()), vec![1, 2, 3]);
    }

    /// The count the looks without the lock read follows every change of the queue.
    #[test]
    fn the_lock_free_looks_follow_pushes_rounds_and_jobs_left_for_later() {
        let stage: Stage<Vec<u32>, u32> = Stage::new(Vec::new());
        assert!(stage.is_idle());
        stage.push_all([1, 2, 3]);
        assert!(!stage.is_idle());
        stage.run(Take::Try { max_rounds: 1 }, &mut |seen, jobs| {
            seen.push(jobs.pop_front().expect("a job"));
            Round::HandOff
        });
        assert!(!stage.is_idle(), "jobs left for later are counted");
        stage.run(Take::Wait, &mut |seen, jobs| {
            seen.extend(jobs.drain(..));
            Round::Continue
        });
        assert!(stage.is_idle());
        assert_eq!(stage.with_state(|s| s.clone()), vec![1, 2, 3]);
        assert!(!stage.is_closed());
        stage.close();
        assert!(stage.is_closed());
    }

    #[test]
    fn a_busy_stage_is_left_to_its_runner() {
        let stage: Stage<Vec<u32>, u32> = Stage::new(Vec::new());
        let held = stage.state.lock();
        stage.push(1);
        assert!(!stage.run(Take::Try { max_rounds: 8 }, &mut |_, _| Round::Continue));
        drop(held);
        assert!(!stage.is_idle(), "the job waits for a runner");
    }

    #[test]
    fn handed_off_jobs_go_back_in_front_and_call_the_worker() {
        let stage: Stage<Vec<u32>, u32> = Stage::new(Vec::new());
        stage.push_all([1, 2, 3]);
        stage.run(Take::Try { max_rounds: 8 }, &mut |seen, jobs| {
            seen.push(jobs.pop_front().expect("a job"));
            Round::HandOff
        });
        stage.push(4);
        assert_eq!(stage.wait_called(None), Called::Yes);
        stage.run(Take::Wait, &mut |seen, jobs| {
            seen.extend(jobs.drain(..));
            Round::Continue
        });
        assert_eq!(stage.with_state(|s| s.clone()), vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_stalled_round_keeps_its_jobs_and_calls_nobody() {
        let stage: Stage<u32, u32> = Stage::new(0);
        stage.push_all([1, 2]);
        assert!(stage.run(Take::Wait, &mut |tries, _| {
            *tries += 1;
            Round::Stall
        }));
        assert_eq!(stage.with_state(|n| *n), 1, "one try, no spinning");
        assert!(!stage.is_idle(), "the jobs wait for the retry");
        assert_eq!(stage.wait_called(Some(Instant::now())), Called::Deadline, "nobody called");
        stage.run(Take::Wait, &mut |seen, jobs| {
            *seen = jobs.drain(..).sum();
            Round::Continue
        });
        assert_eq!(stage.with_state(|n| *n), 3, "the retry gets them, in order");
    }

    #[test]
    fn the_round_limit_calls_the_worker() {
        let stage: Stage<u32, u32> = Stage::new(0);
        stage.push(1);
        // Each round queues another job: an inline runner stops after its limit.
        let me = &stage;
        stage.run(Take::Try { max_rounds: 3 }, &mut |n, jobs| {
            jobs.clear();
            *n += 1;
            me.push(*n);
            Round::Continue
        });
        assert_eq!(stage.with_state(|n| *n), 3);
        assert_eq!(stage.wait_called(Some(Instant::now())), Called::Yes);
    }

    #[test]
    fn closed_stages_drop_new_jobs_and_release_the_worker() {
        let stage: Stage<(), u32> = Stage::new(());
        stage.push(1);
        stage.close();
        assert!(!stage.push(2));
        assert_eq!(stage.wait_called(None), Called::Yes, "the queued job is finished first");
        stage.run(Take::Wait, &mut |_, jobs| {
            jobs.clear();
            Round::Continue
        });
        assert_eq!(stage.wait_called(None), Called::Closed);
    }

    /// Many threads push and try to run; one worker stands by. Every job is run exactly once,
    /// and never two rounds at the same time.
    #[test]
    fn no_job_is_stranded_or_run_twice() {
        const THREADS: usize = 4;
        const JOBS: usize = 20_000;
        let stage: Arc<Stage<Vec<usize>, usize>> = Arc::new(Stage::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let round = {
            let running = running.clone();
            move |seen: &mut Vec<usize>, jobs: &mut VecDeque<usize>| {
                assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "two runners at once");
                seen.extend(jobs.drain(..));
                running.fetch_sub(1, Ordering::SeqCst);
                Round::Continue
            }
        };
        let worker = {
            let (stage, mut round) = (stage.clone(), round.clone());
            std::thread::spawn(move || stage.work(&mut round))
        };
        let pushers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (stage, mut round) = (stage.clone(), round.clone());
                std::thread::spawn(move || {
                    for i in 0..JOBS {
                        stage.push(t * JOBS + i);
                        if i % 3 == 0 {
                            stage.call_worker();
                        } else {
                            stage.run(Take::Try { max_rounds: 2 }, &mut round);
                        }
                    }
                    // The last job may be left to a runner that is still going.
                    stage.run(Take::Try { max_rounds: 2 }, &mut round);
                })
            })
            .collect();
        for p in pushers {
            p.join().expect("pusher");
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while stage.with_state(|s| s.len()) < THREADS * JOBS {
            assert!(Instant::now() < deadline, "jobs stranded in the queue");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        stage.close();
        worker.join().expect("worker");
        let mut seen = stage.with_state(std::mem::take);
        seen.sort_unstable();
        assert_eq!(seen, (0..THREADS * JOBS).collect::<Vec<_>>());
    }
}
