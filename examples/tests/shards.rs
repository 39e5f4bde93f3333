//! The sharded key-value server (`--shards N`) as real processes: keys spread over N groups,
//! commands over several shards, leaders balanced and balanced again after a node restarts, and
//! a thousand groups surviving a node's SIGKILL without losing an acknowledged write.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use raft_core::NodeId;
use raftkit_examples::client::{info_field, Client};
use raftkit_examples::cluster::{ClusterOptions, LocalCluster};
use raftkit_examples::resp::Reply;
use raftkit_examples::server::{one_key_per_shard, shard_of};

/// Process tests share two cores: one cluster at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn start(shards: usize) -> LocalCluster {
    let options = ClusterOptions { shards, ..ClusterOptions::default() };
    LocalCluster::start(env!("CARGO_BIN_EXE_kv-server"), Vec::new(), &options)
        .expect("start cluster")
}

/// One group's line of `RAFTKIT.SHARDS`.
#[derive(Debug)]
struct ShardLine {
    leader: NodeId,
    asleep: bool,
}

fn shard_lines(cluster: &LocalCluster, via: NodeId) -> Option<Vec<ShardLine>> {
    let mut client = cluster.client(via, Duration::from_secs(5)).ok()?;
    let Reply::Array(Some(items)) = client.call(&[b"RAFTKIT.SHARDS"]).ok()? else { return None };
    items
        .iter()
        .map(|item| {
            let text = item.as_text()?;
            let field = |name: &str| {
                text.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            };
            Some(ShardLine {
                leader: field("leader")?.parse().ok()?,
                asleep: field("asleep")? == "1",
            })
        })
        .collect()
}

/// Waits until every group has a leader that every running node agrees on, and each node leads
/// within one of an even share; returns how many each leads.
fn wait_balanced(
    cluster: &LocalCluster,
    shards: usize,
    within: Duration,
) -> BTreeMap<NodeId, usize> {
    let deadline = Instant::now() + within;
    let mut last = BTreeMap::new();
    while Instant::now() < deadline {
        let views: Vec<Vec<ShardLine>> =
            cluster.running().into_iter().filter_map(|id| shard_lines(cluster, id)).collect();
        if views.len() == cluster.running().len() && views.iter().all(|v| v.len() == shards) {
            let agreed = (0..shards).all(|g| {
                views[0][g].leader != 0 && views.iter().all(|v| v[g].leader == views[0][g].leader)
            });
            let mut counts: BTreeMap<NodeId, usize> =
                cluster.ids().into_iter().map(|id| (id, 0)).collect();
            for line in &views[0] {
                *counts.entry(line.leader).or_default() += 1;
            }
            let (lo, hi) = (counts.values().min().copied(), counts.values().max().copied());
            if agreed && hi.unwrap_or(0) - lo.unwrap_or(0) <= 1 {
                return counts;
            }
            last = counts;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("leaders never balanced: {last:?}");
}

/// Runs `args` through node `via` until the answer is not "nothing was done" / "unknown".
fn call(cluster: &LocalCluster, via: NodeId, args: &[&[u8]]) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "{:?} never succeeded",
            String::from_utf8_lossy(args[0])
        );
        let Ok(mut client) = cluster.client(via, Duration::from_secs(5)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        match client.call(args) {
            Ok(Reply::Error(e)) if e.starts_with("NOLEADER") || e.starts_with("TIMEOUT") => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
            Ok(reply) => return reply,
        }
    }
}

fn bulk(value: &str) -> Reply {
    Reply::Bulk(Some(value.as_bytes().to_vec()))
}

#[test]
fn keys_spread_over_shards_and_leaders_rebalance_after_a_restart() {
    let _serial = SERIAL.lock();
    const SHARDS: usize = 16;
    let mut cluster = start(SHARDS);
    let counts = wait_balanced(&cluster, SHARDS, Duration::from_secs(60));
    assert_eq!(counts.values().sum::<usize>(), SHARDS);

    // Writes through every node, a key per write; they land in every shard.
    let keys: Vec<String> = (0..120).map(|i| format!("key:{i}")).collect();
    let mut expected = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        let via = 1 + (i % 3) as NodeId;
        let value = format!("v{i}");
        assert_eq!(
            call(&cluster, via, &[b"SET", key.as_bytes(), value.as_bytes()]),
            Reply::Simple("OK".into())
        );
        expected.insert(key.clone(), value);
    }
    let used: std::collections::HashSet<usize> =
        keys.iter().map(|k| shard_of(k.as_bytes(), SHARDS)).collect();
    assert_eq!(used.len(), SHARDS, "the keys reach every shard");

    // MGET over every shard, in the keys' order, from every node.
    let mget = |cluster: &LocalCluster, via: NodeId, expected: &HashMap<String, String>| {
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        let want: Vec<Reply> =
            keys.iter().map(|k| expected.get(k).map_or(Reply::Bulk(None), |v| bulk(v))).collect();
        assert_eq!(call(cluster, via, &args), Reply::Array(Some(want)), "MGET via node {via}");
    };
    for via in cluster.ids() {
        mget(&cluster, via, &expected);
        assert_eq!(call(&cluster, via, &[b"DBSIZE"]), Reply::Integer(keys.len() as i64));
    }
    // DEL and EXISTS over several shards add up.
    let gone: Vec<&[u8]> = keys[..10].iter().map(|k| k.as_bytes()).collect();
    let mut del: Vec<&[u8]> = vec![b"DEL"];
    del.extend(&gone);
    del.push(b"never-set");
    assert_eq!(call(&cluster, 2, &del), Reply::Integer(10));
    let mut exists: Vec<&[u8]> = vec![b"EXISTS"];
    exists.extend(keys[5..20].iter().map(|k| k.as_bytes()));
    assert_eq!(call(&cluster, 3, &exists), Reply::Integer(10));
    for k in &keys[..10] {
        expected.remove(k);
    }
    // A forwarded command names its shard; a node with another count refuses it.
    let mut client = cluster.client(1, Duration::from_secs(5)).expect("client");
    let refused = client.call(&[b"RAFTKIT.SHARD", b"1", b"8", b"GET", b"k"]).expect("reply");
    assert_eq!(refused.error_code(), Some("ERR"), "{refused:?}");
    let info = client.info().expect("INFO");
    assert_eq!(info_field(&info, "shards"), Some("16"));
    assert!(info_field(&info, "shards_leading").is_some());

    // A node killed: its groups elect other leaders and every key stays writable.
    cluster.kill(2).expect("kill node 2");
    for (i, key) in keys.iter().enumerate().skip(10).step_by(3) {
        let value = format!("w{i}");
        let via = if i % 2 == 0 { 1 } else { 3 };
        assert_eq!(
            call(&cluster, via, &[b"SET", key.as_bytes(), value.as_bytes()]),
            Reply::Simple("OK".into())
        );
        expected.insert(key.clone(), value);
    }
    // Back: it gets its share of leaders again, and serves every key as written.
    cluster.spawn(2).expect("restart node 2");
    let counts = wait_balanced(&cluster, SHARDS, Duration::from_secs(60));
    assert!(counts[&2] >= SHARDS / 3, "node 2 leads {counts:?}");
    for via in cluster.ids() {
        mget(&cluster, via, &expected);
    }
}

/// Reads every key through node `via` (one MGET per 200 keys) until each holds
/// `value_prefix<i>`; returns how long that took.
fn read_all(cluster: &LocalCluster, via: NodeId, keys: &[String], value_prefix: &str) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut first = 0;
    while first < keys.len() {
        assert!(
            Instant::now() < deadline,
            "keys from {first} on never read back through node {via}"
        );
        let end = (first + 200).min(keys.len());
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(keys[first..end].iter().map(|k| k.as_bytes()));
        let want: Vec<Reply> = (first..end).map(|i| bulk(&format!("{value_prefix}{i}"))).collect();
        match cluster.client(via, Duration::from_secs(10)).and_then(|mut c| c.call(&args)) {
            Ok(Reply::Array(Some(got))) => {
                assert_eq!(got, want, "acknowledged writes lost (keys {first}..{end})");
                first = end;
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    started.elapsed()
}

#[test]
fn a_thousand_groups_survive_a_node_sigkill_and_restart() {
    let _serial = SERIAL.lock();
    const SHARDS: usize = 1000;
    let mut cluster = start(SHARDS);
    let keys = one_key_per_shard(SHARDS);
    let started = Instant::now();
    cluster.set_all(1, &keys, "a", Duration::from_secs(120)).expect("a write per group");
    eprintln!("a write acknowledged in each of {SHARDS} groups after {:?}", started.elapsed());

    // Node 3 dies; every group goes on with the other two, and takes a second write.
    cluster.kill(3).expect("kill node 3");
    cluster.set_all(2, &keys, "b", Duration::from_secs(120)).expect("a second write per group");
    let idle = shard_lines(&cluster, 1).expect("RAFTKIT.SHARDS");
    eprintln!("{} of {SHARDS} groups asleep on node 1", idle.iter().filter(|l| l.asleep).count());

    // Back: every group serves through it, every acknowledged write there.
    cluster.spawn(3).expect("restart node 3");
    let took = read_all(&cluster, 3, &keys, "b");
    eprintln!("every group served through the restarted node {took:?} after its restart");
    read_all(&cluster, 1, &keys, "b");
    let mut client =
        Client::connect(cluster.client_addr(3), Duration::from_secs(5)).expect("client");
    let info = client.info().expect("INFO");
    assert_eq!(info_field(&info, "shards"), Some("1000"));
}
