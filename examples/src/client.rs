//! A minimal blocking Redis-protocol client, for the demo, the tests and the benchmarks.

use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::resp::{self, Reply};

/// One connection to a server.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects, waiting at most `timeout` for the connection and then for each reply.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        Ok(Client { reader: BufReader::with_capacity(64 << 10, stream), writer, buf: Vec::new() })
    }

    /// Sends a command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.send(args)?;
        self.flush()?;
        self.read()
    }

    /// Queues a command (pipelining); [`flush`](Client::flush) sends what is queued.
    pub fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        resp::command(&mut self.buf, args);
        Ok(())
    }

    /// Sends every queued command.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Reads the next reply.
    pub fn read(&mut self) -> io::Result<Reply> {
        resp::read_reply(&mut self.reader, None)
    }

    /// `INFO raft` as `(field, value)` pairs.
    pub fn info(&mut self) -> io::Result<Vec<(String, String)>> {
        let reply = self.call(&[b"INFO", b"raft"])?;
        let text =
            reply.as_text().ok_or_else(|| io::Error::other(format!("INFO answered {reply:?}")))?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim_end().to_owned()))
            .collect())
    }
}

/// The value of `field` in an `INFO` answer.
pub fn info_field<'a>(info: &'a [(String, String)], field: &str) -> Option<&'a str> {
    info.iter().find(|(k, _)| k == field).map(|(_, v)| v.as_str())
}
