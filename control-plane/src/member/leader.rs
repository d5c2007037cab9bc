//! Leader election on a coordination Lease, as kube-controller-manager and
//! kube-scheduler do it. Only the holder runs the scheduler and controllers.
//!
//! Writes are compare-and-swap on the Lease's resourceVersion. Only the Raft
//! leader campaigns, and Raft leadership is the fence: a member runs its
//! components only while it leads Raft, and stops them the moment it learns
//! it does not. So a new Raft leader takes the Lease from any other holder at
//! once, instead of waiting out the 15 s lease of a leader that died: the old
//! holder has stopped, or cannot commit a write. Identity is `host/member-N`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio::sync::watch as signal;
use weft_api::Status;

use weft_apiserver::registry::{Registry, Target, WriteOptions};
use weft_cluster::time::micro;
use weft_cluster::{Cache, Writer};

#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a holder's claim lasts without renewal (Kubernetes: 15 s).
    pub lease_duration: Duration,
    /// A holder that could not renew for this long steps down (2/3 of the lease).
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew (1/7 of the lease).
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// Renewal timings follow the lease duration in Kubernetes' proportions
    /// (15 s lease, 10 s renew deadline, 2 s retry): the holder steps down
    /// well before anyone else may take over.
    pub fn new(name: &str, identity: String, lease_duration: Duration) -> Self {
        ElectionConfig {
            namespace: "kube-system".into(),
            name: name.into(),
            identity,
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: (lease_duration / 7).max(Duration::from_millis(100)),
        }
    }
}

/// What to do with the Lease as found: `None` means someone else holds it.
/// `raft_leader`: the caller leads Raft, so no other holder is running its
/// components (see the module doc) and the Lease is taken at once.
pub fn claim(
    current: Option<&Value>,
    cfg: &ElectionConfig,
    now: Timestamp,
    raft_leader: bool,
) -> Option<(Method, Value)> {
    let secs = cfg.lease_duration.as_secs().max(1) as i64;
    let Some(cur) = current else {
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": cfg.name, "namespace": cfg.namespace},
            "spec": {"holderIdentity": cfg.identity, "leaseDurationSeconds": secs,
                     "acquireTime": micro(now), "renewTime": micro(now), "leaseTransitions": 0}});
        return Some((Method::POST, lease));
    };
    let spec = cur.get("spec").cloned().unwrap_or(json!({}));
    let holder = spec
        .get("holderIdentity")
        .and_then(Value::as_str)
        .unwrap_or("");
    let held_secs = spec
        .get("leaseDurationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(secs);
    let renewed = spec
        .get("renewTime")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<Timestamp>().ok());
    let expired = renewed.is_none_or(|r| r + SignedDuration::from_secs(held_secs) < now);
    let mine = holder == cfg.identity;
    if !mine && !holder.is_empty() && !expired && !raft_leader {
        return None;
    }
    let mut next = cur.clone();
    next["spec"]["holderIdentity"] = json!(cfg.identity);
    next["spec"]["leaseDurationSeconds"] = json!(secs);
    next["spec"]["renewTime"] = json!(micro(now));
    if !mine {
        let transitions = spec
            .get("leaseTransitions")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        next["spec"]["acquireTime"] = json!(micro(now));
        next["spec"]["leaseTransitions"] = json!(transitions + 1);
    }
    Some((Method::PUT, next))
}

/// The Lease with this member's claim given up (client-go's
/// `ReleaseOnCancel`): no holder, so anyone may take it at once. `None` if
/// someone else holds it by now.
pub fn released(current: &Value, cfg: &ElectionConfig, now: Timestamp) -> Option<Value> {
    if current
        .pointer("/spec/holderIdentity")
        .and_then(Value::as_str)
        != Some(&cfg.identity)
    {
        return None;
    }
    let mut next = current.clone();
    let spec = &mut next["spec"];
    spec["holderIdentity"] = Value::Null;
    spec["leaseDurationSeconds"] = json!(1);
    spec["renewTime"] = json!(micro(now));
    Some(next)
}

fn leases() -> &'static weft_api::Resource {
    weft_cluster::res("leases")
}

/// The Lease as stored now, `None` if there is none.
async fn current(registry: &Registry, cfg: &ElectionConfig) -> Result<Option<Value>, Status> {
    let t = Target::object(leases(), &cfg.namespace, &cfg.name);
    match registry.get(&t, None).await {
        Ok(v) => Ok(Some(v)),
        Err(s) if s.code == 404 => Ok(None),
        Err(s) => Err(s),
    }
}

/// Writes the Lease: a create, or a replace (compare-and-swap on the
/// resourceVersion it was read at).
async fn write(
    registry: &Registry,
    cfg: &ElectionConfig,
    method: Method,
    lease: Value,
) -> Result<(), Status> {
    let t = match method {
        Method::POST => Target::collection(leases(), &cfg.namespace),
        _ => Target::object(leases(), &cfg.namespace, &cfg.name),
    };
    let opts = WriteOptions::default();
    match method {
        Method::POST => registry.create(&t, lease, opts).await.map(|_| ()),
        _ => registry.update(&t, lease, opts).await.map(|_| ()),
    }
}

/// Gives up the Lease, compare-and-swap on its resourceVersion. Call only
/// once this member's scheduler and controllers have stopped.
pub async fn release(registry: &Registry, cfg: &ElectionConfig) {
    let Ok(Some(cur)) = current(registry, cfg).await else {
        return;
    };
    let Some(next) = released(&cur, cfg, Timestamp::now()) else {
        return;
    };
    match write(registry, cfg, Method::PUT, next).await {
        Ok(()) => tracing::info!(lease = %cfg.name, "released the lease"),
        Err(s) => tracing::warn!(lease = %cfg.name, "could not release the lease: {}", s.message),
    }
}

/// Campaigns until `stop`; `leading` says whether this process holds the
/// Lease now. Returns whether it held the Lease when it stopped.
///
/// Only the Raft leader campaigns and renews, so the scheduler and
/// controllers run beside the store's leader and their writes need no
/// forward. The loop also wakes when Raft's leader changes: a member that
/// stops leading Raft stops its components at once, and a new leader takes
/// over within moments of its election.
pub async fn run(
    registry: Registry,
    cfg: ElectionConfig,
    leading: signal::Sender<bool>,
    mut stop: signal::Receiver<bool>,
) -> bool {
    let mut last_renewal: Option<tokio::time::Instant> = None;
    loop {
        let known_leader = registry.store.current_leader();
        let leads = known_leader == Some(registry.store.node_id());
        let renewed = leads
            && match current(&registry, &cfg).await {
                Ok(cur) => match claim(cur.as_ref(), &cfg, Timestamp::now(), true) {
                    Some((method, lease)) => write(&registry, &cfg, method, lease).await.is_ok(),
                    None => false,
                },
                Err(_) => false,
            };
        let now = tokio::time::Instant::now();
        if renewed {
            last_renewal = Some(now);
        }
        let holds = leads
            && registry.store.leads()
            && last_renewal.is_some_and(|t| now.duration_since(t) < cfg.renew_deadline);
        if !holds {
            last_renewal = None;
        }
        if *leading.borrow() != holds {
            tracing::info!(lease = %cfg.name, identity = %cfg.identity, "leading: {holds}");
            leading.send_replace(holds);
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(cfg.retry_period) => {}
            _ = registry.store.leader_changed(known_leader) => {}
        }
    }
    let held = last_renewal.is_some();
    leading.send_replace(false);
    held
}

/// Runs the scheduler and controllers whenever `leading` is true, and stops
/// them (before anyone else can take over: renew_deadline < lease_duration)
/// when it turns false or on `stop`.
pub async fn run_components(
    cache: Cache,
    writer: Arc<dyn Writer>,
    controllers: weft_controllers::ControllerConfig,
    mut leading: signal::Receiver<bool>,
    mut stop: signal::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
        }
        tracing::info!("leading: starting the scheduler and controllers");
        let (halt, halted) = signal::channel(false);
        let tasks = [
            tokio::spawn(weft_scheduler::run(
                cache.clone(),
                writer.clone(),
                halted.clone(),
            )),
            tokio::spawn(weft_controllers::run(
                cache.clone(),
                writer.clone(),
                weft_controllers::all(&controllers, Arc::new(weft_scheduler::DaemonFit::default())),
                halted,
            )),
        ];
        tokio::select! {
            _ = stop.changed() => {}
            _ = leading.wait_for(|l| !*l) => tracing::warn!("lost the lease: stopping the scheduler and controllers"),
        }
        let _ = halt.send(true);
        for t in tasks {
            let _ = t.await;
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: &str) -> ElectionConfig {
        ElectionConfig::new("weft-controllers", id.into(), Duration::from_secs(15))
    }

    #[test]
    fn acquires_renews_and_respects_a_live_holder() {
        let now = Timestamp::now();
        let (m, lease) = claim(None, &cfg("a"), now, false).unwrap();
        assert_eq!(m, Method::POST);
        assert_eq!(lease["spec"]["holderIdentity"], "a");
        // b must wait while a's claim is fresh.
        let later = now + SignedDuration::from_secs(5);
        assert!(claim(Some(&lease), &cfg("b"), later, false).is_none());
        // a renews its own.
        let (m, renewed) = claim(Some(&lease), &cfg("a"), later, false).unwrap();
        assert_eq!(m, Method::PUT);
        assert_eq!(renewed["spec"]["leaseTransitions"], 0);
        // Once it lapses, b takes over and the transition is counted.
        let (_, taken) = claim(
            Some(&renewed),
            &cfg("b"),
            now + SignedDuration::from_secs(30),
            false,
        )
        .unwrap();
        assert_eq!(taken["spec"]["holderIdentity"], "b");
        assert_eq!(taken["spec"]["leaseTransitions"], 1);
    }

    #[test]
    fn a_new_raft_leader_takes_a_fresh_lease_at_once() {
        let now = Timestamp::now();
        let (_, lease) = claim(None, &cfg("a"), now, true).unwrap();
        let (m, taken) = claim(Some(&lease), &cfg("b"), now, true).expect("taken over");
        assert_eq!(m, Method::PUT);
        assert_eq!(taken["spec"]["holderIdentity"], "b");
        assert_eq!(taken["spec"]["leaseTransitions"], 1);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let now = Timestamp::now();
        let (_, lease) = claim(None, &cfg("a"), now, false).unwrap();
        // Only the holder can release it.
        assert!(released(&lease, &cfg("b"), now).is_none());
        let free = released(&lease, &cfg("a"), now).unwrap();
        // b need not wait out a's 15 s.
        let (m, taken) = claim(Some(&free), &cfg("b"), now, false).unwrap();
        assert_eq!(m, Method::PUT);
        assert_eq!(taken["spec"]["holderIdentity"], "b");
        assert_eq!(taken["spec"]["leaseTransitions"], 1);
    }
}
