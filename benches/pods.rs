//! Wasm pod create → Ready with the artifact already cached, through the real
//! API: POST the pod (bound to the node), then wait on a watch for Ready.
//!
//!   cargo bench --profile dev --bench pods            (200 pods)
//!   cargo bench --profile dev --bench pods -- quick   (50 pods)
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

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_control_plane::apiserver::{ControlPlane, ControlPlaneConfig};
use weft_node::agent::{self, AgentConfig};

use stats::{ms, pct};

fn pod(name: &str, image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"nodeName": "bench-node", "containers": [{"name": "app", "image": image, "ports": [{"containerPort": 8080}]}]}})
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let n = if quick { 50 } else { 200 };
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
        node.shutdown(Duration::from_secs(10)).await;
        cp.shutdown(Duration::from_secs(10)).await;
    });
}
