//! The resource verbs: get, list, create, update, patch, delete,
//! deletecollection, and the status / scale / binding / eviction subresources.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use jiff::Timestamp;
use serde_json::{Value, json};
use weft_api::{Resource, Status, resources};

use super::patch::{self, PatchType};
use super::selectors::{FieldSelector, LabelSelector};
use super::validation::{self, FieldValidation};
use super::{Api, defaults, discovery, protobuf, table, watch};
use crate::store::{self, Failed, Op, Precondition, StoreError};

/// Query parameters the resource endpoints understand.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    pub watch: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<usize>,
    #[serde(rename = "continue")]
    pub continue_: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_watch_bookmarks: Option<bool>,
    pub send_initial_events: Option<bool>,
    pub include_object: Option<String>,
    pub field_validation: Option<String>,
    pub field_manager: Option<String>,
    pub dry_run: Option<String>,
    pub propagation_policy: Option<String>,
    pub grace_period_seconds: Option<i64>,
    pub force: Option<bool>,
    /// pods/log; its other parameters pass through to the node agent as sent.
    pub container: Option<String>,
}

/// A parsed resource path.
pub struct Target {
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

pub type ApiResult = Result<Response, Status>;

/// Everything a verb needs about the request.
pub struct Ctx<'a> {
    pub api: &'a Api,
    pub target: Target,
    pub query: Query,
    pub headers: &'a HeaderMap,
}

pub fn now() -> String {
    crate::time::ts(Timestamp::now())
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> &str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

pub fn json_response(code: StatusCode, v: &Value, warnings: &[String]) -> Response {
    let mut resp = (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response();
    for w in warnings {
        if let Ok(hv) = HeaderValue::from_str(&format!("299 - {w:?}")) {
            resp.headers_mut().append(header::WARNING, hv);
        }
    }
    resp
}

pub fn status_response(s: &Status) -> Response {
    let code = StatusCode::from_u16(s.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &s.to_json(), &[])
}

fn success_status(res: &Resource, name: &str, uid: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
           "details": {"name": name, "group": res.group, "kind": res.plural, "uid": uid}})
}

/// Maps store failures to API errors. Internal details are logged, not sent.
pub fn store_error(res: &Resource, name: &str, e: StoreError) -> Status {
    match e {
        StoreError::Precondition(Failed::NotFound) => {
            Status::not_found(res.group, res.plural, name)
        }
        StoreError::Precondition(Failed::AlreadyExists) => {
            Status::already_exists(res.group, res.plural, name)
        }
        StoreError::Precondition(Failed::Conflict { .. }) => {
            Status::conflict(res.group, res.plural, name)
        }
        StoreError::NotLeader { leader } => Status::unavailable(format!(
            "this member is not the Raft leader; retry (leader: {})",
            leader.as_deref().unwrap_or("unknown")
        )),
        other => {
            tracing::error!(error = %other, "store failure");
            Status::internal()
        }
    }
}

/// Parses `/api/v1/...` or `/apis/{group}/{version}/...`. `Ok(None)` is a
/// discovery document rather than a resource.
pub fn parse_path(path: &str) -> Result<Result<Target, Value>, Status> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g] => {
            return discovery::legacy_group(g)
                .map(Err)
                .ok_or_else(Status::no_route);
        }
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(Status::no_route()),
    };
    if rest.is_empty() {
        return discovery::resource_list(group, version)
            .map(Err)
            .ok_or_else(Status::no_route);
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some(*ns), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            })
        }
        other => (None, other.to_vec()),
    };
    let res = resources::by_plural(group, version, rest[0]).ok_or_else(Status::no_route)?;
    if namespace.is_some() && !res.namespaced {
        return Err(Status::no_route());
    }
    if rest.len() > 3 || rest.iter().any(|s| s.is_empty()) {
        return Err(Status::no_route());
    }
    let sub = rest.get(2).map(|s| s.to_string());
    if let Some(s) = &sub
        && res.subresource(s).is_none()
    {
        return Err(Status::no_route());
    }
    Ok(Ok(Target {
        res,
        namespace: namespace.map(String::from),
        name: rest.get(1).map(|s| s.to_string()),
        sub,
    }))
}

impl Ctx<'_> {
    fn ns(&self) -> &str {
        if self.target.res.namespaced {
            self.target.namespace.as_deref().unwrap_or("")
        } else {
            ""
        }
    }

    fn key(&self, name: &str) -> String {
        let r = self.target.res;
        store::key(r.group, r.plural, self.ns(), name)
    }

    fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or("")
    }

    fn dry_run(&self) -> bool {
        self.query.dry_run.as_deref() == Some("All")
    }

    fn wants_table(&self) -> bool {
        table::wants_table(header_str(self.headers, header::ACCEPT))
    }

    async fn current(&self, name: &str, linearize: bool) -> Result<(u64, Value), Status> {
        let res = self.target.res;
        if linearize {
            self.api
                .store
                .linearize()
                .await
                .map_err(|e| store_error(res, name, e))?;
        }
        self.api
            .store
            .get(&self.key(name))
            .map_err(|e| store_error(res, name, e))?
            .ok_or_else(|| Status::not_found(res.group, res.plural, name))
    }

    async fn put(
        &self,
        name: &str,
        object: Value,
        precondition: Precondition,
    ) -> Result<Value, Status> {
        let res = self.target.res;
        let (_, stored) = self
            .api
            .store
            .write(Op::Put {
                key: self.key(name),
                object,
                precondition,
            })
            .await
            .map_err(|e| store_error(res, name, e))?;
        Ok(stored.unwrap_or(Value::Null))
    }

    /// The object (or a Table of it) as the client asked.
    fn respond(&self, code: StatusCode, obj: &Value, warnings: &[String]) -> Response {
        if self.wants_table() {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            let t = table::render(
                self.target.res.kind,
                &[obj],
                rv,
                None,
                self.query.include_object.as_deref().unwrap_or("Metadata"),
                true,
            );
            return json_response(code, &t, warnings);
        }
        json_response(code, obj, warnings)
    }
}

/// Decodes a request body by its Content-Type into the resource's JSON form.
fn decode_body(
    headers: &HeaderMap,
    body: &Bytes,
    res: &Resource,
    kind: (&str, &str, &str),
) -> Result<Value, Status> {
    let ct = header_str(headers, header::CONTENT_TYPE);
    let media = ct.split(';').next().unwrap_or("").trim();
    if body.is_empty() {
        return Err(Status::bad_request(
            "the request body is empty; expected a JSON, YAML or protobuf object",
        ));
    }
    let v: Value = match media {
        "" | "application/json" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            Status::bad_request(format!("couldn't decode the request body as JSON: {e}"))
        })?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| {
                Status::bad_request(format!("couldn't decode the request body as YAML: {e}"))
            })?,
        "application/vnd.kubernetes.protobuf" => {
            let av = if kind.0.is_empty() {
                kind.1.to_string()
            } else {
                format!("{}/{}", kind.0, kind.1)
            };
            protobuf::decode(body, &av, kind.2)?
        }
        other => return Err(Status::unsupported_media_type(other)),
    };
    if !v.is_object() {
        return Err(Status::bad_request(format!(
            "the request body must be a JSON object describing a {}",
            res.kind
        )));
    }
    Ok(v)
}

/// Checks (or fills in) apiVersion and kind against what the URL serves.
fn check_type(obj: &mut Value, kind: (&str, &str, &str)) -> Result<(), Status> {
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

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("just ensured")
}

fn rv_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn parse_rv(s: &str) -> Result<u64, Status> {
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
fn admit(
    ctx: &Ctx<'_>,
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
    let fv = FieldValidation::parse(ctx.query.field_validation.as_deref())?;
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
async fn allocate(ctx: &Ctx<'_>, obj: &mut Value, old: Option<&Value>) -> Result<(), Status> {
    if ctx.target.res.kind != "Service" || ctx.target.sub.is_some() || ctx.dry_run() {
        return Ok(());
    }
    super::services::allocate(&ctx.api.store, &ctx.api.services, obj, old).await
}

async fn ensure_namespace(ctx: &Ctx<'_>) -> Result<(), Status> {
    if !ctx.target.res.namespaced {
        return Ok(());
    }
    let ns = ctx.ns();
    let ns_res = resources::by_plural("", "v1", "namespaces").expect("namespaces served");
    match ctx
        .api
        .store
        .get(&store::key("", "namespaces", "", ns))
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

pub async fn create(ctx: &Ctx<'_>, body: &Bytes) -> ApiResult {
    let res = ctx.target.res;
    let obj = decode_body(ctx.headers, body, res, (res.group, res.version, res.kind))?;
    let (mut obj, warnings) = admit(ctx, obj, None)?;
    ensure_namespace(ctx).await?;
    allocate(ctx, &mut obj, None).await?;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if ctx.dry_run() {
        return Ok(ctx.respond(StatusCode::CREATED, &obj, &warnings));
    }
    let stored = ctx.put(&name, obj, Precondition::Absent).await?;
    Ok(ctx.respond(StatusCode::CREATED, &stored, &warnings))
}

pub async fn get(ctx: &Ctx<'_>) -> ApiResult {
    let linearize = ctx
        .query
        .resource_version
        .as_deref()
        .is_none_or(str::is_empty);
    let (_, obj) = ctx.current(ctx.name(), linearize).await?;
    match ctx.target.sub.as_deref() {
        Some("scale") => Ok(json_response(StatusCode::OK, &scale_of(&obj), &[])),
        _ => Ok(ctx.respond(StatusCode::OK, &obj, &[])),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    start: String,
}

/// Collects matching objects, page by page from the store.
pub fn collect(
    ctx: &Ctx<'_>,
    labels: &LabelSelector,
    fields: &FieldSelector,
    limit: Option<usize>,
    start_after: Option<String>,
) -> Result<(u64, Vec<Value>, Option<String>), Status> {
    let res = ctx.target.res;
    let ns = if res.namespaced {
        ctx.target.namespace.as_deref()
    } else {
        None
    };
    let matches = |o: &Value| labels.matches(o) && fields.matches(o);
    if let Some(name) = fields.pinned_name()
        && (ns.is_some() || !res.namespaced)
    {
        let rev = ctx.api.store.revision();
        let item = ctx
            .api
            .store
            .get(&ctx.key(name))
            .map_err(|e| store_error(res, name, e))?;
        return Ok((
            rev,
            item.map(|(_, o)| o)
                .filter(|o| matches(o))
                .into_iter()
                .collect(),
            None,
        ));
    }
    let prefix = store::prefix(res.group, res.plural, ns);
    let mut start = start_after;
    let mut items = Vec::new();
    let mut revision = None;
    const CHUNK: usize = 1000;
    loop {
        let (rev, page, more) = ctx
            .api
            .store
            .list(&prefix, start.as_deref(), Some(CHUNK))
            .map_err(|e| store_error(res, "", e))?;
        revision.get_or_insert(rev);
        let last = page.last().map(|(k, _)| k.clone());
        for (key, obj) in page {
            if !matches(&obj) {
                continue;
            }
            items.push(obj);
            if limit.is_some_and(|l| items.len() >= l) {
                let more_after = more || last.as_deref() != Some(key.as_str());
                return Ok((revision.unwrap_or(0), items, more_after.then_some(key)));
            }
        }
        if !more {
            return Ok((revision.unwrap_or(0), items, None));
        }
        start = last;
    }
}

pub async fn list(ctx: &Ctx<'_>) -> ApiResult {
    let res = ctx.target.res;
    let labels = LabelSelector::parse(ctx.query.label_selector.as_deref().unwrap_or(""))?;
    let fields = FieldSelector::parse(ctx.query.field_selector.as_deref().unwrap_or(""), res.kind)?;
    if ctx.query.resource_version.as_deref() != Some("0") {
        ctx.api
            .store
            .linearize()
            .await
            .map_err(|e| store_error(res, "", e))?;
    }
    let (token_rv, start) = match ctx.query.continue_.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => {
            let t: ContinueToken = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| {
                    Status::bad_request(
                        "continue key is not valid: it is not a token this server issued",
                    )
                })?;
            (Some(t.rv), Some(t.start))
        }
        None => (None, None),
    };
    let limit = ctx.query.limit.filter(|l| *l > 0);
    let (rev, items, next) = collect(ctx, &labels, &fields, limit, start)?;
    let rev = token_rv.unwrap_or(rev);
    let cont = next.map(|start| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&ContinueToken { rv: rev, start }).unwrap_or_default())
    });
    if ctx.wants_table() {
        let refs: Vec<&Value> = items.iter().collect();
        let include = ctx.query.include_object.as_deref().unwrap_or("Metadata");
        let t = table::render(
            res.kind,
            &refs,
            &rev.to_string(),
            cont.as_deref(),
            include,
            true,
        );
        return Ok(json_response(StatusCode::OK, &t, &[]));
    }
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    let list = json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": meta, "items": items});
    Ok(json_response(StatusCode::OK, &list, &[]))
}

/// If the object is being deleted and nothing holds it any more, remove it.
async fn finish_if_released(ctx: &Ctx<'_>, name: &str, stored: &Value) -> Result<bool, Status> {
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
        .api
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
async fn update_with<F>(ctx: &Ctx<'_>, mut change: F) -> Result<(Value, Vec<String>), Status>
where
    F: FnMut(&Value) -> Result<(Value, Option<u64>), Status>,
{
    let name = ctx.name().to_string();
    let res = ctx.target.res;
    for _ in 0..8 {
        let (rev, cur) = ctx.current(&name, false).await?;
        let (new, pinned) = change(&cur)?;
        if pinned.is_some_and(|p| p != rev) {
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
            return Ok((cur, warnings));
        }
        match ctx
            .api
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
            Err(StoreError::Precondition(Failed::Conflict { .. })) if pinned.is_none() => continue,
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

pub async fn update(ctx: &Ctx<'_>, body: &Bytes) -> ApiResult {
    let res = ctx.target.res;
    let (g, v, k) = match ctx.target.sub.as_deref() {
        Some(s) => res.subresource_kind(res.subresource(s).expect("routed")),
        None => (res.group, res.version, res.kind),
    };
    let body = decode_body(ctx.headers, body, res, (g, v, k))?;
    let pinned = rv_of(&body).map(parse_rv).transpose()?;
    let sub = ctx.target.sub.clone();
    let (stored, warnings) = match sub.as_deref() {
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
    Ok(ctx.respond(StatusCode::OK, &stored, &warnings))
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
fn scale_of(obj: &Value) -> Value {
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

pub async fn patch(ctx: &Ctx<'_>, body: &Bytes) -> ApiResult {
    let res = ctx.target.res;
    let ct = header_str(ctx.headers, header::CONTENT_TYPE);
    let ptype =
        PatchType::from_content_type(ct).ok_or_else(|| Status::unsupported_media_type(ct))?;
    let patch_doc: Value = if ptype == PatchType::Apply {
        serde_yaml::from_slice(body)
            .map_err(|e| Status::bad_request(format!("couldn't decode the apply patch: {e}")))?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Status::bad_request(format!("couldn't decode the patch as JSON: {e}")))?
    };
    if ptype == PatchType::Apply {
        if ctx.query.field_manager.as_deref().is_none_or(str::is_empty) {
            return Err(Status::bad_request(
                "PATCH, application/apply-patch+yaml: fieldManager is required for apply requests",
            ));
        }
        // Server-side apply of an absent object creates it.
        if ctx.target.sub.is_none()
            && ctx
                .api
                .store
                .get(&ctx.key(ctx.name()))
                .map_err(|e| store_error(res, ctx.name(), e))?
                .is_none()
        {
            let (mut obj, warnings) = admit(ctx, patch_doc, None)?;
            ensure_namespace(ctx).await?;
            allocate(ctx, &mut obj, None).await?;
            if ctx.dry_run() {
                return Ok(ctx.respond(StatusCode::CREATED, &obj, &warnings));
            }
            let stored = ctx.put(ctx.name(), obj, Precondition::Absent).await?;
            return Ok(ctx.respond(StatusCode::CREATED, &stored, &warnings));
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
    let (stored, warnings) = match sub.as_deref() {
        Some("scale") => {
            let (stored, w) = update_with(ctx, |cur| {
                let (scale, pinned) = apply_to(&scale_of(cur))?;
                let replicas = scale_replicas(&scale, ctx.name())?;
                Ok((with_replicas(cur, replicas), pinned))
            })
            .await?;
            return Ok(json_response(StatusCode::OK, &scale_of(&stored), &w));
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
    Ok(ctx.respond(StatusCode::OK, &stored, &warnings))
}

/// DeleteOptions from the body, with query parameters as fallbacks.
#[derive(Default)]
struct DeleteOpts {
    grace: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    rv: Option<String>,
}

fn delete_opts(ctx: &Ctx<'_>, body: &Bytes) -> Result<DeleteOpts, Status> {
    let mut o = DeleteOpts {
        grace: ctx.query.grace_period_seconds,
        propagation: ctx.query.propagation_policy.clone(),
        ..Default::default()
    };
    if !body.is_empty() {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| Status::bad_request(format!("couldn't decode DeleteOptions: {e}")))?;
        if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
            o.grace = Some(g);
        }
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            o.propagation = Some(p.to_string());
        }
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
            o.propagation = Some("Orphan".into());
        }
        o.uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from);
        o.rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from);
    }
    if let Some(p) = &o.propagation
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(Status::bad_request(format!(
            "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
        )));
    }
    if o.grace.is_some_and(|g| g < 0) {
        return Err(Status::bad_request(
            "gracePeriodSeconds: Invalid value: must be greater than or equal to 0",
        ));
    }
    Ok(o)
}

async fn delete_one(ctx: &Ctx<'_>, name: &str, opts: &DeleteOpts) -> ApiResult {
    let res = ctx.target.res;
    for _ in 0..8 {
        let (rev, cur) = ctx.current(name, false).await?;
        let uid = cur
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(want) = &opts.uid
            && *want != uid
        {
            return Err(Status::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                ),
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
        let phase = cur
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        let pod_grace = if res.kind == "Pod"
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
        };
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
                return Ok(ctx.respond(StatusCode::OK, &cur, &[]));
            }
            let deadline = Timestamp::now() + jiff::SignedDuration::from_secs(pod_grace);
            meta.insert("deletionTimestamp".into(), json!(crate::time::ts(deadline)));
            meta.insert("deletionGracePeriodSeconds".into(), json!(pod_grace));
            if !finalizers.is_empty() {
                meta.insert("finalizers".into(), Value::Array(finalizers));
            }
            if res.kind == "Namespace" {
                marked["status"]["phase"] = json!("Terminating");
            }
            if ctx.dry_run() {
                return Ok(ctx.respond(StatusCode::OK, &marked, &[]));
            }
            match ctx
                .api
                .store
                .write(Op::Put {
                    key: ctx.key(name),
                    object: marked,
                    precondition: Precondition::Revision(rev),
                })
                .await
            {
                Ok((_, stored)) => {
                    return Ok(ctx.respond(StatusCode::OK, &stored.unwrap_or_default(), &[]));
                }
                Err(StoreError::Precondition(Failed::Conflict { .. })) => continue,
                Err(e) => return Err(store_error(res, name, e)),
            }
        }
        if ctx.dry_run() {
            return Ok(ctx.respond(StatusCode::OK, &cur, &[]));
        }
        match ctx
            .api
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
                    ctx.respond(StatusCode::OK, &last.unwrap_or_default(), &[])
                } else {
                    json_response(StatusCode::OK, &success_status(res, name, &uid), &[])
                });
            }
            Err(StoreError::Precondition(Failed::Conflict { .. })) => continue,
            Err(e) => return Err(store_error(res, name, e)),
        }
    }
    Err(Status::conflict(res.group, res.plural, name))
}

pub async fn delete(ctx: &Ctx<'_>, body: &Bytes) -> ApiResult {
    let opts = delete_opts(ctx, body)?;
    delete_one(ctx, ctx.name(), &opts).await
}

pub async fn delete_collection(ctx: &Ctx<'_>, body: &Bytes) -> ApiResult {
    let res = ctx.target.res;
    let opts = delete_opts(ctx, body)?;
    let labels = LabelSelector::parse(ctx.query.label_selector.as_deref().unwrap_or(""))?;
    let fields = FieldSelector::parse(ctx.query.field_selector.as_deref().unwrap_or(""), res.kind)?;
    let (_, items, _) = collect(ctx, &labels, &fields, None, None)?;
    let mut deleted = Vec::new();
    for item in &items {
        let name = item
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        match delete_one(ctx, name, &opts).await {
            Ok(_) => deleted.push(item.clone()),
            Err(s) if s.code == 404 => {}
            Err(s) => return Err(s),
        }
    }
    let list = json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                      "metadata": {"resourceVersion": ctx.api.store.revision().to_string()}, "items": deleted});
    Ok(json_response(StatusCode::OK, &list, &[]))
}

/// POST pods/{name}/binding: assign a node, once.
pub async fn bind(ctx: &Ctx<'_>, body: &Bytes) -> ApiResult {
    let binding = decode_body(ctx.headers, body, ctx.target.res, ("", "v1", "Binding"))?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Status::invalid(
                "Binding",
                ctx.name(),
                vec![weft_api::Cause::required("target.name")],
            )
        })?;
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
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &[],
    ))
}

/// POST pods/{name}/eviction: a graceful delete.
pub async fn evict(ctx: &Ctx<'_>, body: &Bytes) -> ApiResult {
    let ev = decode_body(
        ctx.headers,
        body,
        ctx.target.res,
        ("policy", "v1", "Eviction"),
    )?;
    let mut opts = DeleteOpts::default();
    if let Some(d) = ev.get("deleteOptions") {
        opts.grace = d.get("gracePeriodSeconds").and_then(Value::as_i64);
    }
    delete_one(ctx, ctx.name(), &opts).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &[],
    ))
}

/// Routes one resource request to its verb.
pub async fn dispatch(
    api: &Api,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let target = match parse_path(path) {
        Ok(Ok(t)) => t,
        Ok(Err(doc)) => return json_response(StatusCode::OK, &doc, &[]),
        Err(s) => return status_response(&s),
    };
    let raw_query = query;
    let query: Query = match serde_urlencoded::from_str(query) {
        Ok(q) => q,
        Err(e) => {
            return status_response(&Status::bad_request(format!(
                "invalid query parameters: {e}"
            )));
        }
    };
    let ctx = Ctx {
        api,
        target,
        query,
        headers,
    };
    let is_watch = matches!(ctx.query.watch.as_deref(), Some("true" | "1"));
    let res = ctx.target.res;
    let result = match (method, ctx.target.name.is_some(), ctx.target.sub.as_deref()) {
        (&Method::GET, false, _) if is_watch => watch::serve(&ctx).await,
        (&Method::GET, false, _) => list(&ctx).await,
        (&Method::POST, false, _) => create(&ctx, &body).await,
        (&Method::DELETE, false, _) => delete_collection(&ctx, &body).await,
        (&Method::GET, true, None | Some("status" | "scale")) => get(&ctx).await,
        (&Method::PUT, true, None | Some("status" | "scale" | "finalize")) => {
            update(&ctx, &body).await
        }
        (&Method::PATCH, true, None | Some("status" | "scale")) => patch(&ctx, &body).await,
        (&Method::DELETE, true, None) => delete(&ctx, &body).await,
        (&Method::POST, true, Some("binding")) => bind(&ctx, &body).await,
        (&Method::POST, true, Some("eviction")) => evict(&ctx, &body).await,
        (&Method::GET, true, Some("log")) => pod_log(&ctx, raw_query).await,
        (m, _, sub) => Err(Status::method_not_allowed(
            m.as_str(),
            &format!(
                "{}{}",
                res.plural,
                sub.map(|s| format!("/{s}")).unwrap_or_default()
            ),
        )),
    };
    result.unwrap_or_else(|s| status_response(&s))
}

/// Logs are served by the node agent that runs the pod. Until an agent
/// registers a log endpoint, say so precisely rather than pretend.
/// `pods/log`: checks the container as the API server does, then streams
/// from the agent of the pod's node (kubelet's `containerLogs`).
async fn pod_log(ctx: &Ctx<'_>, raw_query: &str) -> ApiResult {
    let name = ctx.name();
    let (_, pod) = ctx.current(name, false).await?;
    let names: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let q = &ctx.query;
    let container = match (&q.container, names.as_slice()) {
        (Some(c), _) if names.contains(&c.as_str()) => c.clone(),
        (Some(c), _) => {
            return Err(Status::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        (None, [only]) => only.to_string(),
        (None, _) => {
            return Err(Status::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            )));
        }
    };
    let Some(node) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return Err(Status::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let unavailable =
        || Status::unavailable(format!("no node agent on node {node:?} is serving logs"));
    let node_obj = ctx
        .api
        .store
        .get(&store::key("", "nodes", "", node))
        .map_err(|_| unavailable())?
        .map(|(_, n)| n)
        .ok_or_else(unavailable)?;
    let ip = node_obj
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .and_then(|a| a.get("address").and_then(Value::as_str))
        .ok_or_else(unavailable)?;
    let port = node_obj
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .filter(|p| *p > 0)
        .ok_or_else(unavailable)?;
    // follow, previous, timestamps, tailLines, sinceSeconds, sinceTime,
    // limitBytes: the agent reads and checks them (kubelet's parameters).
    let params: Vec<&str> = raw_query
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("container="))
        .collect();
    let ns = ctx.target.namespace.as_deref().unwrap_or("default");
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let url = format!(
        "http://{host}:{port}/containerLogs/{ns}/{name}/{container}?{}",
        params.join("&")
    );
    let resp = ctx
        .api
        .agents
        .get(url)
        .bearer_auth(ctx.api.agent_token())
        .send()
        .await
        .map_err(|e| Status::unavailable(format!("node agent on {node:?}: {e}")))?;
    let code = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if !code.is_success() {
        let body = resp.bytes().await.unwrap_or_default();
        let status = serde_json::from_slice(&body)
            .ok()
            .and_then(|v| Status::from_json(&v))
            .unwrap_or_else(|| {
                Status::new(
                    code.as_u16(),
                    "InternalError",
                    String::from_utf8_lossy(&body),
                )
            });
        return Err(status);
    }
    let body = axum::body::Body::from_stream(resp.bytes_stream());
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response())
}

/// Objects the cluster starts with: the standard namespaces.
pub async fn bootstrap(api: &Api) -> Result<(), StoreError> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let mut obj = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now()}});
        defaults::apply("Namespace", &mut obj);
        match api
            .store
            .write(Op::Put {
                key: store::key("", "namespaces", "", ns),
                object: obj,
                precondition: Precondition::Absent,
            })
            .await
        {
            Ok(_) | Err(StoreError::Precondition(Failed::AlreadyExists)) => {}
            // Bootstrapping is the leader's job; followers receive the result.
            Err(StoreError::NotLeader { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
