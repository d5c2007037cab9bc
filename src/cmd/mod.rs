//! One file per verb; shared plumbing (data dir, kubeconfig, signals) here.

pub mod apply;
pub mod control_plane;
pub mod delete;
pub mod get;
pub mod member;
pub mod node;
pub mod push;
pub mod snapshot;
pub mod up;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use weft_client::Client;

/// `$XDG_DATA_HOME/weft`, or `~/.local/share/weft`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("weft");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/weft")
}

/// Flags of the verbs that serve the API (`up`, `control-plane`).
#[derive(clap::Args, Clone)]
pub struct ServeArgs {
    /// Where the store, PKI, tokens and kubeconfig live; reused across restarts.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// API listen address; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: std::net::SocketAddr,
    /// Serve plain HTTP without authentication (local experiments only).
    #[arg(long)]
    pub insecure: bool,
    /// The range ClusterIPs come from (loopback by default: no privileges needed).
    #[arg(long, default_value = weft_control_plane::apiserver::services::ServiceNetwork::DEFAULT_CIDR)]
    pub service_cidr: String,
    /// The range NodePorts come from.
    #[arg(long, default_value = weft_control_plane::apiserver::services::ServiceNetwork::DEFAULT_NODE_PORTS)]
    pub service_node_port_range: String,
}

/// How a member forms or joins a cluster (k3s's flags), for `up` and `control-plane`.
#[derive(clap::Args, Clone)]
pub struct MemberArgs {
    /// Start a new cluster as its first member (what happens without --server too).
    #[arg(long, conflicts_with = "server")]
    pub cluster_init: bool,
    /// Join the cluster that this member belongs to (its URL, e.g. https://10.0.0.1:6443).
    #[arg(long)]
    pub server: Option<String>,
    /// The cluster's join token, from DATA_DIR/token on any member: it pins
    /// the cluster CA (K10<sha256 of the CA>::server:<secret>).
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// This member's Raft id (default: 1 for a new cluster, a random one to
    /// join; kept in DATA_DIR/member-id across restarts).
    #[arg(long)]
    pub node_id: Option<u64>,
    /// How often the Raft leader heartbeats its followers (etcd's name).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// How long a follower waits without a heartbeat before it campaigns;
    /// each term draws from [this, 1.5 × this), after a leader lease of
    /// 1.5 × this. Raise both on slow links or disks: an election timeout
    /// near the fsync or round-trip time makes elections churn.
    #[arg(long, default_value = "150ms", value_parser = parse_duration)]
    pub election_timeout: Duration,
    /// After quorum loss: start this member's data as a new one-member
    /// cluster, with every write it holds (etcd's --force-new-cluster).
    /// Once, then restart without it; other members join again afresh.
    #[arg(long, conflicts_with = "server")]
    pub cluster_reset: bool,
    /// Raft log entries between snapshots; older entries are then purged,
    /// and a member that far behind catches up by snapshot install.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// How often this member saves a backup into --snapshot-dir (0 turns it off).
    #[arg(long, default_value = "12h", value_parser = parse_duration)]
    pub snapshot_interval: Duration,
    /// How many scheduled backups to keep.
    #[arg(long, default_value_t = 5)]
    pub snapshot_retention: usize,
    /// Where scheduled backups go (default: DATA_DIR/snapshots).
    #[arg(long)]
    pub snapshot_dir: Option<PathBuf>,
}

impl MemberArgs {
    /// The Raft timings, checked as etcd checks them.
    pub fn raft_timing(&self) -> anyhow::Result<weft_control_plane::store::RaftTiming> {
        let (heartbeat, election) = (self.heartbeat_interval, self.election_timeout);
        if heartbeat.is_zero() || election < heartbeat * 3 {
            anyhow::bail!(
                "--election-timeout ({election:?}) must be at least three times --heartbeat-interval ({heartbeat:?}), which must not be zero"
            );
        }
        Ok(weft_control_plane::store::RaftTiming {
            heartbeat,
            election,
        })
    }
}

/// Controller settings shared by `up` and `control-plane` (kube-controller-manager's names).
#[derive(clap::Args, Clone)]
pub struct ControllerArgs {
    /// How long a node may go without a heartbeat before it is marked Unknown
    /// and its pods start being evicted.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// How long the leader's Lease lasts without renewal (failover time).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// The range every Node's podCIDR is carved from (node IPAM, as
    /// kube-controller-manager's --allocate-node-cidrs): nodes started with
    /// `--pod-network routed` take their pod IPs from their block.
    #[arg(long)]
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    /// The prefix length of each Node's block of --cluster-cidr.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
}

impl ControllerArgs {
    pub fn apply(&self, cfg: &mut weft_control_plane::ControlPlaneConfig) -> anyhow::Result<()> {
        cfg.controllers.node_monitor_grace_period = self.node_monitor_grace_period;
        cfg.lease_duration = self.leader_elect_lease_duration;
        if let Some(cidr) = self.cluster_cidr {
            // Checked here, so a bad mask stops the start instead of the controller.
            weft_control_plane::controllers::node_ipam::NodeIpamController::new(
                cidr,
                self.node_cidr_mask_size,
            )
            .map_err(anyhow::Error::msg)?;
            cfg.controllers.cluster_cidr = Some((cidr.trunc(), self.node_cidr_mask_size));
        }
        Ok(())
    }
}

/// A duration as Kubernetes flags write them: `40s`, `5m`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    // A bare zero needs no unit, as in Go's time.ParseDuration.
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} is negative"))
}

/// Client flags shared by apply/get/delete.
#[derive(clap::Args, Clone)]
pub struct ClientArgs {
    /// Kubeconfig to use (default: $KUBECONFIG, then the default data dir's kubeconfig).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// API servers to use in place of the kubeconfig's, comma-separated
    /// (members of its cluster): a server that refuses or does not answer
    /// the connection is left for the next.
    #[arg(long, value_delimiter = ',')]
    pub server: Vec<String>,
}

impl ClientArgs {
    pub fn client(&self) -> anyhow::Result<Client> {
        let path = self
            .kubeconfig
            .clone()
            .unwrap_or_else(|| default_data_dir().join("kubeconfig"));
        let mut c = Client::from_kubeconfig(&path)
            .with_context(|| format!("loading kubeconfig {}", path.display()))?
            .with_servers(self.server.clone());
        if let Some(ns) = &self.namespace {
            c.namespace = ns.clone();
        }
        Ok(c)
    }
}

/// Reads manifests from a file, a directory of .yaml/.yml/.json files, or `-` (stdin).
pub fn read_manifests(path: &std::path::Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut texts = Vec::new();
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        texts.push(s);
    } else if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                texts.push(
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?,
                );
            }
        }
    } else {
        texts.push(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        );
    }
    let mut out = Vec::new();
    for t in texts {
        out.extend(weft_client::parse_manifests(&t)?);
    }
    Ok(out)
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down (signal again to exit immediately)");
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        std::process::exit(130);
    });
}

/// How long a clean shutdown may take before we give up waiting.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_kubernetes_flags_write_them() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("12").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
