//! Issue 5's benchmarks, in one run: requests/s and p99 for `samples/hello`
//! under `wrk -t2 -c64`, four ways, one after the other on one machine:
//!
//! - direct to the pod IP (the baseline);
//! - through its ClusterIP on the HTTP path (the node proxy hands each
//!   request to the in-process handler: no socket hop to the pod);
//! - through a ClusterIP with `appProtocol: tcp` (the L4 path: proxy
//!   socket → pod socket), whose added p99 is reported;
//! - a native hyper hello, the ceiling;
//! - p50/p99 one request at a time, taking turns between the paths, where
//!   the hop's own added latency shows without queueing behind 64
//!   connections on 2 cores;
//! - how fast a new Service is routed (create → first 200 at its ClusterIP).
//!
//!   cargo bench --profile dev --bench proxy            (wrk 10 s each)
//!   cargo bench --profile dev --bench proxy -- quick   (wrk 3 s each)
//!
//! The control plane runs in this process, the node agent (and so the proxy)
//! is a `weft node` child. One pod, so every path has the same single endpoint.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "../wasm-host/tests/guests/mod.rs"]
mod guests;
#[path = "common/load.rs"]
mod load;
#[path = "../tests/common/registry.rs"]
mod registry;
#[path = "common/watch.rs"]
mod watch;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use load::{interleaved_latency, micros, native_hello, wrk};
use serde_json::json;

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let secs = if quick { 3 } else { 10 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = cluster::Cluster::start("127.202.0.0/16").await;
        let (http, image, cp) = (&c.http, &c.image, &c.cp);
        let api = |path: &str| c.api(path);
        let mut ready = watch::ready_pods(http, &api("pods"), &cp.token).await;
        let post = |path: &str, body: serde_json::Value| {
            let req = http.post(api(path)).bearer_auth(&cp.token).json(&body);
            async move {
                let r = req.send().await.unwrap();
                assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());
                r.json::<serde_json::Value>().await.unwrap()
            }
        };
        post("pods", json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello", "labels": {"app": "hello"}},
            "spec": {"nodeName": "bench-node", "runtimeClassName": "wasm",
                     "containers": [{"name": "app", "image": image, "ports": [{"name": "http", "containerPort": 8080}]}]}})).await;
        let mut ips = Vec::new();
        for (name, app_protocol) in [("hello", None), ("hello-tcp", Some("tcp"))] {
            let mut port = json!({"port": 80, "targetPort": "http"});
            if let Some(p) = app_protocol {
                port["appProtocol"] = json!(p);
            }
            let svc = post("services", json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                "spec": {"selector": {"app": "hello"}, "ports": [port]}})).await;
            ips.push(svc["spec"]["clusterIP"].as_str().unwrap().to_string());
        }
        let pod_ip = tokio::time::timeout(Duration::from_secs(60), ready.recv()).await.expect("hello Ready").unwrap().ip;
        let urls = [format!("http://{pod_ip}:8080/"), format!("http://{}/", ips[0]), format!("http://{}/", ips[1])];
        // Endpoints reach the proxy shortly after the pod turns Ready.
        let deadline = Instant::now() + Duration::from_secs(30);
        for u in &urls {
            while reqwest::get(u.as_str()).await.map(|r| r.status().as_u16()).ok() != Some(200) {
                assert!(Instant::now() < deadline, "{u} never answered 200");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        println!("service proxy benchmark: samples/hello (1 pod), wrk -t2 -c64 -d{secs}s on 127.0.0.0/8");
        // Two rounds of the three, so neither order nor drift favours one path.
        let mut sums = [0.0f64; 3];
        let mut p99s = [0.0f64; 3];
        for round in 1..=2 {
            let runs: Vec<(f64, String)> = urls.iter().map(|u| wrk(u, secs)).collect();
            println!(
                "  round {round}: direct {:.0} req/s (p99 {}), ClusterIP HTTP in-process {:.0} (p99 {}), ClusterIP L4 {:.0} (p99 {})",
                runs[0].0, runs[0].1, runs[1].0, runs[1].1, runs[2].0, runs[2].1
            );
            for (i, (rps, p99)) in runs.iter().enumerate() {
                sums[i] += rps / 2.0;
                p99s[i] += micros(p99) / 2.0;
            }
        }
        let [direct, l7, l4] = sums;
        println!("  direct to podIP            {direct:>9.0} req/s  p99 {:.0} µs", p99s[0]);
        println!("  ClusterIP, HTTP in-process {l7:>9.0} req/s  p99 {:.0} µs   ClusterIP/direct = {:.2}", p99s[1], l7 / direct);
        println!(
            "  ClusterIP, L4 (tcp)        {l4:>9.0} req/s  p99 {:.0} µs   L4/direct = {:.2}, added p99 = {:.0} µs",
            p99s[2],
            l4 / direct,
            p99s[2] - p99s[0]
        );
        // The hop's own cost, without queueing: one request at a time on a
        // keep-alive connection to each path, taking turns.
        let rounds = if quick { 5_000 } else { 20_000 };
        let targets: Vec<SocketAddr> =
            [format!("{pod_ip}:8080"), format!("{}:80", ips[1]), format!("{}:80", ips[0])].iter().map(|a| a.parse().unwrap()).collect();
        let lat = interleaved_latency(&targets, rounds);
        println!("  one request at a time, {rounds} each, taking turns: p50/p99 direct {:.0}/{:.0} µs", lat[0].0, lat[0].1);
        println!("    L4 {:.0}/{:.0} µs: added {:.0}/{:.0} µs", lat[1].0, lat[1].1, lat[1].0 - lat[0].0, lat[1].1 - lat[0].1);
        println!("    HTTP in-process {:.0}/{:.0} µs: added {:.0}/{:.0} µs", lat[2].0, lat[2].1, lat[2].0 - lat[0].0, lat[2].1 - lat[0].1);
        let native = native_hello();
        let (rps, p99) = wrk(&format!("http://{native}/"), secs);
        println!("  native hyper hello         {rps:>9.0} req/s  p99 {p99}   ClusterIP/native = {:.2}", l7 / rps);

        // How fast a change reaches the proxy: a new Service over the Ready pod,
        // from its create to the first 200 at its ClusterIP. This spans the
        // endpoints controller, two watches, the table rebuild and the bind.
        let mut spans = Vec::new();
        for i in 0..20 {
            let started = Instant::now();
            let svc = post("services", json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("probe-{i}")},
                "spec": {"selector": {"app": "hello"}, "ports": [{"port": 80, "targetPort": "http", "appProtocol": "http"}]}})).await;
            let url = format!("http://{}/", svc["spec"]["clusterIP"].as_str().unwrap());
            let client = reqwest::Client::new();
            while client.get(&url).send().await.map(|r| r.status().as_u16()).ok() != Some(200) {
                assert!(started.elapsed() < Duration::from_secs(10), "{url} never answered");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            spans.push(started.elapsed());
        }
        spans.sort();
        println!(
            "  Service create -> first 200 at its ClusterIP: p50 {:.1} ms, max {:.1} ms (20 Services)",
            spans[10].as_secs_f64() * 1e3,
            spans[19].as_secs_f64() * 1e3
        );
        c.cp.shutdown(Duration::from_secs(10)).await;
    });
}
