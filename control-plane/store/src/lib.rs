//! The cluster store: openraft over rocksdb. Every write goes through Raft,
//! even with one member; reads come from the local state machine.
//!
//! Keys are `group \0 resource \0 namespace \0 name` (namespace empty for
//! cluster-scoped objects), so a namespace or a whole resource is one prefix.

pub mod backup;
pub mod events;
pub mod forward;
pub mod identity;
pub mod log_store;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod state_machine;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use forward::{OpOutcome, Proposer};
use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, Fatal, InitializeError,
    QuorumNotEnough, RaftError,
};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use events::{Event, EventType, Expired, Feed};
pub use log_store::LogStore;
pub use network::Network;
use state_machine::SmShared;
pub use state_machine::StateMachine;

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Weft's Raft types: object writes in, write outcomes out.
    pub TypeConfig:
        D = Request,
        R = Response,
);

pub type WeftRaft = Raft<TypeConfig>;

pub(crate) const CF_LOG: &str = "raft_log";
pub(crate) const CF_RAFT: &str = "raft_meta";
pub(crate) const CF_OBJECTS: &str = "objects";
pub(crate) const CF_SM: &str = "sm_meta";

/// What must hold for a write to apply; checked in the state machine, so it
/// is atomic with the write on every member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// Put: create or replace. Delete: the key must exist.
    None,
    /// The key must not exist (create).
    Absent,
    /// The key must exist, at any revision.
    Exists,
    /// The key must exist at exactly this revision (compare-and-swap).
    Revision(u64),
}

/// One write to one key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: String,
        object: Value,
        precondition: Precondition,
    },
    Delete {
        key: String,
        precondition: Precondition,
    },
}

/// A Raft entry: writes from concurrent clients, batched (group commit) so
/// one log fsync and one apply fsync serve them all. They apply in order,
/// each with its own revision and precondition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failed {
    NotFound,
    AlreadyExists,
    Conflict { current: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum OpResult {
    /// Written at `revision`; `object` is the stored (or, for a delete, the last) state.
    Ok {
        revision: u64,
        object: Option<Value>,
    },
    Failed(Failed),
}

/// One result per op of the entry (none for blank and membership entries).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub results: Vec<OpResult>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("precondition failed: {0:?}")]
    Precondition(Failed),
    /// Retryable: this member is not the leader (from openraft; writes and
    /// reads forward to the leader themselves, so callers rarely see it).
    #[error("not the leader; leader is {leader:?}")]
    NotLeader { leader: Option<String> },
    /// Retryable: no quorum confirmed this member's leadership in time.
    #[error("raft: {0}")]
    NoQuorum(#[source] Box<QuorumNotEnough<NodeId>>),
    /// Retryable: no leader could be reached in time; nothing was written.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A write was sent but its outcome is unknown: it may still commit.
    #[error("write outcome unknown: {0}")]
    Uncertain(String),
    /// The leader failed the forwarded write for a reason of its own.
    #[error("at the leader: {0}")]
    Remote(String),
    /// Fatal: Raft on this member has stopped (a storage failure, a panic,
    /// or shutdown); nothing here will succeed again.
    #[error("raft stopped: {0}")]
    Fatal(#[source] Box<Fatal<NodeId>>),
    /// A membership change was refused (object writes never see this).
    #[error("raft membership: {0}")]
    Membership(#[source] Box<ChangeMembershipError<NodeId>>),
    #[error("raft configuration: {0}")]
    Config(#[source] Box<openraft::ConfigError>),
    #[error("raft initialize: {0}")]
    Initialize(#[source] Box<InitializeError<NodeId, BasicNode>>),
    #[error("waiting for raft: {0}")]
    Wait(#[from] openraft::metrics::WaitError),
    /// The write loop has ended: the member is shutting down.
    #[error("the store is shut down")]
    ShutDown,
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage: {0}")]
    Storage(#[source] Box<openraft::StorageError<NodeId>>),
    #[error("backup: {0}")]
    Backup(#[from] backup::BackupError),
}

impl StoreError {
    /// A failure another attempt (here, or at the leader) may not repeat.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::NotLeader { .. } | StoreError::NoQuorum(_) | StoreError::Unavailable(_)
        )
    }

    /// A copy for each of several waiters; sources that cannot be cloned
    /// become their message.
    pub(crate) fn clone_lossy(&self) -> StoreError {
        match self {
            StoreError::Precondition(f) => StoreError::Precondition(*f),
            StoreError::NotLeader { leader } => StoreError::NotLeader {
                leader: leader.clone(),
            },
            StoreError::NoQuorum(_) | StoreError::Unavailable(_) => {
                StoreError::Unavailable(self.to_string())
            }
            StoreError::Uncertain(m) => StoreError::Uncertain(m.clone()),
            StoreError::ShutDown => StoreError::ShutDown,
            other => StoreError::Remote(other.to_string()),
        }
    }
}

// openraft's errors are large; boxed, a `Result<_, StoreError>` stays small.
impl From<openraft::StorageError<NodeId>> for StoreError {
    fn from(e: openraft::StorageError<NodeId>) -> Self {
        StoreError::Storage(Box::new(e))
    }
}

impl From<Fatal<NodeId>> for StoreError {
    fn from(e: Fatal<NodeId>) -> Self {
        StoreError::Fatal(Box::new(e))
    }
}

impl From<openraft::ConfigError> for StoreError {
    fn from(e: openraft::ConfigError) -> Self {
        StoreError::Config(Box::new(e))
    }
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>> for StoreError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => StoreError::NotLeader {
                leader: f.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(m)) => {
                StoreError::Membership(Box::new(m))
            }
            RaftError::Fatal(f) => f.into(),
        }
    }
}

impl From<RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>> for StoreError {
    fn from(e: RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>) -> Self {
        match e {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => StoreError::NotLeader {
                leader: f.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => {
                StoreError::NoQuorum(Box::new(q))
            }
            RaftError::Fatal(f) => f.into(),
        }
    }
}

impl From<RaftError<NodeId, InitializeError<NodeId, BasicNode>>> for StoreError {
    fn from(e: RaftError<NodeId, InitializeError<NodeId, BasicNode>>) -> Self {
        match e {
            RaftError::APIError(i) => StoreError::Initialize(Box::new(i)),
            RaftError::Fatal(f) => f.into(),
        }
    }
}

pub struct StoreConfig<'a> {
    pub dir: &'a Path,
    pub node_id: NodeId,
    /// Every member's id and API base URL, this one included.
    pub members: BTreeMap<NodeId, String>,
    /// How many changes a watch may start behind the head.
    pub watch_window: usize,
    pub network: Network,
    pub timing: RaftTiming,
    /// Log entries between snapshots; a snapshot lets the log be purged
    /// (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// Make this member's store a one-member cluster's before starting
    /// (`--cluster-reset`, after quorum loss); `members` must name only it.
    pub reset: bool,
}

/// How often the leader heartbeats and how long a follower waits without
/// one before it campaigns (etcd's `--heartbeat-interval` and
/// `--election-timeout`). The election timeout is drawn from
/// `[election, 1.5 × election)` per term, so members rarely campaign at
/// once. openraft adds its leader lease (the longest draw) while a leader
/// was known, so a dead leader is replaced 2.5–3 × `election` after its
/// last heartbeat.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat: std::time::Duration,
    pub election: std::time::Duration,
}

impl Default for RaftTiming {
    /// For a LAN: a dead leader replaced within 375–450 ms.
    fn default() -> Self {
        RaftTiming {
            heartbeat: std::time::Duration::from_millis(50),
            election: std::time::Duration::from_millis(150),
        }
    }
}

impl RaftTiming {
    /// The longest election timeout a term draws, and openraft's leader
    /// lease: followers refuse votes for this long after a heartbeat.
    pub fn election_max(&self) -> std::time::Duration {
        self.election * 3 / 2
    }
}

type Waiter = tokio::sync::oneshot::Sender<OpOutcome>;

#[derive(Clone)]
pub struct Store {
    raft: WeftRaft,
    sm: Arc<SmShared>,
    node_id: NodeId,
    writes: tokio::sync::mpsc::UnboundedSender<(Op, Waiter)>,
    proposer: Proposer,
}

/// Most ops per Raft entry; bounds entry size (pods are ~2 KiB).
const MAX_BATCH: usize = 512;

/// Drains queued writes into Raft entries: whatever queued while the previous
/// entry was being committed goes into the next one. One entry in flight at a
/// time: measured faster than several, because openraft 0.9 appends each
/// entry with its own (blocking) fsync, so extra entries only shrink batches.
/// On a follower the batch goes to the leader as one forwarded proposal.
async fn batch_writes(
    proposer: Proposer,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(Op, Waiter)>,
) {
    while let Some(first) = rx.recv().await {
        let mut ops = vec![first.0];
        let mut waiters = vec![first.1];
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((op, w)) => {
                    ops.push(op);
                    waiters.push(w);
                }
                Err(_) => break,
            }
        }
        for (w, r) in waiters.into_iter().zip(proposer.propose(ops).await) {
            let _ = w.send(r);
        }
    }
}

pub use weft_cluster::keys::{key, prefix};

pub(crate) fn open_db(dir: &Path) -> Result<rocksdb::DB, rocksdb::Error> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Objects and log share one WAL, so a batch spanning both is atomic.
    rocksdb::DB::open_cf(&opts, dir, [CF_LOG, CF_RAFT, CF_OBJECTS, CF_SM])
}

/// Opens the log store and state machine over one rocksdb under `dir`.
pub fn open_storage(
    dir: &Path,
    watch_window: usize,
) -> Result<(LogStore, StateMachine), StoreError> {
    std::fs::create_dir_all(dir)?;
    let db = Arc::new(open_db(&dir.join("db"))?);
    let sm = StateMachine::open(db.clone(), watch_window)?;
    let counters = sm.shared().counters.clone();
    Ok((LogStore::with_counters(db, counters), sm))
}

impl Store {
    pub async fn open(cfg: StoreConfig<'_>) -> Result<Store, StoreError> {
        if cfg.reset {
            let r = backup::reset(cfg.dir).await?;
            tracing::warn!(
                applied = r.applied,
                revision = r.revision,
                "cluster reset: this member's store now starts a one-member cluster; start it without --cluster-reset from now on"
            );
        }
        let (log, sm) = open_storage(cfg.dir, cfg.watch_window)?;
        let shared = sm.shared();
        let counters = log.counters();

        let config = Config {
            cluster_name: "weft".into(),
            heartbeat_interval: cfg.timing.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.timing.election.as_millis() as u64,
            election_timeout_max: cfg.timing.election_max().as_millis() as u64,
            // Snapshots bound the log; the state machine itself is already durable.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_count.max(1)),
            // A follower this far behind catches up from the log, not a snapshot.
            max_in_snapshot_log_to_keep: cfg.snapshot_count / 10,
            // A snapshot chunk is one HTTP request; a slow one is not a dead member.
            install_snapshot_timeout: 10_000,
            // openraft 0.9 gives each AppendEntries one heartbeat interval
            // to complete: a lagging follower catches up in steps small
            // enough for that (an entry holds up to MAX_BATCH writes), or
            // it never does.
            max_payload_entries: 8,
            ..Default::default()
        }
        .validate()?;
        let raft = Raft::new(cfg.node_id, Arc::new(config), cfg.network.clone(), log, sm).await?;

        tokio::spawn(metrics::count_leader_changes(
            raft.metrics(),
            counters.leader_changes.clone(),
        ));
        let proposer = Proposer {
            raft: raft.clone(),
            net: cfg.network,
            me: cfg.node_id,
            counters,
            // Past this, followers may have elected another leader.
            quorum_timeout: cfg.timing.election_max() + cfg.timing.election,
        };
        let (writes, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(batch_writes(proposer.clone(), rx));
        let store = Store {
            raft,
            sm: shared,
            node_id: cfg.node_id,
            writes,
            proposer,
        };
        store.load_cluster_id()?;
        let initialized = store.raft.is_initialized().await?;
        // The lowest id bootstraps the cluster; the others wait to be contacted.
        if !initialized && cfg.members.keys().next() == Some(&cfg.node_id) {
            let nodes: BTreeMap<NodeId, BasicNode> = cfg
                .members
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            store.new_cluster_id()?;
            store.raft.initialize(nodes).await?;
        }
        if store.sm.meta_key_exists(backup::KEY_NEEDS_SEED)? {
            store.seed_snapshot().await?;
        }
        Ok(store)
    }

    /// A store started from a backup or a reset holds objects that no log
    /// entry made, so replaying the log cannot give them to a member that
    /// joins later: a snapshot of them, with the log purged under it,
    /// makes every joiner install it first. Runs before the API serves,
    /// so no member can join before it.
    async fn seed_snapshot(&self) -> Result<(), StoreError> {
        let wait = Some(Duration::from_secs(60));
        let me = self.node_id;
        // The new leader's first entry applied: the snapshot covers the membership.
        self.raft
            .wait(wait)
            .metrics(
                |m| m.current_leader == Some(me) && m.last_applied.is_some(),
                "this member leads its new cluster",
            )
            .await?;
        self.raft.trigger().snapshot().await?;
        let m = self
            .raft
            .wait(wait)
            .metrics(|m| m.snapshot.is_some(), "the seed snapshot")
            .await?;
        let upto = m.snapshot.expect("waited for").index;
        self.raft.trigger().purge_log(upto).await?;
        self.raft
            .wait(wait)
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= upto),
                "the log purged under the seed snapshot",
            )
            .await?;
        self.sm.delete_meta_key(backup::KEY_NEEDS_SEED)?;
        tracing::info!(index = upto, "seeded a snapshot of the restored objects");
        Ok(())
    }

    pub fn raft(&self) -> &WeftRaft {
        &self.raft
    }

    /// This member's Raft counters, for `/metrics`.
    pub fn raft_counters(&self) -> &metrics::RaftCounters {
        &self.proposer.counters
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Waits until some member leads and this member has applied everything
    /// committed so far.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), StoreError> {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await?;
        self.linearize().await
    }

    /// Whether a leader is known (for `/readyz`).
    pub fn has_leader(&self) -> bool {
        self.current_leader().is_some()
    }

    /// Whether this member is the Raft leader.
    pub fn leads(&self) -> bool {
        self.current_leader() == Some(self.node_id)
    }

    /// The Raft leader this member knows of.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Resolves once the leader this member knows of is no longer `was`
    /// (never, once Raft has stopped).
    pub async fn leader_changed(&self, was: Option<NodeId>) {
        forward::leader_changed(&self.raft, was).await
    }

    /// Proposes one write through Raft (at the leader, forwarded if this
    /// member follows) and waits until it is applied here, and so durable.
    /// Concurrent writes share Raft entries.
    pub async fn write(&self, op: Op) -> Result<(u64, Option<Value>), StoreError> {
        let a = self.submit(op).await?;
        Ok((a.revision, a.object))
    }

    /// Queues one write for the next Raft entry.
    fn submit(&self, op: Op) -> impl Future<Output = OpOutcome> + use<> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = self.writes.send((op, tx)).is_ok();
        async move {
            if !queued {
                return Err(StoreError::ShutDown);
            }
            rx.await.map_err(|_| StoreError::ShutDown)?
        }
    }

    /// Makes the following local reads linearizable (a read index confirmed
    /// by a quorum, as kube-apiserver does for reads without a
    /// resourceVersion), on the leader and on followers alike.
    pub async fn linearize(&self) -> Result<(), StoreError> {
        self.proposer.linearize().await
    }

    /// A backup of every object as of a linearized read: it holds every
    /// write acknowledged before the call (see [`backup`]).
    pub async fn backup(&self) -> Result<backup::Backup, StoreError> {
        self.linearize().await?;
        let sm = self.sm.clone();
        let me = self.node_id;
        Ok(tokio::task::spawn_blocking(move || sm.backup(me))
            .await
            .map_err(std::io::Error::other)??)
    }

    pub fn get(&self, key: &str) -> Result<Option<(u64, Value)>, StoreError> {
        Ok(self.sm.get(key)?)
    }

    /// One page of objects under `prefix`: (revision, items, more).
    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<state_machine::Page, StoreError> {
        Ok(self.sm.list(prefix, start_after, limit)?)
    }

    /// Changes after revision `from`: the backlog still in the window, then a live feed.
    pub fn watch(
        &self,
        from: u64,
    ) -> Result<(Vec<Arc<Event>>, tokio::sync::broadcast::Receiver<Feed>), Expired> {
        self.sm.events.subscribe(from)
    }

    /// The latest applied revision on this member.
    pub fn revision(&self) -> u64 {
        self.sm.revision()
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }
}
