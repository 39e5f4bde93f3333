//! A closed-loop SET load on one thread, in the manner of `redis-benchmark`: N connections,
//! each with one command outstanding, driven by one event loop (mio), so the load generator
//! costs the machine little of the CPU the nodes under test need.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use raftkit_examples::resp;

/// What a run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Latency of every SET acknowledged while measuring, in microseconds.
    pub latencies_us: Vec<u32>,
    /// How long the measurement lasted.
    pub measured: Duration,
}

struct Conn {
    stream: TcpStream,
    sent_at: Instant,
    /// Bytes of the current command not yet taken by the socket.
    out: Vec<u8>,
    out_sent: usize,
    input: Vec<u8>,
    next_key: u64,
}

/// Runs `clients` connections doing `SET bench:<client>:<n> <value>` against `addr`: `warmup`
/// first, then `measure` with every latency recorded. Any reply but `+OK` is an error.
pub fn run(
    addr: SocketAddr,
    clients: usize,
    value: usize,
    warmup: Duration,
    measure: Duration,
) -> io::Result<LoadResult> {
    let mut poll = Poll::new()?;
    let payload = vec![b'x'; value];
    let mut conns = Vec::with_capacity(clients);
    for c in 0..clients {
        let std_stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
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
            next_key: 0,
        });
    }
    let began = Instant::now();
    let measure_from = began + warmup;
    let end = measure_from + measure;
    let mut result = LoadResult::default();
    for (c, conn) in conns.iter_mut().enumerate() {
        start_set(conn, c, &payload)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let now = Instant::now();
        if now >= end {
            result.measured = now.saturating_duration_since(measure_from);
            return Ok(result);
        }
        poll.poll(&mut events, Some(end - now))?;
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
            // One command is outstanding per connection, so one reply line at most.
            let Some(eol) = conn.input.windows(2).position(|w| w == b"\r\n") else { continue };
            if !conn.input.starts_with(b"+OK") {
                let line = String::from_utf8_lossy(&conn.input[..eol]).into_owned();
                return Err(io::Error::other(format!("SET answered {line}")));
            }
            conn.input.drain(..eol + 2);
            let done = Instant::now();
            if done >= measure_from {
                let us = done.duration_since(conn.sent_at).as_micros();
                result.latencies_us.push(us.min(u32::MAX as u128) as u32);
            }
            start_set(conn, c, &payload)?;
        }
    }
}

fn start_set(conn: &mut Conn, client: usize, payload: &[u8]) -> io::Result<()> {
    let key = format!("bench:{client}:{}", conn.next_key % 10_000);
    conn.next_key += 1;
    conn.out.clear();
    conn.out_sent = 0;
    resp::command(&mut conn.out, &[b"SET", key.as_bytes(), payload]);
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
