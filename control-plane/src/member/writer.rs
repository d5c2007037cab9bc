//! The scheduler's and controllers' [`Writer`]: the API server's registry,
//! called in process. No HTTP, no bytes: the same admission, defaults,
//! validation and graceful deletion as kubectl's requests, on values.

use async_trait::async_trait;
use serde_json::Value;
use weft_api::{Resource, Status};

use weft_apiserver::patch::PatchType;
use weft_apiserver::registry::{DeleteOptions, ListOptions, Registry, Target, WriteOptions};
use weft_cluster::{Writer, objects, res};

#[derive(Clone)]
pub struct InProcess {
    registry: Registry,
}

impl InProcess {
    pub fn new(registry: Registry) -> Self {
        InProcess { registry }
    }
}

#[async_trait]
impl Writer for InProcess {
    async fn create(
        &self,
        res: &'static Resource,
        ns: &str,
        object: Value,
    ) -> Result<Value, Status> {
        let t = Target::collection(res, ns);
        let w = self
            .registry
            .create(&t, object, WriteOptions::default())
            .await?;
        Ok(w.object)
    }

    async fn patch(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        status: bool,
        patch: Value,
    ) -> Result<Value, Status> {
        let mut t = Target::object(res, ns, name);
        if status {
            t = t.subresource("status");
        }
        let w = self
            .registry
            .patch(&t, PatchType::Merge, patch, None, WriteOptions::default())
            .await?;
        Ok(w.object)
    }

    async fn delete(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        options: Value,
    ) -> Result<Value, Status> {
        let opts = DeleteOptions::default().overlay(Some(&options))?;
        let t = Target::object(res, ns, name);
        Ok(self.registry.delete(&t, &opts, false).await?.into_value())
    }

    async fn delete_collection(&self, res: &'static Resource, ns: &str) -> Result<u64, Status> {
        let t = Target::collection(res, ns);
        let opts = DeleteOptions::default();
        self.registry
            .delete_collection(&t, &ListOptions::default(), &opts, false)
            .await?;
        Ok(self.registry.store.revision())
    }

    async fn finalize(&self, namespace: Value) -> Result<Value, Status> {
        let t = Target::object(res("namespaces"), "", objects::name(&namespace))
            .subresource("finalize");
        let w = self
            .registry
            .update(&t, namespace, WriteOptions::default())
            .await?;
        Ok(w.object)
    }

    async fn bind(&self, ns: &str, name: &str, node: &str) -> Result<(), Status> {
        let t = Target::object(res("pods"), ns, name).subresource("binding");
        self.registry.bind(&t, node).await
    }
}
