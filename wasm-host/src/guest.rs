//! What a guest sees besides its code: argv, environment, where its output
//! goes, the directories it may open, and where its outgoing HTTP may go.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use wasmtime::{Store, StoreContextMut, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::Limits;

/// How often the epoch ticks: the granularity of CPU budgets and throttling.
pub const EPOCH_TICK: Duration = Duration::from_micros(100);

/// How long an instance runs before it starts yielding every tick.
const QUANTUM: Duration = Duration::from_millis(1);

/// The most one stretch of running is charged to the throttle (parked time
/// is not running, but a stretch may include one long memory.fill or grow).
const MAX_SLICE: Duration = Duration::from_millis(10);

/// The most one stretch is charged to a request's budget: enough to cover a
/// late epoch tick (the ticker thread waits for a core when guests fill
/// them all), small enough that time parked in a host call (an outgoing
/// request) costs the budget little.
const MAX_BUDGET_SLICE: Duration = Duration::from_millis(2);

/// Which output stream a write came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Where a container's stdout and stderr go. The node's implementation
/// writes timestamped, size-capped log files; writes must not block for long.
pub trait LogSink: Send + Sync + 'static {
    fn write(&self, stream: Stream, bytes: &[u8]);
}

/// A directory the guest sees (a pod volume).
#[derive(Debug, Clone)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

pub type WasiBody = wasmtime_wasi_http::WasiBody;
pub type IoFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;
pub type SendFuture = Box<
    dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>> + Send,
>;

/// The one hook all of a guest's outgoing HTTP goes through: the node plugs
/// in its egress policy (and the service proxy its routing) here.
pub trait OutgoingHttp: Send + Sync + 'static {
    fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
    ) -> SendFuture;
}

/// Denies every outgoing request unless the host (`host` or `host:port`) is
/// listed; `*` allows all, `*.example.com` a domain's subdomains.
#[derive(Debug, Clone, Default)]
pub struct AllowList(pub Vec<String>);

impl AllowList {
    pub fn allows(&self, uri: &http::Uri) -> bool {
        let Some(host) = uri.host() else {
            return false;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let with_port = uri.port_u16().map(|p| format!("{host}:{p}"));
        self.0.iter().any(|rule| {
            rule == "*"
                || rule.eq_ignore_ascii_case(host)
                || with_port
                    .as_deref()
                    .is_some_and(|hp| rule.eq_ignore_ascii_case(hp))
                || rule.strip_prefix("*.").is_some_and(|domain| {
                    host.len() > domain.len() + 1
                        && host
                            .to_ascii_lowercase()
                            .ends_with(&format!(".{}", domain.to_ascii_lowercase()))
                })
        })
    }
}

impl OutgoingHttp for AllowList {
    fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
    ) -> SendFuture {
        let allowed = self.allows(request.uri());
        Box::new(async move {
            if !allowed {
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            }
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((res.map(BodyExt::boxed_unsync), Box::new(io) as IoFuture))
        })
    }
}

/// Everything about a guest but its code and limits.
#[derive(Clone, Default)]
pub struct Guest {
    /// argv (commands only; argv[0] first).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// stdout and stderr; discarded when `None`.
    pub output: Option<Arc<dyn LogSink>>,
    pub dirs: Vec<Preopen>,
    /// Outgoing HTTP; denied when `None`.
    pub egress: Option<Arc<dyn OutgoingHttp>>,
}

impl From<Vec<(String, String)>> for Guest {
    fn from(env: Vec<(String, String)>) -> Self {
        Guest {
            env,
            ..Guest::default()
        }
    }
}

impl Guest {
    /// The WASI context for one instance.
    pub(crate) fn wasi(&self) -> Result<WasiCtxBuilder, String> {
        let mut wasi = WasiCtx::builder();
        wasi.envs(&self.env).args(&self.args);
        if let Some(sink) = &self.output {
            wasi.stdout(SinkStream {
                sink: sink.clone(),
                stream: Stream::Stdout,
            })
            .stderr(SinkStream {
                sink: sink.clone(),
                stream: Stream::Stderr,
            });
        }
        for d in &self.dirs {
            let perms = if d.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            wasi.preopened_dir(&d.host, &d.guest, perms)
                .map_err(|e| format!("volume {} at {}: {e:#}", d.host.display(), d.guest))?;
        }
        Ok(wasi)
    }
}

/// A guest's output stream, writing into its [`LogSink`].
#[derive(Clone)]
struct SinkStream {
    sink: Arc<dyn LogSink>,
    stream: Stream,
}

impl IsTerminal for SinkStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for SinkStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for SinkStream {
    async fn ready(&mut self) {}
}

/// The most one write may carry; bigger guest writes are split by WASI.
const MAX_WRITE: usize = 64 << 10;

impl OutputStream for SinkStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.sink.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_WRITE)
    }
}

impl tokio::io::AsyncWrite for SinkStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.sink.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Counts live instances, so the epoch ticker runs only while one is.
pub(crate) struct Activity {
    alive: std::sync::atomic::AtomicUsize,
    ticker: std::thread::Thread,
}

impl Activity {
    pub(crate) fn new(ticker: std::thread::Thread) -> Self {
        Activity {
            alive: std::sync::atomic::AtomicUsize::new(0),
            ticker,
        }
    }

    pub(crate) fn alive(&self) -> bool {
        self.alive.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Marks an instance alive until the guard drops (with its store).
    pub(crate) fn enter(self: &Arc<Self>) -> Alive {
        if self
            .alive
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            self.ticker.unpark();
        }
        Alive(self.clone())
    }
}

pub(crate) struct Alive(Arc<Activity>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0
            .alive
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The per-instance state of a component: WASI, wasi:http, the resource
/// table, limits and the egress hook.
pub struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
    hooks: Hooks,
    _alive: Alive,
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

/// Sends through the guest's [`OutgoingHttp`], or denies.
struct Hooks(Option<Arc<dyn OutgoingHttp>>);

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        match &self.0 {
            Some(egress) => egress.send(request, options),
            None => Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) }),
        }
    }
}

/// Whether a trap was the memory limit ([`store_limits`] traps on a refused grow).
pub(crate) fn hit_memory_limit(trap_text: &str) -> bool {
    trap_text.contains("growing memory")
}

/// Memory per instance. Hitting the limit traps, as the OOM killer would
/// kill, rather than letting `memory.grow` fail (which Rust guests abort on
/// anyway, less clearly).
pub(crate) fn store_limits(limits: &Limits) -> StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(limits.memory_bytes)
        .instances(16)
        .trap_on_grow_failure(true)
        .build()
}

/// A fresh component store for one instance.
pub(crate) fn new_store(
    engine: &wasmtime::Engine,
    activity: &Arc<Activity>,
    guest: &Guest,
    limits: &Limits,
) -> Result<Store<GuestState>, String> {
    let mut table = ResourceTable::new();
    table.set_max_capacity(limits.max_resources);
    let state = GuestState {
        _alive: activity.enter(),
        wasi: guest.wasi()?.build(),
        http: WasiHttpCtx::new(),
        table,
        limits: store_limits(limits),
        hooks: Hooks(guest.egress.clone()),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    Ok(store)
}

/// How an instance may spend CPU, measured in wall time between epoch
/// callbacks (they only fire inside Wasm), not in tick counts: on a busy
/// node the ticker thread runs late, and counting ticks then gave guests
/// ten times their budget.
pub(crate) struct Cpu {
    /// Trap once this much running time is spent (a per-request budget).
    pub budget: Option<Duration>,
    /// At most this many cores on average: after each tick of running, the
    /// guest sleeps for the rest of its share (like a CFS quota).
    pub cores: Option<f64>,
}

pub(crate) fn arm_cpu<T: 'static>(store: &mut Store<T>, cpu: Cpu) {
    store.set_epoch_deadline(1);
    let budget = cpu.budget;
    let mut spent = Duration::ZERO;
    let share = match cpu.cores {
        Some(c) if c > 0.0 && c < 1.0 => 1.0 / c - 1.0,
        _ => 0.0,
    };
    // When the guest last (re)started running; what it has run since is
    // measured in wall time, so long host operations (memory.grow, fills)
    // are paid for too. Parked time counts at most one slice.
    let resumed = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
    let mut owed = Duration::ZERO;
    let mut ran_total = Duration::ZERO;
    store.epoch_deadline_callback(move |_: StoreContextMut<'_, T>| {
        let now = std::time::Instant::now();
        let stretch = {
            let mut r = resumed.lock().expect("resume time");
            let stretch = now.duration_since(*r);
            *r = now;
            stretch
        };
        // At least one tick per callback, as the budget counted before.
        spent += stretch.clamp(EPOCH_TICK, MAX_BUDGET_SLICE);
        if budget.is_some_and(|b| spent >= b) {
            return Ok(UpdateDeadline::Interrupt);
        }
        let ran = stretch.min(MAX_SLICE);
        ran_total += ran;
        owed += ran.mul_f64(share);
        // A short request finishes in one go; past the quantum, the guest
        // yields every tick (to the back of the run queue, via tokio's
        // yield_now) so a spinning guest cannot hold a runtime thread that
        // other pods' requests need. Throttled idle time is paid in sleeps
        // of at least the timer's 1 ms resolution.
        if ran_total < QUANTUM && owed.is_zero() {
            return Ok(UpdateDeadline::Continue(1));
        }
        let resumed = resumed.clone();
        Ok(if owed < Duration::from_millis(1) {
            UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    *resumed.lock().expect("resume time") = std::time::Instant::now();
                }),
            )
        } else {
            let nap = std::mem::take(&mut owed);
            UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    tokio::time::sleep(nap).await;
                    *resumed.lock().expect("resume time") = std::time::Instant::now();
                }),
            )
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matching() {
        let list = AllowList(vec![
            "api.example.com".into(),
            "*.svc.test".into(),
            "127.0.0.1:8080".into(),
        ]);
        let ok = |u: &str| list.allows(&u.parse().unwrap());
        assert!(ok("https://api.example.com/x"));
        assert!(
            ok("http://API.example.com:9000/"),
            "a host rule allows any port"
        );
        assert!(ok("http://a.b.svc.test/"));
        assert!(!ok("http://svc.test/"), "*.domain is subdomains only");
        assert!(ok("http://127.0.0.1:8080/"));
        assert!(!ok("http://127.0.0.1:8081/"));
        assert!(!ok("http://evil.com/"));
        assert!(AllowList(vec!["*".into()]).allows(&"http://x/".parse().unwrap()));
        assert!(!AllowList::default().allows(&"http://x/".parse().unwrap()));
    }
}
