//! `weft control-plane`: the API server and one Raft store member.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use weft_control_plane::{ControlPlane, ControlPlaneConfig};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub serve: super::ServeArgs,
    #[command(flatten)]
    pub member: super::MemberArgs,
    /// Every member as ID=URL, comma separated, to form a cluster at once
    /// (plain HTTP only: members need one CA, which --server's token brings).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["server", "cluster_init"])]
    pub peers: Vec<String>,
    /// How many changes a watch may resume behind the head before getting 410 Gone.
    #[arg(long, default_value_t = 20_000)]
    pub watch_window: usize,
    #[command(flatten)]
    pub controllers: super::ControllerArgs,
}

impl Args {
    pub fn config(&self) -> anyhow::Result<ControlPlaneConfig> {
        let data_dir = self
            .serve
            .data_dir
            .clone()
            .unwrap_or_else(super::default_data_dir);
        let mut cfg = ControlPlaneConfig::new(data_dir, self.serve.listen);
        cfg.insecure = self.serve.insecure;
        cfg.services = weft_control_plane::apiserver::services::ServiceNetwork::parse(
            &self.serve.service_cidr,
            &self.serve.service_node_port_range,
        )
        .map_err(anyhow::Error::msg)?;
        cfg.watch_window = self.watch_window;
        cfg.peers = parse_peers(&self.peers)?;
        cfg.join = self.member.server.clone();
        cfg.token = self.member.token.clone();
        if cfg.join.is_some() && cfg.token.is_none() && !cfg.insecure {
            bail!(
                "--server needs --token: the cluster's join token, in DATA_DIR/token on any member"
            );
        }
        if !cfg.peers.is_empty() && !cfg.insecure {
            bail!(
                "--peers forms a cluster over plain HTTP only (--insecure); over TLS, start one member with --cluster-init and join the others with --server and --token"
            );
        }
        cfg.node_id = node_id(&cfg.data_dir, self.member.node_id, cfg.join.is_some())?;
        cfg.raft_timing = self.member.raft_timing()?;
        cfg.cluster_reset = self.member.cluster_reset;
        if cfg.cluster_reset && !cfg.peers.is_empty() {
            bail!("--cluster-reset makes a one-member cluster: it cannot take --peers");
        }
        cfg.snapshot_count = self.member.snapshot_count;
        cfg.backups.interval = self.member.snapshot_interval;
        cfg.backups.retention = self.member.snapshot_retention;
        if let Some(dir) = &self.member.snapshot_dir {
            cfg.backups.dir = dir.clone();
        }
        self.controllers.apply(&mut cfg)?;
        if !cfg.peers.is_empty() && !cfg.peers.contains_key(&cfg.node_id) {
            bail!(
                "--peers must include this member's own --node-id {}",
                cfg.node_id
            );
        }
        // Members wait for each other; a lone member is ready in about a second.
        cfg.ready_timeout = Duration::from_secs(if cfg.peers.len() > 1 || cfg.join.is_some() {
            300
        } else {
            60
        });
        Ok(cfg)
    }
}

/// The member id: the flag, else the one this data directory was given
/// before, else 1 for a new cluster or a random one for a joiner. Kept in
/// DATA_DIR/member-id, so a restart is the same member.
fn node_id(data_dir: &std::path::Path, flag: Option<u64>, joining: bool) -> anyhow::Result<u64> {
    let file = data_dir.join("member-id");
    let kept = match std::fs::read_to_string(&file) {
        Ok(s) => Some(
            s.trim()
                .parse::<u64>()
                .with_context(|| format!("{} is not a member id", file.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let id = match (flag, kept) {
        (Some(f), Some(k)) if f != k => {
            bail!("--node-id {f}: this data directory is member {k}")
        }
        (Some(id), _) | (None, Some(id)) => id,
        // RandomState is seeded from the OS: a random id without a new dependency.
        (None, None) if joining => {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(0u8) >> 12 | 2
        }
        (None, None) => 1,
    };
    if kept.is_none() {
        std::fs::create_dir_all(data_dir)?;
        std::fs::write(&file, id.to_string())
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(id)
}

fn parse_peers(list: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    for p in list.iter().filter(|p| !p.is_empty()) {
        let (id, url) = p
            .split_once('=')
            .with_context(|| format!("peer {p:?} is not ID=URL"))?;
        out.insert(
            id.parse()
                .with_context(|| format!("peer id {id:?} is not a number"))?,
            url.to_string(),
        );
    }
    Ok(out)
}

/// Starts the control plane and writes `DATA_DIR/kubeconfig` once it serves.
pub async fn start(cfg: ControlPlaneConfig) -> anyhow::Result<ControlPlane> {
    let data_dir = cfg.data_dir.clone();
    let cp = ControlPlane::start(cfg)
        .await
        .context("starting the control plane")?;
    let kubeconfig = data_dir.join("kubeconfig");
    weft_control_plane::apiserver::security::write_private(&kubeconfig, &cp.kubeconfig())?;
    Ok(cp)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let cp = start(args.config()?).await?;
    tracing::info!(url = %cp.url, "control plane serving");
    super::shutdown_signal().await;
    cp.shutdown(super::SHUTDOWN_DEADLINE).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse() {
        let p = parse_peers(&["1=https://a:1".into(), "2=https://b:2".into()]).unwrap();
        assert_eq!(p[&2], "https://b:2");
        assert!(parse_peers(&["x".into()]).is_err());
        assert!(parse_peers(&["a=b".into()]).is_err());
    }

    #[test]
    fn raft_timings_are_checked() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            member: crate::cmd::MemberArgs,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("weft").chain(args.iter().copied()))
                .unwrap()
                .member
                .raft_timing()
        };
        let t = parse(&[]).unwrap();
        assert_eq!(t.heartbeat, Duration::from_millis(50));
        assert_eq!(t.election, Duration::from_millis(150));
        let t = parse(&["--heartbeat-interval", "250ms", "--election-timeout", "2s"]).unwrap();
        assert_eq!(t.election, Duration::from_secs(2));
        let e = parse(&["--election-timeout", "100ms"]).unwrap_err();
        assert!(e.to_string().contains("at least three times"), "{e}");
    }

    #[test]
    fn member_ids_are_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let joined = node_id(dir.path(), None, true).unwrap();
        assert!(joined >= 2, "a joiner never takes the first member's id");
        assert_eq!(node_id(dir.path(), None, true).unwrap(), joined);
        assert_eq!(node_id(dir.path(), Some(joined), false).unwrap(), joined);
        let e = node_id(dir.path(), Some(joined + 1), false).unwrap_err();
        assert!(e.to_string().contains("is member"), "{e}");
        let fresh = tempfile::tempdir().unwrap();
        assert_eq!(node_id(fresh.path(), None, false).unwrap(), 1);
    }
}
