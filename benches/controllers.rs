//! Controller-driven work: a Deployment of N replicas, create → all Ready.
//!
//!   cargo bench --profile dev --bench controllers            (1,000 replicas, 3 runs)
//!   cargo bench --profile dev --bench controllers -- quick   (200 replicas, 1 run)
//!
//! A real control plane (Raft + rocksdb, the API server, the scheduler and
//! the controllers) with 50 simulated nodes. A hollow kubelet, as in
//! kubemark, watches pods through the API and gives each bound pod a
//! Running, Ready status through `pods/status`. Every other write is the
//! control plane's own: the Deployment controller's ReplicaSet, the
//! ReplicaSet controller's pods, the scheduler's bindings, both controllers'
//! status. The figure is the Deployment's create → `status.readyReplicas == N`
//! as a watch on it sees it.

#[path = "common/watch.rs"]
mod watch;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use weft_control_plane::cluster::time::ts;
use weft_control_plane::{ControlPlane, ControlPlaneConfig};

// The same allocator as the weft binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NODES: usize = 50;

fn node(i: usize) -> Value {
    let name = format!("node-{i:03}");
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "runtime.weft.dev/wasmtime": "true"}},
        "status": {"allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                   "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True",
                                   "lastHeartbeatTime": ts(jiff::Timestamp::now())}]}})
}

fn deployment(replicas: usize) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"runtimeClassName": "wasm", "containers": [{"name": "app", "image": "127.0.0.1:5000/hello:1",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}})
}

async fn post(http: &reqwest::Client, url: String, body: &Value) {
    let resp = http.post(url).json(body).send().await.expect("post");
    assert!(
        resp.status().is_success(),
        "{}",
        resp.text().await.unwrap_or_default()
    );
}

/// What a node agent writes once a pod runs: Running, with every condition true.
fn ready_status(i: usize) -> Value {
    let now = ts(jiff::Timestamp::now());
    let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    json!({"status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255),
        "startTime": now, "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")]}})
}

/// Gives every pod bound to a node a Ready status, once.
async fn hollow_kubelet(http: reqwest::Client, base: String) {
    let resp = http
        .get(format!("{base}/api/v1/pods?watch=true"))
        .send()
        .await
        .expect("watch pods");
    let permits = Arc::new(Semaphore::new(64));
    let mut seen = HashSet::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    tokio::spawn(watch::for_each_event(resp, move |ev| {
        let pod = &ev["object"];
        let bound = pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let running = pod["status"]["phase"] == "Running";
        if bound && !running && ev["type"] != "DELETED" {
            let ns = pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
            let _ = tx.send((ns, name));
        }
        true
    }));
    let mut n = 0;
    while let Some((ns, name)) = rx.recv().await {
        if !seen.insert(name.clone()) {
            continue;
        }
        n += 1;
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (http, url) = (
            http.clone(),
            format!("{base}/api/v1/namespaces/{ns}/pods/{name}/status"),
        );
        let body = ready_status(n).to_string();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = http
                .patch(url)
                .header("content-type", "application/merge-patch+json")
                .body(body)
                .send()
                .await;
        });
    }
}

/// Seconds from the Deployment's create to all `replicas` Ready.
async fn run(replicas: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ControlPlaneConfig::new(
        dir.path().to_path_buf(),
        "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
    );
    cfg.insecure = true;
    cfg.watch_window = 200_000;
    let cp = ControlPlane::start(cfg).await.expect("control plane");
    let mut leading = cp.leading.clone();
    tokio::time::timeout(Duration::from_secs(30), leading.wait_for(|l| *l))
        .await
        .expect("the controllers start")
        .unwrap();
    let http = reqwest::Client::new();
    let base = cp.url.clone();
    post(&http, format!("{base}/apis/node.k8s.io/v1/runtimeclasses"),
        &json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "wasm"}, "handler": "wasmtime"})).await;
    futures::stream::iter(0..NODES)
        .for_each_concurrent(16, |i| {
            let (http, url) = (&http, format!("{base}/api/v1/nodes"));
            async move { post(http, url, &node(i)).await }
        })
        .await;
    let kubelet = tokio::spawn(hollow_kubelet(http.clone(), base.clone()));
    let resp = http
        .get(format!("{base}/apis/apps/v1/namespaces/default/deployments?watch=true&fieldSelector=metadata.name=web"))
        .send()
        .await
        .unwrap();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let mut done_tx = Some(done_tx);
    tokio::spawn(watch::for_each_event(resp, move |ev| {
        if ev["object"]["status"]["readyReplicas"].as_u64() == Some(replicas as u64) {
            if let Some(tx) = done_tx.take() {
                let _ = tx.send(Instant::now());
            }
            return false;
        }
        true
    }));
    let start = Instant::now();
    post(
        &http,
        format!("{base}/apis/apps/v1/namespaces/default/deployments"),
        &deployment(replicas),
    )
    .await;
    let at = tokio::time::timeout(Duration::from_secs(300), done)
        .await
        .expect("all replicas Ready within 300 s")
        .unwrap();
    kubelet.abort();
    cp.shutdown(Duration::from_secs(5)).await;
    at.duration_since(start).as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (replicas, runs) = if quick { (200, 1) } else { (1_000, 3) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "controllers benchmark: a {replicas}-replica Deployment to all Ready, {NODES} simulated nodes, hollow kubelet\n"
    );
    let mut secs = Vec::new();
    for i in 0..runs {
        let s = rt.block_on(run(replicas));
        println!(
            "run {}: {s:.2} s ({:.0} pods/s)",
            i + 1,
            replicas as f64 / s
        );
        secs.push(s);
    }
    secs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = secs[secs.len() / 2];
    println!(
        "\nmedian: {median:.2} s to all Ready ({:.0} pods/s)",
        replicas as f64 / median
    );
}
