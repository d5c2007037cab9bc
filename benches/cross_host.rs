//! Cross-host benchmark: what the hop to another host costs, for each
//! routed backend, on three network-namespace hosts (root) with a routed
//! agent on each, as tests/pod_network.rs runs them.
//!
//!   cargo bench --profile dev --bench cross_host            (all figures)
//!   cargo bench --profile dev --bench cross_host -- quick   (smaller counts)
//!
//! For host-gw and VXLAN in one run it prints:
//! * GET latency from host 1 to a Wasm pod on host 1 and to one on host 2,
//!   by pod IP, sequential: p50/p99 of each and the added p50/p99 of the hop;
//! * Service req/s from host 1 through a ClusterIP whose only endpoint is
//!   on host 1 (the proxy's in-process fast path) and one whose only
//!   endpoint is on host 2 (over the pod network), 32 keep-alive clients;
//! * pod start → reachable from another host: create a pod on node-2 over
//!   the API, then GET it from host 1 until it answers; p50/p99.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../wasm-host/tests/guests/mod.rs"]
mod guests;
#[path = "common/stats.rs"]
mod stats;

use std::time::{Duration, Instant};

use common::routed::*;
use serde_json::{Value, json};
use stats::{ms, pct};

struct Counts {
    gets: usize,
    load: Duration,
    starts: usize,
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let n = if quick {
        Counts {
            gets: 300,
            load: Duration::from_secs(2),
            starts: 5,
        }
    } else {
        Counts {
            gets: 2_000,
            load: Duration::from_secs(5),
            starts: 20,
        }
    };
    for backend in ["host-gw", "vxlan"] {
        run(backend, &n);
    }
}

fn run(backend: &str, n: &Counts) {
    let (mut m, _agents, _blocks) = routed_cluster(&["--backend", backend]);
    let dir = tempfile::tempdir().unwrap();
    registries(
        &mut m,
        dir.path(),
        &guests::sample("hello"),
        &guests::guest("wasm-host/tests/guests/fetch", "fetch"),
    );
    for h in 1..=2 {
        m.kubectl_stdin(
            0,
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: hello-{h}, labels: {{on: \"{h}\"}}}}\nspec:\n  nodeName: node-{h}\n  containers:\n  - name: app\n    image: {IMAGE_HELLO}\n    ports: [{{containerPort: 8080}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: on-{h}}}\nspec:\n  selector: {{on: \"{h}\"}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
            ),
        );
    }
    let pod_ip = |h: usize| ready(&m, &format!("hello-{h}")).0;
    let (pod1, pod2) = (pod_ip(1), pod_ip(2));
    let (svc1, svc2) = (cluster_ip(&m, "on-1"), cluster_ip(&m, "on-2"));
    let token = std::fs::read_to_string(m.dirs[0].join("tokens/admin")).unwrap();
    let ca = std::fs::read(m.dirs[0].join("pki/ca.crt")).unwrap();
    let api = m.url(0);
    println!("== backend {backend}");
    m.hosts.run_in(0, || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = reqwest::Client::new();
            let mut here = latencies(&client, &format!("http://{pod1}:8080/"), n.gets).await;
            let mut there = latencies(&client, &format!("http://{pod2}:8080/"), n.gets).await;
            let (h50, h99) = (pct(&mut here, 0.5), pct(&mut here, 0.99));
            let (t50, t99) = (pct(&mut there, 0.5), pct(&mut there, 0.99));
            println!(
                "GET by pod IP, {} sequential: same host p50 {} p99 {}; other host p50 {} p99 {}; the hop adds p50 {} p99 {}",
                n.gets,
                ms(h50),
                ms(h99),
                ms(t50),
                ms(t99),
                ms(t50.saturating_sub(h50)),
                ms(t99.saturating_sub(h99)),
            );
            let local = throughput(&format!("http://{svc1}/"), n.load).await;
            let remote = throughput(&format!("http://{svc2}/"), n.load).await;
            println!(
                "Service from host 1, 32 clients, {:?}: endpoint on host 1 {local:.0} req/s; on host 2 {remote:.0} req/s (ratio {:.2})",
                n.load,
                remote / local
            );
            let mut starts = Vec::new();
            for i in 0..n.starts {
                starts.push(start_to_reachable(&api, token.trim(), &ca, i).await);
            }
            println!(
                "pod start on host 2 → answering host 1, {}: p50 {} p99 {}",
                n.starts,
                ms(pct(&mut starts, 0.5)),
                ms(pct(&mut starts, 0.99))
            );
        });
    });
    drop(m);
}

/// `count` sequential GETs of `url` on one keep-alive connection.
async fn latencies(client: &reqwest::Client, url: &str, count: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let r = client.get(url).send().await.expect("GET");
        assert!(r.status().is_success(), "{url}: {}", r.status());
        r.bytes().await.unwrap();
        out.push(t.elapsed());
    }
    out
}

/// Requests per second 32 keep-alive clients get from `url` in `span`.
async fn throughput(url: &str, span: Duration) -> f64 {
    let client = reqwest::Client::new();
    let end = Instant::now() + span;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_string());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < end {
                    if let Ok(r) = client.get(&url).send().await
                        && r.status().is_success()
                        && r.bytes().await.is_ok()
                    {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / span.as_secs_f64()
}

/// Creates pod `start-{i}` on node-2 over the API, then GETs it from here
/// (host 1) until it answers: the time from the create to the answer.
async fn start_to_reachable(api: &str, token: &str, ca: &[u8], i: usize) -> Duration {
    let api_client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap())
        .build()
        .unwrap();
    let pods = format!("{api}/api/v1/namespaces/default/pods");
    let name = format!("start-{i}");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": "node-2", "containers": [{"name": "app", "image": IMAGE_HELLO,
                 "ports": [{"containerPort": 8080}]}]}});
    let t = Instant::now();
    let r = api_client
        .post(&pods)
        .bearer_auth(token)
        .json(&pod)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create {name}: {}", r.status());
    let deadline = t + Duration::from_secs(30);
    let ip = loop {
        assert!(Instant::now() < deadline, "{name} got no IP");
        let p: Value = api_client
            .get(format!("{pods}/{name}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(ip) = p.pointer("/status/podIP").and_then(Value::as_str) {
            break ip.to_string();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    loop {
        assert!(Instant::now() < deadline, "{name} at {ip} never answered");
        if let Ok(r) = probe.get(format!("http://{ip}:8080/")).send().await
            && r.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = t.elapsed();
    let _ = api_client
        .delete(format!("{pods}/{name}?gracePeriodSeconds=0"))
        .bearer_auth(token)
        .send()
        .await;
    took
}
