//! A routed node's host side ([`crate::podnet`]): [`set_up`] takes the
//! Node's podCIDR and makes its Wasm part (and the Service range) local,
//! hands the container part to CNI with forwarding and NAT, and brings up
//! the VXLAN device when the backend may use it; [`run`] mirrors every
//! Node (a reflector store, as the proxy mirrors Services) and keeps a
//! route to each peer's block as nodes come, move and go; a clean stop
//! removes the routes, then [`Routed::tear_down`] the rest.

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::sync::watch as signal;
use weft_api::k8s_openapi::api::core::v1::Node;

use super::{AgentConfig, AgentError, POD_CIDR_WAIT, node};
use crate::containerd::ContainerdRuntime;
use crate::podnet::{self, NodeAddress, PeerRoutes, PodNet, wanted_routes};

/// What a routed node changed on its host while it runs, undone on a clean
/// stop: the blocks it made local (its Wasm block, and the Service range if
/// it was given one), its containers' NAT rule and its VXLAN device.
pub(super) struct Routed {
    net: PodNet,
    locals: Vec<ipnet::Ipv4Net>,
    masquerading: bool,
}

impl Routed {
    pub(super) fn net(&self) -> &PodNet {
        &self.net
    }

    /// Best effort: what fails is logged, and the next start corrects it.
    pub(super) async fn tear_down(&self) {
        for local in &self.locals {
            if let Err(e) = self.net.remove_local(*local).await {
                tracing::warn!("{e}");
            }
        }
        if let Err(e) = self.net.vxlan_down().await {
            tracing::warn!("{e}");
        }
        if self.masquerading
            && let Err(e) = podnet::unmasquerade().await
        {
            tracing::warn!("{e}");
        }
    }
}

/// Waits for the Node's podCIDR and sets up the host for it; leaves the
/// Wasm part in `cfg.pod_cidr` and the pods the block holds in
/// `cfg.max_pods`.
pub(super) async fn set_up(
    client: &kube::Client,
    cfg: &mut AgentConfig,
    containerd: Option<&mut ContainerdRuntime>,
) -> Result<Routed, AgentError> {
    cfg.pod_cidr = node::allocated_pod_cidr(client, &cfg.name, POD_CIDR_WAIT).await?;
    let block: ipnet::Ipv4Net = cfg
        .pod_cidr
        .parse()
        .map_err(|_| AgentError::PodCidr(cfg.pod_cidr.clone()))?;
    let mut net = PodNet::connect().await?;
    if cfg.backend != podnet::Backend::HostGw {
        let std::net::IpAddr::V4(node_ip) = cfg.node_ip() else {
            return Err(AgentError::VxlanNeedsIpv4(cfg.node_ip()));
        };
        let mac = net.vxlan_up(node_ip, block, cfg.backend).await?;
        node::publish_vtep_mac(client, &cfg.name, &mac).await?;
    }
    let (containers, wasm) = podnet::split_block(block, containerd.is_some());
    let mut masquerading = false;
    if let (Some(c), Some(half)) = (containerd, containers) {
        // Under an overlay, pods' links leave room for its headers.
        let mtu = (cfg.backend != podnet::Backend::HostGw).then_some(podnet::vxlan::MTU);
        c.set_pod_network(&half.to_string(), mtu);
        podnet::enable_forwarding().map_err(AgentError::Forwarding)?;
        match cfg.cluster_cidr {
            Some(cluster) => {
                podnet::masquerade(half, cluster).await?;
                masquerading = true;
            }
            None => tracing::warn!(
                "no --cluster-cidr: containers' traffic out of the cluster is not masqueraded"
            ),
        }
        tracing::info!(pod_cidr = %half, "container pod IPs come from here");
    }
    cfg.pod_cidr = wasm.to_string();
    let ips = podnet::pod_ips(wasm) + containers.map_or(0, podnet::pod_ips);
    cfg.max_pods = cfg.max_pods.min(ips);
    let locals: Vec<ipnet::Ipv4Net> = std::iter::once(wasm).chain(cfg.service_cidr).collect();
    for local in &locals {
        net.make_local(*local).await?;
    }
    tracing::info!(pod_cidr = %wasm, "Wasm pod IPs come from here, made local");
    Ok(Routed {
        net,
        locals,
        masquerading,
    })
}

/// Routes are checked against the Nodes this often even when none changes,
/// so a route someone removed by hand comes back.
const RESYNC: Duration = Duration::from_secs(10);

fn wanted(me: &str, nodes: &[std::sync::Arc<Node>]) -> PeerRoutes {
    wanted_routes(
        me,
        nodes.iter().map(|n| NodeAddress {
            name: n.metadata.name.as_deref().unwrap_or_default(),
            pod_cidr: n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()),
            internal_ip: n
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                .map(|a| a.address.as_str()),
            vtep_mac: n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::podnet::vxlan::MAC_ANNOTATION))
                .map(String::as_str),
        }),
    )
}

pub(super) async fn run(
    client: kube::Client,
    me: String,
    net: PodNet,
    mut stop: signal::Receiver<bool>,
) {
    let (nodes, writer) = reflector::store::<Node>();
    let events = reflector(
        writer,
        watcher(Api::<Node>::all(client), watcher::Config::default()),
    )
    .default_backoff()
    .map(|_| ());
    let mut events = std::pin::pin!(events);
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = resync.tick() => {}
            e = events.next() => if e.is_none() { break },
        }
        // Take whatever else is already queued: one sync per burst.
        while let Some(Some(())) = events.next().now_or_never() {}
        // Until the first list completes the store is empty: no routes to judge by.
        if nodes.wait_until_ready().now_or_never().is_none() {
            continue;
        }
        if let Err(e) = net.sync_peer_routes(&wanted(&me, &nodes.state())).await {
            tracing::warn!("{e}");
        }
    }
    if let Err(e) = net.sync_peer_routes(&PeerRoutes::new()).await {
        tracing::warn!("removing peer routes: {e}");
    }
}
