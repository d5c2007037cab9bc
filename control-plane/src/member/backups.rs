//! Scheduled backups (k3s's etcd snapshots): every interval, this member
//! saves a backup of its store into its snapshot directory and keeps only
//! the newest few.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use weft_store::Store;
use weft_store::backup::SnapshotDir;

#[derive(Debug, Clone)]
pub struct BackupSchedule {
    /// Zero turns scheduled backups off.
    pub interval: Duration,
    /// How many to keep.
    pub retention: usize,
    pub dir: PathBuf,
}

/// Why a scheduled backup failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduledBackupError {
    #[error(transparent)]
    Store(#[from] weft_store::StoreError),
    #[error("writing the snapshot: {0}")]
    Io(#[from] std::io::Error),
}

/// Saves one backup and prunes; returns the new file.
pub async fn save_and_prune(
    store: &Store,
    schedule: &BackupSchedule,
) -> Result<PathBuf, ScheduledBackupError> {
    let backup = store.backup().await?;
    let dir = SnapshotDir::new(&schedule.dir);
    let path = dir.save(&backup.data, backup.info.member, backup.info.created)?;
    for old in dir.prune(schedule.retention.max(1))? {
        tracing::info!(file = %old.path.display(), "pruned an old snapshot");
    }
    Ok(path)
}

/// Runs until shutdown; the first backup one interval after start.
pub async fn run(store: Store, schedule: BackupSchedule, mut shutdown: watch::Receiver<bool>) {
    if schedule.interval.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + schedule.interval,
        schedule.interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match save_and_prune(&store, &schedule).await {
            Ok(path) => tracing::info!(file = %path.display(), "saved a scheduled snapshot"),
            Err(e) => tracing::warn!("scheduled snapshot failed: {e}"),
        }
    }
}
