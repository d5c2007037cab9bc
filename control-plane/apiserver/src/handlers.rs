//! HTTP for the resource verbs: each handler decodes the request (path,
//! query, body by Content-Type), calls the registry, and encodes what it
//! answers (JSON, or a Table for kubectl). The verbs themselves live in
//! `registry`.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use weft_api::{Resource, Status, resources};

use super::patch::PatchType;
use super::registry::{DeleteOptions, Deleted, ListOptions, Target, WriteOptions, Written};
use super::selectors::{FieldSelector, LabelSelector};
use super::validation::FieldValidation;
use super::{Api, discovery, protobuf, table, watch};

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

pub type ApiResult = Result<Response, Status>;

/// Everything a verb needs about the request.
pub struct Ctx<'a> {
    pub api: &'a Api,
    pub target: Target,
    pub query: Query,
    pub headers: &'a HeaderMap,
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
    let mut resp = json_response(code, &s.to_json(), &[]);
    // client-go honours the header (not the body field) when it backs off.
    if let Some(secs) = s.details.as_ref().and_then(|d| d.retry_after_seconds) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
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

impl Ctx<'_> {
    fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or("")
    }

    fn wants_table(&self) -> bool {
        table::wants_table(header_str(self.headers, header::ACCEPT))
    }

    fn dry_run(&self) -> bool {
        self.query.dry_run.as_deref() == Some("All")
    }

    fn write_options(&self) -> Result<WriteOptions, Status> {
        Ok(WriteOptions {
            dry_run: self.dry_run(),
            field_validation: FieldValidation::parse(self.query.field_validation.as_deref())?,
        })
    }

    pub fn list_options(&self) -> Result<ListOptions, Status> {
        let q = &self.query;
        Ok(ListOptions {
            labels: LabelSelector::parse(q.label_selector.as_deref().unwrap_or(""))?,
            fields: FieldSelector::parse(
                q.field_selector.as_deref().unwrap_or(""),
                self.target.res.kind,
            )?,
            limit: q.limit,
            continue_token: q.continue_.clone(),
            resource_version: q.resource_version.clone(),
        })
    }

    /// DeleteOptions from the body, with query parameters as fallbacks.
    fn delete_options(&self, body: &Bytes) -> Result<DeleteOptions, Status> {
        let from_query = DeleteOptions {
            grace: self.query.grace_period_seconds,
            propagation: self.query.propagation_policy.clone(),
            ..Default::default()
        };
        let v: Option<Value> =
            if body.is_empty() {
                None
            } else {
                Some(serde_json::from_slice(body).map_err(|e| {
                    Status::bad_request(format!("couldn't decode DeleteOptions: {e}"))
                })?)
            };
        from_query.overlay(v.as_ref())
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

    /// A write's answer: 201 if it made the object; a Scale is never a Table.
    fn written(&self, w: Written) -> Response {
        let code = if w.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        if self.target.sub.as_deref() == Some("scale") {
            return json_response(code, &w.object, &w.warnings);
        }
        self.respond(code, &w.object, &w.warnings)
    }

    /// The body's form of the resource (or subresource) the URL names.
    fn body_kind(&self) -> (&'static str, &'static str, &'static str) {
        let res = self.target.res;
        match self.target.sub.as_deref().and_then(|s| res.subresource(s)) {
            Some(sub) => res.subresource_kind(sub),
            None => (res.group, res.version, res.kind),
        }
    }
}

async fn create(ctx: &Ctx<'_>, body: &Bytes) -> ApiResult {
    let obj = decode_body(ctx.headers, body, ctx.target.res, ctx.body_kind())?;
    let w = ctx
        .api
        .registry
        .create(&ctx.target, obj, ctx.write_options()?)
        .await?;
    Ok(ctx.written(w))
}

async fn get(ctx: &Ctx<'_>) -> ApiResult {
    let obj = ctx
        .api
        .registry
        .get(&ctx.target, ctx.query.resource_version.as_deref())
        .await?;
    Ok(match ctx.target.sub.as_deref() {
        Some("scale") => json_response(StatusCode::OK, &obj, &[]),
        _ => ctx.respond(StatusCode::OK, &obj, &[]),
    })
}

async fn list(ctx: &Ctx<'_>) -> ApiResult {
    let res = ctx.target.res;
    let list = ctx
        .api
        .registry
        .list(&ctx.target, &ctx.list_options()?)
        .await?;
    if ctx.wants_table() {
        let refs: Vec<&Value> = list.items.iter().collect();
        let include = ctx.query.include_object.as_deref().unwrap_or("Metadata");
        let t = table::render(
            res.kind,
            &refs,
            &list.revision.to_string(),
            list.continue_token.as_deref(),
            include,
            true,
        );
        return Ok(json_response(StatusCode::OK, &t, &[]));
    }
    Ok(json_response(StatusCode::OK, &list.into_value(res), &[]))
}

async fn update(ctx: &Ctx<'_>, body: &Bytes) -> ApiResult {
    let body = decode_body(ctx.headers, body, ctx.target.res, ctx.body_kind())?;
    let w = ctx
        .api
        .registry
        .update(&ctx.target, body, ctx.write_options()?)
        .await?;
    Ok(ctx.written(w))
}

async fn patch(ctx: &Ctx<'_>, body: &Bytes) -> ApiResult {
    let ct = header_str(ctx.headers, header::CONTENT_TYPE);
    let ptype =
        PatchType::from_content_type(ct).ok_or_else(|| Status::unsupported_media_type(ct))?;
    let doc: Value = if ptype == PatchType::Apply {
        serde_yaml::from_slice(body)
            .map_err(|e| Status::bad_request(format!("couldn't decode the apply patch: {e}")))?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Status::bad_request(format!("couldn't decode the patch as JSON: {e}")))?
    };
    let w = ctx
        .api
        .registry
        .patch(
            &ctx.target,
            ptype,
            doc,
            ctx.query.field_manager.as_deref(),
            ctx.write_options()?,
        )
        .await?;
    Ok(ctx.written(w))
}

async fn delete(ctx: &Ctx<'_>, body: &Bytes) -> ApiResult {
    let opts = ctx.delete_options(body)?;
    let dry_run = ctx.dry_run();
    Ok(
        match ctx.api.registry.delete(&ctx.target, &opts, dry_run).await? {
            Deleted::Object(o) => ctx.respond(StatusCode::OK, &o, &[]),
            Deleted::Gone(status) => json_response(StatusCode::OK, &status, &[]),
        },
    )
}

async fn delete_collection(ctx: &Ctx<'_>, body: &Bytes) -> ApiResult {
    let opts = ctx.delete_options(body)?;
    let dry_run = ctx.dry_run();
    let list = ctx
        .api
        .registry
        .delete_collection(&ctx.target, &ctx.list_options()?, &opts, dry_run)
        .await?;
    Ok(json_response(StatusCode::OK, &list, &[]))
}

fn created_status() -> Response {
    json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        &[],
    )
}

/// POST pods/{name}/binding.
async fn bind(ctx: &Ctx<'_>, body: &Bytes) -> ApiResult {
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
    ctx.api.registry.bind(&ctx.target, node).await?;
    Ok(created_status())
}

/// POST pods/{name}/eviction.
async fn evict(ctx: &Ctx<'_>, body: &Bytes) -> ApiResult {
    let ev = decode_body(
        ctx.headers,
        body,
        ctx.target.res,
        ("policy", "v1", "Eviction"),
    )?;
    let grace = ev
        .pointer("/deleteOptions/gracePeriodSeconds")
        .and_then(Value::as_i64);
    ctx.api.registry.evict(&ctx.target, grace).await?;
    Ok(created_status())
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
        (&Method::GET, false, _) if is_watch => watch::serve(&ctx),
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
    let pod = ctx.api.registry.get(&ctx.target, Some("0")).await?;
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
        .get(&weft_store::key("", "nodes", "", node))
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
