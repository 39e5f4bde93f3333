//! A doorbell that wakes every thread waiting on it with one system call.
//!
//! Callers of `sync` wait for the sync that covers them. Unparking each of them one by one costs
//! the leader one `futex` call, and on a virtual machine one inter-processor interrupt, per
//! caller: with 16 callers per round that serial chain was longer than the fdatasync itself.
//! Ringing wakes them all with a single `FUTEX_WAKE`, which lets the kernel queue every wake-up
//! for a CPU behind one interrupt. Those a ring did not cover look again and wait for the next.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Threads wait for the ring after the one they saw; a ring wakes all of them.
pub(crate) struct Doorbell {
    /// Rings so far (wrapping); the futex word.
    rings: AtomicU32,
    #[cfg(not(target_os = "linux"))]
    fallback: (parking_lot::Mutex<()>, parking_lot::Condvar),
}

impl Doorbell {
    pub(crate) fn new() -> Doorbell {
        Doorbell {
            rings: AtomicU32::new(0),
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
        self.rings.fetch_add(1, Ordering::AcqRel);
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
