//! Backups and the two ways to start a one-member cluster from saved state.
//!
//! A backup (`weft snapshot save`) is every object and the revision, read
//! from one rocksdb snapshot after a linearized read, in one file with a
//! SHA-256 trailer:
//!
//! ```text
//! "WEFTSNAP" | u32 version | u32 len, header JSON | (u32 len, key, u32 len, stored value)* | sha256
//! ```
//!
//! A restore writes a new store from such a file; a reset (`--cluster-reset`)
//! turns a surviving member's own store into one. Either way the store then
//! holds objects and a revision but no Raft state, so the member bootstraps
//! a new one-member Raft cluster over them ([`crate::Store::open`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{LogId, RaftLogReader};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::state_machine::{
    Chunks, KEY_APPLIED, KEY_MEMBERSHIP, KEY_REVISION, KEY_SNAPSHOT, SmShared, StateMachine,
    push_chunk, synced,
};
use super::{CF_LOG, CF_OBJECTS, CF_RAFT, CF_SM, LogStore, NodeId, StoreError};

const MAGIC: &[u8; 8] = b"WEFTSNAP";
/// Set by a restore or a reset, cleared once the member has seeded a Raft
/// snapshot of the objects no log entry made ([`crate::Store::open`]); a
/// crash in between seeds again on the next start.
pub(crate) const KEY_NEEDS_SEED: &[u8] = b"needs_seed";
const VERSION: u32 = 1;
const CHECKSUM_LEN: usize = 32;

/// What a backup holds, from its header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The revision of the last write it contains.
    pub revision: u64,
    pub objects: u64,
    /// When it was taken, in seconds since the Unix epoch.
    pub created: u64,
    /// The member it was read from.
    pub member: NodeId,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "not a weft snapshot (it does not start with {:?})",
        String::from_utf8_lossy(MAGIC)
    )]
    NotASnapshot,
    #[error("snapshot format version {0} is not supported (this weft reads version {VERSION})")]
    Version(u32),
    #[error(
        "the snapshot is corrupt or truncated: its content hashes to sha256 {found}, but it records {recorded}"
    )]
    Checksum { found: String, recorded: String },
    #[error("the snapshot is malformed: {0}")]
    Malformed(String),
    #[error("{} already holds a store; restore into a new data directory", .0.display())]
    Exists(PathBuf),
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A backup file's bytes and what its header says.
pub struct Backup {
    pub info: BackupInfo,
    pub data: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl SmShared {
    /// Every object and the revision, from one consistent rocksdb snapshot.
    pub(crate) fn backup(&self, member: NodeId) -> Result<Backup, BackupError> {
        let snap = self.db().snapshot();
        let revision = self.revision_at(&snap)?;
        let mut body = Vec::new();
        let objects = self.push_objects(&snap, &mut body)?;
        let info = BackupInfo {
            revision,
            objects,
            created: unix_now(),
            member,
        };
        let header = serde_json::to_vec(&info).expect("plain struct serializes");
        let mut out = Vec::with_capacity(body.len() + header.len() + 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        push_chunk(&mut out, &header);
        out.extend_from_slice(&body);
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        Ok(Backup { info, data: out })
    }
}

/// A backup's (key, stored value) records, borrowed from its bytes.
pub type Records<'a> = Vec<(&'a [u8], &'a [u8])>;

/// Checks a backup whole (magic, version, checksum, every record) and
/// returns its header and its (key, stored value) records.
pub fn verify(data: &[u8]) -> Result<(BackupInfo, Records<'_>), BackupError> {
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        return Err(BackupError::NotASnapshot);
    }
    let (content, recorded) = data
        .split_at_checked(data.len().saturating_sub(CHECKSUM_LEN))
        .filter(|(c, _)| c.len() >= MAGIC.len() + 4)
        .ok_or_else(|| BackupError::Malformed("too short".into()))?;
    let found = Sha256::digest(content);
    if found.as_slice() != recorded {
        return Err(BackupError::Checksum {
            found: hex(&found),
            recorded: hex(recorded),
        });
    }
    let version = u32::from_be_bytes(content[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(BackupError::Version(version));
    }
    let body = &content[12..];
    let mut chunks = Chunks { data: body, pos: 0 };
    let header = chunks
        .next()
        .ok_or_else(|| BackupError::Malformed("no header".into()))?;
    let info: BackupInfo = serde_json::from_slice(header)
        .map_err(|e| BackupError::Malformed(format!("header: {e}")))?;
    let mut records = Vec::new();
    while let Some(key) = chunks.next() {
        let value = chunks
            .next()
            .ok_or_else(|| BackupError::Malformed("a key without a value".into()))?;
        if super::state_machine::decode(value).is_none() {
            return Err(BackupError::Malformed(format!(
                "the value of {} is not a stored object",
                String::from_utf8_lossy(key)
            )));
        }
        records.push((key, value));
    }
    if chunks.pos != body.len() {
        return Err(BackupError::Malformed("a record runs past the end".into()));
    }
    if records.len() as u64 != info.objects {
        return Err(BackupError::Malformed(format!(
            "{} objects, but the header says {}",
            records.len(),
            info.objects
        )));
    }
    Ok((info, records))
}

/// Writes a new store under `dir` (which must not hold one) from a backup,
/// its revision moved `bump` past the backup's: every resourceVersion a
/// client of the old cluster saw is then older than the new cluster's
/// first, so its watches get 410 Gone and relist rather than seeing
/// revisions go backwards (etcd's `--bump-revision --mark-compacted`).
/// Checks the whole file before it writes anything.
pub fn restore(data: &[u8], dir: &Path, bump: u64) -> Result<BackupInfo, BackupError> {
    let (info, records) = verify(data)?;
    let db_dir = dir.join("db");
    if db_dir.exists() {
        return Err(BackupError::Exists(db_dir));
    }
    let db = super::open_db(&db_dir)?;
    let objects = db.cf_handle(CF_OBJECTS).expect("column family created");
    let sm = db.cf_handle(CF_SM).expect("column family created");
    // Batches of a few MiB: one batch of a whole large backup would double its memory.
    let mut batch = WriteBatch::default();
    for (k, v) in records {
        batch.put_cf(objects, k, v);
        if batch.size_in_bytes() > 4 << 20 {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    batch.put_cf(sm, KEY_REVISION, (info.revision + bump).to_be_bytes());
    batch.put_cf(sm, KEY_NEEDS_SEED, b"");
    db.write_opt(batch, &synced())?;
    db.flush_wal(true)?;
    Ok(info)
}

/// What a reset did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetInfo {
    /// Log entries applied that the state machine had not applied yet.
    pub applied: usize,
    pub revision: u64,
}

/// Turns the store under `dir` into one that a single member bootstraps
/// from (etcd's `--force-new-cluster`): every entry in this member's log
/// is applied, then the Raft log, vote and membership are dropped.
///
/// Entries past the commit index this member knew are applied too: an
/// acknowledged write may have reached this member without word of its
/// commit, and keeping it is the reset's purpose. Such an entry may also be
/// one that never committed; its client got no answer, or an error that
/// said the outcome was unknown, so it may find the write done.
pub async fn reset(dir: &Path) -> Result<ResetInfo, StoreError> {
    let db = Arc::new(super::open_db(&dir.join("db"))?);
    let sm = StateMachine::open(db.clone(), 1)?;
    let shared = sm.shared();
    let applied: Option<LogId<NodeId>> =
        shared.meta::<Option<LogId<NodeId>>>(KEY_APPLIED)?.flatten();
    let start = applied.map_or(0, |l| l.index + 1);
    let entries = LogStore::new(db.clone())
        .try_get_log_entries(start..)
        .await?;
    let count = entries.len();
    let db2 = db.clone();
    let revision = tokio::task::spawn_blocking(move || -> Result<u64, StoreError> {
        if !entries.is_empty() {
            shared.apply_batch(entries)?;
        }
        let mut batch = WriteBatch::default();
        let log = db2.cf_handle(CF_LOG).expect("column family created");
        batch.delete_range_cf(log, 0u64.to_be_bytes(), u64::MAX.to_be_bytes());
        let raft = db2.cf_handle(CF_RAFT).expect("column family created");
        batch.delete_range_cf(raft, b"".as_slice(), [0xFFu8].as_slice());
        let sm = db2.cf_handle(CF_SM).expect("column family created");
        for key in [KEY_APPLIED, KEY_MEMBERSHIP, KEY_SNAPSHOT] {
            batch.delete_cf(sm, key);
        }
        batch.put_cf(sm, KEY_NEEDS_SEED, b"");
        db2.write_opt(batch, &synced())?;
        Ok(shared.revision())
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(ResetInfo {
        applied: count,
        revision,
    })
}

/// A directory of backup files named `weft-snapshot-<member>-<unix time>`:
/// where a member keeps its scheduled snapshots.
pub struct SnapshotDir {
    pub path: PathBuf,
}

/// One backup file in a [`SnapshotDir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// Seconds since the Unix epoch, from the name.
    pub created: u64,
}

const PREFIX: &str = "weft-snapshot-";

impl SnapshotDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SnapshotDir { path: path.into() }
    }

    /// Writes `data` as a new file (whole or not at all: a temporary file renamed).
    pub fn save(&self, data: &[u8], member: NodeId, created: u64) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.path)?;
        let path = self.path.join(format!("{PREFIX}{member}-{created}"));
        write_atomically(&path, data)?;
        Ok(path)
    }

    /// Every backup file here, oldest first.
    pub fn list(&self) -> std::io::Result<Vec<SnapshotFile>> {
        let entries = match std::fs::read_dir(&self.path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(created) = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.rsplit_once('-'))
                .and_then(|(_, t)| t.parse().ok())
            else {
                continue;
            };
            out.push(SnapshotFile {
                name,
                path: entry.path(),
                size: entry.metadata()?.len(),
                created,
            });
        }
        out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        Ok(out)
    }

    /// Deletes the named backup file.
    pub fn delete(&self, name: &str) -> std::io::Result<()> {
        if !name.starts_with(PREFIX) || name.contains('/') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{name:?} is not a snapshot name (see `weft snapshot ls`)"),
            ));
        }
        std::fs::remove_file(self.path.join(name))
    }

    /// Deletes all but the newest `keep` files; returns the deleted ones.
    pub fn prune(&self, keep: usize) -> std::io::Result<Vec<SnapshotFile>> {
        let mut files = self.list()?;
        let excess = files.len().saturating_sub(keep);
        let old: Vec<_> = files.drain(..excess).collect();
        for f in &old {
            std::fs::remove_file(&f.path)?;
        }
        Ok(old)
    }
}

/// Writes `path` whole or not at all: a synced temporary file, renamed.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TypeConfig;
    use openraft::Entry;
    use rocksdb::IteratorMode;
    use serde_json::json;

    /// A store with `n` objects written through the state machine's own encoding.
    fn store_with(dir: &Path, n: u64) -> StateMachine {
        let db = Arc::new(super::super::open_db(&dir.join("db")).unwrap());
        let objects = db.cf_handle(CF_OBJECTS).unwrap();
        let sm = db.cf_handle(CF_SM).unwrap();
        for i in 1..=n {
            let json = serde_json::to_vec(&json!({"metadata": {"name": format!("o{i}")}})).unwrap();
            let mut v = i.to_be_bytes().to_vec();
            v.extend_from_slice(&json);
            db.put_cf(objects, format!("\0configmaps\0default\0o{i}"), v)
                .unwrap();
        }
        db.put_cf(sm, KEY_REVISION, n.to_be_bytes()).unwrap();
        StateMachine::open(db, 10).unwrap()
    }

    #[test]
    fn a_backup_restores_with_its_revision_moved_on() {
        let src = tempfile::tempdir().unwrap();
        let data = store_with(src.path(), 5).shared().backup(7).unwrap().data;
        let (info, records) = verify(&data).unwrap();
        assert_eq!((info.revision, info.objects, info.member), (5, 5, 7));
        assert_eq!(records.len(), 5);

        let dst = tempfile::tempdir().unwrap();
        restore(&data, &dst.path().join("store"), 1000).unwrap();
        let db = Arc::new(super::super::open_db(&dst.path().join("store/db")).unwrap());
        let restored = StateMachine::open(db, 10).unwrap().shared();
        assert_eq!(restored.revision(), 1005);
        assert!(restored.meta_key_exists(KEY_NEEDS_SEED).unwrap());
        let (rev, obj) = restored.get("\0configmaps\0default\0o3").unwrap().unwrap();
        assert_eq!(rev, 3);
        assert_eq!(obj["metadata"]["name"], "o3");
        // Restoring over an existing store is refused.
        let again = restore(&data, &dst.path().join("store"), 0).unwrap_err();
        assert!(matches!(again, BackupError::Exists(_)), "{again}");
    }

    #[test]
    fn corrupt_and_truncated_backups_are_refused_before_anything_is_written() {
        let src = tempfile::tempdir().unwrap();
        let data = store_with(src.path(), 3).shared().backup(1).unwrap().data;
        let dst = tempfile::tempdir().unwrap();
        let target = dst.path().join("store");

        let mut flipped = data.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x01;
        let e = restore(&flipped, &target, 0).unwrap_err();
        assert!(matches!(e, BackupError::Checksum { .. }), "{e}");

        for cut in [data.len() - 1, data.len() / 2, 20, 9, 3] {
            let e = restore(&data[..cut], &target, 0).unwrap_err();
            assert!(
                matches!(
                    e,
                    BackupError::Checksum { .. }
                        | BackupError::Malformed(_)
                        | BackupError::NotASnapshot
                ),
                "cut at {cut}: {e}"
            );
        }
        assert!(matches!(
            restore(b"{\"kind\":\"List\"}", &target, 0),
            Err(BackupError::NotASnapshot)
        ));
        assert!(!target.exists(), "a refused restore wrote nothing");
    }

    #[tokio::test]
    async fn a_reset_applies_the_whole_log_and_drops_raft_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let sm = store_with(dir.path(), 2);
            let db = sm.shared().db_arc();
            let log = db.cf_handle(CF_LOG).unwrap();
            let put = |name: &str| crate::Op::Put {
                key: format!("\0configmaps\0default\0{name}"),
                object: json!({"metadata": {"name": name}}),
                precondition: crate::Precondition::None,
            };
            // Index 1 was applied; 2 and 3 were appended but never applied here.
            for (index, name) in [(1, "applied"), (2, "late1"), (3, "late2")] {
                let entry: Entry<TypeConfig> = Entry {
                    log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
                    payload: openraft::EntryPayload::Normal(crate::Request {
                        ops: vec![put(name)],
                    }),
                };
                db.put_cf(
                    log,
                    index.to_be_bytes(),
                    serde_json::to_vec(&entry).unwrap(),
                )
                .unwrap();
            }
            let applied = Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 1u64));
            let sm_cf = db.cf_handle(CF_SM).unwrap();
            db.put_cf(sm_cf, KEY_APPLIED, serde_json::to_vec(&applied).unwrap())
                .unwrap();
            db.put_cf(db.cf_handle(CF_RAFT).unwrap(), b"vote", b"{}")
                .unwrap();
        }

        let r = reset(dir.path()).await.unwrap();
        assert_eq!(
            r,
            ResetInfo {
                applied: 2,
                revision: 4
            }
        );
        let db = Arc::new(super::super::open_db(&dir.path().join("db")).unwrap());
        assert!(
            db.get_cf(db.cf_handle(CF_RAFT).unwrap(), b"vote")
                .unwrap()
                .is_none()
        );
        let log = db.cf_handle(CF_LOG).unwrap();
        assert_eq!(db.iterator_cf(log, IteratorMode::Start).count(), 0);
        let shared = StateMachine::open(db.clone(), 10).unwrap().shared();
        assert!(
            shared
                .meta::<serde_json::Value>(KEY_APPLIED)
                .unwrap()
                .is_none()
        );
        assert!(shared.meta_key_exists(KEY_NEEDS_SEED).unwrap());
        let (rev, _) = shared.get("\0configmaps\0default\0late2").unwrap().unwrap();
        assert_eq!(rev, 4);
        assert!(
            shared
                .get("\0configmaps\0default\0applied")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn snapshot_dir_lists_and_prunes_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::new(dir.path().join("snapshots"));
        assert!(snaps.list().unwrap().is_empty());
        for t in [300, 100, 200] {
            snaps.save(b"x", 1, t).unwrap();
        }
        std::fs::write(dir.path().join("snapshots/other-file"), "").unwrap();
        let names: Vec<u64> = snaps.list().unwrap().iter().map(|f| f.created).collect();
        assert_eq!(names, [100, 200, 300]);
        let gone = snaps.prune(2).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].created, 100);
        snaps.delete("weft-snapshot-1-200").unwrap();
        assert!(snaps.delete("../escape").is_err());
        let left: Vec<u64> = snaps.list().unwrap().iter().map(|f| f.created).collect();
        assert_eq!(left, [300]);
    }
}
