//! The VXLAN backend, as flannel's: one kernel VXLAN device per node
//! (`weft.vxlan`, VNI 1, UDP 8472, no learning) holding its block's network
//! address, its MAC published on the Node ([`MAC_ANNOTATION`]). For each
//! overlay peer the agent programs three static entries:
//!
//! * a route `peerBlock via peerBlock.0 dev weft.vxlan onlink`;
//! * a neighbour `peerBlock.0 lladdr <peer MAC>` (no ARP across the overlay);
//! * a forwarding entry `<peer MAC> dst <peer InternalIP>` (where to send the
//!   encapsulated frame).
//!
//! The device goes on a clean stop, and its entries with it.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::NeighbourFlags;
use rtnetlink::{LinkUnspec, LinkVxlan};

use super::{Backend, PodNet, PodNetError, failed};

/// The device's name.
pub const DEVICE: &str = "weft.vxlan";
/// The Node annotation that carries the device's MAC (flannel keeps it in
/// `flannel.alpha.coreos.com/backend-data`).
pub const MAC_ANNOTATION: &str = "weft.dev/vtep-mac";
const VNI: u32 = 1;
/// The Linux default port, as flannel uses (IANA's is 4789).
const PORT: u16 = 8472;
/// 50 bytes of outer headers under a 1500-byte link.
pub const MTU: u32 = 1450;

/// This node's VXLAN device.
#[derive(Clone, Debug)]
pub struct Vxlan {
    pub index: u32,
    pub mac: [u8; 6],
    pub backend: Backend,
    /// This host's own subnets (for `auto`: peers on them go host-gw).
    pub(super) subnets: Vec<Ipv4Net>,
}

impl Vxlan {
    pub fn on_link(&self, peer: Ipv4Addr) -> bool {
        self.subnets.iter().any(|s| s.contains(&peer))
    }

    /// The neighbour and forwarding entries for one overlay peer.
    pub(super) async fn add_peer(
        &self,
        handle: &rtnetlink::Handle,
        vtep: Ipv4Addr,
        mac: [u8; 6],
        node_ip: Ipv4Addr,
    ) -> Result<(), PodNetError> {
        handle
            .neighbours()
            .add(self.index, IpAddr::V4(vtep))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(failed(format!("neighbour {vtep} on {DEVICE}")))?;
        handle
            .neighbours()
            .add_bridge(self.index, &mac)
            .destination(IpAddr::V4(node_ip))
            .flags(NeighbourFlags::Own)
            .replace()
            .execute()
            .await
            .map_err(failed(format!("forwarding entry to {node_ip} on {DEVICE}")))
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

impl PodNet {
    /// Brings up this node's VXLAN device (reusing one a killed agent left)
    /// with `block`'s network address, for `backend` (not host-gw).
    pub async fn vxlan_up(
        &mut self,
        node_ip: Ipv4Addr,
        block: Ipv4Net,
        backend: Backend,
    ) -> Result<[u8; 6], PodNetError> {
        if self.link(DEVICE).await?.is_none() {
            self.handle
                .link()
                .add(
                    LinkVxlan::new(DEVICE, VNI)
                        .port(PORT)
                        .local(node_ip)
                        .learning(false)
                        .mtu(MTU)
                        .build(),
                )
                .execute()
                .await
                .map_err(failed(format!("creating {DEVICE}")))?;
        }
        let (index, mac) = self
            .link(DEVICE)
            .await?
            .ok_or_else(|| failed(format!("finding {DEVICE}"))(rtnetlink::Error::RequestFailed))?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(failed(format!("bringing {DEVICE} up")))?;
        self.handle
            .address()
            .add(index, IpAddr::V4(block.network()), 32)
            .replace()
            .execute()
            .await
            .map_err(failed(format!("addressing {DEVICE}")))?;
        let subnets = self.subnets(index).await?;
        self.vxlan = Some(Vxlan {
            index,
            mac,
            backend,
            subnets,
        });
        Ok(mac)
    }

    /// Removes the VXLAN device, and every overlay route and entry with it.
    pub async fn vxlan_down(&self) -> Result<(), PodNetError> {
        match &self.vxlan {
            Some(v) => self
                .handle
                .link()
                .del(v.index)
                .execute()
                .await
                .map_err(failed(format!("removing {DEVICE}"))),
            None => Ok(()),
        }
    }

    /// A link's index and MAC, by name.
    async fn link(&self, name: &str) -> Result<Option<(u32, [u8; 6])>, PodNetError> {
        let found = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await;
        let link = match found {
            Ok(l) => l,
            // No such device.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => None,
            Err(e) => return Err(failed(format!("looking up {name}"))(e)),
        };
        Ok(link.map(|l| {
            let mac = l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Address(m) => m.clone().try_into().ok(),
                    _ => None,
                })
                .unwrap_or_default();
            (l.header.index, mac)
        }))
    }

    /// The IPv4 subnets of this host's addresses, but loopback's and the
    /// overlay's own.
    async fn subnets(&self, overlay: u32) -> Result<Vec<Ipv4Net>, PodNetError> {
        let all: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(failed("listing addresses"))?;
        Ok(all
            .iter()
            .filter(|a| a.header.index != self.lo && a.header.index != overlay)
            .filter_map(|a| {
                a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(IpAddr::V4(ip)) => {
                        Ipv4Net::new(*ip, a.header.prefix_len)
                            .ok()
                            .map(|n| n.trunc())
                    }
                    _ => None,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_bad_ones_are_none() {
        let mac = [0x0a, 0x1b, 0, 0xff, 2, 3];
        assert_eq!(format_mac(&mac), "0a:1b:00:ff:02:03");
        assert_eq!(parse_mac(&format_mac(&mac)), Some(mac));
        assert_eq!(parse_mac("0a:1b:00:ff:02"), None);
        assert_eq!(parse_mac("zz:1b:00:ff:02:03"), None);
    }
}
