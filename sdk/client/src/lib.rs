//! A small client for the Weft API, configured from a kubeconfig. It backs
//! the `weft apply/get/delete` verbs; kubectl and kube-rs remain the
//! primary clients.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use reqwest::Method;
use serde_json::Value;
use weft_api::{Resource, Status, resources};

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}", .0.message)]
    Api(Status),
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("{0}")]
    Manifest(String),
}

impl ClientError {
    /// The HTTP code of an API error, if this is one.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Api(s) => Some(s.code),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Every API server this client may use (members of one cluster), and
    /// the one it uses now: it moves on when one stops answering.
    servers: Arc<[String]>,
    current: Arc<AtomicUsize>,
    token: Option<String>,
    pub namespace: String,
}

/// What `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

fn cfg_err(msg: impl Into<String>) -> ClientError {
    ClientError::Config(msg.into())
}

fn named<'a>(list: &'a Value, field: &str, name: &str) -> Option<&'a Value> {
    list.get(field)?
        .as_array()?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
}

impl Client {
    /// Reads the kubeconfig's current context.
    pub fn from_kubeconfig(path: &Path) -> Result<Client, ClientError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| cfg_err(format!("cannot read {}: {e}", path.display())))?;
        let cfg: Value =
            serde_yaml::from_str(&text).map_err(|e| cfg_err(format!("{}: {e}", path.display())))?;
        let ctx_name = cfg
            .get("current-context")
            .and_then(Value::as_str)
            .ok_or_else(|| cfg_err("no current-context"))?;
        let ctx = named(&cfg, "contexts", ctx_name)
            .and_then(|c| c.get("context"))
            .ok_or_else(|| cfg_err(format!("context {ctx_name:?} not found")))?;
        let cluster_name = ctx.get("cluster").and_then(Value::as_str).unwrap_or("");
        let cluster = named(&cfg, "clusters", cluster_name)
            .and_then(|c| c.get("cluster"))
            .ok_or_else(|| cfg_err(format!("cluster {cluster_name:?} not found")))?;
        let user_name = ctx.get("user").and_then(Value::as_str).unwrap_or("");
        let user = named(&cfg, "users", user_name).and_then(|u| u.get("user"));
        let server = cluster
            .get("server")
            .and_then(Value::as_str)
            .ok_or_else(|| cfg_err("cluster has no server"))?;
        // A member that does not answer the handshake soon is taken for dead.
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
        if let Some(ca) = cluster
            .get("certificate-authority-data")
            .and_then(Value::as_str)
        {
            use base64::Engine;
            let pem = base64::engine::general_purpose::STANDARD
                .decode(ca.trim())
                .map_err(|e| cfg_err(format!("certificate-authority-data is not base64: {e}")))?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        if cluster
            .get("insecure-skip-tls-verify")
            .and_then(Value::as_bool)
            == Some(true)
        {
            builder = builder.danger_accept_invalid_certs(true);
        }
        Ok(Client {
            http: builder.build()?,
            servers: [server.trim_end_matches('/').to_string()].into(),
            current: Arc::default(),
            token: user
                .and_then(|u| u.get("token"))
                .and_then(Value::as_str)
                .map(String::from),
            namespace: ctx
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string(),
        })
    }

    /// Uses `servers` (members of the kubeconfig's cluster, same CA and
    /// credentials) in place of the kubeconfig's one server.
    pub fn with_servers(mut self, servers: Vec<String>) -> Client {
        if !servers.is_empty() {
            let servers: Vec<String> = servers
                .into_iter()
                .map(|s| s.trim_end_matches('/').to_string())
                .collect();
            self.servers = servers.into();
            self.current = Arc::default();
        }
        self
    }

    /// The server in use.
    pub fn server(&self) -> &str {
        &self.servers[self.current.load(Ordering::Relaxed) % self.servers.len()]
    }

    /// One request; a non-2xx answer becomes `ClientError::Api` with the server's Status.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        accept: Option<&str>,
    ) -> Result<Value, ClientError> {
        let bytes = self.request_bytes(method, path, body, accept).await?;
        Ok(serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())))
    }

    /// [`Client::request`] for an answer that is not JSON: its bytes.
    pub async fn request_bytes(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        accept: Option<&str>,
    ) -> Result<bytes::Bytes, ClientError> {
        let mut tries = self.servers.len();
        let resp = loop {
            let at = self.current.load(Ordering::Relaxed);
            let mut req = self.http.request(
                method.clone(),
                format!("{}{path}", self.servers[at % self.servers.len()]),
            );
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some((ct, bytes)) = &body {
                req = req.header("Content-Type", *ct).body(bytes.clone());
            }
            match req.send().await {
                Ok(resp) => break resp,
                // Not connected: nothing reached the member, so any request
                // may go to the next one (k3s agents' client-side balancing).
                Err(e) if e.is_connect() && tries > 1 => {
                    tries -= 1;
                    let _ = self.current.compare_exchange(
                        at,
                        at.wrapping_add(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                Err(e) => return Err(e.into()),
            }
        };
        let code = resp.status();
        let bytes = resp.bytes().await?;
        if code.is_success() {
            return Ok(bytes);
        }
        let v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Err(ClientError::Api(Status::from_json(&v).unwrap_or_else(
            || {
                Status::new(
                    code.as_u16(),
                    code.canonical_reason().unwrap_or("Error"),
                    v.to_string(),
                )
            },
        )))
    }

    fn ns_for<'a>(&'a self, res: &Resource, ns: Option<&'a str>) -> Option<&'a str> {
        res.namespaced.then(|| ns.unwrap_or(&self.namespace))
    }

    pub async fn get(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ClientError> {
        self.request(
            Method::GET,
            &res.object_path(self.ns_for(res, ns), name),
            None,
            None,
        )
        .await
    }

    /// Lists a resource; `all_namespaces` ignores `ns`. `table` asks for server-rendered rows.
    pub async fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        all_namespaces: bool,
        selector: Option<&str>,
        table: bool,
    ) -> Result<Value, ClientError> {
        let ns = if all_namespaces {
            None
        } else {
            self.ns_for(res, ns)
        };
        let mut path = res.collection_path(ns);
        if let Some(s) = selector {
            path.push_str(&format!("?labelSelector={}", urlencode(s)));
        }
        let accept =
            table.then_some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json");
        self.request(Method::GET, &path, None, accept).await
    }

    pub async fn delete(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ClientError> {
        let body = br#"{"propagationPolicy":"Background"}"#.to_vec();
        self.request(
            Method::DELETE,
            &res.object_path(self.ns_for(res, ns), name),
            Some(("application/json", body)),
            None,
        )
        .await
    }

    /// Creates the object, or server-side-applies it over the existing one.
    pub async fn apply(&self, obj: &Value) -> Result<(Value, Applied), ClientError> {
        let (res, ns, name) = self.locate(obj)?;
        let path = res.object_path(ns.as_deref(), &name);
        let before = match self.request(Method::GET, &path, None, None).await {
            Ok(v) => Some(v),
            Err(e) if e.code() == Some(404) => None,
            Err(e) => return Err(e),
        };
        let body = serde_json::to_vec(obj).map_err(|e| ClientError::Manifest(e.to_string()))?;
        let query = "?fieldManager=weft&fieldValidation=Strict&force=true";
        let after = self
            .request(
                Method::PATCH,
                &format!("{path}{query}"),
                Some(("application/apply-patch+yaml", body)),
                None,
            )
            .await?;
        let rv = |v: &Value| v.pointer("/metadata/resourceVersion").cloned();
        let how = match before {
            None => Applied::Created,
            Some(b) if rv(&b) == rv(&after) => Applied::Unchanged,
            Some(_) => Applied::Configured,
        };
        Ok((after, how))
    }

    /// The resource, namespace and name a manifest addresses.
    pub fn locate(
        &self,
        obj: &Value,
    ) -> Result<(&'static Resource, Option<String>, String), ClientError> {
        let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let res = resources::by_kind(av, kind).ok_or_else(|| {
            ClientError::Manifest(format!(
                "no resource serves apiVersion {av:?} kind {kind:?}"
            ))
        })?;
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ClientError::Manifest(format!("a {kind} manifest has no metadata.name"))
            })?;
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(&self.namespace);
        Ok((
            res,
            res.namespaced.then(|| ns.to_string()),
            name.to_string(),
        ))
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Splits a multi-document YAML (or JSON) manifest into objects, expanding `List`s.
pub fn parse_manifests(text: &str) -> Result<Vec<Value>, ClientError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(doc)
            .map_err(|e| ClientError::Manifest(format!("invalid YAML: {e}")))?;
        match v {
            Value::Null => {}
            Value::Object(ref m)
                if m.get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.ends_with("List"))
                    && m.contains_key("items") =>
            {
                out.extend(m["items"].as_array().cloned().unwrap_or_default());
            }
            Value::Object(_) => out.push(v),
            other => {
                return Err(ClientError::Manifest(format!(
                    "a manifest must be a mapping, got {other}"
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_split_and_lists_expand() {
        let docs = parse_manifests(
            "a: 1\nkind: X\n---\n---\nkind: PodList\nitems: [{kind: Pod}, {kind: Pod}]\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 3);
        assert!(parse_manifests("- 1\n- 2\n").is_err());
        assert!(parse_manifests("a: [").is_err());
    }
}
