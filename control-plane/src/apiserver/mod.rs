//! The Kubernetes-compatible API server (axum over hyper, rustls).
//!
//! Flow of a write: auth middleware → path parse (`handlers::parse_path`) →
//! body decode (JSON / YAML / protobuf) → admission (typed decode, defaults,
//! validation) → `Store::write` through Raft → JSON (or Table) response.

pub mod defaults;
pub mod discovery;
pub mod handlers;
pub mod patch;
pub mod protobuf;
pub mod security;
pub mod selectors;
pub mod services;
pub mod table;
pub mod validation;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Json, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use weft_api::Status;

use crate::leader::{self, ElectionConfig};
use crate::store::network::{RPC_APPEND, RPC_SNAPSHOT, RPC_VOTE};
use crate::store::{Network, NodeId, Store, StoreConfig, StoreError, TypeConfig};
use handlers::{json_response, status_response};

/// The Kubernetes version Weft speaks. kubectl's dispatcher picks its
/// bundled binary by this minor version.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "32";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    resource: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    verb: String,
    resource: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub watchers: Gauge,
    revision: Gauge,
    raft_term: Gauge,
    raft_applied: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let (watchers, revision, raft_term, raft_applied) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        registry.register(
            "apiserver_request",
            "API requests by verb, resource and HTTP code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Time to response headers, by verb and resource",
            latency.clone(),
        );
        registry.register(
            "apiserver_registered_watchers",
            "Open watch streams",
            watchers.clone(),
        );
        registry.register(
            "weft_store_revision",
            "Latest applied store revision on this member",
            revision.clone(),
        );
        registry.register("weft_raft_term", "Current Raft term", raft_term.clone());
        registry.register(
            "weft_raft_last_applied_index",
            "Last Raft log index applied to the state machine",
            raft_applied.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            watchers,
            revision,
            raft_term,
            raft_applied,
        }
    }
}

pub struct ApiInner {
    pub store: Store,
    pub metrics: Metrics,
    pub shutdown: signal::Receiver<bool>,
    pub bookmark_interval: Duration,
    tokens: Vec<String>,
    authenticate: bool,
    max_body: usize,
    /// Reaches node agents' endpoints (`pods/log`).
    pub agents: reqwest::Client,
    /// Where ClusterIPs and NodePorts come from.
    pub services: services::ServiceNetwork,
}

impl ApiInner {
    /// The token this server presents to node agents.
    pub fn agent_token(&self) -> &str {
        self.tokens.first().map(String::as_str).unwrap_or("")
    }
}

#[derive(Clone)]
pub struct Api(Arc<ApiInner>);

impl std::ops::Deref for Api {
    type Target = ApiInner;
    fn deref(&self) -> &ApiInner {
        &self.0
    }
}

fn verb_of(method: &Method, query: &str) -> &'static str {
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    match *method {
        Method::GET if watch => "WATCH",
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// A bounded label for metrics: the resource (and subresource) or a known path.
fn resource_label(path: &str) -> String {
    match handlers::parse_path(path) {
        Ok(Ok(t)) => match t.sub {
            Some(s) => format!("{}/{s}", t.res.plural),
            None => t.res.plural.to_string(),
        },
        Ok(Err(_)) => "discovery".into(),
        Err(_) => match path {
            "/version" | "/healthz" | "/livez" | "/readyz" | "/metrics" | "/api" | "/apis" => {
                path.to_string()
            }
            p if p.starts_with("/openapi") => "openapi".into(),
            p if p.starts_with("/internal/raft") => "raft".into(),
            _ => "other".into(),
        },
    }
}

async fn auth_and_metrics(State(api): State<Api>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let path = req.uri().path().to_string();
    let verb = verb_of(req.method(), req.uri().query().unwrap_or(""));
    let public = matches!(
        path.as_str(),
        "/healthz" | "/livez" | "/readyz" | "/version"
    );
    let authorized = !api.authenticate
        || public
        || req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|t| {
                api.tokens
                    .iter()
                    .any(|want| security::token_matches(t.trim(), want))
            });
    let resp = if authorized {
        next.run(req).await
    } else {
        // Any request body goes unread: the connection must not be reused.
        let mut resp = status_response(&Status::unauthorized());
        resp.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        resp
    };
    let resource = resource_label(&path);
    api.metrics
        .requests
        .get_or_create(&RequestLabels {
            verb: verb.into(),
            resource: resource.clone(),
            code: resp.status().as_u16().to_string(),
        })
        .inc();
    api.metrics
        .latency
        .get_or_create(&LatencyLabels {
            verb: verb.into(),
            resource,
        })
        .observe(start.elapsed().as_secs_f64());
    resp
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"major": KUBE_MAJOR, "minor": KUBE_MINOR, "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0+weft.{}", env!("CARGO_PKG_VERSION")),
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "", "compiler": "rustc",
                "platform": format!("{}/{}", std::env::consts::OS, weft_api::go_arch())}),
        &[],
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(api): State<Api>) -> Response {
    if api.store.has_leader() {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "[-]raft: no leader known\nreadyz check failed",
        )
            .into_response()
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    api.metrics.revision.set(api.store.revision() as i64);
    {
        let m = api.store.raft().metrics();
        let m = m.borrow();
        api.metrics.raft_term.set(m.current_term as i64);
        api.metrics
            .raft_applied
            .set(m.last_applied.map(|l| l.index as i64).unwrap_or(0));
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &api.metrics.registry) {
        tracing::error!("metrics encoding: {e}");
        return status_response(&Status::internal());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

fn discovery_response(core: bool, headers: &HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if discovery::wants_aggregated(accept) {
        let body = discovery::aggregated(core).to_string();
        return (
            [(header::CONTENT_TYPE, discovery::AGGREGATED_CONTENT_TYPE)],
            body,
        )
            .into_response();
    }
    let doc = if core {
        discovery::legacy_versions("")
    } else {
        discovery::legacy_groups()
    };
    json_response(StatusCode::OK, &doc, &[])
}

async fn api_root(headers: HeaderMap) -> Response {
    discovery_response(true, &headers)
}

async fn apis_root(headers: HeaderMap) -> Response {
    discovery_response(false, &headers)
}

async fn openapi_index() -> Response {
    json_response(StatusCode::OK, &discovery::openapi_index(), &[])
}

async fn openapi_doc(uri: Uri) -> Response {
    let gv = uri.path().trim_start_matches("/openapi/v3/");
    let group = match gv.split('/').collect::<Vec<_>>().as_slice() {
        ["api", "v1"] => Some(""),
        ["apis", g, "v1"] => Some(*g),
        _ => None,
    };
    match group.and_then(discovery::openapi_gv) {
        Some(doc) => json_response(StatusCode::OK, &doc, &[]),
        None => status_response(&Status::no_route()),
    }
}

async fn resources(
    State(api): State<Api>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path();
    if !(path.starts_with("/api/") || path.starts_with("/apis/")) {
        return status_response(&Status::no_route());
    }
    let body = match axum::body::to_bytes(body, api.max_body).await {
        Ok(b) => b,
        Err(_) => {
            // The rest of the body is never read, so this connection cannot be
            // reused: say so, or a pooling client sends its next request into it.
            let mut resp = status_response(&Status::too_large(api.max_body));
            resp.headers_mut()
                .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            return resp;
        }
    };
    handlers::dispatch(
        &api,
        &method,
        path,
        uri.query().unwrap_or(""),
        &headers,
        body,
    )
    .await
}

async fn rpc_append(
    State(api): State<Api>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    Json(api.store.raft().append_entries(req).await)
}

async fn rpc_vote(
    State(api): State<Api>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(api.store.raft().vote(req).await)
}

async fn rpc_snapshot(
    State(api): State<Api>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Json(api.store.raft().install_snapshot(req).await)
}

/// kube-apiserver's default request body limit.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

fn router(api: Api) -> Router {
    let raft = Router::new()
        .route(RPC_APPEND, post(rpc_append))
        .route(RPC_VOTE, post(rpc_vote))
        .route(RPC_SNAPSHOT, post(rpc_snapshot))
        .layer(DefaultBodyLimit::max(256 * 1024 * 1024));
    Router::new()
        .route("/version", get(version))
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api", get(api_root))
        .route("/apis", get(apis_root))
        .route("/openapi/v3", get(openapi_index))
        .route("/openapi/v3/{*gv}", get(openapi_doc))
        .merge(raft)
        .fallback(resources)
        .layer(middleware::from_fn_with_state(
            api.clone(),
            auth_and_metrics,
        ))
        .with_state(api)
}

/// Accepts connections until `shutdown` fires, then drains open ones for at
/// most `drain`. Watches end on the same signal.
async fn serve(
    app: Router,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: signal::Receiver<bool>,
    drain: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let (stream, peer) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = TowerToHyperService::new(app.clone());
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let http = hyper::server::conn::http1::Builder::new();
                    let result = match acceptor {
                        Some(a) => match a.accept(stream).await {
                            Ok(tls) => watcher.watch(http.serve_connection(TokioIo::new(tls), svc)).await,
                            Err(e) => {
                                tracing::debug!(%peer, "tls handshake: {e}");
                                return;
                            }
                        },
                        None => watcher.watch(http.serve_connection(TokioIo::new(stream), svc)).await,
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, "connection: {e}");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("api server drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!("drain deadline passed; closing remaining connections"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] security::PkiError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("raft client: {0}")]
    Client(#[from] reqwest::Error),
}

pub struct ControlPlaneConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Plain HTTP without authentication (kubectl sends no token over http).
    pub insecure: bool,
    pub node_id: NodeId,
    /// Every member's id and URL; empty means a single member at this address.
    pub peers: BTreeMap<NodeId, String>,
    pub watch_window: usize,
    pub bookmark_interval: Duration,
    pub ready_timeout: Duration,
    /// Run the scheduler and controllers (while holding the leader Lease).
    pub run_controllers: bool,
    pub controllers: crate::controllers::ControllerConfig,
    pub lease_duration: Duration,
    pub services: services::ServiceNetwork,
}

impl ControlPlaneConfig {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        ControlPlaneConfig {
            data_dir,
            listen,
            insecure: false,
            node_id: 1,
            peers: BTreeMap::new(),
            watch_window: 20_000,
            bookmark_interval: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(60),
            run_controllers: true,
            controllers: Default::default(),
            lease_duration: Duration::from_secs(15),
            services: services::ServiceNetwork::default(),
        }
    }
}

/// This member's leader-election identity: the host and Raft member id, so
/// a restarted member reclaims its own Lease (see `leader`).
fn identity(node_id: NodeId) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}/member-{node_id}", host.trim())
}

/// A running control plane: store, API server, and its shutdown handle.
pub struct ControlPlane {
    pub api: Api,
    pub addr: SocketAddr,
    pub url: String,
    pub token: String,
    pub ca_pem: Option<String>,
    /// Whether this process holds the controller Lease (runs the scheduler and controllers).
    pub leading: signal::Receiver<bool>,
    shutdown: signal::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl ControlPlane {
    pub async fn start(cfg: ControlPlaneConfig) -> Result<ControlPlane, StartError> {
        // Bind first: with port 0 the URL (which Raft membership records) is only known now.
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: cfg.listen,
            source,
        })?;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let scheme = if cfg.insecure { "http" } else { "https" };
        let url = format!("{scheme}://{host}:{}", addr.port());

        let token = security::ensure_token(&cfg.data_dir.join("tokens").join("admin"))?;
        let (tls, ca_pem) = if cfg.insecure {
            tracing::warn!("--insecure: serving plain HTTP with no authentication on {addr}");
            (None, None)
        } else {
            let mut sans: Vec<String> = [
                "localhost",
                "127.0.0.1",
                "::1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if !addr.ip().is_unspecified() && !sans.contains(&addr.ip().to_string()) {
                sans.push(addr.ip().to_string());
            }
            let pki = security::ensure_pki(&cfg.data_dir.join("pki"), &sans)?;
            (Some(security::server_config(&pki)?), Some(pki.ca_pem))
        };

        let mut client = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(ca) = &ca_pem {
            client = client.add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?);
        }
        let members = if cfg.peers.is_empty() {
            BTreeMap::from([(cfg.node_id, url.clone())])
        } else {
            cfg.peers.clone()
        };
        let store = Store::open(StoreConfig {
            dir: &cfg.data_dir.join("store"),
            node_id: cfg.node_id,
            members,
            watch_window: cfg.watch_window,
            network: Network::new(client.build()?, token.clone()),
        })
        .await?;

        let (shutdown_tx, shutdown_rx) = signal::channel(false);
        let api = Api(Arc::new(ApiInner {
            store,
            metrics: Metrics::new(),
            shutdown: shutdown_rx.clone(),
            bookmark_interval: cfg.bookmark_interval,
            tokens: vec![token.clone()],
            authenticate: !cfg.insecure,
            max_body: MAX_BODY_BYTES,
            agents: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()?,
            services: cfg.services.clone(),
        }));
        // Serve before the store is ready: peers reach this member's Raft over it.
        let server = tokio::spawn(serve(
            router(api.clone()),
            listener,
            tls,
            shutdown_rx.clone(),
            Duration::from_secs(5),
        ));
        api.store.wait_ready(cfg.ready_timeout).await?;
        handlers::bootstrap(&api).await?;
        match services::bootstrap(&api.store, &api.services, addr).await {
            // Bootstrapping is the leader's job; followers receive the result.
            Ok(()) | Err(StoreError::NotLeader { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let (leading_tx, leading) = signal::channel(false);
        if cfg.run_controllers {
            let client = crate::local::LocalClient::new(api.clone());
            let cache = crate::cache::Cache::start(api.store.clone(), shutdown_rx.clone());
            let election = ElectionConfig::new(
                "weft-controller-manager",
                identity(cfg.node_id),
                cfg.lease_duration,
            );
            tokio::spawn(leader::run(
                client.clone(),
                election,
                leading_tx,
                shutdown_rx.clone(),
            ));
            tokio::spawn(leader::run_components(
                cache,
                client,
                cfg.controllers.clone(),
                leading.clone(),
                shutdown_rx,
            ));
        }
        Ok(ControlPlane {
            api,
            addr,
            url,
            token,
            ca_pem,
            leading,
            shutdown: shutdown_tx,
            server,
        })
    }

    /// A kubeconfig for the admin user.
    pub fn kubeconfig(&self) -> String {
        let mut cluster = json!({"server": self.url});
        if let Some(ca) = &self.ca_pem {
            cluster["certificate-authority-data"] =
                json!(base64::engine::general_purpose::STANDARD.encode(ca));
        }
        let mut user = json!({});
        if self.ca_pem.is_some() {
            user["token"] = json!(self.token);
        }
        let cfg: Value = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "weft", "cluster": cluster}],
            "users": [{"name": "weft-admin", "user": user}],
            "contexts": [{"name": "weft", "context": {"cluster": "weft", "user": "weft-admin", "namespace": "default"}}],
            "current-context": "weft",
        });
        serde_yaml::to_string(&cfg).unwrap_or_default()
    }

    /// Stops accepting, ends watches, drains connections (bounded), then stops Raft.
    pub async fn shutdown(self, deadline: Duration) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(deadline, self.server).await.is_err() {
            tracing::warn!("api server did not stop within {deadline:?}");
        }
        self.api.store.shutdown().await;
    }
}
