//! A container pod's `/etc/resolv.conf`, by kubelet's rules for
//! `dnsPolicy` and `dnsConfig`:
//!
//! * `ClusterFirst` (the default): the cluster DNS server, the search path
//!   `<ns>.svc.<domain> svc.<domain> <domain>` then the host's, `ndots:5`.
//!   With `hostNetwork` it acts as `Default`, unless the policy is
//!   `ClusterFirstWithHostNet`; with no cluster DNS known, as `Default` too.
//! * `Default`: the host's resolv.conf.
//! * `None`: `dnsConfig` alone.
//!
//! `dnsConfig` then adds nameservers and search domains after the policy's
//! (at most 3 and 32, duplicates dropped) and overrides options by name.

use std::net::IpAddr;

use weft_api::k8s_openapi::api::core::v1::Pod;

/// The cluster's DNS service, as kubelet's `--cluster-dns` and `--cluster-domain`.
#[derive(Debug, Clone)]
pub struct ClusterDns {
    pub server: Option<IpAddr>,
    pub domain: String,
}

#[derive(Default)]
struct Conf {
    nameservers: Vec<String>,
    searches: Vec<String>,
    /// (name, value) in order; a later one with the same name replaces.
    options: Vec<(String, Option<String>)>,
}

impl Conf {
    fn parse(text: &str) -> Conf {
        let mut c = Conf::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => c.nameservers.extend(words.next().map(String::from)),
                Some("search" | "domain") => c.searches.extend(words.map(String::from)),
                Some("options") => {
                    for o in words {
                        c.option(o);
                    }
                }
                _ => {}
            }
        }
        c
    }

    fn option(&mut self, o: &str) {
        let (name, value) = match o.split_once(':') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (o.to_string(), None),
        };
        self.options.retain(|(n, _)| *n != name);
        self.options.push((name, value));
    }

    fn render(mut self) -> String {
        dedupe(&mut self.nameservers);
        self.nameservers.truncate(3);
        dedupe(&mut self.searches);
        self.searches.truncate(32);
        let mut out = String::new();
        for n in &self.nameservers {
            out.push_str(&format!("nameserver {n}\n"));
        }
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            let opts: Vec<String> = self
                .options
                .iter()
                .map(|(n, v)| match v {
                    Some(v) => format!("{n}:{v}"),
                    None => n.clone(),
                })
                .collect();
            out.push_str(&format!("options {}\n", opts.join(" ")));
        }
        out
    }
}

fn dedupe(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

/// The resolv.conf for `pod`, given the cluster DNS and the host's resolv.conf.
pub fn resolv_conf(pod: &Pod, cluster: &ClusterDns, host: &str) -> String {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut conf = match (policy, cluster.server) {
        ("None", _) => Conf::default(),
        ("ClusterFirst", Some(server)) if !host_network => cluster_first(ns, server, cluster, host),
        ("ClusterFirstWithHostNet", Some(server)) => cluster_first(ns, server, cluster, host),
        _ => Conf::parse(host),
    };
    if let Some(dns) = spec.and_then(|s| s.dns_config.as_ref()) {
        conf.nameservers
            .extend(dns.nameservers.iter().flatten().cloned());
        conf.searches.extend(dns.searches.iter().flatten().cloned());
        for o in dns.options.iter().flatten() {
            let name = o.name.clone().unwrap_or_default();
            match &o.value {
                Some(v) => conf.option(&format!("{name}:{v}")),
                None => conf.option(&name),
            }
        }
    }
    conf.render()
}

fn cluster_first(ns: &str, server: IpAddr, cluster: &ClusterDns, host: &str) -> Conf {
    let d = &cluster.domain;
    let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
    searches.extend(Conf::parse(host).searches);
    let mut conf = Conf {
        nameservers: vec![server.to_string()],
        searches,
        options: Vec::new(),
    };
    conf.option("ndots:5");
    conf
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOST: &str = "# from DHCP\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n";

    fn cluster() -> ClusterDns {
        ClusterDns {
            server: Some("10.96.0.10".parse().unwrap()),
            domain: "cluster.local".into(),
        }
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn cluster_first_is_kubelets() {
        let got = resolv_conf(&pod(json!({"containers": []})), &cluster(), HOST);
        assert_eq!(
            got,
            "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:5\n"
        );
    }

    #[test]
    fn host_network_default_and_no_cluster_dns_use_the_hosts() {
        let host_conf = "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n";
        let hostnet = pod(json!({"containers": [], "hostNetwork": true}));
        assert_eq!(resolv_conf(&hostnet, &cluster(), HOST), host_conf);
        let with_host_net = pod(
            json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
        );
        assert!(
            resolv_conf(&with_host_net, &cluster(), HOST).starts_with("nameserver 10.96.0.10\n")
        );
        let default = pod(json!({"containers": [], "dnsPolicy": "Default"}));
        assert_eq!(resolv_conf(&default, &cluster(), HOST), host_conf);
        let unknown = ClusterDns {
            server: None,
            domain: "cluster.local".into(),
        };
        assert_eq!(
            resolv_conf(&pod(json!({"containers": []})), &unknown, HOST),
            host_conf
        );
    }

    #[test]
    fn dns_config_adds_and_overrides() {
        let none = pod(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.1.1.1"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}}));
        assert_eq!(
            resolv_conf(&none, &cluster(), HOST),
            "nameserver 1.1.1.1\nsearch a.example\noptions ndots:2 rotate\n"
        );
        let merged = pod(json!({"containers": [], "dnsConfig": {
            "nameservers": ["10.96.0.10", "1.1.1.1", "8.8.8.8", "9.9.9.9"], "options": [{"name": "ndots", "value": "1"}]}}));
        let got = resolv_conf(&merged, &cluster(), HOST);
        assert!(
            got.starts_with(
                "nameserver 10.96.0.10\nnameserver 1.1.1.1\nnameserver 8.8.8.8\nsearch "
            ),
            "{got}"
        );
        assert!(got.ends_with("options ndots:1\n"), "{got}");
    }
}
