//! The proxy's routing table, built from Services and EndpointSlices by a
//! pure function: what each ClusterIP:port and NodePort leads to.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use weft_api::k8s_openapi::api::core::v1::Service;
use weft_api::k8s_openapi::api::discovery::v1::EndpointSlice;

use super::balancer::{Balancer, Policy};
use super::metrics::{EndpointMetrics, ProxyMetrics};

/// Chooses the load-balancing policy (`round-robin`, the default, or `least-request`).
pub const LB_POLICY_ANNOTATION: &str = "weft.dev/load-balancer";
/// The Service the node's DNS server answers on, instead of the proxy.
pub const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How a Service port's connections are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `appProtocol: http` / `kubernetes.io/h2c`: per-request balancing.
    Http,
    /// Any other appProtocol: a TCP stream to one endpoint.
    Tcp,
    /// No appProtocol: HTTP if the client's first bytes are HTTP, else TCP.
    Detect,
}

/// One Service port: where its traffic may go.
#[derive(Debug)]
pub struct PortRoute {
    /// `namespace/name:port`, for metrics and messages.
    pub service: Arc<str>,
    pub mode: Mode,
    /// Ready endpoints, sorted.
    pub endpoints: Vec<SocketAddr>,
    pub policy: Policy,
    /// `sessionAffinity: ClientIP` and its timeout.
    pub affinity: Option<Duration>,
    pub balancer: Arc<Balancer>,
    /// Metric handles by endpoint, and for requests no endpoint took.
    pub stats: HashMap<SocketAddr, EndpointMetrics>,
    pub unrouted: EndpointMetrics,
}

/// What DNS and in-cluster egress need to know of a Service.
#[derive(Debug, Default)]
pub struct ServiceEntry {
    /// None for headless Services.
    pub cluster_ip: Option<Ipv4Addr>,
    /// (name, port, protocol) of each Service port.
    pub ports: Vec<(String, u16, String)>,
    /// Ready endpoint addresses (what headless Services resolve to).
    pub endpoint_ips: Vec<Ipv4Addr>,
    /// Routes by Service port.
    pub routes: HashMap<u16, Arc<PortRoute>>,
}

#[derive(Debug, Default)]
pub struct Table {
    /// Listening address (ClusterIP:port, node IP:nodePort) → route.
    pub listeners: HashMap<SocketAddr, Arc<PortRoute>>,
    /// (namespace, name) → Service.
    pub services: HashMap<(String, String), ServiceEntry>,
    /// ClusterIP → (namespace, name).
    pub by_ip: HashMap<Ipv4Addr, (String, String)>,
    /// Where the cluster DNS server listens (kube-dns's ClusterIP:53).
    pub dns: Option<SocketAddr>,
}

impl Table {
    /// The route for a Service port by ClusterIP or by name.
    pub fn route(&self, ns: &str, name: &str, port: u16) -> Option<&Arc<PortRoute>> {
        self.services
            .get(&(ns.to_string(), name.to_string()))?
            .routes
            .get(&port)
    }
}

fn mode_for(app_protocol: Option<&str>) -> Mode {
    match app_protocol {
        None | Some("") => Mode::Detect,
        Some(p) if p.eq_ignore_ascii_case("http") || p == "kubernetes.io/h2c" => Mode::Http,
        Some(_) => Mode::Tcp,
    }
}

/// Builds the table. `balancers` keeps each Service port's balancer (its
/// counters, ejections and affinities) across rebuilds, pruned to the
/// current endpoints; unused ones are dropped.
pub fn build(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node: &ThisNode,
    balancers: &mut HashMap<Arc<str>, Arc<Balancer>>,
    metrics: &ProxyMetrics,
) -> Table {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        let ns = s.metadata.namespace.as_deref().unwrap_or("");
        if let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            by_service.entry((ns, svc.as_str())).or_default().push(s);
        }
    }
    let mut table = Table::default();
    let mut used = HashMap::new();
    for svc in services {
        let (Some(ns), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        let cluster_ip = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        let svc_slices = by_service.get(&(ns, name)).cloned().unwrap_or_default();
        let mut entry = ServiceEntry {
            cluster_ip,
            ..ServiceEntry::default()
        };
        entry.endpoint_ips = svc_slices
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| ready(e))
            .flat_map(|e| e.addresses.iter())
            .filter_map(|a| a.parse().ok())
            .collect();
        entry.endpoint_ips.sort();
        entry.endpoint_ips.dedup();
        if (ns, name) == DNS_SERVICE {
            table.dns = cluster_ip.map(|ip| SocketAddr::from((ip, 53)));
        }
        let (policy, affinity) = balancing(svc);
        let traffic = Traffic::of(spec);
        for p in spec.ports.iter().flatten() {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let port_name = p.name.clone().unwrap_or_default();
            let port = p.port as u16;
            entry
                .ports
                .push((port_name.clone(), port, protocol.clone()));
            if protocol != "TCP" {
                continue;
            }
            let all = port_endpoints(&svc_slices, &port_name, &node.name);
            let mut route_for = |key: Arc<str>, endpoints: Vec<SocketAddr>| {
                let balancer = balancers.get(&key).cloned().unwrap_or_default();
                // Forget the counters and ejections of endpoints that left.
                balancer.retain(&endpoints);
                used.insert(key.clone(), balancer.clone());
                let stats = endpoints
                    .iter()
                    .map(|e| (*e, metrics.endpoint(&key, Some(*e))))
                    .collect();
                let unrouted = metrics.endpoint(&key, None);
                Arc::new(PortRoute {
                    stats,
                    unrouted,
                    service: key,
                    mode: mode_for(p.app_protocol.as_deref()),
                    endpoints,
                    policy,
                    affinity,
                    balancer,
                })
            };
            let key: Arc<str> = format!("{ns}/{name}:{port}").into();
            let route = route_for(key.clone(), traffic.internal(&all));
            entry.routes.insert(port, route.clone());
            if (ns, name) == DNS_SERVICE {
                continue;
            }
            if let Some(ip) = cluster_ip {
                table
                    .listeners
                    .insert(SocketAddr::from((ip, port)), route.clone());
            }
            if let Some(np) = p.node_port.filter(|n| *n > 0) {
                // A NodePort sees the external policy: its own route (and
                // balancer) when that picks other endpoints.
                let external = traffic.external(&all);
                let route = if external == route.endpoints {
                    route
                } else {
                    route_for(format!("{key}/external").into(), external)
                };
                table
                    .listeners
                    .insert(SocketAddr::new(node.ip, np as u16), route);
            }
        }
        if let Some(ip) = cluster_ip {
            table.by_ip.insert(ip, (ns.to_string(), name.to_string()));
        }
        table
            .services
            .insert((ns.to_string(), name.to_string()), entry);
    }
    *balancers = used;
    table
}

/// Whether an endpoint is ready (an absent condition means ready).
fn ready(e: &weft_api::k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
}

/// The Service's balancing policy (annotation) and ClientIP affinity timeout.
fn balancing(svc: &Service) -> (Policy, Option<Duration>) {
    let spec = svc.spec.as_ref();
    let policy = match svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_POLICY_ANNOTATION))
        .map(String::as_str)
    {
        Some("least-request") => Policy::LeastRequest,
        _ => Policy::RoundRobin,
    };
    let affinity = spec
        .filter(|spec| spec.session_affinity.as_deref() == Some("ClientIP"))
        .map(|spec| {
            let secs = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10_800);
            Duration::from_secs(secs.max(1) as u64)
        });
    (policy, affinity)
}

/// The node this proxy runs on: NodePorts listen on its IP, and its name
/// tells its own endpoints (EndpointSlice `nodeName`) from others'.
#[derive(Debug, Clone)]
pub struct ThisNode {
    pub ip: IpAddr,
    pub name: String,
}

/// A ready endpoint, and whether it runs on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint {
    addr: SocketAddr,
    local: bool,
}

/// The ready endpoints of the slice port named `port_name` (the slice port
/// of the same name carries the resolved target port), sorted, unique.
fn port_endpoints(slices: &[&EndpointSlice], port_name: &str, node: &str) -> Vec<Endpoint> {
    let mut all: Vec<Endpoint> = slices
        .iter()
        .flat_map(|s| {
            let target = s
                .ports
                .iter()
                .flatten()
                .find(|sp| sp.name.as_deref().unwrap_or("") == port_name)
                .and_then(|sp| sp.port);
            s.endpoints.iter().filter(|e| ready(e)).flat_map(move |e| {
                let local = e.node_name.as_deref() == Some(node);
                e.addresses.iter().filter_map(move |a| {
                    Some(Endpoint {
                        addr: SocketAddr::new(a.parse().ok()?, target? as u16),
                        local,
                    })
                })
            })
        })
        .collect();
    all.sort();
    all.dedup_by_key(|e| e.addr);
    all
}

/// A Service's traffic policies, as kube-proxy reads them.
#[derive(Debug, Clone, Copy, Default)]
struct Traffic {
    /// `internalTrafficPolicy: Local`: cluster traffic only to this node's
    /// endpoints, none if it has none (kube-proxy drops; we answer 503).
    internal_local: bool,
    /// `trafficDistribution: PreferClose` (or `PreferSameNode`): this node's
    /// endpoints when it has any, else all. Weft has no zones, so the node
    /// is the closest there is.
    prefer_close: bool,
    /// `externalTrafficPolicy: Local`: NodePort traffic only to this node's
    /// endpoints (no second hop).
    external_local: bool,
}

impl Traffic {
    fn of(spec: &weft_api::k8s_openapi::api::core::v1::ServiceSpec) -> Traffic {
        Traffic {
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            prefer_close: matches!(
                spec.traffic_distribution.as_deref(),
                Some("PreferClose" | "PreferSameNode")
            ),
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        }
    }

    fn internal(&self, all: &[Endpoint]) -> Vec<SocketAddr> {
        let local = all.iter().filter(|e| e.local);
        if self.internal_local || (self.prefer_close && all.iter().any(|e| e.local)) {
            local.map(|e| e.addr).collect()
        } else {
            all.iter().map(|e| e.addr).collect()
        }
    }

    fn external(&self, all: &[Endpoint]) -> Vec<SocketAddr> {
        all.iter()
            .filter(|e| e.local || !self.external_local)
            .map(|e| e.addr)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn slice(v: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn routes_ready_endpoints_by_named_port_with_node_ports() {
        let services = [
            svc(json!({"metadata": {"namespace": "default", "name": "web",
                "annotations": {LB_POLICY_ANNOTATION: "least-request"}},
                "spec": {"type": "NodePort", "clusterIP": "127.96.0.20", "sessionAffinity": "ClientIP",
                         "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080, "appProtocol": "http"},
                                   {"name": "raw", "port": 9000, "appProtocol": "postgresql"}]}})),
            svc(json!({"metadata": {"namespace": "default", "name": "db"},
                "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}})),
            svc(
                json!({"metadata": {"namespace": "kube-system", "name": "kube-dns"},
                "spec": {"clusterIP": "127.96.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                                                             {"name": "dns-tcp", "port": 53}]}}),
            ),
        ];
        let slices = [
            slice(json!({"metadata": {"namespace": "default", "name": "web-1",
                "labels": {SERVICE_NAME_LABEL: "web"}}, "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}, {"name": "raw", "port": 9999}],
                "endpoints": [
                    {"addresses": ["127.10.0.3"], "conditions": {"ready": true}},
                    {"addresses": ["127.10.0.2"]},
                    {"addresses": ["127.10.0.4"], "conditions": {"ready": false, "terminating": true}}]})),
            slice(json!({"metadata": {"namespace": "default", "name": "db-1",
                "labels": {SERVICE_NAME_LABEL: "db"}}, "addressType": "IPv4",
                "ports": [{"name": "", "port": 5432}],
                "endpoints": [{"addresses": ["127.10.0.9"], "conditions": {"ready": true}}]})),
        ];
        let mut balancers = HashMap::new();
        let m = ProxyMetrics::default();
        let node = ThisNode {
            ip: "127.0.0.1".parse().unwrap(),
            name: "n1".into(),
        };
        let t = build(&services, &slices, &node, &mut balancers, &m);
        let web = &t.listeners[&"127.96.0.20:80".parse().unwrap()];
        assert_eq!(
            web.endpoints,
            [
                "127.10.0.2:8080".parse().unwrap(),
                "127.10.0.3:8080".parse().unwrap()
            ],
            "ready endpoints only, at the named port's number"
        );
        assert_eq!(web.mode, Mode::Http);
        assert_eq!(web.policy, Policy::LeastRequest);
        assert_eq!(web.affinity, Some(Duration::from_secs(10_800)));
        assert!(Arc::ptr_eq(
            web,
            &t.listeners[&"127.0.0.1:30080".parse().unwrap()]
        ));
        assert_eq!(
            t.listeners[&"127.96.0.20:9000".parse().unwrap()].mode,
            Mode::Tcp
        );
        assert_eq!(
            t.listeners.len(),
            3,
            "headless and DNS Services get no listener"
        );
        assert_eq!(
            t.services[&("default".into(), "db".into())].endpoint_ips,
            [Ipv4Addr::new(127, 10, 0, 9)]
        );
        assert_eq!(t.dns, Some("127.96.0.10:53".parse().unwrap()));
        assert_eq!(t.by_ip[&Ipv4Addr::new(127, 96, 0, 20)].1, "web");
        // A rebuild keeps each port's balancer; a removed Service's goes.
        let again = build(&services[..1], &slices, &node, &mut balancers, &m);
        assert!(Arc::ptr_eq(
            &web.balancer,
            &again.listeners[&"127.96.0.20:80".parse().unwrap()].balancer
        ));
        assert_eq!(balancers.len(), 2);
    }

    #[test]
    fn traffic_policies_pick_this_nodes_endpoints() {
        let svc_with = |name: &str, spec: serde_json::Value| {
            let mut spec = spec;
            spec["type"] = json!("NodePort");
            spec["ports"] = json!([{"port": 80, "nodePort": 30000 + name.len()}]);
            spec["clusterIP"] = json!(format!("10.96.0.{}", name.len()));
            svc(json!({"metadata": {"namespace": "default", "name": name}, "spec": spec}))
        };
        let services = [
            svc_with("a", json!({})),
            svc_with("bb", json!({"internalTrafficPolicy": "Local"})),
            svc_with("ccc", json!({"trafficDistribution": "PreferClose"})),
            svc_with("dddd", json!({"externalTrafficPolicy": "Local"})),
            svc_with("eeeee", json!({"trafficDistribution": "PreferClose"})),
        ];
        // Every Service has one endpoint here (n1) and one elsewhere (n2);
        // "eeeee" on n2 only, to show PreferClose falling back.
        let slices: Vec<_> = ["a", "bb", "ccc", "dddd", "eeeee"]
            .iter()
            .map(|name| {
                let here = if *name == "eeeee" { "n2" } else { "n1" };
                slice(
                    json!({"metadata": {"namespace": "default", "name": format!("{name}-1"),
                    "labels": {SERVICE_NAME_LABEL: name}}, "addressType": "IPv4",
                    "ports": [{"name": "", "port": 8080}],
                    "endpoints": [{"addresses": ["10.244.0.5"], "nodeName": here},
                                  {"addresses": ["10.244.1.5"], "nodeName": "n2"}]}),
                )
            })
            .collect();
        let node = ThisNode {
            ip: "10.0.0.1".parse().unwrap(),
            name: "n1".into(),
        };
        let t = build(
            &services,
            &slices,
            &node,
            &mut HashMap::new(),
            &ProxyMetrics::default(),
        );
        let at = |addr: &str| -> Vec<String> {
            t.listeners[&addr.parse().unwrap()]
                .endpoints
                .iter()
                .map(|e| e.ip().to_string())
                .collect()
        };
        let (here, both) = (vec!["10.244.0.5"], vec!["10.244.0.5", "10.244.1.5"]);
        assert_eq!(at("10.96.0.1:80"), both, "Cluster: every endpoint");
        assert_eq!(at("10.0.0.1:30001"), both);
        assert_eq!(at("10.96.0.2:80"), here, "internal Local: this node's");
        assert_eq!(
            at("10.0.0.1:30002"),
            both,
            "NodePorts follow the external policy"
        );
        assert_eq!(at("10.96.0.3:80"), here, "PreferClose: this node's first");
        assert_eq!(
            at("10.96.0.5:80"),
            both,
            "PreferClose without local endpoints: all"
        );
        assert_eq!(at("10.96.0.4:80"), both);
        assert_eq!(at("10.0.0.1:30004"), here, "external Local: this node's");
    }
}
