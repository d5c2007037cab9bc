//! Container pods through containerd against Wasm pods, in the same run:
//!
//! 1. pod create → Ready with the image already present, container and Wasm
//!    pods taking turns (one at a time, through the HTTPS API and a watch);
//! 2. requests/s through a Service to a container endpoint against the same
//!    endpoint at podIP:port (wrk, the two taking turns).
//!
//!   cargo bench --profile dev --bench containers            (40 pods of each kind, wrk 5 s x2)
//!   cargo bench --profile dev --bench containers -- quick   (15 pods of each kind, wrk 2 s x2)
//!
//! Needs root, containerd, runc, the CNI plugins and busybox-static (`./dev`
//! installs them). The benchmark starts a containerd of its own, as the
//! tests do; the cluster (a loopback registry, the control plane in this
//! process, the agent as a `weft node` child) is `common/cluster.rs`.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "../tests/common/containers.rs"]
mod containers;
#[path = "../wasm-host/tests/guests/mod.rs"]
mod guests;
#[path = "common/load.rs"]
mod load;
#[path = "../tests/common/registry.rs"]
mod registry;
#[path = "common/stats.rs"]
mod stats;
#[path = "common/watch.rs"]
mod watch;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stats::{ms, pct};

fn pod(name: &str, image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
           "spec": {"nodeName": "bench-node", "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "app", "image": image, "ports": [{"containerPort": 8080}]}]}})
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (n, secs) = if quick { (15, 2) } else { (40, 5) };
    let ctrd = containers::Containerd::start();
    let net = containers::PodNetwork::fresh();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The agent is a `weft node` child with containerd, as in production.
        let cl = cluster::Cluster::start_with("127.201.0.0/16", &net.flags(&ctrd)).await;
        // push_busybox runs its own runtime: a plain thread, outside this one.
        let addr = cl.registry.addr.clone();
        let ctr_image = std::thread::spawn(move || {
            containers::push_busybox(&addr, "bench/httpd:1", "container page\n", &["httpd", "-f", "-p", "8080", "-h", "/www"])
        })
        .join()
        .unwrap();
        let (cp, http, wasm_image) = (&cl.cp, &cl.http, cl.image.clone());
        let pods_url = cl.api("pods");
        let mut rx = watch::ready_pods(http, &pods_url, &cp.token).await;
        let mut create = async |name: &str, image: &str| -> (Duration, String) {
            let t = Instant::now();
            let r = http.post(&pods_url).bearer_auth(&cp.token).json(&pod(name, image)).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());
            loop {
                let watch::Ready { name: got, at, ip } = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                    .await
                    .unwrap_or_else(|_| panic!("pod {name} never Ready"))
                    .unwrap();
                if got == name {
                    return (at - t, ip);
                }
            }
        };
        // Warm-ups: the first of each kind pulls (and compiles, for Wasm).
        create("c0", &ctr_image).await;
        create("w0", &wasm_image).await;
        let (mut ctr, mut wasm) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 1..=n {
            ctr.push(create(&format!("c{i}"), &ctr_image).await.0);
            wasm.push(create(&format!("w{i}"), &wasm_image).await.0);
        }
        let (c50, c99) = (pct(&mut ctr, 0.5), pct(&mut ctr, 0.99));
        let (w50, w99) = (pct(&mut wasm, 0.5), pct(&mut wasm, 0.99));
        println!("pod create -> Ready, image present ({n} pods of each kind, taking turns, through the HTTPS API + watch)");
        println!("  container (containerd): p50 {}  p99 {}  max {}", ms(c50), ms(c99), ms(pct(&mut ctr, 1.0)));
        println!("  Wasm (in process):      p50 {}  p99 {}  max {}", ms(w50), ms(w99), ms(pct(&mut wasm, 1.0)));
        println!("  container / Wasm: p50 {:.1}x  p99 {:.1}x", c50.as_secs_f64() / w50.as_secs_f64(), c99.as_secs_f64() / w99.as_secs_f64());

        // One container endpoint behind a Service.
        let (_, ip) = create("web", &ctr_image).await;
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}});
        let r: Value = http.post(format!("{}/api/v1/namespaces/default/services", cp.url)).bearer_auth(&cp.token)
            .json(&svc).send().await.unwrap().json().await.unwrap();
        let cluster_ip = r["spec"]["clusterIP"].as_str().expect("clusterIP").to_string();
        let direct = format!("http://{ip}:8080/");
        let service = format!("http://{cluster_ip}:80/");
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::get(&service).await.map(|r| r.status().as_u16()).ok() != Some(200) {
            assert!(Instant::now() < deadline, "{service} never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (mut d, mut s) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let (direct, service) = (direct.clone(), service.clone());
            let (dr, sr) = tokio::task::spawn_blocking(move || (load::wrk(&direct, secs), load::wrk(&service, secs))).await.unwrap();
            d.push(dr);
            s.push(sr);
        }
        let best = |v: &[(f64, String)]| v.iter().map(|x| x.0).fold(0.0, f64::max);
        println!("requests/s to one busybox httpd container (wrk -t2 -c64, {secs} s, best of 2, taking turns)");
        for (what, v) in [("direct podIP:8080", &d), ("Service ClusterIP:80", &s)] {
            println!("  {what:22} {:>9.0} req/s  p99 {}", best(v), v.iter().map(|x| x.1.clone()).collect::<Vec<_>>().join(" / "));
        }
        println!("  Service / direct: {:.2}", best(&s) / best(&d));
    });
    drop(net);
    drop(ctrd);
}
