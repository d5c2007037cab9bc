//! The container runtime's pod paths on fakes of containerd and of the pod
//! network, without root: a failed start cleans up, an agent restart adopts
//! running containers and collects the rest, and a stop escalates from
//! SIGTERM to SIGKILL after the grace period.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_client::tonic;
use oci_client::secrets::RegistryAuth;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use weft_api::k8s_openapi::api::core::v1::Pod;

use super::cni::{CniError, PodNetwork};
use super::conn::{self, Containerd, NewContainer};
use super::pull::{Outcome, Progress, Unpacked};
use super::{CONTAINER_LABEL, ContainerdRuntime, NODE_LABEL, POD_UID_LABEL, resolv};
use crate::artifacts::{PullError, PullPolicy};
use crate::logs::Live;
use crate::workload::{StartSpec, Workload, WorkloadError};

/// A task in the fake: running until a signal it heeds ends it.
struct Task {
    labels: HashMap<String, String>,
    spec: oci_spec::runtime::Spec,
    /// `Some(status)` once it exited.
    exited: watch::Sender<Option<u32>>,
    ignores_sigterm: bool,
}

/// containerd in memory. Records each call; creates of the containers
/// named in `failing` fail at their task's start, leaving their record.
#[derive(Clone, Default)]
struct FakeContainerd {
    tasks: Arc<Mutex<HashMap<String, Task>>>,
    calls: Arc<Mutex<Vec<(Instant, String)>>>,
    failing: Arc<HashSet<String>>,
    /// Containers that ignore SIGTERM.
    stubborn: Arc<HashSet<String>>,
}

impl FakeContainerd {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push((Instant::now(), call));
    }

    fn calls(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }

    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.tasks.lock().unwrap().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// A container left by an earlier agent: running, or exited.
    fn leave(&self, uid: &str, name: &str, running: bool) {
        let labels = HashMap::from([
            (POD_UID_LABEL.to_string(), uid.to_string()),
            (NODE_LABEL.to_string(), "n1".to_string()),
            (CONTAINER_LABEL.to_string(), name.to_string()),
        ]);
        let task = Task {
            labels,
            spec: oci_spec::runtime::Spec::default(),
            exited: watch::channel((!running).then_some(0)).0,
            ignores_sigterm: false,
        };
        let id = super::container_id(uid, name);
        self.tasks.lock().unwrap().insert(id, task);
    }
}

impl Containerd for FakeContainerd {
    async fn has_image(&self, _image: &str) -> bool {
        true
    }

    async fn pull(
        &self,
        image: &str,
        policy: PullPolicy,
        _auth: &RegistryAuth,
        _progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(Unpacked, Outcome), PullError> {
        self.record(format!("pull {image} {policy:?}"));
        let unpacked = Unpacked {
            digest: "sha256:fa4e".into(),
            config: Default::default(),
            top: "sha256:top".into(),
        };
        Ok((unpacked, Outcome::AlreadyPresent))
    }

    async fn create(&self, c: NewContainer) -> Result<(), WorkloadError> {
        self.record(format!("create {}", c.id));
        let fails = self.failing.contains(&c.id);
        let task = Task {
            labels: c.labels,
            spec: c.spec,
            // A task that failed to start is created, not running.
            exited: watch::channel(fails.then_some(128)).0,
            ignores_sigterm: self.stubborn.contains(&c.id),
        };
        self.tasks.lock().unwrap().insert(c.id.clone(), task);
        if fails {
            return Err(WorkloadError::Create(format!(
                "start {}: exec failed",
                c.id
            )));
        }
        Ok(())
    }

    async fn running(&self, id: &str) -> bool {
        let tasks = self.tasks.lock().unwrap();
        tasks.get(id).is_some_and(|t| t.exited.borrow().is_none())
    }

    async fn kill(&self, id: &str, signal: u32) {
        self.record(format!("kill {id} {signal}"));
        if let Some(t) = self.tasks.lock().unwrap().get(id)
            && (signal == 9 || !t.ignores_sigterm)
        {
            t.exited.send_replace(Some(128 + signal));
        }
    }

    async fn wait(&self, id: &str, _exec_id: &str) -> Result<u32, tonic::Status> {
        let rx = self
            .tasks
            .lock()
            .unwrap()
            .get(id)
            .map(|t| t.exited.subscribe());
        let Some(mut rx) = rx else {
            return Err(tonic::Status::not_found(id));
        };
        let status = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| tonic::Status::not_found(format!("{id} was deleted while waited for")))?;
        Ok(status.expect("exited"))
    }

    async fn delete(&self, id: &str) {
        self.record(format!("delete {id}"));
        self.tasks.lock().unwrap().remove(id);
    }

    async fn list(&self, label: &str, value: &str) -> Vec<(String, HashMap<String, String>)> {
        let tasks = self.tasks.lock().unwrap();
        tasks
            .iter()
            .filter(|(_, t)| t.labels.get(label).is_some_and(|v| v == value))
            .map(|(id, t)| (id.clone(), t.labels.clone()))
            .collect()
    }

    async fn spec(&self, id: &str) -> Option<oci_spec::runtime::Spec> {
        self.tasks.lock().unwrap().get(id).map(|t| t.spec.clone())
    }

    async fn exec(&self, _id: &str, _p: oci_spec::runtime::Process) -> Result<i32, String> {
        Ok(0)
    }
}

/// Pod networks in memory: each attached pod gets the next address.
#[derive(Default)]
struct FakeNetwork {
    attached: Mutex<HashMap<String, Ipv4Addr>>,
    calls: Mutex<Vec<String>>,
}

impl PodNetwork for FakeNetwork {
    fn exists(&self, uid: &str) -> bool {
        self.attached.lock().unwrap().contains_key(uid)
    }

    async fn add(&self, uid: &str) -> Result<Ipv4Addr, CniError> {
        self.calls.lock().unwrap().push(format!("add {uid}"));
        let mut attached = self.attached.lock().unwrap();
        let ip = Ipv4Addr::new(10, 88, 0, 2 + attached.len() as u8);
        attached.insert(uid.to_string(), ip);
        Ok(ip)
    }

    async fn del(&self, uid: &str) {
        self.calls.lock().unwrap().push(format!("del {uid}"));
        self.attached.lock().unwrap().remove(uid);
    }
}

fn runtime(dir: &Path, fake: FakeContainerd) -> ContainerdRuntime<FakeContainerd, FakeNetwork> {
    ContainerdRuntime {
        conn: fake,
        cni: FakeNetwork::default(),
        node: "n1".into(),
        pods_dir: dir.join("pods"),
        live: Arc::new(Live::default()),
        log_max_size: 1 << 20,
        exits: tokio::sync::mpsc::unbounded_channel().0,
        allow_privileged: false,
        dns: resolv::ClusterDns {
            server: None,
            domain: "cluster.local".into(),
        },
        version: "fake".into(),
    }
}

fn pod(uid: &str, containers: &[&str]) -> Pod {
    let containers: Vec<_> = containers
        .iter()
        .map(|c| json!({"name": c, "image": "reg/web:1", "command": ["httpd", "-f"]}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": uid, "namespace": "default", "uid": uid},
        "spec": {"nodeName": "n1", "containers": containers}}))
    .unwrap()
}

fn start_spec(dir: &Path) -> StartSpec {
    StartSpec {
        ip: Ipv4Addr::new(127, 10, 0, 2),
        env: Default::default(),
        volumes: Default::default(),
        log_dir: dir.join("logs"),
        restarts: HashMap::new(),
        handler: None,
        pull_secrets: Vec::new(),
        report: Arc::new(|_| {}),
    }
}

#[tokio::test]
async fn a_start_that_fails_leaves_no_container_and_release_frees_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeContainerd {
        failing: Arc::new(["p1-b".to_string()].into()),
        ..Default::default()
    };
    let rt = runtime(dir.path(), fake.clone());
    let err = match rt
        .start(&pod("p1", &["a", "b"]), &start_spec(dir.path()))
        .await
    {
        Err(e) => e,
        Ok(_) => panic!("container b cannot start"),
    };
    assert_eq!(err.reason(), "CreateContainerError");
    assert!(err.to_string().contains("p1-b"), "{err}");
    // A pod starts whole or not at all: `a` ran, and was stopped and deleted with `b`.
    assert!(fake.ids().is_empty(), "{:?}", fake.ids());
    let calls = fake.calls();
    let a = calls.iter().position(|c| c == "create p1-a").unwrap();
    assert!(
        calls[a..].contains(&"kill p1-a 15".to_string()),
        "{calls:?}"
    );
    assert!(calls[a..].contains(&"delete p1-a".to_string()), "{calls:?}");
    // Like a sandbox, the network stays for the next attempt, until released.
    assert!(rt.cni.exists("p1") && rt.has_pod("p1"));
    rt.release("p1").await;
    assert!(!rt.cni.exists("p1") && !rt.has_pod("p1"));
    // (The first DEL clears what a crashed agent may have half made.)
    assert_eq!(
        *rt.cni.calls.lock().unwrap(),
        ["del p1", "add p1", "del p1"]
    );
}

#[tokio::test]
async fn a_restarted_agent_adopts_running_containers_and_collects_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeContainerd::default();
    let rt = runtime(dir.path(), fake.clone());
    let spec = start_spec(dir.path());
    // The first agent started three pods.
    for uid in ["kept", "crashed", "gone"] {
        rt.start(&pod(uid, &["app"]), &spec).await.unwrap();
    }
    let ip = rt.cni.attached.lock().unwrap()["kept"];
    // While no agent ran, `crashed`'s container exited and `gone` was deleted.
    fake.leave("crashed", "app", false);
    fake.calls.lock().unwrap().clear();

    let keep: HashSet<String> = ["kept".to_string(), "crashed".to_string()].into();
    rt.collect_garbage(&keep).await;
    assert_eq!(fake.ids(), ["crashed-app", "kept-app"]);
    assert!(!rt.cni.exists("gone"), "its network is gone too");

    let adopted = rt.start(&pod("kept", &["app"]), &spec).await.unwrap();
    assert_eq!(adopted.ip, ip, "the pod keeps its address");
    let c = &adopted.containers[0];
    assert_eq!(c.started.id, "containerd://kept-app");
    assert_eq!(c.started.image_id, "sha256:fa4e");
    let again = rt.start(&pod("crashed", &["app"]), &spec).await.unwrap();
    assert_eq!(again.containers[0].started.id, "containerd://crashed-app");
    let calls = fake.calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("kept-app") && !c.starts_with("pull")),
        "adopted without a kill, delete or create: {calls:?}"
    );
    assert!(
        calls.contains(&"create crashed-app".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"pull reg/web:1 Never".to_string()),
        "{calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_sends_sigterm_then_sigkill_once_the_grace_period_ends() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeContainerd {
        stubborn: Arc::new(["p1-stubborn".to_string()].into()),
        ..Default::default()
    };
    let rt = runtime(dir.path(), fake.clone());
    let started = rt
        .start(&pod("p1", &["polite", "stubborn"]), &start_spec(dir.path()))
        .await
        .unwrap();
    let t0 = Instant::now();
    let grace = Duration::from_secs(30);
    for c in started.containers {
        c.stop(grace).await;
    }
    let calls = fake.calls.lock().unwrap().clone();
    let at = |call: &str| {
        let found = calls.iter().find(|(_, c)| c == call);
        found
            .map(|(t, _)| *t - t0)
            .unwrap_or_else(|| panic!("no {call}: {calls:?}"))
    };
    assert_eq!(at("kill p1-polite 15"), Duration::ZERO);
    assert!(
        !calls.iter().any(|(_, c)| c == "kill p1-polite 9"),
        "{calls:?}"
    );
    assert_eq!(at("kill p1-stubborn 15"), Duration::ZERO);
    assert_eq!(at("kill p1-stubborn 9"), grace);
    assert!(fake.ids().is_empty(), "both deleted");
    // Removing what is gone already does nothing.
    conn::remove(&fake, "p1-polite", grace).await;
    assert_eq!(fake.calls().last().unwrap(), "delete p1-polite");
}
