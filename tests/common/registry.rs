//! A real OCI registry (Debian's docker-registry) on loopback, for tests.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A registry on 127.0.0.1:<free port>, storing into a temp dir; killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Debian's docker-registry binary.
    pub fn binary() -> &'static str {
        ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("docker-registry is not installed: ./dev installs Debian's docker-registry")
    }

    /// Writes a registry configuration under `dir` (storage there too),
    /// serving on `addr`; returns its path.
    #[allow(dead_code)] // not every test file starts registries of its own
    pub fn config(dir: &std::path::Path, addr: &str) -> std::path::PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.yml");
        std::fs::write(&config, format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n", dir.join("data").display())).unwrap();
        config
    }

    pub fn start() -> Registry {
        let bin = Self::binary();
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = Self::config(dir.path(), &addr);
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP proxy in front of a registry, for pulls: it counts the GETs of
/// each path and can hold the GETs of one blob for a while (a stalled pull).
/// It runs on a thread of its own, so sync and async tests can use it.
#[allow(dead_code)] // the benchmarks include this file and use only the registry
pub struct Proxy {
    pub addr: String,
    gets: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

#[allow(dead_code)]
impl Proxy {
    /// Forwards to `upstream`; GETs whose path holds `stall.0` wait `stall.1` first.
    pub fn start(upstream: &str, stall: Option<(String, Duration)>) -> Proxy {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let gets = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (upstream, seen) = (upstream.to_string(), gets.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                    .build_http::<hyper::body::Incoming>();
                loop {
                    let stream = tokio::select! {
                        _ = &mut stopped => return,
                        s = listener.accept() => match s { Ok((s, _)) => s, Err(_) => continue },
                    };
                    let (client, upstream, seen, stall) = (
                        client.clone(),
                        upstream.clone(),
                        seen.clone(),
                        stall.clone(),
                    );
                    let svc = hyper::service::service_fn(
                        move |mut req: hyper::Request<hyper::body::Incoming>| {
                            let (client, upstream, seen, stall) = (
                                client.clone(),
                                upstream.clone(),
                                seen.clone(),
                                stall.clone(),
                            );
                            async move {
                                let path = req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default();
                                if req.method() == hyper::Method::GET {
                                    seen.lock().unwrap().push(path.clone());
                                    if let Some((held, wait)) = &stall
                                        && path.contains(held.as_str())
                                    {
                                        tokio::time::sleep(*wait).await;
                                    }
                                }
                                *req.uri_mut() =
                                    format!("http://{upstream}{path}").parse().unwrap();
                                client.request(req).await
                            }
                        },
                    );
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc),
                    );
                }
            });
        });
        Proxy {
            addr,
            gets,
            _stop: stop,
        }
    }

    /// How many GETs asked for a path holding `part` (a digest, say).
    pub fn gets(&self, part: &str) -> usize {
        self.gets
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.contains(part))
            .count()
    }
}
