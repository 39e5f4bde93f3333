//! `INFO`: the node's Raft state (a summary of its shards, then group 1's state), membership,
//! read mode, lease and transport, as a `# Raft` section of `field:value` lines.

use super::{durability_name, Server};

impl Server {
    /// The `INFO` text: a `# Raft` section of `field:value` lines.
    pub fn info(&self) -> String {
        let mut s = String::from("# Raft\r\n");
        let mut line = |k: &str, v: String| {
            s.push_str(k);
            s.push(':');
            s.push_str(&v);
            s.push_str("\r\n");
        };
        line("node_id", self.args.id.to_string());
        line("cluster_id", self.args.cluster_id.to_string());
        line("durability", durability_name(self.args.durability));
        // With shards, what follows the summary is group 1's (RAFTKIT.SHARDS has each group).
        self.shard_summary(&mut line);
        let leader = self.node().leader();
        let leader_client = leader.and_then(|l| self.book.client_addr(l));
        match self.node().status() {
            Ok(status) => {
                let r = &status.raft;
                line("role", r.role.to_string());
                line("term", r.term.to_string());
                line("leader_id", r.leader.unwrap_or(0).to_string());
                line(
                    "leader_client_addr",
                    leader_client.map(|a| a.to_string()).unwrap_or_default(),
                );
                line("commit_index", r.commit_index.to_string());
                line("applied_index", status.applied_index.to_string());
                line("first_index", r.first_index.to_string());
                line("last_index", r.last_index.to_string());
                line("persisted_index", r.persisted_index.to_string());
                line("snapshot_index", r.snapshot_index.to_string());
                line("read_mode", status.read_mode.to_string());
                line("lease_holds", u8::from(r.lease_remaining_ticks > 0).to_string());
                line(
                    "lease_remaining_ms",
                    (u128::from(r.lease_remaining_ticks) * self.args.tick.as_millis()).to_string(),
                );
                line(
                    "transfer_target",
                    r.transfer_target.map_or_else(String::new, |t| t.to_string()),
                );
                line("rejected_messages", status.rejected_messages.to_string());
                line("membership_index", r.membership_index.to_string());
                line("removed", u8::from(r.removed).to_string());
                // Storage damage being repaired from the other nodes (see raft-core's Health).
                let (health, repair_from) = match r.health {
                    raft_core::Health::Repairing { from } => ("repairing", from),
                    _ => ("healthy", 0),
                };
                line("health", health.into());
                line("repair_from", repair_from.to_string());
                self.book.info_lines(&mut line);
                // A full disk: writes wait (and a leader refuses new ones) until space is freed.
                line("storage_full", u8::from(status.storage_full.is_some()).to_string());
                line("storage_error", status.storage_full.unwrap_or_default());
                line("failure", status.failure.unwrap_or_default());
                for p in &r.progress {
                    line(
                        &format!("follower_{}", p.id),
                        format!(
                            "match={},next={},state={:?},inflight={}",
                            p.match_index, p.next_index, p.state, p.inflight_msgs
                        ),
                    );
                }
            }
            Err(_) => {
                line("role", "failed".into());
                line("term", self.node().term().to_string());
                line("leader_id", "0".into());
                line("commit_index", self.node().commit_index().to_string());
                line("applied_index", self.node().applied_index().to_string());
                line("failure", self.node().failure().unwrap_or_else(|| "stopped".into()));
            }
        }
        for m in self.transport.metrics() {
            line(
                &format!("peer_{}", m.peer),
                format!(
                    "connected={},frames_sent={},frames_received={},bytes_sent={},bytes_received={},dropped={},reconnects={},bad_frames={},refused={}",
                    u8::from(m.connected), m.frames_sent, m.frames_received, m.bytes_sent, m.bytes_received,
                    m.dropped, m.reconnects, m.bad_frames, m.refused
                ),
            );
        }
        s
    }
}
