//! A one-shot reply slot: the driver fills it, a client thread waits on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::NodeError;

struct Slot<T> {
    value: Mutex<Option<Result<T, NodeError>>>,
    filled: Condvar,
}

/// A callback that takes a request's answer.
pub(crate) type Callback<T> = Box<dyn FnOnce(Result<T, NodeError>) + Send>;

enum Target<T> {
    Slot(Arc<Slot<T>>),
    Callback(Callback<T>),
}

/// The driver's side of a reply: a slot a client thread waits on, or a callback. Dropping it
/// unanswered answers [`NodeError::Stopped`], so a client never waits on a request the driver
/// forgot (it shut down, or a thread failed).
pub(crate) struct Reply<T> {
    target: Option<Target<T>>,
}

impl<T> Reply<T> {
    /// A reply delivered by calling `f` (on whichever driver thread answers).
    pub(crate) fn callback(f: Callback<T>) -> Reply<T> {
        Reply { target: Some(Target::Callback(f)) }
    }

    /// Answers the waiting client.
    pub(crate) fn send(mut self, value: Result<T, NodeError>) {
        match self.target.take() {
            Some(Target::Slot(slot)) => {
                *slot.value.lock() = Some(value);
                slot.filled.notify_one();
            }
            Some(Target::Callback(f)) => f(value),
            None => {}
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        match self.target.take() {
            Some(Target::Slot(slot)) => {
                let mut value = slot.value.lock();
                if value.is_none() {
                    *value = Some(Err(NodeError::Stopped));
                }
                drop(value);
                slot.filled.notify_one();
            }
            Some(Target::Callback(f)) => f(Err(NodeError::Stopped)),
            None => {}
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
    (Reply { target: Some(Target::Slot(slot.clone())) }, Pending { slot })
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
    fn callback_gets_the_answer_or_stopped() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        Reply::callback(Box::new(move |r: Result<u32, NodeError>| g.lock().push(r.ok())))
            .send(Ok(4));
        let g = got.clone();
        drop(Reply::callback(Box::new(move |r: Result<u32, NodeError>| g.lock().push(r.ok()))));
        assert_eq!(*got.lock(), vec![Some(4), None]);
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
