//! [`NodeBuilder`]: everything a node is wired with, each given once.

use std::sync::Arc;
use std::time::Duration;

use super::{Node, NodeError, NodeOptions};
use crate::config::Config;
use crate::error::ConfigError;
use crate::snapshot::SnapshotStore;
use crate::storage::{LogStore, StateMachine};
use crate::transport::{RouteError, Router, Transport};
use crate::types::{GroupId, NodeId};

/// Wires a [`Node`]: its id and group, the voters, a log store, an optional snapshot store, a
/// transport and the router that hands it received messages. Each is given once; the node's
/// inbound is registered with the router when it starts.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use raft_core::node::NodeBuilder;
/// # use raft_core::{MemLogStore, MemNetwork, Router, sim::kv::KvStore};
/// let router = Arc::new(Router::new());
/// let network = MemNetwork::new(1024);
/// let transport = Arc::new(network.join(1, router.clone())?);
/// let node = NodeBuilder::new(1)
///     .voters([1, 2, 3])
///     .log(MemLogStore::new())
///     .transport(transport)
///     .router(router)
///     .start(KvStore::default())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until `start`"]
pub struct NodeBuilder {
    options: NodeOptions,
    log: Option<Arc<dyn LogStore>>,
    snapshots: Option<Arc<dyn SnapshotStore>>,
    transport: Option<Arc<dyn Transport>>,
    router: Option<Arc<Router>>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("options", &self.options)
            .field("log", &self.log.is_some())
            .field("snapshots", &self.snapshots.is_some())
            .field("transport", &self.transport.is_some())
            .field("router", &self.router.is_some())
            .finish()
    }
}

impl NodeBuilder {
    /// A builder for node `id` of group 0, a group of one voter (itself) until
    /// [`voters`](NodeBuilder::voters) says otherwise.
    pub fn new(id: NodeId) -> NodeBuilder {
        NodeBuilder {
            options: NodeOptions::new(id, 0, vec![id]),
            log: None,
            snapshots: None,
            transport: None,
            router: None,
        }
    }

    /// The group this node serves (default 0).
    pub fn group(mut self, group: GroupId) -> NodeBuilder {
        self.options.raft.group = group;
        self
    }

    /// The group's voting members, this node among them. Starting fails with
    /// [`ConfigError::NotAVoter`] otherwise.
    pub fn voters(mut self, voters: impl IntoIterator<Item = NodeId>) -> NodeBuilder {
        self.options.voters = voters.into_iter().collect();
        self
    }

    /// The group's learners (default none): members that receive the log and serve reads but
    /// neither vote nor count towards a majority.
    pub fn learners(mut self, learners: impl IntoIterator<Item = NodeId>) -> NodeBuilder {
        self.options.learners = learners.into_iter().collect();
        self
    }

    /// Real time per tick (default 10 ms).
    pub fn tick(mut self, tick: Duration) -> NodeBuilder {
        self.options.tick = tick;
        self
    }

    /// Adjusts the core's settings ([`Config`]); the id and group stay those given here.
    pub fn config(mut self, adjust: impl FnOnce(&mut Config)) -> NodeBuilder {
        let (id, group) = (self.options.raft.id, self.options.raft.group);
        adjust(&mut self.options.raft);
        self.options.raft.id = id;
        self.options.raft.group = group;
        self
    }

    /// Adjusts the driver's settings ([`NodeOptions`]); the id, group and voters stay those
    /// given here.
    pub fn options(mut self, adjust: impl FnOnce(&mut NodeOptions)) -> NodeBuilder {
        let (id, group, voters) =
            (self.options.raft.id, self.options.raft.group, self.options.voters.clone());
        adjust(&mut self.options);
        self.options.raft.id = id;
        self.options.raft.group = group;
        self.options.voters = voters;
        self
    }

    /// The log store (required).
    pub fn log(mut self, log: impl LogStore + 'static) -> NodeBuilder {
        self.log = Some(Arc::new(log));
        self
    }

    /// The log store, shared with other groups of this process (required, or [`log`](Self::log)).
    pub fn shared_log(mut self, log: Arc<dyn LogStore>) -> NodeBuilder {
        self.log = Some(log);
        self
    }

    /// The snapshot store (without one the node never takes or installs a snapshot, and a
    /// follower that needs one cannot catch up).
    pub fn snapshots(mut self, store: impl SnapshotStore + 'static) -> NodeBuilder {
        self.snapshots = Some(Arc::new(store));
        self
    }

    /// The snapshot store, shared with other groups of this process.
    pub fn shared_snapshots(mut self, store: Arc<dyn SnapshotStore>) -> NodeBuilder {
        self.snapshots = Some(store);
        self
    }

    /// The transport the node sends with (required).
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> NodeBuilder {
        self.transport = Some(transport);
        self
    }

    /// The router the transport delivers into: the node registers its group there when it
    /// starts. Without one, deliver to [`Node::inbound`] yourself.
    pub fn router(mut self, router: Arc<Router>) -> NodeBuilder {
        self.router = Some(router);
        self
    }

    /// Starts the node with `machine` (see [`Node::start`]), and registers it with the router.
    ///
    /// # Errors
    /// [`NodeError::Config`] with [`ConfigError::Missing`] if the log store or the transport
    /// was not given, [`NodeError::Group`] for a group destroyed on this node, and whatever
    /// [`Node::start`] returns.
    pub fn start<M>(self, machine: M) -> Result<Node<M>, NodeError>
    where
        M: StateMachine + Send + 'static,
        M::Output: Send + 'static,
    {
        let log = self.log.ok_or(ConfigError::Missing("a log store"))?;
        let transport = self.transport.ok_or(ConfigError::Missing("a transport"))?;
        let group = self.options.raft.group;
        if let Some(router) = &self.router {
            // A destroyed group's id is not reused: refused before anything starts.
            if let Err(err @ RouteError::Destroyed(_)) = router.check(group) {
                return Err(NodeError::Group(err));
            }
        }
        let node = Node::start(self.options, log, self.snapshots, transport, machine)?;
        if let Some(router) = self.router {
            router.register(group, node.inbound()).map_err(NodeError::Group)?;
        }
        Ok(node)
    }
}
