//! A one-shot reply slot: the driver fills it, a client thread waits on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::NodeError;

struct Slot<T> {
    value: Mutex<Option<Result<T, NodeError>>>,
    filled: Condvar,
}

/// The driver's side of a reply. Dropping it unfilled answers [`NodeError::Stopped`], so a
/// client never waits on a request the driver forgot (it shut down, or a thread failed).
pub(crate) struct Reply<T> {
    slot: Option<Arc<Slot<T>>>,
}

impl<T> Reply<T> {
    /// Answers the waiting client.
    pub(crate) fn send(mut self, value: Result<T, NodeError>) {
        if let Some(slot) = self.slot.take() {
            *slot.value.lock() = Some(value);
            slot.filled.notify_one();
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut value = slot.value.lock();
            if value.is_none() {
                *value = Some(Err(NodeError::Stopped));
            }
            drop(value);
            slot.filled.notify_one();
        }
    }
}

/// A request handed to a [`Node`](super::Node) whose answer has not been collected yet.
///
/// Returned by [`Node::propose_async`](super::Node::propose_async) and
/// [`Node::read_async`](super::Node::read_async), so that one thread can have many requests in
/// flight (a server answering a pipelining client, say) and collect the answers in order.
#[must_use = "the answer is only known by waiting for it"]
pub struct Pending<T> {
    slot: Arc<Slot<T>>,
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("answered", &self.slot.value.lock().is_some()).finish()
    }
}

impl<T> Pending<T> {
    /// Waits at most `timeout` for the answer. [`NodeError::Timeout`] means the outcome is
    /// unknown: a write may still take effect later.
    pub fn wait(self, timeout: Duration) -> Result<T, NodeError> {
        let deadline = Instant::now() + timeout;
        let mut value = self.slot.value.lock();
        while value.is_none() {
            if self.slot.filled.wait_until(&mut value, deadline).timed_out() {
                break;
            }
        }
        value.take().unwrap_or(Err(NodeError::Timeout(timeout)))
    }

    /// The answer, if it has arrived.
    pub fn try_take(&self) -> Option<Result<T, NodeError>> {
        self.slot.value.lock().take()
    }
}

/// A new reply slot: the driver's end and the client's end.
pub(crate) fn reply_pair<T>() -> (Reply<T>, Pending<T>) {
    let slot = Arc::new(Slot { value: Mutex::new(None), filled: Condvar::new() });
    (Reply { slot: Some(slot.clone()) }, Pending { slot })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_before_wait() {
        let (reply, pending) = reply_pair::<u32>();
        reply.send(Ok(7));
        assert_eq!(pending.wait(Duration::from_millis(1)).ok(), Some(7));
    }

    #[test]
    fn dropped_reply_means_stopped() {
        let (reply, pending) = reply_pair::<u32>();
        drop(reply);
        assert!(matches!(pending.wait(Duration::from_secs(5)), Err(NodeError::Stopped)));
    }

    #[test]
    fn unanswered_times_out() {
        let (_reply, pending) = reply_pair::<u32>();
        assert!(matches!(pending.wait(Duration::from_millis(5)), Err(NodeError::Timeout(_))));
    }

    #[test]
    fn answered_from_another_thread() {
        let (reply, pending) = reply_pair::<u32>();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            reply.send(Ok(3));
        });
        assert_eq!(pending.wait(Duration::from_secs(5)).ok(), Some(3));
        t.join().expect("thread");
    }
}
