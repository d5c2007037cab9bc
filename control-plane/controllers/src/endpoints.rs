//! Endpoints and EndpointSlices for Services with selectors: ready and
//! not-ready pod addresses, with target ports resolved by name.

use serde_json::{Map, Value, json};

use super::Controller;
use weft_cluster::objects as o;
use weft_cluster::{Action, Outcome, res};
use weft_cluster::{Change, Snapshot};

pub struct EndpointsController;

const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

/// A Service's selector as a LabelSelector (None: no selector, endpoints managed by hand).
fn selector(svc: &Value) -> Option<Value> {
    let s = svc.pointer("/spec/selector").and_then(Value::as_object)?;
    (!s.is_empty()).then(|| json!({"matchLabels": s}))
}

/// The pod's port for a service port's targetPort (a number, or a container port name).
fn resolve_port(pod: &Value, target: &Value) -> Option<i64> {
    if let Some(n) = target.as_i64() {
        return Some(n);
    }
    let want = target.as_str()?;
    if let Ok(n) = want.parse() {
        return Some(n);
    }
    pod.pointer("/spec/containers")?
        .as_array()?
        .iter()
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find(|p| p.get("name").and_then(Value::as_str) == Some(want))
        .and_then(|p| p.get("containerPort"))
        .and_then(Value::as_i64)
}

pub fn slice_name(svc: &Value) -> String {
    format!("{}-{}", o::name(svc), o::template_hash(&json!(o::uid(svc))))
}

impl Controller for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    fn primary(&self) -> (&'static str, &'static str) {
        ("", "services")
    }

    fn keys_for(&self, change: &Change, snap: &Snapshot) -> Vec<String> {
        match change.resource() {
            ("", "services") => vec![o::key_of(change.object())],
            ("", "pods") => {
                let ns = o::namespace(change.object());
                snap.list("", "services", Some(ns))
                    .filter(|svc| {
                        let sel = selector(svc);
                        [&change.old, &change.new]
                            .into_iter()
                            .flatten()
                            .any(|p| o::selector_matches(sel.as_ref(), o::labels(p)))
                    })
                    .map(|svc| o::key_of(svc))
                    .collect()
            }
            _ => vec![],
        }
    }

    fn reconcile(&self, key: &str, snap: &Snapshot, _now: jiff::Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let (ns, name) = o::split_key(key);
        let Some(svc) = snap.get("", "services", ns, name) else {
            // Slices go with their owner (the garbage collector); Endpoints have none.
            if snap.get("", "endpoints", ns, name).is_some() {
                out.push(Action::Delete {
                    res: res("endpoints"),
                    ns: ns.into(),
                    name: name.into(),
                    options: json!({}),
                });
            }
            return out;
        };
        let Some(sel) = selector(svc) else {
            return out;
        };
        let svc_ports: Vec<&Value> = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(|p| p.iter().collect())
            .unwrap_or_default();
        let publish_not_ready = svc
            .pointer("/spec/publishNotReadyAddresses")
            .and_then(Value::as_bool)
            == Some(true);
        // Endpoints group addresses by their resolved port set.
        let mut subsets: Vec<(Vec<Value>, Vec<Value>, Vec<Value>)> = Vec::new();
        let mut slice_endpoints = Vec::new();
        let mut slice_ports: Option<Vec<Value>> = None;
        let mut pods: Vec<_> = snap
            .list("", "pods", Some(ns))
            .filter(|p| o::selector_matches(Some(&sel), o::labels(p)))
            .filter(|p| !matches!(o::phase(p), "Succeeded" | "Failed"))
            .collect();
        pods.sort_by_key(|p| o::name(p).to_string());
        for pod in pods {
            let Some(ip) = pod
                .pointer("/status/podIP")
                .and_then(Value::as_str)
                .filter(|i| !i.is_empty())
            else {
                continue;
            };
            let ports = pod_ports(&svc_ports, pod);
            let node = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("");
            let target =
                json!({"kind": "Pod", "name": o::name(pod), "namespace": ns, "uid": o::uid(pod)});
            let ready = o::is_ready(pod) && !o::is_terminating(pod);
            let terminating = o::is_terminating(pod);
            slice_endpoints.push(json!({"addresses": [ip], "nodeName": node, "targetRef": target,
                "conditions": {"ready": ready, "serving": o::is_ready(pod), "terminating": terminating}}));
            slice_ports.get_or_insert_with(|| ports.clone());
            if terminating && !publish_not_ready {
                continue;
            }
            let addr = json!({"ip": ip, "nodeName": node, "targetRef": target});
            let i = match subsets.iter().position(|(p, _, _)| *p == ports) {
                Some(i) => i,
                None => {
                    subsets.push((ports.clone(), vec![], vec![]));
                    subsets.len() - 1
                }
            };
            if ready || publish_not_ready {
                subsets[i].1.push(addr);
            } else {
                subsets[i].2.push(addr);
            }
        }
        let subsets: Vec<Value> = subsets.into_iter().map(subset).collect();
        let labels = o::labels(svc).cloned().unwrap_or_default();
        let endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": name, "namespace": ns, "labels": labels}, "subsets": subsets});
        upsert(
            &mut out,
            snap,
            "endpoints",
            ns,
            name,
            endpoints,
            &["subsets"],
        );

        // With no pods, a slice still names the numeric target ports.
        let ports = slice_ports.unwrap_or_else(|| {
            svc_ports
                .iter()
                .filter_map(|sp| Some(endpoint_port(sp, sp.get("targetPort")?.as_i64()?)))
                .collect()
        });
        let mut slice_labels = labels;
        slice_labels.insert(SERVICE_NAME.into(), json!(name));
        slice_labels.insert(MANAGED_BY.into(), json!("endpointslice-controller.k8s.io"));
        let sname = slice_name(svc);
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": sname, "namespace": ns, "labels": slice_labels,
                         "ownerReferences": [o::owner_ref(svc)]},
            "addressType": "IPv4", "endpoints": slice_endpoints, "ports": ports});
        upsert(
            &mut out,
            snap,
            "endpointslices",
            ns,
            &sname,
            slice,
            &["endpoints", "ports"],
        );
        out
    }
}

/// An EndpointPort for the Service port `sp`, at `port` on the pod.
fn endpoint_port(sp: &Value, port: i64) -> Value {
    json!({"name": sp.get("name").and_then(Value::as_str).unwrap_or(""), "port": port,
           "protocol": sp.get("protocol").and_then(Value::as_str).unwrap_or("TCP")})
}

/// The Service's ports as this pod serves them (named target ports resolved
/// against its containers; ports it cannot serve left out).
fn pod_ports(svc_ports: &[&Value], pod: &Value) -> Vec<Value> {
    svc_ports
        .iter()
        .filter_map(|sp| {
            let target = sp
                .get("targetPort")
                .or_else(|| sp.get("port"))
                .cloned()
                .unwrap_or(Value::Null);
            Some(endpoint_port(sp, resolve_port(pod, &target)?))
        })
        .collect()
}

/// One Endpoints subset: (ports, ready addresses, not-ready addresses).
fn subset((ports, ready, not_ready): (Vec<Value>, Vec<Value>, Vec<Value>)) -> Value {
    let mut s = Map::new();
    if !ready.is_empty() {
        s.insert("addresses".into(), json!(ready));
    }
    if !not_ready.is_empty() {
        s.insert("notReadyAddresses".into(), json!(not_ready));
    }
    s.insert("ports".into(), json!(ports));
    Value::Object(s)
}

/// Creates `want`, or patches the `fields` that differ from what is stored.
fn upsert(
    out: &mut Outcome,
    snap: &Snapshot,
    plural: &str,
    ns: &str,
    name: &str,
    want: Value,
    fields: &[&str],
) {
    let r = res(plural);
    match snap.get(r.group, r.plural, ns, name) {
        None => out.push(Action::Create {
            res: r,
            ns: ns.into(),
            object: want,
        }),
        Some(cur) => {
            let empty = json!([]);
            let differs = fields
                .iter()
                .any(|f| cur.get(*f).unwrap_or(&empty) != want.get(*f).unwrap_or(&empty));
            if differs {
                let mut patch = Map::new();
                for f in fields {
                    patch.insert((*f).into(), want.get(*f).cloned().unwrap_or(json!([])));
                }
                out.push(Action::Patch {
                    res: r,
                    ns: ns.into(),
                    name: name.into(),
                    status: false,
                    patch: Value::Object(patch),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": "web"}},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
               "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
    }

    #[test]
    fn ready_and_not_ready_addresses_with_named_ports() {
        let mut snap = Snapshot::default();
        snap.insert("", "services", json!({"metadata": {"name": "web", "namespace": "default", "uid": "s1"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}));
        snap.insert("", "pods", pod("a", "127.0.0.2", true));
        snap.insert("", "pods", pod("b", "127.0.0.3", false));
        let out = EndpointsController.reconcile("default/web", &snap, jiff::Timestamp::now());
        let created: Vec<&Value> = out
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Create { object, .. } => Some(object),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 2);
        let ep = created[0];
        assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "127.0.0.2");
        assert_eq!(ep["subsets"][0]["notReadyAddresses"][0]["ip"], "127.0.0.3");
        assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8080);
        let slice = created[1];
        assert_eq!(slice["metadata"]["labels"][SERVICE_NAME], "web");
        assert_eq!(slice["ports"][0]["name"], "http");
        assert_eq!(slice["endpoints"].as_array().unwrap().len(), 2);
        assert_eq!(slice["endpoints"][1]["conditions"]["ready"], false);
        // Once stored, an unchanged world needs no writes.
        let mut snap2 = snap.clone();
        snap2.insert("", "endpoints", ep.clone());
        snap2.insert("discovery.k8s.io", "endpointslices", slice.clone());
        let out = EndpointsController.reconcile("default/web", &snap2, jiff::Timestamp::now());
        assert!(out.actions.is_empty(), "{:?}", out.actions);
    }
}
