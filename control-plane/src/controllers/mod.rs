//! The controller manager. Each controller is a pure `reconcile(key,
//! snapshot, now) -> actions` over the cache; the manager feeds it keys from
//! cache changes, carries out its actions through the local client, and
//! waits until the cache has seen its writes before reconciling that key
//! again (so a stale cache never causes double creations).

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod node_lifecycle;
pub mod objects;
pub mod replicaset;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch as signal};
use tracing::Instrument;
use weft_api::{Resource, resources};

use crate::cache::{Cache, Change, Snapshot, object_rev as written_rev};
use crate::local::LocalClient;

/// The served resource with this plural (plurals are unique in Weft's table).
pub fn res(plural: &str) -> &'static Resource {
    resources::RESOURCES
        .iter()
        .find(|r| r.plural == plural)
        .expect("served resource")
}

/// One write a reconcile asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create {
        res: &'static Resource,
        ns: String,
        object: Value,
    },
    /// A JSON merge patch, of the object or its status.
    Patch {
        res: &'static Resource,
        ns: String,
        name: String,
        status: bool,
        patch: Value,
    },
    Delete {
        res: &'static Resource,
        ns: String,
        name: String,
        /// DeleteOptions (propagation, preconditions, grace period).
        options: Value,
    },
    DeleteCollection {
        res: &'static Resource,
        ns: String,
    },
    /// `PUT {ns}/finalize` with the namespace's finalizers emptied.
    FinalizeNamespace {
        object: Value,
    },
    /// A core/v1 Event about `regarding`.
    Event {
        regarding: Arc<Value>,
        warning: bool,
        reason: String,
        message: String,
    },
}

impl Action {
    /// A merge patch of an object's status: `{"status": status}`.
    pub fn patch_status(
        res: &'static Resource,
        ns: impl Into<String>,
        name: impl Into<String>,
        status: Value,
    ) -> Action {
        Action::Patch {
            res,
            ns: ns.into(),
            name: name.into(),
            status: true,
            patch: serde_json::json!({ "status": status }),
        }
    }
}

/// What a reconcile decided.
#[derive(Debug, Default)]
pub struct Outcome {
    pub actions: Vec<Action>,
    /// Look again after this long even if nothing changes (deadlines, schedules).
    pub requeue_after: Option<Duration>,
}

impl Outcome {
    pub fn push(&mut self, a: Action) {
        self.actions.push(a);
    }

    pub fn requeue(&mut self, after: Duration) {
        self.requeue_after = Some(self.requeue_after.map_or(after, |d| d.min(after)));
    }
}

/// What every controller provides. Keys are `namespace/name` of its primary resource.
pub trait Controller: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The resource whose objects are the keys (all of them are queued at start).
    fn primary(&self) -> (&'static str, &'static str);
    /// Keys to look at first: by default every object of the primary resource.
    fn initial_keys(&self, snap: &Snapshot) -> Vec<String> {
        let (g, r) = self.primary();
        snap.list(g, r, None).map(|o| objects::key_of(o)).collect()
    }
    /// Keys to look at after a change.
    fn keys_for(&self, change: &Change, snap: &Snapshot) -> Vec<String>;
    fn reconcile(&self, key: &str, snap: &Snapshot, now: Timestamp) -> Outcome;
}

/// Settings that tests shorten.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How long a node may go without a heartbeat before it is Unknown (kube: 40 s).
    pub node_monitor_grace_period: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_monitor_grace_period: Duration::from_secs(40),
        }
    }
}

/// Every controller Weft runs.
pub fn all(cfg: &ControllerConfig) -> Vec<Arc<dyn Controller>> {
    vec![
        Arc::new(replicaset::ReplicaSetController),
        Arc::new(deployment::DeploymentController),
        Arc::new(daemonset::DaemonSetController),
        Arc::new(job::JobController),
        Arc::new(cronjob::CronJobController),
        Arc::new(node_lifecycle::NodeLifecycleController {
            grace: cfg.node_monitor_grace_period,
        }),
        Arc::new(endpoints::EndpointsController),
        Arc::new(gc::GarbageCollector),
        Arc::new(namespace::NamespaceController),
    ]
}

/// Runs every controller until `stop`, once the cache has synced.
pub async fn run(
    cache: Cache,
    client: LocalClient,
    controllers: Vec<Arc<dyn Controller>>,
    stop: signal::Receiver<bool>,
) {
    // Subscribe before waiting for the sync, so no change falls in between.
    let feeds: Vec<_> = controllers.iter().map(|_| cache.subscribe()).collect();
    cache.synced().await;
    let mut tasks = Vec::new();
    for (c, feed) in controllers.into_iter().zip(feeds) {
        let span = tracing::info_span!("controller", name = c.name());
        let worker = Worker {
            controller: c,
            cache: cache.clone(),
            client: client.clone(),
        };
        tasks.push(tokio::spawn(
            worker.run(feed, stop.clone()).instrument(span),
        ));
    }
    for t in tasks {
        let _ = t.await;
    }
}

struct Worker {
    controller: Arc<dyn Controller>,
    cache: Cache,
    client: LocalClient,
}

/// A key waiting to be reconciled, deduplicated.
#[derive(Default)]
struct Queue {
    order: VecDeque<String>,
    queued: HashSet<String>,
    failures: HashMap<String, u32>,
}

impl Queue {
    fn add(&mut self, key: String) {
        if self.queued.insert(key.clone()) {
            self.order.push_back(key);
        }
    }

    fn pop(&mut self) -> Option<String> {
        let k = self.order.pop_front()?;
        self.queued.remove(&k);
        Some(k)
    }
}

impl Worker {
    async fn run(
        self,
        mut feed: mpsc::UnboundedReceiver<Arc<Change>>,
        mut stop: signal::Receiver<bool>,
    ) {
        let mut queue = Queue::default();
        let initial = self.controller.initial_keys(&self.cache.read());
        for k in initial {
            queue.add(k);
        }
        // Delayed requeues come back through here; unbounded, so a worker never blocks on itself.
        let (later_tx, mut later_rx) = mpsc::unbounded_channel::<String>();
        loop {
            // Take everything already waiting before working, so bursts coalesce.
            while let Ok(change) = feed.try_recv() {
                self.enqueue(&change, &mut queue);
            }
            while let Ok(k) = later_rx.try_recv() {
                queue.add(k);
            }
            if let Some(key) = queue.pop() {
                self.work(key, &mut queue, &later_tx).await;
                if *stop.borrow() {
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = stop.changed() => return,
                Some(change) = feed.recv() => self.enqueue(&change, &mut queue),
                Some(k) = later_rx.recv() => queue.add(k),
            }
        }
    }

    fn enqueue(&self, change: &Change, queue: &mut Queue) {
        let keys = {
            let snap = self.cache.read();
            self.controller.keys_for(change, &snap)
        };
        for k in keys {
            queue.add(k);
        }
    }

    async fn work(&self, key: String, queue: &mut Queue, later: &mpsc::UnboundedSender<String>) {
        let outcome = {
            let snap = self.cache.read();
            self.controller.reconcile(&key, &snap, Timestamp::now())
        };
        let mut newest = 0;
        let mut failed = false;
        for action in outcome.actions {
            match execute(&self.client, action).await {
                Ok(rev) => newest = newest.max(rev),
                // Gone already, or someone else changed it: look again with fresh state.
                Err(s) if s.code == 404 => {}
                Err(s) => {
                    tracing::debug!(key, "action failed: {}", s.message);
                    failed = true;
                }
            }
        }
        if newest > 0 {
            self.cache.wait_for(newest).await;
        }
        let delay = if failed {
            let n = queue.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            // 5 ms doubling to 30 s, as client-go's default rate limiter.
            Some(Duration::from_millis(5 << (*n).min(13)).min(Duration::from_secs(30)))
        } else {
            queue.failures.remove(&key);
            outcome.requeue_after
        };
        if let Some(d) = delay {
            let tx = later.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                let _ = tx.send(key);
            });
        }
    }
}

/// Carries out one action; the resourceVersion it produced (0 if none).
pub async fn execute(client: &LocalClient, action: Action) -> Result<u64, weft_api::Status> {
    let ns_opt = |ns: &String| (!ns.is_empty()).then(|| ns.clone());
    match action {
        Action::Create { res, ns, object } => client
            .create(res, ns_opt(&ns).as_deref(), &object)
            .await
            .map(|v| written_rev(&v)),
        Action::Patch {
            res,
            ns,
            name,
            status,
            patch,
        } => client
            .patch(
                res,
                ns_opt(&ns).as_deref(),
                &name,
                status.then_some("status"),
                &patch,
            )
            .await
            .map(|v| written_rev(&v)),
        Action::Delete {
            res,
            ns,
            name,
            options,
        } => client
            .delete(res, ns_opt(&ns).as_deref(), &name, &options)
            .await
            .map(|v| written_rev(&v)),
        Action::DeleteCollection { res, ns } => client
            .delete_collection(res, Some(&ns))
            .await
            .map(|_| client.api().store.revision()),
        Action::FinalizeNamespace { object } => {
            let res = resources::by_plural("", "v1", "namespaces").expect("namespaces");
            let name = objects::name(&object).to_string();
            let mut next = object;
            next["spec"]["finalizers"] = json!([]);
            client
                .update(res, None, &name, Some("finalize"), &next)
                .await
                .map(|v| written_rev(&v))
        }
        Action::Event {
            regarding,
            warning,
            reason,
            message,
        } => {
            let res = resources::by_plural("", "v1", "events").expect("events");
            let ev = objects::event(&regarding, warning, &reason, &message);
            let ns = ev["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            // Events are best effort and never waited for.
            client.create(res, Some(&ns), &ev).await.map(|_| 0)
        }
    }
}
