//! Admission for creates and updates: the typed decode, system fields,
//! defaults and validation, ClusterIP allocation, and the namespace check.

use serde_json::{Value, json};
use weft_api::{Status, resources};

use super::{Req, now};
use crate::status::store_error;
use crate::{defaults, services, validation};

/// Checks (or fills in) apiVersion and kind against what the URL serves.
pub(super) fn check_type(obj: &mut Value, kind: (&str, &str, &str)) -> Result<(), Status> {
    let want_av = if kind.0.is_empty() {
        kind.1.to_string()
    } else {
        format!("{}/{}", kind.0, kind.1)
    };
    let m = obj.as_object_mut().expect("checked object");
    match m.get("apiVersion").and_then(Value::as_str) {
        None => {
            m.insert("apiVersion".into(), json!(want_av));
        }
        Some(av) if av != want_av => {
            return Err(Status::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
        _ => {}
    }
    match m.get("kind").and_then(Value::as_str) {
        None => {
            m.insert("kind".into(), json!(kind.2));
        }
        Some(k) if k != kind.2 => {
            return Err(Status::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({}) for this URL",
                kind.2
            )));
        }
        _ => {}
    }
    Ok(())
}

pub(super) fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("just ensured")
}

pub(super) fn rv_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

pub(super) fn parse_rv(s: &str) -> Result<u64, Status> {
    s.parse().map_err(|_| {
        Status::bad_request(format!(
            "invalid resourceVersion {s:?}: must be a decimal revision"
        ))
    })
}

fn random_suffix() -> String {
    // Kubernetes' alphabet: no vowels (no accidental words) and no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Admission for creates and updates: decode into the typed schema, default,
/// carry over what the client may not change, and validate.
pub(super) fn admit(
    ctx: &Req<'_>,
    mut obj: Value,
    old: Option<&Value>,
) -> Result<(Value, Vec<String>), Status> {
    let res = ctx.target.res;
    check_type(&mut obj, (res.group, res.version, res.kind))?;
    let url_ns = ctx.ns().to_string();
    {
        let meta = meta_mut(&mut obj);
        if res.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("namespace".into(), json!(url_ns));
                }
                Some(ns) if ns != url_ns => {
                    return Err(Status::bad_request(format!(
                        "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({url_ns})"
                    )));
                }
                _ => {}
            }
        } else {
            meta.remove("namespace");
        }
        if let Some(url_name) = ctx.target.name.as_deref() {
            match meta.get("name").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("name".into(), json!(url_name));
                }
                Some(n) if n != url_name => {
                    return Err(Status::bad_request(format!(
                        "the name of the object ({n}) does not match the name on the URL ({url_name})"
                    )));
                }
                _ => {}
            }
        }
    }
    let fv = ctx.opts.field_validation;
    let (mut obj, warnings) = validation::decode(res.kind, obj, fv)?;

    match old {
        None => {
            let meta = meta_mut(&mut obj);
            let has_name = meta
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            if !has_name
                && let Some(g) = meta
                    .get("generateName")
                    .and_then(Value::as_str)
                    .filter(|g| !g.is_empty())
            {
                let name = format!("{g}{}", random_suffix());
                meta.insert("name".into(), json!(name));
            }
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), json!(now()));
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "managedFields",
            ] {
                meta.remove(k);
            }
            if obj.get("spec").is_some() {
                meta_mut(&mut obj).insert("generation".into(), json!(1));
            }
            // Status belongs to controllers: a create starts from a clean one.
            if res.has_status() && res.kind != "Node" {
                obj.as_object_mut().expect("object").remove("status");
            }
        }
        Some(old) => {
            let meta = meta_mut(&mut obj);
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old.pointer(&format!("/metadata/{k}")) {
                    Some(v) => meta.insert(k.into(), v.clone()),
                    None => meta.remove(k),
                };
            }
            // Writes to the main resource leave status alone; /status writes own it.
            if res.has_status() && ctx.target.sub.as_deref() != Some("status") {
                match old.get("status") {
                    Some(s) => obj["status"] = s.clone(),
                    None => {
                        obj.as_object_mut().expect("object").remove("status");
                    }
                }
            }
        }
    }
    defaults::apply(res.kind, &mut obj);
    match old {
        None if res.kind == "Pod" => {
            let qos = defaults::qos_class(&obj["spec"]);
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        Some(old) if obj.get("spec") != old.get("spec") && obj.get("spec").is_some() => {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut obj).insert("generation".into(), json!(g + 1));
        }
        _ => {}
    }
    validation::validate(res, &obj)?;
    Ok((obj, warnings))
}

/// Services get their ClusterIP and NodePorts before they are written (not on dry runs).
pub(super) async fn allocate(
    ctx: &Req<'_>,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), Status> {
    if ctx.target.res.kind != "Service" || ctx.target.sub.is_some() || ctx.dry_run() {
        return Ok(());
    }
    services::allocate(&ctx.reg.store, &ctx.reg.services, obj, old).await
}

pub(super) async fn ensure_namespace(ctx: &Req<'_>) -> Result<(), Status> {
    if !ctx.target.res.namespaced {
        return Ok(());
    }
    let ns = ctx.ns();
    let ns_res = resources::by_plural("", "v1", "namespaces").expect("namespaces served");
    match ctx
        .reg
        .store
        .get(&weft_store::key("", "namespaces", "", ns))
        .map_err(|e| store_error(ns_res, ns, e))?
    {
        None => Err(Status::not_found("", "namespaces", ns)),
        Some((_, n)) if n.pointer("/metadata/deletionTimestamp").is_some() => Err(Status::new(
            403,
            "Forbidden",
            format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        )),
        Some(_) => Ok(()),
    }
}
