//! `weft delete`: by type and name, or by manifest.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Resource type, then one or more names (omit with -f).
    pub args: Vec<String>,
    /// Delete the objects these manifests describe.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub client: super::ClientArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.client.client()?;
    let mut targets = Vec::new();
    for f in &args.files {
        for obj in super::read_manifests(f)? {
            targets.push(client.locate(&obj)?);
        }
    }
    if let Some((ty, names)) = args.args.split_first() {
        let res = weft_api::resources::resolve(ty)
            .ok_or_else(|| anyhow::anyhow!("the server doesn't have a resource type {ty:?}"))?;
        anyhow::ensure!(!names.is_empty(), "name the {} to delete", res.plural);
        for n in names {
            targets.push((res, args.client.namespace.clone(), n.clone()));
        }
    }
    anyhow::ensure!(
        !targets.is_empty(),
        "nothing to delete: give TYPE NAME... or -f FILE"
    );
    let mut failed = 0;
    for (res, ns, name) in targets {
        let what = format!(
            "{}{}/{name}",
            res.singular,
            if res.group.is_empty() {
                String::new()
            } else {
                format!(".{}", res.group)
            }
        );
        match client.delete(res, ns.as_deref(), &name).await {
            Ok(_) => println!("{what} deleted"),
            Err(e) => {
                failed += 1;
                eprintln!("error: {what}: {e}");
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} object(s) failed to delete");
    Ok(())
}
