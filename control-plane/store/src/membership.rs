//! Growing and shrinking the Raft cluster, and what `weft member list`
//! shows. Every change runs at the leader; a member that does not lead
//! passes the request on ([`crate::network::routes`]).
//!
//! A joiner is added as a learner first and promoted to voter only once it
//! has caught up (openraft's blocking `add_learner`), so a slow joiner never
//! counts towards a quorum it cannot serve.

use std::collections::BTreeSet;

use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};

use super::{NodeId, Store, StoreError};

/// A member asking to join: its id and the URL other members reach it at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Join {
    pub id: NodeId,
    pub addr: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Voter,
    Learner,
}

/// One row of `weft member list`, as the leader sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub addr: String,
    pub role: Role,
    /// The leader's term.
    pub term: u64,
    /// Log entries the member is behind the leader's last (None: unknown).
    pub lag: Option<u64>,
    /// Milliseconds since the leader last heard from it (0 for the leader).
    pub last_contact_ms: Option<u64>,
}

impl Store {
    /// At the leader: adds `j` as a learner, waits until it has caught up,
    /// then promotes it to voter. Joining again is harmless.
    pub async fn join_here(&self, j: Join) -> Result<(), StoreError> {
        let (voter, taken_at) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            (
                membership.voter_ids().any(|v| v == j.id),
                membership.get_node(&j.id).map(|n| n.addr.clone()),
            )
        };
        // Another process with the same id would take over this member's votes.
        if let Some(addr) = taken_at.filter(|a| *a != j.addr) {
            return Err(StoreError::Unavailable(format!(
                "member id {} is taken by {addr}; pick another --node-id",
                j.id
            )));
        }
        if voter {
            return Ok(());
        }
        self.raft
            .add_learner(j.id, BasicNode { addr: j.addr }, true)
            .await?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([j.id])), false)
            .await?;
        Ok(())
    }

    /// At the leader: takes member `id` out of the cluster (voter or learner).
    pub async fn remove_here(&self, id: NodeId) -> Result<(), StoreError> {
        let (known, voter) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            (
                membership.get_node(&id).is_some(),
                membership.voter_ids().any(|v| v == id),
            )
        };
        if !known {
            return Err(StoreError::Unavailable(format!("no member {id}")));
        }
        let ids = BTreeSet::from([id]);
        let change = if voter {
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        self.raft.change_membership(change, false).await?;
        Ok(())
    }

    /// Every member with its role, lag and last contact, from this member's
    /// view (meaningful at the leader, which alone tracks replication).
    pub fn members_here(&self) -> Vec<Member> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let contacts = self.proposer.net.contacts();
        membership
            .nodes()
            .map(|(id, node)| {
                let leader = m.current_leader == Some(*id);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned())
                    .map(|l| l.map(|l| l.index).unwrap_or(0));
                Member {
                    id: *id,
                    addr: node.addr.clone(),
                    role: if leader {
                        Role::Leader
                    } else if voters.contains(id) {
                        Role::Voter
                    } else {
                        Role::Learner
                    },
                    term: m.current_term,
                    lag: if leader {
                        Some(0)
                    } else {
                        matched.map(|i| last.saturating_sub(i))
                    },
                    last_contact_ms: if *id == self.node_id {
                        Some(0)
                    } else {
                        contacts.get(id).map(|t| t.elapsed().as_millis() as u64)
                    },
                }
            })
            .collect()
    }
}

/// How long a membership change may take at the leader (a joiner catches up first).
pub const CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

impl Store {
    /// On a member started with `--server`: asks that member (which passes
    /// it to the leader) to add this one, retrying until `timeout`.
    pub async fn ask_to_join(
        &self,
        server: &str,
        me: Join,
        timeout: std::time::Duration,
    ) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let sent: Result<Result<(), String>, _> = self
                .proposer
                .net
                .send(server, crate::network::RPC_JOIN, &me, CHANGE_WAIT)
                .await;
            let why = match sent {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(m)) => m,
                Err(e) => format!("{e:?}"),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "joining through {server}: {why}"
                )));
            }
            tracing::info!(server, "join not accepted yet: {why}");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}
