//! Weft's wasmtime embedding (after wasmtime's `serve` command).
//!
//! * One [`Host`] (one `Engine`) per process: pooling allocator, epoch
//!   interruption, the trimmed feature set of the build recipe.
//! * Artifacts (components, or wasip1 core modules) compile once per digest;
//!   the precompiled file is cached on disk under a name that includes the
//!   engine's compatibility hash, so a differently configured engine never loads it.
//! * An [`HttpHandler`] holds one `ProxyPre` per pod template and instantiates
//!   a fresh, limited `Store` per request ([`http`]); a [`Command`] runs to
//!   completion ([`command`]); what the guest sees is a [`Guest`] ([`guest`]).

pub mod command;
pub mod guest;
pub mod http;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig,
};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

pub use command::{Command, Exit};
pub use guest::{
    AllowList, EPOCH_TICK, Guest, IoFuture, LogSink, OutgoingHttp, Preopen, SendFuture, Stream,
    WasiBody,
};
pub use http::{HttpHandler, RequestError, Response};
/// What an `OutgoingHttp` hook works with, from wasmtime-wasi-http.
pub use wasmtime_wasi_http::{Error as HttpError, RequestOptions};

use command::{P1State, Program};
use guest::GuestState;

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
    /// Time one request may spend running guest code (time parked in host
    /// calls is free); it traps when spent. Throttling by `cpu_cores`
    /// stretches it in wall-clock time.
    pub cpu_budget: Duration,
    /// Cores an instance may use on average (`resources.limits.cpu`); it is
    /// throttled, never killed, for it. `None` is unthrottled.
    pub cpu_cores: Option<f64>,
    /// The whole request, guest parked in host calls included.
    pub request_timeout: Duration,
    /// Instances of this pod alive at once.
    pub max_concurrency: usize,
    /// Handles (fields, streams, requests...) one instance may hold at once:
    /// each is host memory, which the memory limit does not count.
    pub max_resources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 128 << 20,
            cpu_budget: Duration::from_secs(10),
            cpu_cores: None,
            request_timeout: Duration::from_secs(30),
            max_concurrency: 256,
            max_resources: 10_000,
        }
    }
}

/// Increments the engine's epoch every [`EPOCH_TICK`] while any instance
/// is alive, and sleeps otherwise (an idle node pays nothing for the fine tick).
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> (Self, Arc<guest::Activity>) {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Arc<guest::Activity>>();
        let thread = std::thread::Builder::new()
            .name("weft-epoch".into())
            .spawn(move || {
                realtime_priority();
                let activity = rx.recv().expect("the host sends its activity counter");
                while !flag.load(Ordering::Relaxed) {
                    if activity.alive() {
                        std::thread::sleep(EPOCH_TICK);
                    } else {
                        // Woken by the first new instance (`Activity::enter`).
                        std::thread::park_timeout(Duration::from_millis(100));
                    }
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch ticker");
        let activity = Arc::new(guest::Activity::new(thread.thread().clone()));
        let _ = tx.send(activity.clone());
        (
            EpochTicker {
                stop,
                thread: Some(thread),
            },
            activity,
        )
    }
}

/// Puts the calling thread (the ticker) ahead of ordinary threads when the
/// process may (root or CAP_SYS_NICE). Guests yield and are throttled at
/// ticks: when busy guests fill every core, an ordinary ticker waits about a
/// millisecond for a core, and a spinning guest holds a runtime thread that
/// long. The ticker sleeps between ticks, so it takes little from others.
fn realtime_priority() {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid
    // parameter; it only changes how the kernel schedules this thread.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        tracing::debug!(
            "epoch ticker keeps normal priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// A compiled artifact, ready to instantiate.
#[derive(Clone)]
pub struct Artifact {
    pub digest: String,
    code: Code,
}

#[derive(Clone)]
enum Code {
    Component(Component),
    /// A wasip1 core module: always a command.
    Module(Module),
}

/// Whether `wasm` is a component (layer 1) rather than a core module.
fn is_component(wasm: &[u8]) -> bool {
    wasm.len() >= 8 && wasm[..4] == *b"\0asm" && wasm[6..8] == [1, 0]
}

pub struct Host {
    engine: Engine,
    linker: Linker<GuestState>,
    p1_linker: wasmtime::Linker<P1State>,
    cache_dir: PathBuf,
    engine_hash: String,
    activity: Arc<guest::Activity>,
    loaded: std::sync::Mutex<std::collections::HashMap<String, Artifact>>,
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
        let mut p1_linker = wasmtime::Linker::new(&engine);
        command::add_p1_to_linker(&mut p1_linker)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        std::fs::create_dir_all(&cfg.cache_dir).map_err(|source| HostError::Cache {
            path: cfg.cache_dir.clone(),
            source,
        })?;
        let (ticker, activity) = EpochTicker::start(engine.clone());
        Ok(Host {
            _ticker: ticker,
            activity,
            loaded: Default::default(),
            engine,
            linker,
            p1_linker,
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
        self.load_with(digest, || Ok(wasm))
    }

    /// [`Host::load`], reading the artifact only when it is not compiled yet.
    /// A loaded artifact stays in memory: every pod of it shares its code.
    pub fn load_with<B: AsRef<[u8]>>(
        &self,
        digest: &str,
        read: impl FnOnce() -> std::io::Result<B>,
    ) -> Result<Artifact, HostError> {
        if let Some(a) = self.loaded.lock().expect("loaded artifacts").get(digest) {
            return Ok(a.clone());
        }
        let path = self.cache_path(digest);
        if !path.exists() {
            let wasm = read().map_err(|source| HostError::Cache {
                path: path.clone(),
                source,
            })?;
            let wasm = wasm.as_ref();
            let compiled = if is_component(wasm) {
                self.engine.precompile_component(wasm)
            } else {
                self.engine.precompile_module(wasm)
            };
            let compiled = compiled.map_err(|e| HostError::Compile(format!("{e:#}")))?;
            write_atomically(&path, &compiled)?;
        }
        let artifact = self.load_cached(digest, &path)?;
        self.loaded
            .lock()
            .expect("loaded artifacts")
            .insert(digest.to_string(), artifact.clone());
        Ok(artifact)
    }

    /// Whether `digest` is already compiled for this engine.
    pub fn is_cached(&self, digest: &str) -> bool {
        self.cache_path(digest).exists()
    }

    fn load_cached(&self, digest: &str, path: &Path) -> Result<Artifact, HostError> {
        // SAFETY: the file was written by `precompile_component` of an engine
        // with this compatibility hash (it is in the file name), into Weft's
        // own cache directory, and is never modified after the atomic rename.
        let err = |e: wasmtime::Error| HostError::Compile(format!("{}: {e:#}", path.display()));
        let code = match Engine::detect_precompiled_file(path).map_err(err)? {
            #[allow(unsafe_code)]
            Some(wasmtime::Precompiled::Module) => {
                Code::Module(unsafe { Module::deserialize_file(&self.engine, path) }.map_err(err)?)
            }
            #[allow(unsafe_code)]
            _ => Code::Component(
                unsafe { Component::deserialize_file(&self.engine, path) }.map_err(err)?,
            ),
        };
        Ok(Artifact {
            digest: digest.to_string(),
            code,
        })
    }

    /// Prepares a wasi:http handler for one pod template.
    pub fn http_handler(
        &self,
        artifact: &Artifact,
        guest: impl Into<Guest>,
        limits: Limits,
    ) -> Result<HttpHandler, HostError> {
        let not_proxy = |e: wasmtime::Error| HostError::NotProxy(format!("{e:#}"));
        let Code::Component(component) = &artifact.code else {
            return Err(HostError::NotProxy(
                "a wasip1 core module cannot serve HTTP".into(),
            ));
        };
        let pre = self.linker.instantiate_pre(component).map_err(not_proxy)?;
        Ok(HttpHandler {
            pre: ProxyPre::new(pre).map_err(not_proxy)?,
            engine: self.engine.clone(),
            activity: self.activity.clone(),
            guest: Arc::new(guest.into()),
            concurrency: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrency)),
            limits,
        })
    }

    /// Whether the artifact exports wasi:http's handler (a server) rather
    /// than only wasi:cli's run, or is a wasip1 module (commands that run to
    /// completion).
    pub fn is_http(&self, artifact: &Artifact) -> bool {
        match &artifact.code {
            Code::Component(c) => c
                .component_type()
                .exports(&self.engine)
                .any(|(name, _)| name.starts_with("wasi:http/incoming-handler@")),
            Code::Module(_) => false,
        }
    }

    /// Prepares a command (a Job's container, or a worker).
    pub fn command(
        &self,
        artifact: &Artifact,
        guest: Guest,
        limits: Limits,
    ) -> Result<Command, HostError> {
        let not_command = |e: wasmtime::Error| HostError::NotCommand(format!("{e:#}"));
        let program = match &artifact.code {
            Code::Component(c) => {
                let pre = self.linker.instantiate_pre(c).map_err(not_command)?;
                Program::Component(CommandPre::new(pre).map_err(not_command)?)
            }
            Code::Module(m) => {
                if m.get_export("_start").is_none() {
                    return Err(HostError::NotCommand(
                        "the wasip1 module exports no _start".into(),
                    ));
                }
                Program::Module(self.p1_linker.instantiate_pre(m).map_err(not_command)?)
            }
        };
        Ok(Command {
            program,
            engine: self.engine.clone(),
            activity: self.activity.clone(),
            guest,
            limits,
        })
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
