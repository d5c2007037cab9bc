//! `weft push FILE.wasm REGISTRY/NAME:TAG`: publish a Wasm file as an OCI artifact.

use std::path::PathBuf;

use weft_node::artifacts;

#[derive(clap::Args)]
pub struct Args {
    /// The .wasm file (a component or a core module).
    pub file: PathBuf,
    /// Where to push it, e.g. 127.0.0.1:5000/hello:1 (plain HTTP for loopback registries).
    pub reference: String,
    /// Registry user (with --password); anonymous otherwise.
    #[arg(long, env = "WEFT_REGISTRY_USER")]
    pub username: Option<String>,
    #[arg(long, env = "WEFT_REGISTRY_PASSWORD")]
    pub password: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let auth = match (args.username, args.password) {
        (Some(u), Some(p)) => oci_client::secrets::RegistryAuth::Basic(u, p),
        _ => oci_client::secrets::RegistryAuth::Anonymous,
    };
    let digest = artifacts::push(&args.file, &args.reference, &auth).await?;
    println!("pushed {} ({digest})", args.reference);
    Ok(())
}
