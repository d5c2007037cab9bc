//! Leader election on a coordination Lease, as kube-controller-manager and
//! kube-scheduler do it. Only the holder runs the scheduler and controllers.
//!
//! Writes are compare-and-swap on the Lease's resourceVersion, and only the
//! Raft leader's API can write at all, so two control-plane processes on one
//! store can never both hold it. Identity is `host/member-N`: a restarted
//! member (which took over its data directory's lock, so its predecessor is
//! gone) reclaims its own Lease at once instead of waiting out the duration.

use std::time::Duration;

use axum::http::Method;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio::sync::watch as signal;

use crate::local::LocalClient;
use crate::time::micro;

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
pub fn claim(
    current: Option<&Value>,
    cfg: &ElectionConfig,
    now: Timestamp,
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
    if !mine && !holder.is_empty() && !expired {
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

/// Campaigns until `stop`; `leading` says whether this process holds the Lease now.
pub async fn run(
    client: LocalClient,
    cfg: ElectionConfig,
    leading: signal::Sender<bool>,
    mut stop: signal::Receiver<bool>,
) {
    let leases = weft_api::resources::by_plural("coordination.k8s.io", "v1", "leases")
        .expect("leases are served");
    let mut last_renewal: Option<tokio::time::Instant> = None;
    loop {
        let path = leases.object_path(Some(&cfg.namespace), &cfg.name);
        let current = match client
            .call(Method::GET, &path, "", "application/json", None)
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(s) if s.code == 404 => Ok(None),
            Err(s) => Err(s),
        };
        let renewed = match current {
            Ok(cur) => match claim(cur.as_ref(), &cfg, Timestamp::now()) {
                Some((Method::POST, lease)) => client
                    .create(leases, Some(&cfg.namespace), &lease)
                    .await
                    .is_ok(),
                Some((_, lease)) => client
                    .update(leases, Some(&cfg.namespace), &cfg.name, None, &lease)
                    .await
                    .is_ok(),
                None => false,
            },
            Err(_) => false,
        };
        let now = tokio::time::Instant::now();
        if renewed {
            last_renewal = Some(now);
        }
        let holds = last_renewal.is_some_and(|t| now.duration_since(t) < cfg.renew_deadline);
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
        }
    }
    leading.send_replace(false);
}

/// Runs the scheduler and controllers whenever `leading` is true, and stops
/// them (before anyone else can take over: renew_deadline < lease_duration)
/// when it turns false or on `stop`.
pub async fn run_components(
    cache: crate::cache::Cache,
    client: LocalClient,
    controllers: crate::controllers::ControllerConfig,
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
            tokio::spawn(crate::scheduler::run(
                cache.clone(),
                client.clone(),
                halted.clone(),
            )),
            tokio::spawn(crate::controllers::run(
                cache.clone(),
                client.clone(),
                crate::controllers::all(&controllers),
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
        let (m, lease) = claim(None, &cfg("a"), now).unwrap();
        assert_eq!(m, Method::POST);
        assert_eq!(lease["spec"]["holderIdentity"], "a");
        // b must wait while a's claim is fresh.
        assert!(claim(Some(&lease), &cfg("b"), now + SignedDuration::from_secs(5)).is_none());
        // a renews its own.
        let (m, renewed) =
            claim(Some(&lease), &cfg("a"), now + SignedDuration::from_secs(5)).unwrap();
        assert_eq!(m, Method::PUT);
        assert_eq!(renewed["spec"]["leaseTransitions"], 0);
        // Once it lapses, b takes over and the transition is counted.
        let (_, taken) = claim(
            Some(&renewed),
            &cfg("b"),
            now + SignedDuration::from_secs(30),
        )
        .unwrap();
        assert_eq!(taken["spec"]["holderIdentity"], "b");
        assert_eq!(taken["spec"]["leaseTransitions"], 1);
    }
}
