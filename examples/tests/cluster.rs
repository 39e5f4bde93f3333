//! The key-value server as real processes on loopback: leader SIGKILL and restart, a follower
//! SIGSTOPped and resumed, a full cluster restart, a node of another cluster refused, a
//! linearizability check of clients hammering every node while the leader is killed, and real
//! `redis-cli` / `redis-benchmark` against it.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use raft_core::sim::kv::{prune_unobserved_unknown_writes, KvModel, KvOp};
use raft_core::sim::linearizability::{check_history, CheckOutcome, Operation};
use raft_core::NodeId;
use raftkit_examples::client::{info_field, Client};
use raftkit_examples::cluster::{ClusterOptions, LocalCluster};
use raftkit_examples::resp::Reply;
use raftkit_examples::server::LogStoreKind;

const WAIT: Duration = Duration::from_secs(20);

/// Process tests share two cores: one cluster at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn start(options: &ClusterOptions) -> LocalCluster {
    LocalCluster::start(env!("CARGO_BIN_EXE_kv-server"), Vec::new(), options)
        .expect("start cluster")
}

fn leader(cluster: &LocalCluster) -> NodeId {
    cluster.wait_for_leader(WAIT).expect("a leader").0
}

/// Writes `key = value` through node `via`, retrying while the answer says nothing was done
/// or the outcome is unknown (a SET may be repeated safely).
fn set(cluster: &LocalCluster, via: NodeId, key: &str, value: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "SET {key} never succeeded");
        let Ok(mut client) = cluster.client(via, Duration::from_secs(5)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        match client.call(&[b"SET", key.as_bytes(), value.as_bytes()]) {
            Ok(Reply::Simple(ok)) if ok == "OK" => return,
            Ok(Reply::Error(e)) if e.starts_with("NOLEADER") || e.starts_with("TIMEOUT") => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("SET {key}: {other:?}"),
        }
    }
}

/// Every running node holds exactly `expected`, once it applied the leader's commit index.
fn assert_all_nodes_hold(cluster: &LocalCluster, expected: &HashMap<String, String>) {
    let l = leader(cluster);
    let commit = cluster.info_u64(l, "commit_index").expect("commit index");
    assert!(cluster.wait_applied(commit, WAIT), "nodes did not apply {commit}");
    let keys: Vec<String> = expected.keys().cloned().collect();
    for id in cluster.running() {
        let values = cluster.local_values(id, &keys).expect("LOCALMGET");
        for (key, value) in keys.iter().zip(values) {
            assert_eq!(value.as_deref(), Some(expected[key].as_str()), "node {id}, key {key}");
        }
    }
}

#[test]
fn leader_sigkill_and_restart() {
    leader_sigkill_and_restart_on(LogStoreKind::Wal);
}

/// The same with every node's log in tikv's raft-engine.
#[cfg(feature = "raft-engine")]
#[test]
fn leader_sigkill_and_restart_on_raft_engine() {
    leader_sigkill_and_restart_on(LogStoreKind::RaftEngine);
}

/// A node refuses a data directory that holds the other store's log (it would start on an
/// empty log and forget its votes and acknowledged entries).
#[cfg(feature = "raft-engine")]
#[test]
fn a_data_directory_of_the_other_log_store_is_refused() {
    let _serial = SERIAL.lock();
    let mut cluster = start(&ClusterOptions::default());
    set(&cluster, 1, "k", "v");
    cluster.kill(1).expect("kill");
    cluster.spec_mut(1).expect("node 1").log_store = LogStoreKind::RaftEngine;
    cluster.spawn(1).expect("spawn");
    let deadline = Instant::now() + WAIT;
    while !cluster.exited(1) {
        assert!(Instant::now() < deadline, "node 1 started on the wrong log store");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(cluster.log_path(1)).expect("log");
    assert!(log.contains("holds a wal log"), "{log}");
}

fn leader_sigkill_and_restart_on(log_store: LogStoreKind) {
    let _serial = SERIAL.lock();
    let mut cluster = start(&ClusterOptions { log_store, ..ClusterOptions::default() });
    let mut expected = HashMap::new();
    for i in 0..100 {
        let (k, v) = (format!("a{i}"), format!("before-{i}"));
        set(&cluster, (i % 3) + 1, &k, &v);
        expected.insert(k, v);
    }
    let old = leader(&cluster);
    cluster.kill(old).expect("kill");
    let new = leader(&cluster);
    assert_ne!(new, old);
    for i in 0..100 {
        let (k, v) = (format!("a{i}"), format!("after-{i}"));
        set(&cluster, new, &k, &v);
        expected.insert(k, v);
    }
    cluster.spawn(old).expect("restart");
    assert_all_nodes_hold(&cluster, &expected);
    assert_eq!(cluster.running().len(), 3);
}

#[test]
fn a_stopped_follower_catches_up_when_resumed() {
    let _serial = SERIAL.lock();
    let cluster = start(&ClusterOptions { snapshot_entries: 200, ..ClusterOptions::default() });
    let l = leader(&cluster);
    let follower = cluster.ids().into_iter().find(|&id| id != l).expect("a follower");
    cluster.signal(follower, "STOP").expect("SIGSTOP");
    let mut expected = HashMap::new();
    for i in 0..600 {
        let (k, v) = (format!("s{}", i % 150), format!("v{i}"));
        set(&cluster, l, &k, &v);
        expected.insert(k, v);
    }
    // It fell behind past the leader's snapshot; it catches up (from the log the leader keeps,
    // or by InstallSnapshot once the log is compacted past it) and snapshots on its own.
    let snapshot = cluster.info_u64(l, "snapshot_index").expect("snapshot index");
    assert!(snapshot > 0, "the leader took a snapshot");
    cluster.signal(follower, "CONT").expect("SIGCONT");
    assert_all_nodes_hold(&cluster, &expected);
    // Its own snapshot is written after it applied: wait for it rather than race it.
    let deadline = Instant::now() + WAIT;
    while cluster.info_u64(follower, "snapshot_index").unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the follower holds no snapshot");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_cluster_restart_keeps_every_write() {
    let _serial = SERIAL.lock();
    let mut cluster = start(&ClusterOptions::default());
    let mut expected = HashMap::new();
    for i in 0..200 {
        let (k, v) = (format!("r{i}"), format!("value-{i}"));
        set(&cluster, (i % 3) + 1, &k, &v);
        expected.insert(k, v);
    }
    let l = leader(&cluster);
    let mut client = cluster.client(l, WAIT).expect("connect");
    assert_eq!(client.call(&[b"INCR", b"counter"]).expect("INCR"), Reply::Integer(1));
    cluster.kill_all();
    for id in cluster.ids() {
        cluster.spawn(id).expect("restart");
    }
    assert_all_nodes_hold(&cluster, &expected);
    let l = leader(&cluster);
    let mut client = cluster.client(l, WAIT).expect("connect");
    assert_eq!(client.call(&[b"INCR", b"counter"]).expect("INCR"), Reply::Integer(2));
    assert_eq!(client.call(&[b"DBSIZE"]).expect("DBSIZE"), Reply::Integer(201));
}

#[test]
fn a_node_of_another_cluster_is_refused() {
    let _serial = SERIAL.lock();
    let mut cluster = start(&ClusterOptions::default());
    cluster.kill(3).expect("kill");
    cluster.spec_mut(3).expect("node 3").cluster_id = 99;
    cluster.spawn(3).expect("spawn as another cluster");
    // Nodes 1 and 2 are a quorum and carry on.
    set(&cluster, 1, "k", "v");
    std::thread::sleep(Duration::from_millis(500));
    let info3 = cluster.info(3).expect("info");
    assert_eq!(info_field(&info3, "leader_id"), Some("0"), "node 3 never hears from the leader");
    assert_eq!(info_field(&info3, "applied_index"), Some("0"));
    let info1 = cluster.info(1).expect("info");
    let peer3 = info_field(&info1, "peer_3").expect("peer_3 metrics");
    assert!(peer3.contains("connected=0"), "{peer3}");
    assert!(!peer3.contains("refused=0"), "{peer3}");
    let log = std::fs::read_to_string(cluster.log_path(3)).expect("log");
    assert!(log.contains("refused a peer's connection") && log.contains("WrongCluster"), "{log}");
}

/// One operation of the recorded history, in microseconds since the start.
fn record(
    history: &Mutex<Vec<Operation<KvOp, String>>>,
    client: u64,
    input: KvOp,
    output: String,
    call: u64,
    ret: u64,
) {
    history.lock().push(Operation { client, input, output, call, ret });
}

#[test]
fn clients_on_every_node_stay_linearizable_while_the_leader_is_killed() {
    let _serial = SERIAL.lock();
    let mut cluster = start(&ClusterOptions {
        request_timeout: Duration::from_secs(1),
        ..ClusterOptions::default()
    });
    leader(&cluster);
    let history = Arc::new(Mutex::new(Vec::new()));
    let start_at = Instant::now();
    let micros = move || start_at.elapsed().as_micros() as u64;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addrs: Vec<_> = cluster.ids().iter().map(|&id| cluster.client_addr(id)).collect();
    let clients: Vec<_> = (0..6u64)
        .map(|c| {
            let (history, stop, addrs) = (history.clone(), stop.clone(), addrs.clone());
            std::thread::spawn(move || {
                let mut node = c as usize % addrs.len();
                let mut conn: Option<Client> = None;
                let mut seq = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seq += 1;
                    let key = format!("k{}", (c + seq) % 4);
                    let client = match conn.as_mut() {
                        Some(cl) => cl,
                        None => match Client::connect(addrs[node], Duration::from_secs(2)) {
                            Ok(cl) => conn.insert(cl),
                            Err(_) => {
                                node = (node + 1) % addrs.len();
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        },
                    };
                    let call = micros();
                    if seq.is_multiple_of(2) {
                        let value = format!("c{c}s{seq};");
                        let input = KvOp::Put { key: key.clone(), value: value.clone() };
                        match client.call(&[b"SET", key.as_bytes(), value.as_bytes()]) {
                            Ok(Reply::Simple(_)) => {
                                record(&history, c, input, String::new(), call, micros())
                            }
                            Ok(r) if r.error_code() == Some("TIMEOUT") => {
                                record(&history, c, input, String::new(), call, u64::MAX)
                            }
                            // NOLEADER: nothing was done.
                            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
                            Err(_) => {
                                // The connection died mid-request: outcome unknown.
                                record(&history, c, input, String::new(), call, u64::MAX);
                                conn = None;
                                node = (node + 1) % addrs.len();
                            }
                        }
                    } else {
                        match client.call(&[b"GET", key.as_bytes()]) {
                            Ok(Reply::Bulk(v)) => {
                                let v = v
                                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                                    .unwrap_or_default();
                                record(&history, c, KvOp::Get { key }, v, call, micros());
                            }
                            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
                            Err(_) => {
                                conn = None;
                                node = (node + 1) % addrs.len();
                            }
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let l = leader(&cluster);
    cluster.kill(l).expect("kill leader");
    std::thread::sleep(Duration::from_millis(2000));
    cluster.spawn(l).expect("restart");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let mut history = history.lock().clone();
    let completed = history.iter().filter(|op| op.ret != u64::MAX).count();
    assert!(completed > 200, "only {completed} operations completed");
    prune_unobserved_unknown_writes(&mut history);
    let outcome = check_history(&KvModel, &history, 5_000_000);
    assert_eq!(outcome, CheckOutcome::Linearizable, "{} operations", history.len());
}

fn redis_tool(name: &str) -> Command {
    let found = Command::new(name).arg("--version").output().is_ok();
    assert!(found, "{name} is not installed: scripts/test.sh installs redis-tools");
    Command::new(name)
}

#[test]
fn redis_cli_and_redis_benchmark_work() {
    let _serial = SERIAL.lock();
    let cluster = start(&ClusterOptions::default());
    let l = leader(&cluster);
    let follower = cluster.ids().into_iter().find(|&id| id != l).expect("a follower");
    let cli = |id: NodeId, args: &[&str]| -> String {
        let out = redis_tool("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &cluster.client_addr(id).port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(cli(l, &["PING"]), "PONG");
    assert_eq!(cli(follower, &["SET", "greeting", "hello world"]), "OK");
    assert_eq!(cli(l, &["GET", "greeting"]), "hello world");
    assert_eq!(cli(follower, &["INCR", "n"]), "1");
    assert_eq!(cli(l, &["EXISTS", "greeting", "n", "nope"]), "2");
    assert_eq!(cli(l, &["DEL", "n"]), "1");
    assert_eq!(cli(l, &["DBSIZE"]), "1");
    assert!(cli(l, &["NOSUCHCOMMAND"]).contains("ERR unknown command"));
    let info = cli(follower, &["INFO", "raft"]);
    assert!(info.contains("role:follower") && info.contains(&format!("leader_id:{l}")), "{info}");
    for (id, pipeline) in [(l, "1"), (follower, "16")] {
        let out = redis_tool("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &cluster.client_addr(id).port().to_string()])
            .args(["-t", "set,get", "-n", "3000", "-c", "8", "-P", pipeline, "-q"])
            .output()
            .expect("redis-benchmark");
        let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
        assert!(out.status.success(), "{out:?}");
        assert!(
            text.contains("SET:") && text.contains("GET:") && text.contains("requests per second"),
            "{text}"
        );
    }
    // redis-benchmark's keys went through the log like any other write.
    assert!(cli(l, &["EXISTS", "key:__rand_int__"]) == "1");
}

#[test]
fn bad_flags_are_refused_with_help() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kv-server")).args(args).output().expect("run")
    };
    let help = run(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--durability"));
    for bad in [
        &["--id", "1"][..],
        &[
            "--id",
            "x",
            "--raft-addr",
            "127.0.0.1:1",
            "--client-addr",
            "127.0.0.1:2",
            "--data-dir",
            "/tmp/x",
        ],
        &[
            "--id",
            "1",
            "--raft-addr",
            "127.0.0.1:1",
            "--client-addr",
            "127.0.0.1:2",
            "--data-dir",
            "/tmp/x",
            "--durability",
            "sometimes",
        ],
        &[
            "--id",
            "1",
            "--raft-addr",
            "127.0.0.1:1",
            "--client-addr",
            "127.0.0.1:2",
            "--data-dir",
            "/tmp/x",
            "--peer",
            "1=127.0.0.1:3,127.0.0.1:4",
        ],
        &["--bogus"],
    ] {
        let out = run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("kv-server:"), "{bad:?}");
    }
}

/// Leadership handed to a follower while 16 clients write through every node: the transfer
/// answers `+OK`, the target leads, no client sees `-TIMEOUT` or `-NOLEADER` (writes that
/// arrive during the transfer wait for the new leader), and every acknowledged write is on
/// every node afterwards.
#[test]
fn a_transfer_under_sixteen_writers_loses_nothing_and_times_nothing_out() {
    let _serial = SERIAL.lock();
    let cluster = start(&ClusterOptions::default());
    let old = leader(&cluster);
    let to = old % 3 + 1;
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..16u64)
        .map(|c| {
            let addr = cluster.client_addr(c % 3 + 1);
            let (acked, errors, stop) = (acked.clone(), errors.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(addr, Duration::from_secs(5)).expect("connect");
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (k, v) = (format!("t{c}-{}", i % 50), format!("v{i}"));
                    match client.call(&[b"SET", k.as_bytes(), v.as_bytes()]) {
                        Ok(Reply::Simple(ok)) if ok == "OK" => {
                            acked.lock().insert(k, v);
                        }
                        other => errors.lock().push(format!("{other:?}")),
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let mut admin = cluster.client(old, Duration::from_secs(5)).expect("connect");
    let id = to.to_string();
    let reply = admin.call(&[b"RAFTKIT.TRANSFER", id.as_bytes()]).expect("transfer");
    assert_eq!(reply, Reply::Simple("OK".into()));
    assert_eq!(cluster.info_u64(old, "leader_id"), Some(to));
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    let errors = errors.lock().clone();
    assert!(errors.is_empty(), "{} errors, first: {:?}", errors.len(), errors.first());
    assert_eq!(leader(&cluster), to);
    let acked = acked.lock().clone();
    assert!(acked.len() > 100, "only {} keys written", acked.len());
    assert_all_nodes_hold(&cluster, &acked);
}

/// A follower cut off from its leader (Raft links only; clients still reach it) while the
/// leader and the other follower commit a new value: every read on it fails (nothing was
/// done) or, once healed, sees the new value; none answers the old one.
#[test]
fn a_follower_cut_off_from_the_leader_serves_no_stale_read() {
    let _serial = SERIAL.lock();
    let cluster = start(&ClusterOptions { debug_commands: true, ..ClusterOptions::default() });
    let l = leader(&cluster);
    let f = l % 3 + 1;
    set(&cluster, l, "x", "old");
    let commit = cluster.info_u64(l, "commit_index").expect("commit index");
    assert!(cluster.wait_applied(commit, WAIT));
    let debug = |id: NodeId, args: &[&[u8]]| {
        let mut c = cluster.client(id, Duration::from_secs(5)).expect("connect");
        assert_eq!(c.call(args).expect("debug"), Reply::Simple("OK".into()));
    };
    debug(f, &[b"RAFTKIT.DEBUG", b"CUT", l.to_string().as_bytes()]);
    debug(l, &[b"RAFTKIT.DEBUG", b"CUT", f.to_string().as_bytes()]);
    set(&cluster, l, "x", "new");
    let mut client = cluster.client(f, Duration::from_secs(5)).expect("connect");
    let started = Instant::now();
    let mut refused = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        match client.call(&[b"GET", b"x"]).expect("reply") {
            Reply::Bulk(Some(v)) => assert_eq!(v, b"new", "a stale read on the cut-off follower"),
            Reply::Error(e) => {
                assert!(e.starts_with("NOLEADER"), "{e}");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(refused > 0, "the cut-off follower answered every read");
    debug(f, &[b"RAFTKIT.DEBUG", b"HEAL"]);
    debug(l, &[b"RAFTKIT.DEBUG", b"HEAL"]);
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "the healed follower never served the new value");
        if let Reply::Bulk(Some(v)) = client.call(&[b"GET", b"x"]).expect("reply") {
            assert_eq!(v, b"new");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
