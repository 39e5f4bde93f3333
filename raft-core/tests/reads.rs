//! Reads without the log: ReadIndex on the leader and on followers, the lease, and leadership
//! transfer, in the simulator; including the scenarios that fool a naive implementation.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use common::*;
use raft_core::node::ReadMode;
use raft_core::sim::kv::KvOp;
use raft_core::sim::{Cluster, Faults, SimOptions};
use raft_core::{NodeId, ReadError};

fn put(key: &str, value: &str) -> bytes::Bytes {
    KvOp::Put { key: key.into(), value: value.into() }.encode()
}

fn get(key: &str) -> KvOp {
    KvOp::Get { key: key.into() }
}

/// Runs until read `ticket` is answered (or `max_ms` pass).
fn await_read(c: &mut Cluster, ticket: u64, max_ms: u64) -> Option<Result<String, ReadError>> {
    for _ in 0..max_ms {
        if let Some(result) = c.read_result(ticket) {
            return Some(result.clone());
        }
        run(c, 1);
    }
    c.read_result(ticket).cloned()
}

/// Reads `key` on node `id`, asking again after a refusal (no leader known yet), until served.
fn read_until_served(c: &mut Cluster, id: NodeId, key: &str) -> String {
    for _ in 0..50 {
        let ticket = c.read(id, get(key));
        if let Some(Ok(value)) = await_read(c, ticket, 200) {
            return value;
        }
        run(c, 20);
    }
    panic!("node {id} never served a read of {key}");
}

#[test]
fn every_node_serves_the_latest_write() {
    let mut c = cluster(3, 1);
    let leader = check_one_leader(&mut c);
    let index = one(&mut c, &put("x", "1"), 3, false);
    assert!(index > 0);
    for id in 1..=3 {
        let ticket = c.read(id, get("x"));
        assert_eq!(await_read(&mut c, ticket, 200), Some(Ok("1".into())), "read on node {id}");
    }
    assert!(c.stats().follower_reads >= 2, "{:?}", c.stats());
    let _ = leader;
}

/// Runs until a node of `side` leads a term above `above`; returns it.
fn await_leader_among(c: &mut Cluster, side: &[NodeId], above: u64, max_ms: u64) -> NodeId {
    for _ in 0..max_ms {
        if let Some(&id) =
            side.iter().find(|&&id| c.raft(id).is_some_and(|r| r.is_leader() && r.term() > above))
        {
            return id;
        }
        run(c, 1);
    }
    panic!("no leader among {side:?} above term {above} within {max_ms} ms");
}

/// Runs until node `id`'s machine holds `value` at `key`.
fn await_value(c: &mut Cluster, id: NodeId, key: &str, value: &str, max_ms: u64) {
    for _ in 0..max_ms {
        if c.machine(id).get(key) == Some(value) {
            return;
        }
        run(c, 1);
    }
    panic!("node {id} never applied {key} = {value}");
}

/// The classic stale read: a leader cut off in a minority still believes it leads (without
/// check-quorum nothing tells it otherwise) while the majority elects a new leader and commits
/// a write. A read on the old leader must wait or fail, never answer the old value. The naive
/// implementation (answer from the commit index at once) does answer it, which proves the
/// scenario is the one that matters.
#[test]
fn a_leader_cut_off_in_a_minority_serves_no_stale_read() {
    for naive in [false, true] {
        let mut opts = SimOptions { nodes: 5, seed: 7, ..SimOptions::default() };
        opts.raft.check_quorum = false;
        let mut c = Cluster::new(opts);
        if naive {
            c.set_faults(Faults::reads_without_quorum());
        }
        let old = check_one_leader(&mut c);
        one(&mut c, &put("x", "1"), 5, false);
        let old_term = c.raft(old).unwrap().term();
        let others: Vec<NodeId> = (1..=5).filter(|&id| id != old).collect();
        let (buddy, majority) = (others[0], &others[1..]);
        c.partition(&[&[old, buddy], majority]);
        let new = await_leader_among(&mut c, majority, old_term, 3_000);
        c.propose(new, put("x", "2")).unwrap();
        await_value(&mut c, new, "x", "2", 1_000);
        assert!(c.raft(old).unwrap().is_leader(), "the old leader still believes it leads");
        // The follower on the old leader's side asks the old leader: the same trap.
        let readers: &[NodeId] = if naive { &[old] } else { &[old, buddy] };
        for &on in readers {
            let ticket = c.read(on, get("x"));
            let answer = await_read(&mut c, ticket, 500);
            if naive {
                assert_eq!(answer, Some(Ok("1".into())), "the naive read answers the old value");
            } else {
                assert!(
                    !matches!(&answer, Some(Ok(v)) if v == "1"),
                    "node {on} served a stale read: {answer:?}"
                );
            }
        }
        if !naive {
            // Once healed, the old leader's side follows the new leader and reads see "2".
            c.heal();
            assert_eq!(read_until_served(&mut c, old, "x"), "2");
        }
    }
}
