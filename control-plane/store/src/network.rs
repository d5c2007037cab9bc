//! Raft RPC between control-plane members: JSON over the members' HTTPS API
//! port (`/internal/raft/*`), authenticated with the cluster token. Besides
//! openraft's own RPCs, followers forward proposals and read-index requests
//! to the leader here ([`crate::forward`]).

use axum::Router;
use axum::extract::{DefaultBodyLimit, Json, State};
use axum::http::HeaderMap;
use axum::routing::post;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::forward::{Answer, Outcome};
use super::membership::{CHANGE_WAIT, Join, Member};
use super::{NodeId, Request, Store, TypeConfig};

/// Paths the API server routes to the local Raft instance ([`routes`]).
pub const RPC_APPEND: &str = "/internal/raft/append";
pub const RPC_VOTE: &str = "/internal/raft/vote";
pub const RPC_SNAPSHOT: &str = "/internal/raft/snapshot";
pub const RPC_PROPOSE: &str = "/internal/raft/propose";
pub const RPC_READ_INDEX: &str = "/internal/raft/read-index";
pub const RPC_JOIN: &str = "/internal/raft/join";
pub const RPC_REMOVE: &str = "/internal/raft/remove";
pub const RPC_MEMBERS: &str = "/internal/raft/members";
/// A backup file of this member's store (`weft snapshot save`).
pub const RPC_BACKUP: &str = "/internal/raft/backup";

/// The header that carries the sender's cluster id on every call.
pub const CLUSTER_ID_HEADER: &str = "weft-cluster-id";

#[derive(Clone)]
pub struct Network {
    client: reqwest::Client,
    token: String,
    /// When each peer last answered a Raft RPC (`weft member list`).
    contacts: Arc<Mutex<BTreeMap<NodeId, Instant>>>,
    /// This member's cluster, once known ([`crate::identity`]).
    pub(crate) cluster_id: Arc<std::sync::OnceLock<String>>,
}

/// Why a call to another member brought no answer.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The request never reached the peer's handler: safe to send again.
    NotSent(String),
    /// It may have reached the handler, and no answer came back.
    Uncertain(String),
}

impl Network {
    pub fn new(client: reqwest::Client, token: String) -> Self {
        Network {
            client,
            token,
            contacts: Default::default(),
            cluster_id: Default::default(),
        }
    }

    pub(crate) fn contacts(&self) -> BTreeMap<NodeId, Instant> {
        self.contacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// POSTs `body` as JSON to `base` + `path` and reads a JSON answer.
    pub(crate) async fn send<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        body: &Req,
        timeout: std::time::Duration,
    ) -> Result<Resp, SendError> {
        let mut req = self
            .client
            .post(format!("{}{path}", base.trim_end_matches('/')))
            .bearer_auth(&self.token);
        if let Some(id) = self.cluster_id.get() {
            req = req.header(CLUSTER_ID_HEADER, id);
        }
        let res = req.timeout(timeout).json(body).send().await.map_err(|e| {
            if e.is_connect() || e.is_builder() {
                SendError::NotSent(e.to_string())
            } else {
                SendError::Uncertain(format!("{base}: {e}"))
            }
        })?;
        // Refused before the handler ran (authentication, a starting server).
        if !res.status().is_success() {
            return Err(SendError::NotSent(format!(
                "{base} answered {}",
                res.status()
            )));
        }
        res.json()
            .await
            .map_err(|e| SendError::Uncertain(format!("{base}: {e}")))
    }
}

pub struct PeerClient {
    net: Network,
    target: NodeId,
    base: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            net: self.clone(),
            target,
            base: node.addr.trim_end_matches('/').to_string(),
        }
    }
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body: Result<Resp, RaftError<NodeId, E>> = self
            .net
            .send(&self.base, path, req, option.hard_ttl())
            .await
            .map_err(|e| match e {
                SendError::NotSent(m) => RPCError::Unreachable(Unreachable::new(&io(m))),
                SendError::Uncertain(m) => RPCError::Network(NetworkError::new(&io(m))),
            })?;
        self.net
            .contacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.target, Instant::now());
        body.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn io(m: String) -> std::io::Error {
    std::io::Error::other(m)
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RPC_APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RPC_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RPC_VOTE, &rpc, &option).await
    }
}

/// The receiving side of [`Network`]: the Raft RPC routes, which the API
/// server merges into its router (behind its authentication layer).
pub fn routes<S: Clone + Send + Sync + 'static>(store: Store) -> Router<S> {
    Router::new()
        .route(RPC_APPEND, post(rpc_append))
        .route(RPC_VOTE, post(rpc_vote))
        .route(RPC_SNAPSHOT, post(rpc_snapshot))
        .route(RPC_PROPOSE, post(rpc_propose))
        .route(RPC_READ_INDEX, post(rpc_read_index))
        .route(RPC_JOIN, post(rpc_join))
        .route(RPC_REMOVE, post(rpc_remove))
        .route(RPC_MEMBERS, post(rpc_members))
        .route(RPC_BACKUP, post(rpc_backup))
        // Snapshots and entry batches are far larger than API bodies.
        .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
        .with_state(store)
}

type Refused = (axum::http::StatusCode, String);

async fn rpc_append(
    State(store): State<Store>,
    headers: HeaderMap,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Result<Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>, Refused> {
    store.admit(&headers)?;
    Ok(Json(store.raft().append_entries(req).await))
}

async fn rpc_vote(
    State(store): State<Store>,
    headers: HeaderMap,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Result<Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>>, Refused> {
    store.admit(&headers)?;
    Ok(Json(store.raft().vote(req).await))
}

async fn rpc_snapshot(
    State(store): State<Store>,
    headers: HeaderMap,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Result<
    Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>>,
    Refused,
> {
    store.admit(&headers)?;
    Ok(Json(store.raft().install_snapshot(req).await))
}

/// A follower's proposal: queued with this leader's own writes (one group
/// commit), or refused at once if this member does not lead.
async fn rpc_propose(
    State(store): State<Store>,
    Json(req): Json<Request>,
) -> Json<Answer<Vec<Outcome>>> {
    if !store.leads() {
        return Json(Answer::NotLeader);
    }
    let pending: Vec<_> = req.ops.into_iter().map(|op| store.submit(op)).collect();
    let mut out = Vec::with_capacity(pending.len());
    for p in pending {
        out.push(p.await.into());
    }
    Json(Answer::Done(out))
}

async fn rpc_read_index(State(store): State<Store>) -> Json<Answer<Result<u64, String>>> {
    match store.proposer.read_index_here().await {
        Ok(Some(index)) => Json(Answer::Done(Ok(index))),
        Ok(None) => Json(Answer::NotLeader),
        Err(e) => Json(Answer::Done(Err(e.to_string()))),
    }
}

/// Runs `here` if this member leads, else passes `req` to the leader and
/// returns its answer. Errors travel as their messages.
async fn at_leader<Req, T, Fut>(
    store: Store,
    path: &str,
    req: Req,
    here: impl FnOnce(Store, Req) -> Fut,
) -> Json<Result<T, String>>
where
    Req: Serialize,
    T: DeserializeOwned,
    Fut: Future<Output = Result<T, super::StoreError>>,
{
    if store.leads() {
        return Json(here(store, req).await.map_err(|e| e.to_string()));
    }
    let Some(leader) = store.proposer.leader_addr() else {
        return Json(Err("no leader known; retry".into()));
    };
    match store
        .proposer
        .net
        .send(&leader, path, &req, CHANGE_WAIT)
        .await
    {
        Ok(answer) => Json(answer),
        Err(SendError::NotSent(m) | SendError::Uncertain(m)) => Json(Err(m)),
    }
}

async fn rpc_join(State(store): State<Store>, Json(j): Json<Join>) -> Json<Result<(), String>> {
    at_leader(
        store,
        RPC_JOIN,
        j,
        |s, j| async move { s.join_here(j).await },
    )
    .await
}

async fn rpc_remove(
    State(store): State<Store>,
    Json(id): Json<NodeId>,
) -> Json<Result<(), String>> {
    at_leader(store, RPC_REMOVE, id, |s, id| async move {
        s.remove_here(id).await
    })
    .await
}

async fn rpc_members(State(store): State<Store>) -> Json<Result<Vec<Member>, String>> {
    at_leader(store, RPC_MEMBERS, (), |s, ()| async move {
        Ok(s.members_here())
    })
    .await
}

async fn rpc_backup(State(store): State<Store>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match store.backup().await {
        Ok(b) => ([("content-type", "application/octet-stream")], b.data).into_response(),
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "ServiceUnavailable", "code": 503,
                "message": format!("taking a backup: {e}"),
            })),
        )
            .into_response(),
    }
}
