//! The registry: the API verbs (get, list, create, update, patch, delete,
//! deletecollection, watch, and the status / scale / finalize / binding /
//! eviction subresources) as functions over the store that take typed
//! requests and answer `Result<_, Status>`. HTTP handlers decode into these
//! and encode what they return; the control plane's own components call
//! them in process (`member::writer`).

mod admit;
mod delete;
mod watch;
mod write;

pub use delete::{DeleteOptions, Deleted};
pub use watch::{Filter, Watch};

use base64::Engine;
use jiff::Timestamp;
use serde_json::{Value, json};
use weft_api::{Resource, Status};

use super::defaults;
use super::patch::PatchType;
use super::selectors::{FieldSelector, LabelSelector};
use super::services::ServiceNetwork;
use super::status::store_error;
use super::validation::FieldValidation;
use weft_store::{Failed, Op, Precondition, Store, StoreError};

/// The store and the allocators the verbs write through. Cloning shares them.
#[derive(Clone)]
pub struct Registry {
    pub store: Store,
    /// Where ClusterIPs and NodePorts come from.
    pub services: ServiceNetwork,
}

/// What a request addresses: a resource, and optionally a namespace, an
/// object and a subresource.
#[derive(Debug, Clone)]
pub struct Target {
    pub res: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

impl Target {
    /// The collection of `res` in `ns` (empty: cluster-scoped or all namespaces).
    pub fn collection(res: &'static Resource, ns: &str) -> Target {
        Target {
            res,
            namespace: (!ns.is_empty()).then(|| ns.to_string()),
            name: None,
            sub: None,
        }
    }

    /// One object of `res`.
    pub fn object(res: &'static Resource, ns: &str, name: &str) -> Target {
        Target {
            name: Some(name.to_string()),
            ..Target::collection(res, ns)
        }
    }

    /// A subresource of this object (`status`, `scale`, `binding`, ...).
    pub fn subresource(mut self, sub: &str) -> Target {
        self.sub = Some(sub.to_string());
        self
    }
}

/// How a create, update or patch is carried out.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// `dryRun=All`: admit and answer, write nothing.
    pub dry_run: bool,
    pub field_validation: FieldValidation,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            dry_run: false,
            field_validation: FieldValidation::Warn,
        }
    }
}

/// What a create, update or patch stored (or, on a dry run, would store).
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    /// Unknown or duplicate fields under `fieldValidation=Warn`.
    pub warnings: Vec<String>,
    /// The write made the object (201 rather than 200).
    pub created: bool,
}

/// Which objects a list (or deletecollection, or watch) selects.
#[derive(Debug, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    /// A continue token from an earlier page.
    pub continue_token: Option<String>,
    /// `"0"` may be served from local state; anything else is linearized.
    pub resource_version: Option<String>,
}

/// One page of a list.
#[derive(Debug)]
pub struct List {
    pub revision: u64,
    pub items: Vec<Value>,
    pub continue_token: Option<String>,
}

impl List {
    /// The `{Kind}List` object.
    pub fn into_value(self, res: &Resource) -> Value {
        let mut meta = json!({"resourceVersion": self.revision.to_string()});
        if let Some(c) = self.continue_token {
            meta["continue"] = json!(c);
        }
        json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": meta, "items": self.items})
    }
}

pub fn now() -> String {
    weft_cluster::time::ts(Timestamp::now())
}

/// One request as the verbs see it.
struct Req<'a> {
    reg: &'a Registry,
    target: &'a Target,
    opts: WriteOptions,
}

impl Req<'_> {
    fn ns(&self) -> &str {
        if self.target.res.namespaced {
            self.target.namespace.as_deref().unwrap_or("")
        } else {
            ""
        }
    }

    fn key(&self, name: &str) -> String {
        let r = self.target.res;
        weft_store::key(r.group, r.plural, self.ns(), name)
    }

    fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or("")
    }

    fn dry_run(&self) -> bool {
        self.opts.dry_run
    }

    async fn current(&self, name: &str, linearize: bool) -> Result<(u64, Value), Status> {
        let res = self.target.res;
        if linearize {
            self.reg
                .store
                .linearize()
                .await
                .map_err(|e| store_error(res, name, e))?;
        }
        self.reg
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
            .reg
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
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    start: String,
}

impl Registry {
    fn req<'a>(&'a self, target: &'a Target, opts: WriteOptions) -> Req<'a> {
        Req {
            reg: self,
            target,
            opts,
        }
    }

    /// One object (or its Scale), linearized unless a resourceVersion is given.
    pub async fn get(&self, t: &Target, resource_version: Option<&str>) -> Result<Value, Status> {
        let ctx = self.req(t, WriteOptions::default());
        let linearize = resource_version.is_none_or(str::is_empty);
        let (_, obj) = ctx.current(ctx.name(), linearize).await?;
        Ok(match t.sub.as_deref() {
            Some("scale") => write::scale_of(&obj),
            _ => obj,
        })
    }

    /// Matching objects, page by page from the store; the revision they
    /// were read at, and where a next page would start.
    pub fn collect(
        &self,
        t: &Target,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        start_after: Option<String>,
    ) -> Result<(u64, Vec<Value>, Option<String>), Status> {
        let ctx = self.req(t, WriteOptions::default());
        let res = t.res;
        let ns = if res.namespaced {
            t.namespace.as_deref()
        } else {
            None
        };
        let matches = |o: &Value| labels.matches(o) && fields.matches(o);
        if let Some(name) = fields.pinned_name()
            && (ns.is_some() || !res.namespaced)
        {
            let rev = self.store.revision();
            let item = self
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
        let prefix = weft_store::prefix(res.group, res.plural, ns);
        let mut start = start_after;
        let mut items = Vec::new();
        let mut revision = None;
        const CHUNK: usize = 1000;
        loop {
            let (rev, page, more) = self
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

    /// A list, linearized unless `resourceVersion=0`, paged by `limit` and
    /// continue tokens (each page at the first page's revision).
    pub async fn list(&self, t: &Target, o: &ListOptions) -> Result<List, Status> {
        if o.resource_version.as_deref() != Some("0") {
            self.store
                .linearize()
                .await
                .map_err(|e| store_error(t.res, "", e))?;
        }
        let (token_rv, start) = match o.continue_token.as_deref().filter(|c| !c.is_empty()) {
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
        let limit = o.limit.filter(|l| *l > 0);
        let (rev, items, next) = self.collect(t, &o.labels, &o.fields, limit, start)?;
        let revision = token_rv.unwrap_or(rev);
        let continue_token = next.map(|start| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
                serde_json::to_vec(&ContinueToken {
                    rv: revision,
                    start,
                })
                .unwrap_or_default(),
            )
        });
        Ok(List {
            revision,
            items,
            continue_token,
        })
    }

    pub async fn create(&self, t: &Target, obj: Value, o: WriteOptions) -> Result<Written, Status> {
        write::create(&self.req(t, o), obj).await
    }

    /// A full replace of the object or a subresource (status, scale,
    /// finalize), compare-and-swap when the body names a resourceVersion.
    pub async fn update(
        &self,
        t: &Target,
        body: Value,
        o: WriteOptions,
    ) -> Result<Written, Status> {
        write::update(&self.req(t, o), body).await
    }

    pub async fn patch(
        &self,
        t: &Target,
        ptype: PatchType,
        patch: Value,
        field_manager: Option<&str>,
        o: WriteOptions,
    ) -> Result<Written, Status> {
        write::patch(&self.req(t, o), ptype, patch, field_manager).await
    }

    pub async fn delete(
        &self,
        t: &Target,
        d: &DeleteOptions,
        dry_run: bool,
    ) -> Result<Deleted, Status> {
        let ctx = self.req(
            t,
            WriteOptions {
                dry_run,
                ..Default::default()
            },
        );
        delete::delete_one(&ctx, ctx.name(), d).await
    }

    /// Deletes every selected object; the list of those deleted.
    pub async fn delete_collection(
        &self,
        t: &Target,
        l: &ListOptions,
        d: &DeleteOptions,
        dry_run: bool,
    ) -> Result<Value, Status> {
        let ctx = self.req(
            t,
            WriteOptions {
                dry_run,
                ..Default::default()
            },
        );
        delete::delete_collection(&ctx, l, d).await
    }

    /// `pods/{name}/binding`: assigns a node, once.
    pub async fn bind(&self, t: &Target, node: &str) -> Result<(), Status> {
        delete::bind(&self.req(t, WriteOptions::default()), node).await
    }

    /// `pods/{name}/eviction`: a graceful delete.
    pub async fn evict(&self, t: &Target, grace: Option<i64>) -> Result<(), Status> {
        let ctx = self.req(t, WriteOptions::default());
        let opts = DeleteOptions {
            grace,
            ..Default::default()
        };
        delete::delete_one(&ctx, ctx.name(), &opts)
            .await
            .map(|_| ())
    }

    /// Objects the cluster starts with: the standard namespaces.
    pub async fn bootstrap(&self) -> Result<(), StoreError> {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let mut obj = json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now()}});
            defaults::apply("Namespace", &mut obj);
            match self
                .store
                .write(Op::Put {
                    key: weft_store::key("", "namespaces", "", ns),
                    object: obj,
                    precondition: Precondition::Absent,
                })
                .await
            {
                Ok(_) | Err(StoreError::Precondition(Failed::AlreadyExists)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
