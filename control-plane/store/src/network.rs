//! Raft RPC between control-plane members: JSON over the members' HTTPS API
//! port (`/internal/raft/*`), authenticated with the cluster token.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Json, State};
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
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{NodeId, Store, TypeConfig};

/// Paths the API server routes to the local Raft instance ([`routes`]).
pub const RPC_APPEND: &str = "/internal/raft/append";
pub const RPC_VOTE: &str = "/internal/raft/vote";
pub const RPC_SNAPSHOT: &str = "/internal/raft/snapshot";

#[derive(Clone)]
pub struct Network {
    client: reqwest::Client,
    token: String,
}

impl Network {
    pub fn new(client: reqwest::Client, token: String) -> Self {
        Network { client, token }
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
        let res = self
            .net
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.net.token)
            .timeout(option.hard_ttl())
            .json(req)
            .send()
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        if !res.status().is_success() {
            let err = std::io::Error::other(format!("peer answered {}", res.status()));
            return Err(RPCError::Network(NetworkError::new(&err)));
        }
        let body: Result<Resp, RaftError<NodeId, E>> = res
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        body.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
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
        // Snapshots and entry batches are far larger than API bodies.
        .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
        .with_state(store)
}

async fn rpc_append(
    State(store): State<Store>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    Json(store.raft().append_entries(req).await)
}

async fn rpc_vote(
    State(store): State<Store>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(store.raft().vote(req).await)
}

async fn rpc_snapshot(
    State(store): State<Store>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Json(store.raft().install_snapshot(req).await)
}
