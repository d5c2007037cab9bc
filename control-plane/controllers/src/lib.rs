//! The controller manager. Each controller is a pure `reconcile(key,
//! snapshot, now) -> actions` over the cache; the manager feeds it keys from
//! cache changes, carries out its actions through the [`Writer`], and
//! waits until the cache has seen its writes before reconciling that key
//! again (so a stale cache never causes double creations).

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod pod_gc;
pub mod replicaset;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, watch as signal};
use tracing::Instrument;

use weft_cluster::{Cache, Change, NodeFit, Outcome, Snapshot, Writer, execute, objects};

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
    /// Node IPAM: the cluster CIDR and each Node's prefix length (off without).
    pub cluster_cidr: Option<(ipnet::Ipv4Net, u8)>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_monitor_grace_period: Duration::from_secs(40),
            cluster_cidr: None,
        }
    }
}

/// Every controller Weft runs. `fit` judges where DaemonSet pods belong
/// (the scheduler's node-level filters).
pub fn all(cfg: &ControllerConfig, fit: Arc<dyn NodeFit>) -> Vec<Arc<dyn Controller>> {
    let mut all: Vec<Arc<dyn Controller>> = vec![
        Arc::new(replicaset::ReplicaSetController),
        Arc::new(deployment::DeploymentController),
        Arc::new(daemonset::DaemonSetController { fit }),
        Arc::new(job::JobController),
        Arc::new(cronjob::CronJobController),
        Arc::new(node_lifecycle::NodeLifecycleController {
            grace: cfg.node_monitor_grace_period,
        }),
        Arc::new(pod_gc::PodGcController),
        Arc::new(endpoints::EndpointsController),
        Arc::new(gc::GarbageCollector),
        Arc::new(namespace::NamespaceController),
    ];
    if let Some((cidr, mask)) = cfg.cluster_cidr {
        all.push(Arc::new(node_ipam::NodeIpamController {
            cluster_cidr: cidr,
            mask,
        }));
    }
    all
}

/// Runs every controller until `stop`, once the cache has synced.
pub async fn run(
    cache: Cache,
    writer: Arc<dyn Writer>,
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
            writer: writer.clone(),
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
    writer: Arc<dyn Writer>,
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
            match execute(self.writer.as_ref(), action).await {
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

#[cfg(test)]
mod tests {
    //! The controller manager against a recording fake writer: no store, no
    //! server. The fake stands in for the API server far enough to close
    //! the loop: what it is asked to write appears in the cache.

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use serde_json::{Value, json};
    use weft_api::{Resource, Status};

    use super::*;
    use weft_cluster::keys;

    struct Recording {
        cache: Cache,
        calls: Mutex<Vec<(String, Value)>>,
        revision: AtomicU64,
    }

    impl Recording {
        fn new(cache: Cache, revision: u64) -> Self {
            Recording {
                cache,
                calls: Mutex::new(Vec::new()),
                revision: AtomicU64::new(revision),
            }
        }

        fn calls(&self) -> Vec<(String, Value)> {
            self.calls.lock().unwrap().clone()
        }

        /// Stores `object` at the next revision, as the API server would.
        fn store(&self, res: &Resource, ns: &str, name: &str, mut object: Value) -> Value {
            let rev = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
            object["metadata"]["name"] = json!(name);
            object["metadata"]["namespace"] = json!(ns);
            object["metadata"]["resourceVersion"] = json!(rev.to_string());
            let key = keys::key(res.group, res.plural, ns, name);
            self.cache.apply(&key, rev, Some(Arc::new(object.clone())));
            self.cache.caught_up(rev);
            object
        }
    }

    #[async_trait::async_trait]
    impl Writer for Recording {
        async fn create(
            &self,
            res: &'static Resource,
            ns: &str,
            mut object: Value,
        ) -> Result<Value, Status> {
            let n = self.revision.load(Ordering::SeqCst);
            let name = match object["metadata"]["name"].as_str() {
                Some(name) => name.to_string(),
                None => format!(
                    "{}{n}",
                    object["metadata"]["generateName"].as_str().unwrap_or("")
                ),
            };
            object["metadata"]["uid"] = json!(format!("uid-{name}"));
            self.calls
                .lock()
                .unwrap()
                .push((format!("create {} {ns}/{name}", res.plural), object.clone()));
            Ok(self.store(res, ns, &name, object))
        }

        async fn patch(
            &self,
            res: &'static Resource,
            ns: &str,
            name: &str,
            status: bool,
            patch: Value,
        ) -> Result<Value, Status> {
            let sub = if status { "/status" } else { "" };
            self.calls.lock().unwrap().push((
                format!("patch {}{sub} {ns}/{name}", res.plural),
                patch.clone(),
            ));
            let mut object = self
                .cache
                .read()
                .get(res.group, res.plural, ns, name)
                .map(|o| (**o).clone())
                .ok_or_else(|| Status::not_found(res.group, res.plural, name))?;
            json_patch::merge(&mut object, &patch);
            Ok(self.store(res, ns, name, object))
        }

        async fn delete(
            &self,
            res: &'static Resource,
            ns: &str,
            name: &str,
            options: Value,
        ) -> Result<Value, Status> {
            self.calls
                .lock()
                .unwrap()
                .push((format!("delete {} {ns}/{name}", res.plural), options));
            Ok(json!({}))
        }

        async fn delete_collection(&self, res: &'static Resource, ns: &str) -> Result<u64, Status> {
            self.calls
                .lock()
                .unwrap()
                .push((format!("deletecollection {} {ns}", res.plural), json!({})));
            Ok(0)
        }

        async fn finalize(&self, namespace: Value) -> Result<Value, Status> {
            self.calls
                .lock()
                .unwrap()
                .push(("finalize".into(), namespace.clone()));
            Ok(namespace)
        }

        async fn bind(&self, ns: &str, name: &str, node: &str) -> Result<(), Status> {
            self.calls
                .lock()
                .unwrap()
                .push((format!("bind {ns}/{name}"), json!(node)));
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_replicaset_gets_its_pods_and_status_through_the_writer() {
        let cache = Cache::default();
        let rs = replicaset::tests::rs("web", 3);
        cache.apply(
            &keys::key("apps", "replicasets", "default", "web"),
            5,
            Some(Arc::new(rs)),
        );
        cache.caught_up(5);
        let writer = Arc::new(Recording::new(cache.clone(), 5));
        let (stop_tx, stop) = signal::channel(false);
        let manager = tokio::spawn(run(
            cache.clone(),
            writer.clone(),
            vec![Arc::new(replicaset::ReplicaSetController)],
            stop,
        ));
        // Three pods, then a status that counts them: bounded, not timed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let done = |calls: &[(String, Value)]| {
            calls.iter().any(|(c, p)| {
                c == "patch replicasets/status default/web" && p["status"]["replicas"] == 3
            })
        };
        while !done(&writer.calls()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop_tx.send(true);
        manager.await.unwrap();
        let calls = writer.calls();
        assert!(done(&calls), "{calls:#?}");
        let pods: Vec<&Value> = calls
            .iter()
            .filter(|(c, _)| c.starts_with("create pods default/web-"))
            .map(|(_, o)| o)
            .collect();
        assert_eq!(pods.len(), 3, "exactly the missing pods: {calls:#?}");
        for p in pods {
            assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], "uid-web");
            assert_eq!(p["metadata"]["labels"]["app"], "a");
        }
        // The creates are reported as Kubernetes does; nothing is deleted.
        let events: Vec<&Value> = calls
            .iter()
            .filter(|(c, _)| c.starts_with("create events"))
            .map(|(_, e)| e)
            .collect();
        assert!(
            !events.is_empty() && events.iter().all(|e| e["reason"] == "SuccessfulCreate"),
            "{events:#?}"
        );
        assert!(
            calls.iter().all(|(c, _)| c.starts_with("create ") || c.starts_with("patch replicasets/status")),
            "{calls:#?}"
        );
    }
}
