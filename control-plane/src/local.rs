//! An in-process client for the control plane's own components. Writes go
//! through the same verbs (admission, defaults, validation, graceful delete)
//! as kubectl's, without HTTP or TLS in between.

use axum::http::{HeaderMap, HeaderValue, Method, header};
use bytes::Bytes;
use serde_json::{Value, json};
use weft_api::{Resource, Status};

use crate::apiserver::{Api, handlers};

#[derive(Clone)]
pub struct LocalClient {
    api: Api,
}

impl LocalClient {
    pub fn new(api: Api) -> Self {
        LocalClient { api }
    }

    pub fn api(&self) -> &Api {
        &self.api
    }

    /// One request; the response body as JSON, or the API's `Status` error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &str,
        content_type: &'static str,
        body: Option<&Value>,
    ) -> Result<Value, Status> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let resp = handlers::dispatch(&self.api, &method, path, query, &headers, body).await;
        let code = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .map_err(|_| Status::internal())?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if code >= 400 {
            return Err(Status::from_json(&v).unwrap_or_else(|| Status::new(code, "", "")));
        }
        Ok(v)
    }

    pub async fn create(
        &self,
        res: &Resource,
        ns: Option<&str>,
        obj: &Value,
    ) -> Result<Value, Status> {
        self.call(
            Method::POST,
            &res.collection_path(ns),
            "",
            "application/json",
            Some(obj),
        )
        .await
    }

    /// A JSON merge patch of the object or (with `sub`) a subresource.
    pub async fn patch(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        patch: &Value,
    ) -> Result<Value, Status> {
        let mut path = res.object_path(ns, name);
        if let Some(s) = sub {
            path = format!("{path}/{s}");
        }
        self.call(
            Method::PATCH,
            &path,
            "",
            "application/merge-patch+json",
            Some(patch),
        )
        .await
    }

    /// A full replace, compare-and-swap on the object's resourceVersion.
    pub async fn update(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        obj: &Value,
    ) -> Result<Value, Status> {
        let mut path = res.object_path(ns, name);
        if let Some(s) = sub {
            path = format!("{path}/{s}");
        }
        self.call(Method::PUT, &path, "", "application/json", Some(obj))
            .await
    }

    pub async fn delete(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        options: &Value,
    ) -> Result<Value, Status> {
        self.call(
            Method::DELETE,
            &res.object_path(ns, name),
            "",
            "application/json",
            Some(options),
        )
        .await
    }

    pub async fn delete_collection(
        &self,
        res: &Resource,
        ns: Option<&str>,
    ) -> Result<Value, Status> {
        self.call(
            Method::DELETE,
            &res.collection_path(ns),
            "",
            "application/json",
            None,
        )
        .await
    }

    /// `pods/{name}/binding`, as kube-scheduler binds.
    pub async fn bind(&self, ns: &str, name: &str, node: &str) -> Result<Value, Status> {
        let pods = weft_api::resources::by_plural("", "v1", "pods").expect("pods are served");
        let binding = json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
        self.call(
            Method::POST,
            &format!("{}/binding", pods.object_path(Some(ns), name)),
            "",
            "application/json",
            Some(&binding),
        )
        .await
    }
}
