//! A closed-loop Redis-protocol load on one thread, in the manner of `redis-benchmark`: N
//! connections, each with one command outstanding, driven by one event loop (mio), so the load
//! generator costs the machine little of the CPU the servers under test need. Connections may
//! go to different servers (reads spread over a cluster's nodes).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use raftkit_examples::resp;

/// The command each connection repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `SET bench:<client>:<n % 10000> <value>`; any reply but `+OK` is an error.
    Set {
        /// Value bytes.
        value: usize,
    },
    /// `GET bench:<n % keys>`; any reply but a bulk string (or nil) is an error.
    Get {
        /// How many keys the reads spread over (`bench:0` .. `bench:<keys-1>`).
        keys: u64,
    },
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Latency of every command answered while measuring, in microseconds.
    pub latencies_us: Vec<u32>,
    /// When each of those commands was sent, in microseconds since the measurement began.
    pub sent_us: Vec<u64>,
    /// How long the measurement lasted.
    pub measured: Duration,
}

impl LoadResult {
    /// Commands per second.
    pub fn rate(&self) -> f64 {
        self.latencies_us.len() as f64 / self.measured.as_secs_f64().max(1e-9)
    }

    /// The `p`-quantile latency (`0.5` for the median) in microseconds, of the commands sent
    /// while `sent` holds for their send time.
    pub fn quantile_us(&self, p: f64, sent: impl Fn(u64) -> bool) -> u64 {
        let mut lat: Vec<u32> = self
            .latencies_us
            .iter()
            .zip(&self.sent_us)
            .filter(|(_, &at)| sent(at))
            .map(|(&l, _)| l)
            .collect();
        lat.sort_unstable();
        let i = ((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1));
        lat.get(i).copied().unwrap_or(0) as u64
    }
}

struct Conn {
    stream: TcpStream,
    sent_at: Instant,
    /// Bytes of the current command not yet taken by the socket.
    out: Vec<u8>,
    out_sent: usize,
    input: Vec<u8>,
    next_key: u64,
    /// The keys this connection writes in turn (empty: `bench:<client>:<n % 10000>`).
    keys: Vec<String>,
}

/// Runs one connection per address in `addrs` repeating `op`: `warmup` first, then `measure`
/// with every latency recorded.
pub fn run(
    addrs: &[SocketAddr],
    op: Op,
    warmup: Duration,
    measure: Duration,
) -> io::Result<LoadResult> {
    run_until(addrs, op, warmup, measure, &AtomicBool::new(false))
}

/// [`run`] that also ends (with what it measured so far) once `stop` is set.
pub fn run_until(
    addrs: &[SocketAddr],
    op: Op,
    warmup: Duration,
    measure: Duration,
    stop: &AtomicBool,
) -> io::Result<LoadResult> {
    let targets: Vec<(SocketAddr, Vec<String>)> = addrs.iter().map(|&a| (a, Vec::new())).collect();
    run_targets(&targets, op, warmup, measure, stop)
}

/// `SET`s of `value` bytes, one connection per target, each writing its own keys in turn (a
/// client that sends each key to the node leading its shard).
pub fn run_sets(
    targets: &[(SocketAddr, Vec<String>)],
    value: usize,
    warmup: Duration,
    measure: Duration,
) -> io::Result<LoadResult> {
    run_targets(targets, Op::Set { value }, warmup, measure, &AtomicBool::new(false))
}

fn run_targets(
    targets: &[(SocketAddr, Vec<String>)],
    op: Op,
    warmup: Duration,
    measure: Duration,
    stop: &AtomicBool,
) -> io::Result<LoadResult> {
    let mut poll = Poll::new()?;
    let payload = match op {
        Op::Set { value } => vec![b'x'; value],
        Op::Get { .. } => Vec::new(),
    };
    let mut conns = Vec::with_capacity(targets.len());
    for (c, (addr, keys)) in targets.iter().enumerate() {
        let std_stream = std::net::TcpStream::connect_timeout(addr, Duration::from_secs(10))?;
        std_stream.set_nodelay(true)?;
        std_stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std_stream);
        poll.registry().register(&mut stream, Token(c), Interest::READABLE | Interest::WRITABLE)?;
        conns.push(Conn {
            stream,
            sent_at: Instant::now(),
            out: Vec::new(),
            out_sent: 0,
            input: Vec::new(),
            next_key: c as u64 * 7919,
            keys: keys.clone(),
        });
    }
    let began = Instant::now();
    let measure_from = began + warmup;
    let end = measure_from + measure;
    let mut result = LoadResult::default();
    for (c, conn) in conns.iter_mut().enumerate() {
        start(conn, c, op, &payload)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let now = Instant::now();
        if now >= end || stop.load(Ordering::Relaxed) {
            result.measured = now.saturating_duration_since(measure_from);
            return Ok(result);
        }
        match poll.poll(&mut events, Some((end - now).min(Duration::from_millis(50)))) {
            // A signal (a child process of the bench exiting, say) is no failure: wait again.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            let c = event.token().0;
            let conn = &mut conns[c];
            if event.is_writable() {
                flush(conn)?;
            }
            if !event.is_readable() {
                continue;
            }
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => return Err(io::Error::other("the server closed a connection")),
                    Ok(n) => {
                        conn.input.extend_from_slice(&chunk[..n]);
                        if n < chunk.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            // One command is outstanding per connection, so one reply at most.
            let Some(len) = reply_len(&conn.input, op)? else { continue };
            conn.input.drain(..len);
            let done = Instant::now();
            if done >= measure_from && conn.sent_at >= measure_from {
                let us = done.duration_since(conn.sent_at).as_micros();
                result.latencies_us.push(us.min(u32::MAX as u128) as u32);
                result.sent_us.push(conn.sent_at.duration_since(measure_from).as_micros() as u64);
            }
            start(conn, c, op, &payload)?;
        }
    }
}

/// The length of the complete reply at the start of `input`, if it is all there; an error for
/// a reply `op` should not get.
fn reply_len(input: &[u8], op: Op) -> io::Result<Option<usize>> {
    let Some(eol) = input.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
    let bad = || {
        let line = String::from_utf8_lossy(&input[..eol]).into_owned();
        Err(io::Error::other(format!("{op:?} answered {line}")))
    };
    match (op, input[0]) {
        (Op::Set { .. }, b'+') if input.starts_with(b"+OK") => Ok(Some(eol + 2)),
        (Op::Get { .. }, b'$') => {
            let Some(n) =
                std::str::from_utf8(&input[1..eol]).ok().and_then(|s| s.parse::<i64>().ok())
            else {
                return bad();
            };
            if n < 0 {
                return Ok(Some(eol + 2));
            }
            let total = eol + 2 + n as usize + 2;
            Ok((input.len() >= total).then_some(total))
        }
        _ => bad(),
    }
}

fn start(conn: &mut Conn, client: usize, op: Op, payload: &[u8]) -> io::Result<()> {
    conn.out.clear();
    conn.out_sent = 0;
    match op {
        Op::Set { .. } if !conn.keys.is_empty() => {
            let key = &conn.keys[conn.next_key as usize % conn.keys.len()];
            resp::command(&mut conn.out, &[b"SET", key.as_bytes(), payload]);
        }
        Op::Set { .. } => {
            let key = format!("bench:{client}:{}", conn.next_key % 10_000);
            resp::command(&mut conn.out, &[b"SET", key.as_bytes(), payload]);
        }
        Op::Get { keys } => {
            let key = format!("bench:{}", conn.next_key % keys.max(1));
            resp::command(&mut conn.out, &[b"GET", key.as_bytes()]);
        }
    }
    conn.next_key += 1;
    conn.sent_at = Instant::now();
    flush(conn)
}

fn flush(conn: &mut Conn) -> io::Result<()> {
    while conn.out_sent < conn.out.len() {
        match conn.stream.write(&conn.out[conn.out_sent..]) {
            Ok(n) => conn.out_sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
