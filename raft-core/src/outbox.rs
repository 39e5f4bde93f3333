//! Messages that leave together: while a thread works through a batch (a runtime lane's tasks,
//! the shared sync's callbacks, a transport reader's burst of frames handed to many groups),
//! what every node sends is gathered and handed to each transport once at the end, sorted by
//! peer, so a transport that writes one frame run per call writes to each peer once for the
//! whole batch instead of once per group.
//!
//! Gathering only delays a send to the end of the batch; messages to one peer keep their order
//! (the sort is stable), and messages that promise durability are still released only after
//! their sync (they enter the outbox no sooner than they would have been sent).

use std::cell::RefCell;
use std::sync::Arc;

use crate::message::Message;
use crate::transport::Transport;

/// Each transport with what it is to send.
type Gathered = Vec<(Arc<dyn Transport>, Vec<Message>)>;

thread_local! {
    /// `Some` while a batch gathers on this thread.
    static OUTBOX: RefCell<Option<Gathered>> = const { RefCell::new(None) };
}

/// Sends `msgs` through `transport`: now, or at the end of the batch gathering on this thread.
pub(crate) fn send_all(transport: &Arc<dyn Transport>, msgs: Vec<Message>) {
    if msgs.is_empty() {
        return;
    }
    let rest = OUTBOX.with_borrow_mut(|outbox| match outbox {
        Some(gathered) => {
            match gathered.iter_mut().find(|(t, _)| same(t, transport)) {
                Some((_, queued)) => queued.extend(msgs),
                None => gathered.push((transport.clone(), msgs)),
            }
            None
        }
        None => Some(msgs),
    });
    if let Some(msgs) = rest {
        transport.send_all(msgs);
    }
}

/// Runs `f`, gathering what the nodes send on this thread meanwhile and sending it when `f`
/// returns, one call per transport with the messages sorted by peer. Inside another gathering
/// it just runs `f` (the outer one sends).
pub fn gathered<R>(f: impl FnOnce() -> R) -> R {
    let outer = OUTBOX.with_borrow_mut(|outbox| {
        let outer = outbox.is_some();
        if !outer {
            *outbox = Some(Vec::new());
        }
        outer
    });
    if outer {
        return f();
    }
    // Sent even if `f` panics, so no message is stranded on the thread.
    struct Flush;
    impl Drop for Flush {
        fn drop(&mut self) {
            let gathered = OUTBOX.with_borrow_mut(Option::take).unwrap_or_default();
            for (transport, mut msgs) in gathered {
                msgs.sort_by_key(|m| m.to);
                transport.send_all(msgs);
            }
        }
    }
    let _flush = Flush;
    f()
}

/// Whether two handles name the same transport.
fn same(a: &Arc<dyn Transport>, b: &Arc<dyn Transport>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Heartbeat, MessageBody};
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Vec<(u64, u64)>>>);

    impl Transport for Recorder {
        fn send(&self, msg: Message) {
            self.send_all(vec![msg]);
        }
        fn send_all(&self, msgs: Vec<Message>) {
            self.0.lock().push(msgs.iter().map(|m| (m.to, m.group)).collect());
        }
    }

    fn msg(group: u64, to: u64) -> Message {
        Message {
            group,
            from: 1,
            to,
            term: 1,
            body: MessageBody::Heartbeat(Heartbeat { commit: 0, round: 0 }),
        }
    }

    #[test]
    fn a_batch_sends_once_per_transport_sorted_by_peer_keeping_each_peers_order() {
        let rec = Arc::new(Recorder::default());
        let t: Arc<dyn Transport> = rec.clone();
        gathered(|| {
            send_all(&t, vec![msg(1, 3), msg(1, 2)]);
            gathered(|| send_all(&t, vec![msg(2, 2), msg(2, 3)]));
            assert!(rec.0.lock().is_empty(), "nothing leaves before the batch ends");
        });
        assert_eq!(*rec.0.lock(), vec![vec![(2, 1), (2, 2), (3, 1), (3, 2)]]);
        // Outside a batch, a send goes at once.
        send_all(&t, vec![msg(5, 2)]);
        assert_eq!(rec.0.lock().len(), 2);
    }
}
