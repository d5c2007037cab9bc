//! The replicated state: Kubernetes objects keyed by group/resource/namespace/name,
//! each stamped with the global revision that last changed it. Durable when
//! `apply` returns: every batch of entries is one synced WriteBatch.
// openraft's storage traits fix the error type (`StorageError`, ~224 bytes).
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::events::{Event, EventLog, EventType};
use super::metrics::RaftCounters;
use super::{CF_OBJECTS, CF_SM, Failed, NodeId, Op, OpResult, Precondition, Response, TypeConfig};

pub(crate) const KEY_APPLIED: &[u8] = b"applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";
pub(crate) const KEY_REVISION: &[u8] = b"revision";
pub(crate) const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// A consistent read view of the store.
pub(crate) type Snap<'a> = rocksdb::SnapshotWithThreadMode<'a, DB>;

/// A page of a list: (revision, (key, object) pairs, whether more remain).
pub type Page = (u64, Vec<(String, Value)>, bool);

/// Shared between openraft's state-machine worker (writes) and the API
/// server (reads, watches).
pub struct SmShared {
    db: Arc<DB>,
    revision: AtomicU64,
    pub(crate) events: EventLog,
    pub(crate) counters: RaftCounters,
}

#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<SmShared>,
}

/// An object as stored: the revision that last wrote it, then its JSON.
fn encode(revision: u64, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&revision.to_be_bytes());
    out.extend_from_slice(json);
    out
}

/// A stored big-endian u64 (the revision).
fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

pub(crate) fn decode(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (rev, json) = bytes.split_at_checked(8)?;
    Some((read_u64(rev)?, json))
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

pub(crate) fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

/// Stamps `metadata.resourceVersion`.
fn stamp(object: &mut Value, revision: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    revision: u64,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
}

/// The current Raft snapshot as kept under `KEY_SNAPSHOT`: its meta as a
/// JSON chunk, then its data as is (JSON would spell each byte as a number).
fn encode_snapshot(meta: &SnapshotMeta<NodeId, openraft::BasicNode>, data: &[u8]) -> Vec<u8> {
    let meta = serde_json::to_vec(meta).expect("snapshot meta serializes");
    let mut out = Vec::with_capacity(4 + meta.len() + data.len());
    push_chunk(&mut out, &meta);
    out.extend_from_slice(data);
    out
}

fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
    let mut chunks = Chunks {
        data: bytes,
        pos: 0,
    };
    let meta = chunks.next().ok_or_else(|| sm_err(corrupt()))?;
    let meta = serde_json::from_slice(meta).map_err(sm_err)?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(bytes[chunks.pos..].to_vec())),
    })
}

impl SmShared {
    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    #[cfg(test)]
    pub(crate) fn db_arc(&self) -> Arc<DB> {
        self.db.clone()
    }

    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    pub(crate) fn meta_key_exists(&self, key: &[u8]) -> Result<bool, rocksdb::Error> {
        Ok(self.db.get_pinned_cf(self.cf(CF_SM), key)?.is_some())
    }

    pub(crate) fn delete_meta_key(&self, key: &[u8]) -> Result<(), rocksdb::Error> {
        self.db.delete_cf_opt(self.cf(CF_SM), key, &synced())
    }

    pub(crate) fn meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError<NodeId>> {
        match self.db.get_cf(self.cf(CF_SM), key).map_err(sm_err)? {
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(sm_err),
            None => Ok(None),
        }
    }

    /// The store revision as of `snap`.
    pub(crate) fn revision_at(&self, snap: &Snap<'_>) -> Result<u64, rocksdb::Error> {
        Ok(snap
            .get_cf(self.cf(CF_SM), KEY_REVISION)?
            .and_then(|b| read_u64(&b))
            .unwrap_or(0))
    }

    /// Appends every object of `snap` to `out` as (key, stored value)
    /// chunks, the body of both Raft snapshots and backups; returns how many.
    pub(crate) fn push_objects(
        &self,
        snap: &Snap<'_>,
        out: &mut Vec<u8>,
    ) -> Result<u64, rocksdb::Error> {
        let mut n = 0;
        for item in snap.iterator_cf(self.cf(CF_OBJECTS), IteratorMode::Start) {
            let (k, v) = item?;
            push_chunk(out, &k);
            push_chunk(out, &v);
            n += 1;
        }
        Ok(n)
    }

    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    pub fn get(&self, key: &str) -> Result<Option<(u64, Value)>, rocksdb::Error> {
        let Some(bytes) = self.db.get_pinned_cf(self.cf(CF_OBJECTS), key)? else {
            return Ok(None);
        };
        Ok(decode(&bytes).and_then(|(rev, json)| Some((rev, serde_json::from_slice(json).ok()?))))
    }

    /// Objects under `prefix`, after `start_after`, at most `limit`, read from one
    /// consistent snapshot. Returns the snapshot's revision and whether more remain.
    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page, rocksdb::Error> {
        let snap = self.db.snapshot();
        let revision = self.revision_at(&snap)?;
        let start = match start_after {
            // The smallest key strictly greater than `start_after`.
            Some(s) => format!("{s}\0"),
            None => prefix.to_string(),
        };
        let mut out = Vec::new();
        let mut more = false;
        let iter = snap.iterator_cf(
            self.cf(CF_OBJECTS),
            IteratorMode::From(start.as_bytes(), rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if limit.is_some_and(|l| out.len() >= l) {
                more = true;
                break;
            }
            let Some((_, json)) = decode(&v) else {
                continue;
            };
            let Ok(obj) = serde_json::from_slice(json) else {
                continue;
            };
            out.push((String::from_utf8_lossy(&k).into_owned(), obj));
        }
        Ok((revision, out, more))
    }

    /// Applies a batch of committed entries as one synced WriteBatch and returns
    /// the per-entry responses plus the events to publish.
    pub(crate) fn apply_batch(
        &self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<(Vec<Response>, Vec<Event>), StorageError<NodeId>> {
        let mut batch = WriteBatch::default();
        // Later entries in a batch must see earlier ones: an overlay over the DB.
        let mut overlay: HashMap<String, Option<(u64, Arc<Value>)>> = HashMap::new();
        let mut revision = self.revision();
        let mut responses = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        let mut last_applied = None;
        let mut membership = None;

        for entry in entries {
            last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Response {
                    results: Vec::new(),
                }),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    responses.push(Response {
                        results: Vec::new(),
                    });
                }
                EntryPayload::Normal(req) => {
                    let mut results = Vec::with_capacity(req.ops.len());
                    for op in req.ops {
                        results.push(self.apply_op(
                            op,
                            &mut revision,
                            &mut overlay,
                            &mut batch,
                            &mut events,
                        )?);
                    }
                    responses.push(Response { results });
                }
            }
        }

        let sm = self.cf(CF_SM);
        batch.put_cf(sm, KEY_REVISION, revision.to_be_bytes());
        batch.put_cf(
            sm,
            KEY_APPLIED,
            serde_json::to_vec(&last_applied).map_err(sm_err)?,
        );
        if let Some(m) = &membership {
            batch.put_cf(sm, KEY_MEMBERSHIP, serde_json::to_vec(m).map_err(sm_err)?);
        }
        self.db.write_opt(batch, &synced()).map_err(sm_err)?;
        self.revision.store(revision, Ordering::Release);
        Ok((responses, events))
    }

    /// Applies one op on top of the batch so far (`overlay`), stamping the next revision.
    fn apply_op(
        &self,
        op: Op,
        revision: &mut u64,
        overlay: &mut HashMap<String, Option<(u64, Arc<Value>)>>,
        batch: &mut WriteBatch,
        events: &mut Vec<Event>,
    ) -> Result<OpResult, StorageError<NodeId>> {
        let (key, pre, is_put) = match &op {
            Op::Put {
                key, precondition, ..
            } => (key.clone(), *precondition, true),
            Op::Delete { key, precondition } => (key.clone(), *precondition, false),
        };
        let current = match overlay.get(&key) {
            Some(v) => v.clone(),
            None => self
                .get(&key)
                .map_err(sm_err)?
                .map(|(r, v)| (r, Arc::new(v))),
        };
        if let Err(f) = check(pre, current.as_ref().map(|c| c.0), is_put) {
            return Ok(OpResult::Failed(f));
        }
        *revision += 1;
        let rev = *revision;
        let prev = current.map(|c| c.1);
        match op {
            Op::Put { mut object, .. } => {
                stamp(&mut object, rev);
                let json = serde_json::to_vec(&object).map_err(sm_err)?;
                batch.put_cf(self.cf(CF_OBJECTS), &key, encode(rev, &json));
                let object = Arc::new(object);
                let kind = if prev.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                overlay.insert(key.clone(), Some((rev, object.clone())));
                events.push(Event::new(rev, kind, key, object.clone(), prev));
                Ok(OpResult::Ok {
                    revision: rev,
                    object: Some((*object).clone()),
                })
            }
            Op::Delete { .. } => {
                let prev = prev.expect("checked by precondition");
                let mut last = (*prev).clone();
                stamp(&mut last, rev);
                batch.delete_cf(self.cf(CF_OBJECTS), &key);
                overlay.insert(key.clone(), None);
                let object = Arc::new(last);
                events.push(Event::new(
                    rev,
                    EventType::Deleted,
                    key,
                    object.clone(),
                    Some(prev),
                ));
                Ok(OpResult::Ok {
                    revision: rev,
                    object: Some((*object).clone()),
                })
            }
        }
    }

    fn build_snapshot(&self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let snap = self.db.snapshot();
        let read_json = |key: &[u8]| -> Result<Option<serde_json::Value>, StorageError<NodeId>> {
            match snap.get_cf(self.cf(CF_SM), key).map_err(sm_err)? {
                Some(b) => serde_json::from_slice(&b).map(Some).map_err(sm_err),
                None => Ok(None),
            }
        };
        let last_applied: Option<LogId<NodeId>> = match read_json(KEY_APPLIED)? {
            Some(v) => serde_json::from_value(v).map_err(sm_err)?,
            None => None,
        };
        let membership: StoredMembership<NodeId, openraft::BasicNode> =
            match read_json(KEY_MEMBERSHIP)? {
                Some(v) => serde_json::from_value(v).map_err(sm_err)?,
                None => StoredMembership::default(),
            };
        let revision = self.revision_at(&snap).map_err(sm_err)?;

        // Format: u32 header length, JSON header, then (u32 key len, key, u32 value len, value)*.
        let header = serde_json::to_vec(&SnapshotHeader {
            revision,
            last_applied,
            membership: membership.clone(),
        })
        .map_err(sm_err)?;
        let mut data = Vec::new();
        push_chunk(&mut data, &header);
        self.push_objects(&snap, &mut data).map_err(sm_err)?;
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id: format!("{}-{revision}", last_applied.map(|l| l.index).unwrap_or(0)),
        };
        self.db
            .put_cf_opt(
                self.cf(CF_SM),
                KEY_SNAPSHOT,
                encode_snapshot(&meta, &data),
                &synced(),
            )
            .map_err(sm_err)?;
        self.counters.snapshots_built.inc();
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    fn install_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: Vec<u8>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut chunks = Chunks {
            data: &data,
            pos: 0,
        };
        let header: SnapshotHeader =
            serde_json::from_slice(chunks.next().ok_or_else(|| sm_err(corrupt()))?)
                .map_err(sm_err)?;
        let mut batch = WriteBatch::default();
        let objects = self.cf(CF_OBJECTS);
        // Objects keys are UTF-8 text, so a 0xFF byte sorts after every one of them.
        batch.delete_range_cf(objects, b"".as_slice(), [0xFFu8].as_slice());
        while let Some(k) = chunks.next() {
            let v = chunks.next().ok_or_else(|| sm_err(corrupt()))?;
            batch.put_cf(objects, k, v);
        }
        let sm = self.cf(CF_SM);
        batch.put_cf(sm, KEY_REVISION, header.revision.to_be_bytes());
        batch.put_cf(
            sm,
            KEY_APPLIED,
            serde_json::to_vec(&meta.last_log_id).map_err(sm_err)?,
        );
        batch.put_cf(
            sm,
            KEY_MEMBERSHIP,
            serde_json::to_vec(&meta.last_membership).map_err(sm_err)?,
        );
        batch.put_cf(sm, KEY_SNAPSHOT, encode_snapshot(meta, &data));
        self.db.write_opt(batch, &synced()).map_err(sm_err)?;
        self.revision.store(header.revision, Ordering::Release);
        self.events.reset(header.revision);
        self.counters.snapshots_installed.inc();
        tracing::info!(
            revision = header.revision,
            last_log = ?meta.last_log_id,
            "installed a snapshot from the leader"
        );
        Ok(())
    }
}

fn corrupt() -> std::io::Error {
    std::io::Error::other("corrupt snapshot")
}

pub(crate) fn push_chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Reads `push_chunk`'s length-prefixed chunks; ends at the end of the
/// data or at a chunk that runs past it (then `pos` is short of the end).
pub(crate) struct Chunks<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let len =
            u32::from_be_bytes(self.data.get(self.pos..self.pos + 4)?.try_into().ok()?) as usize;
        let chunk = self.data.get(self.pos + 4..self.pos + 4 + len)?;
        self.pos += 4 + len;
        Some(chunk)
    }
}

/// Evaluates a write's precondition against the current revision of its key.
fn check(pre: Precondition, current: Option<u64>, is_put: bool) -> Result<(), Failed> {
    match (pre, current) {
        (Precondition::Absent, Some(_)) => Err(Failed::AlreadyExists),
        (Precondition::Revision(_) | Precondition::Exists, None) => Err(Failed::NotFound),
        (Precondition::Revision(want), Some(have)) if want != have => {
            Err(Failed::Conflict { current: have })
        }
        (Precondition::None, None) if !is_put => Err(Failed::NotFound),
        _ => Ok(()),
    }
}

impl StateMachine {
    pub fn open(db: Arc<DB>, window: usize) -> Result<Self, rocksdb::Error> {
        let cf = db.cf_handle(CF_SM).expect("column family created at open");
        let revision = db
            .get_cf(cf, KEY_REVISION)?
            .and_then(|b| read_u64(&b))
            .unwrap_or(0);
        Ok(StateMachine {
            shared: Arc::new(SmShared {
                db,
                revision: AtomicU64::new(revision),
                events: EventLog::new(window, revision),
                counters: RaftCounters::default(),
            }),
        })
    }

    pub fn shared(&self) -> Arc<SmShared> {
        self.shared.clone()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.build_snapshot())
            .await
            .map_err(sm_err)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        StorageError<NodeId>,
    > {
        let applied = self
            .shared
            .meta::<Option<LogId<NodeId>>>(KEY_APPLIED)?
            .flatten();
        let membership = self.shared.meta(KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let shared = self.shared.clone();
        let (responses, events) = tokio::task::spawn_blocking(move || shared.apply_batch(entries))
            .await
            .map_err(sm_err)??;
        // Published only once durable, so a watcher never sees a write that could be lost.
        self.shared.events.publish(events);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let shared = self.shared.clone();
        let meta = meta.clone();
        let data = snapshot.into_inner();
        tokio::task::spawn_blocking(move || shared.install_snapshot(&meta, data))
            .await
            .map_err(sm_err)?
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let shared = &self.shared;
        let Some(bytes) = shared
            .db
            .get_pinned_cf(shared.cf(CF_SM), KEY_SNAPSHOT)
            .map_err(sm_err)?
        else {
            return Ok(None);
        };
        decode_snapshot(&bytes).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions() {
        assert_eq!(
            check(Precondition::Absent, Some(3), true),
            Err(Failed::AlreadyExists)
        );
        assert_eq!(check(Precondition::Absent, None, true), Ok(()));
        assert_eq!(
            check(Precondition::Revision(3), Some(4), true),
            Err(Failed::Conflict { current: 4 })
        );
        assert_eq!(check(Precondition::Revision(4), Some(4), true), Ok(()));
        assert_eq!(
            check(Precondition::Exists, None, true),
            Err(Failed::NotFound)
        );
        assert_eq!(
            check(Precondition::None, None, false),
            Err(Failed::NotFound)
        );
        assert_eq!(check(Precondition::None, None, true), Ok(()));
    }

    #[test]
    fn stored_value_round_trips() {
        let b = encode(42, b"{}");
        assert_eq!(decode(&b), Some((42, b"{}".as_slice())));
        assert_eq!(decode(b"short"), None);
    }
}
