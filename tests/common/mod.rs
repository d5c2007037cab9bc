//! A real `weft up` process on 127.0.0.1:0, plus helpers to drive it with
//! kubectl and HTTPS.

#![allow(dead_code)] // each test binary uses a different subset

pub mod containers;
pub mod hosts;
pub mod registry;
pub mod routed;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct TestCluster {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
    /// Extra node agents (`weft node` processes) by name.
    nodes: Vec<(String, Child)>,
    pub url: String,
    pub kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

/// The kubectl on PATH. Tests need a real one; CI installs it when missing.
pub fn kubectl_path() -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", "command -v kubectl"])
        .output()
        .expect("sh");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "kubectl is not on PATH: run .ci/run (it installs Debian's kubernetes-client) or install kubectl"
    );
    PathBuf::from(p)
}

/// `weft ARGS` on this host, without standard input.
#[allow(dead_code)] // not every test file runs the CLI itself
pub fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run weft")
}

/// `weft push`es `wasm` as `{registry}/{repo}` and returns that image reference.
pub fn push(registry: &registry::Registry, wasm: &[u8], repo: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("artifact.wasm");
    std::fs::write(&file, wasm).unwrap();
    let image = format!("{}/{repo}", registry.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("push")
        .arg(&file)
        .arg(&image)
        .output()
        .expect("run weft push");
    assert!(
        out.status.success(),
        "weft push {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

/// A pod IP range no other cluster or node of this test process uses.
fn fresh_pod_cidr() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("127.{}.{}.0/24", 100 + std::process::id() % 100, n % 256)
}

/// A ClusterIP range no other cluster of this test process uses.
fn fresh_service_cidr() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("127.{}.{}.0/24", 200 + std::process::id() % 50, n % 256)
}

impl TestCluster {
    pub fn start() -> TestCluster {
        Self::start_with(&[])
    }

    /// `weft up` with extra flags, its node named `node-1` when flags name it.
    pub fn start_with(args: &[&str]) -> TestCluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut c = Self::start_in_with(tmp.path(), args);
        c._tmp = Some(tmp);
        c
    }

    /// A cluster of `n` nodes: `weft up` (node-1, with `args`) plus node
    /// agents node-2..node-n as `weft node` processes, all Ready.
    pub fn with_nodes(n: usize, args: &[&str]) -> TestCluster {
        let mut all = vec![
            "--node-name",
            "node-1",
            "--node-status-update-frequency",
            "1s",
        ];
        all.extend_from_slice(args);
        let mut c = Self::start_with(&all);
        for i in 2..=n {
            c.add_node(&format!("node-{i}"));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ready = c.kubectl_ok(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            if ready.split_whitespace().filter(|s| *s == "True").count() == n {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} nodes never Ready: {ready}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    /// Starts a `weft node` agent named `name` against this cluster.
    pub fn add_node(&mut self, name: &str) {
        let dir = self.dir.join("nodes").join(name);
        std::fs::create_dir_all(&dir).expect("node dir");
        let log = std::fs::File::create(dir.join("node.log")).expect("node log");
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args([
                "node",
                "--server",
                &self.url,
                "--name",
                name,
                "--pod-cidr",
                &fresh_pod_cidr(),
                "--node-status-update-frequency",
                "1s",
                "--data-dir",
            ])
            .arg(&dir)
            .arg("--certificate-authority")
            .arg(self.dir.join("pki/ca.crt"))
            .env("WEFT_TOKEN", self.token())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn weft node");
        self.nodes.push((name.to_string(), child));
    }

    /// Kills node agent `name` (SIGKILL): its node stops heartbeating.
    pub fn kill_node(&mut self, name: &str) {
        if let Some(i) = self.nodes.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.nodes.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts `weft up` on `dir`, reusing whatever state is there.
    pub fn start_in(dir: &Path) -> TestCluster {
        Self::start_in_with(dir, &[])
    }

    /// `weft up` on `dir` with extra flags, reusing whatever state is there.
    pub fn start_in_with(dir: &Path, args: &[&str]) -> TestCluster {
        std::fs::create_dir_all(dir).expect("data dir");
        // Clusters running side by side need pod IP ranges of their own; a
        // restarted cluster keeps its range (and so its pods' IPs).
        let cidr_file = dir.join("test-pod-cidr");
        let pod_cidr = std::fs::read_to_string(&cidr_file).unwrap_or_else(|_| {
            let cidr = fresh_pod_cidr();
            std::fs::write(&cidr_file, &cidr).expect("record pod CIDR");
            cidr
        });
        // ClusterIPs too: every cluster's proxies share their addresses (SO_REUSEPORT).
        let svc_file = dir.join("test-service-cidr");
        let service_cidr = std::fs::read_to_string(&svc_file).unwrap_or_else(|_| {
            let cidr = fresh_service_cidr();
            std::fs::write(&svc_file, &cidr).expect("record service CIDR");
            cidr
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("weft.log"))
            .expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["up", "--data-dir"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--pod-cidr", &pod_cidr])
            .args(["--service-cidr", &service_cidr])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn weft up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("weft is up: API at ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(dir.join("weft.log")).unwrap_or_default();
                panic!("weft up did not become ready within 90 s; log:\n{log}");
            }
        };
        TestCluster {
            dir: dir.to_path_buf(),
            _tmp: None,
            child: Some(child),
            nodes: Vec::new(),
            url,
            kubeconfig: dir.join("kubeconfig"),
            cache: tempfile::tempdir().expect("cache dir"),
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("reap");
        }
    }

    /// SIGTERM, then wait; returns how long the clean shutdown took.
    pub fn stop(&mut self) -> Duration {
        let start = std::time::Instant::now();
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status()
                .expect("kill");
            c.wait().expect("reap");
        }
        start.elapsed()
    }

    /// kubectl pointed at this cluster, with a discovery cache of its own.
    fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(kubectl_path());
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args);
        cmd
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl, asserts success, returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\nstdout: {stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs kubectl with `stdin` as the manifest (`-f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .kubectl_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write manifest");
        child.wait_with_output().expect("kubectl output")
    }

    /// A kubectl child process for streaming commands (`get -w`).
    pub fn kubectl_spawn(&self, args: &[&str]) -> Child {
        self.kubectl_cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl")
    }

    /// Polls `kubectl args` until `done(stdout)` (bounded by `within`);
    /// panics with the last output and the cluster's log tail otherwise.
    pub fn wait_until(
        &self,
        args: &[&str],
        within: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let out = String::from_utf8_lossy(&self.kubectl(args).stdout).to_string();
            if done(&out) {
                return out;
            }
            if std::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("weft.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "kubectl {args:?} never satisfied the condition within {within:?}; last output:\n{out}\nweft.log tail:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Applies a manifest with kubectl, asserting success.
    pub fn apply(&self, manifest: &str) {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], manifest);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{manifest}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("tokens/admin"))
            .expect("token")
            .trim()
            .to_string()
    }

    /// An HTTPS client that trusts the cluster CA (no token attached).
    pub fn http(&self) -> reqwest::Client {
        let ca = std::fs::read(self.dir.join("pki/ca.crt")).expect("ca");
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca pem"))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for (_, mut n) in self.nodes.drain(..) {
            let _ = n.kill();
            let _ = n.wait();
        }
        self.kill9();
    }
}

/// One GET on a fresh connection: (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let addr: SocketAddr = addr.parse().expect("address");
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {out:?}")))?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// A chunked HTTP/1.1 body's data.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
