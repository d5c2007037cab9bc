//! Per-request cost of the Wasm host, in process (no sockets):
//!
//!   cargo bench --profile dev -p weft-wasm-host --bench instantiate
//!
//! * instantiate: a fresh Store plus instantiating `samples/hello` (the setup
//!   every request pays);
//! * request: instantiate, run the handler, collect the body, with 1 task and
//!   with 64 concurrent tasks;
//! * baseline, same run: a native Rust handler that builds the same response.

#[path = "../tests/guests/mod.rs"]
mod guests;

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Full};
use weft_wasm_host::{Host, HostConfig, HttpHandler, Limits};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn request() -> hyper::Request<Empty<bytes::Bytes>> {
    hyper::Request::builder()
        .uri("http://bench/")
        .body(Empty::new())
        .unwrap()
}

async fn wasm_request(h: &HttpHandler) -> usize {
    let resp = h.handle(request()).await.expect("response");
    resp.into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .len()
}

/// What a native handler does for the same answer.
async fn native_request(name: &str) -> usize {
    let body = format!("Hello from {name}\n");
    let resp = hyper::Response::builder()
        .header("content-type", "text/plain")
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    resp.into_body().collect().await.unwrap().to_bytes().len()
}

async fn concurrent_rps(h: &HttpHandler, tasks: usize, per_task: usize) -> f64 {
    let start = Instant::now();
    let mut js = Vec::new();
    for _ in 0..tasks {
        let h = h.clone();
        js.push(tokio::spawn(async move {
            for _ in 0..per_task {
                wasm_request(&h).await;
            }
        }));
    }
    for j in js {
        j.await.unwrap();
    }
    (tasks * per_task) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let n = if quick { 2_000 } else { 20_000 };
    let wasm = guests::sample("hello");
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let host = Host::new(HostConfig::new(dir.path().into())).unwrap();
        let t = Instant::now();
        let artifact = host.load("sha256:bench-hello", &wasm).unwrap();
        let compile = t.elapsed();
        let t = Instant::now();
        let artifact2 = host.load("sha256:bench-hello", &wasm).unwrap();
        let cached_load = t.elapsed();
        drop(artifact2);
        let handler = host
            .http_handler(
                &artifact,
                vec![("HOSTNAME".into(), "bench".into())],
                Limits::default(),
            )
            .unwrap();

        for _ in 0..500 {
            handler.instantiate().await.unwrap();
            wasm_request(&handler).await;
        }
        let mut inst = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            handler.instantiate().await.unwrap();
            inst.push(t.elapsed());
        }
        let mut req = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            assert_eq!(wasm_request(&handler).await, "Hello from bench\n".len());
            req.push(t.elapsed());
        }
        let mut native = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            assert_eq!(native_request("bench").await, "Hello from bench\n".len());
            native.push(t.elapsed());
        }
        let rps = concurrent_rps(&handler, 64, n / 64).await;

        println!(
            "weft wasm-host benchmark (samples/hello, {} B component, in process)",
            wasm.len()
        );
        println!(
            "compile {:.1} ms; load from the compile cache {:.2} ms",
            compile.as_secs_f64() * 1e3,
            cached_load.as_secs_f64() * 1e3
        );
        println!(
            "instantiate (fresh Store + instance), {n} runs: p50 {}  p99 {}",
            us(pct(&mut inst, 0.5)),
            us(pct(&mut inst, 0.99))
        );
        let (rp50, rp99) = (pct(&mut req, 0.5), pct(&mut req, 0.99));
        println!(
            "full request in process, 1 task:  p50 {}  p99 {}",
            us(rp50),
            us(rp99)
        );
        println!(
            "native Rust handler, same answer: p50 {}  (wasm request p50 = {:.0}x native)",
            us(pct(&mut native, 0.5)),
            rp50.as_secs_f64() / pct(&mut native, 0.5).as_secs_f64()
        );
        println!("full requests in process, 64 tasks: {rps:.0} req/s");
    });
}
