//! One control-plane member, assembled: the Raft store, the API server over
//! it, and (while this member holds the controller Lease) the scheduler and
//! controllers. `ControlPlane::start` wires them; `shutdown` takes them
//! down in the reverse order, within a deadline.

pub mod backups;
pub mod join;
pub mod leader;
pub mod mirror;
pub mod writer;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

use leader::ElectionConfig;
use weft_apiserver::registry::Registry;
use weft_apiserver::{Api, ApiConfig, security, services};
use weft_store::{Network, NodeId, Store, StoreConfig, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] security::PkiError),
    #[error("joining: {0}")]
    Join(#[from] join::JoinError),
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
    /// Join a running cluster through this member's URL (`--server`):
    /// this member starts empty and is added as a learner, then a voter.
    pub join: Option<String>,
    /// The join token (`K10<CA hash>::server:<secret>`) that `join` needs over TLS.
    pub token: Option<String>,
    pub watch_window: usize,
    pub bookmark_interval: Duration,
    pub ready_timeout: Duration,
    /// Run the scheduler and controllers (while holding the leader Lease).
    pub run_controllers: bool,
    pub controllers: weft_controllers::ControllerConfig,
    pub lease_duration: Duration,
    pub services: services::ServiceNetwork,
    pub raft_timing: weft_store::RaftTiming,
    /// Raft log entries between snapshots (then the log is purged).
    pub snapshot_count: u64,
    /// Start a one-member cluster from this member's data (`--cluster-reset`).
    pub cluster_reset: bool,
    pub backups: backups::BackupSchedule,
}

impl ControlPlaneConfig {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        ControlPlaneConfig {
            listen,
            insecure: false,
            node_id: 1,
            peers: BTreeMap::new(),
            join: None,
            token: None,
            watch_window: 20_000,
            bookmark_interval: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(60),
            run_controllers: true,
            controllers: Default::default(),
            lease_duration: Duration::from_secs(15),
            services: services::ServiceNetwork::default(),
            raft_timing: Default::default(),
            snapshot_count: 10_000,
            cluster_reset: false,
            backups: backups::BackupSchedule {
                interval: Duration::from_secs(12 * 3600),
                retention: 5,
                dir: data_dir.join("snapshots"),
            },
            data_dir,
        }
    }
}

/// This member's leader-election identity: the host and Raft member id, so
/// a restarted member reclaims its own Lease (see `leader`).
fn identity(node_id: NodeId) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}/member-{node_id}", host.trim())
}

/// The campaign and the components it runs, as tasks to join on shutdown.
struct Leadership {
    registry: Registry,
    election: ElectionConfig,
    campaign: JoinHandle<bool>,
    components: JoinHandle<()>,
    mirror: JoinHandle<()>,
}

/// A running control plane: store, API server, and its shutdown handle.
pub struct ControlPlane {
    pub api: Api,
    pub addr: SocketAddr,
    pub url: String,
    pub token: String,
    pub ca_pem: Option<String>,
    /// The token another member joins with (None over plain HTTP).
    pub join_token: Option<String>,
    /// Whether this process holds the controller Lease (runs the scheduler and controllers).
    pub leading: signal::Receiver<bool>,
    shutdown: signal::Sender<bool>,
    server: JoinHandle<()>,
    backups: JoinHandle<()>,
    leadership: Option<Leadership>,
}

/// The URL a listener at `addr` is reached by (Raft membership records it).
fn url_of(addr: SocketAddr, insecure: bool) -> String {
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
    let scheme = if insecure { "http" } else { "https" };
    format!("{scheme}://{host}:{}", addr.port())
}

/// The serving certificate (issued by the cluster CA, also this member's
/// client identity towards the others), unless the member serves plain HTTP.
fn pki(cfg: &ControlPlaneConfig, addr: SocketAddr) -> Result<Option<security::Pki>, StartError> {
    if cfg.insecure {
        tracing::warn!("--insecure: serving plain HTTP with no authentication on {addr}");
        return Ok(None);
    }
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
    Ok(Some(security::ensure_pki(
        &cfg.data_dir.join("pki"),
        &sans,
    )?))
}

impl ControlPlane {
    pub async fn start(cfg: ControlPlaneConfig) -> Result<ControlPlane, StartError> {
        // Bind first: with port 0 the URL (which Raft membership records) is only known now.
        let listen_err = |source| StartError::Listen {
            addr: cfg.listen,
            source,
        };
        let listener = TcpListener::bind(cfg.listen).await.map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        let url = url_of(addr, cfg.insecure);
        if !cfg.insecure
            && let Some(server) = &cfg.join
        {
            let token = cfg
                .token
                .as_deref()
                .ok_or_else(|| join::JoinError::NoToken {
                    server: server.clone(),
                })?;
            join::fetch_secrets(server, token, &cfg.data_dir, cfg.ready_timeout).await?;
        }
        let pki = pki(&cfg, addr)?;
        let secrets = match &pki {
            Some(pki) => Some(security::ClusterSecrets::ensure(&cfg.data_dir, pki)?),
            None => None,
        };
        let token = match &secrets {
            Some(s) => s.admin_token.clone(),
            None => security::ensure_token(&cfg.data_dir.join(security::ADMIN_TOKEN))?,
        };
        let tls = pki.as_ref().map(security::server_config).transpose()?;

        let mut client = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(pki) = &pki {
            client = client
                .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes())?)
                .identity(reqwest::Identity::from_pem(pki.identity_pem().as_bytes())?);
        }
        let members = if cfg.cluster_reset {
            BTreeMap::from([(cfg.node_id, url.clone())])
        } else if cfg.join.is_some() {
            // A joiner never bootstraps: the cluster it joins adds it.
            BTreeMap::new()
        } else if cfg.peers.is_empty() {
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
            timing: cfg.raft_timing,
            snapshot_count: cfg.snapshot_count,
            reset: cfg.cluster_reset,
        })
        .await?;

        let (shutdown_tx, shutdown_rx) = signal::channel(false);
        let api = Api::new(ApiConfig {
            store,
            shutdown: shutdown_rx.clone(),
            bookmark_interval: cfg.bookmark_interval,
            tokens: vec![token.clone()],
            authenticate: !cfg.insecure,
            secrets: secrets.clone(),
            services: cfg.services.clone(),
        })?;
        // Serve before the store is ready: peers reach this member's Raft over it.
        let server = tokio::spawn(weft_apiserver::serve_api(
            api.clone(),
            listener,
            tls,
            shutdown_rx.clone(),
            Duration::from_secs(5),
        ));
        if let Some(server) = &cfg.join {
            let me = weft_store::membership::Join {
                id: cfg.node_id,
                addr: url.clone(),
            };
            api.store.ask_to_join(server, me, cfg.ready_timeout).await?;
        }
        api.store.wait_ready(cfg.ready_timeout).await?;
        // A leader restarted after a crash takes itself for the leader (its
        // vote survives) until the others answer with a newer term, so its
        // first bootstrap may find no quorum: retry until it settles.
        let deadline = tokio::time::Instant::now() + cfg.ready_timeout;
        loop {
            match weft_apiserver::bootstrap(&api, addr).await {
                Ok(()) => break,
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tracing::info!("bootstrap objects not written yet ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let backups = tokio::spawn(backups::run(
            api.store.clone(),
            cfg.backups.clone(),
            shutdown_rx.clone(),
        ));
        let (leading_tx, leading) = signal::channel(false);
        let leadership = cfg.run_controllers.then(|| {
            let registry = api.registry.clone();
            let (cache, feed) = mirror::start(api.store.clone(), shutdown_rx.clone());
            let election = ElectionConfig::new(
                "weft-controller-manager",
                identity(cfg.node_id),
                cfg.lease_duration,
            );
            Leadership {
                campaign: tokio::spawn(leader::run(
                    registry.clone(),
                    election.clone(),
                    leading_tx,
                    shutdown_rx.clone(),
                )),
                components: tokio::spawn(leader::run_components(
                    cache,
                    Arc::new(writer::InProcess::new(registry.clone())),
                    cfg.controllers.clone(),
                    leading.clone(),
                    shutdown_rx,
                )),
                mirror: feed,
                registry,
                election,
            }
        });
        Ok(ControlPlane {
            api,
            addr,
            url,
            token,
            ca_pem: pki.map(|p| p.ca_pem),
            join_token: secrets.map(|s| s.token().to_string()),
            leading,
            shutdown: shutdown_tx,
            server,
            backups,
            leadership,
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

    /// Stops the scheduler and controllers and joins them, then releases the
    /// controller Lease (so another member takes over at once, not after the
    /// lease duration), stops accepting, ends watches, drains connections,
    /// then stops Raft. All within `deadline`.
    pub async fn shutdown(self, deadline: Duration) {
        let _ = self.shutdown.send(true);
        let end = tokio::time::Instant::now() + deadline;
        if let Some(l) = self.leadership {
            let joined = async {
                let held = l.campaign.await.unwrap_or(false);
                let _ = l.components.await;
                let _ = l.mirror.await;
                // Only now: released earlier, another member's controllers
                // could run beside ours.
                if held {
                    leader::release(&l.registry, &l.election).await;
                }
            };
            if tokio::time::timeout_at(end, joined).await.is_err() {
                tracing::warn!("the scheduler and controllers did not stop within {deadline:?}");
            }
        }
        // A backup in progress ends with the store; its file is written whole or not at all.
        self.backups.abort();
        if tokio::time::timeout_at(end, self.server).await.is_err() {
            tracing::warn!("api server did not stop within {deadline:?}");
        }
        self.api.store.shutdown().await;
    }
}
