//! The node agent (kubelet's role), one job per module:
//!
//! - `node`: registration and the Lease heartbeat, on a task of its own;
//! - `mirrors`: mirror pods for static pod manifests, on a task of its own;
//! - `pods`: the pod loop over a watch of `spec.nodeName=NODE`;
//! - `state`: each pod's and container's state, and the pure rules over it;
//! - `effects`: what the pod loop asks of the API server, behind one trait;
//! - `ipam`: pod IPs from the node's range.

mod effects;
#[cfg(test)]
mod fake;
mod ipam;
#[cfg(test)]
mod lifecycle_tests;
mod mirrors;
mod node;
mod pods;
mod routes;
mod servers;
mod starts;
mod state;
#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch as signal};
use tracing::Instrument;
use weft_api::k8s_openapi::api::core::v1::Pod;
use weft_wasm_host::{Host, HostConfig};

use crate::artifacts::ArtifactStore;
use crate::containerd::{ContainerdConfig, ContainerdRuntime};
use crate::logs::{self, Live};
use crate::podnet;
use crate::proxy::{LocalHandlers, Proxy};
use crate::runtime::Runtimes;
use crate::server::{self, ServerState};
use crate::wasm::WasmRuntime;

pub use ipam::IpPool;

/// The label nodes carry when their agent runs Wasm pods: the scheduler's
/// runtime fit sends pods of RuntimeClass `wasm` (handler `wasmtime`) here.
pub const WASM_LABEL: &str = "runtime.weft.dev/wasmtime";
/// The label of nodes whose agent also runs container pods (RuntimeClass
/// `containerd`, and pods without a RuntimeClass).
pub const CONTAINERD_LABEL: &str = "runtime.weft.dev/containerd";
const FIELD_MANAGER: &str = "weft-node";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("api: {0}")]
    Kube(#[from] kube::Error),
    #[error("wasm host: {0}")]
    Host(#[from] weft_wasm_host::HostError),
    #[error("artifacts: {0}")]
    Artifacts(#[from] crate::artifacts::PullError),
    #[error("invalid pod CIDR {0:?}: want an IPv4 a.b.c.d/len")]
    PodCidr(String),
    #[error("API client configuration: {0}")]
    Client(String),
    #[error(
        "node {node} got no podCIDR within {waited:?}: start the control plane with --cluster-cidr, or give this node --pod-cidr"
    )]
    NoPodCidr { node: String, waited: Duration },
    #[error(transparent)]
    PodNet(#[from] crate::podnet::PodNetError),
    #[error(transparent)]
    PodNetConnect(#[from] crate::podnet::ConnectError),
    #[error(transparent)]
    Nat(#[from] crate::podnet::NatError),
    #[error("the VXLAN backend needs an IPv4 node address, not {0}")]
    VxlanNeedsIpv4(std::net::IpAddr),
    #[error("enabling IPv4 forwarding for container pods: {0}")]
    Forwarding(#[source] std::io::Error),
    #[error("the agent endpoint on {addr}: {source}")]
    Endpoint {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A kube client for an API server, a bearer token and (for HTTPS) the cluster CA in PEM.
pub fn client(
    server: &str,
    token: &str,
    ca_pem: Option<&[u8]>,
) -> Result<kube::Client, AgentError> {
    use rustls_pki_types::pem::PemObject;
    let url = server
        .parse()
        .map_err(|e| AgentError::Client(format!("server URL {server:?}: {e}")))?;
    let mut config = kube::Config::new(url);
    config.auth_info.token = Some(token.to_string().into());
    // A member that does not answer is left soon for the next one.
    config.connect_timeout = Some(Duration::from_secs(5));
    if let Some(pem) = ca_pem {
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AgentError::Client(format!("cluster CA: {e}")))?;
        config.root_cert = Some(certs);
    }
    Ok(kube::Client::try_from(config)?)
}

/// A kube client over several control-plane members that moves to the next
/// member when one stops answering (one member: a plain [`client`]).
pub fn client_of(
    servers: &[String],
    token: &str,
    ca_pem: Option<&[u8]>,
) -> Result<kube::Client, AgentError> {
    let members = servers
        .iter()
        .map(|s| client(s, token, ca_pem))
        .collect::<Result<Vec<_>, _>>()?;
    match <[kube::Client; 1]>::try_from(members) {
        Ok([one]) => Ok(one),
        Err(members) if members.is_empty() => Err(AgentError::Client("no API server given".into())),
        Err(members) => Ok(kube::Client::new(
            servers::Failover::new(members),
            "default",
        )),
    }
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// Pod IPs come from here. Loopback by default, so pods need no
    /// privileges. Empty: the Node's podCIDR, which the control plane's node
    /// IPAM allocates (`--pod-network routed`).
    pub pod_cidr: String,
    /// This node's address towards the others (kubelet's `--node-ip`):
    /// the Node's InternalIP and its pods' hostIP. Default: the agent's
    /// listen address.
    pub node_ip: Option<std::net::IpAddr>,
    /// The Node's ExternalIP, when it has one (k3s's `--node-external-ip`).
    pub external_ip: Option<std::net::IpAddr>,
    /// How a routed node reaches its peers' blocks.
    pub backend: podnet::Backend,
    /// The cluster's pod range (kube-proxy's `--cluster-cidr`): a routed
    /// node masquerades what its containers send outside it.
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    /// The Service range, made local on a routed node's host (as its pod
    /// block is), so the proxy binds ClusterIPs there and pods reach them.
    pub service_cidr: Option<ipnet::Ipv4Net>,
    pub heartbeat: Duration,
    /// Wait before retrying a pod that failed to start (ImagePullBackOff).
    pub retry_after: Duration,
    /// The agent's endpoint (logs for `kubectl logs`); port 0 picks one.
    pub listen: SocketAddr,
    /// The bearer token the endpoint requires: the one the agent itself uses.
    pub token: String,
    /// Container log files rotate at this size.
    pub log_max_size: u64,
    /// Static pod manifests (kubelet's `--pod-manifest-path`), checked every few seconds.
    pub pod_manifest_path: Option<PathBuf>,
    /// Container pods through containerd; without it (or when containerd
    /// does not answer) the node runs Wasm pods only.
    pub containerd: Option<ContainerdConfig>,
    /// Pod starts and container restarts (pulls, compiles, container
    /// creates) in flight at once; the others wait their turn.
    pub max_parallel_starts: usize,
    /// The pods the Node offers the scheduler (kubelet's `--max-pods`); a
    /// routed node lowers it to the pod IPs its block holds.
    pub max_pods: u32,
    /// Labels this agent puts on its Node besides the well-known ones
    /// (kubelet's `--node-labels`).
    pub labels: std::collections::BTreeMap<String, String>,
}

impl AgentConfig {
    /// The Node's InternalIP.
    pub fn node_ip(&self) -> std::net::IpAddr {
        self.node_ip.unwrap_or(self.listen.ip())
    }

    /// Where container logs are kept (kubelet's layout).
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    pub fn new(name: String, data_dir: PathBuf) -> Self {
        AgentConfig {
            name,
            data_dir,
            pod_cidr: "127.10.0.0/16".into(),
            node_ip: None,
            service_cidr: None,
            heartbeat: Duration::from_secs(10),
            retry_after: Duration::from_secs(10),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            token: String::new(),
            log_max_size: logs::DEFAULT_MAX_SIZE,
            pod_manifest_path: None,
            containerd: None,
            cluster_cidr: None,
            backend: podnet::Backend::HostGw,
            max_pods: 10_000,
            external_ip: None,
            max_parallel_starts: 64,
            labels: Default::default(),
        }
    }
}

fn ts(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `status.startTime`: when this node first started the pod.
fn start_time(pod: &Pod) -> Option<jiff::Timestamp> {
    let t = pod.status.as_ref()?.start_time.as_ref()?;
    jiff::Timestamp::from_second(t.0.timestamp()).ok()
}

fn now() -> String {
    ts(jiff::Timestamp::now())
}

fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// A running agent; `shutdown` stops its pods (leaving them in the API, to be
/// resumed by the next start) and its loops.
pub struct AgentHandle {
    stop: signal::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
    routed: Option<routes::Routed>,
}

impl AgentHandle {
    pub async fn shutdown(mut self, deadline: Duration) {
        let _ = self.stop.send(true);
        let tasks = &mut self.tasks;
        let all = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("node agent did not stop within {deadline:?}");
        }
        // The peer routes went with the routes task; the local block goes last.
        if let Some(routed) = &self.routed {
            routed.tear_down().await;
        }
    }
}

pub async fn start(client: kube::Client, cfg: AgentConfig) -> Result<AgentHandle, AgentError> {
    let routed = cfg.pod_cidr.is_empty();
    if !routed && IpPool::parse(&cfg.pod_cidr).is_none() {
        return Err(AgentError::PodCidr(cfg.pod_cidr.clone()));
    }
    let host = Arc::new(Host::new(HostConfig::new(cfg.data_dir.join("cwasm")))?);
    let artifacts = Arc::new(ArtifactStore::new(cfg.data_dir.join("artifacts"))?);
    let endpoint_err = |source| AgentError::Endpoint {
        addr: cfg.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(endpoint_err)?;
    let endpoint = listener.local_addr().map_err(endpoint_err)?;
    let mut cfg = cfg;
    // Port 0 picked one: the Node advertises the real port.
    cfg.listen = endpoint;
    let (exits_tx, exits) = mpsc::unbounded_channel();
    let live = Arc::new(Live::default());
    if let Some(c) = cfg.containerd.as_mut()
        && c.dns.server.is_none()
    {
        c.dns.server = node::cluster_dns(&client).await;
    }
    let mut containerd = connect_containerd(&cfg, live.clone(), exits_tx.clone()).await;
    let containerd_version = containerd.as_ref().map(|c| c.version.clone());
    node::register(&client, &cfg, containerd_version.as_deref()).await?;
    let routed = if routed {
        Some(routes::set_up(&client, &mut cfg, containerd.as_mut()).await?)
    } else {
        None
    };
    let pool =
        IpPool::parse(&cfg.pod_cidr).ok_or_else(|| AgentError::PodCidr(cfg.pod_cidr.clone()))?;
    let (stop, stopped) = signal::channel(false);
    let local = Arc::new(LocalHandlers::default());
    let proxy = Proxy::new(local.clone());
    tokio::spawn(proxy.clone().run(
        client.clone(),
        crate::proxy::table::ThisNode {
            ip: cfg.node_ip(),
            name: cfg.name.clone(),
        },
        stopped.clone(),
    ));
    tokio::spawn(server::serve(
        listener,
        ServerState {
            logs: cfg.logs_dir(),
            live: live.clone(),
            token: cfg.token.clone(),
            proxy: proxy.clone(),
        },
        stopped.clone(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    let span = tracing::info_span!("node", node = %cfg.name);
    tasks.spawn(
        node::heartbeat_loop(
            client.clone(),
            cfg.clone(),
            containerd_version,
            stopped.clone(),
        )
        .instrument(span.clone()),
    );
    if let Some(r) = &routed {
        tasks.spawn(
            routes::run(
                client.clone(),
                cfg.name.clone(),
                r.net().clone(),
                stopped.clone(),
            )
            .instrument(span.clone()),
        );
    }
    if let Some(dir) = cfg.pod_manifest_path.clone() {
        tasks.spawn(
            mirrors::sync_loop(client.clone(), cfg.name.clone(), dir, stopped.clone())
                .instrument(span.clone()),
        );
    }
    let runtime = Runtimes {
        wasm: WasmRuntime::new(
            host,
            artifacts,
            live,
            cfg.log_max_size,
            exits_tx,
            local,
            proxy,
        ),
        containerd,
    };
    let watch = watcher::watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.name)),
    )
    .boxed();
    let api = Arc::new(effects::KubeApi::new(client, cfg.name.clone()));
    let (pod_loop, inbox) = pods::PodLoop::new(cfg, Arc::new(runtime), api, pool, exits);
    tasks.spawn(pod_loop.run(stopped, watch, inbox).instrument(span));
    Ok(AgentHandle {
        stop,
        tasks,
        routed,
    })
}

/// The node's containerd, if it has one configured and it answers.
async fn connect_containerd(
    cfg: &AgentConfig,
    live: Arc<Live>,
    exits: mpsc::UnboundedSender<crate::workload::Exited>,
) -> Option<ContainerdRuntime> {
    let c = cfg.containerd.as_ref()?;
    let connected = ContainerdRuntime::connect(
        c,
        cfg.name.clone(),
        &cfg.data_dir,
        live,
        cfg.log_max_size,
        exits,
    )
    .await;
    connected
        .inspect_err(|e| tracing::warn!("{e}: this node runs Wasm pods only"))
        .ok()
}

/// How long a routed node waits for the control plane to allocate its podCIDR.
pub(super) const POD_CIDR_WAIT: Duration = Duration::from_secs(60);
