//! One peer: its queues, its connection, its writer and reader threads, its counters.

use std::collections::VecDeque;
use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use raft_core::message::MessageBody;
use raft_core::{Message, NodeId};

use crate::frame::{encode_frame, read_frame, FrameError};
use crate::{dial, Inner, PeerMetrics, TcpConfig};

/// Most messages written in one batch (one write call).
const BATCH_MAX: usize = 1024;

#[derive(Debug, Default)]
struct Counters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    bad_frames: AtomicU64,
    refused: AtomicU64,
}

struct Conn {
    stream: Arc<TcpStream>,
    generation: u64,
}

#[derive(Default)]
struct State {
    control: VecDeque<Message>,
    bulk: VecDeque<Message>,
    conn: Option<Conn>,
    generation: u64,
    connections: u64,
    closed: bool,
    /// Someone (the writer thread, or a sender writing directly) is writing to the
    /// connection; nobody else may.
    writing: bool,
    /// The end of a frame a direct send could not finish, for the writer to send first (only
    /// on the connection of generation `leftover_generation`).
    leftover: Vec<u8>,
    leftover_generation: u64,
}

impl State {
    fn idle(&self) -> bool {
        self.control.is_empty() && self.bulk.is_empty() && self.leftover.is_empty()
    }
}

/// A peer of this node.
pub(crate) struct Peer {
    pub(crate) id: NodeId,
    pub(crate) addr: SocketAddr,
    state: Mutex<State>,
    wake: Condvar,
    queue_capacity: usize,
    bulk_capacity: usize,
    counters: Counters,
}

impl Peer {
    pub(crate) fn new(id: NodeId, addr: SocketAddr, config: &TcpConfig) -> Peer {
        Peer {
            id,
            addr,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            queue_capacity: config.queue_capacity,
            bulk_capacity: config.bulk_queue_capacity,
            counters: Counters::default(),
        }
    }

    /// Sends messages: straight to the socket from the caller's thread, in one write, when
    /// nothing is queued or being written and the socket takes them without blocking (which
    /// spares a thread wake-up on every message of a lightly loaded node); otherwise queues
    /// them for the writer, dropping (and counting) what its queue has no room for.
    pub(crate) fn enqueue(&self, mut msgs: Vec<Message>, max_frame_bytes: u32) {
        let bulk = |m: &Message| matches!(m.body, MessageBody::InstallSnapshot(_));
        let mut st = self.state.lock();
        if st.closed {
            return;
        }
        if !st.writing && st.idle() && !msgs.iter().any(bulk) {
            if let Some(conn) = &st.conn {
                let (stream, generation) = (conn.stream.clone(), conn.generation);
                st.writing = true;
                drop(st);
                self.send_now(&msgs, &stream, generation, max_frame_bytes);
                return;
            }
        }
        let was_idle = st.control.is_empty() && st.bulk.is_empty();
        let mut dropped = 0u64;
        for msg in msgs.drain(..) {
            let (queue, capacity) = if bulk(&msg) {
                (&mut st.bulk, self.bulk_capacity)
            } else {
                (&mut st.control, self.queue_capacity)
            };
            if queue.len() >= capacity {
                dropped += 1;
            } else {
                queue.push_back(msg);
            }
        }
        let queued = !(st.control.is_empty() && st.bulk.is_empty());
        drop(st);
        if dropped > 0 {
            let before = self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
            if (before + 1..=before + dropped).any(u64::is_power_of_two) {
                tracing::warn!(
                    peer = self.id,
                    dropped = before + dropped,
                    "send queue full: dropping messages"
                );
            }
        }
        if was_idle && queued {
            self.wake.notify_one();
        }
    }

    /// Writes messages without blocking, as the connection's current writer (`writing` is
    /// set); what the socket does not take is left for the writer thread.
    fn send_now(
        &self,
        msgs: &[Message],
        stream: &TcpStream,
        generation: u64,
        max_frame_bytes: u32,
    ) {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| {
            buf.clear();
            let mut frames = 0u64;
            for msg in msgs {
                let start = buf.len();
                match encode_frame(msg, buf) {
                    Ok(()) if buf.len() - start - 8 <= max_frame_bytes as usize => frames += 1,
                    result => {
                        buf.truncate(start);
                        self.count_oversized(msg, result, max_frame_bytes);
                    }
                }
            }
            let outcome = if buf.is_empty() { Ok(0) } else { send_nonblocking(stream, buf) };
            let mut st = self.state.lock();
            st.writing = false;
            let mut lost = false;
            match outcome {
                Ok(n) => {
                    self.counters.frames_sent.fetch_add(frames, Ordering::Relaxed);
                    self.counters.bytes_sent.fetch_add(buf.len() as u64, Ordering::Relaxed);
                    if n < buf.len() {
                        st.leftover.extend_from_slice(&buf[n..]);
                        st.leftover_generation = generation;
                    }
                }
                Err(err) => {
                    tracing::info!(peer = self.id, %err, "connection lost while writing");
                    lost = true;
                }
            }
            let wake = !st.idle();
            drop(st);
            if lost {
                self.disconnect(generation);
            } else if wake {
                self.wake.notify_all();
            }
            if buf.capacity() > 4 << 20 {
                *buf = Vec::new(); // Do not keep a large append's buffer.
            }
        });
    }

    /// Counts and logs a message too large for a frame (dropped).
    fn count_oversized(
        &self,
        msg: &Message,
        result: Result<(), crate::frame::FrameError>,
        max_frame_bytes: u32,
    ) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            peer = self.id,
            kind = msg.body.name(),
            ?result,
            max = max_frame_bytes,
            "message too large for a frame: dropped"
        );
    }

    /// Makes `stream` the peer's connection, closing any earlier one. Returns the connection's
    /// generation, or `None` if the transport is closing.
    pub(crate) fn install(&self, stream: TcpStream) -> Option<u64> {
        let mut st = self.state.lock();
        if st.closed {
            let _ = stream.shutdown(Shutdown::Both);
            return None;
        }
        if let Some(old) = st.conn.take() {
            let _ = old.stream.shutdown(Shutdown::Both);
        }
        st.leftover.clear(); // Half a frame means nothing on a new connection.
        st.generation += 1;
        st.connections += 1;
        if st.connections > 1 {
            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let generation = st.generation;
        st.conn = Some(Conn { stream: Arc::new(stream), generation });
        drop(st);
        self.wake.notify_all();
        Some(generation)
    }

    /// Drops connection `generation` if it is still the current one.
    fn disconnect(&self, generation: u64) {
        let mut st = self.state.lock();
        if st.conn.as_ref().is_some_and(|c| c.generation == generation) {
            if let Some(conn) = st.conn.take() {
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
            drop(st);
            self.wake.notify_all();
        }
    }

    /// Closes the peer for good: its connection and its writer.
    pub(crate) fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        st.control.clear();
        st.bulk.clear();
        if let Some(conn) = st.conn.take() {
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
        drop(st);
        self.wake.notify_all();
    }

    pub(crate) fn count_refused(&self) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn metrics(&self) -> PeerMetrics {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PeerMetrics {
            peer: self.id,
            addr: Some(self.addr),
            connected: self.state.lock().conn.is_some(),
            frames_sent: load(&c.frames_sent),
            bytes_sent: load(&c.bytes_sent),
            frames_received: load(&c.frames_received),
            bytes_received: load(&c.bytes_received),
            dropped: load(&c.dropped),
            reconnects: load(&c.reconnects),
            bad_frames: load(&c.bad_frames),
            refused: load(&c.refused),
        }
    }
}

/// What the writer does next.
enum Next {
    Dial,
    Write(Arc<TcpStream>, u64),
}

/// Writes queued messages to the peer in batches; on the dialing side (the lower id) also
/// (re)connects, with exponential backoff and jitter.
pub(crate) fn writer_loop(inner: &Arc<Inner>, peer: &Arc<Peer>) {
    let config = &inner.config;
    let dialer = config.node_id < peer.id;
    let mut backoff = config.backoff_min;
    let mut next_dial = Instant::now();
    let mut failures = 0u32;
    let mut jitter = Jitter::new(config.node_id ^ peer.id.rotate_left(32));
    let mut batch: Vec<Message> = Vec::with_capacity(64);
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    loop {
        let next = {
            let mut st = peer.state.lock();
            loop {
                if st.closed {
                    return;
                }
                match &st.conn {
                    None if dialer && Instant::now() >= next_dial => break Next::Dial,
                    None => {
                        let wait = if dialer {
                            next_dial.saturating_duration_since(Instant::now())
                        } else {
                            Duration::from_millis(200)
                        };
                        peer.wake.wait_for(&mut st, wait);
                    }
                    Some(conn) if !st.writing && !st.idle() => {
                        let conn = (conn.stream.clone(), conn.generation);
                        if st.leftover_generation == conn.1 {
                            buf.clear();
                            buf.append(&mut st.leftover);
                        } else {
                            st.leftover.clear();
                            buf.clear();
                        }
                        st.writing = true;
                        let take = st.control.len().min(BATCH_MAX);
                        batch.extend(st.control.drain(..take));
                        // At most one snapshot chunk per batch: heartbeats never wait behind more.
                        if let Some(chunk) = st.bulk.pop_front() {
                            batch.push(chunk);
                        }
                        break Next::Write(conn.0, conn.1);
                    }
                    Some(_) => {
                        peer.wake.wait(&mut st);
                    }
                }
            }
        };
        match next {
            Next::Dial => match dial(inner, peer) {
                Ok(stream) => {
                    let reader = match stream.try_clone() {
                        Ok(r) => r,
                        Err(err) => {
                            tracing::warn!(peer = peer.id, %err, "could not clone the connection");
                            continue;
                        }
                    };
                    let Some(generation) = peer.install(stream) else { return };
                    if failures > 0 {
                        tracing::info!(peer = peer.id, failures, "peer reconnected");
                    } else {
                        tracing::info!(peer = peer.id, addr = %peer.addr, "peer connected (dialled)");
                    }
                    failures = 0;
                    backoff = config.backoff_min;
                    let (inner2, peer2) = (inner.clone(), peer.clone());
                    let spawned = std::thread::Builder::new()
                        .name(format!("net-{}-from-{}", config.node_id, peer.id))
                        .spawn(move || read_loop(&inner2, &peer2, reader, generation));
                    if let Err(err) = spawned {
                        tracing::error!(%err, "could not start a reader thread");
                        peer.disconnect(generation);
                    }
                }
                Err(why) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() || why.contains("refused by") {
                        tracing::warn!(peer = peer.id, addr = %peer.addr, failures, "dial failed: {why}");
                    }
                    let extra = jitter.below(backoff.as_micros() as u64 / 2 + 1);
                    next_dial = Instant::now() + backoff + Duration::from_micros(extra);
                    backoff = (backoff * 2).min(config.backoff_max);
                }
            },
            Next::Write(stream, generation) => {
                // `buf` starts with what a direct send left unfinished.
                let mut frames = 0u64;
                for msg in batch.drain(..) {
                    let start = buf.len();
                    match encode_frame(&msg, &mut buf) {
                        Ok(()) if buf.len() - start - 8 <= config.max_frame_bytes as usize => {
                            frames += 1;
                        }
                        result => {
                            buf.truncate(start);
                            peer.count_oversized(&msg, result, config.max_frame_bytes);
                        }
                    }
                }
                let written = (&*stream).write_all(&buf);
                if written.is_ok() {
                    peer.counters.frames_sent.fetch_add(frames, Ordering::Relaxed);
                    peer.counters.bytes_sent.fetch_add(buf.len() as u64, Ordering::Relaxed);
                }
                peer.state.lock().writing = false;
                if let Err(err) = written {
                    tracing::info!(peer = peer.id, %err, "connection lost while writing");
                    peer.disconnect(generation);
                }
                buf.clear();
                if buf.capacity() > 4 << 20 {
                    buf = Vec::with_capacity(64 << 10); // Do not keep a snapshot-sized buffer.
                }
            }
        }
    }
}

/// Most messages handed to the node in one delivery.
const DELIVER_MAX: usize = 256;

/// Reads frames from one connection and delivers their messages until the connection ends or
/// sends something bad. Frames that arrived together (already in the read buffer) are delivered
/// together, before the next wait for the socket.
pub(crate) fn read_loop(inner: &Arc<Inner>, peer: &Arc<Peer>, stream: TcpStream, generation: u64) {
    let me = inner.config.node_id;
    let max = inner.config.max_frame_bytes;
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut buf = Vec::new();
    let mut received: Vec<Message> = Vec::new();
    loop {
        match read_frame(&mut reader, &mut buf, max) {
            Ok((msg, size)) => {
                peer.counters.frames_received.fetch_add(1, Ordering::Relaxed);
                peer.counters.bytes_received.fetch_add(size as u64, Ordering::Relaxed);
                if msg.from != peer.id || msg.to != me {
                    peer.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        peer = peer.id,
                        from = msg.from,
                        to = msg.to,
                        "message names another sender or receiver than the connection: closing"
                    );
                    break;
                }
                received.push(msg);
                if reader.buffer().is_empty() || received.len() >= DELIVER_MAX {
                    inner.inbound.deliver_all(std::mem::take(&mut received));
                }
                if buf.capacity() > 4 << 20 {
                    buf = Vec::new();
                }
            }
            Err(FrameError::Io(err)) => {
                if !inner.closed.load(Ordering::Relaxed) {
                    tracing::info!(peer = peer.id, %err, "connection closed");
                }
                break;
            }
            Err(err) => {
                peer.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = peer.id, %err, "bad frame: closing the connection");
                break;
            }
        }
    }
    // What arrived intact before the connection ended or went bad is still good.
    if !received.is_empty() {
        inner.inbound.deliver_all(received);
    }
    peer.disconnect(generation);
}

/// Sends as much of `buf` as the socket takes now, without blocking; `Ok(0)` when it takes
/// nothing.
fn send_nonblocking(stream: &TcpStream, buf: &[u8]) -> std::io::Result<usize> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let flags = libc::MSG_DONTWAIT;
        let mut sent = 0;
        while sent < buf.len() {
            let rest = &buf[sent..];
            // SAFETY: the descriptor belongs to `stream`, which the caller borrows for the whole
            // call, so it stays open; `rest` is a live slice and the kernel reads at most
            // `rest.len()` bytes from its start. MSG_DONTWAIT makes only this call non-blocking
            // and leaves the descriptor's mode (shared with the writer thread) alone.
            let n =
                unsafe { libc::send(stream.as_raw_fd(), rest.as_ptr().cast(), rest.len(), flags) };
            if n >= 0 {
                sent += n as usize;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::WouldBlock => break,
                std::io::ErrorKind::Interrupted => {}
                _ => return Err(err),
            }
        }
        Ok(sent)
    }
    #[cfg(not(unix))]
    {
        let _ = (stream, buf);
        Ok(0) // The writer thread sends it all.
    }
}

/// A small xorshift generator for backoff jitter (no need for quality, only spread).
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Jitter {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter((seed ^ time) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
