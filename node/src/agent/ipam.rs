//! Pod IPs from the node's range.

use std::collections::HashSet;
use std::net::Ipv4Addr;

/// Hands out pod IPs from the node's range.
pub struct IpPool {
    base: u32,
    size: u32,
    used: HashSet<u32>,
}

impl IpPool {
    pub fn parse(cidr: &str) -> Option<IpPool> {
        let (ip, len) = cidr.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let len: u32 = len.parse().ok().filter(|l| (8..=30).contains(l))?;
        let mask = u32::MAX << (32 - len);
        Some(IpPool {
            base: u32::from(ip) & mask,
            size: 1 << (32 - len),
            used: HashSet::new(),
        })
    }

    /// `want` if it is free and in range (a pod keeping its IP across agent restarts), else the next free one.
    pub fn take(&mut self, want: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(w) = want.map(u32::from)
            && w > self.base + 1
            && w < self.base + self.size - 1
            && self.used.insert(w)
        {
            return Some(Ipv4Addr::from(w));
        }
        // .0 is the network and .1 the node itself.
        let free = (2..self.size - 1)
            .map(|o| self.base + o)
            .find(|a| !self.used.contains(a))?;
        self.used.insert(free);
        Some(Ipv4Addr::from(free))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_pool_allocates_reuses_and_releases() {
        let mut p = IpPool::parse("127.10.0.0/29").unwrap();
        let a = p.take(None).unwrap();
        assert_eq!(a, Ipv4Addr::new(127, 10, 0, 2));
        assert_eq!(
            p.take(Some(Ipv4Addr::new(127, 10, 0, 5))).unwrap(),
            Ipv4Addr::new(127, 10, 0, 5),
            "a restarted pod keeps its IP"
        );
        assert_eq!(
            p.take(Some(a)).unwrap(),
            Ipv4Addr::new(127, 10, 0, 3),
            "a taken IP is not handed out twice"
        );
        assert_eq!(p.take(None).unwrap(), Ipv4Addr::new(127, 10, 0, 4));
        assert_eq!(p.take(None).unwrap(), Ipv4Addr::new(127, 10, 0, 6));
        assert_eq!(p.take(None), None, "/29 holds .2 to .6");
        p.release(a);
        assert_eq!(p.take(None), Some(a));
        assert!(IpPool::parse("10.0.0.0/33").is_none());
        assert!(IpPool::parse("nonsense").is_none());
    }
}
