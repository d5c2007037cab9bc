//! Reaching the leader from any member. A write proposed on a follower is
//! forwarded to the leader (`/internal/raft/propose`), and a linearizable
//! read on a follower asks the leader for its read index
//! (`/internal/raft/read-index`) and waits until it has applied that far, as
//! etcd serves reads on followers.
//!
//! Every wait is bounded. With no reachable leader within [`LEADER_WAIT`] the
//! caller gets [`StoreError::Unavailable`] (retryable, nothing was sent). A
//! proposal that was sent but got no answer within [`COMMIT_WAIT`] is
//! [`StoreError::Uncertain`]: it may still commit, so only the caller's
//! preconditions (resourceVersion) make a retry safe.

use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use super::network::{Network, RPC_PROPOSE, RPC_READ_INDEX, SendError};
use super::{Failed, NodeId, Op, OpResult, Request, StoreError, WeftRaft};

/// How long a write or linearized read waits for a reachable leader.
pub const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How long a proposal waits for its commit (and a read for its read index).
pub const COMMIT_WAIT: Duration = Duration::from_secs(10);
/// Pause between attempts while leadership settles.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// One op's outcome as the store's callers see it. `index` is the Raft log
/// index that carried it, so a follower can wait until it has applied it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub revision: u64,
    pub object: Option<Value>,
    pub index: u64,
}

pub(crate) type OpOutcome = Result<Applied, StoreError>;

/// An op's outcome on the wire, from the leader back to a follower.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    Applied(Applied),
    Failed(Failed),
    Unavailable(String),
    Uncertain(String),
    Internal(String),
}

/// The leader's answer to a forwarded proposal or read-index request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer<T> {
    /// The callee does not lead (any more): ask again, elsewhere.
    NotLeader,
    Done(T),
}

impl From<OpOutcome> for Outcome {
    fn from(r: OpOutcome) -> Self {
        match r {
            Ok(a) => Outcome::Applied(a),
            Err(StoreError::Precondition(f)) => Outcome::Failed(f),
            Err(StoreError::Unavailable(m)) => Outcome::Unavailable(m),
            Err(e @ StoreError::NoQuorum(_)) => Outcome::Unavailable(e.to_string()),
            Err(StoreError::Uncertain(m)) => Outcome::Uncertain(m),
            Err(e) => Outcome::Internal(e.to_string()),
        }
    }
}

impl From<Outcome> for OpOutcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Applied(a) => Ok(a),
            Outcome::Failed(f) => Err(StoreError::Precondition(f)),
            Outcome::Unavailable(m) => Err(StoreError::Unavailable(m)),
            Outcome::Uncertain(m) => Err(StoreError::Uncertain(m)),
            Outcome::Internal(m) => Err(StoreError::Remote(m)),
        }
    }
}

/// Resolves once the leader this member knows of is no longer `was`
/// (never, once Raft has stopped).
pub(crate) async fn leader_changed(raft: &WeftRaft, was: Option<NodeId>) {
    let mut metrics = raft.metrics();
    if metrics.wait_for(|m| m.current_leader != was).await.is_err() {
        std::future::pending::<()>().await;
    }
}

enum Leader {
    Me,
    Other(NodeId, String),
    Unknown,
}

/// This member's view of who leads, from its Raft metrics.
#[derive(Clone)]
pub(crate) struct Proposer {
    pub raft: WeftRaft,
    pub net: Network,
    pub me: NodeId,
    pub counters: crate::metrics::RaftCounters,
    /// A leader that no quorum acknowledged for this long takes itself to
    /// be cut off, as etcd's CheckQuorum: by then its followers may have
    /// elected another.
    pub quorum_timeout: Duration,
}

impl Proposer {
    fn leader(&self) -> Leader {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        match m.current_leader {
            Some(id) if id == self.me => Leader::Me,
            Some(id) => match m.membership_config.membership().get_node(&id) {
                Some(BasicNode { addr }) => Leader::Other(id, addr.clone()),
                None => Leader::Unknown,
            },
            None => Leader::Unknown,
        }
    }

    /// The leader's URL when another member leads.
    pub fn leader_addr(&self) -> Option<String> {
        match self.leader() {
            Leader::Other(_, addr) => Some(addr),
            Leader::Me | Leader::Unknown => None,
        }
    }

    /// Waits briefly for leadership to settle; false once `deadline` passed.
    async fn pause(&self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tokio::time::sleep(left.min(RETRY_PAUSE)).await;
        true
    }

    fn no_leader() -> StoreError {
        StoreError::Unavailable(format!(
            "no reachable Raft leader within {}s",
            LEADER_WAIT.as_secs()
        ))
    }

    /// Commits `ops` as one entry, here if this member leads, else at the
    /// leader. One outcome per op, in order.
    pub async fn propose(&self, ops: Vec<Op>) -> Vec<OpOutcome> {
        let n = ops.len();
        let all = |e: StoreError| -> Vec<OpOutcome> {
            self.counters.proposals_failed.inc();
            (0..n).map(|_| Err(e.clone_lossy())).collect()
        };
        let req = Request { ops };
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            match self.leader() {
                Leader::Me => match self.commit_here(req.clone()).await {
                    Ok(Some(out)) => return out,
                    Ok(None) => {}
                    Err(e) => return all(e),
                },
                Leader::Other(id, addr) => {
                    let sent: Result<Answer<Vec<Outcome>>, _> = tokio::select! {
                        sent = self.net.send(&addr, RPC_PROPOSE, &req, COMMIT_WAIT) => sent,
                        // A leader cut off from this member (and likely from
                        // the quorum) would hold the caller for COMMIT_WAIT:
                        // once Raft moves on, answer at once.
                        () = leader_changed(&self.raft, Some(id)) => Err(SendError::Uncertain(format!(
                            "the leader {addr} was replaced while the write was in flight; \
                             it may still commit"
                        ))),
                    };
                    match sent {
                        Ok(Answer::Done(out)) => {
                            let out: Vec<OpOutcome> = out.into_iter().map(Into::into).collect();
                            self.await_applied(out.iter().flatten().map(|a| a.index).max())
                                .await;
                            return out;
                        }
                        Ok(Answer::NotLeader) | Err(SendError::NotSent(_)) => {}
                        Err(SendError::Uncertain(m)) => return all(StoreError::Uncertain(m)),
                    }
                }
                Leader::Unknown => {}
            }
            if !self.pause(deadline).await {
                return all(Self::no_leader());
            }
        }
    }

    /// `Ok(None)`: this member stopped leading before the entry was
    /// appended (or it was truncated away), so it did not commit; try again.
    async fn commit_here(&self, req: Request) -> Result<Option<Vec<OpOutcome>>, StoreError> {
        self.check_quorum()?;
        match tokio::time::timeout(COMMIT_WAIT, self.raft.client_write(req)).await {
            Ok(Ok(resp)) => {
                let index = resp.log_id.index;
                Ok(Some(
                    resp.data
                        .results
                        .into_iter()
                        .map(|r| match r {
                            OpResult::Ok { revision, object } => Ok(Applied {
                                revision,
                                object,
                                index,
                            }),
                            OpResult::Failed(f) => Err(StoreError::Precondition(f)),
                        })
                        .collect(),
                ))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Ok(None),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(StoreError::Uncertain(format!(
                "not committed within {}s; it may still commit",
                COMMIT_WAIT.as_secs()
            ))),
        }
    }

    /// Read-your-writes on a follower: wait (bounded) until this member has
    /// applied what the leader committed for it.
    async fn await_applied(&self, index: Option<u64>) {
        if let Some(index) = index {
            let _ = self.wait_applied(index).await;
        }
    }

    /// Makes the following local reads linearizable: the read index is
    /// confirmed by a quorum (at the leader) and applied here.
    pub async fn linearize(&self) -> Result<(), StoreError> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            match self.leader() {
                Leader::Me => {
                    self.check_quorum()?;
                    match tokio::time::timeout(COMMIT_WAIT, self.raft.ensure_linearizable()).await {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {}
                        Ok(Err(e)) => return Err(e.into()),
                        Err(_) => return Err(Self::no_quorum()),
                    }
                }
                Leader::Other(id, addr) => {
                    let sent: Result<Answer<Result<u64, String>>, _> = tokio::select! {
                        sent = self.net.send(&addr, RPC_READ_INDEX, &(), COMMIT_WAIT) => sent,
                        // A read may simply ask the new leader.
                        () = leader_changed(&self.raft, Some(id)) => Err(SendError::NotSent(addr.clone())),
                    };
                    match sent {
                        Ok(Answer::Done(Ok(index))) => return self.wait_applied(index).await,
                        Ok(Answer::Done(Err(m))) => return Err(StoreError::Unavailable(m)),
                        // A read has no side effect: any failure may be retried.
                        Ok(Answer::NotLeader) | Err(_) => {}
                    }
                }
                Leader::Unknown => {}
            }
            if !self.pause(deadline).await {
                return Err(Self::no_leader());
            }
        }
    }

    /// The leader's read index, confirmed by a heartbeat to a quorum.
    /// `Ok(None)`: this member no longer leads.
    pub async fn read_index_here(&self) -> Result<Option<u64>, StoreError> {
        self.check_quorum()?;
        match tokio::time::timeout(COMMIT_WAIT, self.raft.get_read_log_id()).await {
            Ok(Ok((read, applied))) => {
                let index = read.max(applied).map(|l| l.index).unwrap_or(0);
                Ok(Some(index))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => Ok(None),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Self::no_quorum()),
        }
    }

    /// A leader cut off from its quorum (its followers dead or unreachable)
    /// could only hold its callers for the whole commit wait: it refuses at
    /// once, before proposing anything, so the caller gets a retryable 503.
    fn check_quorum(&self) -> Result<(), StoreError> {
        let since = self.raft.metrics().borrow().millis_since_quorum_ack;
        match since {
            Some(ms) if ms > self.quorum_timeout.as_millis() as u64 => {
                Err(StoreError::Unavailable(format!(
                    "this leader has heard from no quorum of members for {ms} ms"
                )))
            }
            _ => Ok(()),
        }
    }

    fn no_quorum() -> StoreError {
        StoreError::Unavailable(format!(
            "no quorum confirmed the leader within {}s",
            COMMIT_WAIT.as_secs()
        ))
    }

    async fn wait_applied(&self, index: u64) -> Result<(), StoreError> {
        let applied = self.raft.metrics().borrow().last_applied.map(|l| l.index);
        if applied >= Some(index) {
            return Ok(());
        }
        self.raft
            .wait(Some(COMMIT_WAIT))
            .applied_index_at_least(Some(index), "applied here")
            .await?;
        Ok(())
    }
}
