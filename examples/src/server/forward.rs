//! Forwarding a follower's commands to the leader: one pipelined connection per leader, a
//! writer thread that batches queued commands into one write, and a reader thread that hands
//! each reply, in order, to the command it answers.

use std::collections::VecDeque;
use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::io::ReplyTo;
use super::no_leader;
use crate::resp;

/// Where a forwarded write goes when the node it reached did nothing with it (`-NOLEADER`: it
/// no longer leads): back to the server, to be started again towards the new leader.
pub(crate) type Retry = Arc<dyn Fn(Vec<Vec<u8>>, ReplyTo) + Send + Sync>;

/// A command on its way to the leader.
struct Forwarded {
    request: Vec<u8>,
    reply: ReplyTo,
    read_only: bool,
    /// A write's words, to start it again if the node it reached no longer leads.
    write: Option<Vec<Vec<u8>>>,
}

/// A command sent and not yet answered.
struct Waiting {
    sent: Instant,
    reply: ReplyTo,
    read_only: bool,
    write: Option<Vec<Vec<u8>>>,
}

/// Commands sent on one connection and not yet answered, oldest first.
#[derive(Default)]
struct InFlight {
    waiting: VecDeque<Waiting>,
    /// The connection failed: everything in it was answered, nothing more may be added.
    dead: bool,
}

impl InFlight {
    /// Answers every waiting command after the connection failed: a read did nothing (retry
    /// is safe), a write may or may not have happened.
    fn fail_all(&mut self) {
        self.dead = true;
        for Waiting { reply, read_only, .. } in self.waiting.drain(..) {
            if read_only {
                reply.send(no_leader());
            } else {
                let mut r = Vec::new();
                resp::error(
                    &mut r,
                    "TIMEOUT lost the connection to the leader; the outcome is unknown",
                );
                reply.send(r);
            }
        }
    }
}

/// The way to one leader's client port.
pub(crate) struct Forwarder {
    queue: Mutex<Sender<Forwarded>>,
}

/// What the reader hands a reply to.
struct Replies {
    in_flight: Arc<Mutex<InFlight>>,
    retry: Retry,
}

impl Forwarder {
    /// Starts the writer thread for the leader at `addr`. A command that got no reply within
    /// `stuck_after` marks the leader stuck: the connection is closed and its commands answered.
    /// Writes the node that gets them refuses with `-NOLEADER` go to `retry`.
    pub(crate) fn start(
        addr: SocketAddr,
        stuck_after: Duration,
        retry: Retry,
    ) -> std::io::Result<Forwarder> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("forward-{addr}"))
            .spawn(move || writer(addr, rx, stuck_after, retry))?;
        Ok(Forwarder { queue: Mutex::new(tx) })
    }

    /// Sends the command (its words, without the `RAFTKIT.LEADER` prefix) to the leader.
    pub(crate) fn send(&self, args: &[Vec<u8>], read_only: bool, reply: ReplyTo) {
        let mut request = Vec::new();
        let mut parts: Vec<&[u8]> = vec![b"RAFTKIT.LEADER"];
        parts.extend(args.iter().map(Vec::as_slice));
        resp::command(&mut request, &parts);
        let write = (!read_only).then(|| args.to_vec());
        let job = Forwarded { request, reply, read_only, write };
        if let Err(mpsc::SendError(job)) = self.queue.lock().send(job) {
            job.reply.send(no_leader());
        }
    }
}

/// One live connection to the leader.
struct Link {
    stream: TcpStream,
    in_flight: Arc<Mutex<InFlight>>,
}

fn connect(addr: SocketAddr, retry: &Retry) -> Option<Link> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    let _ = stream.set_nodelay(true);
    let in_flight = Arc::new(Mutex::new(InFlight::default()));
    let read_half = stream.try_clone().ok()?;
    let replies = Replies { in_flight: in_flight.clone(), retry: retry.clone() };
    std::thread::Builder::new()
        .name(format!("forward-{addr}-replies"))
        .spawn(move || reader(read_half, replies))
        .ok()?;
    Some(Link { stream, in_flight })
}

fn writer(addr: SocketAddr, jobs: Receiver<Forwarded>, stuck_after: Duration, retry: Retry) {
    let mut link: Option<Link> = None;
    let mut buf = Vec::new();
    loop {
        let first = match jobs.recv_timeout(Duration::from_millis(500)) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // A leader that stopped answering (SIGSTOPped, say) gets its connection closed, which
        // answers everything waiting on it.
        if let Some(l) = &link {
            let f = l.in_flight.lock();
            let stuck = f.waiting.front().is_some_and(|w| w.sent.elapsed() > stuck_after);
            if f.dead || stuck {
                drop(f);
                let _ = l.stream.shutdown(Shutdown::Both);
                l.in_flight.lock().fail_all();
                link = None;
            }
        }
        let Some(first) = first else { continue };
        let mut batch = vec![first];
        batch.extend(jobs.try_iter().take(1023));
        if link.is_none() {
            link = connect(addr, &retry);
        }
        let Some(l) = &link else {
            // Nothing was sent.
            for job in batch {
                job.reply.send(no_leader());
            }
            continue;
        };
        buf.clear();
        {
            let mut f = l.in_flight.lock();
            if f.dead {
                drop(f);
                for job in batch {
                    job.reply.send(no_leader());
                }
                link = None;
                continue;
            }
            let now = Instant::now();
            for job in batch {
                buf.extend_from_slice(&job.request);
                let Forwarded { reply, read_only, write, .. } = job;
                f.waiting.push_back(Waiting { sent: now, reply, read_only, write });
            }
        }
        if (&l.stream).write_all(&buf).is_err() {
            // Some may have been sent: the reader answers them all as unknown.
            let _ = l.stream.shutdown(Shutdown::Both);
            link = None;
        }
    }
    if let Some(l) = link {
        let _ = l.stream.shutdown(Shutdown::Both);
    }
}

fn reader(stream: TcpStream, replies: Replies) {
    let mut input = BufReader::new(stream);
    loop {
        let mut raw = Vec::new();
        if resp::read_reply(&mut input, Some(&mut raw)).is_err() {
            break;
        }
        let Some(waiting) = replies.in_flight.lock().waiting.pop_front() else {
            break; // A reply to nothing: the stream is out of step.
        };
        match waiting.write {
            // The node no longer leads and did nothing: the write goes to the new leader.
            Some(args) if raw.starts_with(b"-NOLEADER") => (replies.retry)(args, waiting.reply),
            _ => waiting.reply.send(raw),
        }
    }
    let _ = input.get_ref().shutdown(Shutdown::Both);
    replies.in_flight.lock().fail_all();
}
