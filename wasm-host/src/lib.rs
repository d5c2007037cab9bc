//! Weft's wasmtime embedding (after wasmtime's `serve` command).
//!
//! * One [`Host`] (one `Engine`) per process: pooling allocator, epoch
//!   interruption, the trimmed feature set of the build recipe.
//! * Artifacts compile once per digest; the precompiled `.cwasm` is cached on
//!   disk under a name that includes the engine's compatibility hash, so a
//!   differently configured engine never loads it.
//! * An [`HttpHandler`] holds one `ProxyPre` per pod template and instantiates
//!   a fresh, limited `Store` per request.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder,
};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// How often the epoch ticks: the granularity of CPU budgets.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("engine configuration: {0}")]
    Config(String),
    #[error("compiling the artifact: {0}")]
    Compile(String),
    #[error("compile cache at {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the artifact does not fit the wasi:http/proxy world: {0}")]
    NotProxy(String),
    #[error("the artifact does not fit the wasi:cli/command world: {0}")]
    NotCommand(String),
}

/// Why a request did not get the guest's answer. Distinct from guest-visible
/// errors: these are what the node reports (and turns into 5xx).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the guest trapped: {0}")]
    Trap(String),
    #[error("the request exceeded its {0:?} timeout")]
    Timeout(Duration),
    #[error("the guest never set a response")]
    NoResponse,
    #[error("the guest answered with an error: {0:?}")]
    Guest(ErrorCode),
    #[error("host: {0}")]
    Host(String),
}

#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where precompiled artifacts are kept.
    pub cache_dir: PathBuf,
    /// Instances (and memories) the pool holds at once, across all pods.
    pub max_instances: u32,
    /// The largest linear memory any instance may reserve; pod limits are lower.
    pub max_memory_bytes: usize,
}

impl HostConfig {
    pub fn new(cache_dir: PathBuf) -> Self {
        HostConfig {
            cache_dir,
            max_instances: 1_000,
            max_memory_bytes: 512 << 20,
        }
    }
}

/// Per-pod limits, from the pod spec.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most linear memory one instance may grow to (`resources.limits.memory`).
    pub memory_bytes: usize,
    /// Wall-clock time the guest may run per request, in epoch ticks' worth
    /// (from `resources.limits.cpu`); it traps when spent.
    pub cpu_budget: Duration,
    /// The whole request, guest parked in host calls included.
    pub request_timeout: Duration,
    /// Instances of this pod alive at once.
    pub max_concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 128 << 20,
            cpu_budget: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_concurrency: 256,
        }
    }
}

/// Increments the engine's epoch until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weft-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch ticker");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The per-instance state: WASI, wasi:http, the resource table and limits.
pub struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limits: StoreLimits,
    hooks: Egress,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// The one hook all of a guest's outgoing HTTP goes through. The service
/// proxy and the egress allow-list plug in here; until then it denies.
struct Egress;

type WasiBody = wasmtime_wasi_http::WasiBody;
type IoFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl WasiHttpHooks for Egress {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: IoFuture,
    ) -> Box<
        dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>>
            + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// A compiled artifact, ready to instantiate.
#[derive(Clone)]
pub struct Artifact {
    pub digest: String,
    component: Component,
}

pub struct Host {
    engine: Engine,
    linker: Linker<GuestState>,
    cache_dir: PathBuf,
    engine_hash: String,
    _ticker: EpochTicker,
}

fn engine_config(cfg: &HostConfig) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(cfg.max_instances)
        .total_core_instances(cfg.max_instances * 2)
        .total_memories(cfg.max_instances)
        .total_tables(cfg.max_instances)
        .total_stacks(cfg.max_instances)
        .max_memory_size(cfg.max_memory_bytes)
        // Keeping the first MiB resident and scanning dirty pages avoids most
        // of the page-fault and TLB work that dominates per-request cost.
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(1 << 20)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .wasm_component_model(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

impl Host {
    pub fn new(cfg: HostConfig) -> Result<Host, HostError> {
        let engine =
            Engine::new(&engine_config(&cfg)).map_err(|e| HostError::Config(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        // All of WASI p2, not just the proxy world: Rust's std imports
        // wasi:cli/environment for env vars (as `wasmtime serve -S cli`).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| HostError::Config(format!("{e:#}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| HostError::Config(format!("{e:#}")))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        std::fs::create_dir_all(&cfg.cache_dir).map_err(|source| HostError::Cache {
            path: cfg.cache_dir.clone(),
            source,
        })?;
        Ok(Host {
            _ticker: EpochTicker::start(engine.clone()),
            engine,
            linker,
            cache_dir: cfg.cache_dir,
            engine_hash: format!("{:016x}", h.finish()),
        })
    }

    fn cache_path(&self, digest: &str) -> PathBuf {
        let safe: String = digest
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.cache_dir
            .join(format!("{safe}-{}.cwasm", self.engine_hash))
    }

    /// Compiles `wasm` (or loads it precompiled) under `digest`, the
    /// artifact's content digest as its registry reported and verified it.
    pub fn load(&self, digest: &str, wasm: &[u8]) -> Result<Artifact, HostError> {
        let path = self.cache_path(digest);
        if !path.exists() {
            let compiled = self
                .engine
                .precompile_component(wasm)
                .map_err(|e| HostError::Compile(format!("{e:#}")))?;
            write_atomically(&path, &compiled)?;
        }
        self.load_cached(digest, &path)
    }

    /// Whether `digest` is already compiled for this engine.
    pub fn is_cached(&self, digest: &str) -> bool {
        self.cache_path(digest).exists()
    }

    fn load_cached(&self, digest: &str, path: &Path) -> Result<Artifact, HostError> {
        // SAFETY: the file was written by `precompile_component` of an engine
        // with this compatibility hash (it is in the file name), into Weft's
        // own cache directory, and is never modified after the atomic rename.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize_file(&self.engine, path) };
        let component =
            component.map_err(|e| HostError::Compile(format!("{}: {e:#}", path.display())))?;
        Ok(Artifact {
            digest: digest.to_string(),
            component,
        })
    }

    /// Prepares a wasi:http handler for one pod template.
    pub fn http_handler(
        &self,
        artifact: &Artifact,
        env: Vec<(String, String)>,
        limits: Limits,
    ) -> Result<HttpHandler, HostError> {
        let pre = self
            .linker
            .instantiate_pre(&artifact.component)
            .map_err(|e| HostError::NotProxy(format!("{e:#}")))?;
        let pre = ProxyPre::new(pre).map_err(|e| HostError::NotProxy(format!("{e:#}")))?;
        Ok(HttpHandler {
            pre,
            engine: self.engine.clone(),
            env: Arc::new(env),
            concurrency: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrency)),
            limits,
        })
    }
}

impl Host {
    /// Whether the artifact exports wasi:http's handler (a server) rather
    /// than only wasi:cli's run (a command that runs to completion).
    pub fn is_http(&self, artifact: &Artifact) -> bool {
        artifact
            .component
            .component_type()
            .exports(&self.engine)
            .any(|(name, _)| name.starts_with("wasi:http/incoming-handler@"))
    }

    /// Prepares a wasi:cli command (a Job's container).
    pub fn command(
        &self,
        artifact: &Artifact,
        args: Vec<String>,
        env: Vec<(String, String)>,
        limits: Limits,
    ) -> Result<Command, HostError> {
        let pre = self
            .linker
            .instantiate_pre(&artifact.component)
            .map_err(|e| HostError::NotCommand(format!("{e:#}")))?;
        let pre = CommandPre::new(pre).map_err(|e| HostError::NotCommand(format!("{e:#}")))?;
        Ok(Command {
            pre,
            engine: self.engine.clone(),
            args,
            env,
            limits,
        })
    }
}

/// A fresh store with WASI (env, args, output), limits and an epoch deadline.
fn new_store(
    engine: &Engine,
    wasi: &mut wasmtime_wasi::WasiCtxBuilder,
    limits: &Limits,
    trap_on_grow_failure: bool,
) -> Store<GuestState> {
    let state = GuestState {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        limits: StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .instances(16)
            .trap_on_grow_failure(trap_on_grow_failure)
            .build(),
        hooks: Egress,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store
}

/// How a command run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `run` returned or the guest called exit: the code (0 is success).
    Code(i32),
    /// A memory limit was hit (the OOMKilled of Wasm).
    OutOfMemory(String),
    /// Any other trap.
    Trap(String),
}

/// A wasi:cli command: each `run` is one fresh instance, run to completion.
#[derive(Clone)]
pub struct Command {
    pre: CommandPre<GuestState>,
    engine: Engine,
    args: Vec<String>,
    env: Vec<(String, String)>,
    limits: Limits,
}

impl Command {
    /// Runs once with stdout and stderr going to the given files. The guest
    /// yields at every epoch tick, so dropping the future stops even a busy loop.
    pub async fn run(&self, stdout: std::fs::File, stderr: std::fs::File) -> Exit {
        let mut wasi = WasiCtx::builder();
        wasi.envs(&self.env)
            .args(&self.args)
            .stdout(wasmtime_wasi::cli::OutputFile::new(stdout))
            .stderr(wasmtime_wasi::cli::OutputFile::new(stderr));
        // A command hitting its memory limit is killed, as the OOM killer would.
        let mut store = new_store(&self.engine, &mut wasi, &self.limits, true);
        store.epoch_deadline_async_yield_and_update(1);
        let outcome = async {
            let cmd = self.pre.instantiate_async(&mut store).await?;
            cmd.wasi_cli_run().call_run(&mut store).await
        }
        .await;
        match outcome {
            Ok(Ok(())) => Exit::Code(0),
            Ok(Err(())) => Exit::Code(1),
            Err(e) => {
                if let Some(code) = e.downcast_ref::<I32Exit>() {
                    Exit::Code(code.0)
                } else {
                    let text = format!("{e:#}");
                    let oom = text.contains("growing memory");
                    if oom {
                        Exit::OutOfMemory(text)
                    } else {
                        Exit::Trap(text)
                    }
                }
            }
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), HostError> {
    let io = |source| HostError::Cache {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// One pod template's wasi:http handler: a fresh instance per request.
#[derive(Clone)]
pub struct HttpHandler {
    pre: ProxyPre<GuestState>,
    engine: Engine,
    env: Arc<Vec<(String, String)>>,
    concurrency: Arc<tokio::sync::Semaphore>,
    limits: Limits,
}

pub type Response = hyper::Response<HyperOutgoingBody>;

impl HttpHandler {
    fn store(&self) -> Store<GuestState> {
        let mut wasi = WasiCtx::builder();
        wasi.envs(&self.env);
        let mut store = new_store(&self.engine, &mut wasi, &self.limits, false);
        let ticks = (self.limits.cpu_budget.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        store
    }

    /// Creates and instantiates a fresh instance, then drops it: the per-request
    /// setup cost, and a readiness check that the pod can start at all.
    pub async fn instantiate(&self) -> Result<(), RequestError> {
        let mut store = self.store();
        self.pre
            .instantiate_async(&mut store)
            .await
            .map(drop)
            .map_err(|e| RequestError::Trap(format!("{e:#}")))
    }

    /// Runs one request in a fresh instance.
    pub async fn handle<B>(&self, req: hyper::Request<B>) -> Result<Response, RequestError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let _permit = self
            .concurrency
            .acquire()
            .await
            .map_err(|e| RequestError::Host(e.to_string()))?;
        let mut store = self.store();
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
                Ok(Err(e)) => Err(RequestError::Trap(format!("{e:#}"))),
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
