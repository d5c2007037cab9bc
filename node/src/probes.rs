//! Startup, liveness and readiness probes, as kubelet runs them. httpGet
//! to a Wasm container goes straight into its in-process handler; other
//! httpGet and tcpSocket probes connect to the pod IP; exec runs the command
//! in the container (containerd's task exec).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use http_body_util::Empty;
use tokio::sync::mpsc;
use weft_api::k8s_openapi::api::core::v1::{Container, Probe};
use weft_api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_wasm_host::HttpHandler;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// Runs a command in a container: its exit code, or why it could not run.
pub type Exec = Arc<dyn Fn(Vec<String>) -> BoxFuture<'static, Result<i32, String>> + Send + Sync>;

/// What a container's probes can reach besides its pod IP.
#[derive(Clone, Default)]
pub struct Target {
    /// A Wasm server's in-process handler.
    pub handler: Option<HttpHandler>,
    /// A container's exec.
    pub exec: Option<Exec>,
}

/// A probe's result changed (after its thresholds).
#[derive(Debug, Clone)]
pub struct Transition {
    pub pod_uid: String,
    pub container: String,
    /// Which run of the container (its restart count): a stale verdict
    /// about an earlier run must not touch the current one.
    pub run: u32,
    pub kind: Kind,
    pub healthy: bool,
    /// Why the last attempt failed.
    pub message: String,
}

/// Resolves a probe port (a number, or a containerPort name).
fn port_of(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

/// One attempt. `Err` says why it failed, as kubelet words it.
pub async fn attempt(
    probe: &Probe,
    c: &Container,
    ip: Ipv4Addr,
    target: &Target,
) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let run = async {
        if let Some(h) = &probe.http_get {
            let port = port_of(c, &h.port)?;
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let host = h.host.clone().unwrap_or_else(|| ip.to_string());
            let mut req = hyper::Request::builder()
                .uri(format!("http://{host}:{port}{path}"))
                .header("user-agent", "kube-probe/1.32");
            for hdr in h.http_headers.iter().flatten() {
                req = req.header(hdr.name.as_str(), hdr.value.as_str());
            }
            let req = req
                .body(Empty::<bytes::Bytes>::new())
                .map_err(|e| format!("bad probe request: {e}"))?;
            let code = match &target.handler {
                // In process: no socket, the same path a request takes.
                Some(handler) => handler
                    .handle(req)
                    .await
                    .map_err(|e| format!("HTTP probe failed: {e}"))?
                    .status(),
                None => over_tcp(SocketAddr::from((ip, port)), req).await?,
            };
            if code.as_u16() >= 200 && code.as_u16() < 400 {
                Ok(())
            } else {
                Err(format!(
                    "HTTP probe failed with statuscode: {}",
                    code.as_u16()
                ))
            }
        } else if let Some(t) = &probe.tcp_socket {
            let port = port_of(c, &t.port)?;
            tokio::net::TcpStream::connect((ip, port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {ip}:{port}: {e}"))
        } else if let Some(e) = &probe.exec {
            let Some(exec) = &target.exec else {
                return Err("exec probes need a container runtime; Wasm containers support httpGet and tcpSocket".into());
            };
            let command = e.command.clone().unwrap_or_default();
            match exec(command.clone()).await {
                Ok(0) => Ok(()),
                Ok(code) => Err(format!("command {command:?} exited with {code}")),
                Err(e) => Err(format!("exec {command:?}: {e}")),
            }
        } else {
            Err("the probe has no handler (httpGet, tcpSocket or exec)".into())
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("probe timed out after {timeout:?}")),
    }
}

async fn over_tcp(
    addr: SocketAddr,
    mut req: hyper::Request<Empty<bytes::Bytes>>,
) -> Result<hyper::StatusCode, String> {
    // On the wire, as kubelet sends it: origin-form target and a Host header
    // (servers such as busybox httpd answer 400 without one).
    if let Some(authority) = req.uri().authority().cloned()
        && !req.headers().contains_key(hyper::header::HOST)
        && let Ok(v) = authority.as_str().parse()
    {
        req.headers_mut().insert(hyper::header::HOST, v);
    }
    if let Some(pq) = req.uri().path_and_query().cloned()
        && let Ok(uri) = pq.as_str().parse()
    {
        *req.uri_mut() = uri;
    }
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP probe failed: {e}"))?;
    tokio::spawn(conn);
    send.send_request(req)
        .await
        .map(|r| r.status())
        .map_err(|e| format!("HTTP probe failed: {e}"))
}

/// Runs the probes of one run of a container until dropped, reporting
/// transitions. Startup gates the others; readiness starts unknown (not ready).
pub async fn run(
    pod_uid: String,
    run: u32,
    c: Container,
    ip: Ipv4Addr,
    target: Target,
    tx: mpsc::UnboundedSender<Transition>,
) {
    let mut probes: Vec<(Kind, Probe)> = Vec::new();
    for (kind, p) in [
        (Kind::Startup, &c.startup_probe),
        (Kind::Liveness, &c.liveness_probe),
        (Kind::Readiness, &c.readiness_probe),
    ] {
        if let Some(p) = p {
            probes.push((kind, p.clone()));
        }
    }
    if probes.is_empty() {
        return;
    }
    let started = tokio::time::Instant::now();
    let mut state: Vec<State> = probes.iter().map(|_| State::default()).collect();
    let has_startup = probes.iter().any(|(k, _)| *k == Kind::Startup);
    let mut startup_done = !has_startup;
    loop {
        let now = tokio::time::Instant::now();
        let mut next = now + Duration::from_secs(3600);
        for (i, (kind, p)) in probes.iter().enumerate() {
            if *kind == Kind::Startup && startup_done {
                continue;
            }
            if *kind != Kind::Startup && !startup_done {
                continue;
            }
            let s = &mut state[i];
            let due = s.next.unwrap_or_else(|| {
                started + Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64)
            });
            if due > now {
                next = next.min(due);
                continue;
            }
            let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
            s.next = Some(now + period);
            next = next.min(now + period);
            let result = attempt(p, &c, ip, &target).await;
            let (successes, failures) = (
                p.success_threshold.unwrap_or(1).max(1) as u32,
                p.failure_threshold.unwrap_or(3).max(1) as u32,
            );
            let changed = match &result {
                Ok(()) => {
                    s.ok_run += 1;
                    s.fail_run = 0;
                    (s.healthy != Some(true) && s.ok_run >= successes).then_some(true)
                }
                Err(_) => {
                    s.fail_run += 1;
                    s.ok_run = 0;
                    (s.healthy != Some(false) && s.fail_run >= failures).then_some(false)
                }
            };
            if let Some(healthy) = changed {
                s.healthy = Some(healthy);
                if *kind == Kind::Startup && healthy {
                    startup_done = true;
                    next = now;
                }
                let _ = tx.send(Transition {
                    pod_uid: pod_uid.clone(),
                    container: c.name.clone(),
                    run,
                    kind: *kind,
                    healthy,
                    message: result.err().unwrap_or_default(),
                });
            }
        }
        tokio::time::sleep_until(next).await;
    }
}

#[derive(Default)]
struct State {
    next: Option<tokio::time::Instant>,
    ok_run: u32,
    fail_run: u32,
    healthy: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn named_and_numbered_ports() {
        let c = container(
            serde_json::json!({"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}),
        );
        assert_eq!(port_of(&c, &IntOrString::Int(9000)), Ok(9000));
        assert_eq!(port_of(&c, &IntOrString::String("http".into())), Ok(8080));
        assert!(port_of(&c, &IntOrString::String("grpc".into())).is_err());
    }

    #[tokio::test]
    async fn tcp_probes_connect_to_the_pod_ip() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let c = container(serde_json::json!({"name": "c"}));
        let probe: Probe =
            serde_json::from_value(serde_json::json!({"tcpSocket": {"port": port}})).unwrap();
        let ip = Ipv4Addr::LOCALHOST;
        assert_eq!(attempt(&probe, &c, ip, &Target::default()).await, Ok(()));
        drop(listener);
        let err = attempt(&probe, &c, ip, &Target::default())
            .await
            .unwrap_err();
        assert!(err.starts_with("dial tcp 127.0.0.1"), "{err}");
        let exec: Probe =
            serde_json::from_value(serde_json::json!({"exec": {"command": ["true"]}})).unwrap();
        assert!(attempt(&exec, &c, ip, &Target::default()).await.is_err());
        // With a runtime's exec, the exit code decides.
        let target = |code: i32| Target {
            handler: None,
            exec: Some(Arc::new(move |cmd: Vec<String>| {
                Box::pin(async move {
                    assert_eq!(cmd, ["true"]);
                    Ok(code)
                }) as BoxFuture<'static, _>
            })),
        };
        assert_eq!(attempt(&exec, &c, ip, &target(0)).await, Ok(()));
        let err = attempt(&exec, &c, ip, &target(3)).await.unwrap_err();
        assert!(err.contains("exited with 3"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn thresholds_gate_transitions() {
        // A liveness probe against a port nobody listens on fails three
        // times (periodSeconds apart) before it reports unhealthy.
        let c = container(serde_json::json!({"name": "c", "livenessProbe":
            {"tcpSocket": {"port": 1}, "periodSeconds": 5, "failureThreshold": 3}}));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = tokio::time::Instant::now();
        let task = tokio::spawn(run(
            "u".into(),
            4,
            c,
            Ipv4Addr::new(127, 0, 0, 1),
            Target::default(),
            tx,
        ));
        let t = rx.recv().await.unwrap();
        assert_eq!((t.kind, t.healthy, t.run), (Kind::Liveness, false, 4));
        assert!(
            start.elapsed() >= Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        task.abort();
    }
}
