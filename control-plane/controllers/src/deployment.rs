//! Deployment: ReplicaSets per template revision, rolled with RollingUpdate
//! (maxSurge / maxUnavailable) or Recreate, with the revision annotations
//! and status conditions `kubectl rollout` reads.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::Controller;
use super::replicaset::{owned_pods, owner_keys};
use weft_cluster::objects::{self as o, key_of};
use weft_cluster::{Action, Outcome, res};
use weft_cluster::{Change, Snapshot};

pub struct DeploymentController;

pub const REVISION: &str = "deployment.kubernetes.io/revision";

fn revision(o: &Value) -> i64 {
    o::annotation(o, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn int(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

/// maxSurge / maxUnavailable: an int or a percentage of `replicas`
/// (surge rounds up, unavailability down, as Kubernetes does).
fn int_or_percent(v: Option<&Value>, default: &str, replicas: i64, round_up: bool) -> i64 {
    let v = v.cloned().unwrap_or(json!(default));
    if let Some(n) = v.as_i64() {
        return n.max(0);
    }
    let pct: i64 = v
        .as_str()
        .and_then(|s| s.strip_suffix('%'))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if round_up {
        (pct * replicas + 99) / 100
    } else {
        pct * replicas / 100
    }
}

/// (maxSurge, maxUnavailable) for this Deployment; never both zero.
pub fn rolling_params(d: &Value, replicas: i64) -> (i64, i64) {
    let ru = d.pointer("/spec/strategy/rollingUpdate");
    let surge = int_or_percent(ru.and_then(|r| r.get("maxSurge")), "25%", replicas, true);
    let unavailable = int_or_percent(
        ru.and_then(|r| r.get("maxUnavailable")),
        "25%",
        replicas,
        false,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn scale(out: &mut Outcome, d: &Arc<Value>, rs: &Value, from: i64, to: i64) {
    let ns = o::namespace(rs).to_string();
    out.push(Action::Patch {
        res: res("replicasets"),
        ns,
        name: o::name(rs).to_string(),
        status: false,
        patch: json!({"spec": {"replicas": to}}),
    });
    let verb = if to > from { "up" } else { "down" };
    out.push(Action::Event {
        regarding: d.clone(),
        warning: false,
        reason: "ScalingReplicaSet".into(),
        message: format!(
            "Scaled {verb} replica set {} from {from} to {to}",
            o::name(rs)
        ),
    });
}

fn new_replica_set(d: &Value, template: &Value, revision: i64, replicas: i64) -> Value {
    let hash = o::template_hash(template);
    let mut t = template.clone();
    t["metadata"]["labels"]["pod-template-hash"] = json!(hash);
    let mut selector = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
    selector["matchLabels"]["pod-template-hash"] = json!(hash);
    let labels = t["metadata"]["labels"].clone();
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": format!("{}-{hash}", o::name(d)), "namespace": o::namespace(d),
            "labels": labels, "ownerReferences": [o::owner_ref(d)],
            "annotations": {REVISION: revision.to_string(),
                "deployment.kubernetes.io/desired-replicas": int(d, "/spec/replicas").to_string()}},
        "spec": {"replicas": replicas, "minReadySeconds": int(d, "/spec/minReadySeconds"),
                 "selector": selector, "template": t}})
}

fn condition(
    ty: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
    prev: Option<&Value>,
) -> Value {
    let same = prev.is_some_and(|p| p.get("status").and_then(Value::as_str) == Some(status));
    let transition = if same {
        prev.and_then(|p| p.get("lastTransitionTime"))
            .cloned()
            .unwrap_or(json!(now))
    } else {
        json!(now)
    };
    json!({"type": ty, "status": status, "reason": reason, "message": message,
           "lastUpdateTime": now, "lastTransitionTime": transition})
}

impl Controller for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn primary(&self) -> (&'static str, &'static str) {
        ("apps", "deployments")
    }

    fn keys_for(&self, change: &Change, snap: &Snapshot) -> Vec<String> {
        match change.resource() {
            ("apps", "deployments") => vec![key_of(change.object())],
            ("apps", "replicasets") => owner_keys(change, "Deployment"),
            // A pod's readiness changes its ReplicaSet's status, which
            // arrives as a ReplicaSet change; only deletions matter directly
            // (Recreate waits for the old pods to go).
            ("", "pods") if change.new.is_none() => {
                let mut keys = Vec::new();
                for rs_key in owner_keys(change, "ReplicaSet") {
                    let (ns, name) = o::split_key(&rs_key);
                    if let Some(rs) = snap.get("apps", "replicasets", ns, name)
                        && let Some(r) = o::controller_of(rs)
                    {
                        keys.push(o::key(ns, r["name"].as_str().unwrap_or("")));
                    }
                }
                keys
            }
            _ => vec![],
        }
    }

    fn reconcile(&self, key: &str, snap: &Snapshot, now: Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let (ns, name) = o::split_key(key);
        let Some(d) = snap.get("apps", "deployments", ns, name) else {
            return out;
        };
        if o::is_terminating(d) {
            return out;
        }
        let r = Rollout::observe(d, ns, name, snap);
        let Some(new_rs) = r.new_rs else {
            if !r.paused {
                create_new_replica_set(&r, snap, now, &mut out);
            }
            return out;
        };
        mark_newest(&r, new_rs, &mut out);
        let scaled = !r.paused && plan_scaling(&r, new_rs, snap, &mut out);
        prune_history(&r, &mut out);
        update_status(&r, new_rs, scaled, now, &mut out);
        out
    }
}

/// What one reconcile sees of a Deployment and its ReplicaSets.
struct Rollout<'a> {
    d: &'a Arc<Value>,
    ns: &'a str,
    name: &'a str,
    /// The live ReplicaSets it controls, oldest revision first.
    rses: Vec<&'a Arc<Value>>,
    /// The one whose template is the Deployment's, if any.
    new_rs: Option<&'a Arc<Value>>,
    olds: Vec<&'a Arc<Value>>,
    max_rev: i64,
    replicas: i64,
    recreate: bool,
    surge: i64,
    max_unavailable: i64,
    paused: bool,
    /// The old ReplicaSets' spec.replicas, summed.
    old_total: i64,
}

impl<'a> Rollout<'a> {
    fn observe(d: &'a Arc<Value>, ns: &'a str, name: &'a str, snap: &'a Snapshot) -> Self {
        let uid = o::uid(d);
        let mut rses: Vec<&Arc<Value>> = snap
            .list("apps", "replicasets", Some(ns))
            .filter(|rs| o::controlled_by(rs, uid) && !o::is_terminating(rs))
            .collect();
        rses.sort_by_key(|rs| (revision(rs), o::name(rs).to_string()));
        let want_t = o::template_without_hash(d.pointer("/spec/template").unwrap_or(&json!({})));
        let new_rs = rses.iter().copied().find(|rs| {
            o::template_without_hash(rs.pointer("/spec/template").unwrap_or(&Value::Null)) == want_t
        });
        let olds: Vec<&Arc<Value>> = rses
            .iter()
            .copied()
            .filter(|rs| new_rs.is_none_or(|n| o::uid(n) != o::uid(rs)))
            .collect();
        let replicas = d
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let recreate = d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate");
        let (surge, max_unavailable) = if recreate {
            (0, replicas)
        } else {
            rolling_params(d, replicas)
        };
        Rollout {
            d,
            ns,
            name,
            max_rev: rses.iter().map(|rs| revision(rs)).max().unwrap_or(0),
            old_total: olds.iter().map(|rs| int(rs, "/spec/replicas")).sum(),
            rses,
            new_rs,
            olds,
            replicas,
            recreate,
            surge,
            max_unavailable,
            paused: d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true),
        }
    }

    /// Recreate starts the new pods only once no old pod is active.
    fn old_pods_gone(&self, snap: &Snapshot) -> bool {
        self.olds
            .iter()
            .all(|rs| owned_pods(snap, rs).iter().all(|p| !o::is_active(p)))
    }

    fn annotate_revision(&self, out: &mut Outcome, resource: &str, name: &str, rev: i64) {
        out.push(Action::Patch {
            res: res(resource),
            ns: self.ns.to_string(),
            name: name.to_string(),
            status: false,
            patch: json!({"metadata": {"annotations": {REVISION: rev.to_string()}}}),
        });
    }
}

/// No ReplicaSet has the Deployment's template yet: create one at the next
/// revision, as large as the strategy allows now.
fn create_new_replica_set(r: &Rollout, snap: &Snapshot, now: Timestamp, out: &mut Outcome) {
    let initial = if r.recreate {
        if r.old_total == 0 && r.old_pods_gone(snap) {
            r.replicas
        } else {
            0
        }
    } else if r.old_total == 0 {
        r.replicas
    } else {
        (r.replicas + r.surge - r.old_total).clamp(0, r.replicas)
    };
    let template = r.d.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let rs = new_replica_set(r.d, &template, r.max_rev + 1, initial);
    let rs_name = o::name(&rs).to_string();
    out.push(Action::Create {
        res: res("replicasets"),
        ns: r.ns.to_string(),
        object: rs,
    });
    out.push(Action::Event {
        regarding: r.d.clone(),
        warning: false,
        reason: "ScalingReplicaSet".into(),
        message: format!("Scaled up replica set {rs_name} from 0 to {initial}"),
    });
    r.annotate_revision(out, "deployments", r.name, r.max_rev + 1);
    let ts = o::ts(now);
    let mut progressing = condition(
        "Progressing",
        "True",
        "NewReplicaSetCreated",
        &format!("Created new replica set \"{rs_name}\""),
        &ts,
        None,
    );
    progressing["lastTransitionTime"] = json!(ts);
    out.push(Action::patch_status(
        res("deployments"),
        r.ns,
        r.name,
        json!({"observedGeneration": o::generation(r.d),
            "conditions": merge_conditions(r.d, vec![progressing])}),
    ));
}

/// The new ReplicaSet carries the newest revision; a rollback re-uses an
/// old one, which becomes the newest.
fn mark_newest(r: &Rollout, new_rs: &Value, out: &mut Outcome) {
    let mut new_rev = revision(new_rs);
    if new_rev < r.max_rev || new_rev == 0 {
        new_rev = r.max_rev + 1;
        r.annotate_revision(out, "replicasets", o::name(new_rs), new_rev);
    }
    if o::annotation(r.d, REVISION) != Some(new_rev.to_string().as_str()) {
        r.annotate_revision(out, "deployments", r.name, new_rev);
    }
}

/// One step of the strategy; true if it scaled any ReplicaSet.
fn plan_scaling(r: &Rollout, new_rs: &Arc<Value>, snap: &Snapshot, out: &mut Outcome) -> bool {
    let new_spec = int(new_rs, "/spec/replicas");
    if r.recreate && r.old_total > 0 {
        for rs in &r.olds {
            let cur = int(rs, "/spec/replicas");
            if cur > 0 {
                scale(out, r.d, rs, cur, 0);
            }
        }
        return true;
    }
    if r.recreate || r.old_total == 0 {
        let ready = !r.recreate || r.old_pods_gone(snap);
        if ready && new_spec != r.replicas {
            scale(out, r.d, new_rs, new_spec, r.replicas);
            return true;
        }
        return false;
    }
    plan_rolling_update(r, new_rs, out)
}

/// RollingUpdate with old ReplicaSets left: scale the new one up within
/// maxSurge, and the old ones down within maxUnavailable (unhealthy
/// replicas first, then the oldest ReplicaSets first).
fn plan_rolling_update(r: &Rollout, new_rs: &Arc<Value>, out: &mut Outcome) -> bool {
    let mut scaled = false;
    let new_spec = int(new_rs, "/spec/replicas");
    let total = new_spec + r.old_total;
    let max_total = r.replicas + r.surge;
    let mut new_target = new_spec;
    if total < max_total && new_spec < r.replicas {
        new_target = (new_spec + max_total - total).min(r.replicas);
    } else if new_spec > r.replicas {
        new_target = r.replicas;
    }
    if new_target != new_spec {
        scale(out, r.d, new_rs, new_spec, new_target);
        scaled = true;
    }
    let min_available = r.replicas - r.max_unavailable;
    let new_unavailable = (new_spec - int(new_rs, "/status/availableReplicas")).max(0);
    let mut budget = (new_spec + r.old_total - min_available - new_unavailable).max(0);
    let mut targets: Vec<(&Arc<Value>, i64)> = r
        .olds
        .iter()
        .map(|rs| (*rs, int(rs, "/spec/replicas")))
        .collect();
    for (rs, t) in targets.iter_mut() {
        let unhealthy = (*t - int(rs, "/status/availableReplicas")).max(0);
        let cut = unhealthy.min(budget);
        *t -= cut;
        budget -= cut;
    }
    let available: i64 = r
        .rses
        .iter()
        .map(|rs| int(rs, "/status/availableReplicas"))
        .sum();
    let mut healthy_budget = (available - min_available).max(0).min(budget);
    for (_, t) in targets.iter_mut() {
        let cut = (*t).min(healthy_budget);
        *t -= cut;
        healthy_budget -= cut;
    }
    for (rs, t) in targets {
        let cur = int(rs, "/spec/replicas");
        if t != cur {
            scale(out, r.d, rs, cur, t);
            scaled = true;
        }
    }
    scaled
}

/// Keeps at most revisionHistoryLimit old, empty ReplicaSets.
fn prune_history(r: &Rollout, out: &mut Outcome) {
    let limit =
        r.d.pointer("/spec/revisionHistoryLimit")
            .and_then(Value::as_i64)
            .unwrap_or(10)
            .max(0) as usize;
    let empty: Vec<&&Arc<Value>> = r
        .olds
        .iter()
        .filter(|rs| int(rs, "/spec/replicas") == 0 && int(rs, "/status/replicas") == 0)
        .collect();
    for rs in empty.iter().take(empty.len().saturating_sub(limit)) {
        out.push(Action::Delete {
            res: res("replicasets"),
            ns: r.ns.to_string(),
            name: o::name(rs).to_string(),
            options: json!({"propagationPolicy": "Background"}),
        });
    }
}

/// The Deployment's status: counts summed over its ReplicaSets, with the
/// Available and Progressing conditions `kubectl rollout status` reads.
fn update_status(r: &Rollout, new_rs: &Value, scaled: bool, now: Timestamp, out: &mut Outcome) {
    let (d, replicas, ts) = (r.d, r.replicas, o::ts(now));
    let sum = |ptr: &str| r.rses.iter().map(|rs| int(rs, ptr)).sum::<i64>();
    let total_pods = sum("/status/replicas");
    let updated = int(new_rs, "/status/replicas");
    let ready = sum("/status/readyReplicas");
    let available = sum("/status/availableReplicas");
    let spec_total = sum("/spec/replicas");
    let current = d.get("status").cloned().unwrap_or(json!({}));
    let prev_av = o::condition(d, "Available").cloned();
    let available_cond = if available >= replicas - r.max_unavailable {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            &ts,
            prev_av.as_ref(),
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            &ts,
            prev_av.as_ref(),
        )
    };
    let complete = updated == replicas
        && total_pods == replicas
        && available >= replicas
        && r.old_total == 0
        && int(new_rs, "/status/observedGeneration") >= o::generation(new_rs);
    let progressed = scaled
        || [
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
        ]
        .iter()
        .zip([total_pods, updated, ready, available])
        .any(|(f, v)| current.get(*f).and_then(Value::as_i64).unwrap_or(0) != v)
        || o::generation(d) != int(d, "/status/observedGeneration");
    let progressing_cond =
        progressing_condition(d, o::name(new_rs), complete, progressed, now, out);
    let status = json!({
        "observedGeneration": o::generation(d), "replicas": total_pods, "updatedReplicas": updated,
        "readyReplicas": ready, "availableReplicas": available,
        "unavailableReplicas": (spec_total.max(replicas) - available).max(0),
        "conditions": merge_conditions(d, vec![available_cond, progressing_cond])});
    if status_differs(&current, &status) {
        out.push(Action::patch_status(
            res("deployments"),
            r.ns,
            r.name,
            status,
        ));
    }
}

/// Progressing: complete, still progressing (re-checked at the deadline),
/// or stalled past progressDeadlineSeconds.
fn progressing_condition(
    d: &Arc<Value>,
    rs_name: &str,
    complete: bool,
    progressed: bool,
    now: Timestamp,
    out: &mut Outcome,
) -> Value {
    let ts = o::ts(now);
    let prev_pr = o::condition(d, "Progressing").cloned();
    let deadline = d
        .pointer("/spec/progressDeadlineSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(600);
    let prev_reason = prev_pr
        .as_ref()
        .and_then(|p| p.get("reason"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if complete {
        let mut c = condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            &ts,
            prev_pr.as_ref(),
        );
        if prev_reason == "NewReplicaSetAvailable" {
            c["lastUpdateTime"] = prev_pr
                .as_ref()
                .and_then(|p| p.get("lastUpdateTime"))
                .cloned()
                .unwrap_or(json!(ts));
        }
        return c;
    }
    if progressed || prev_pr.is_none() || prev_reason == "NewReplicaSetAvailable" {
        out.requeue(Duration::from_secs(deadline.max(1) as u64));
        return condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            &format!("ReplicaSet \"{rs_name}\" is progressing."),
            &ts,
            prev_pr.as_ref(),
        );
    }
    let last = prev_pr
        .as_ref()
        .and_then(|p| o::parse_ts(p.get("lastUpdateTime")))
        .unwrap_or(now);
    let due = last + SignedDuration::from_secs(deadline);
    if due > now || deadline <= 0 {
        out.requeue(o::until(due, now));
        return prev_pr.unwrap_or_default();
    }
    if prev_reason == "ProgressDeadlineExceeded"
        && let Some(prev) = &prev_pr
    {
        return prev.clone();
    }
    out.push(Action::Event {
        regarding: d.clone(),
        warning: true,
        reason: "ProgressDeadlineExceeded".into(),
        message: format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
    });
    condition(
        "Progressing",
        "False",
        "ProgressDeadlineExceeded",
        &format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
        &ts,
        prev_pr.as_ref(),
    )
}

/// The Deployment's conditions with `updates` replacing those of the same type.
fn merge_conditions(d: &Value, updates: Vec<Value>) -> Vec<Value> {
    let mut conds: Vec<Value> = d
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for u in updates {
        match conds.iter_mut().find(|c| c["type"] == u["type"]) {
            Some(c) => *c = u,
            None => conds.push(u),
        }
    }
    conds
}

/// Compares status ignoring condition timestamps that only record "now".
fn status_differs(current: &Value, next: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in cs {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastUpdateTime");
                    m.remove("lastTransitionTime");
                }
            }
        }
        v
    };
    let fields = [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
        "conditions",
    ];
    let (a, b) = (strip(current), strip(next));
    fields
        .iter()
        .any(|f| a.get(*f).unwrap_or(&json!(0)) != b.get(*f).unwrap_or(&json!(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "uid-d", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    fn rs_for(d: &Value, rev: i64, replicas: i64, available: i64) -> Value {
        let t = d["spec"]["template"].clone();
        let mut rs = new_replica_set(d, &t, rev, replicas);
        rs["metadata"]["uid"] = json!(format!("rs-{rev}"));
        rs["metadata"]["generation"] = json!(1);
        rs["status"] = json!({"replicas": replicas, "readyReplicas": available, "availableReplicas": available, "observedGeneration": 1});
        rs
    }

    fn patches<'a>(out: &'a Outcome, plural: &str) -> Vec<(&'a str, &'a Value)> {
        out.actions
            .iter()
            .filter_map(|a| match a {
                Action::Patch {
                    res,
                    name,
                    patch,
                    status: false,
                    ..
                } if res.plural == plural => Some((name.as_str(), patch)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn first_sync_creates_a_revisioned_replicaset() {
        let mut snap = Snapshot::default();
        snap.insert("apps", "deployments", deployment(3, "v1"));
        let out = DeploymentController.reconcile("default/web", &snap, Timestamp::now());
        let Action::Create { object, .. } = &out.actions[0] else {
            panic!("{:?}", out.actions)
        };
        assert_eq!(object["spec"]["replicas"], 3);
        assert_eq!(object["metadata"]["annotations"][REVISION], "1");
        let hash = object["spec"]["template"]["metadata"]["labels"]["pod-template-hash"]
            .as_str()
            .unwrap();
        assert_eq!(object["metadata"]["name"], format!("web-{hash}"));
        assert_eq!(
            object["spec"]["selector"]["matchLabels"]["pod-template-hash"],
            hash
        );
        assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], "uid-d");
    }

    #[test]
    fn rolling_update_surges_then_scales_down_old() {
        let old_d = deployment(3, "v1");
        let d = deployment(3, "v2");
        let mut snap = Snapshot::default();
        snap.insert("apps", "deployments", d.clone());
        snap.insert("apps", "replicasets", rs_for(&old_d, 1, 3, 3));
        // No new ReplicaSet yet: create it with the one surge replica.
        let out = DeploymentController.reconcile("default/web", &snap, Timestamp::now());
        let Action::Create { object, .. } = &out.actions[0] else {
            panic!()
        };
        assert_eq!(object["spec"]["replicas"], 1, "maxSurge 1 over 3 old");
        assert_eq!(object["metadata"]["annotations"][REVISION], "2");
        // Once the new pod is available, one old replica may go (maxUnavailable 0).
        snap.insert("apps", "replicasets", rs_for(&d, 2, 1, 1));
        let out = DeploymentController.reconcile("default/web", &snap, Timestamp::now());
        let p = patches(&out, "replicasets");
        let old_name = o::name(&rs_for(&old_d, 1, 3, 3)).to_string();
        assert!(
            p.iter()
                .any(|(n, v)| *n == old_name && v["spec"]["replicas"] == 2),
            "{p:?}"
        );
        // The new one cannot grow past replicas+surge (1 + 3 = 4 already).
        let new_name = o::name(&rs_for(&d, 2, 1, 1)).to_string();
        assert!(!p.iter().any(|(n, _)| *n == new_name), "{p:?}");
    }

    #[test]
    fn rollback_reuses_the_old_replicaset_with_a_new_revision() {
        let v1 = deployment(2, "v1");
        let v2 = deployment(2, "v2");
        let mut snap = Snapshot::default();
        snap.insert("apps", "deployments", v1.clone()); // template back at v1
        snap.insert("apps", "replicasets", rs_for(&v1, 1, 0, 0));
        snap.insert("apps", "replicasets", rs_for(&v2, 2, 2, 2));
        let out = DeploymentController.reconcile("default/web", &snap, Timestamp::now());
        let p = patches(&out, "replicasets");
        let v1_name = o::name(&rs_for(&v1, 1, 0, 0)).to_string();
        assert!(
            p.iter()
                .any(|(n, v)| *n == v1_name && v["metadata"]["annotations"][REVISION] == "3"),
            "{p:?}"
        );
        // maxSurge 1: one replica over the two old ones, to start with.
        assert!(
            p.iter()
                .any(|(n, v)| *n == v1_name && v["spec"]["replicas"] == 1),
            "{p:?}"
        );
    }

    #[test]
    fn complete_rollout_reports_new_replicaset_available() {
        let d = deployment(2, "v1");
        let mut snap = Snapshot::default();
        let mut d2 = d.clone();
        d2["metadata"]["annotations"] = json!({REVISION: "1"});
        snap.insert("apps", "deployments", d2);
        snap.insert("apps", "replicasets", rs_for(&d, 1, 2, 2));
        let out = DeploymentController.reconcile("default/web", &snap, Timestamp::now());
        let status = out
            .actions
            .iter()
            .find_map(|a| match a {
                Action::Patch {
                    status: true,
                    patch,
                    ..
                } => Some(patch.clone()),
                _ => None,
            })
            .expect("status");
        assert_eq!(status["status"]["updatedReplicas"], 2);
        assert_eq!(status["status"]["availableReplicas"], 2);
        assert_eq!(status["status"]["observedGeneration"], 2);
        let conds = status["status"]["conditions"].as_array().unwrap();
        assert!(
            conds
                .iter()
                .any(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable")
        );
        assert!(
            conds
                .iter()
                .any(|c| c["type"] == "Available" && c["status"] == "True")
        );
    }

    #[test]
    fn stalled_rollout_exceeds_its_progress_deadline() {
        let old = deployment(1, "v1");
        let mut d = deployment(1, "v2");
        d["spec"]["progressDeadlineSeconds"] = json!(10);
        let long_ago = o::ts(Timestamp::now() - SignedDuration::from_secs(60));
        d["status"] = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "unavailableReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "lastUpdateTime": long_ago, "lastTransitionTime": long_ago}]});
        d["metadata"]["annotations"] = json!({REVISION: "2"});
        let mut snap = Snapshot::default();
        snap.insert("apps", "deployments", d.clone());
        snap.insert("apps", "replicasets", rs_for(&old, 1, 1, 1));
        snap.insert("apps", "replicasets", rs_for(&d, 2, 1, 0));
        let out = DeploymentController.reconcile("default/web", &snap, Timestamp::now());
        let status = out
            .actions
            .iter()
            .find_map(|a| match a {
                Action::Patch {
                    status: true,
                    patch,
                    ..
                } => Some(patch.clone()),
                _ => None,
            })
            .expect("status");
        let conds = status["status"]["conditions"].as_array().unwrap();
        assert!(
            conds
                .iter()
                .any(|c| c["reason"] == "ProgressDeadlineExceeded" && c["status"] == "False"),
            "{conds:?}"
        );
    }
}
