//! Creates, updates and patches: admission, then a compare-and-swap write
//! retried on conflicts, with the status, scale and finalize subresources.

use serde_json::{Value, json};
use weft_api::Status;

use super::admit::{admit, allocate, ensure_namespace, meta_mut, parse_rv, rv_of};
use super::{Req, Written};
use crate::patch::{self, PatchType};
use crate::status::store_error;
use weft_store::{Failed, Op, Precondition, StoreError};

pub(super) async fn create(ctx: &Req<'_>, obj: Value) -> Result<Written, Status> {
    let (mut obj, warnings) = admit(ctx, obj, None)?;
    ensure_namespace(ctx).await?;
    allocate(ctx, &mut obj, None).await?;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if ctx.dry_run() {
        return Ok(created(obj, warnings));
    }
    let stored = ctx.put(&name, obj, Precondition::Absent).await?;
    Ok(created(stored, warnings))
}

fn created(object: Value, warnings: Vec<String>) -> Written {
    Written {
        object,
        warnings,
        created: true,
    }
}

fn replaced((object, warnings): (Value, Vec<String>)) -> Written {
    Written {
        object,
        warnings,
        created: false,
    }
}

/// If the object is being deleted and nothing holds it any more, remove it.
async fn finish_if_released(ctx: &Req<'_>, name: &str, stored: &Value) -> Result<bool, Status> {
    let deleting = stored.pointer("/metadata/deletionTimestamp").is_some();
    let held = stored
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
        || stored
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
            && ctx.target.res.kind == "Namespace";
    let graceful_pod = ctx.target.res.kind == "Pod"
        && stored
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0;
    if !deleting || held || graceful_pod {
        return Ok(false);
    }
    let Some(rv) = rv_of(stored) else {
        return Ok(false);
    };
    let pre = Precondition::Revision(parse_rv(rv)?);
    match ctx
        .reg
        .store
        .write(Op::Delete {
            key: ctx.key(name),
            precondition: pre,
        })
        .await
    {
        Ok(_) | Err(StoreError::Precondition(_)) => Ok(true),
        Err(e) => Err(store_error(ctx.target.res, name, e)),
    }
}

/// Applies `change` to the current object and writes it with compare-and-swap,
/// retrying on conflicts unless the client pinned a resourceVersion.
pub(super) async fn update_with<F>(
    ctx: &Req<'_>,
    mut change: F,
) -> Result<(Value, Vec<String>), Status>
where
    F: FnMut(&Value) -> Result<(Value, Option<u64>), Status>,
{
    let name = ctx.name().to_string();
    let res = ctx.target.res;
    // The first read is this member's own state, which may lag the
    // leader's. It is good for an attempt (the write's precondition is
    // checked where it commits) but not for an answer: NotFound, Conflict
    // and "nothing to change" come only from a linearized read, as
    // kube-apiserver's GuaranteedUpdate refreshes a cached object first.
    let mut fresh = false;
    for _ in 0..8 {
        let (rev, cur) = match ctx.current(&name, fresh).await {
            Err(s) if s.code == 404 && !fresh => {
                fresh = true;
                continue;
            }
            read => read?,
        };
        let (new, pinned) = change(&cur)?;
        if pinned.is_some_and(|p| p != rev) {
            if !fresh {
                fresh = true;
                continue;
            }
            return Err(Status::conflict(res.group, res.plural, &name));
        }
        let (mut obj, warnings) = admit(ctx, new, Some(&cur))?;
        allocate(ctx, &mut obj, Some(&cur)).await?;
        if ctx.dry_run() {
            return Ok((obj, warnings));
        }
        // A no-op update writes nothing and keeps the resourceVersion, as in Kubernetes.
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
        if obj == cur {
            if !fresh {
                fresh = true;
                continue;
            }
            return Ok((cur, warnings));
        }
        match ctx
            .reg
            .store
            .write(Op::Put {
                key: ctx.key(&name),
                object: obj,
                precondition: Precondition::Revision(rev),
            })
            .await
        {
            Ok((_, stored)) => {
                let stored = stored.unwrap_or(Value::Null);
                finish_if_released(ctx, &name, &stored).await?;
                return Ok((stored, warnings));
            }
            Err(StoreError::Precondition(Failed::Conflict { .. })) if pinned.is_none() => {
                fresh = true;
            }
            Err(e) => return Err(store_error(res, &name, e)),
        }
    }
    Err(Status::conflict(res.group, res.plural, &name))
}

/// Replaces only `status` (for /status writes), keeping everything else.
fn with_status_from(cur: &Value, new: &Value) -> Value {
    let mut out = cur.clone();
    match new.get("status") {
        Some(s) => out["status"] = s.clone(),
        None => {
            out.as_object_mut().map(|m| m.remove("status"));
        }
    }
    out
}

pub(super) async fn update(ctx: &Req<'_>, body: Value) -> Result<Written, Status> {
    let pinned = rv_of(&body).map(parse_rv).transpose()?;
    let sub = ctx.target.sub.clone();
    let written = match sub.as_deref() {
        Some("scale") => {
            let replicas = scale_replicas(&body, ctx.name())?;
            let (stored, w) =
                update_with(ctx, |cur| Ok((with_replicas(cur, replicas), pinned))).await?;
            (scale_of(&stored), w)
        }
        Some("status") => {
            update_with(ctx, |cur| Ok((with_status_from(cur, &body), pinned))).await?
        }
        Some("finalize") => {
            update_with(ctx, |cur| {
                let mut out = cur.clone();
                out["spec"]["finalizers"] = body
                    .pointer("/spec/finalizers")
                    .cloned()
                    .unwrap_or(json!([]));
                Ok((out, pinned))
            })
            .await?
        }
        _ => update_with(ctx, |_| Ok((body.clone(), pinned))).await?,
    };
    Ok(replaced(written))
}

/// `spec.replicas` of a Scale body: required, and not negative.
fn scale_replicas(scale: &Value, name: &str) -> Result<i64, Status> {
    match scale.pointer("/spec/replicas").and_then(Value::as_i64) {
        None => Err(Status::invalid(
            "Scale",
            name,
            vec![weft_api::Cause::required("spec.replicas")],
        )),
        Some(r) if r < 0 => Err(Status::invalid(
            "Scale",
            name,
            vec![weft_api::Cause::invalid_value(
                "spec.replicas",
                &r.to_string(),
                "must be greater than or equal to 0",
            )],
        )),
        Some(r) => Ok(r),
    }
}

fn with_replicas(cur: &Value, replicas: i64) -> Value {
    let mut out = cur.clone();
    out["spec"]["replicas"] = json!(replicas);
    out
}

/// The `autoscaling/v1 Scale` view of a Deployment or ReplicaSet.
pub(super) fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
           "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                        "resourceVersion": meta.get("resourceVersion"), "creationTimestamp": meta.get("creationTimestamp")},
           "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
           "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector}})
}

pub(super) async fn patch(
    ctx: &Req<'_>,
    ptype: PatchType,
    patch_doc: Value,
    field_manager: Option<&str>,
) -> Result<Written, Status> {
    let res = ctx.target.res;
    if ptype == PatchType::Apply {
        if field_manager.is_none_or(str::is_empty) {
            return Err(Status::bad_request(
                "PATCH, application/apply-patch+yaml: fieldManager is required for apply requests",
            ));
        }
        // Server-side apply of an absent object creates it.
        if ctx.target.sub.is_none()
            && ctx
                .reg
                .store
                .get(&ctx.key(ctx.name()))
                .map_err(|e| store_error(res, ctx.name(), e))?
                .is_none()
        {
            let (mut obj, warnings) = admit(ctx, patch_doc.clone(), None)?;
            ensure_namespace(ctx).await?;
            allocate(ctx, &mut obj, None).await?;
            if ctx.dry_run() {
                return Ok(created(obj, warnings));
            }
            match ctx.put(ctx.name(), obj, Precondition::Absent).await {
                Ok(stored) => return Ok(created(stored, warnings)),
                // Created meanwhile, or this member's state lagged: patch it.
                Err(s) if s.reason == "AlreadyExists" => {}
                Err(s) => return Err(s),
            }
        }
    }
    let sub = ctx.target.sub.clone();
    let apply_to = |base: &Value| -> Result<(Value, Option<u64>), Status> {
        let patched = patch::apply(ptype, base, &patch_doc)?;
        // A patch that names a resourceVersion is a precondition on it.
        let pinned = match (rv_of(&patched), rv_of(base)) {
            (Some(p), Some(b)) if p != b => Some(parse_rv(p)?),
            _ => None,
        };
        Ok((patched, pinned))
    };
    let written = match sub.as_deref() {
        Some("scale") => {
            let (stored, w) = update_with(ctx, |cur| {
                let (scale, pinned) = apply_to(&scale_of(cur))?;
                let replicas = scale_replicas(&scale, ctx.name())?;
                Ok((with_replicas(cur, replicas), pinned))
            })
            .await?;
            (scale_of(&stored), w)
        }
        Some("status") => {
            update_with(ctx, |cur| {
                let (patched, pinned) = apply_to(cur)?;
                Ok((with_status_from(cur, &patched), pinned))
            })
            .await?
        }
        _ => update_with(ctx, apply_to).await?,
    };
    Ok(replaced(written))
}
