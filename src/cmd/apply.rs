//! `weft apply -f`: create or update objects from manifests.

use std::path::PathBuf;

use weft_client::Applied;

#[derive(clap::Args)]
pub struct Args {
    /// A manifest file, a directory of them, or - for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub client: super::ClientArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.client.client()?;
    let mut failed = 0;
    for f in &args.files {
        for obj in super::read_manifests(f)? {
            let what = describe(&obj);
            match client.apply(&obj).await {
                Ok((_, how)) => println!(
                    "{what} {}",
                    match how {
                        Applied::Created => "created",
                        Applied::Configured => "configured",
                        Applied::Unchanged => "unchanged",
                    }
                ),
                Err(e) => {
                    failed += 1;
                    eprintln!("error: {what}: {e}");
                }
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} object(s) failed to apply");
    Ok(())
}

/// `deployment.apps/hello`, as kubectl prints it.
pub fn describe(obj: &serde_json::Value) -> String {
    let kind = obj
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("object")
        .to_lowercase();
    let group = obj
        .get("apiVersion")
        .and_then(|a| a.as_str())
        .and_then(|a| a.split_once('/'))
        .map(|(g, _)| format!(".{g}"))
        .unwrap_or_default();
    let name = obj
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or("?");
    format!("{kind}{group}/{name}")
}
