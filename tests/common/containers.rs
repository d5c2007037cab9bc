//! Container test fixtures with no internet: a containerd of the test's
//! own (own socket, root and state, killed with its containers on drop),
//! and a busybox-static OCI image pushed to the loopback registry.

#![allow(dead_code)] // the benchmarks use a subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails (never skips) a test that needs root when not run as root.
pub fn require_root(what: &str) {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "{what} need root: run them through ./dev test as root"
    );
}

/// A containerd on a socket in a temp dir.
pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Containerd {
        require_root("container tests (network namespaces, cgroups, mounts)");
        assert!(
            Path::new("/usr/bin/containerd").exists(),
            "containerd is not installed: ./dev installs Debian's containerd, runc and containernetworking-plugins"
        );
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        // Only what Weft uses: no CRI plugin (Weft is the kubelet here).
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
                dir.path().display(),
                socket.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start containerd");
        let c = Containerd { child, socket, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer on {}: {}",
                c.socket.display(),
                std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// `ctr` against this containerd, in Weft's namespace.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "weft"])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// (ID, PID) of the running tasks, sorted.
    pub fn running_tasks(&self) -> Vec<(String, String)> {
        let out = self.ctr(&["tasks", "ls"]);
        let mut tasks: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && f[2] == "RUNNING").then(|| (f[0].to_string(), f[1].to_string()))
            })
            .collect();
        tasks.sort();
        tasks
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Shims outlive containerd: kill and delete every task first.
        let tasks = self.ctr(&["tasks", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
        }
        std::thread::sleep(Duration::from_millis(300));
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(&["tasks", "delete", "-f", id]);
            let _ = self.ctr(&["containers", "delete", id]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims of tasks that never got going (ctr cannot kill those).
        let _ = Command::new("pkill")
            .args(["-9", "-f"])
            .arg(format!(
                "containerd-shim-runc-v2 .*-address {}",
                self.socket.display()
            ))
            .status();
        // Overlay mounts left under the root would keep the temp dir busy.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {0}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                self.dir.path().display()
            ))
            .status();
    }
}

/// Network settings for a test cluster's container pods: a CIDR and bridge
/// of its own, and the flags that give them to `weft up`.
pub struct PodNetwork {
    pub cidr: String,
    pub bridge: String,
}

impl PodNetwork {
    /// A private /24 (10.200-249.x.0) and a bridge named after it; the
    /// addresses exist only on that bridge and in the pods' namespaces.
    pub fn fresh() -> PodNetwork {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let a = 200 + std::process::id() % 50;
        let b = n % 256;
        PodNetwork {
            cidr: format!("10.{a}.{b}.0/24"),
            bridge: format!("wt{a}x{b}"),
        }
    }

    pub fn flags<'a>(&'a self, containerd: &'a Containerd) -> Vec<&'a str> {
        vec![
            "--containerd-socket",
            containerd.socket.to_str().unwrap(),
            "--container-pod-cidr",
            &self.cidr,
            "--cni-bridge",
            &self.bridge,
        ]
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        // Namespaces of pods still running at the end (the agent releases
        // them only when pods are deleted): those with an address in this CIDR.
        delete_pod_namespaces(self.cidr.trim_end_matches("0/24"));
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// Deletes the pod network namespaces (`weft-<uid>`) whose address starts
/// with `prefix`: those of pods still running when a test ends.
pub fn delete_pod_namespaces(prefix: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for ns in $(ip netns list | awk '{{print $1}}' | grep '^weft-'); do \
               ip -n \"$ns\" -4 -o addr show dev eth0 2>/dev/null | grep -q ' inet {prefix}' && ip netns delete \"$ns\"; \
             done"
        ))
        .status();
}

/// Builds a busybox-static image (busybox and its applets in /bin, a page
/// in /www, `cmd` as CMD) and pushes it as `{registry}/{repo}`.
pub fn push_busybox(registry: &str, repo: &str, page: &str, cmd: &[&str]) -> String {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox: ./dev installs Debian's busybox-static");
    let mut tar = tar::Builder::new(Vec::new());
    let dir = |tar: &mut tar::Builder<Vec<u8>>, path: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    for d in ["bin", "www", "tmp", "etc", "proc", "sys", "dev"] {
        dir(&mut tar, d);
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    tar.append_data(&mut h, "bin/busybox", busybox.as_slice())
        .unwrap();
    for applet in [
        "sh", "httpd", "sleep", "cat", "echo", "rm", "touch", "ls", "wget", "true", "false", "id",
        "seq", "sort", "head", "tail", "nslookup", "nc",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(page.len() as u64);
    tar.append_data(&mut h, "www/index.html", page.as_bytes())
        .unwrap();
    let layer = tar.into_inner().unwrap();
    let diff_id = sha256(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    });
    let image = format!("{registry}/{repo}");
    let reference: oci_client::Reference = image.parse().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let layers = vec![oci_client::client::ImageLayer::new(
        layer,
        "application/vnd.oci.image.layer.v1.tar".into(),
        None,
    )];
    let config = oci_client::client::Config::new(
        serde_json::to_vec(&config).unwrap(),
        "application/vnd.oci.image.config.v1+json".into(),
        None,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(client.push(
        &reference,
        &layers,
        config,
        &oci_client::secrets::RegistryAuth::Anonymous,
        None,
    ))
    .unwrap_or_else(|e| panic!("push {image}: {e}"));
    image
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}
