//! `weft up`: the all-in-one local cluster.

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub serve: super::ServeArgs,
    #[command(flatten)]
    pub member: super::MemberArgs,
    /// The range the node's pod IPs come from (loopback by default: no privileges needed).
    #[arg(long, default_value = "127.10.0.0/16")]
    pub pod_cidr: String,
    /// The node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    #[command(flatten)]
    pub node: super::node::StatusArgs,
    #[command(flatten)]
    pub controllers: super::ControllerArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let cp_args = super::control_plane::Args {
        serve: args.serve.clone(),
        member: args.member.clone(),
        peers: Vec::new(),
        watch_window: 20_000,
        controllers: args.controllers.clone(),
    };
    let cfg = cp_args.config()?;
    let data_dir = cfg.data_dir.clone();
    let kubeconfig = data_dir.join("kubeconfig");
    let cp = super::control_plane::start(cfg).await?;
    let ca = data_dir.join("pki/ca.crt");
    let client = super::node::client(
        std::slice::from_ref(&cp.url),
        &cp.token,
        cp.ca_pem.is_some().then_some(ca.as_path()),
    )?;
    let name = args.node_name.unwrap_or_else(super::node::default_name);
    let mut agent_cfg = weft_node::agent::AgentConfig::new(name, data_dir.join("node"));
    agent_cfg.pod_cidr = args.pod_cidr;
    args.node.apply(&mut agent_cfg);
    // A node beside a control-plane member says so, as k3s servers' nodes do.
    agent_cfg.labels.insert(
        "node-role.kubernetes.io/control-plane".into(),
        "true".into(),
    );
    agent_cfg.token = cp.token.clone();
    let node = weft_node::agent::start(client, agent_cfg).await?;
    // Tests and scripts wait for this line: the API is ready and the kubeconfig written.
    println!("weft is up: API at {}", cp.url);
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get namespaces");
    if cp.join_token.is_some() {
        let token = data_dir.join(weft_control_plane::apiserver::security::JOIN_TOKEN);
        println!(
            "  another server joins with: weft up --server {} --token \"$(cat {})\"",
            cp.url,
            token.display()
        );
    }
    super::shutdown_signal().await;
    node.shutdown(super::SHUTDOWN_DEADLINE).await;
    cp.shutdown(super::SHUTDOWN_DEADLINE).await;
    Ok(())
}
