//! How much applying one client entry costs, as the node driver estimates it to decide whether
//! a thread that brought other work (a transport reader delivering every group's messages, a
//! server's event loop) may apply a group's entries itself.
//!
//! A machine whose entries are slow is applied by its own apply thread, so it never holds up
//! the messages of other groups; one whose entries are cheap is applied inline, which saves a
//! hand-off per round. The estimate jumps to a slower sample, so a machine that turns slow is
//! moved off the inline path after the entry that showed it, and comes down an eighth of the
//! way with each faster one, so a machine must be fast for a while to be trusted.
//!
//! One exception: a sample slow enough to refuse inline applying but no slower than
//! [`CONFIRM_NS_MAX`] counts only when the sample before it was slow too. A thread preempted
//! in the middle of an entry (a few milliseconds on a busy machine, often on two cores) looks
//! exactly like that, and each such sample sent every later round of the group to the apply
//! thread until the estimate came down again. A machine really that slow waits one more entry
//! (at most [`CONFIRM_NS_MAX`]) before it is moved off; anything slower is believed at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Entries are applied inline only while they are estimated to cost at most this much each.
pub(super) const INLINE_NS_MAX: u64 = 50_000;
/// Client entries a machine must have been timed on before it may be applied inline (a
/// leader's no-ops and read barriers, which the machine does not really work on, do not count).
pub(super) const TRUST_ENTRIES: u64 = 32;
/// The slowest sample that must be seen twice in a row to be believed (see the module docs).
pub(super) const CONFIRM_NS_MAX: u64 = 2_000_000;
/// The estimate before anything was measured: unknown, so nothing is applied inline until the
/// apply thread has timed some entries.
const UNKNOWN: u64 = u64::MAX;

/// The estimate. Written only by whoever applies (one thread at a time: the apply stage has one
/// runner), read by any thread.
pub(crate) struct ApplyCost {
    /// Estimated nanoseconds per client entry.
    ns: AtomicU64,
    /// Client entries timed so far (saturating at [`TRUST_ENTRIES`]).
    timed: AtomicU64,
    /// The last sample was too slow for inline applying but not believed yet.
    slow_unconfirmed: AtomicBool,
}

impl Default for ApplyCost {
    fn default() -> ApplyCost {
        ApplyCost {
            ns: AtomicU64::new(UNKNOWN),
            timed: AtomicU64::new(0),
            slow_unconfirmed: AtomicBool::new(false),
        }
    }
}

impl ApplyCost {
    /// Whether applying is known to be cheap enough to run on a thread that brought other work:
    /// timed on enough client entries, and each costs little.
    pub(crate) fn cheap(&self) -> bool {
        self.timed.load(Ordering::Relaxed) >= TRUST_ENTRIES
            && self.ns.load(Ordering::Relaxed) <= INLINE_NS_MAX
    }

    /// Folds the time one apply call took for `entries` client entries into the estimate.
    pub(crate) fn note(&self, elapsed: Duration, entries: usize) {
        if entries == 0 {
            return;
        }
        let sample = u64::try_from(elapsed.as_nanos() / entries as u128).unwrap_or(u64::MAX - 1);
        let old = self.ns.load(Ordering::Relaxed);
        let slow = sample > INLINE_NS_MAX;
        let unconfirmed = slow && sample <= CONFIRM_NS_MAX && old != UNKNOWN;
        let believed = !unconfirmed || self.slow_unconfirmed.load(Ordering::Relaxed);
        self.slow_unconfirmed.store(unconfirmed && !believed, Ordering::Relaxed);
        let new = if old == UNKNOWN || (sample >= old && believed) {
            sample
        } else if sample >= old {
            old // A lone slow sample: not believed yet.
        } else {
            old - (old - sample) / 8
        };
        self.ns.store(new, Ordering::Relaxed);
        let timed = self.timed.load(Ordering::Relaxed);
        if timed < TRUST_ENTRIES {
            self.timed.store(timed + entries as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// A machine trusted after [`TRUST_ENTRIES`] fast entries.
    fn trusted() -> ApplyCost {
        let cost = ApplyCost::default();
        assert!(!cost.cheap(), "unknown until timed");
        cost.note(us(2), TRUST_ENTRIES as usize);
        assert!(cost.cheap());
        cost
    }

    #[test]
    fn a_lone_slow_sample_is_not_believed_but_two_in_a_row_are() {
        let cost = trusted();
        cost.note(us(400), 1); // Preempted mid-entry, say.
        assert!(cost.cheap(), "one slow sample between fast ones");
        cost.note(us(2), 1);
        cost.note(us(400), 1);
        assert!(cost.cheap(), "slow samples apart are each alone");
        cost.note(us(400), 1);
        assert!(!cost.cheap(), "the second slow sample in a row is believed");
        // Trusted again only after fast samples bring it down.
        cost.note(us(2), 1);
        assert!(!cost.cheap());
        for _ in 0..64 {
            cost.note(us(2), 1);
        }
        assert!(cost.cheap());
    }

    #[test]
    fn a_sample_slower_than_any_preemption_is_believed_at_once() {
        let cost = trusted();
        cost.note(Duration::from_millis(50), 1);
        assert!(!cost.cheap(), "a 50 ms entry moves the machine off the inline path at once");
    }

    #[test]
    fn the_first_samples_set_the_estimate_whatever_they_are() {
        let cost = ApplyCost::default();
        cost.note(us(400) * TRUST_ENTRIES as u32, TRUST_ENTRIES as usize);
        assert!(!cost.cheap(), "a machine slow from the start is not trusted");
    }
}
