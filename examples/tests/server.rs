//! The server's client side in one process: a single-node cluster (it elects itself) serving
//! on loopback, driven by raw sockets, to check what clients can do to the event loop:
//! deep pipelines answered in order, a client that never reads its replies, half-closed
//! connections, QUIT and protocol errors.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_core::node::ReadMode;
use raft_wal::Durability;
use raftkit_examples::client::Client;
use raftkit_examples::resp::{self, Reply};
use raftkit_examples::server::{Server, ServerArgs};

const TIMEOUT: Duration = Duration::from_secs(10);

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

/// Starts a one-node server; returns its client address (and the directory to keep).
fn start() -> (SocketAddr, tempfile::TempDir) {
    start_sharded(1)
}

/// Starts a one-node server with `shards` groups, once it leads them all.
fn start_sharded(shards: usize) -> (SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = ServerArgs {
        id: 1,
        cluster_id: 1,
        raft_addr: free_addr(),
        client_addr: free_addr(),
        peers: Default::default(),
        data_dir: dir.path().to_path_buf(),
        log_store: Default::default(),
        durability: Durability::group_commit(),
        wal_segment_mib: 64,
        request_timeout: Duration::from_secs(3),
        snapshot_entries: 0,
        tick: Duration::from_millis(5),
        heartbeat_ticks: raftkit_examples::server::default_heartbeat_ticks(shards, ReadMode::Index),
        read_mode: ReadMode::Index,
        debug_commands: false,
        join: None,
        shards,
    };
    let addr = args.client_addr;
    let (server, listener) = Server::start(args).expect("server starts");
    let s: Arc<Server> = server.clone();
    std::thread::spawn(move || s.serve(listener));
    let deadline = Instant::now() + TIMEOUT;
    while !server.shards().iter().all(|n| n.is_leader()) {
        assert!(Instant::now() < deadline, "the single node did not elect itself");
        std::thread::sleep(Duration::from_millis(5));
    }
    (addr, dir)
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    resp::command(&mut out, args);
    out
}

#[test]
fn a_deep_pipeline_is_answered_in_order() {
    let (addr, _dir) = start();
    let mut client = Client::connect(addr, TIMEOUT).expect("connect");
    // Writes, reads and immediate answers mixed: each reply must come back in command order.
    for i in 0..20_000 {
        match i % 4 {
            0 | 1 => client.send(&[b"INCR", b"counter"]).expect("queue"),
            2 => client.send(&[b"GET", b"counter"]).expect("queue"),
            _ => client.send(&[b"PING"]).expect("queue"),
        }
    }
    client.flush().expect("send");
    let mut counter = 0;
    for i in 0..20_000 {
        let reply = client.read().expect("reply");
        match i % 4 {
            0 | 1 => {
                counter += 1;
                assert_eq!(reply, Reply::Integer(counter), "command {i}");
            }
            2 => assert_eq!(
                reply,
                Reply::Bulk(Some(counter.to_string().into_bytes())),
                "command {i}"
            ),
            _ => assert_eq!(reply, Reply::Simple("PONG".into()), "command {i}"),
        }
    }
}

/// With the keys over 8 groups, a pipeline of writes and reads over several shards is answered
/// in order, each read seeing the writes sent before it.
#[test]
fn a_pipeline_over_shards_keeps_its_order() {
    let (addr, _dir) = start_sharded(8);
    let mut client = Client::connect(addr, TIMEOUT).expect("connect");
    let keys: Vec<Vec<u8>> = (0..16).map(|i| format!("key:{i}").into_bytes()).collect();
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(keys.iter().map(|k| &k[..]));
    for round in 0..200u32 {
        let k = &keys[round as usize % keys.len()];
        client.send(&[b"SET", k, round.to_string().as_bytes()]).expect("queue");
        client.send(&mget).expect("queue");
    }
    client.send(&[b"DBSIZE"]).expect("queue");
    client.flush().expect("send");
    let mut values: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
    for round in 0..200u32 {
        assert_eq!(client.read().expect("reply"), Reply::Simple("OK".into()), "SET {round}");
        values[round as usize % keys.len()] = Some(round.to_string().into_bytes());
        let want = Reply::Array(Some(values.iter().cloned().map(Reply::Bulk).collect()));
        assert_eq!(client.read().expect("reply"), want, "MGET after SET {round}");
    }
    assert_eq!(client.read().expect("reply"), Reply::Integer(keys.len() as i64));
    let mut del: Vec<&[u8]> = vec![b"DEL"];
    del.extend(keys.iter().map(|k| &k[..]));
    assert_eq!(client.call(&del).expect("DEL"), Reply::Integer(keys.len() as i64));
    assert_eq!(client.call(&[b"DBSIZE"]).expect("DBSIZE"), Reply::Integer(0));
}

#[test]
fn a_client_that_never_reads_does_not_stall_the_others() {
    let (addr, _dir) = start();
    // Floods commands with large replies and never reads one: once its replies fill the
    // socket and the server's allowance, the server must stop reading it.
    let mut setup = Client::connect(addr, TIMEOUT).expect("connect");
    let big = vec![b'b'; 512 << 10];
    assert_eq!(setup.call(&[b"SET", b"big", &big]).expect("set"), Reply::Simple("OK".into()));
    let flooder = TcpStream::connect(addr).expect("connect");
    let flood = command(&[b"MGET", b"big", &[b'p'; 4096]]);
    let writer = {
        let mut f = flooder.try_clone().expect("clone");
        f.set_write_timeout(Some(Duration::from_secs(3))).expect("timeout");
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while f.write_all(&flood).is_ok() {
                sent += 1;
                if sent == 200_000 {
                    break;
                }
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut other = Client::connect(addr, TIMEOUT).expect("connect");
    for i in 0..100 {
        let began = Instant::now();
        let reply = other.call(&[b"SET", b"k", i.to_string().as_bytes()]).expect("set");
        assert_eq!(reply, Reply::Simple("OK".into()));
        assert!(began.elapsed() < Duration::from_secs(5), "a write took {:?}", began.elapsed());
    }
    let sent = writer.join().expect("writer");
    assert!(sent < 200_000, "the server kept reading a client that does not read ({sent} sent)");
    // Once the flooder reads, its replies come whole, until the server closed it for holding
    // too many unsent replies (started before reading paused), if it did. Either way the
    // server is still serving.
    let mut reader = BufReader::new(flooder.try_clone().expect("clone"));
    flooder.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let whole = Reply::Array(Some(vec![Reply::Bulk(Some(big.clone())), Reply::Bulk(None)]));
    let mut got = 0;
    while got < 100 {
        match resp::read_reply(&mut reader, None) {
            Ok(reply) => assert_eq!(reply, whole, "reply {got}"),
            // Closed with the flood unread on the server's side, the socket may be reset.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                break
            }
            Err(e) => panic!("reading reply {got}: {e}"),
        }
        got += 1;
    }
    assert_eq!(other.call(&[b"GET", b"k"]).expect("get"), Reply::Bulk(Some(b"99".to_vec())));
}

#[test]
fn half_closed_clients_get_every_reply_and_quit_and_errors_close() {
    let (addr, _dir) = start();
    // Commands, then the client's end of the connection closes: every reply still arrives.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    for i in 0..100 {
        s.write_all(&command(&[b"SET", format!("h{i}").as_bytes(), b"v"])).expect("send");
    }
    s.shutdown(Shutdown::Write).expect("half close");
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("replies, then the server closes");
    assert_eq!(all, b"+OK\r\n".repeat(100));

    // QUIT answers +OK after the replies before it, then closes; what follows is not run.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut batch = command(&[b"SET", b"q", b"1"]);
    batch.extend(command(&[b"QUIT"]));
    batch.extend(command(&[b"SET", b"q", b"2"]));
    s.write_all(&batch).expect("send");
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("closed after QUIT");
    assert_eq!(all, b"+OK\r\n+OK\r\n");

    // Bytes that are not RESP: an error, then the connection closes.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(b"PING\r\n*2\r\n$x\r\n").expect("send");
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("closed after the error");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("+PONG\r\n-ERR Protocol error"), "{text}");

    let mut c = Client::connect(addr, TIMEOUT).expect("connect");
    assert_eq!(c.call(&[b"GET", b"q"]).expect("get"), Reply::Bulk(Some(b"1".to_vec())));
}
