//! A Wasm guest's outgoing HTTP: calls to a Service (by name or ClusterIP)
//! go through the proxy, with no DNS inside Wasm and, for this node's Wasm
//! endpoints, no socket at all. Everything else meets the pod's allow-list.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http_body_util::BodyExt;
use weft_wasm_host::{AllowList, IoFuture, OutgoingHttp, SendFuture, WasiBody};

use super::Proxy;
use super::table::PortRoute;

/// The cluster domain Service names live under.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

pub struct ClusterEgress {
    proxy: Arc<Proxy>,
    namespace: String,
    /// The pod's IP: the client address for session affinity.
    client: IpAddr,
    external: AllowList,
}

impl ClusterEgress {
    pub fn new(proxy: Arc<Proxy>, namespace: String, client: IpAddr, external: AllowList) -> Self {
        ClusterEgress {
            proxy,
            namespace,
            client,
            external,
        }
    }

    /// The Service port a URI names: `svc`, `svc.ns`, `svc.ns.svc`,
    /// `svc.ns.svc.cluster.local` or a ClusterIP; port 80 unless given.
    fn route(&self, uri: &hyper::Uri) -> Option<Arc<PortRoute>> {
        if uri.scheme_str().is_some_and(|s| s != "http") {
            return None;
        }
        let host = uri.host()?.trim_end_matches('.').to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(80);
        let table = self.proxy.table();
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            let (ns, name) = table.by_ip.get(&ip)?;
            return table.route(ns, name, port).cloned();
        }
        let (name, ns) = service_name(&host, &self.namespace)?;
        table.route(&ns, &name, port).cloned()
    }
}

/// (service, namespace) of an in-cluster host name, relative to `namespace`.
pub fn service_name(host: &str, namespace: &str) -> Option<(String, String)> {
    let host = host
        .strip_suffix(&format!(".{CLUSTER_DOMAIN}"))
        .unwrap_or(host);
    let host = host.strip_suffix(".svc").unwrap_or(host);
    match host.split('.').collect::<Vec<_>>().as_slice() {
        [svc] => Some((svc.to_string(), namespace.to_string())),
        [svc, ns] => Some((svc.to_string(), ns.to_string())),
        _ => None,
    }
}

impl OutgoingHttp for ClusterEgress {
    fn send(
        &self,
        request: hyper::Request<WasiBody>,
        options: Option<weft_wasm_host::RequestOptions>,
    ) -> SendFuture {
        let Some(route) = self.route(request.uri()) else {
            return self.external.send(request, options);
        };
        let proxy = self.proxy.clone();
        let client = self.client;
        Box::new(async move {
            let resp = proxy.route_request(&route, client, request).await;
            let resp = resp.map(|b| {
                b.map_err(|e| weft_wasm_host::HttpError::InternalError(Some(e.to_string())))
                    .boxed_unsync()
            });
            Ok((resp, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_resolve_relative_to_the_pod_namespace() {
        let n = |h: &str| service_name(h, "apps");
        assert_eq!(n("hello"), Some(("hello".into(), "apps".into())));
        assert_eq!(n("hello.web"), Some(("hello".into(), "web".into())));
        assert_eq!(n("hello.web.svc"), Some(("hello".into(), "web".into())));
        assert_eq!(
            n("hello.web.svc.cluster.local"),
            Some(("hello".into(), "web".into()))
        );
        assert_eq!(n("example.com.evil.org"), None);
    }
}
