//! The group's members as the server knows them: each member's Raft and client address (carried
//! in the configuration as `RAFT_ADDR,CLIENT_ADDR`), the admin commands that change the
//! membership, and joining a running cluster.
//!
//! ```text
//! RAFTKIT.MEMBERS                         every member: id, role, Raft and client address
//! RAFTKIT.ADDLEARNER ID RAFT CLIENT       add a learner (it gets the log, does not vote)
//! RAFTKIT.PROMOTE ID [ID...]              make learners voters (once caught up)
//! RAFTKIT.REMOVE ID [ID...]               remove voters or learners (the leader too)
//! RAFTKIT.CHANGE (ADD ID RAFT CLIENT | PROMOTE ID | REMOVE ID)...   any batch in one change
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use raft_core::{GroupId, Membership, MembershipChange, Message, NodeId, Transport};

use super::io::ReplyTo;
use super::{error_reply, Server, ServerError, Waits};
use crate::client::Client;
use crate::resp::{self, Reply};
use raft_core::node::NodeError;

/// How a member's address is written in the configuration.
pub fn format_address(raft: SocketAddr, client: SocketAddr) -> String {
    format!("{raft},{client}")
}

/// The Raft and client address of a configuration's address, if it has both.
pub fn parse_address(address: &str) -> Option<(SocketAddr, SocketAddr)> {
    let (raft, client) = address.split_once(',')?;
    Some((raft.trim().parse().ok()?, client.trim().parse().ok()?))
}

/// The members this node knows of: the configuration in effect on it, and every address it
/// has seen (the first configuration's, from `--peer`, included).
#[derive(Debug, Default)]
pub(crate) struct Book {
    membership: RwLock<Membership>,
    addresses: RwLock<BTreeMap<NodeId, (SocketAddr, SocketAddr)>>,
}

impl Book {
    /// A book that knows `addresses` already.
    pub(crate) fn with(addresses: BTreeMap<NodeId, (SocketAddr, SocketAddr)>) -> Book {
        Book { membership: RwLock::default(), addresses: RwLock::new(addresses) }
    }

    /// The client address of node `id`.
    pub(crate) fn client_addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.addresses.read().get(&id).map(|a| a.1)
    }

    /// The configuration in effect on this node.
    pub(crate) fn membership(&self) -> Membership {
        self.membership.read().clone()
    }

    fn update(&self, membership: &Membership) {
        let mut addresses = self.addresses.write();
        for (&id, address) in &membership.addresses {
            match parse_address(address) {
                Some(a) => {
                    addresses.insert(id, a);
                }
                None => tracing::warn!(id, address, "a member's address is not RAFT,CLIENT"),
            }
        }
        *self.membership.write() = membership.clone();
    }

    /// `RAFTKIT.MEMBERS`: one `[id, role, raft address, client address]` array per member.
    pub(crate) fn members_reply(&self) -> Vec<u8> {
        let m = self.membership();
        let addresses = self.addresses.read();
        let mut r = Vec::new();
        let members = m.members();
        resp::array_header(&mut r, members.len());
        for id in members {
            let role = if m.voters.contains(&id) {
                "voter"
            } else if m.outgoing.contains(&id) {
                "leaving"
            } else {
                "learner"
            };
            let (raft, client) = addresses
                .get(&id)
                .map_or((String::new(), String::new()), |a| (a.0.to_string(), a.1.to_string()));
            resp::array_header(&mut r, 4);
            resp::bulk(&mut r, Some(id.to_string().as_bytes()));
            resp::bulk(&mut r, Some(role.as_bytes()));
            resp::bulk(&mut r, Some(raft.as_bytes()));
            resp::bulk(&mut r, Some(client.as_bytes()));
        }
        r
    }

    /// `INFO raft` lines about the membership.
    pub(crate) fn info_lines(&self, line: &mut dyn FnMut(&str, String)) {
        let m = self.membership();
        let list = |ids: &[NodeId]| ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        line("voters", list(&m.voters));
        line("outgoing_voters", list(&m.outgoing));
        line("learners", list(&m.learners));
        line("joint", u8::from(m.is_joint()).to_string());
    }
}

/// The server's transport: learns members' addresses from each new configuration, then hands
/// the configuration on (raft-net-tcp dials new members).
pub(crate) struct BookTransport {
    pub(crate) inner: Arc<dyn Transport>,
    pub(crate) book: Arc<Book>,
}

impl Transport for BookTransport {
    fn send(&self, msg: Message) {
        self.inner.send(msg);
    }

    fn send_all(&self, msgs: Vec<Message>) {
        self.inner.send_all(msgs);
    }

    fn membership_changed(&self, group: GroupId, membership: &Membership) {
        self.book.update(membership);
        self.inner.membership_changed(group, membership);
    }
}

/// Parses the arguments of `RAFTKIT.ADDLEARNER`, `PROMOTE`, `REMOVE` and `CHANGE` (after the
/// command's name) into one batch.
pub(crate) fn parse_changes(name: &str, args: &[Vec<u8>]) -> Result<Vec<MembershipChange>, String> {
    let text: Vec<&str> = args
        .iter()
        .map(|a| std::str::from_utf8(a).map_err(|_| "ERR arguments must be UTF-8".to_owned()))
        .collect::<Result<_, _>>()?;
    let id = |s: &str| -> Result<NodeId, String> {
        s.parse::<NodeId>().ok().filter(|&id| id > 0).ok_or(format!("ERR not a node id: {s}"))
    };
    let addr = |s: &str| -> Result<SocketAddr, String> {
        s.parse().map_err(|_| format!("ERR not an address (IP:PORT): {s}"))
    };
    let add = |i: &str, raft: &str, client: &str| -> Result<MembershipChange, String> {
        Ok(MembershipChange::AddLearner {
            id: id(i)?,
            address: format_address(addr(raft)?, addr(client)?),
        })
    };
    let arity = || format!("ERR wrong number of arguments for '{}'", name.to_lowercase());
    match name {
        "RAFTKIT.ADDLEARNER" => match text[..] {
            [i, raft, client] => Ok(vec![add(i, raft, client)?]),
            _ => Err(arity()),
        },
        "RAFTKIT.PROMOTE" | "RAFTKIT.REMOVE" if !text.is_empty() => text
            .iter()
            .map(|s| {
                let id = id(s)?;
                Ok(if name == "RAFTKIT.PROMOTE" {
                    MembershipChange::Promote { id }
                } else {
                    MembershipChange::Remove { id }
                })
            })
            .collect(),
        "RAFTKIT.CHANGE" if !text.is_empty() => {
            let mut changes = Vec::new();
            let mut rest = &text[..];
            while let Some((op, tail)) = rest.split_first() {
                match (op.to_ascii_uppercase().as_str(), tail) {
                    ("ADD", [i, raft, client, tail @ ..]) => {
                        changes.push(add(i, raft, client)?);
                        rest = tail;
                    }
                    ("PROMOTE", [i, tail @ ..]) => {
                        changes.push(MembershipChange::Promote { id: id(i)? });
                        rest = tail;
                    }
                    ("REMOVE", [i, tail @ ..]) => {
                        changes.push(MembershipChange::Remove { id: id(i)? });
                        rest = tail;
                    }
                    _ => {
                        return Err(format!(
                            "ERR expected ADD ID RAFT CLIENT, PROMOTE ID or REMOVE ID at {op}"
                        ))
                    }
                }
            }
            Ok(changes)
        }
        _ => Err(arity()),
    }
}

/// One member as `RAFTKIT.MEMBERS` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// The node.
    pub id: NodeId,
    /// `voter`, `leaving` (a voter the change in progress removes) or `learner`.
    pub role: String,
    /// Its Raft address.
    pub raft: Option<SocketAddr>,
    /// Its client address.
    pub client: Option<SocketAddr>,
}

/// Asks the server at `addr` for its members (`RAFTKIT.MEMBERS`).
pub fn fetch_members(addr: SocketAddr, timeout: Duration) -> std::io::Result<Vec<MemberInfo>> {
    let mut client = Client::connect(addr, timeout)?;
    let reply = client.call(&[b"RAFTKIT.MEMBERS"])?;
    let bad = || std::io::Error::other(format!("RAFTKIT.MEMBERS answered {reply:?}"));
    let Reply::Array(Some(rows)) = &reply else { return Err(bad()) };
    rows.iter()
        .map(|row| {
            let Reply::Array(Some(fields)) = row else { return Err(bad()) };
            let text: Vec<String> = fields.iter().filter_map(Reply::as_text).collect();
            let [id, role, raft, client] = &text[..] else { return Err(bad()) };
            Ok(MemberInfo {
                id: id.parse().map_err(|_| bad())?,
                role: role.clone(),
                raft: raft.parse().ok(),
                client: client.parse().ok(),
            })
        })
        .collect()
}

/// Asks the cluster (through the member at `join`, which forwards to the leader) to add this
/// node as a learner, retrying while the cluster is busy, until `deadline`. Returns the last
/// reply.
pub(crate) fn ask_to_join(
    join: SocketAddr,
    id: NodeId,
    raft: SocketAddr,
    client: SocketAddr,
    deadline: Instant,
    is_member: impl Fn() -> bool,
) -> Result<(), String> {
    let (id_s, raft_s, client_s) = (id.to_string(), raft.to_string(), client.to_string());
    let mut last = String::new();
    while Instant::now() < deadline {
        if is_member() {
            return Ok(());
        }
        let reply = Client::connect(join, Duration::from_secs(5)).and_then(|mut c| {
            c.call(&[
                b"RAFTKIT.ADDLEARNER",
                id_s.as_bytes(),
                raft_s.as_bytes(),
                client_s.as_bytes(),
            ])
        });
        match reply {
            Ok(Reply::Simple(_)) => return Ok(()),
            Ok(Reply::Error(line)) if line.starts_with("ERR") => {
                if is_member() || line.contains("already a member") {
                    return Ok(());
                }
                return Err(line);
            }
            Ok(other) => last = format!("{other:?}"),
            Err(err) => last = err.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("not added before the deadline (last answer: {last})"))
}

/// The members of the cluster the server at `join` belongs to, asked for until it answers
/// (for up to 30 s: it may be starting too).
pub(super) fn discover(join: SocketAddr) -> Result<Vec<MemberInfo>, ServerError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match fetch_members(join, Duration::from_secs(2)) {
            Ok(members) if !members.is_empty() => return Ok(members),
            Ok(_) | Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Ok(_) => {
                return Err(ServerError::Join { addr: join, why: "it lists no members".into() })
            }
            Err(err) => return Err(ServerError::Join { addr: join, why: err.to_string() }),
        }
    }
}

/// Asks the cluster to add this node as a learner, unless its log already makes it a member.
pub(super) fn join_cluster(server: std::sync::Weak<Server>, join: SocketAddr) {
    let Some(s) = server.upgrade() else { return };
    let (id, raft, client) = (s.args.id, s.args.raft_addr, s.args.client_addr);
    drop(s);
    let is_member = || server.upgrade().is_some_and(|s| s.book.membership().contains(id));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    match ask_to_join(join, id, raft, client, deadline, is_member) {
        Ok(()) => {
            tracing::info!(id, %join, "added to the cluster (as a learner, or already a member)")
        }
        Err(why) => tracing::error!(id, %join, %why, "could not join the cluster"),
    }
}

impl Server {
    /// Runs a membership change as leader: `+OK` once it is complete (committed, and the group
    /// out of the joint configuration).
    pub(super) fn change_membership(
        self: &Arc<Self>,
        changes: Vec<raft_core::MembershipChange>,
        reply: ReplyTo,
    ) -> Waits {
        let node_id = self.args.id;
        let transfer_to = self.book.membership().voters.into_iter().find(|&v| v != node_id);
        let server = Arc::downgrade(self);
        self.node().change_membership_with(changes, move |result| {
            use raft_core::MembershipError as E;
            let mut r = Vec::new();
            match result {
                Ok(_) => resp::simple(&mut r, "OK"),
                Err(NodeError::Membership(err @ (E::InProgress { .. } | E::LeaderNotReady))) => {
                    resp::error(&mut r, &format!("TRYAGAIN {err}; nothing was done"))
                }
                Err(NodeError::Membership(err @ E::LearnerBehind { .. })) => {
                    resp::error(&mut r, &format!("LAGGING {err}; nothing was done"))
                }
                Err(NodeError::Membership(err @ E::RemovedInThisTerm { .. })) => {
                    // The node may come back in the next term: start one.
                    if let (Some(to), Some(server)) = (transfer_to, server.upgrade()) {
                        server.node().transfer_leader_with(to, |_| {});
                    }
                    resp::error(
                        &mut r,
                        &format!("TRYAGAIN {err}; leadership is moving, nothing was done"),
                    )
                }
                Err(NodeError::Membership(err)) => {
                    resp::error(&mut r, &format!("ERR {err}; nothing was done"))
                }
                Err(NodeError::Transferring { to }) => resp::error(
                    &mut r,
                    &format!("TRYAGAIN leadership is moving to node {to}; nothing was done"),
                ),
                Err(err) => r = error_reply(&err),
            }
            reply.send(r);
        });
        Waits::Local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse_and_bad_ones_are_refused() {
        let a = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        let add =
            parse_changes("RAFTKIT.ADDLEARNER", &a(&["4", "127.0.0.1:7004", "127.0.0.1:6004"]));
        assert_eq!(
            add,
            Ok(vec![MembershipChange::AddLearner {
                id: 4,
                address: "127.0.0.1:7004,127.0.0.1:6004".into()
            }])
        );
        assert_eq!(
            parse_changes("RAFTKIT.CHANGE", &a(&["promote", "4", "REMOVE", "1"])),
            Ok(vec![MembershipChange::Promote { id: 4 }, MembershipChange::Remove { id: 1 }])
        );
        assert!(parse_changes("RAFTKIT.PROMOTE", &a(&["0"])).is_err());
        assert!(parse_changes("RAFTKIT.PROMOTE", &a(&[])).is_err());
        assert!(parse_changes("RAFTKIT.ADDLEARNER", &a(&["4", "nowhere", "127.0.0.1:1"])).is_err());
        assert!(parse_changes("RAFTKIT.CHANGE", &a(&["ADD", "4"])).is_err());
        assert_eq!(
            parse_address("127.0.0.1:7004,127.0.0.1:6004"),
            Some(("127.0.0.1:7004".parse().unwrap(), "127.0.0.1:6004".parse().unwrap()))
        );
        assert_eq!(parse_address("127.0.0.1:7004"), None);
    }
}
