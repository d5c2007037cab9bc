//! The controllers' and scheduler's view of the cluster: an in-memory mirror
//! of the store (what client-go's shared informers are to
//! kube-controller-manager). Whoever owns the store feeds it (`member`
//! does, from the store's watch); reconcile functions read a
//! [`Snapshot`]; tests build one by hand.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch as signal};

use super::keys;

/// Objects by store key (`group\0resource\0namespace\0name`), sorted, so one
/// resource in one namespace is a contiguous range.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub objects: BTreeMap<String, Arc<Value>>,
}

impl Snapshot {
    pub fn insert(&mut self, group: &str, resource: &str, obj: Value) {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        self.objects
            .insert(keys::key(group, resource, ns, name), Arc::new(obj));
    }

    pub fn get(&self, group: &str, resource: &str, ns: &str, name: &str) -> Option<&Arc<Value>> {
        self.objects.get(&keys::key(group, resource, ns, name))
    }

    /// Every object of a resource, in one namespace or (None) all of them.
    pub fn list<'a>(
        &'a self,
        group: &str,
        resource: &str,
        ns: Option<&str>,
    ) -> impl Iterator<Item = &'a Arc<Value>> + 'a {
        let prefix = keys::prefix(group, resource, ns);
        self.objects
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v)
    }
}

/// One change, as the mirror saw it.
#[derive(Debug, Clone)]
pub struct Change {
    pub key: String,
    pub old: Option<Arc<Value>>,
    pub new: Option<Arc<Value>>,
}

impl Change {
    /// `(group, resource)` of the changed object.
    pub fn resource(&self) -> (&str, &str) {
        let mut parts = self.key.splitn(3, '\0');
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""))
    }

    /// The object after the change, or its last state if it was deleted.
    pub fn object(&self) -> &Arc<Value> {
        self.new
            .as_ref()
            .or(self.old.as_ref())
            .expect("a change has an object")
    }
}

/// Resources the mirror leaves out: Events are write-mostly and never
/// reconciled.
fn mirrored(key: &str) -> bool {
    !key.starts_with("\0events\0")
}

struct Inner {
    snapshot: RwLock<Snapshot>,
    /// The store revision the mirror has caught up with.
    revision: signal::Sender<u64>,
    synced: signal::Sender<bool>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Arc<Change>>>>,
}

/// A live mirror of the store. Cloning shares it.
#[derive(Clone)]
pub struct Cache(Arc<Inner>);

impl Default for Cache {
    fn default() -> Self {
        Cache(Arc::new(Inner {
            snapshot: RwLock::new(Snapshot::default()),
            revision: signal::channel(0).0,
            synced: signal::channel(false).0,
            subscribers: Mutex::new(Vec::new()),
        }))
    }
}

impl Cache {
    /// Reads the current state. Do not hold it across an await.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.0.snapshot.read().expect("cache poisoned")
    }

    /// Every change from now on, with an unbounded (self-draining) queue so
    /// a slow consumer can never block the mirror.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Arc<Change>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.0.subscribers.lock().expect("cache poisoned").push(tx);
        rx
    }

    /// Waits until the first full list has been loaded.
    pub async fn synced(&self) {
        let mut rx = self.0.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Waits (bounded) until the mirror has seen revision `rev`: a controller
    /// that just wrote must not reconcile against state older than its write.
    pub async fn wait_for(&self, rev: u64) -> bool {
        let mut rx = self.0.revision.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|r| *r >= rev))
            .await
            .is_ok()
    }

    pub fn revision(&self) -> u64 {
        *self.0.revision.borrow()
    }

    /// One change at revision `rev`: the object (`None`: deleted). Changes
    /// at or below the revision the mirror holds for the key are skipped,
    /// so a watch that raced a list can be replayed over it.
    pub fn apply(&self, key: &str, rev: u64, new: Option<Arc<Value>>) {
        if !mirrored(key) {
            return;
        }
        let old = {
            let mut snap = self.0.snapshot.write().expect("cache poisoned");
            let current = snap.objects.get(key).map(|o| object_rev(o));
            // Events replayed from before the list are already in it.
            if current.is_some_and(|c| c >= rev) {
                return;
            }
            match &new {
                Some(o) => snap.objects.insert(key.to_string(), o.clone()),
                None => snap.objects.remove(key),
            }
        };
        if old.is_none() && new.is_none() {
            return;
        }
        let change = Arc::new(Change {
            key: key.to_string(),
            old,
            new,
        });
        self.0
            .subscribers
            .lock()
            .expect("cache poisoned")
            .retain(|s| s.send(change.clone()).is_ok());
    }

    /// Replaces the whole state with a fresh list, reporting the differences.
    pub fn relist(&self, items: Vec<(String, Value)>) {
        let fresh: BTreeMap<String, Arc<Value>> = items
            .into_iter()
            .filter(|(k, _)| mirrored(k))
            .map(|(k, v)| (k, Arc::new(v)))
            .collect();
        let stale: Vec<String> = {
            let snap = self.read();
            snap.objects
                .keys()
                .filter(|k| !fresh.contains_key(*k))
                .cloned()
                .collect()
        };
        for k in stale {
            self.apply(&k, u64::MAX, None);
        }
        for (k, v) in fresh {
            let rev = object_rev(&v);
            let unchanged = self
                .read()
                .objects
                .get(&k)
                .is_some_and(|o| object_rev(o) == rev);
            if !unchanged {
                // Force the replacement even if the revision went backwards (a snapshot install).
                self.0
                    .snapshot
                    .write()
                    .expect("cache poisoned")
                    .objects
                    .remove(&k);
                self.apply(&k, rev, Some(v));
            }
        }
    }

    /// The mirror has caught up with revision `rev`.
    pub fn caught_up(&self, rev: u64) {
        self.0.revision.send_replace(rev);
        self.0
            .synced
            .send_if_modified(|s| !std::mem::replace(s, true));
    }
}

/// `metadata.resourceVersion` as a number (0 if absent).
pub fn object_rev(o: &Value) -> u64 {
    o.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
