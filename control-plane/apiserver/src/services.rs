//! Service address allocation (kube-apiserver's ClusterIP and NodePort
//! allocators) and the Services the cluster starts with.
//!
//! Each allocated value is a reservation key in the store, claimed with a
//! create-if-absent (or compare-and-swap) write, so two API servers never
//! hand out one value twice. Reservations are not released on delete: a
//! reservation whose Service no longer uses it is free to claim again once it
//! is a minute old (younger ones may belong to a create still in flight).
//! That keeps every delete path free of allocator hooks.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use serde_json::{Value, json};
use weft_api::{Cause, Status};

use weft_store::{Failed, Op, Precondition, Store, StoreError};

/// Where ClusterIPs and NodePorts come from (`--service-cidr`,
/// `--service-node-port-range`).
#[derive(Debug, Clone)]
pub struct ServiceNetwork {
    cidr: String,
    base: u32,
    size: u32,
    node_ports: RangeInclusive<u16>,
}

impl ServiceNetwork {
    /// A loopback range: ClusterIPs work on one machine without privileges,
    /// as Linux routes all of 127.0.0.0/8 to the host.
    pub const DEFAULT_CIDR: &str = "127.96.0.0/16";
    pub const DEFAULT_NODE_PORTS: &str = "30000-32767";

    pub fn parse(cidr: &str, node_ports: &str) -> Result<Self, String> {
        let bad = || format!("invalid service CIDR {cidr:?}: want an IPv4 a.b.c.d/len, len 8..=28");
        let (ip, len) = cidr.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u32 = len.parse().map_err(|_| bad())?;
        if !(8..=28).contains(&len) {
            return Err(bad());
        }
        let size = 1u32 << (32 - len);
        let base = u32::from(ip) & !(size - 1);
        let bad_ports = || format!("invalid node port range {node_ports:?}: want FROM-TO");
        let (from, to) = node_ports.split_once('-').ok_or_else(bad_ports)?;
        let (from, to): (u16, u16) = (
            from.trim().parse().map_err(|_| bad_ports())?,
            to.trim().parse().map_err(|_| bad_ports())?,
        );
        if from == 0 || from > to {
            return Err(bad_ports());
        }
        Ok(ServiceNetwork {
            cidr: format!("{}/{len}", Ipv4Addr::from(base)),
            base,
            size,
            node_ports: from..=to,
        })
    }

    /// The `kubernetes` Service's address: the range's first.
    pub fn kubernetes_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// The cluster DNS address (`kube-system/kube-dns`), the tenth as in kubeadm.
    pub fn dns_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 10)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n > self.base && n < self.base + self.size - 1
    }

    /// Addresses handed out automatically: all but the network, broadcast and
    /// the first ten (the static band for the cluster's own Services).
    fn dynamic(&self) -> std::ops::Range<u32> {
        self.base + 11..self.base + self.size - 1
    }
}

impl Default for ServiceNetwork {
    fn default() -> Self {
        Self::parse(Self::DEFAULT_CIDR, Self::DEFAULT_NODE_PORTS).expect("valid defaults")
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Pool {
    ClusterIp,
    NodePort,
}

impl Pool {
    fn resource(self) -> &'static str {
        match self {
            Pool::ClusterIp => "serviceipreservations",
            Pool::NodePort => "servicenodeportreservations",
        }
    }
}

/// How long a fresh reservation is held for a Service not yet written.
const CLAIM_GRACE_SECS: i64 = 60;

struct Owner<'a> {
    ns: &'a str,
    name: &'a str,
    uid: &'a str,
}

fn uses(svc: &Value, pool: Pool, value: &str) -> bool {
    let spec = &svc["spec"];
    match pool {
        Pool::ClusterIp => spec["clusterIP"].as_str() == Some(value),
        Pool::NodePort => spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["nodePort"].as_i64().map(|n| n.to_string()).as_deref() == Some(value)),
    }
}

fn store_status(e: StoreError) -> Status {
    let res = weft_api::resources::by_plural("", "v1", "services").expect("services are served");
    super::status::store_error(res, "", e)
}

/// Claims `value` for `owner`: true if it is now theirs.
async fn claim(store: &Store, pool: Pool, value: &str, owner: &Owner<'_>) -> Result<bool, Status> {
    let key = weft_store::key("weft.dev", pool.resource(), "", value);
    let now = jiff::Timestamp::now().as_second();
    let precondition = match store.get(&key).map_err(store_status)? {
        None => Precondition::Absent,
        Some((rev, r)) => {
            if r["uid"].as_str() == Some(owner.uid) {
                return Ok(true);
            }
            let fresh = now - r["at"].as_i64().unwrap_or(0) < CLAIM_GRACE_SECS;
            let (ns, name) = r["service"]
                .as_str()
                .and_then(|s| s.split_once('/'))
                .unwrap_or(("", ""));
            let held = store
                .get(&weft_store::key("", "services", ns, name))
                .map_err(store_status)?
                .is_some_and(|(_, svc)| {
                    svc.pointer("/metadata/uid") == Some(&r["uid"]) && uses(&svc, pool, value)
                });
            if fresh || held {
                return Ok(false);
            }
            Precondition::Revision(rev)
        }
    };
    let object = json!({"metadata": {"name": value},
        "service": format!("{}/{}", owner.ns, owner.name), "uid": owner.uid, "at": now});
    match store
        .write(Op::Put {
            key,
            object,
            precondition,
        })
        .await
    {
        Ok(_) => Ok(true),
        Err(StoreError::Precondition(Failed::AlreadyExists | Failed::Conflict { .. })) => Ok(false),
        Err(e) => Err(store_status(e)),
    }
}

/// Claims the first free value of `range` (as `value` names it), scanning
/// from a random place and wrapping around; a full range is a 500 `full`.
async fn claim_free(
    store: &Store,
    pool: Pool,
    range: std::ops::Range<u32>,
    value: impl Fn(u32) -> String,
    owner: &Owner<'_>,
    full: String,
) -> Result<String, Status> {
    let len = range.end.saturating_sub(range.start);
    let first = if len > 0 {
        rand::random_range(0..len)
    } else {
        0
    };
    for i in 0..len {
        let v = value(range.start + (first + i) % len);
        if claim(store, pool, &v, owner).await? {
            return Ok(v);
        }
    }
    Err(Status::new(500, "InternalError", full))
}

fn invalid(name: &str, field: &str, value: &str, why: &str) -> Status {
    Status::invalid(
        "Service",
        name,
        vec![Cause::invalid_value(field, value, why)],
    )
}

/// Fills in (or checks) a Service's ClusterIP and NodePorts, claiming them.
/// `old` is the stored Service on updates: what it holds stays.
pub async fn allocate(
    store: &Store,
    net: &ServiceNetwork,
    svc: &mut Value,
    old: Option<&Value>,
) -> Result<(), Status> {
    let ns = svc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = svc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let uid = svc
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let owner = Owner {
        ns: &ns,
        name: &name,
        uid: &uid,
    };
    let spec = svc["spec"]
        .as_object_mut()
        .ok_or_else(|| Status::bad_request("spec is required"))?;
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty == "ExternalName" {
        return Ok(());
    }
    let ip = cluster_ip(store, net, &owner, old, spec.get("clusterIP")).await?;
    set_cluster_ip(spec, &ip);

    let wants_node_ports = matches!(ty.as_str(), "NodePort" | "LoadBalancer");
    let old_ports: Vec<Value> = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for (i, p) in ports.iter_mut().enumerate() {
        let Some(p) = p.as_object_mut() else { continue };
        if !wants_node_ports {
            // Switching to ClusterIP drops node ports, as kube-apiserver does.
            p.remove("nodePort");
            continue;
        }
        let kept = old_ports
            .iter()
            .find(|o| o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol"))
            .and_then(|o| o.get("nodePort"))
            .and_then(Value::as_i64);
        let field = format!("spec.ports[{i}].nodePort");
        let requested = p.get("nodePort").and_then(Value::as_i64);
        let port = node_port(store, net, &owner, &field, requested, kept).await?;
        p.insert("nodePort".into(), json!(port.parse::<i64>().unwrap_or(0)));
    }
    Ok(())
}

/// The Service's ClusterIP: the one it holds, the one it asks for (if free
/// and in range), or a free one.
async fn cluster_ip(
    store: &Store,
    net: &ServiceNetwork,
    owner: &Owner<'_>,
    old: Option<&Value>,
    requested: Option<&Value>,
) -> Result<String, Status> {
    let old_ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let want = requested
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Ok(match (old_ip, want) {
        (Some(o), Some(w)) if o != w => {
            return Err(invalid(
                owner.name,
                "spec.clusterIPs[0]",
                &w,
                "may not change once set",
            ));
        }
        (Some(o), _) => o,
        (None, Some(w)) if w == "None" => w,
        (None, Some(w)) => {
            let ok = w.parse::<Ipv4Addr>().is_ok_and(|ip| net.contains(ip));
            if !ok {
                return Err(invalid(
                    owner.name,
                    "spec.clusterIPs",
                    &w,
                    &format!(
                        "failed to allocate IP {w}: the provided IP ({w}) is not in the valid range. The range of valid IPs is {}",
                        net.cidr
                    ),
                ));
            }
            if !claim(store, Pool::ClusterIp, &w, owner).await? {
                return Err(invalid(
                    owner.name,
                    "spec.clusterIPs",
                    &w,
                    &format!("failed to allocate IP {w}: provided IP is already allocated"),
                ));
            }
            w
        }
        (None, None) => {
            claim_free(
                store,
                Pool::ClusterIp,
                net.dynamic(),
                |n| Ipv4Addr::from(n).to_string(),
                owner,
                format!(
                    "failed to allocate a serviceIP: range is full ({})",
                    net.cidr
                ),
            )
            .await?
        }
    })
}

/// A port's nodePort: the one it holds, the one it asks for (if free and
/// in range), or a free one.
async fn node_port(
    store: &Store,
    net: &ServiceNetwork,
    owner: &Owner<'_>,
    field: &str,
    requested: Option<i64>,
    kept: Option<i64>,
) -> Result<String, Status> {
    Ok(match requested.or(kept) {
        Some(n) if Some(n) == kept => n.to_string(),
        Some(n) => {
            let v = n.to_string();
            if !u16::try_from(n).is_ok_and(|n| net.node_ports.contains(&n)) {
                return Err(invalid(
                    owner.name,
                    field,
                    &v,
                    &format!(
                        "provided port is not in the valid range. The range of valid ports is {}-{}",
                        net.node_ports.start(),
                        net.node_ports.end()
                    ),
                ));
            }
            if !claim(store, Pool::NodePort, &v, owner).await? {
                return Err(invalid(
                    owner.name,
                    field,
                    &v,
                    "provided port is already allocated",
                ));
            }
            v
        }
        None => {
            let ports = u32::from(*net.node_ports.start())..u32::from(*net.node_ports.end()) + 1;
            claim_free(
                store,
                Pool::NodePort,
                ports,
                |n| n.to_string(),
                owner,
                "failed to allocate a nodePort: range is full".into(),
            )
            .await?
        }
    })
}

/// The cluster's own Services, written by the leader at start:
/// `default/kubernetes` (the API server, with its EndpointSlice kept current)
/// and `kube-system/kube-dns` (served by every node agent's DNS server).
pub async fn bootstrap(
    store: &Store,
    net: &ServiceNetwork,
    api: std::net::SocketAddr,
) -> Result<(), StoreError> {
    let api_ip = if api.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        api.ip().to_string()
    };
    let now = weft_cluster::time::ts(jiff::Timestamp::now());
    let mut kubernetes_uid = None;
    for (ns, name, ip, labels, ports) in [
        (
            "default",
            "kubernetes",
            net.kubernetes_ip(),
            json!({"component": "apiserver", "provider": "kubernetes"}),
            json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": api.port()}]),
        ),
        (
            "kube-system",
            "kube-dns",
            net.dns_ip(),
            json!({"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}),
            json!([{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]),
        ),
    ] {
        let key = weft_store::key("", "services", ns, name);
        if let Some((_, cur)) = store.get(&key)? {
            if name == "kubernetes" {
                kubernetes_uid = cur.pointer("/metadata/uid").cloned();
            }
            continue;
        }
        let uid = uuid::Uuid::new_v4().to_string();
        let mut svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "uid": uid, "creationTimestamp": now, "labels": labels},
            "spec": {"clusterIP": ip.to_string(), "ports": ports}});
        super::defaults::apply("Service", &mut svc);
        let owner = Owner {
            ns,
            name,
            uid: &uid,
        };
        // A failure here leaves the Service without a reservation; it is written anyway.
        let _ = claim(store, Pool::ClusterIp, &ip.to_string(), &owner).await;
        if let Some(spec) = svc["spec"].as_object_mut() {
            set_cluster_ip(spec, &ip.to_string());
        }
        match store
            .write(Op::Put {
                key,
                object: svc,
                precondition: Precondition::Absent,
            })
            .await
        {
            Ok(_) | Err(StoreError::Precondition(Failed::AlreadyExists)) => {}
            Err(e) => return Err(e),
        }
        if name == "kubernetes" {
            kubernetes_uid = Some(json!(uid));
        }
    }
    // The API server's address may change between starts (port 0): always rewrite it.
    let owner = json!([{"apiVersion": "v1", "kind": "Service", "name": "kubernetes",
        "uid": kubernetes_uid.unwrap_or(Value::Null), "controller": true, "blockOwnerDeletion": true}]);
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "creationTimestamp": now,
                     "uid": uuid::Uuid::new_v4().to_string(),
                     "labels": {"kubernetes.io/service-name": "kubernetes",
                                "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"},
                     "ownerReferences": owner},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [api_ip], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "https", "port": api.port(), "protocol": "TCP"}]});
    let endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "creationTimestamp": now,
                     "uid": uuid::Uuid::new_v4().to_string()},
        "subsets": [{"addresses": [{"ip": api_ip}], "ports": [{"name": "https", "port": api.port(), "protocol": "TCP"}]}]});
    for (group, plural, obj) in [
        ("discovery.k8s.io", "endpointslices", slice),
        ("", "endpoints", endpoints),
    ] {
        let key = weft_store::key(group, plural, "default", "kubernetes");
        if let Some((_, cur)) = store.get(&key)? {
            let same = |f: &str| cur.get(f) == obj.get(f);
            if same("endpoints") && same("ports") && same("subsets") {
                continue;
            }
        }
        store
            .write(Op::Put {
                key,
                object: obj,
                precondition: Precondition::None,
            })
            .await?;
    }
    Ok(())
}

/// A Service's address fields for a single-stack IPv4 `ip` (or `None`).
fn set_cluster_ip(spec: &mut serde_json::Map<String, Value>, ip: &str) {
    spec.insert("clusterIP".into(), json!(ip));
    spec.insert("clusterIPs".into(), json!([ip]));
    spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
    spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let n = ServiceNetwork::parse("127.96.0.7/24", "30000-30002").unwrap();
        assert_eq!(n.cidr, "127.96.0.0/24");
        assert_eq!(n.kubernetes_ip(), Ipv4Addr::new(127, 96, 0, 1));
        assert_eq!(n.dns_ip(), Ipv4Addr::new(127, 96, 0, 10));
        assert!(n.contains(Ipv4Addr::new(127, 96, 0, 254)));
        assert!(!n.contains(Ipv4Addr::new(127, 96, 0, 255)), "broadcast");
        assert!(!n.contains(Ipv4Addr::new(127, 96, 1, 1)));
        let dynamic = n.dynamic();
        assert_eq!(Ipv4Addr::from(dynamic.start), Ipv4Addr::new(127, 96, 0, 11));
        assert_eq!(
            Ipv4Addr::from(dynamic.end - 1),
            Ipv4Addr::new(127, 96, 0, 254)
        );
        assert!(ServiceNetwork::parse("10.0.0.0/40", "1-2").is_err());
        assert!(ServiceNetwork::parse("10.0.0.0/16", "5-1").is_err());
    }
}
