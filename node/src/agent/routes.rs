//! A routed node's peer routes (host-gw): it mirrors every Node (a
//! reflector store, as the proxy mirrors Services) and keeps a route to
//! each peer's podCIDR via the peer's InternalIP, as nodes come, move and
//! go; on a clean stop it removes them ([`crate::podnet`]).

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::sync::watch as signal;
use weft_api::k8s_openapi::api::core::v1::Node;

use crate::podnet::{NodeAddress, PeerRoutes, PodNet, wanted_routes};

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
