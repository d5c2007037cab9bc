//! `weft control-plane`: the API server and one Raft store member.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use weft_control_plane::{ControlPlane, ControlPlaneConfig};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub serve: super::ServeArgs,
    /// This member's Raft node id.
    #[arg(long, default_value_t = 1)]
    pub node_id: u64,
    /// Every member as ID=URL, comma separated (e.g. 1=https://10.0.0.1:6443,2=...). Empty: a single member.
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Join the running cluster that this member belongs to (its URL) as
    /// member --node-id, instead of forming one with --peers.
    #[arg(long, conflicts_with = "peers")]
    pub server: Option<String>,
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
        cfg.node_id = self.node_id;
        cfg.watch_window = self.watch_window;
        cfg.peers = parse_peers(&self.peers)?;
        cfg.join = self.server.clone();
        self.controllers.apply(&mut cfg);
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
}
