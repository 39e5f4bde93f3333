//! Membership changes on real processes while sixteen clients write and read: a 3-node
//! cluster grows to 5 (two nodes started with `--join`, added as learners, promoted), shrinks
//! to 3 (two voters removed in one change, the leader among them), and a node whose data
//! directory is deleted is replaced under the same id. No acknowledged write may be lost, and the
//! recorded history must be linearizable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use raft_core::sim::kv::{prune_unobserved_unknown_writes, KvModel, KvOp};
use raft_core::sim::linearizability::{check_history, CheckOutcome, Operation};
use raft_core::NodeId;
use raftkit_examples::client::Client;
use raftkit_examples::cluster::{ClusterOptions, LocalCluster};
use raftkit_examples::resp::Reply;
use raftkit_examples::server::fetch_members;

const WAIT: Duration = Duration::from_secs(30);

/// Process tests share two cores: one cluster at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A 3-node cluster of kv-server processes with default settings.
fn start() -> LocalCluster {
    LocalCluster::start(env!("CARGO_BIN_EXE_kv-server"), Vec::new(), &ClusterOptions::default())
        .expect("start cluster")
}

fn leader(cluster: &LocalCluster) -> NodeId {
    cluster.wait_for_leader(WAIT).expect("a leader").0
}

/// Runs an admin command on the leader until it answers `+OK`, retrying while the cluster says
/// nothing was done yet (`-TRYAGAIN`, `-LAGGING`, `-NOLEADER`). Panics on any other answer.
fn admin(cluster: &LocalCluster, args: &[&str]) {
    let deadline = Instant::now() + WAIT;
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    loop {
        assert!(Instant::now() < deadline, "{args:?} never succeeded");
        let l = leader(cluster);
        let reply = cluster.client(l, Duration::from_secs(10)).and_then(|mut c| c.call(&args));
        match reply {
            Ok(Reply::Simple(ok)) if ok == "OK" => return,
            Ok(r) if matches!(r.error_code(), Some("TRYAGAIN" | "LAGGING" | "NOLEADER")) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(args[0])),
        }
    }
}

/// The members node `via` lists: `(id, role)`.
fn members(cluster: &LocalCluster, via: NodeId) -> Vec<(NodeId, String)> {
    fetch_members(cluster.client_addr(via), Duration::from_secs(5))
        .map(|m| m.into_iter().map(|m| (m.id, m.role)).collect())
        .unwrap_or_default()
}

fn wait_members(cluster: &LocalCluster, want: &[(NodeId, &str)]) {
    let want: Vec<(NodeId, String)> = want.iter().map(|&(id, r)| (id, r.to_owned())).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let l = leader(cluster);
        let got = members(cluster, l);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "members {got:?}, wanted {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sixteen clients, each on one node of `targets` (moving on when a node stops serving it),
/// recording every operation.
struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    history: Arc<Mutex<Vec<Operation<KvOp, String>>>>,
    acked: Arc<Mutex<HashMap<String, String>>>,
    timeouts: Arc<AtomicU64>,
}

impl Clients {
    fn start(targets: Arc<Mutex<Vec<SocketAddr>>>) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(Vec::new()));
        let acked = Arc::new(Mutex::new(HashMap::new()));
        let timeouts = Arc::new(AtomicU64::new(0));
        let start_at = Instant::now();
        let threads = (0..16u64)
            .map(|c| {
                let (stop, history, acked, timeouts, targets) = (
                    stop.clone(),
                    history.clone(),
                    acked.clone(),
                    timeouts.clone(),
                    targets.clone(),
                );
                std::thread::spawn(move || {
                    let micros = || start_at.elapsed().as_micros() as u64;
                    let mut pick = c as usize;
                    let mut conn: Option<Client> = None;
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let client = match conn.as_mut() {
                            Some(client) => client,
                            None => {
                                let addr = {
                                    let t = targets.lock();
                                    t[pick % t.len()]
                                };
                                match Client::connect(addr, Duration::from_secs(5)) {
                                    Ok(client) => conn.insert(client),
                                    Err(_) => {
                                        pick += 1;
                                        std::thread::sleep(Duration::from_millis(20));
                                        continue;
                                    }
                                }
                            }
                        };
                        let key = format!("k{}", (c * 7 + seq) % 24);
                        let call = micros();
                        let next_node = |conn: &mut Option<Client>, pick: &mut usize| {
                            *conn = None;
                            *pick += 1;
                        };
                        if !seq.is_multiple_of(3) {
                            let value = format!("c{c}s{seq}");
                            let input = KvOp::Put { key: key.clone(), value: value.clone() };
                            let op = |output: String, ret| Operation {
                                client: c,
                                input: input.clone(),
                                output,
                                call,
                                ret,
                            };
                            match client.call(&[b"SET", key.as_bytes(), value.as_bytes()]) {
                                Ok(Reply::Simple(_)) => {
                                    history.lock().push(op(String::new(), micros()));
                                    acked.lock().insert(key, value);
                                }
                                Ok(r) if r.error_code() == Some("TIMEOUT") => {
                                    timeouts.fetch_add(1, Ordering::Relaxed);
                                    history.lock().push(op(String::new(), u64::MAX));
                                }
                                // Nothing was done (NOLEADER): try another node.
                                Ok(_) => next_node(&mut conn, &mut pick),
                                Err(_) => {
                                    history.lock().push(op(String::new(), u64::MAX));
                                    next_node(&mut conn, &mut pick);
                                }
                            }
                        } else {
                            match client.call(&[b"GET", key.as_bytes()]) {
                                Ok(Reply::Bulk(v)) => {
                                    let v = v
                                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                                        .unwrap_or_default();
                                    history.lock().push(Operation {
                                        client: c,
                                        input: KvOp::Get { key },
                                        output: v,
                                        call,
                                        ret: micros(),
                                    });
                                }
                                _ => next_node(&mut conn, &mut pick),
                            }
                        }
                    }
                })
            })
            .collect();
        Clients { stop, threads, history, acked, timeouts }
    }

    fn finish(self) -> (Vec<Operation<KvOp, String>>, HashMap<String, String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("client thread");
        }
        let history = self.history.lock().clone();
        let acked = self.acked.lock().clone();
        (history, acked, self.timeouts.load(Ordering::Relaxed))
    }
}

#[test]
fn grow_shrink_and_replace_a_wiped_node_under_sixteen_clients() {
    let _serial = SERIAL.lock();
    let mut cluster = start();
    leader(&cluster);
    let targets = Arc::new(Mutex::new(vec![
        cluster.client_addr(1),
        cluster.client_addr(2),
        cluster.client_addr(3),
    ]));
    let clients = Clients::start(targets.clone());
    std::thread::sleep(Duration::from_millis(500));

    // Grow: nodes 4 and 5 join (each asks to be added as a learner), then are promoted.
    cluster.spawn_joining(4, 1, 1).expect("start node 4");
    cluster.spawn_joining(5, 2, 1).expect("start node 5");
    wait_members(
        &cluster,
        &[(1, "voter"), (2, "voter"), (3, "voter"), (4, "learner"), (5, "learner")],
    );
    admin(&cluster, &["RAFTKIT.PROMOTE", "4", "5"]);
    wait_members(&cluster, &[(1, "voter"), (2, "voter"), (3, "voter"), (4, "voter"), (5, "voter")]);
    targets.lock().extend([cluster.client_addr(4), cluster.client_addr(5)]);
    std::thread::sleep(Duration::from_millis(500));

    // Shrink: remove the leader and one other voter in one change. They keep running.
    let old_leader = leader(&cluster);
    let other = (1..=5).find(|&id| id != old_leader).expect("another");
    let (a, b) = (old_leader.to_string(), other.to_string());
    admin(&cluster, &["RAFTKIT.REMOVE", &a, &b]);
    let left: Vec<NodeId> = (1..=5).filter(|&id| id != old_leader && id != other).collect();
    wait_members(&cluster, &left.iter().map(|&id| (id, "voter")).collect::<Vec<_>>());
    assert!(left.contains(&leader(&cluster)));
    targets
        .lock()
        .retain(|&a| a != cluster.client_addr(old_leader) && a != cluster.client_addr(other));
    std::thread::sleep(Duration::from_millis(500));

    // Replace: a voter loses its disk; it is removed, and comes back under the same id, empty.
    let new_leader = leader(&cluster);
    let lost = *left.iter().find(|&&id| id != new_leader).expect("a follower");
    let lost_addr = cluster.client_addr(lost);
    cluster.wipe(lost).expect("wipe");
    targets.lock().retain(|&a| a != lost_addr);
    admin(&cluster, &["RAFTKIT.REMOVE", &lost.to_string()]);
    let via = *left.iter().find(|&&id| id != lost).expect("a member");
    cluster.spawn_joining(lost, via, via).expect("start the replacement");
    let mut want: Vec<(NodeId, &str)> = left.iter().map(|&id| (id, "voter")).collect();
    want.iter_mut().filter(|(id, _)| *id == lost).for_each(|m| m.1 = "learner");
    wait_members(&cluster, &want);
    admin(&cluster, &["RAFTKIT.PROMOTE", &lost.to_string()]);
    wait_members(&cluster, &left.iter().map(|&id| (id, "voter")).collect::<Vec<_>>());
    // The replacement joined with nothing under an old member's id: it counted as having lost
    // its log until it caught up, and is whole now.
    let deadline = Instant::now() + WAIT;
    loop {
        let info = cluster.info(lost).unwrap_or_default();
        if info.iter().any(|(k, v)| k == "health" && v == "healthy") {
            break;
        }
        assert!(Instant::now() < deadline, "the replacement is still repairing: {info:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(cluster.log_path(lost)).unwrap_or_default();
    assert!(log.contains("starting with a damaged log"), "the replacement was not fenced");
    targets.lock().push(cluster.client_addr(lost));
    std::thread::sleep(Duration::from_millis(800));

    let (mut history, acked, timeouts) = clients.finish();
    let completed = history.iter().filter(|op| op.ret != u64::MAX).count();
    eprintln!(
        "{completed} operations completed, {} writes acknowledged on {} keys; removed {old_leader} \
         (the leader) and {other}, replaced {lost}",
        history.iter().filter(|op| matches!(op.input, KvOp::Put { .. }) && op.ret != u64::MAX).count(),
        acked.len()
    );
    assert!(completed > 500, "only {completed} operations completed");
    assert_eq!(timeouts, 0, "writes timed out during the changes");
    // Every acknowledged write is on every member, the replaced node included.
    let l = leader(&cluster);
    let mut barrier = cluster.client(l, Duration::from_secs(5)).expect("connect");
    assert_eq!(
        barrier.call(&[b"SET", b"barrier", b"1"]).expect("barrier"),
        Reply::Simple("OK".into())
    );
    let keys: Vec<String> = acked.keys().cloned().collect();
    let on_leader = cluster.local_values(l, &keys).expect("LOCALMGET");
    let missing: Vec<&String> =
        keys.iter().zip(&on_leader).filter(|(_, v)| v.is_none()).map(|(k, _)| k).collect();
    assert!(missing.is_empty(), "acknowledged keys missing on the leader: {missing:?}");
    let deadline = Instant::now() + WAIT;
    for &id in &left {
        while cluster.local_values(id, &keys).expect("LOCALMGET") != on_leader {
            assert!(Instant::now() < deadline, "node {id} does not hold what the leader holds");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    prune_unobserved_unknown_writes(&mut history);
    let outcome = check_history(&KvModel, &history, 20_000_000);
    assert_eq!(outcome, CheckOutcome::Linearizable, "{} operations", history.len());
}

/// A voter whose disk was deleted, restarted with `--join` before it was removed, refuses to
/// start (it would have forgotten its votes and what it acknowledged); once removed it joins.
#[test]
fn a_wiped_voter_must_be_removed_before_it_joins_again() {
    let _serial = SERIAL.lock();
    let mut cluster = start();
    let l = leader(&cluster);
    let lost = (1..=3).find(|&id| id != l).expect("a follower");
    let via = (1..=3).find(|&id| id != l && id != lost).expect("the other follower");
    cluster.wipe(lost).expect("wipe");
    cluster.spawn_joining(lost, via, via).expect("spawn");
    let deadline = Instant::now() + WAIT;
    while !cluster.exited(lost) {
        assert!(Instant::now() < deadline, "the wiped voter started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(cluster.log_path(lost)).expect("log");
    assert!(log.contains("remove it first"), "{log}");
    admin(&cluster, &["RAFTKIT.REMOVE", &lost.to_string()]);
    cluster.spawn_joining(lost, via, via).expect("spawn again");
    wait_members(
        &cluster,
        &[(1, "voter"), (2, "voter"), (3, "voter")]
            .map(|(id, role)| (id, if id == lost { "learner" } else { role })),
    );
}
