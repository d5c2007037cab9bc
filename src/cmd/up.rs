//! `weft up`: the all-in-one local cluster.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Where cluster state lives; reused across restarts.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// API listen address; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Serve plain HTTP without authentication (local experiments only).
    #[arg(long)]
    pub insecure: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let cp_args = super::control_plane::Args {
        data_dir: args.data_dir,
        listen: args.listen,
        insecure: args.insecure,
        node_id: 1,
        peers: Vec::new(),
        watch_window: 20_000,
    };
    let cfg = cp_args.config()?;
    let kubeconfig = cfg.data_dir.join("kubeconfig");
    let cp = super::control_plane::start(cfg).await?;
    // Tests and scripts wait for this line: the API is ready and the kubeconfig written.
    println!("weft is up: API at {}", cp.url);
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get namespaces");
    super::shutdown_signal().await;
    cp.shutdown(super::SHUTDOWN_DEADLINE).await;
    Ok(())
}
