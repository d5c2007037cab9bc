//! Issue 3, benchmarks 3 and 4, in one run:
//!
//! 3. Requests/s for `samples/hello` at its pod IP under `wrk -t2 -c64`,
//!    against `wasmtime serve` on the same component and a native hyper
//!    hello (same machine, same wrk settings, one after the other).
//! 4. Memory per extra idle Wasm pod of an already-loaded artifact: the node
//!    agent's RSS with one pod, then with N more.
//!
//!   cargo bench --profile dev --bench serve            (10,000 idle pods, wrk 10 s)
//!   cargo bench --profile dev --bench serve -- quick   (1,000 idle pods, wrk 3 s)
//!
//! The control plane runs in this process; the node agent is a `weft node`
//! child, so its RSS is the agent's alone. `wasmtime` comes from $WASMTIME or
//! PATH (`cargo install wasmtime-cli --version 48.0.8`); without it that row
//! says so.

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

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use load::{Kill, native_hello, wait_for_port, wrk};
use serde_json::{Value, json};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pod(name: &str, image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"nodeName": "bench-node", "runtimeClassName": "wasm",
                    "containers": [{"name": "app", "image": image, "ports": [{"containerPort": 8080}]}]}})
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (idle_pods, secs) = if quick { (1_000, 3) } else { (10_000, 10) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = cluster::Cluster::start("127.201.0.0/16").await;
        let (http, image, wasm_path) = (&c.http, &c.image, &c.wasm);
        let cp = &c.cp;
        let pods_url = c.api("pods");
        // Counts pods turning Ready, from one watch.
        let mut ready = watch::ready_pods(http, &pods_url, &cp.token).await;
        let create = |name: String| {
            let (http, url, token, body) = (http.clone(), pods_url.clone(), cp.token.clone(), pod(&name, image));
            async move {
                let r = http.post(url).bearer_auth(token).json(&body).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());
            }
        };
        create("hello".into()).await;
        let mut seen = std::collections::HashSet::new();
        let ip = loop {
            let watch::Ready { name, ip, .. } = tokio::time::timeout(Duration::from_secs(60), ready.recv()).await.expect("hello Ready").unwrap();
            if name == "hello" && seen.insert(name) {
                break ip;
            }
        };
        let pod_url = format!("http://{ip}:8080/");
        wait_for_port(&format!("{ip}:8080"));

        // Benchmark 3: the same component three ways, one after the other.
        println!("weft serve benchmark: samples/hello, wrk -t2 -c64 -d{secs}s on 127.0.0.0/8");
        let (weft_rps, weft_p99) = wrk(&pod_url, secs);
        println!("  weft pod at podIP        {weft_rps:>9.0} req/s  p99 {weft_p99}");
        let wasmtime = std::env::var("WASMTIME").unwrap_or_else(|_| "wasmtime".into());
        let port = free_port();
        match Command::new(&wasmtime)
            .args(["serve", "-S", "cli", "--addr", &format!("127.0.0.1:{port}")])
            .arg(wasm_path)
            .env("HOSTNAME", "wasmtime")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => {
                let _child = Kill(child);
                wait_for_port(&format!("127.0.0.1:{port}"));
                let (rps, p99) = wrk(&format!("http://127.0.0.1:{port}/"), secs);
                println!("  wasmtime serve           {rps:>9.0} req/s  p99 {p99}   weft/wasmtime = {:.2}", weft_rps / rps);
            }
            Err(e) => println!("  wasmtime serve           not run: {wasmtime}: {e} (cargo install wasmtime-cli --version 48.0.8)"),
        }
        let native = native_hello();
        let (rps, p99) = wrk(&format!("http://{native}/"), secs);
        println!("  native hyper hello       {rps:>9.0} req/s  p99 {p99}   weft/native = {:.2}", weft_rps / rps);

        // Benchmark 4: idle pods of the loaded artifact.
        let pid = c.node.0.id();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = rss_kib(pid);
        let started = Instant::now();
        let mut names = (0..idle_pods).map(|i| format!("idle-{i}"));
        let mut inflight = futures::stream::FuturesUnordered::new();
        for name in names.by_ref().take(32) {
            inflight.push(create(name));
        }
        while inflight.next().await.is_some() {
            if let Some(name) = names.next() {
                inflight.push(create(name));
            }
        }
        let created = started.elapsed();
        while seen.len() < idle_pods + 1 {
            match tokio::time::timeout(Duration::from_secs(60), ready.recv()).await {
                Ok(Some(watch::Ready { name, .. })) => {
                    seen.insert(name);
                }
                other => {
                    panic!("{} of {idle_pods} idle pods Ready ({other:?}); node log tail:\n{}", seen.len() - 1, c.node_log_tail());
                }
            }
        }
        let all_ready = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(pid);
        println!(
            "idle pods: {idle_pods} created in {:.1} s, all Ready in {:.1} s; node agent RSS {} MiB -> {} MiB: {:.1} KiB per pod",
            created.as_secs_f64(),
            all_ready.as_secs_f64(),
            before / 1024,
            after / 1024,
            (after - before) as f64 / idle_pods as f64
        );
        // The first pod still answers with all the others idle beside it.
        let (rps, _) = wrk(&pod_url, 2);
        println!("  hello with {idle_pods} idle neighbours: {rps:.0} req/s");
        drop(c.node);
        c.cp.shutdown(Duration::from_secs(10)).await;
    });
}
