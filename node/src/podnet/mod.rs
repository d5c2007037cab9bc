//! The host side of a routed node's pod network (`--pod-network routed`),
//! programmed through netlink.
//!
//! * **Its own block is local.** A Wasm pod is a set of sockets in the
//!   agent, not an interface: one `local` route over the node's podCIDR makes
//!   every address of the block an address of this host (as 127.0.0.0/8
//!   is), so the agent binds each pod's IP without an interface per pod.
//! * **Every peer's block is routed to the peer (host-gw).** For each other
//!   Node with a podCIDR and an InternalIP, a route `podCIDR via InternalIP`,
//!   as flannel's host-gw backend does: pod-to-pod traffic crosses hosts
//!   unencapsulated and un-NATed, so the hosts must share an L2 segment.
//!
//! * **Or through a VXLAN overlay** ([`vxlan`]), for peers that share no
//!   L2 segment: `--backend vxlan`, or `auto` per peer (host-gw when the
//!   peer's InternalIP is on one of this host's subnets).
//!
//! Every route carries Weft's own protocol number ([`PROTO`]), so an agent
//! finds the routes a killed predecessor left and corrects them, and never
//! touches a route it did not make. Needs CAP_NET_ADMIN.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};

/// The routing protocol number Weft's routes carry (`ip route show proto 87`).
pub const PROTO: u8 = 87;
/// The kernel's `local` table (linux/rtnetlink.h), where local routes live.
const RT_TABLE_LOCAL: u8 = 255;

#[derive(Debug, thiserror::Error)]
#[error("pod network: {what}: {source}")]
pub struct PodNetError {
    what: String,
    #[source]
    source: rtnetlink::Error,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("pod network: opening a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error(transparent)]
    Netlink(#[from] PodNetError),
}

pub mod vxlan;

/// A peer: its InternalIP, and its VXLAN device's MAC once it published one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub node_ip: Ipv4Addr,
    pub vtep_mac: Option<[u8; 6]>,
}

/// Peers' blocks and who holds them.
pub type PeerRoutes = BTreeMap<Ipv4Net, Peer>;

/// How packets reach a peer's block (`weft node --backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A route via the peer's InternalIP: one L2 segment, no encapsulation.
    HostGw,
    /// A VXLAN overlay between the nodes' InternalIPs.
    Vxlan,
    /// host-gw to peers on this host's subnets, VXLAN to the others.
    Auto,
}

/// A netlink handle on this host's routing tables.
#[derive(Clone)]
pub struct PodNet {
    handle: rtnetlink::Handle,
    /// The loopback interface's index.
    lo: u32,
    /// The overlay, when the backend may use it.
    vxlan: Option<vxlan::Vxlan>,
}

/// One peer route as the kernel holds it: the next hop, and the VXLAN
/// device's index when it goes through the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hop {
    via: Ipv4Addr,
    overlay: Option<u32>,
}

fn failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PodNetError {
    let what = what.into();
    move |source| PodNetError { what, source }
}

impl PodNet {
    pub async fn connect() -> Result<PodNet, ConnectError> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let lo = handle
            .link()
            .get()
            .match_name("lo".to_string())
            .execute()
            .try_next()
            .await
            .map_err(failed("finding the loopback interface"))?
            .map(|l| l.header.index)
            .unwrap_or(1);
        Ok(PodNet {
            handle,
            lo,
            vxlan: None,
        })
    }

    fn local_route(&self, block: Ipv4Net) -> RouteMessage {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(block.network(), block.prefix_len())
            .output_interface(self.lo)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .protocol(RouteProtocol::Other(PROTO))
            .build();
        route.header.table = RT_TABLE_LOCAL;
        route
    }

    /// Makes every address of `block` local to this host (idempotent).
    pub async fn make_local(&self, block: Ipv4Net) -> Result<(), PodNetError> {
        self.handle
            .route()
            .add(self.local_route(block))
            .replace()
            .execute()
            .await
            .map_err(failed(format!("making {block} local")))
    }

    /// Undoes [`PodNet::make_local`].
    pub async fn remove_local(&self, block: Ipv4Net) -> Result<(), PodNetError> {
        self.handle
            .route()
            .del(self.local_route(block))
            .execute()
            .await
            .map_err(failed(format!("removing the local route of {block}")))
    }

    /// The peer routes Weft has in the main table now.
    async fn hops(&self) -> Result<BTreeMap<Ipv4Net, Hop>, PodNetError> {
        let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(dump)
            .execute()
            .try_collect()
            .await
            .map_err(failed("listing routes"))?;
        let overlay = self.vxlan.as_ref().map(|v| v.index);
        Ok(routes
            .iter()
            .filter(|r| {
                r.header.protocol == RouteProtocol::Other(PROTO)
                    && r.header.table == RouteHeader::RT_TABLE_MAIN
            })
            .filter_map(|r| {
                let mut dst = None;
                let mut via = None;
                let mut oif = None;
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                let block = Ipv4Net::new(dst?, r.header.destination_prefix_length).ok()?;
                let overlay = oif.filter(|i| Some(*i) == overlay);
                Some((block, Hop { via: via?, overlay }))
            })
            .collect())
    }

    /// Makes Weft's peer routes exactly `want`: adds what is missing,
    /// moves what points elsewhere, removes what no Node holds any more.
    /// Overlay peers get their neighbour and forwarding entries first.
    pub async fn sync_peer_routes(&self, want: &PeerRoutes) -> Result<(), PodNetError> {
        let have = self.hops().await?;
        let hops: BTreeMap<Ipv4Net, Hop> = want
            .iter()
            .filter_map(|(block, peer)| Some((*block, hop(self.vxlan.as_ref(), *block, peer)?)))
            .collect();
        for (block, hop) in &have {
            if hops.get(block) != Some(hop) {
                self.handle
                    .route()
                    .del(peer_route(*block, *hop))
                    .execute()
                    .await
                    .map_err(failed(format!("removing the route to {block}")))?;
            }
        }
        for (block, hop) in &hops {
            if let (Some(v), Some(mac)) = (&self.vxlan, want[block].vtep_mac)
                && hop.overlay.is_some()
            {
                v.add_peer(&self.handle, hop.via, mac, want[block].node_ip)
                    .await?;
            }
            if have.get(block) != Some(hop) {
                self.handle
                    .route()
                    .add(peer_route(*block, *hop))
                    .replace()
                    .execute()
                    .await
                    .map_err(failed(format!("routing {block} via {}", hop.via)))?;
            }
        }
        Ok(())
    }
}

/// How this node reaches `peer`'s `block`; None until a VXLAN peer has
/// published its device's MAC.
fn hop(vxlan: Option<&vxlan::Vxlan>, block: Ipv4Net, peer: &Peer) -> Option<Hop> {
    let direct = Hop {
        via: peer.node_ip,
        overlay: None,
    };
    let Some(v) = vxlan else {
        return Some(direct);
    };
    if v.backend == Backend::Auto && v.on_link(peer.node_ip) {
        return Some(direct);
    }
    peer.vtep_mac?;
    Some(Hop {
        via: block.network(),
        overlay: Some(v.index),
    })
}

fn peer_route(block: Ipv4Net, hop: Hop) -> RouteMessage {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(block.network(), block.prefix_len())
        .gateway(hop.via)
        .protocol(RouteProtocol::Other(PROTO));
    match hop.overlay {
        // The peer's device address is on no subnet of ours: `onlink`.
        Some(dev) => route.output_interface(dev).onlink().build(),
        None => route.build(),
    }
}

/// How a routed node shares its podCIDR between runtimes: with containers,
/// the lower half goes to the CNI bridge (container pods) and the upper
/// half is made local (Wasm pods); without, Wasm pods get all of it. Both
/// halves are one block to the peers, which route it whole to this node.
pub fn split_block(block: Ipv4Net, containers: bool) -> (Option<Ipv4Net>, Ipv4Net) {
    if !containers {
        return (None, block);
    }
    let mut halves = block.subnets(block.prefix_len() + 1).into_iter().flatten();
    match (halves.next(), halves.next()) {
        (Some(low), Some(high)) => (Some(low), high),
        // A /32 cannot be split: Wasm keeps it (and IPAM refuses it anyway).
        _ => (None, block),
    }
}

/// Pod IPs one runtime's part of a block holds: all but the network
/// address, the gateway or node address (.1) and the broadcast address.
pub fn pod_ips(part: Ipv4Net) -> u32 {
    (1u32 << (32 - part.prefix_len())).saturating_sub(3)
}

/// Lets this host forward between the container bridge and its peers, as
/// kubelet's network plugins require (`net.ipv4.ip_forward`, per namespace).
pub fn enable_forwarding() -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
}

/// The nftables table a routed node keeps its NAT rule in (`nft list table
/// ip weft`): replaced whole, so a restarted agent never doubles a rule.
const NAT_TABLE: &str = "weft";

#[derive(Debug, thiserror::Error)]
#[error("pod network: nft: {0}")]
pub struct NatError(String);

/// Masquerades what container pods (`pods`) send outside `cluster` (pod
/// blocks, reached un-NATed), as flannel and kubenet do: the world
/// answers the host's address, which it can route to. Wasm pods need no
/// rule: the agent's own sockets already leave from the host's address.
pub async fn masquerade(pods: Ipv4Net, cluster: Ipv4Net) -> Result<(), NatError> {
    nft(&format!(
        "table ip {NAT_TABLE}\ndelete table ip {NAT_TABLE}\ntable ip {NAT_TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {pods} ip daddr != {cluster} masquerade\n  }}\n}}\n"
    ))
    .await
}

/// Undoes [`masquerade`].
pub async fn unmasquerade() -> Result<(), NatError> {
    nft(&format!(
        "table ip {NAT_TABLE}\ndelete table ip {NAT_TABLE}\n"
    ))
    .await
}

/// `nft -f -`: one atomic transaction (the nft binary, as kube-proxy's
/// nftables mode drives it).
async fn nft(script: &str) -> Result<(), NatError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| NatError(format!("running nft (Debian's nftables): {e}")))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(script.as_bytes())
        .await
        .map_err(|e| NatError(e.to_string()))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NatError(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NatError(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// What every Node says about itself: its name, podCIDR, InternalIP and
/// VXLAN device MAC ([`vxlan::MAC_ANNOTATION`]).
pub struct NodeAddress<'a> {
    pub name: &'a str,
    pub pod_cidr: Option<&'a str>,
    pub internal_ip: Option<&'a str>,
    pub vtep_mac: Option<&'a str>,
}

/// The routes this node (`me`) wants: every other Node's block via its
/// InternalIP. A Node without either, or with unparsable ones, gets none.
pub fn wanted_routes<'a>(me: &str, nodes: impl IntoIterator<Item = NodeAddress<'a>>) -> PeerRoutes {
    nodes
        .into_iter()
        .filter(|n| n.name != me)
        .filter_map(|n| {
            let block: Ipv4Net = n.pod_cidr?.parse().ok()?;
            let node_ip: Ipv4Addr = n.internal_ip?.parse().ok()?;
            let vtep_mac = n.vtep_mac.and_then(vxlan::parse_mac);
            Some((block.trunc(), Peer { node_ip, vtep_mac }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_pick_a_hop_per_peer() {
        let block: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        let near = Peer {
            node_ip: Ipv4Addr::new(10, 0, 0, 2),
            vtep_mac: Some([2; 6]),
        };
        let far = Peer {
            node_ip: Ipv4Addr::new(192, 168, 9, 2),
            ..near
        };
        let direct = |p: &Peer| {
            Some(Hop {
                via: p.node_ip,
                overlay: None,
            })
        };
        let overlay = Some(Hop {
            via: Ipv4Addr::new(10, 244, 2, 0),
            overlay: Some(7),
        });
        let dev = |backend| vxlan::Vxlan {
            index: 7,
            mac: [1; 6],
            backend,
            subnets: vec!["10.0.0.0/24".parse().unwrap()],
        };
        assert_eq!(hop(None, block, &far), direct(&far), "host-gw");
        let v = dev(Backend::Vxlan);
        assert_eq!(hop(Some(&v), block, &near), overlay, "vxlan");
        let a = dev(Backend::Auto);
        assert_eq!(
            hop(Some(&a), block, &near),
            direct(&near),
            "auto, same subnet"
        );
        assert_eq!(hop(Some(&a), block, &far), overlay, "auto, elsewhere");
        let unpublished = Peer {
            vtep_mac: None,
            ..far
        };
        assert_eq!(
            hop(Some(&a), block, &unpublished),
            None,
            "no MAC yet: no route"
        );
    }

    #[test]
    fn a_block_is_halved_only_for_nodes_with_containers() {
        let block: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(split_block(block, false), (None, block));
        assert_eq!(
            split_block(block, true),
            (
                Some("10.244.3.0/25".parse().unwrap()),
                "10.244.3.128/25".parse().unwrap()
            )
        );
        assert_eq!(pod_ips("10.244.3.0/25".parse().unwrap()), 125);
        assert_eq!(pod_ips("10.244.3.0/31".parse().unwrap()), 0);
    }

    #[test]
    fn peers_blocks_route_via_their_internal_ips_and_this_node_is_left_out() {
        let nodes = [
            NodeAddress {
                name: "a",
                pod_cidr: Some("10.244.0.0/24"),
                internal_ip: Some("10.0.0.1"),
                vtep_mac: None,
            },
            NodeAddress {
                name: "b",
                pod_cidr: Some("10.244.1.0/24"),
                internal_ip: Some("10.0.0.2"),
                vtep_mac: Some("0a:00:00:00:00:02"),
            },
            NodeAddress {
                name: "c",
                pod_cidr: None,
                internal_ip: Some("10.0.0.3"),
                vtep_mac: None,
            },
            NodeAddress {
                name: "d",
                pod_cidr: Some("10.244.3.0/24"),
                internal_ip: Some("not-an-ip"),
                vtep_mac: None,
            },
        ];
        let want = wanted_routes("a", nodes);
        assert_eq!(
            want,
            PeerRoutes::from([(
                "10.244.1.0/24".parse().unwrap(),
                Peer {
                    node_ip: Ipv4Addr::new(10, 0, 0, 2),
                    vtep_mac: Some([10, 0, 0, 0, 0, 2])
                }
            )])
        );
    }
}
