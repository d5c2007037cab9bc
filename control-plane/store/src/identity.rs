//! Cluster identity. A cluster gets a random id when it is bootstrapped: a
//! new cluster, a restored backup or a reset. A member that joins adopts it
//! from the first Raft message it accepts. Every call between members
//! carries it, and a member refuses Raft messages that carry another
//! cluster's id (etcd checks its cluster ID the same way): a member of the
//! old cluster started again after a reset would otherwise win votes with
//! its higher term and overwrite the new cluster's log.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderMap, StatusCode};

use super::network::CLUSTER_ID_HEADER;
use super::{CF_RAFT, Store, StoreError};

/// In the Raft meta column family, so a reset (which drops it) forgets it.
const KEY_CLUSTER_ID: &[u8] = b"cluster_id";

impl Store {
    /// This member's cluster id, once it has one.
    pub fn cluster_id(&self) -> Option<&str> {
        self.proposer.net.cluster_id.get().map(String::as_str)
    }

    /// Loads the id this member keeps, if any.
    pub(crate) fn load_cluster_id(&self) -> Result<(), StoreError> {
        let db = self.sm.db();
        if let Some(id) = db.get_cf(self.sm.cf(CF_RAFT), KEY_CLUSTER_ID)? {
            let _ = self
                .proposer
                .net
                .cluster_id
                .set(String::from_utf8_lossy(&id).into_owned());
        }
        Ok(())
    }

    /// Gives the cluster this member bootstraps a new id.
    pub(crate) fn new_cluster_id(&self) -> Result<(), StoreError> {
        use std::hash::BuildHasher;
        // RandomState is seeded from the OS: 128 random bits without a new dependency.
        let half = || std::collections::hash_map::RandomState::new().hash_one(0u8);
        self.keep_cluster_id(&format!("{:016x}{:016x}", half(), half()))
    }

    fn keep_cluster_id(&self, id: &str) -> Result<(), StoreError> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.sm
            .db()
            .put_cf_opt(self.sm.cf(CF_RAFT), KEY_CLUSTER_ID, id, &opts)?;
        let _ = self.proposer.net.cluster_id.set(id.to_string());
        Ok(())
    }

    /// Whether a Raft message with these headers may be handled here: not
    /// if it comes from another cluster. A member without an id adopts the
    /// sender's.
    pub(crate) fn admit(&self, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
        let Some(theirs) = headers.get(CLUSTER_ID_HEADER).and_then(|v| v.to_str().ok()) else {
            return Ok(());
        };
        match self.cluster_id() {
            Some(mine) if mine == theirs => Ok(()),
            Some(mine) => {
                static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
                let now = super::backup::unix_now();
                // A stale member sends every heartbeat: one line per 10 s.
                if now >= LAST_WARNED.load(Ordering::Relaxed) + 10 {
                    LAST_WARNED.store(now, Ordering::Relaxed);
                    tracing::warn!(
                        theirs,
                        mine,
                        "refused Raft messages from a member of another cluster (one from before a reset or restore?); wipe its data and join it again"
                    );
                }
                Err((
                    StatusCode::CONFLICT,
                    format!("this member belongs to cluster {mine}, not {theirs}"),
                ))
            }
            None => self.keep_cluster_id(theirs).map_err(|e| {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("keeping the cluster id: {e}"),
                )
            }),
        }
    }
}
