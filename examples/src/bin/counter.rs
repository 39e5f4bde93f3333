//! Start here: a replicated counter on three nodes (raft-wal, raft-snapshot, raft-net-tcp).
#![allow(clippy::print_stdout)]
use raft_core::{node::NodeBuilder, Entry, EntryKind, Router, StateMachine};
use raft_net_tcp::{TcpConfig, TcpTransport};
use raft_snapshot::FileSnapshotStore;
use raft_wal::Wal;
use std::{collections::BTreeMap, io, net::TcpListener, sync::Arc, time::Duration};

/// The state machine: a number that every entry (8 bytes, little endian) adds to.
struct Counter(i64);
impl StateMachine for Counter {
    type Output = i64;
    fn apply(&mut self, entry: &Entry) -> i64 {
        if let (EntryKind::Normal, Ok(bytes)) = (entry.kind, entry.data[..].try_into()) {
            self.0 += i64::from_le_bytes(bytes);
        }
        self.0
    }
    fn snapshot(&mut self, out: &mut dyn io::Write) -> io::Result<()> {
        out.write_all(&self.0.to_le_bytes())
    }
    fn restore(&mut self, input: &mut dyn io::Read) -> io::Result<()> {
        let mut bytes = [0; 8];
        input.read_exact(&mut bytes).map(|()| self.0 = i64::from_le_bytes(bytes))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let bind = |id| Ok((id, TcpListener::bind("127.0.0.1:0")?));
    let listeners: BTreeMap<u64, _> = (1..=3).map(bind).collect::<io::Result<_>>()?;
    let addrs =
        listeners.iter().map(|(&id, l)| Ok((id, l.local_addr()?))).collect::<io::Result<_>>()?;
    let mut nodes = Vec::new();
    for (id, listener) in listeners {
        let (router, config) = (Arc::new(Router::new()), TcpConfig::for_cluster(1, id, &addrs)?);
        let net = TcpTransport::start_with_listener(config, listener, router.clone())?;
        let data = dir.path().join(format!("node-{id}"));
        std::fs::create_dir_all(data.join("wal"))?; // A WAL opens only an existing directory.
        let wal = Wal::open(data.join("wal"), Default::default())?.0;
        let snapshots = FileSnapshotStore::open(data.join("snap"), Default::default())?.0;
        let node = NodeBuilder::new(id).voters(addrs.keys().copied()).log(wal).snapshots(snapshots);
        nodes.push(node.transport(Arc::new(net)).router(router).start(Counter(0))?);
    }
    let (timeout, mut added) = (Duration::from_secs(5), 0i64);
    while added < 100 {
        let Some(leader) = nodes.iter().find(|n| n.is_leader()) else { continue };
        added += 1;
        let total = leader.propose(added.to_le_bytes().to_vec().into(), timeout)?;
        eprint!("\radded 1..={added} through node {}: the counter is {total}", leader.id());
    }
    eprintln!();
    for node in &nodes {
        while node.read_local(|c: &Counter| c.0, timeout)? != 5050 {
            std::thread::sleep(Duration::from_millis(10)); // A follower applies a little later.
        }
        println!("node {} applied all 100 entries: its counter is 5050", node.id());
    }
    Ok(())
}
