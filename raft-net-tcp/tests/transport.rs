//! The transport over real loopback sockets: delivery both ways, groups sharing a connection,
//! refused handshakes, reconnects, bad frames, snapshot chunks not blocking heartbeats.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use raft_core::message::{AppendRequest, Heartbeat, InstallSnapshot, MessageBody};
use raft_core::wire::MESSAGE_FORMAT_VERSION;
use raft_core::{Entry, Inbound, Membership, Message, NodeId, Router, SnapshotMeta, Transport};
use raft_net_tcp::frame::{encode_frame, Answer, Hello, Verdict, ANSWER_LEN, PROTOCOL_VERSION};
use raft_net_tcp::{TcpConfig, TcpTransport};

const WAIT: Duration = Duration::from_secs(10);

/// Collects what a transport delivers.
#[derive(Default)]
struct Collector {
    got: Mutex<Vec<Message>>,
    arrived: Condvar,
}

impl Inbound for Collector {
    fn deliver(&self, msg: Message) {
        self.got.lock().push(msg);
        self.arrived.notify_all();
    }
}

impl Collector {
    fn wait_for(&self, n: usize) -> Vec<Message> {
        let deadline = Instant::now() + WAIT;
        let mut got = self.got.lock();
        while got.len() < n {
            assert!(
                !self.arrived.wait_until(&mut got, deadline).timed_out(),
                "only {} of {n} messages arrived",
                got.len()
            );
        }
        got.clone()
    }
}

fn heartbeat(group: u64, from: NodeId, to: NodeId, commit: u64) -> Message {
    Message {
        group,
        from,
        to,
        term: 1,
        body: MessageBody::Heartbeat(Heartbeat { commit, round: 1 }),
    }
}

fn listeners(n: usize) -> (Vec<TcpListener>, Vec<SocketAddr>) {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    let addrs = listeners.iter().map(|l| l.local_addr().expect("addr")).collect();
    (listeners, addrs)
}

fn config(cluster: u64, id: NodeId, addrs: &[SocketAddr]) -> TcpConfig {
    let mut config = TcpConfig::new(cluster, id, addrs[(id - 1) as usize]);
    config.peers = (1..=addrs.len() as u64)
        .filter(|&p| p != id)
        .map(|p| (p, addrs[(p - 1) as usize]))
        .collect::<BTreeMap<_, _>>();
    config.max_frame_bytes = 8 << 20;
    config
}

fn start_all(cluster: u64, n: usize) -> (Vec<TcpTransport>, Vec<Arc<Collector>>, Vec<SocketAddr>) {
    let (listeners, addrs) = listeners(n);
    let mut transports = Vec::new();
    let mut collectors = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let collector = Arc::new(Collector::default());
        let t = TcpTransport::start_with_listener(
            config(cluster, i as u64 + 1, &addrs),
            listener,
            collector.clone(),
        )
        .expect("start");
        transports.push(t);
        collectors.push(collector);
    }
    (transports, collectors, addrs)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn messages_flow_both_ways_over_one_connection_per_pair() {
    let (transports, collectors, _) = start_all(9, 3);
    for from in 1..=3u64 {
        for to in (1..=3u64).filter(|&t| t != from) {
            for i in 0..100 {
                transports[(from - 1) as usize].send(heartbeat(1, from, to, i));
            }
        }
    }
    for (i, c) in collectors.iter().enumerate() {
        let got = c.wait_for(200);
        let me = i as u64 + 1;
        assert!(got.iter().all(|m| m.to == me));
        // Each sender's messages arrive in order.
        for from in (1..=3u64).filter(|&f| f != me) {
            let commits: Vec<u64> = got
                .iter()
                .filter(|m| m.from == from)
                .map(|m| match m.body {
                    MessageBody::Heartbeat(h) => h.commit,
                    _ => u64::MAX,
                })
                .collect();
            assert_eq!(commits, (0..100).collect::<Vec<_>>());
        }
    }
    // A writer counts its frames once its write returns, which can be after they arrived.
    wait_until("every frame counted", || {
        transports.iter().all(|t| t.metrics().iter().all(|m| m.frames_sent == 100))
    });
    for t in &transports {
        for m in t.metrics() {
            assert!(m.connected, "{m:?}");
            assert_eq!(m.frames_sent, 100, "{m:?}");
            assert_eq!(m.frames_received, 100, "{m:?}");
            assert!(m.bytes_sent > 0 && m.bytes_received > 0);
            assert_eq!((m.dropped, m.bad_frames, m.refused), (0, 0, 0));
        }
    }
}

#[test]
fn groups_share_the_connection_and_are_routed() {
    let (listeners, addrs) = listeners(2);
    let mut listeners = listeners.into_iter();
    let router = Arc::new(Router::new());
    let (a, b) = (Arc::new(Collector::default()), Arc::new(Collector::default()));
    router.register(1, a.clone()).expect("a new group");
    router.register(2, b.clone()).expect("a new group");
    let t1 = TcpTransport::start_with_listener(
        config(5, 1, &addrs),
        listeners.next().expect("listener"),
        Arc::new(Collector::default()),
    )
    .expect("start");
    let _t2 = TcpTransport::start_with_listener(
        config(5, 2, &addrs),
        listeners.next().expect("listener"),
        router.clone(),
    )
    .expect("start");
    for i in 0..10 {
        t1.send(heartbeat(1, 1, 2, i));
        t1.send(heartbeat(2, 1, 2, i));
        t1.send(heartbeat(3, 1, 2, i)); // No node of group 3 here.
    }
    assert!(a.wait_for(10).iter().all(|m| m.group == 1));
    assert!(b.wait_for(10).iter().all(|m| m.group == 2));
    wait_until("unroutable count", || router.unroutable() == 10);
    wait_until("every frame counted", || t1.metrics()[0].frames_sent == 30);
    // A message for a node that is not a peer is dropped and counted.
    t1.send(heartbeat(1, 1, 7, 0));
    assert_eq!(t1.unknown_peer_messages(), 1);
}

#[test]
fn a_peer_of_another_cluster_is_refused() {
    let (listeners, addrs) = listeners(2);
    let mut listeners = listeners.into_iter();
    let c1 = Arc::new(Collector::default());
    let c2 = Arc::new(Collector::default());
    let t1 = TcpTransport::start_with_listener(
        config(1, 1, &addrs),
        listeners.next().expect("l"),
        c1.clone(),
    )
    .expect("start");
    let t2 = TcpTransport::start_with_listener(
        config(2, 2, &addrs),
        listeners.next().expect("l"),
        c2.clone(),
    )
    .expect("start");
    for i in 0..5 {
        t1.send(heartbeat(1, 1, 2, i));
        t2.send(heartbeat(1, 2, 1, i));
    }
    wait_until("refusals on both sides", || {
        t1.metrics()[0].refused > 0 && t2.metrics()[0].refused > 0
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        c1.got.lock().is_empty() && c2.got.lock().is_empty(),
        "a refused peer's message got in"
    );
    assert!(!t1.metrics()[0].connected && !t2.metrics()[0].connected);
}

#[test]
fn a_wrong_version_or_message_format_or_unknown_node_is_refused_with_a_reason() {
    let (transports, collectors, addrs) = start_all(3, 2);
    // The lower id of a pair dials, so node 2 accepts connections from node 1 only: dial it by
    // hand with bad hellos.
    let target = addrs[1];
    let good = Hello {
        version: PROTOCOL_VERSION,
        format: MESSAGE_FORMAT_VERSION,
        cluster: 3,
        from: 1,
        to: 2,
    };
    for (hello, expected) in [
        (Hello { version: PROTOCOL_VERSION + 1, ..good }, Verdict::WrongVersion),
        (Hello { format: MESSAGE_FORMAT_VERSION + 1, ..good }, Verdict::WrongMessageFormat),
        (Hello { format: 0, ..good }, Verdict::WrongMessageFormat),
        (Hello { from: 9, ..good }, Verdict::UnknownNode),
        (Hello { to: 5, ..good }, Verdict::WrongTarget),
    ] {
        let mut s = TcpStream::connect(target).expect("connect");
        s.write_all(&hello.encode()).expect("hello");
        let mut answer = [0u8; ANSWER_LEN];
        s.read_exact(&mut answer).expect("answer");
        let answer = Answer::decode(&answer).expect("a raftkit answer");
        assert_eq!(answer.verdict, expected);
        assert_eq!((answer.node, answer.cluster), (2, 3));
        // And the connection is closed.
        let mut rest = Vec::new();
        assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0);
    }
    // Not a raftkit peer at all.
    let mut s = TcpStream::connect(target).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n").expect("write");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());
    wait_until("refusal counted", || transports[1].refused_unknown() >= 2);
    assert!(collectors[1].got.lock().is_empty());
}

/// Dials node 2 as node 1 by hand, then sends `bytes` after the handshake.
fn impersonate_node_1(target: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(target).expect("connect");
    let hello = Hello {
        version: PROTOCOL_VERSION,
        format: MESSAGE_FORMAT_VERSION,
        cluster: 4,
        from: 1,
        to: 2,
    };
    s.write_all(&hello.encode()).expect("hello");
    let mut answer = [0u8; ANSWER_LEN];
    s.read_exact(&mut answer).expect("answer");
    assert_eq!(Answer::decode(&answer).expect("answer").verdict, Verdict::Accepted);
    s.write_all(bytes).expect("write");
    s
}

#[test]
fn bad_frames_close_the_connection_and_are_counted() {
    let (listeners, addrs) = listeners(2);
    // Only node 2 runs; the test plays node 1.
    let listener = listeners.into_iter().nth(1).expect("listener");
    let collector = Arc::new(Collector::default());
    let mut cfg = config(4, 2, &addrs);
    cfg.max_frame_bytes = 4096;
    let t2 = TcpTransport::start_with_listener(cfg, listener, collector.clone()).expect("start");

    let mut good = Vec::new();
    encode_frame(&heartbeat(1, 1, 2, 1), &mut good).expect("encode");
    let mut corrupt = good.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let mut oversized = Vec::new();
    oversized.extend_from_slice(&(1u32 << 30).to_le_bytes());
    oversized.extend_from_slice(&[0; 4]);
    let mut undecodable = Vec::new();
    let junk = [0xFFu8; 40];
    undecodable.extend_from_slice(&(junk.len() as u32).to_le_bytes());
    undecodable.extend_from_slice(&crc32c::crc32c(&junk).to_le_bytes());
    undecodable.extend_from_slice(&junk);
    let mut misaddressed = Vec::new();
    encode_frame(&heartbeat(1, 3, 2, 1), &mut misaddressed).expect("encode");

    for (i, bad) in [corrupt, oversized, undecodable, misaddressed].into_iter().enumerate() {
        let mut wire = good.clone();
        wire.extend_from_slice(&bad);
        wire.extend_from_slice(&good); // Never delivered: the connection closed before it.
        let mut s = impersonate_node_1(addrs[1], &wire);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest); // Returns once node 2 closes the connection.
        wait_until("bad frame counted", || t2.metrics()[0].bad_frames == i as u64 + 1);
        assert_eq!(collector.got.lock().len(), i + 1, "only the good frame before the bad one");
    }
}

#[test]
fn a_restarted_peer_is_redialled() {
    let (listeners, addrs) = listeners(2);
    let mut listeners = listeners.into_iter();
    let c1 = Arc::new(Collector::default());
    let t1 = TcpTransport::start_with_listener(
        config(8, 1, &addrs),
        listeners.next().expect("l"),
        c1.clone(),
    )
    .expect("start");
    let c2 = Arc::new(Collector::default());
    let t2 = TcpTransport::start_with_listener(
        config(8, 2, &addrs),
        listeners.next().expect("l"),
        c2.clone(),
    )
    .expect("start");
    t1.send(heartbeat(1, 1, 2, 1));
    c2.wait_for(1);
    t2.shutdown();
    drop(t2);
    wait_until("disconnect noticed", || !t1.metrics()[0].connected);
    // Node 2 comes back on the same address; node 1 (the dialer) reconnects by itself.
    let c2 = Arc::new(Collector::default());
    let t2 =
        TcpTransport::start(config(8, 2, &addrs), c2.clone()).expect("restart on the same port");
    wait_until("reconnect", || t1.metrics()[0].connected);
    assert_eq!(t1.metrics()[0].reconnects, 1);
    t1.send(heartbeat(1, 1, 2, 2));
    t2.send(heartbeat(1, 2, 1, 3));
    assert_eq!(c2.wait_for(1).len(), 1);
    assert!(c1.wait_for(1).iter().any(|m| m.from == 2));
}

#[test]
fn snapshot_chunks_do_not_hold_back_heartbeats() {
    let (transports, collectors, _) = start_all(6, 2);
    // Warm the connection up.
    transports[0].send(heartbeat(1, 1, 2, 0));
    collectors[1].wait_for(1);
    let meta = SnapshotMeta {
        group: 1,
        index: 10,
        term: 1,
        membership: raft_core::Membership::new([1, 2]),
        size: 4 << 22,
        checksum: 0,
    };
    // Build the chunks first, so that queueing them and the heartbeat takes microseconds.
    let chunks: Vec<Message> = (0..4u64)
        .map(|i| Message {
            group: 1,
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::InstallSnapshot(InstallSnapshot {
                meta: meta.clone(),
                offset: i << 22,
                data: Bytes::from(vec![i as u8; 4 << 20]),
                done: i == 3,
            }),
        })
        .collect();
    for chunk in chunks {
        transports[0].send(chunk);
    }
    transports[0].send(heartbeat(1, 1, 2, 99));
    let got = collectors[1].wait_for(6);
    let position =
        got.iter().position(|m| matches!(m.body, MessageBody::Heartbeat(h) if h.commit == 99));
    let chunks_before = got[..position.expect("heartbeat arrived")]
        .iter()
        .filter(|m| matches!(m.body, MessageBody::InstallSnapshot(_)))
        .count();
    assert!(chunks_before <= 1, "{chunks_before} chunks went before the heartbeat");
    // The chunks arrive whole and in order.
    let offsets: Vec<u64> = got
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::InstallSnapshot(c) => Some(c.offset),
            _ => None,
        })
        .collect();
    assert_eq!(offsets, vec![0, 1 << 22, 2 << 22, 3 << 22]);
}

#[test]
fn large_messages_sent_faster_than_read_arrive_whole_and_in_order() {
    // Sends that the socket only partly takes leave the rest of the frame to the writer
    // thread; nothing may be cut, interleaved or reordered on the wire.
    let (transports, collectors, _) = start_all(11, 2);
    wait_until("connected", || transports[0].metrics()[0].connected);
    let payload = Bytes::from(vec![7u8; 256 << 10]);
    let sent = 400u64;
    for i in 0..sent {
        let body = if i % 3 == 2 {
            MessageBody::Heartbeat(Heartbeat { commit: i, round: 1 })
        } else {
            MessageBody::Append(AppendRequest {
                prev_index: i,
                prev_term: 1,
                entries: vec![Entry::normal(1, i + 1, payload.clone())],
                commit: i,
            })
        };
        transports[0].send(Message { group: 1, from: 1, to: 2, term: 1, body });
    }
    let dropped = transports[0].metrics()[0].dropped;
    let got = collectors[1].wait_for((sent - dropped) as usize);
    let order: Vec<u64> = got
        .iter()
        .map(|m| match &m.body {
            MessageBody::Append(a) => {
                assert!(a.entries[0].data == payload, "an entry's payload changed");
                a.commit
            }
            MessageBody::Heartbeat(h) => h.commit,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order: {order:?}");
    assert_eq!(transports[1].metrics()[0].bad_frames, 0);
    assert!(transports[0].metrics()[0].connected, "the connection survived");
}

#[test]
fn a_full_queue_drops_and_counts() {
    let (listeners, addrs) = listeners(2);
    let mut cfg = config(2, 1, &addrs);
    cfg.queue_capacity = 10;
    // Node 2 is never started: node 1 queues, then drops.
    let t1 = TcpTransport::start_with_listener(
        cfg,
        listeners.into_iter().next().expect("l"),
        Arc::new(Collector::default()),
    )
    .expect("start");
    for i in 0..25 {
        t1.send(heartbeat(1, 1, 2, i));
    }
    let m = &t1.metrics()[0];
    assert_eq!(m.dropped, 15);
    assert!(!m.connected);
}

#[test]
fn bad_configurations_are_refused() {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut c = TcpConfig::new(1, 1, addr);
    c.peers.insert(1, addr);
    assert!(TcpTransport::start(c, Arc::new(Collector::default())).is_err());
    let c = TcpConfig::new(1, 0, addr);
    assert!(TcpTransport::start(c, Arc::new(Collector::default())).is_err());
    // An address in use.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = TcpConfig::new(1, 1, taken.local_addr().expect("addr"));
    let err = TcpTransport::start(c, Arc::new(Collector::default())).unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
}

/// `send_all` with messages for several peers (and one that is not a peer) interleaved: each
/// peer gets its own messages, in order, and every frame is counted once.
#[test]
fn send_all_delivers_each_peers_messages_in_order() {
    let (transports, collectors, _) = start_all(12, 3);
    // Connect both links first, so the burst below goes out by the direct path.
    transports[0].send(heartbeat(1, 1, 2, 0));
    transports[0].send(heartbeat(1, 1, 3, 0));
    collectors[1].wait_for(1);
    collectors[2].wait_for(1);
    let mut burst = Vec::new();
    for i in 1..=300u64 {
        let to = match i % 7 {
            0 => 9, // Not a peer: dropped and counted.
            1..=3 => 2,
            _ => 3,
        };
        burst.push(heartbeat(1, 1, to, i));
    }
    let expected = |to: NodeId| -> Vec<u64> {
        std::iter::once(0)
            .chain(burst.iter().filter(|m| m.to == to).map(|m| match m.body {
                MessageBody::Heartbeat(h) => h.commit,
                _ => unreachable!("only heartbeats were sent"),
            }))
            .collect()
    };
    let (want2, want3) = (expected(2), expected(3));
    let unknown = burst.iter().filter(|m| m.to == 9).count() as u64;
    transports[0].send_all(burst);
    for (to, want) in [(2u64, want2), (3, want3)] {
        let got: Vec<u64> = collectors[(to - 1) as usize]
            .wait_for(want.len())
            .iter()
            .map(|m| match m.body {
                MessageBody::Heartbeat(h) => h.commit,
                _ => u64::MAX,
            })
            .collect();
        assert_eq!(got, want, "peer {to} got its messages in order, each once");
    }
    assert_eq!(transports[0].unknown_peer_messages(), unknown);
    // The sender counts a write once it returned, which may be after the peer read it.
    let sent = || transports[0].metrics().iter().map(|m| m.frames_sent).sum::<u64>();
    wait_until("the frames counted", || sent() >= 300 - unknown + 2);
    assert_eq!(sent(), 300 - unknown + 2);
}

/// Peers come and go while the transport runs: a node started with no peers is reached once
/// both sides know each other (one of them from a group's configuration), a moved peer is
/// redialled at its new address, and a removed one gets nothing more.
#[test]
fn peers_are_added_moved_and_removed_at_runtime() {
    let (listeners, addrs) = listeners(3);
    let mut listeners = listeners.into_iter();
    let start = |id: NodeId, listener: TcpListener| {
        let collector = Arc::new(Collector::default());
        let config = TcpConfig::new(9, id, addrs[(id - 1) as usize]);
        let t =
            TcpTransport::start_with_listener(config, listener, collector.clone()).expect("start");
        (t, collector)
    };
    let (t1, c1) = start(1, listeners.next().expect("1"));
    let (t2, c2) = start(2, listeners.next().expect("2"));
    assert!(t1.peers().is_empty());
    t1.send(heartbeat(1, 1, 2, 0));
    assert_eq!(t1.unknown_peer_messages(), 1, "no peer 2 yet: dropped and counted");
    // Node 2 learns of node 1 by hand, node 1 of node 2 from a configuration (whose address may
    // carry an application's own data after a comma).
    t2.add_peer(1, addrs[0]).expect("add 1");
    let mut membership = Membership::new([1, 2]);
    membership.addresses.insert(2, format!("{},127.0.0.1:6002", addrs[1]));
    membership.addresses.insert(1, addrs[0].to_string());
    t1.membership_changed(1, &membership);
    assert_eq!(t1.peers(), [(2, addrs[1])].into_iter().collect());
    t1.add_peer(2, addrs[1]).expect("adding again changes nothing");
    wait_until("1 and 2 connect", || {
        t1.send(heartbeat(1, 1, 2, 1));
        t2.send(heartbeat(1, 2, 1, 1));
        !c1.got.lock().is_empty() && !c2.got.lock().is_empty()
    });
    assert!(t1.add_peer(1, addrs[0]).is_err(), "a node is not its own peer");
    assert!(t1.add_peer(0, addrs[0]).is_err(), "id 0 is reserved");

    // Node 2 moves: a new process at node 3's address takes over id 2.
    t2.shutdown();
    let collector = Arc::new(Collector::default());
    let config = TcpConfig {
        peers: [(1, addrs[0])].into_iter().collect(),
        ..TcpConfig::new(9, 2, addrs[2])
    };
    let moved =
        TcpTransport::start_with_listener(config, listeners.next().expect("3"), collector.clone())
            .expect("start the moved node");
    t1.add_peer(2, addrs[2]).expect("move 2");
    let before = collector.got.lock().len();
    wait_until("1 reaches 2 at its new address", || {
        t1.send(heartbeat(1, 1, 2, 2));
        collector.got.lock().len() > before
    });

    assert!(t1.remove_peer(2));
    assert!(!t1.remove_peer(2));
    let dropped = t1.unknown_peer_messages();
    t1.send(heartbeat(1, 1, 2, 3));
    assert_eq!(t1.unknown_peer_messages(), dropped + 1);
    drop(moved);
}
