//! What `/metrics` shows of this member's Raft beyond openraft's own
//! metrics (term, log and applied indexes, read at scrape time): leaders
//! seen, failed proposals, the commit index and the log's fsync latency,
//! as etcd shows them. The API server registers them with its own.

use openraft::BasicNode;
use openraft::RaftMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::NodeId;

#[derive(Clone)]
pub struct RaftCounters {
    /// Each change to a known leader (the first one included), as etcd's
    /// `etcd_server_leader_changes_seen_total`.
    pub leader_changes: Counter,
    /// Write batches that failed for want of a leader or quorum, or whose
    /// outcome is unknown (not precondition failures).
    pub proposals_failed: Counter,
    /// The highest log index this member knows to be committed.
    pub commit_index: Gauge,
    /// One synced rocksdb write per append of log entries.
    pub fsync_seconds: Histogram,
    /// Snapshots this member built (each lets the log be purged).
    pub snapshots_built: Counter,
    /// Snapshots installed from the leader: this member was behind the purged log.
    pub snapshots_installed: Counter,
}

impl Default for RaftCounters {
    fn default() -> Self {
        RaftCounters {
            leader_changes: Counter::default(),
            proposals_failed: Counter::default(),
            commit_index: Gauge::default(),
            // 50 µs to about 1.6 s.
            fsync_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            snapshots_built: Counter::default(),
            snapshots_installed: Counter::default(),
        }
    }
}

impl RaftCounters {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weft_raft_leader_changes",
            "Leader changes seen by this member",
            self.leader_changes.clone(),
        );
        registry.register(
            "weft_raft_proposals_failed",
            "Write batches that failed: no leader, no quorum, or an unknown outcome",
            self.proposals_failed.clone(),
        );
        registry.register(
            "weft_raft_commit_index",
            "Highest Raft log index known committed",
            self.commit_index.clone(),
        );
        registry.register(
            "weft_raft_log_fsync_duration_seconds",
            "Synced writes of appended Raft log entries",
            self.fsync_seconds.clone(),
        );
        registry.register(
            "weft_raft_snapshots_built",
            "Raft snapshots this member built, after which its log was purged",
            self.snapshots_built.clone(),
        );
        registry.register(
            "weft_raft_snapshots_installed",
            "Raft snapshots installed from the leader by a member behind its purged log",
            self.snapshots_installed.clone(),
        );
    }
}

/// Counts leader changes until Raft stops (its metrics sender goes).
pub(crate) async fn count_leader_changes(
    mut metrics: watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    changes: Counter,
) {
    let mut last = None;
    loop {
        let now = metrics.borrow_and_update().current_leader;
        if now.is_some() && now != last {
            changes.inc();
        }
        if now.is_some() {
            last = now;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
