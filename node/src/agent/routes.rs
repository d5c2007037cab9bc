//! A routed node's peer routes (host-gw): it watches every Node and keeps a
//! route to each peer's podCIDR via the peer's InternalIP, as nodes come,
//! move and go; on a clean stop it removes them ([`crate::podnet`]).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch as signal;
use weft_api::k8s_openapi::api::core::v1::Node;

use crate::podnet::{NodeAddress, PeerRoutes, PodNet, wanted_routes};

/// Routes are checked against the Nodes this often even when none changes,
/// so a route someone removed by hand comes back.
const RESYNC: Duration = Duration::from_secs(10);

fn wanted(me: &str, nodes: &BTreeMap<String, Node>) -> PeerRoutes {
    wanted_routes(
        me,
        nodes.iter().map(|(name, n)| NodeAddress {
            name,
            pod_cidr: n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()),
            internal_ip: n
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                .map(|a| a.address.as_str()),
        }),
    )
}

pub(super) async fn run(
    client: kube::Client,
    me: String,
    net: PodNet,
    mut stop: signal::Receiver<bool>,
) {
    let mut events = watcher(Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, Node>> = None;
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        let changed = tokio::select! {
            _ = stop.changed() => break,
            _ = resync.tick() => true,
            ev = events.try_next() => match ev {
                Ok(Some(watcher::Event::Init)) => {
                    listing = Some(BTreeMap::new());
                    false
                }
                Ok(Some(watcher::Event::InitApply(n))) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    listing.get_or_insert_with(BTreeMap::new).insert(name, n);
                    false
                }
                Ok(Some(watcher::Event::InitDone)) => {
                    nodes = listing.take().unwrap_or_default();
                    true
                }
                Ok(Some(watcher::Event::Apply(n))) => {
                    nodes.insert(n.metadata.name.clone().unwrap_or_default(), n);
                    true
                }
                Ok(Some(watcher::Event::Delete(n))) => {
                    nodes.remove(n.metadata.name.as_deref().unwrap_or_default());
                    true
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("watching nodes for routes: {e}");
                    false
                }
            },
        };
        if changed && let Err(e) = net.sync_peer_routes(&wanted(&me, &nodes)).await {
            tracing::warn!("{e}");
        }
    }
    if let Err(e) = net.sync_peer_routes(&PeerRoutes::new()).await {
        tracing::warn!("removing peer routes: {e}");
    }
}
