//! wasi:http handlers: one `ProxyPre` per pod template, a fresh limited
//! instance per request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::Limits;
use crate::guest::{self, Cpu, Guest, GuestState};

/// Why a request did not get the guest's answer. Distinct from guest-visible
/// errors: these are what the node reports (and turns into 5xx).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the guest trapped: {0}")]
    Trap(String),
    #[error("the guest used up its CPU budget of {0:?} for one request")]
    CpuBudget(Duration),
    #[error("the guest hit its memory limit: {0}")]
    OutOfMemory(String),
    #[error("the request exceeded its {0:?} timeout")]
    Timeout(Duration),
    #[error("the guest never set a response")]
    NoResponse,
    #[error("the guest answered with an error: {0:?}")]
    Guest(ErrorCode),
    #[error("host: {0}")]
    Host(String),
}

/// A request body's error as wasi:http sees it (hyper's errors keep their kind).
fn body_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> wasmtime_wasi_http::Error {
    let e = e.into();
    match e.downcast::<hyper::Error>() {
        Ok(h) => wasmtime_wasi_http::Error::Hyper(*h),
        Err(e) => match e.downcast::<wasmtime_wasi_http::Error>() {
            Ok(w) => *w,
            Err(e) => wasmtime_wasi_http::Error::InternalError(Some(e.to_string())),
        },
    }
}

/// One pod template's wasi:http handler: a fresh instance per request.
#[derive(Clone)]
pub struct HttpHandler {
    pub(crate) pre: ProxyPre<GuestState>,
    pub(crate) engine: Engine,
    pub(crate) activity: Arc<guest::Activity>,
    pub(crate) guest: Arc<Guest>,
    pub(crate) concurrency: Arc<tokio::sync::Semaphore>,
    pub(crate) limits: Limits,
}

pub type Response = hyper::Response<HyperOutgoingBody>;

impl HttpHandler {
    fn store(&self) -> Result<Store<GuestState>, RequestError> {
        let mut store = guest::new_store(&self.engine, &self.activity, &self.guest, &self.limits)
            .map_err(RequestError::Host)?;
        let cpu = Cpu {
            budget: Some(self.limits.cpu_budget),
            cores: self.limits.cpu_cores,
        };
        guest::arm_cpu(&mut store, cpu);
        Ok(store)
    }

    fn trap(&self, e: wasmtime::Error) -> RequestError {
        if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
            return RequestError::CpuBudget(self.limits.cpu_budget);
        }
        let text = format!("{e:#}");
        if guest::hit_memory_limit(&text) {
            RequestError::OutOfMemory(text)
        } else {
            RequestError::Trap(text)
        }
    }

    /// Creates and instantiates a fresh instance, then drops it: the per-request
    /// setup cost, and a check that the pod can start at all.
    pub async fn instantiate(&self) -> Result<(), RequestError> {
        let mut store = self.store()?;
        self.pre
            .instantiate_async(&mut store)
            .await
            .map(drop)
            .map_err(|e| self.trap(e))
    }

    /// Runs one request in a fresh instance.
    pub async fn handle<B>(&self, req: hyper::Request<B>) -> Result<Response, RequestError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        use http_body_util::BodyExt;
        let req = req.map(|b| b.map_err(body_error));
        let _permit = self
            .concurrency
            .acquire()
            .await
            .map_err(|e| RequestError::Host(e.to_string()))?;
        let mut store = self.store()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let host = |e: wasmtime::Error| RequestError::Host(format!("{e:#}"));
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(host)?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(tx)
            .map_err(host)?;
        let pre = self.pre.clone();
        // The guest keeps running after it sets the response, to stream the body.
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        });
        let timeout = self.limits.request_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(resp))) => Ok(resp),
            Ok(Ok(Err(code))) => Err(RequestError::Guest(code)),
            Ok(Err(_)) => match task.await {
                Ok(Err(e)) => Err(self.trap(e)),
                Ok(Ok(())) => Err(RequestError::NoResponse),
                Err(e) => Err(RequestError::Host(e.to_string())),
            },
            Err(_) => {
                task.abort();
                Err(RequestError::Timeout(timeout))
            }
        }
    }
}
