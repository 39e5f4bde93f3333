//! The Redis serialization protocol (RESP2): parsing client commands (arrays of bulk strings,
//! and inline commands), writing replies, and reading replies (for the client side).
//!
//! Parsing is incremental: [`parse_command`] looks at the bytes buffered so far and either
//! returns a complete command and how many bytes it used, asks for more, or reports a protocol
//! error (after which the server answers `-ERR Protocol error` and closes the connection, as
//! Redis does). Every length is checked against a limit before anything is allocated for it.

use std::io::{self, BufRead, Read};

/// Largest bulk string accepted in a command (bytes).
pub const MAX_BULK_BYTES: usize = 16 << 20;
/// Most arguments in one command.
pub const MAX_ARGS: usize = 1 << 20;
/// Longest inline command line.
pub const MAX_INLINE_BYTES: usize = 64 << 10;

/// What parsing the buffered bytes gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole command (its arguments) and the bytes it took.
    Command(Vec<Vec<u8>>, usize),
    /// The buffer ends inside a command.
    Incomplete,
    /// The bytes are not RESP.
    Invalid(String),
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|p| p + from)
}

fn parse_int(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Parses one command from the start of `buf`.
pub fn parse_command(buf: &[u8]) -> Parsed {
    let Some(&first) = buf.first() else { return Parsed::Incomplete };
    if first != b'*' {
        return parse_inline(buf);
    }
    let Some(end) = find_crlf(buf, 1) else {
        return if buf.len() > 32 {
            Parsed::Invalid("bad multibulk length".into())
        } else {
            Parsed::Incomplete
        };
    };
    let count = match parse_int(&buf[1..end]) {
        Some(n) if n <= MAX_ARGS as i64 => n,
        _ => return Parsed::Invalid("invalid multibulk length".into()),
    };
    let mut at = end + 2;
    if count <= 0 {
        return Parsed::Command(Vec::new(), at);
    }
    let mut args = Vec::with_capacity((count as usize).min(64));
    for _ in 0..count {
        let Some(&tag) = buf.get(at) else { return Parsed::Incomplete };
        if tag != b'$' {
            return Parsed::Invalid(format!("expected '$', got '{}'", tag as char));
        }
        let Some(end) = find_crlf(buf, at + 1) else {
            return if buf.len() - at > 32 {
                Parsed::Invalid("bad bulk length".into())
            } else {
                Parsed::Incomplete
            };
        };
        let len = match parse_int(&buf[at + 1..end]) {
            Some(n) if (0..=MAX_BULK_BYTES as i64).contains(&n) => n as usize,
            _ => return Parsed::Invalid("invalid bulk length".into()),
        };
        let start = end + 2;
        if buf.len() < start + len + 2 {
            return Parsed::Incomplete;
        }
        if &buf[start + len..start + len + 2] != b"\r\n" {
            return Parsed::Invalid("bulk string not terminated by CRLF".into());
        }
        args.push(buf[start..start + len].to_vec());
        at = start + len + 2;
    }
    Parsed::Command(args, at)
}

/// An inline command: one line of space-separated words (what `telnet` users type).
fn parse_inline(buf: &[u8]) -> Parsed {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_INLINE_BYTES {
            Parsed::Invalid("too big inline request".into())
        } else {
            Parsed::Incomplete
        };
    };
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    Parsed::Command(args, end + 1)
}

/// Appends a simple string reply (`+OK`).
pub fn simple(out: &mut Vec<u8>, s: &str) {
    out.push(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends an error reply; `line` starts with the error code (`ERR`, `NOLEADER`, ...).
pub fn error(out: &mut Vec<u8>, line: &str) {
    out.push(b'-');
    // An error reply is one line.
    out.extend(line.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

/// Appends an integer reply.
pub fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string reply, or the null bulk string for `None`.
pub fn bulk(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => out.extend_from_slice(b"$-1\r\n"),
        Some(v) => {
            out.push(b'$');
            out.extend_from_slice(v.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends an array header of `n` elements (the elements follow).
pub fn array_header(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a command as an array of bulk strings (what clients send).
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    array_header(out, args.len());
    for arg in args {
        bulk(out, Some(arg));
    }
}

/// Appends `reply` as the server would send it.
pub fn encode(out: &mut Vec<u8>, reply: &Reply) {
    match reply {
        Reply::Simple(s) => simple(out, s),
        Reply::Error(line) => error(out, line),
        Reply::Integer(n) => integer(out, *n),
        Reply::Bulk(b) => bulk(out, b.as_deref()),
        Reply::Array(None) => out.extend_from_slice(b"*-1\r\n"),
        Reply::Array(Some(items)) => {
            array_header(out, items.len());
            for item in items {
                encode(out, item);
            }
        }
    }
}

/// A reply as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+...`
    Simple(String),
    /// `-...`: the whole line, code first.
    Error(String),
    /// `:...`
    Integer(i64),
    /// `$...`; `None` is the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*...`; `None` is the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The error code of an error reply (`NOLEADER`, `TIMEOUT`, `ERR`...).
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Reply::Error(line) => line.split_whitespace().next(),
            _ => None,
        }
    }

    /// A bulk string as UTF-8 text.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Reply::Bulk(Some(b)) => String::from_utf8(b.clone()).ok(),
            Reply::Simple(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// Reads one reply. With `raw`, also appends the reply's exact bytes to it (for relaying).
pub fn read_reply(input: &mut impl BufRead, mut raw: Option<&mut Vec<u8>>) -> io::Result<Reply> {
    read_reply_depth(input, &mut raw, 0)
}

fn read_reply_depth(
    input: &mut impl BufRead,
    raw: &mut Option<&mut Vec<u8>>,
    depth: usize,
) -> io::Result<Reply> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    if depth > 32 {
        return Err(invalid("reply nested too deeply".into()));
    }
    let mut line = Vec::new();
    let n = Read::take(&mut *input, MAX_INLINE_BYTES as u64).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid("reply line not terminated by CRLF".into()));
    }
    if let Some(raw) = raw.as_deref_mut() {
        raw.extend_from_slice(&line);
    }
    let body = &line[1..line.len() - 2];
    let text = || String::from_utf8_lossy(body).into_owned();
    let number = || parse_int(body).ok_or_else(|| invalid(format!("bad number {:?}", text())));
    match line[0] {
        b'+' => Ok(Reply::Simple(text())),
        b'-' => Ok(Reply::Error(text())),
        b':' => Ok(Reply::Integer(number()?)),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            if len as usize > MAX_BULK_BYTES {
                return Err(invalid(format!("bulk reply of {len} bytes")));
            }
            let mut data = vec![0u8; len as usize + 2];
            input.read_exact(&mut data)?;
            if let Some(raw) = raw.as_deref_mut() {
                raw.extend_from_slice(&data);
            }
            if !data.ends_with(b"\r\n") {
                return Err(invalid("bulk reply not terminated by CRLF".into()));
            }
            data.truncate(len as usize);
            Ok(Reply::Bulk(Some(data)))
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                return Ok(Reply::Array(None));
            }
            if len as usize > MAX_ARGS {
                return Err(invalid(format!("array reply of {len} elements")));
            }
            let mut items = Vec::with_capacity((len as usize).min(1024));
            for _ in 0..len {
                items.push(read_reply_depth(input, raw, depth + 1)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        other => Err(invalid(format!("unknown reply type {:?}", other as char))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arrays_and_inline_commands() {
        let mut wire = Vec::new();
        command(&mut wire, &[b"SET", b"k", b"v\r\nx"]);
        let n = wire.len();
        wire.extend_from_slice(b"PING  hello\r\n");
        let Parsed::Command(args, used) = parse_command(&wire) else { panic!("not parsed") };
        assert_eq!(args, vec![b"SET".to_vec(), b"k".to_vec(), b"v\r\nx".to_vec()]);
        assert_eq!(used, n);
        let Parsed::Command(args, used) = parse_command(&wire[n..]) else { panic!("not parsed") };
        assert_eq!(args, vec![b"PING".to_vec(), b"hello".to_vec()]);
        assert_eq!(used, wire.len() - n);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let mut wire = Vec::new();
        command(&mut wire, &[b"MGET", b"a", b"bb", b""]);
        for cut in 0..wire.len() {
            assert_eq!(parse_command(&wire[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn bad_input_is_invalid_without_allocating_claims() {
        for bad in [
            &b"*abc\r\n"[..],
            b"*1\r\n$-5\r\n",
            b"*1\r\n$99999999999\r\n",
            b"*1\r\n:3\r\n",
            b"*1\r\n$1\r\nabc\r\n",
        ] {
            assert!(
                matches!(parse_command(bad), Parsed::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(parse_command(b"*99999999999\r\n"), Parsed::Invalid(_)));
    }

    #[test]
    fn replies_round_trip_with_raw_bytes() {
        let mut wire = Vec::new();
        array_header(&mut wire, 3);
        bulk(&mut wire, Some(b"a"));
        bulk(&mut wire, None);
        integer(&mut wire, -7);
        error(&mut wire, "NOLEADER no leader\r\nknown");
        let mut input = &wire[..];
        let mut raw = Vec::new();
        let reply = read_reply(&mut input, Some(&mut raw)).expect("reply");
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"a".to_vec())),
                Reply::Bulk(None),
                Reply::Integer(-7)
            ]))
        );
        let err = read_reply(&mut input, Some(&mut raw)).expect("reply");
        assert_eq!(err.error_code(), Some("NOLEADER"));
        assert_eq!(raw, wire);
    }
}
