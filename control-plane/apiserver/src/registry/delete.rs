//! Deletes: preconditions, finalizers and graceful deletion (pods with a
//! node, finalizers, namespaces), deletecollection, and the binding
//! subresource, which like a delete only ever moves an object forward.

use jiff::Timestamp;
use serde_json::{Value, json};
use weft_api::{Resource, Status};

use super::admit::meta_mut;
use super::write::update_with;
use super::{ListOptions, Req};
use crate::status::store_error;
use weft_store::{Failed, Op, Precondition, StoreError};

fn success_status(res: &Resource, name: &str, uid: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
           "details": {"name": name, "group": res.group, "kind": res.plural, "uid": uid}})
}

/// DeleteOptions: the grace period, propagation policy and preconditions.
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub grace: Option<i64>,
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub rv: Option<String>,
}

impl DeleteOptions {
    /// A DeleteOptions object laid over these (the query's) options, then checked.
    pub fn overlay(mut self, v: Option<&Value>) -> Result<DeleteOptions, Status> {
        if let Some(v) = v {
            if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
                self.grace = Some(g);
            }
            if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
                self.propagation = Some(p.to_string());
            }
            if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
                self.propagation = Some("Orphan".into());
            }
            self.uid = v
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(String::from);
            self.rv = v
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(String::from);
        }
        if let Some(p) = &self.propagation
            && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
        {
            return Err(Status::bad_request(format!(
                "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
        if self.grace.is_some_and(|g| g < 0) {
            return Err(Status::bad_request(
                "gracePeriodSeconds: Invalid value: must be greater than or equal to 0",
            ));
        }
        Ok(self)
    }
}

/// What a delete answers.
#[derive(Debug)]
pub enum Deleted {
    /// The object: marked for graceful deletion, or (pods) as it was removed.
    Object(Value),
    /// Removed; a `Success` Status names it.
    Gone(Value),
}

impl Deleted {
    pub fn into_value(self) -> Value {
        match self {
            Deleted::Object(v) | Deleted::Gone(v) => v,
        }
    }
}

/// The uid and resourceVersion preconditions of DeleteOptions.
fn check_preconditions(opts: &DeleteOptions, uid: &str, rev: u64) -> Result<(), Status> {
    if let Some(want) = &opts.uid
        && *want != uid
    {
        return Err(Status::new(
            409,
            "Conflict",
            format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
        ));
    }
    if let Some(want) = &opts.rv
        && *want != rev.to_string()
    {
        return Err(Status::new(
            409,
            "Conflict",
            format!(
                "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rev}"
            ),
        ));
    }
    Ok(())
}

/// The object's finalizers plus those its propagation policy adds.
fn finalizers_for(cur: &Value, opts: &DeleteOptions) -> Vec<Value> {
    let mut finalizers: Vec<Value> = cur
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (policy, f) in [("Orphan", "orphan"), ("Foreground", "foregroundDeletion")] {
        if opts.propagation.as_deref() == Some(policy) && !finalizers.contains(&json!(f)) {
            finalizers.push(json!(f));
        }
    }
    finalizers
}

/// A bound, unfinished pod is deleted gracefully (its grace period, or the
/// request's); everything else at once.
fn grace_period(kind: &str, cur: &Value, opts: &DeleteOptions) -> i64 {
    let phase = cur
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if kind == "Pod"
        && cur
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        && !matches!(phase, "Succeeded" | "Failed")
    {
        let default = cur
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        opts.grace.unwrap_or(default)
    } else {
        0
    }
}

pub(super) async fn delete_one(
    ctx: &Req<'_>,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Deleted, Status> {
    let res = ctx.target.res;
    // As in an update (write.rs `update_with`): this member's own state is
    // good for an attempt, only a linearized read for NotFound or Conflict.
    let mut fresh = false;
    for _ in 0..8 {
        let (rev, cur) = match ctx.current(name, fresh).await {
            Err(s) if s.code == 404 && !fresh => {
                fresh = true;
                continue;
            }
            read => read?,
        };
        let uid = cur
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Err(e) = check_preconditions(opts, &uid, rev) {
            if fresh {
                return Err(e);
            }
            fresh = true;
            continue;
        }
        let finalizers = finalizers_for(&cur, opts);
        let pod_grace = grace_period(res.kind, &cur, opts);
        let ns_held = res.kind == "Namespace"
            && cur
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
        if !finalizers.is_empty() || pod_grace > 0 || ns_held {
            // Graceful: mark for deletion and let the owner (kubelet, controller) finish.
            let mut marked = cur.clone();
            let meta = meta_mut(&mut marked);
            let already = meta.get("deletionTimestamp").is_some();
            let current_grace = meta
                .get("deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            if already
                && current_grace.is_none_or(|g| g <= pod_grace)
                && finalizers.len()
                    == cur
                        .pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
            {
                return Ok(Deleted::Object(cur));
            }
            let deadline = Timestamp::now() + jiff::SignedDuration::from_secs(pod_grace);
            meta.insert(
                "deletionTimestamp".into(),
                json!(weft_cluster::time::ts(deadline)),
            );
            meta.insert("deletionGracePeriodSeconds".into(), json!(pod_grace));
            if !finalizers.is_empty() {
                meta.insert("finalizers".into(), Value::Array(finalizers));
            }
            if res.kind == "Namespace" {
                marked["status"]["phase"] = json!("Terminating");
            }
            if ctx.dry_run() {
                return Ok(Deleted::Object(marked));
            }
            match ctx
                .reg
                .store
                .write(Op::Put {
                    key: ctx.key(name),
                    object: marked,
                    precondition: Precondition::Revision(rev),
                })
                .await
            {
                Ok((_, stored)) => {
                    return Ok(Deleted::Object(stored.unwrap_or_default()));
                }
                Err(StoreError::Precondition(Failed::Conflict { .. })) => {
                    fresh = true;
                    continue;
                }
                Err(e) => return Err(store_error(res, name, e)),
            }
        }
        if ctx.dry_run() {
            return Ok(Deleted::Object(cur));
        }
        match ctx
            .reg
            .store
            .write(Op::Delete {
                key: ctx.key(name),
                precondition: Precondition::Revision(rev),
            })
            .await
        {
            Ok((_, last)) => {
                // Pods answer with the object, as kube-apiserver does; others with a Status.
                return Ok(if res.kind == "Pod" {
                    Deleted::Object(last.unwrap_or_default())
                } else {
                    Deleted::Gone(success_status(res, name, &uid))
                });
            }
            Err(StoreError::Precondition(Failed::Conflict { .. })) => fresh = true,
            Err(e) => return Err(store_error(res, name, e)),
        }
    }
    Err(Status::conflict(res.group, res.plural, name))
}

pub(super) async fn delete_collection(
    ctx: &Req<'_>,
    l: &ListOptions,
    opts: &DeleteOptions,
) -> Result<Value, Status> {
    let res = ctx.target.res;
    let (_, items, _) = ctx
        .reg
        .collect(ctx.target, &l.labels, &l.fields, None, None)?;
    let mut deleted = Vec::new();
    for item in &items {
        let name = item
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        match delete_one(ctx, name, opts).await {
            Ok(_) => deleted.push(item.clone()),
            Err(s) if s.code == 404 => {}
            Err(s) => return Err(s),
        }
    }
    let list = json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                      "metadata": {"resourceVersion": ctx.reg.store.revision().to_string()}, "items": deleted});
    Ok(list)
}

/// `pods/{name}/binding`: assigns a node, once.
pub(super) async fn bind(ctx: &Req<'_>, node: &str) -> Result<(), Status> {
    let name = ctx.name().to_string();
    update_with(ctx, |cur| {
        if let Some(existing) = cur.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            return Err(Status::new(409, "Conflict", format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{existing}\"")));
        }
        if cur.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(Status::new(409, "Conflict", format!("pod {name} is being deleted, cannot be assigned to a host")));
        }
        let mut out = cur.clone();
        out["spec"]["nodeName"] = json!(node);
        Ok((out, None))
    })
    .await?;
    Ok(())
}
