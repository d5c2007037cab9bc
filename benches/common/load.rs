//! Load generation for the benchmarks: wrk, a native hyper baseline, child processes.

#![allow(dead_code)] // each benchmark needs a subset

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `wrk -t2 -c64` for `secs`: (requests/s, p99 latency text).
pub fn wrk(url: &str, secs: u64) -> (f64, String) {
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", url])
        .output()
        .expect("wrk (Debian package wrk)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk output: {text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    if let Some(e) = errors {
        println!("  wrk reported: {}", e.trim());
    }
    (rps, p99)
}

/// One connection, one request at a time (`wrk -t1 -c1`): (p50, p99) in µs.
pub fn latency(url: &str, secs: u64) -> (f64, f64) {
    let out = Command::new("wrk")
        .args(["-t1", "-c1", &format!("-d{secs}s"), "--latency", url])
        .output()
        .expect("wrk (Debian package wrk)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let pct = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .map_or(f64::NAN, micros)
    };
    (pct("50%"), pct("99%"))
}

/// wrk's latency figure (`850.12us`, `1.20ms`, `2s`) in microseconds.
pub fn micros(text: &str) -> f64 {
    let t = text.trim();
    let (num, scale) = if let Some(v) = t.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = t.strip_suffix("ms") {
        (v, 1e3)
    } else if let Some(v) = t.strip_suffix('s') {
        (v, 1e6)
    } else {
        (t, 1.0)
    };
    num.parse::<f64>().map_or(f64::NAN, |n| n * scale)
}

pub fn wait_for_port(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens at {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A native hyper hello on its own runtime, as the ceiling.
pub fn native_hello() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"Hello from native\n"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    addr
}

pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
