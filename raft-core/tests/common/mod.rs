//! Helpers shared by the scenario tests: a cluster with lab-like timing, and the checks the
//! MIT 6.824 Raft lab builds its tests from, in our own words.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use raft_core::sim::{Cluster, SimOptions};
use raft_core::{Index, NodeId, RoleKind, Term};

/// Virtual microseconds in a millisecond.
pub const MS: u64 = 1_000;

/// A cluster of `n` nodes on a reliable network: 10 ms ticks, elections after 100–200 ms,
/// heartbeats every 20 ms.
pub fn cluster(n: usize, seed: u64) -> Cluster {
    Cluster::new(SimOptions { nodes: n, seed, ..SimOptions::default() })
}

/// Runs for `ms` virtual milliseconds, failing the test on any safety violation.
pub fn run(c: &mut Cluster, ms: u64) {
    c.run_for(ms * MS).unwrap_or_else(|e| panic!("safety violation: {e}"));
}

fn connected_up(c: &Cluster) -> Vec<NodeId> {
    c.ids().filter(|&id| c.is_up(id) && c.is_connected(id)).collect()
}

/// Waits until exactly one connected node leads the highest term and returns it; fails if two
/// connected nodes lead the same term.
pub fn check_one_leader(c: &mut Cluster) -> NodeId {
    for _ in 0..10 {
        run(c, 500);
        let mut by_term: std::collections::BTreeMap<Term, Vec<NodeId>> = Default::default();
        for id in connected_up(c) {
            let raft = c.raft(id).expect("up");
            if raft.role() == RoleKind::Leader {
                by_term.entry(raft.term()).or_default().push(id);
            }
        }
        for (term, leaders) in &by_term {
            assert!(leaders.len() <= 1, "term {term} has leaders {leaders:?}");
        }
        if let Some((_, leaders)) = by_term.iter().next_back() {
            return leaders[0];
        }
    }
    panic!("no leader elected");
}

/// Every connected node has the same term; returns it.
pub fn check_terms(c: &Cluster) -> Term {
    let terms: Vec<Term> =
        connected_up(c).iter().map(|&id| c.raft(id).expect("up").term()).collect();
    assert!(terms.windows(2).all(|w| w[0] == w[1]), "terms disagree: {terms:?}");
    terms[0]
}

/// No connected node believes it leads.
pub fn check_no_leader(c: &Cluster) {
    for id in connected_up(c) {
        assert_ne!(
            c.raft(id).expect("up").role(),
            RoleKind::Leader,
            "node {id} leads without a quorum"
        );
    }
}

/// How many running nodes applied `index`, checking they all applied the same command.
pub fn n_committed(c: &Cluster, index: Index) -> (usize, Option<Bytes>) {
    let applied = c.applied_at(index);
    if let Some((_, first)) = applied.first() {
        for (id, e) in &applied {
            assert_eq!(e.data, first.data, "node {id} applied a different command at {index}");
        }
    }
    (applied.len(), applied.first().map(|(_, e)| e.data.clone()))
}

/// Proposes `cmd` until a leader accepts it and `expected` nodes apply it; returns its index.
/// With `retry`, a proposal that a new leader overwrote is tried again (as a client would).
pub fn one(c: &mut Cluster, cmd: &[u8], expected: usize, retry: bool) -> Index {
    let cmd = Bytes::copy_from_slice(cmd);
    let deadline = c.now_us() + 10_000 * MS;
    let mut start = 0usize;
    let n = c.ids().count();
    while c.now_us() < deadline {
        let mut index = None;
        for k in 0..n {
            let id = ((start + k) % n) as NodeId + 1;
            if !c.is_connected(id) {
                continue; // Like a client that cannot reach it.
            }
            if let Ok(entry) = c.propose(id, cmd.clone()) {
                index = Some(entry.index);
                start = id as usize;
                break;
            }
        }
        if let Some(index) = index {
            let wait_until = c.now_us() + 2_000 * MS;
            while c.now_us() < wait_until {
                let (count, data) = n_committed(c, index);
                if count >= expected && data.as_ref() == Some(&cmd) {
                    return index;
                }
                run(c, 20);
            }
            assert!(retry, "command {cmd:?} at index {index} failed to reach agreement");
        } else {
            run(c, 50);
        }
    }
    panic!("command {cmd:?} failed to reach agreement within 10 s");
}

/// Waits until at least `n` nodes applied `index`; returns the command there.
pub fn wait_committed(c: &mut Cluster, index: Index, n: usize, max_ms: u64) -> Option<Bytes> {
    let deadline = c.now_us() + max_ms * MS;
    loop {
        let (count, data) = n_committed(c, index);
        if count >= n {
            return data;
        }
        if c.now_us() >= deadline {
            return None;
        }
        run(c, 10);
    }
}
