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
pub mod registry;
pub mod security;
pub mod selectors;
pub mod services;
pub mod status;
pub mod table;
pub mod validation;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tower::ServiceExt;
use weft_api::Status;

use handlers::{json_response, status_response};
use weft_store::{Store, StoreError};

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
    raft_last_log: Gauge,
    raft_is_leader: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Metrics {
    fn new(raft: &weft_store::metrics::RaftCounters) -> Self {
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
        let (raft_last_log, raft_is_leader) = (Gauge::default(), Gauge::default());
        registry.register(
            "weft_raft_last_log_index",
            "Last Raft log index in this member's log",
            raft_last_log.clone(),
        );
        registry.register(
            "weft_raft_is_leader",
            "1 while this member leads",
            raft_is_leader.clone(),
        );
        raft.register(&mut registry);
        Metrics {
            registry,
            requests,
            latency,
            watchers,
            revision,
            raft_term,
            raft_applied,
            raft_last_log,
            raft_is_leader,
        }
    }
}

pub struct ApiInner {
    pub store: Store,
    /// The verbs, over `store`.
    pub registry: registry::Registry,
    pub metrics: Metrics,
    pub shutdown: signal::Receiver<bool>,
    pub bookmark_interval: Duration,
    tokens: Vec<String>,
    authenticate: bool,
    /// What a joiner gets for the join secret (None: plain HTTP, no joining by token).
    secrets: Option<security::ClusterSecrets>,
    max_body: usize,
    /// Reaches node agents' endpoints (`pods/log`).
    pub agents: reqwest::Client,
}

/// What an API server is made of.
pub struct ApiConfig {
    pub store: Store,
    pub shutdown: signal::Receiver<bool>,
    pub bookmark_interval: Duration,
    /// Bearer tokens accepted; the first is also presented to node agents.
    pub tokens: Vec<String>,
    pub authenticate: bool,
    pub secrets: Option<security::ClusterSecrets>,
    pub services: services::ServiceNetwork,
}

impl Api {
    pub fn new(cfg: ApiConfig) -> Result<Api, reqwest::Error> {
        Ok(Api(Arc::new(ApiInner {
            registry: registry::Registry {
                store: cfg.store.clone(),
                services: cfg.services,
            },
            metrics: Metrics::new(cfg.store.raft_counters()),
            store: cfg.store,
            shutdown: cfg.shutdown,
            bookmark_interval: cfg.bookmark_interval,
            tokens: cfg.tokens,
            authenticate: cfg.authenticate,
            secrets: cfg.secrets,
            max_body: MAX_BODY_BYTES,
            agents: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()?,
        })))
    }
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

/// Who may call a path.
enum Access {
    /// Health, version and the CA a joiner pins by its token's hash.
    Public,
    /// Raft itself: only another member, by its certificate from the cluster
    /// CA. A bearer token is not enough to append entries or vote.
    Member,
    /// A joiner, by the join secret.
    Joiner,
    /// Everything else: a bearer token, or a member.
    Client,
}

fn access(path: &str) -> Access {
    use weft_store::network as rpc;
    match path {
        "/healthz" | "/livez" | "/readyz" | "/version" | CACERTS => Access::Public,
        rpc::RPC_APPEND
        | rpc::RPC_VOTE
        | rpc::RPC_SNAPSHOT
        | rpc::RPC_PROPOSE
        | rpc::RPC_READ_INDEX
        | rpc::RPC_JOIN => Access::Member,
        BOOTSTRAP => Access::Joiner,
        _ => Access::Client,
    }
}

fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
}

/// `None` if `req` may go on, else the refusal.
fn refusal(api: &Api, req: &Request, path: &str) -> Option<Status> {
    if !api.authenticate {
        return None;
    }
    let member = req.extensions().get::<security::MemberPeer>().is_some();
    let token_ok = |want: &str| bearer(req).is_some_and(|t| security::token_matches(t, want));
    match access(path) {
        Access::Public => None,
        Access::Member if member => None,
        Access::Member => Some(Status::new(
            403,
            "Forbidden",
            "Raft RPCs need a member certificate issued by the cluster CA",
        )),
        Access::Joiner
            if api
                .secrets
                .as_ref()
                .is_some_and(|s| token_ok(&s.join_secret)) =>
        {
            None
        }
        Access::Client if member || api.tokens.iter().any(|t| token_ok(t)) => None,
        Access::Joiner | Access::Client => Some(Status::unauthorized()),
    }
}

async fn auth_and_metrics(State(api): State<Api>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let path = req.uri().path().to_string();
    let verb = verb_of(req.method(), req.uri().query().unwrap_or(""));
    let resp = match refusal(&api, &req, &path) {
        None => next.run(req).await,
        Some(status) => {
            // Any request body goes unread: the connection must not be reused.
            let mut resp = status_response(&status);
            resp.headers_mut()
                .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            resp
        }
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

/// The cluster CA, for a joiner to check against its token (k3s's path).
pub const CACERTS: &str = "/cacerts";
/// The shared secrets, for a joiner that presents the join secret.
pub const BOOTSTRAP: &str = "/internal/cluster/bootstrap";

async fn cacerts(State(api): State<Api>) -> Response {
    match &api.secrets {
        Some(s) => s.ca_cert.clone().into_response(),
        None => status_response(&Status::no_route()),
    }
}

async fn bootstrap_secrets(State(api): State<Api>) -> Response {
    match &api.secrets {
        Some(s) => json_response(StatusCode::OK, &json!(s), &[]),
        None => status_response(&Status::no_route()),
    }
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
        api.metrics
            .raft_last_log
            .set(m.last_log_index.unwrap_or(0) as i64);
        api.metrics
            .raft_is_leader
            .set((m.current_leader == Some(m.id)) as i64);
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

/// kube-apiserver's default request body limit.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

fn router(api: Api) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(CACERTS, get(cacerts))
        .route(BOOTSTRAP, get(bootstrap_secrets))
        .route("/api", get(api_root))
        .route("/apis", get(apis_root))
        .route("/openapi/v3", get(openapi_index))
        .route("/openapi/v3/{*gv}", get(openapi_doc))
        .merge(weft_store::network::routes(api.store.clone()))
        .fallback(resources)
        .layer(middleware::from_fn_with_state(
            api.clone(),
            auth_and_metrics,
        ))
        .with_state(api)
}

/// Serves `api` on `listener` until `shutdown` fires, then drains open
/// connections for at most `drain`.
pub async fn serve_api(
    api: Api,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: signal::Receiver<bool>,
    drain: Duration,
) {
    serve(router(api), listener, tls, shutdown, drain).await
}

/// Objects every cluster starts with: the standard namespaces and the
/// `kubernetes` Service. Bootstrapping is the Raft leader's job; followers
/// receive the result.
pub async fn bootstrap(api: &Api, addr: SocketAddr) -> Result<(), StoreError> {
    // Followers could write too (they forward), but the `kubernetes`
    // endpoints would then name whichever member wrote last.
    if !api.store.leads() {
        return Ok(());
    }
    api.registry.bootstrap().await?;
    services::bootstrap(&api.store, &api.registry.services, addr).await
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
                let app = app.clone();
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let http = hyper::server::conn::http1::Builder::new();
                    let result = match acceptor {
                        Some(a) => match a.accept(stream).await {
                            Ok(tls) => {
                                // rustls verified any certificate against the cluster CA.
                                let member = tls.get_ref().1.peer_certificates().is_some();
                                let svc = TowerToHyperService::new(app.map_request(
                                    move |mut req: http::Request<hyper::body::Incoming>| {
                                        if member {
                                            req.extensions_mut().insert(security::MemberPeer);
                                        }
                                        req
                                    },
                                ));
                                watcher.watch(http.serve_connection(TokioIo::new(tls), svc)).await
                            }
                            Err(e) => {
                                tracing::debug!(%peer, "tls handshake: {e}");
                                return;
                            }
                        },
                        None => {
                            let svc = TowerToHyperService::new(app);
                            watcher.watch(http.serve_connection(TokioIo::new(stream), svc)).await
                        }
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
