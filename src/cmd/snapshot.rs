//! `weft snapshot save|restore|ls|delete|prune`: backups of the cluster's
//! objects (k3s's `etcd-snapshot`). `save` asks a member over the API;
//! `restore` writes a new data directory; `ls`, `delete` and `prune` manage
//! a member's scheduled backups in its snapshot directory, on its host.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use weft_client::Method;
use weft_control_plane::store::backup::{self, SnapshotDir};
use weft_control_plane::store::network::RPC_BACKUP;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Save a consistent backup of every object, from any member, to FILE.
    Save {
        file: PathBuf,
        #[command(flatten)]
        client: super::ClientArgs,
    },
    /// Make a new one-member cluster in --data-dir from a backup; start it
    /// with `weft up --data-dir DIR`. The directory must be new or empty.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        /// How far revisions move past the backup's, so that clients of
        /// the old cluster relist (410 Gone) instead of seeing revisions go
        /// backwards: more than the writes made since the backup.
        #[arg(long, default_value_t = 1_000_000_000)]
        bump_revision: u64,
    },
    /// The backups in a snapshot directory, oldest first.
    Ls(DirArgs),
    /// Delete backups by name.
    Delete {
        names: Vec<String>,
        #[command(flatten)]
        dir: DirArgs,
    },
    /// Delete all but the newest --snapshot-retention backups.
    Prune {
        #[arg(long, default_value_t = 5)]
        snapshot_retention: usize,
        #[command(flatten)]
        dir: DirArgs,
    },
}

#[derive(clap::Args)]
pub struct DirArgs {
    /// The snapshot directory (default: DATA_DIR/snapshots).
    #[arg(long)]
    pub snapshot_dir: Option<PathBuf>,
    /// The member's data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl DirArgs {
    fn dir(&self) -> SnapshotDir {
        SnapshotDir::new(self.snapshot_dir.clone().unwrap_or_else(|| {
            self.data_dir
                .clone()
                .unwrap_or_else(super::default_data_dir)
                .join("snapshots")
        }))
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Action::Save { file, client } => {
            let client = client.client()?;
            let data = client
                .request_bytes(Method::POST, RPC_BACKUP, None, None)
                .await
                .with_context(|| format!("taking a backup from {}", client.server()))?;
            // Checked before it is kept: a backup that does not verify is no backup.
            let (info, _) = backup::verify(&data).context("the member sent a bad backup")?;
            backup::write_atomically(&file, &data)
                .with_context(|| format!("writing {}", file.display()))?;
            println!(
                "saved {} objects at revision {} to {} ({} bytes)",
                info.objects,
                info.revision,
                file.display(),
                data.len()
            );
        }
        Action::Restore {
            file,
            data_dir,
            bump_revision,
        } => {
            let data =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let info = restore(&data, &data_dir, bump_revision)
                .with_context(|| format!("restoring {}", file.display()))?;
            println!(
                "restored {} objects at revision {} into {} (revisions continue from {})",
                info.objects,
                info.revision,
                data_dir.display(),
                info.revision + bump_revision
            );
            println!("  start it: weft up --data-dir {}", data_dir.display());
        }
        Action::Ls(dir) => {
            println!("{:<40} {:>12} CREATED", "NAME", "SIZE");
            for f in dir.dir().list()? {
                let created = jiff::Timestamp::from_second(f.created as i64)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                println!("{:<40} {:>12} {created}", f.name, f.size);
            }
        }
        Action::Delete { names, dir } => {
            let dir = dir.dir();
            for name in names {
                dir.delete(&name)
                    .with_context(|| format!("deleting {name}"))?;
                println!("deleted {name}");
            }
        }
        Action::Prune {
            snapshot_retention,
            dir,
        } => {
            for f in dir.dir().prune(snapshot_retention)? {
                println!("deleted {}", f.name);
            }
        }
    }
    Ok(())
}

/// Restores into `data_dir` whole or not at all: the backup is written
/// (after [`backup::restore`] has checked it whole) into a sibling
/// directory, and renamed into place.
fn restore(data: &[u8], data_dir: &Path, bump: u64) -> anyhow::Result<backup::BackupInfo> {
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .with_context(|| format!("reading {}", data_dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} is not empty: restore into a new data directory",
            data_dir.display()
        );
    }
    let name = data_dir
        .file_name()
        .context("--data-dir needs a final path component")?
        .to_string_lossy();
    let tmp = data_dir.with_file_name(format!(".{name}.restoring-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = backup::restore(data, &tmp.join("store"), bump)
        .map_err(anyhow::Error::from)
        .and_then(|info| {
            // rename(2) replaces an empty directory.
            std::fs::rename(&tmp, data_dir)
                .with_context(|| format!("moving the restored store to {}", data_dir.display()))?;
            Ok(info)
        });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
