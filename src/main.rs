//! `weft`: a WebAssembly-first orchestrator with a Kubernetes-compatible API, in one binary.

mod cmd;

// mimalloc over glibc malloc: JSON-heavy API, cache and scheduler work is
// allocation-bound (see docs/benchmarks.md, scheduler).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "A WebAssembly-first orchestrator with a Kubernetes-compatible API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an all-in-one local cluster: the control plane and one node agent.
    Up(Box<cmd::up::Args>),
    /// Run the control plane alone: API server and Raft store member.
    ControlPlane(Box<cmd::control_plane::Args>),
    /// Create or update objects from manifest files (YAML or JSON).
    Apply(cmd::apply::Args),
    /// List or show objects.
    Get(cmd::get::Args),
    /// Delete objects by name or by manifest.
    Delete(cmd::delete::Args),
    /// Publish a .wasm file to an OCI registry as a Wasm artifact.
    Push(cmd::push::Args),
    /// Run a node agent on its own, against a control plane.
    Node(Box<cmd::node::Args>),
    /// List or remove the control plane's Raft members.
    Member(cmd::member::Args),
    /// Back up the cluster's objects, restore them, and manage scheduled backups.
    Snapshot(cmd::snapshot::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Each Wasm pod port is a listening socket: thousands of pods need more
    // than the usual 1,024 descriptors (kubelet and containerd do the same).
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!("raising the open-files limit: {e}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.command {
            Command::Up(a) => cmd::up::run(*a).await,
            Command::ControlPlane(a) => cmd::control_plane::run(*a).await,
            Command::Apply(a) => cmd::apply::run(a).await,
            Command::Get(a) => cmd::get::run(a).await,
            Command::Delete(a) => cmd::delete::run(a).await,
            Command::Push(a) => cmd::push::run(a).await,
            Command::Node(a) => cmd::node::run(*a).await,
            Command::Member(a) => cmd::member::run(a).await,
            Command::Snapshot(a) => cmd::snapshot::run(a).await,
        }
    })
}
