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

/// One request at a time over a keep-alive connection to each of `targets`,
/// taking turns, `rounds` times: (p50, p99) in µs per target. Taking turns
/// puts the machine's noise on every target alike, so the differences are
/// the paths' own.
pub fn interleaved_latency(targets: &[SocketAddr], rounds: usize) -> Vec<(f64, f64)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut conns: Vec<_> = targets
        .iter()
        .map(|a| {
            let s = std::net::TcpStream::connect(a).expect("connect");
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            (s.try_clone().unwrap(), BufReader::new(s))
        })
        .collect();
    let mut samples = vec![Vec::with_capacity(rounds); targets.len()];
    for _ in 0..rounds {
        for (i, (w, r)) in conns.iter_mut().enumerate() {
            let t = Instant::now();
            w.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                .unwrap();
            // The head, then a Content-Length or chunked body.
            let (mut length, mut chunked, mut line) = (0usize, false, String::new());
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                let l = line.to_ascii_lowercase();
                if let Some(v) = l.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                chunked |= l.starts_with("transfer-encoding:") && l.contains("chunked");
                if line == "\r\n" {
                    break;
                }
            }
            if chunked {
                loop {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    let n = usize::from_str_radix(line.trim(), 16).unwrap();
                    let mut chunk = vec![0; n + 2];
                    r.read_exact(&mut chunk).unwrap();
                    if n == 0 {
                        break;
                    }
                }
            } else {
                r.read_exact(&mut vec![0; length]).unwrap();
            }
            samples[i].push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[v.len() * 99 / 100])
        })
        .collect()
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
