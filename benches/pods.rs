//! Wasm pod create → Ready with the artifact already cached, through the real
//! API: POST the pod (bound to the node), then wait on a watch for Ready.
//! Three waves: one pod at a time; a burst created at once (create → Ready
//! per pod with that many in flight); a flood created at once (the node's
//! Ready rate, pods/s from the first POST to the last Ready).
//!
//!   cargo bench --profile dev --bench pods            (200; 1,000; 10,000 pods)
//!   cargo bench --profile dev --bench pods -- quick   (50; 200; 1,000 pods)
//!
//! One process runs the control plane, the node agent and the clients; a
//! loopback docker-registry serves `samples/hello` once, for the warm-up pull.

#[path = "../wasm-host/tests/guests/mod.rs"]
mod guests;
#[path = "../tests/common/registry.rs"]
mod registry;
#[path = "common/stats.rs"]
mod stats;
#[path = "common/watch.rs"]
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;

use serde_json::{Value, json};
use weft_control_plane::{ControlPlane, ControlPlaneConfig};
use weft_node::agent::{self, AgentConfig};

use stats::{ms, pct};

fn pod(name: &str, image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"nodeName": "bench-node", "containers": [{"name": "app", "image": image, "ports": [{"containerPort": 8080}]}]}})
}

/// POSTs `n` pods named `{prefix}{i}`, 64 requests in flight, and waits for
/// each to be Ready: per-pod create → Ready, the time from the first POST to
/// the last 201, and to the last Ready.
async fn wave(
    http: &reqwest::Client,
    pods_url: &str,
    token: &str,
    image: &str,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<watch::Ready>,
    prefix: &str,
    n: usize,
) -> (Vec<Duration>, Duration, Duration) {
    let begun = Instant::now();
    let mut created = Duration::ZERO;
    let create = |name: String| async move {
        let sent = Instant::now();
        let r = http
            .post(pods_url)
            .bearer_auth(token)
            .json(&pod(&name, image))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{name}");
        (name, sent)
    };
    let mut names = (0..n).map(|i| format!("{prefix}{i}"));
    let mut inflight = futures::stream::FuturesUnordered::new();
    for name in names.by_ref().take(64) {
        inflight.push(create(name));
    }
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(n);
    let mut lat = Vec::with_capacity(n);
    let mut early: HashMap<String, Instant> = HashMap::new();
    let mut done = std::collections::HashSet::with_capacity(n);
    // Creates and Ready events interleave: the agent starts pods while POSTs go on.
    loop {
        tokio::select! {
            Some((name, at)) = inflight.next() => {
                if let Some(name) = names.next() {
                    inflight.push(create(name));
                }
                created = begun.elapsed();
                if let Some(ready) = early.remove(&name) {
                    lat.push(ready - at);
                    done.insert(name);
                } else {
                    sent.insert(name, at);
                }
            }
            r = tokio::time::timeout(Duration::from_secs(60), rx.recv()) => {
                let watch::Ready { name, at, .. } = r.expect("pods Ready within 60 s").unwrap();
                if let Some(t) = sent.remove(&name) {
                    lat.push(at - t);
                    done.insert(name);
                } else if name.starts_with(prefix) && !done.contains(&name) {
                    // Ready before its POST returned.
                    early.entry(name).or_insert(at);
                }
                if lat.len() == n {
                    return (lat, created, begun.elapsed());
                }
            }
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (n, burst, flood) = if quick {
        (50, 200, 1_000)
    } else {
        (200, 1_000, 10_000)
    };
    // Every pod port is a listening socket.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let reg = registry::Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let wasm_path = dir.path().join("hello.wasm");
    std::fs::write(&wasm_path, guests::sample("hello")).unwrap();
    let image = format!("{}/samples/hello:1", reg.addr);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        weft_node::artifacts::push(&wasm_path, &image, &oci_client::secrets::RegistryAuth::Anonymous).await.unwrap();
        let cfg = ControlPlaneConfig::new(dir.path().join("cluster"), "127.0.0.1:0".parse::<SocketAddr>().unwrap());
        let cp = ControlPlane::start(cfg).await.unwrap();
        let client = agent::client(&cp.url, &cp.token, cp.ca_pem.as_ref().map(|p| p.as_bytes())).unwrap();
        let mut acfg = AgentConfig::new("bench-node".into(), dir.path().join("node"));
        acfg.pod_cidr = "127.200.0.0/16".into();
        let node = agent::start(client, acfg).await.unwrap();

        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(cp.ca_pem.as_ref().unwrap().as_bytes()).unwrap())
            .build()
            .unwrap();
        let pods_url = format!("{}/api/v1/namespaces/default/pods", cp.url);
        // One watch for the whole run; Ready times are taken as events arrive.
        let mut rx = watch::ready_pods(&http, &pods_url, &cp.token).await;
        let mut lat = Vec::with_capacity(n);
        for i in 0..=n {
            let name = format!("p{i}");
            let t = Instant::now();
            let r = http.post(&pods_url).bearer_auth(&cp.token).json(&pod(&name, &image)).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 201);
            loop {
                let watch::Ready { name: got, at, .. } = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("pod Ready").unwrap();
                if got == name {
                    // p0 pulls and compiles: the warm-up, not measured.
                    if i > 0 {
                        lat.push(at - t);
                    }
                    break;
                }
            }
        }
        println!("weft Wasm pod create -> Ready, artifact cached ({n} pods, one at a time, through the HTTPS API + watch)");
        println!("p50 {}  p99 {}  max {}", ms(pct(&mut lat, 0.5)), ms(pct(&mut lat, 0.99)), ms(pct(&mut lat, 1.0)));
        let (mut lat, _, _) = wave(&http, &pods_url, &cp.token, &image, &mut rx, "b", burst).await;
        println!("{burst} pods created at once (64 POSTs in flight): create -> Ready p50 {}  p99 {}  max {}",
            ms(pct(&mut lat, 0.5)), ms(pct(&mut lat, 0.99)), ms(pct(&mut lat, 1.0)));
        let (_, created, took) = wave(&http, &pods_url, &cp.token, &image, &mut rx, "f", flood).await;
        println!("{flood} pods created at once: created in {:.2} s, all Ready in {:.2} s: {:.0} pods/s",
            created.as_secs_f64(), took.as_secs_f64(), flood as f64 / took.as_secs_f64());
        node.shutdown(Duration::from_secs(10)).await;
        cp.shutdown(Duration::from_secs(10)).await;
    });
}
