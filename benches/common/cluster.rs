//! A benchmark cluster: the control plane in this process, one `weft node`
//! child (so its RSS and CPU are the agent's own), and samples/hello pushed
//! to a loopback registry. Needs `mod guests; mod registry; mod load;` at the
//! benchmark's root.

#![allow(dead_code)] // each benchmark needs a subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use weft_control_plane::{ControlPlane, ControlPlaneConfig};

use crate::load::Kill;

pub struct Cluster {
    pub cp: ControlPlane,
    /// The node agent's process.
    pub node: Kill,
    /// Trusts the cluster's CA.
    pub http: reqwest::Client,
    /// samples/hello in the registry.
    pub image: String,
    /// samples/hello on disk.
    pub wasm: PathBuf,
    pub dir: tempfile::TempDir,
    pub registry: crate::registry::Registry,
}

impl Cluster {
    /// Pod IPs come from `pod_cidr`: each benchmark takes its own range.
    pub async fn start(pod_cidr: &str) -> Cluster {
        Self::start_with(pod_cidr, &[]).await
    }

    /// As `start`, with extra `weft node` flags.
    pub async fn start_with(pod_cidr: &str, node_flags: &[&str]) -> Cluster {
        let weft = env!("CARGO_BIN_EXE_weft");
        let registry = crate::registry::Registry::start();
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("hello.wasm");
        std::fs::write(&wasm, crate::guests::sample("hello")).unwrap();
        let image = format!("{}/samples/hello:1", registry.addr);
        let pushed = Command::new(weft)
            .arg("push")
            .arg(&wasm)
            .arg(&image)
            .status();
        assert!(pushed.unwrap().success(), "weft push {image}");
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let cp = ControlPlane::start(ControlPlaneConfig::new(dir.path().join("cluster"), addr))
            .await
            .unwrap();
        let node_log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let node = Kill(
            Command::new(weft)
                .args([
                    "node",
                    "--server",
                    &cp.url,
                    "--name",
                    "bench-node",
                    "--pod-cidr",
                    pod_cidr,
                    "--data-dir",
                ])
                .arg(dir.path().join("node"))
                .arg("--certificate-authority")
                .arg(dir.path().join("cluster/pki/ca.crt"))
                .args(node_flags)
                .env("WEFT_TOKEN", &cp.token)
                .stdout(Stdio::null())
                .stderr(node_log)
                .spawn()
                .unwrap(),
        );
        let ca = reqwest::Certificate::from_pem(cp.ca_pem.as_ref().unwrap().as_bytes()).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .unwrap();
        Cluster {
            cp,
            node,
            http,
            image,
            wasm,
            dir,
            registry,
        }
    }

    /// `/api/v1/namespaces/default/{path}` on the API server.
    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1/namespaces/default/{path}", self.cp.url)
    }

    /// The last lines of the node agent's log, for failure messages.
    pub fn node_log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}
