//! Registration (the Node, its labels and status, the RuntimeClasses) and
//! the Lease heartbeat. The heartbeat runs on a task of its own, so nothing
//! the pod loop waits for (pulls, compiles, stops, status writes) can delay
//! it past the node monitor's grace period.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch as signal;
use weft_api::k8s_openapi::api::coordination::v1::Lease;
use weft_api::k8s_openapi::api::core::v1::{Node, Service};
use weft_api::k8s_openapi::api::node::v1::RuntimeClass;

use super::{AgentConfig, AgentError, CONTAINERD_LABEL, FIELD_MANAGER, WASM_LABEL, now, now_micro};
use crate::workload::{CONTAINERD_HANDLER, WASM_HANDLER};

pub(super) async fn register(
    client: &kube::Client,
    cfg: &AgentConfig,
    containerd: Option<&str>,
) -> Result<(), AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = json!({
        "kubernetes.io/hostname": cfg.name, "kubernetes.io/os": std::env::consts::OS,
        "kubernetes.io/arch": weft_api::go_arch(),
        WASM_LABEL: "true"});
    if containerd.is_some() {
        labels[CONTAINERD_LABEL] = json!("true");
    }
    for (k, v) in &cfg.labels {
        labels[k.as_str()] = json!(v);
    }
    let mut node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.name, "labels": labels}});
    // A routed node's range is the control plane's to allocate.
    if !cfg.pod_cidr.is_empty() {
        node["spec"] = json!({"podCIDR": cfg.pod_cidr, "podCIDRs": [cfg.pod_cidr]});
    }
    nodes
        .patch(
            &cfg.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await?;
    post_node_status(client, cfg, containerd).await?;
    let classes: Api<RuntimeClass> = Api::all(client.clone());
    for (name, handler) in [
        ("wasm", WASM_HANDLER),
        (CONTAINERD_HANDLER, CONTAINERD_HANDLER),
    ] {
        if classes.get_opt(name).await?.is_some() {
            continue;
        }
        let rc: RuntimeClass = serde_json::from_value(json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": name}, "handler": handler}))
            .expect("static RuntimeClass");
        match classes.create(&Default::default(), &rc).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn node_status(cfg: &AgentConfig, containerd: Option<&str>) -> Value {
    let runtime = match containerd {
        Some(v) => format!("wasmtime://48.0.8,containerd://{v}"),
        None => "wasmtime://48.0.8".into(),
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ts = now();
    let cond = |ty: &str, status: &str, reason: &str, msg: &str| json!({"type": ty, "status": status, "reason": reason, "message": msg, "lastHeartbeatTime": ts, "lastTransitionTime": ts});
    json!({"status": {
        "capacity": {"cpu": cpus.to_string(), "memory": "24Gi", "pods": cfg.max_pods.to_string()},
        "allocatable": {"cpu": cpus.to_string(), "memory": "24Gi", "pods": cfg.max_pods.to_string()},
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "weft node agent has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "weft node agent has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "weft node agent has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "weft node agent is posting ready status"),
        ],
        "addresses": addresses(cfg),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.listen.port()}},
        "nodeInfo": {"kubeletVersion": "v1.32.0-weft", "kubeProxyVersion": "", "osImage": "weft", "kernelVersion": "",
                     "containerRuntimeVersion": runtime, "operatingSystem": std::env::consts::OS,
                     "architecture": weft_api::go_arch(),
                     "machineID": "", "systemUUID": "", "bootID": ""}}})
}

/// Puts this node's VXLAN device MAC on its Node, for its peers' entries.
pub(super) async fn publish_vtep_mac(
    client: &kube::Client,
    name: &str,
    mac: &[u8; 6],
) -> Result<(), AgentError> {
    let annotation = crate::podnet::vxlan::MAC_ANNOTATION;
    let patch =
        json!({"metadata": {"annotations": {annotation: crate::podnet::vxlan::format_mac(mac)}}});
    Api::<Node>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// `status.addresses` in kubelet's order: InternalIP, ExternalIP (only
/// when given), Hostname.
fn addresses(cfg: &AgentConfig) -> Value {
    let mut all = vec![json!({"type": "InternalIP", "address": cfg.node_ip().to_string()})];
    if let Some(ip) = cfg.external_ip {
        all.push(json!({"type": "ExternalIP", "address": ip.to_string()}));
    }
    all.push(json!({"type": "Hostname", "address": cfg.name}));
    Value::Array(all)
}

/// The kube-dns Service's ClusterIP, if there is one (containers' nameserver).
pub(super) async fn cluster_dns(client: &kube::Client) -> Option<std::net::IpAddr> {
    let services: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    match services.get_opt("kube-dns").await {
        Ok(s) => s?.spec?.cluster_ip?.parse().ok(),
        Err(e) => {
            tracing::warn!("looking up kube-dns for containers' resolv.conf: {e}");
            None
        }
    }
}

/// Waits until the Node has a podCIDR (node IPAM allocates it).
pub(super) async fn allocated_pod_cidr(
    client: &kube::Client,
    name: &str,
    wait: Duration,
) -> Result<String, AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let cidr = nodes
            .get_opt(name)
            .await?
            .and_then(|n| n.spec?.pod_cidr)
            .filter(|c| !c.is_empty());
        if let Some(c) = cidr {
            return Ok(c);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::NoPodCidr {
                node: name.to_string(),
                waited: wait,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn heartbeat(
    client: &kube::Client,
    cfg: &AgentConfig,
    containerd: Option<&str>,
) -> Result<(), AgentError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": cfg.name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": cfg.name, "leaseDurationSeconds": 40, "renewTime": now_micro()}});
    leases
        .patch(
            &cfg.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await?;
    post_node_status(client, cfg, containerd).await
}

/// Capacity, conditions (Ready with a fresh heartbeat time), addresses, node info.
async fn post_node_status(
    client: &kube::Client,
    cfg: &AgentConfig,
    containerd: Option<&str>,
) -> Result<(), AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            &cfg.name,
            &PatchParams::default(),
            &Patch::Merge(&node_status(cfg, containerd)),
        )
        .await?;
    Ok(())
}

/// Renews the Lease and posts node status every `cfg.heartbeat` until
/// `stop`. Each beat is bounded by the interval, so a hung request delays
/// only itself.
pub(super) async fn heartbeat_loop(
    client: kube::Client,
    cfg: AgentConfig,
    containerd: Option<String>,
    mut stop: signal::Receiver<bool>,
) {
    let mut beat = tokio::time::interval(cfg.heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let bound = cfg.heartbeat.max(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = beat.tick() => {
                match tokio::time::timeout(bound, heartbeat(&client, &cfg, containerd.as_deref())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("heartbeat: {e}"),
                    Err(_) => tracing::warn!("heartbeat: no answer within {bound:?}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_list_the_external_ip_only_when_given() {
        let mut cfg = AgentConfig::new("n1".into(), "/tmp/d".into());
        cfg.node_ip = Some("10.0.0.2".parse().unwrap());
        assert_eq!(
            addresses(&cfg),
            json!([{"type": "InternalIP", "address": "10.0.0.2"}, {"type": "Hostname", "address": "n1"}])
        );
        cfg.external_ip = Some("203.0.113.7".parse().unwrap());
        assert_eq!(
            addresses(&cfg)[1],
            json!({"type": "ExternalIP", "address": "203.0.113.7"})
        );
    }
}
