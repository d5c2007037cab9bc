//! A real `weft up` process on 127.0.0.1:0, plus helpers to drive it with
//! kubectl and HTTPS.

#![allow(dead_code)] // each test binary uses a different subset

pub mod registry;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct TestCluster {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
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

impl TestCluster {
    pub fn start() -> TestCluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut c = Self::start_in(tmp.path());
        c._tmp = Some(tmp);
        c
    }

    /// Starts `weft up` on `dir`, reusing whatever state is there.
    pub fn start_in(dir: &Path) -> TestCluster {
        std::fs::create_dir_all(dir).expect("data dir");
        // Clusters running side by side need pod IP ranges of their own; a
        // restarted cluster keeps its range (and so its pods' IPs).
        let cidr_file = dir.join("test-pod-cidr");
        let pod_cidr = std::fs::read_to_string(&cidr_file).unwrap_or_else(|_| {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let cidr = format!("127.{}.{}.0/24", 100 + std::process::id() % 100, n % 256);
            std::fs::write(&cidr_file, &cidr).expect("record pod CIDR");
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
        self.kill9();
    }
}
