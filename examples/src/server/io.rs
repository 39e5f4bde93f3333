//! The client side of the server: one event-loop thread (mio) reads and parses every client
//! connection and starts the commands, handing each round's commands to each shard's node as one batch
//! (run on this thread); whoever finishes a command (the thread that applied its entry, the
//! forwarder, the loop itself) writes its reply straight to the socket, in command order.
//!
//! So a write costs no thread wake-up of its own on the way in (the loop reads every connection
//! that has bytes, then goes back to waiting) nor on the way out (the applying thread answers).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use parking_lot::Mutex;

use super::Server;
use crate::resp::{self, Parsed};

const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);
/// A connection with this many commands unanswered is not read until some are answered (a
/// client pipelining without reading its replies cannot make the server buffer without end).
const MAX_UNANSWERED: u64 = 4096;
/// Nor one with this many reply bytes the client has not taken yet.
const MAX_UNSENT_BYTES: usize = 16 << 20;
/// Replies a connection may hold unsent before it is closed: commands already started when
/// reading paused can still produce this much (a pipeline of reads of large values).
const MAX_OUTPUT_BYTES: usize = 256 << 20;
/// Unparsed bytes buffered per connection before the event loop stops reading it and starts
/// what it has (a single command may be larger; then reading goes on until it is whole).
const READ_AHEAD_BYTES: usize = 1 << 20;

/// A client connection, shared by the event loop and every thread that answers its commands.
pub(crate) struct Conn {
    stream: TcpStream,
    token: Token,
    out: Mutex<Outbox>,
    stalled: Arc<Stalled>,
    session: Mutex<Session>,
}

/// The connection's own order, as with Redis: pipelined commands take effect in the order
/// they were sent (`SET x 1`, `GET x`, `SET x 2` answers `1` to the `GET`). Writes keep their
/// order through the log; a read is served at an index that covers the writes that completed
/// before it started, and then at whatever the state is when it runs. So a read does not start
/// while writes sent before it on its connection are unanswered, nor a write while reads sent
/// before it are: the event loop stops taking the connection's commands until they are.
#[derive(Default)]
struct Session {
    /// Writes started and not yet answered.
    writes: u64,
    /// Reads started and not yet answered.
    reads: u64,
    /// The event loop waits for the counts to clear: wake it when they do.
    waiting: bool,
}

/// What a command does to the data, for the connection's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Reads keys (served without the log).
    Read,
    /// Changes keys.
    Write,
    /// Neither (PING, INFO, administration).
    Other,
}

/// Connections whose socket would not take all their replies. The event loop only watches
/// sockets for reading (watching for writability would wake it after every reply), so it is
/// told about these, and retries them until they drain.
pub(crate) struct Stalled {
    tokens: Mutex<Vec<Token>>,
    /// Connections whose next command waited for earlier ones to be answered, and may go on.
    unblocked: Mutex<Vec<Token>>,
    waker: mio::Waker,
}

/// Replies on their way out, in command order.
#[derive(Default)]
struct Outbox {
    /// The sequence number of the next reply to send.
    next: u64,
    /// Replies that arrived before an earlier one.
    early: BTreeMap<u64, Vec<u8>>,
    early_bytes: usize,
    /// Bytes not yet taken by the socket, from `sent` on.
    buf: Vec<u8>,
    sent: usize,
    /// Close once the reply with this number is sent (QUIT, a protocol error).
    close_after: Option<u64>,
    closed: bool,
    /// The event loop has been told the socket would not take everything.
    stalled: bool,
}

impl Conn {
    /// Queues reply `seq` and sends every reply that is now next in order.
    fn deliver(&self, seq: u64, reply: Vec<u8>) {
        let mut guard = self.out.lock();
        let out = &mut *guard;
        if out.closed {
            return;
        }
        if seq == out.next {
            out.buf.extend_from_slice(&reply);
            out.next += 1;
            while let Some(r) = out.early.remove(&out.next) {
                out.early_bytes -= r.len();
                out.buf.extend_from_slice(&r);
                out.next += 1;
            }
        } else {
            out.early_bytes += reply.len();
            out.early.insert(seq, reply);
        }
        if out.buf.len() - out.sent + out.early_bytes > MAX_OUTPUT_BYTES {
            tracing::warn!(
                limit = MAX_OUTPUT_BYTES,
                "a client does not take its replies: closing its connection"
            );
            out.closed = true;
        }
        self.flush(out);
    }

    /// Writes what the socket takes without blocking; the rest goes when it is writable again
    /// (the event loop is told then, and calls this again).
    fn flush(&self, out: &mut Outbox) {
        while !out.closed && out.sent < out.buf.len() {
            match (&self.stream).write(&out.buf[out.sent..]) {
                Ok(0) => {
                    out.closed = true;
                    break;
                }
                Ok(n) => out.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !out.stalled {
                        out.stalled = true;
                        self.stalled.tokens.lock().push(self.token);
                        let _ = self.stalled.waker.wake();
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    out.closed = true;
                    break;
                }
            }
        }
        out.buf.clear();
        out.sent = 0;
        out.stalled = false;
        if out.closed || out.close_after.is_some_and(|last| out.next > last) {
            out.closed = true;
            out.early.clear();
            out.early_bytes = 0;
            // The event loop sees the connection end and drops it.
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    /// Counts a command of `kind` as started, unless the connection's order says it must wait
    /// (then the event loop is woken once it may start). Returns whether it may start.
    fn start(&self, kind: Kind) -> bool {
        let mut session = self.session.lock();
        let clear = match kind {
            Kind::Read => session.writes == 0,
            Kind::Write => session.reads == 0,
            Kind::Other => true,
        };
        match (clear, kind) {
            (false, _) => session.waiting = true,
            (true, Kind::Read) => session.reads += 1,
            (true, Kind::Write) => session.writes += 1,
            (true, Kind::Other) => {}
        }
        clear
    }

    /// A command of `kind` was answered: wakes the event loop if it waits for the counts to
    /// clear.
    fn finished(&self, kind: Kind) {
        let wake = {
            let mut session = self.session.lock();
            match kind {
                Kind::Read => session.reads -= 1,
                Kind::Write => session.writes -= 1,
                Kind::Other => {}
            }
            let wake = session.waiting && (session.reads == 0 || session.writes == 0);
            if wake {
                session.waiting = false;
            }
            wake
        };
        if wake {
            self.stalled.unblocked.lock().push(self.token);
            let _ = self.stalled.waker.wake();
        }
    }

    /// Whether a client whose next command gets `next_seq` must wait for replies to drain.
    fn backlogged(&self, next_seq: u64) -> bool {
        let out = self.out.lock();
        next_seq - out.next >= MAX_UNANSWERED
            || out.buf.len() - out.sent + out.early_bytes >= MAX_UNSENT_BYTES
    }
}

/// Where one command's reply goes. Answered at most once: the first answer (the command's
/// outcome, or `-TIMEOUT` when its deadline passes) wins, later ones are dropped.
#[derive(Clone)]
pub(crate) struct ReplyTo(Arc<ReplySlot>);

struct ReplySlot {
    target: Target,
    answered: AtomicBool,
    /// Whether the command reads or writes, for the connection's order.
    kind: Kind,
    /// When the command was started.
    started: Instant,
}

/// Who takes a reply.
enum Target {
    /// The client: reply `seq` of its connection.
    Conn { conn: Arc<Conn>, seq: u64 },
    /// Part `index` of a command spread over several shards.
    Part { gather: Arc<Gather>, index: usize },
}

impl ReplyTo {
    /// Sends the reply (unless the command was answered already).
    pub(crate) fn send(&self, reply: Vec<u8>) {
        if !self.0.answered.swap(true, Ordering::AcqRel) {
            match &self.0.target {
                Target::Conn { conn, seq } => {
                    conn.deliver(*seq, reply);
                    if self.0.kind != Kind::Other {
                        conn.finished(self.0.kind);
                    }
                }
                Target::Part { gather, index } => gather.put(*index, reply),
            }
        }
    }

    fn answered(&self) -> bool {
        self.0.answered.load(Ordering::Acquire)
    }

    /// How long ago the command was started.
    pub(crate) fn age(&self) -> Duration {
        self.0.started.elapsed()
    }

    /// Splits this command into `parts` (one per shard it touches): the returned replies take
    /// the parts' answers, and once all have one, `combine` makes this command's reply.
    pub(crate) fn split(&self, parts: usize, combine: Combine) -> Vec<ReplyTo> {
        let gather = Arc::new(Gather {
            parts: Mutex::new(vec![None; parts]),
            left: std::sync::atomic::AtomicUsize::new(parts),
            combine,
            whole: self.clone(),
        });
        (0..parts)
            .map(|index| {
                ReplyTo(Arc::new(ReplySlot {
                    target: Target::Part { gather: gather.clone(), index },
                    answered: AtomicBool::new(false),
                    kind: Kind::Other,
                    started: self.0.started,
                }))
            })
            .collect()
    }
}

/// How the parts of a command spread over shards make its reply.
pub(crate) type Combine = Box<dyn Fn(Vec<Vec<u8>>) -> Vec<u8> + Send + Sync>;

/// The answers of a command's parts, gathered until all are in.
struct Gather {
    parts: Mutex<Vec<Option<Vec<u8>>>>,
    left: std::sync::atomic::AtomicUsize,
    combine: Combine,
    whole: ReplyTo,
}

impl Gather {
    fn put(&self, index: usize, reply: Vec<u8>) {
        self.parts.lock()[index] = Some(reply);
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let parts = std::mem::take(&mut *self.parts.lock());
            self.whole.send((self.combine)(parts.into_iter().flatten().collect()));
        }
    }
}

/// Commands waiting for an answer, oldest first, each with its deadline.
#[derive(Default)]
pub(crate) struct Deadlines {
    queue: VecDeque<(Instant, ReplyTo)>,
}

impl Deadlines {
    /// Answers `reply` with `-TIMEOUT` if nothing else has by `after` from now. Deadlines must
    /// be added with one `after` per queue so the queue stays ordered.
    pub(crate) fn add(&mut self, after: Duration, reply: &ReplyTo) {
        self.queue.push_back((Instant::now() + after, reply.clone()));
    }

    /// Times out what is due; returns how long until the next deadline.
    fn expire(&mut self, now: Instant) -> Option<Duration> {
        while let Some((at, reply)) = self.queue.front() {
            if reply.answered() {
                self.queue.pop_front();
            } else if *at <= now {
                let mut r = Vec::new();
                resp::error(&mut r, "TIMEOUT no answer in time; the outcome is unknown");
                reply.send(r);
                self.queue.pop_front();
            } else {
                return Some(*at - now);
            }
        }
        None
    }
}

/// The event loop's own state of a connection.
struct Client {
    conn: Arc<Conn>,
    input: Vec<u8>,
    /// The sequence number the next command gets.
    next_seq: u64,
    /// The client sent EOF (or the connection failed): no more reading.
    ended: bool,
    /// Reading is held back until replies are taken.
    paused: bool,
    /// The next command waits for earlier ones of the other kind (see [`Session`]).
    blocked: bool,
    /// The socket may have more bytes: reading stopped at `READ_AHEAD_BYTES`.
    unread: bool,
    /// QUIT or a protocol error: nothing after it is read.
    closing: bool,
}

/// Runs the event loop on the calling thread: accepts clients on `listener` and serves them
/// until the process ends.
pub(crate) fn serve(server: &Arc<Server>, listener: std::net::TcpListener) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let stalled = Arc::new(Stalled {
        tokens: Mutex::new(Vec::new()),
        unblocked: Mutex::new(Vec::new()),
        waker: mio::Waker::new(poll.registry(), WAKE)?,
    });
    let mut retry: Vec<Token> = Vec::new();
    // Connections to look at this round: those with events, and those `held` back (paused, or
    // with bytes left unread) from earlier rounds. Idle connections cost nothing.
    let mut held: HashSet<Token> = HashSet::new();
    let mut busy: Vec<Token> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut clients: HashMap<Token, Client> = HashMap::new();
    let mut next_token = 2usize;
    let mut chunk = vec![0u8; 64 << 10];
    // Local commands time out after the request timeout; forwarded ones a second later, so the
    // leader's own answer (which may be a TIMEOUT, with the same meaning) comes first.
    let mut local = Deadlines::default();
    let mut forwarded = Deadlines::default();
    loop {
        let now = Instant::now();
        let mut wait = [local.expire(now), forwarded.expire(now)].into_iter().flatten().min();
        if held.iter().any(|t| clients.get(t).is_some_and(|c| c.unread && !c.paused)) {
            wait = Some(Duration::ZERO);
        } else if !retry.is_empty() || !held.is_empty() {
            wait = Some(wait.map_or(Duration::from_millis(2), |w| w.min(Duration::from_millis(2))));
        }
        if let Err(e) = poll.poll(&mut events, wait) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            let token = event.token();
            if token == LISTENER {
                accept(&poll, &mut listener, &mut clients, &mut next_token, &stalled);
                continue;
            }
            if token == WAKE {
                retry.append(&mut stalled.tokens.lock());
                busy.append(&mut stalled.unblocked.lock());
                continue;
            }
            if let Some(client) = clients.get_mut(&token) {
                // A short read empties the socket, and bytes that arrive later raise a new edge;
                // only an end of stream must be read to (no edge follows the one that had it).
                let to_end = event.is_read_closed() || event.is_error();
                read_all(client, &mut chunk, to_end);
                busy.push(token);
            }
        }
        // Sockets that would not take every reply: try again (every 2 ms while any are left).
        retry.retain(|token| {
            let Some(client) = clients.get(token) else { return false };
            let mut out = client.conn.out.lock();
            client.conn.flush(&mut out);
            out.stalled
        });
        // Start the commands of every connection that has some (paused ones resume here).
        busy.extend(held.drain());
        busy.sort_unstable();
        busy.dedup();
        let mut gone = Vec::new();
        // This round's requests reach the node together, as one round of its core run on this
        // thread (one append to the followers, one log write).
        let mut batch = super::shards::Batches::new(server);
        for token in busy.drain(..) {
            let Some(client) = clients.get_mut(&token) else { continue };
            if client.paused && unanswered(client) < MAX_UNANSWERED / 2 {
                client.paused = false;
                client.unread = true;
            }
            if client.unread && !client.paused && client.input.len() < READ_AHEAD_BYTES {
                read_all(client, &mut chunk, true);
            }
            if !client.paused && !client.input.is_empty() {
                start_commands(server, client, &mut local, &mut forwarded, &mut batch);
            }
            // An ended client's unparsed rest is an incomplete command: nothing more comes.
            let waits = client.paused || client.blocked;
            if client.conn.out.lock().closed || (client.ended && !waits) {
                gone.push(token);
            } else if client.paused || client.unread {
                held.insert(token);
            }
        }
        // What the shards' nodes send as they take the round's requests leaves together.
        raft_core::node::gather_sends(|| batch.submit());
        for token in gone {
            // Replies still owed keep the connection (and its socket, which leaves the poll
            // when closed) until they are sent.
            clients.remove(&token);
        }
    }
}

fn accept(
    poll: &Poll,
    listener: &mut TcpListener,
    clients: &mut HashMap<Token, Client>,
    next_token: &mut usize,
    stalled: &Arc<Stalled>,
) {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.set_nodelay(true);
                let token = Token(*next_token);
                *next_token += 1;
                if let Err(err) = poll.registry().register(&mut stream, token, Interest::READABLE) {
                    tracing::warn!(%err, "cannot watch a client connection");
                    continue;
                }
                let conn = Arc::new(Conn {
                    stream,
                    token,
                    out: Mutex::new(Outbox::default()),
                    stalled: stalled.clone(),
                    session: Mutex::new(Session::default()),
                });
                let client = Client {
                    conn,
                    input: Vec::new(),
                    next_seq: 0,
                    ended: false,
                    paused: false,
                    blocked: false,
                    unread: false,
                    closing: false,
                };
                clients.insert(token, client);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                // Out of descriptors, say: the pending connection stays queued; try later.
                tracing::warn!(%err, "accept failed");
                return;
            }
        }
    }
}

fn unanswered(client: &Client) -> u64 {
    client.next_seq - client.conn.out.lock().next
}

/// Reads what the socket has (edge-triggered: until a short read, or until it would block
/// when `to_end` or after a full chunk; `unread` says to come back for more).
fn read_all(client: &mut Client, chunk: &mut [u8], to_end: bool) {
    client.unread = false;
    if client.ended || client.paused || client.closing {
        return;
    }
    loop {
        if client.input.len() >= READ_AHEAD_BYTES
            && !matches!(resp::parse_command(&client.input), Parsed::Incomplete)
        {
            client.unread = true;
            return;
        }
        match (&client.conn.stream).read(chunk) {
            Ok(0) => {
                client.ended = true;
                return;
            }
            Ok(n) => {
                client.input.extend_from_slice(&chunk[..n]);
                if n < chunk.len() && !to_end {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                client.ended = true;
                return;
            }
        }
    }
}

/// Parses and starts every complete command buffered for `client`, up to the unanswered limit.
fn start_commands(
    server: &Arc<Server>,
    client: &mut Client,
    local: &mut Deadlines,
    forwarded: &mut Deadlines,
    batch: &mut super::shards::Batches<'_>,
) {
    let mut used = 0;
    client.blocked = false;
    while !client.closing {
        if client.conn.backlogged(client.next_seq) {
            client.paused = true;
            break;
        }
        let parsed = resp::parse_command(&client.input[used..]);
        let (args, n) = match parsed {
            Parsed::Command(args, n) => (args, n),
            Parsed::Incomplete => break,
            Parsed::Invalid(why) => {
                let mut r = Vec::new();
                resp::error(&mut r, &format!("ERR Protocol error: {why}"));
                close_with(client, r);
                used = client.input.len();
                break;
            }
        };
        if args.is_empty() {
            used += n;
            continue;
        }
        let kind = super::command_kind(&args);
        if !client.conn.start(kind) {
            client.blocked = true;
            break; // Woken when the commands it waits for are answered.
        }
        used += n;
        if args[0].eq_ignore_ascii_case(b"QUIT") {
            close_with(client, b"+OK\r\n".to_vec());
            used = client.input.len();
            break;
        }
        let reply = ReplyTo(Arc::new(ReplySlot {
            target: Target::Conn { conn: client.conn.clone(), seq: client.next_seq },
            answered: AtomicBool::new(false),
            kind,
            started: Instant::now(),
        }));
        client.next_seq += 1;
        match server.start_command(args, false, &reply, batch) {
            super::Waits::No => {}
            super::Waits::Local => local.add(server.args.request_timeout, &reply),
            super::Waits::Forwarded => {
                forwarded.add(server.args.request_timeout + Duration::from_secs(1), &reply)
            }
        }
    }
    client.input.drain(..used);
}

/// Answers with `reply` as the connection's last reply, then closes it.
fn close_with(client: &mut Client, reply: Vec<u8>) {
    let seq = client.next_seq;
    client.next_seq += 1;
    client.closing = true;
    client.conn.out.lock().close_after = Some(seq);
    client.conn.deliver(seq, reply);
}
