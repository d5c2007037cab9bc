//! `weft node`: a node agent on its own (tests start several).

use std::path::PathBuf;

use anyhow::Context;
use weft_node::agent::{self, AgentConfig};

#[derive(clap::Args)]
pub struct Args {
    /// The API server's URL, or several control-plane members' URLs, comma
    /// separated: the agent moves to the next when one stops answering.
    #[arg(long, value_delimiter = ',', required = true)]
    pub server: Vec<String>,
    /// A bearer token (the admin token from the kubeconfig is enough for now).
    #[arg(long, env = "WEFT_TOKEN")]
    pub token: String,
    /// The cluster CA (PEM), e.g. DATA_DIR/pki/ca.crt of the control plane.
    #[arg(long)]
    pub certificate_authority: Option<PathBuf>,
    /// This node's name.
    #[arg(long)]
    pub name: String,
    /// Where compiled artifacts and pulled blobs are kept.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The range pod IPs come from (loopback by default: no privileges needed).
    #[arg(long, default_value = "127.10.0.0/16")]
    pub pod_cidr: String,
    /// How Wasm pods get their IPs: `loopback` takes them from --pod-cidr
    /// (one host, no privileges); `routed` from this Node's podCIDR, which
    /// the control plane allocates from its --cluster-cidr, made local on
    /// this host (root; docs/networking.md).
    #[arg(long, value_enum, default_value_t = PodNetwork::Loopback)]
    pub pod_network: PodNetwork,
    /// With `--pod-network routed`: the control plane's --service-cidr,
    /// made local on this host so its proxy serves ClusterIPs (and cluster
    /// DNS) to the host and to pods (a non-loopback range).
    #[arg(long)]
    pub service_cidr: Option<ipnet::Ipv4Net>,
    /// With `--pod-network routed`: how packets reach other nodes' pods.
    /// `host-gw` routes via the peer's InternalIP (one L2 segment);
    /// `vxlan` tunnels over UDP 8472 (any IP network); `auto` picks
    /// host-gw for peers on this host's subnets, VXLAN for the rest.
    #[arg(long, value_enum, default_value_t = Backend::HostGw)]
    pub backend: Backend,
    /// With `--pod-network routed`: the control plane's --cluster-cidr
    /// (kube-proxy's name). Container pods' traffic to anything outside it
    /// is masqueraded behind this host's address.
    #[arg(long)]
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    #[command(flatten)]
    pub status: StatusArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    HostGw,
    Vxlan,
    Auto,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum PodNetwork {
    Loopback,
    Routed,
}

/// Node agent settings shared by `up` and `node` (kubelet's names).
#[derive(clap::Args, Clone)]
pub struct StatusArgs {
    /// A directory of static pod manifests: each runs on this node, with a
    /// mirror pod `{name}-{node}` in the API.
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,
    /// How often the agent renews its Lease and posts node status.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub node_status_update_frequency: std::time::Duration,
    /// containerd's socket, for container pods. When nothing answers there,
    /// the node runs Wasm pods only; an empty value turns containers off.
    #[arg(long, default_value = "/run/containerd/containerd.sock", value_parser = any_path)]
    pub containerd_socket: PathBuf,
    /// The range container pods' IPs come from: they live on the CNI bridge
    /// and in the pods' network namespaces.
    #[arg(long, default_value = "10.88.0.0/16")]
    pub container_pod_cidr: String,
    /// The Linux bridge container pods attach to.
    #[arg(long, default_value = "weft0")]
    pub cni_bridge: String,
    /// Where the standard CNI plugins are (Debian's containernetworking-plugins).
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_plugin_dir: PathBuf,
    /// The DNS server containers' resolv.conf names (kubelet's name;
    /// default: the kube-dns Service's ClusterIP, looked up at start).
    #[arg(long)]
    pub cluster_dns: Option<std::net::IpAddr>,
    /// The cluster's DNS domain, for containers' search path.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Lets pods run privileged containers.
    #[arg(long)]
    pub allow_privileged: bool,
    /// The first wait before a crashed container starts again, or a pod
    /// that failed to start is retried; it doubles per failure, up to 5 min
    /// (kubelet's 10 s). Tests shorten it.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub restart_backoff: std::time::Duration,
    /// Pod starts (pulls, compiles, container creates) in flight at once;
    /// more wait their turn, so one slow pull delays no other pod.
    #[arg(long, default_value_t = 64)]
    pub max_parallel_starts: usize,
    /// This node's address towards the others (kubelet's name): its Node's
    /// InternalIP, its pods' hostIP, where its endpoint (logs) and NodePorts
    /// listen. Default: 127.0.0.1, one host.
    #[arg(long)]
    pub node_ip: Option<std::net::IpAddr>,
    /// This node's address from outside the cluster, shown as its
    /// ExternalIP (k3s's name); nothing listens on it.
    #[arg(long)]
    pub node_external_ip: Option<std::net::IpAddr>,
    /// Labels for this node's Node object, as KEY=VALUE, comma separated.
    #[arg(long, value_delimiter = ',', value_parser = label)]
    pub node_labels: Vec<(String, String)>,
}

impl StatusArgs {
    /// Sets these on the agent's configuration.
    pub fn apply(&self, cfg: &mut AgentConfig) {
        cfg.heartbeat = self.node_status_update_frequency;
        cfg.containerd = self.containerd();
        cfg.pod_manifest_path = self.pod_manifest_path.clone();
        cfg.retry_after = self.restart_backoff;
        cfg.max_parallel_starts = self.max_parallel_starts;
        cfg.labels.extend(self.node_labels.iter().cloned());
        cfg.node_ip = self.node_ip;
        cfg.external_ip = self.node_external_ip;
        // The API server reaches the agent (logs) at the Node's address.
        if let Some(ip) = self.node_ip {
            cfg.listen = std::net::SocketAddr::new(ip, 0);
        }
    }

    /// The agent's containerd settings, unless turned off.
    fn containerd(&self) -> Option<weft_node::containerd::ContainerdConfig> {
        (!self.containerd_socket.as_os_str().is_empty()).then(|| {
            weft_node::containerd::ContainerdConfig {
                socket: self.containerd_socket.clone(),
                pod_cidr: self.container_pod_cidr.clone(),
                bridge: self.cni_bridge.clone(),
                cni_plugin_dir: self.cni_plugin_dir.clone(),
                allow_privileged: self.allow_privileged,
                dns: weft_node::containerd::resolv::ClusterDns {
                    server: self.cluster_dns,
                    domain: self.cluster_domain.clone(),
                },
            }
        })
    }
}

/// One `KEY=VALUE` of `--node-labels` (the value may be empty).
fn label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has no key"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// A path that may be empty (clap's own path parser refuses "").
fn any_path(s: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(s))
}

/// A kube client for one or several servers, a token and a CA file.
pub fn client(
    servers: &[String],
    token: &str,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<kube::Client> {
    let pem = ca
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    Ok(agent::client_of(servers, token, pem.as_deref())?)
}

/// The node name `weft up` uses: the host name, made a valid object name.
pub fn default_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if name.is_empty() {
        "weft-node".into()
    } else {
        name
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = client(
        &args.server,
        &args.token,
        args.certificate_authority.as_deref(),
    )?;
    let mut cfg = AgentConfig::new(args.name, args.data_dir);
    cfg.service_cidr = args.service_cidr;
    cfg.cluster_cidr = args.cluster_cidr.map(|c| c.trunc());
    cfg.backend = match args.backend {
        Backend::HostGw => weft_node::podnet::Backend::HostGw,
        Backend::Vxlan => weft_node::podnet::Backend::Vxlan,
        Backend::Auto => weft_node::podnet::Backend::Auto,
    };
    cfg.pod_cidr = match args.pod_network {
        PodNetwork::Loopback => args.pod_cidr,
        // Empty: the agent takes the Node's allocated podCIDR.
        PodNetwork::Routed => String::new(),
    };
    args.status.apply(&mut cfg);
    cfg.token = args.token;
    let node = agent::start(client, cfg)
        .await
        .context("starting the node agent")?;
    super::shutdown_signal().await;
    node.shutdown(super::SHUTDOWN_DEADLINE).await;
    Ok(())
}
