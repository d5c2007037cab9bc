//! The service proxy in every node agent (kube-proxy's role): it watches
//! Services and EndpointSlices, listens on each ClusterIP:port and
//! NodePort, and sends each connection or request to a ready endpoint.
//!
//! - HTTP (by `appProtocol`, or detected from the client's first bytes) is
//!   balanced per request. A Wasm endpoint on this node is served in
//!   process, straight into its handler, with no socket hop.
//! - Anything else is a TCP stream to one endpoint (the L4 path).
//!
//! See docs/networking.md for the data paths.

pub mod balancer;
pub mod dns;
pub mod egress;
pub mod metrics;
pub mod table;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::net::{TcpListener, TcpStream};
use weft_api::k8s_openapi::api::core::v1::Service;
use weft_api::k8s_openapi::api::discovery::v1::EndpointSlice;
use weft_wasm_host::HttpHandler;

use crate::http::{Body, text};
use metrics::{EndpointMetrics, ProxyMetrics};
use table::{Mode, PortRoute, Table};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long an endpoint may take to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client without an appProtocol has to send its first bytes before
/// the connection is taken for plain TCP (server-speaks-first protocols wait this once).
const DETECT_TIMEOUT: Duration = Duration::from_millis(100);

/// The Wasm HTTP handlers of this node's pods by pod IP and port: the
/// in-process fast path's targets. The runtime adds and removes them.
#[derive(Default)]
pub struct LocalHandlers(RwLock<HashMap<SocketAddr, HttpHandler>>);

impl LocalHandlers {
    pub fn insert(&self, addr: SocketAddr, handler: HttpHandler) {
        self.0.write().expect("handlers lock").insert(addr, handler);
    }

    pub fn remove(&self, addr: &SocketAddr) {
        self.0.write().expect("handlers lock").remove(addr);
    }

    fn get(&self, addr: &SocketAddr) -> Option<HttpHandler> {
        self.0.read().expect("handlers lock").get(addr).cloned()
    }
}

pub struct Proxy {
    table: RwLock<Arc<Table>>,
    local: Arc<LocalHandlers>,
    client: Client<HttpConnector, Body>,
    pub metrics: ProxyMetrics,
}

/// Counts an open connection or in-flight request on the active gauge.
struct Active(prometheus_client::metrics::gauge::Gauge);

impl Active {
    fn new(m: &EndpointMetrics) -> Active {
        m.active.inc();
        Active(m.active.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Proxy {
    pub fn new(local: Arc<LocalHandlers>) -> Arc<Proxy> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Arc::new(Proxy {
            table: RwLock::default(),
            local,
            client,
            metrics: ProxyMetrics::default(),
        })
    }

    pub fn table(&self) -> Arc<Table> {
        self.table.read().expect("table lock").clone()
    }

    fn eject(&self, route: &PortRoute, ep: SocketAddr) {
        if route.balancer.eject(ep) {
            tracing::info!(service = %route.service, endpoint = %ep, "endpoint refused a connection: ejected for {:?}", balancer::EJECTION);
            if let Some(m) = route.stats.get(&ep) {
                m.ejections.inc();
            }
        }
    }

    /// Watches Services and EndpointSlices and keeps the table and the
    /// listeners current until `stop`.
    pub async fn run(
        self: Arc<Self>,
        client: kube::Client,
        node: table::ThisNode,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let (services, svc_writer) = reflector::store::<Service>();
        let (slices, slice_writer) = reflector::store::<EndpointSlice>();
        let cfg = watcher::Config::default().any_semantic();
        let svc_events = reflector(
            svc_writer,
            watcher(Api::<Service>::all(client.clone()), cfg.clone()),
        )
        .default_backoff()
        .map(|_| ());
        let slice_events = reflector(
            slice_writer,
            watcher(Api::<EndpointSlice>::all(client), cfg),
        )
        .default_backoff()
        .map(|_| ());
        let mut events = std::pin::pin!(futures::stream::select(svc_events, slice_events));
        let mut balancers = HashMap::new();
        let mut listeners: HashMap<SocketAddr, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut dns: Option<(SocketAddr, tokio::task::JoinHandle<()>)> = None;
        loop {
            tokio::select! {
                e = events.next() => if e.is_none() { break },
                _ = stop.changed() => break,
            }
            // Take whatever else is already queued: one rebuild per burst.
            while let Some(Some(())) = events.next().now_or_never() {}
            let table = table::build(
                &services.state(),
                &slices.state(),
                &node,
                &mut balancers,
                &self.metrics,
            );
            let table = Arc::new(table);
            *self.table.write().expect("table lock") = table.clone();
            listeners.retain(|addr, task| {
                let keep = table.listeners.contains_key(addr);
                if !keep {
                    // Stops accepting; open connections drain on their own.
                    task.abort();
                }
                keep
            });
            for addr in table.listeners.keys() {
                if listeners.contains_key(addr) {
                    continue;
                }
                match listen(*addr) {
                    Ok(l) => {
                        listeners.insert(*addr, tokio::spawn(self.clone().accept(l, *addr)));
                    }
                    Err(e) => tracing::warn!("service proxy cannot listen on {addr}: {e}"),
                }
            }
            if dns.as_ref().map(|d| d.0) != table.dns {
                if let Some((_, task)) = dns.take() {
                    task.abort();
                }
                if let Some(addr) = table.dns {
                    match dns::serve(addr, self.clone()) {
                        Ok(task) => dns = Some((addr, task)),
                        Err(e) => tracing::warn!(
                            "cluster DNS cannot listen on {addr} (port 53 needs root or CAP_NET_BIND_SERVICE): {e}"
                        ),
                    }
                }
            }
        }
        for (_, task) in listeners {
            task.abort();
        }
        if let Some((_, task)) = dns {
            task.abort();
        }
    }

    fn route_at(&self, addr: SocketAddr) -> Option<Arc<PortRoute>> {
        self.table
            .read()
            .expect("table lock")
            .listeners
            .get(&addr)
            .cloned()
    }

    async fn accept(self: Arc<Self>, listener: TcpListener, addr: SocketAddr) {
        loop {
            let (stream, peer) = crate::http::accept(&listener).await;
            tokio::spawn(self.clone().connection(stream, peer, addr));
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, addr: SocketAddr) {
        let Some(route) = self.route_at(addr) else {
            return;
        };
        let http = match route.mode {
            Mode::Http => true,
            Mode::Tcp => false,
            Mode::Detect => detect_http(&stream).await,
        };
        if !http {
            return self.splice(stream, peer, &route).await;
        }
        let me = self.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let me = me.clone();
            async move {
                // Each request sees the current endpoints, even on an old connection.
                let resp = match me.route_at(addr) {
                    Some(route) => me.route_request(&route, peer.ip(), req).await,
                    None => text(503, format!("no service at {addr}\n")),
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // A client that shuts its side after the request (nc, shell
        // scripts) still gets the answer, as through an L4 proxy.
        builder.http1().half_close(true);
        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
    }

    /// The L4 path: one endpoint for the connection's life; a connection
    /// failure ejects the endpoint and tries the next.
    async fn splice(&self, mut inbound: TcpStream, peer: SocketAddr, route: &PortRoute) {
        let started = Instant::now();
        let mut tried = Vec::new();
        loop {
            let Some(ep) = route.balancer.pick(
                &route.endpoints,
                route.policy,
                peer.ip(),
                route.affinity,
                &tried,
            ) else {
                // No endpoint: the client sees the connection close at once.
                route.unrouted.requests.inc();
                return;
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ep)).await {
                Ok(Ok(mut outbound)) => {
                    let _ = outbound.set_nodelay(true);
                    let m = route.stats.get(&ep).unwrap_or(&route.unrouted);
                    let _inflight = route.balancer.start(route.policy, ep);
                    let _active = Active::new(m);
                    m.requests.inc();
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    m.latency.observe(started.elapsed().as_secs_f64());
                    return;
                }
                _ => {
                    self.eject(route, ep);
                    tried.push(ep);
                }
            }
        }
    }

    /// The HTTP path: one request to one endpoint, in process for this
    /// node's Wasm pods. Retried on another endpoint only when the
    /// connection failed and the request has no body to replay.
    pub async fn route_request<B>(
        &self,
        route: &PortRoute,
        client: IpAddr,
        req: hyper::Request<B>,
    ) -> hyper::Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let replayable = body.is_end_stream();
        let mut body = Some(body.map_err(Into::into).boxed_unsync());
        let mut tried = Vec::new();
        loop {
            let Some(ep) = route.balancer.pick(
                &route.endpoints,
                route.policy,
                client,
                route.affinity,
                &tried,
            ) else {
                route.unrouted.requests.inc();
                return if tried.is_empty() {
                    text(
                        503,
                        format!("no endpoints available for service \"{}\"\n", route.service),
                    )
                } else {
                    text(
                        502,
                        format!(
                            "no endpoint of service \"{}\" accepted a connection\n",
                            route.service
                        ),
                    )
                };
            };
            let m = route.stats.get(&ep).unwrap_or(&route.unrouted);
            let _inflight = route.balancer.start(route.policy, ep);
            let _active = Active::new(m);
            let body = body
                .take()
                .unwrap_or_else(|| Empty::new().map_err(|e| match e {}).boxed_unsync());
            if let Some(handler) = self.local.get(&ep) {
                // In process: no connection can fail, so this is the last attempt.
                let req = hyper::Request::from_parts(parts, body);
                let resp = crate::http::respond(&handler, req).await;
                m.requests.inc();
                m.latency.observe(started.elapsed().as_secs_f64());
                return resp;
            }
            let mut req = hyper::Request::new(body);
            *req.method_mut() = parts.method.clone();
            *req.headers_mut() = parts.headers.clone();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            *req.uri_mut() = match format!("http://{ep}{path}").parse() {
                Ok(u) => u,
                Err(e) => return text(400, format!("{e}\n")),
            };
            // Endpoints get HTTP/1.1 whatever the client spoke (h2c or 1.x).
            for h in [
                "connection",
                "keep-alive",
                "proxy-connection",
                "te",
                "transfer-encoding",
                "upgrade",
            ] {
                req.headers_mut().remove(h);
            }
            let resp = match self.client.request(req).await {
                Ok(resp) => resp.map(|b| b.map_err(Into::into).boxed_unsync()),
                Err(e) if e.is_connect() => {
                    self.eject(route, ep);
                    tried.push(ep);
                    if replayable {
                        continue;
                    }
                    text(
                        502,
                        format!("endpoint {ep} of \"{}\": {e}\n", route.service),
                    )
                }
                Err(e) => text(
                    502,
                    format!("endpoint {ep} of \"{}\": {e}\n", route.service),
                ),
            };
            m.requests.inc();
            m.latency.observe(started.elapsed().as_secs_f64());
            return resp;
        }
    }
}

/// A listening socket other agents on this host may share (SO_REUSEPORT):
/// every node serves the same ClusterIPs.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Whether a connection's first bytes are an HTTP/1 request line or the h2c preface.
fn looks_like_http(b: &[u8]) -> bool {
    const STARTS: [&[u8]; 10] = [
        b"GET ", b"HEAD", b"POST", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC", b"PRI ",
    ];
    b.len() >= 4 && STARTS.iter().any(|s| b.starts_with(s))
}

async fn detect_http(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 4];
    let deadline = tokio::time::Instant::now() + DETECT_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n >= 4 => return looks_like_http(&buf),
            // Fewer bytes so far: look again shortly (peek returns at once while data waits).
            Ok(Ok(n)) if n > 0 => tokio::time::sleep(Duration::from_millis(1)).await,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_http_request_lines_and_the_h2_preface() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"PRI * HTTP/2.0\r\n"));
        assert!(!looks_like_http(b"\x16\x03\x01\x02"), "TLS");
        assert!(!looks_like_http(b"\x00\x00\x00\x08"), "postgres");
        assert!(!looks_like_http(b"GE"));
    }
}
