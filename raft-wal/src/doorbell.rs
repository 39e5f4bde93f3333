//! A doorbell that wakes every thread waiting on it with one system call.
//!
//! Callers of `sync` wait for the sync that covers them. Unparking each of them one by one costs
//! the leader one `futex` call, and on a virtual machine one inter-processor interrupt, per
//! caller: with 16 callers per round that serial chain was longer than the fdatasync itself.
//! Ringing wakes them all with a single `FUTEX_WAKE`, which lets the kernel queue every wake-up
//! for a CPU behind one interrupt. Those a ring did not cover look again and wait for the next.
//!
//! A waiter that expects the ring soon can first yield the CPU in a loop
//! ([`Doorbell::wait_spinning`]). On a virtual machine a CPU with nothing to run halts, and
//! waking a thread there costs an interrupt through the hypervisor: tens of microseconds per
//! thread, paid while the disk has nothing to do. A ring with nobody asleep makes no system call.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Threads wait for the ring after the one they saw; a ring wakes all of them.
pub(crate) struct Doorbell {
    /// Rings so far (wrapping); the futex word.
    rings: AtomicU32,
    /// Threads in (or about to enter) `FUTEX_WAIT`; a ring that reads zero after counting
    /// itself skips the system call. Both sides use `SeqCst`: a waiter counts itself before the
    /// kernel compares `rings`, a ringer counts the ring before it reads `sleepers`, so either
    /// the ringer sees the sleeper or the sleeper's compare sees the ring.
    sleepers: AtomicU32,
    #[cfg(not(target_os = "linux"))]
    fallback: (parking_lot::Mutex<()>, parking_lot::Condvar),
}

impl Doorbell {
    pub(crate) fn new() -> Doorbell {
        Doorbell {
            rings: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            #[cfg(not(target_os = "linux"))]
            fallback: (parking_lot::Mutex::new(()), parking_lot::Condvar::new()),
        }
    }

    /// The current ring: read it before deciding to wait (under the lock that the ringer
    /// holds when it rings), then pass it to [`Doorbell::wait`], so no ring is missed.
    pub(crate) fn seen(&self) -> u32 {
        self.rings.load(Ordering::Acquire)
    }

    /// Wakes every waiter.
    pub(crate) fn ring(&self) {
        self.rings.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) == 0 {
            return;
        }
        #[cfg(target_os = "linux")]
        // SAFETY: FUTEX_WAKE only reads the address as a key to find waiters; `rings` is a
        // live, aligned u32 for as long as `self` is borrowed. The extra arguments are ignored
        // by FUTEX_WAKE.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.rings.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            );
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _g = self.fallback.0.lock();
            self.fallback.1.notify_all();
        }
    }

    /// Waits until a ring after `seen`, or `timeout`, or a spurious wake-up: the caller looks
    /// at what it waits for again either way.
    pub(crate) fn wait(&self, seen: u32, timeout: Option<Duration>) {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        self.sleep(seen, timeout);
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Like [`Doorbell::wait`] until `deadline`, but first yields the CPU in a loop for up to
    /// `spin`, and sleeps only if the ring has not come by then.
    pub(crate) fn wait_spinning(&self, seen: u32, spin: Duration, deadline: Option<Instant>) {
        if !spin.is_zero() {
            let start = Instant::now();
            let until = deadline.map_or(start + spin, |d| d.min(start + spin));
            while self.seen() == seen {
                if Instant::now() >= until {
                    break;
                }
                std::thread::yield_now();
            }
        }
        let now = Instant::now();
        if self.seen() != seen || deadline.is_some_and(|d| d <= now) {
            return;
        }
        self.wait(seen, deadline.map(|d| d - now));
    }

    fn sleep(&self, seen: u32, timeout: Option<Duration>) {
        #[cfg(target_os = "linux")]
        {
            let ts = timeout.map(|t| libc::timespec {
                tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: t.subsec_nanos() as libc::c_long,
            });
            let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: FUTEX_WAIT reads the u32 at `rings` (live and aligned while `self` is
            // borrowed) and, if it still equals `seen`, sleeps; `ts_ptr` is null or points to a
            // timespec that lives until the call returns. Any error (EAGAIN: already rung,
            // EINTR, ETIMEDOUT) just returns to the caller, which looks again.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.rings.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    seen,
                    ts_ptr,
                    std::ptr::null::<u32>(),
                    0u32,
                );
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let mut g = self.fallback.0.lock();
            if self.rings.load(Ordering::Acquire) != seen {
                return;
            }
            match timeout {
                Some(t) => {
                    self.fallback.1.wait_for(&mut g, t);
                }
                None => self.fallback.1.wait(&mut g),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_ring_wakes_every_waiter() {
        let bell = Arc::new(Doorbell::new());
        let woken = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicUsize::new(0));
        let seen = bell.seen();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (bell, woken, ready) =
                    (Arc::clone(&bell), Arc::clone(&woken), Arc::clone(&ready));
                std::thread::spawn(move || {
                    ready.fetch_add(1, Ordering::AcqRel);
                    while bell.seen() == seen {
                        bell.wait(seen, None);
                    }
                    woken.fetch_add(1, Ordering::AcqRel);
                })
            })
            .collect();
        while ready.load(Ordering::Acquire) < 8 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(woken.load(Ordering::Acquire), 0, "nobody wakes before the ring");
        bell.ring();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(woken.load(Ordering::Acquire), 8);
    }

    /// Two threads hand a turn back and forth through two bells, many times, sleeping and
    /// spinning in turn: a ring that skipped its system call while the other side was about to
    /// sleep would leave both waiting, and the watchdog fails the test.
    #[test]
    fn no_ring_is_lost_when_nobody_seems_asleep() {
        const ROUNDS: u32 = 20_000;
        let bells = Arc::new([Doorbell::new(), Doorbell::new()]);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let players: Vec<_> = (0..2usize)
            .map(|me| {
                let (bells, done_tx) = (Arc::clone(&bells), done_tx.clone());
                std::thread::spawn(move || {
                    for round in 0..ROUNDS {
                        if me == 1 || round > 0 {
                            // Wait for the other's ring number `round + (me == 1)`.
                            let want = round + u32::from(me == 1);
                            loop {
                                let seen = bells[me].seen();
                                if seen >= want {
                                    break;
                                }
                                if round % 2 == 0 {
                                    bells[me].wait(seen, None);
                                } else {
                                    bells[me].wait_spinning(seen, Duration::from_micros(5), None);
                                }
                            }
                        }
                        bells[1 - me].ring();
                    }
                    done_tx.send(()).unwrap();
                })
            })
            .collect();
        for _ in 0..2 {
            done_rx.recv_timeout(Duration::from_secs(60)).expect("a ring was lost: both wait");
        }
        players.into_iter().for_each(|t| t.join().unwrap());
    }

    #[test]
    fn a_spinning_wait_returns_on_the_ring_or_at_its_deadline() {
        let bell = Arc::new(Doorbell::new());
        let seen = bell.seen();
        let ringer = {
            let bell = Arc::clone(&bell);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(5));
                bell.ring();
            })
        };
        // Spins 1 ms, then sleeps until the ring (no deadline).
        while bell.seen() == seen {
            bell.wait_spinning(seen, Duration::from_millis(1), None);
        }
        ringer.join().unwrap();
        let t0 = Instant::now();
        let seen = bell.seen();
        bell.wait_spinning(seen, Duration::from_secs(5), Some(t0 + Duration::from_millis(20)));
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(20), "returned before its deadline: {took:?}");
        assert!(took < Duration::from_secs(5), "spun past its deadline: {took:?}");
    }

    #[test]
    fn a_missed_ring_is_not_waited_for_and_a_timeout_returns() {
        let bell = Doorbell::new();
        let seen = bell.seen();
        bell.ring();
        let t0 = Instant::now();
        bell.wait(seen, None); // already rung: returns at once, or this test never ends
        bell.wait(bell.seen(), Some(Duration::from_millis(30))); // nobody rings: times out
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
