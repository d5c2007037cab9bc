//! Endpoint choice for one Service port: round robin or least outstanding
//! requests over two random choices, client-IP affinity, and passive health
//! (an endpoint that refuses a connection sits out for a while).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    /// Power of two choices: the less busy of two random endpoints.
    LeastRequest,
}

/// How long an endpoint that failed to connect is left out.
pub const EJECTION: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Endpoint {
    outstanding: u32,
    ejected_until: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Balancer {
    next: AtomicUsize,
    endpoints: Mutex<HashMap<SocketAddr, Endpoint>>,
    sticky: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
}

/// Counts a request (or connection) against its endpoint while alive.
pub struct InFlight<'a> {
    balancer: &'a Balancer,
    endpoint: SocketAddr,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut eps = self.balancer.endpoints.lock().expect("balancer lock");
        if let Some(e) = eps.get_mut(&self.endpoint) {
            e.outstanding = e.outstanding.saturating_sub(1);
        }
    }
}

impl Balancer {
    /// Picks an endpoint of `all` not in `tried`, or None when none is left.
    /// Ejected endpoints are skipped unless nothing else is left.
    pub fn pick(
        &self,
        all: &[SocketAddr],
        policy: Policy,
        client: IpAddr,
        affinity: Option<Duration>,
        tried: &[SocketAddr],
    ) -> Option<SocketAddr> {
        let now = Instant::now();
        let out = |eps: &HashMap<SocketAddr, Endpoint>, e: &SocketAddr| {
            eps.get(e)
                .and_then(|s| s.ejected_until)
                .is_some_and(|t| t > now)
        };
        // The common case allocates nothing: round robin over the first healthy endpoint.
        if policy == Policy::RoundRobin && affinity.is_none() && tried.is_empty() {
            let eps = self.endpoints.lock().expect("balancer lock");
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            if let Some(e) = (0..all.len())
                .map(|i| all[(start + i) % all.len()])
                .find(|e| !out(&eps, e))
            {
                return Some(e);
            }
        }
        let candidates: Vec<SocketAddr> =
            all.iter().copied().filter(|e| !tried.contains(e)).collect();
        if candidates.is_empty() {
            return None;
        }
        let eps = self.endpoints.lock().expect("balancer lock");
        let healthy: Vec<SocketAddr> = candidates
            .iter()
            .copied()
            .filter(|e| !out(&eps, e))
            .collect();
        let pool = if healthy.is_empty() {
            &candidates
        } else {
            &healthy
        };
        if let Some(ttl) = affinity {
            let mut sticky = self.sticky.lock().expect("affinity lock");
            if let Some((ep, at)) = sticky.get(&client)
                && now.duration_since(*at) < ttl
                && pool.contains(ep)
            {
                let ep = *ep;
                sticky.insert(client, (ep, now));
                return Some(ep);
            }
        }
        let chosen = match policy {
            Policy::RoundRobin => pool[self.next.fetch_add(1, Ordering::Relaxed) % pool.len()],
            Policy::LeastRequest if pool.len() == 1 => pool[0],
            Policy::LeastRequest => {
                let a = rand::random_range(0..pool.len());
                let b = (a + rand::random_range(1..pool.len())) % pool.len();
                let load = |i: usize| eps.get(&pool[i]).map_or(0, |s| s.outstanding);
                if load(b) < load(a) { pool[b] } else { pool[a] }
            }
        };
        drop(eps);
        if affinity.is_some() {
            let mut sticky = self.sticky.lock().expect("affinity lock");
            sticky.retain(|_, (_, at)| now.duration_since(*at) < affinity.unwrap_or_default());
            sticky.insert(client, (chosen, now));
        }
        Some(chosen)
    }

    /// Counts a request against `endpoint` while the guard lives (only
    /// least-request reads the counts, so only it pays for them).
    pub fn start(&self, policy: Policy, endpoint: SocketAddr) -> Option<InFlight<'_>> {
        if policy != Policy::LeastRequest {
            return None;
        }
        let mut eps = self.endpoints.lock().expect("balancer lock");
        eps.entry(endpoint).or_default().outstanding += 1;
        Some(InFlight {
            balancer: self,
            endpoint,
        })
    }

    /// Leaves `endpoint` out for `EJECTION`; true if it was not already out.
    pub fn eject(&self, endpoint: SocketAddr) -> bool {
        let now = Instant::now();
        let mut eps = self.endpoints.lock().expect("balancer lock");
        let e = eps.entry(endpoint).or_default();
        let fresh = e.ejected_until.is_none_or(|t| t <= now);
        e.ejected_until = Some(now + EJECTION);
        fresh
    }

    /// Forgets endpoints no longer in the Service (their counters and ejections).
    pub fn retain(&self, all: &[SocketAddr]) {
        let mut eps = self.endpoints.lock().expect("balancer lock");
        eps.retain(|e, s| all.contains(e) || s.outstanding > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u16) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([127, 10, 0, i as u8], 8080)))
            .collect()
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn round_robin_spreads_evenly_and_skips_ejected() {
        let b = Balancer::default();
        let all = eps(3);
        let mut counts = HashMap::new();
        for _ in 0..300 {
            let e = b.pick(&all, Policy::RoundRobin, CLIENT, None, &[]).unwrap();
            *counts.entry(e).or_insert(0) += 1;
        }
        assert!(counts.values().all(|c| *c == 100), "{counts:?}");
        assert!(b.eject(all[0]));
        assert!(!b.eject(all[0]), "already out");
        for _ in 0..10 {
            assert_ne!(
                b.pick(&all, Policy::RoundRobin, CLIENT, None, &[]),
                Some(all[0])
            );
        }
        // Everything ejected: still try rather than fail outright.
        b.eject(all[1]);
        b.eject(all[2]);
        assert!(
            b.pick(&all, Policy::RoundRobin, CLIENT, None, &[])
                .is_some()
        );
        assert_eq!(b.pick(&all, Policy::RoundRobin, CLIENT, None, &all), None);
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let b = Balancer::default();
        let all = eps(2);
        let _busy: Vec<_> = (0..5)
            .map(|_| b.start(Policy::LeastRequest, all[0]))
            .collect();
        assert!(b.start(Policy::RoundRobin, all[0]).is_none());
        for _ in 0..20 {
            assert_eq!(
                b.pick(&all, Policy::LeastRequest, CLIENT, None, &[]),
                Some(all[1])
            );
        }
    }

    #[test]
    fn client_ip_affinity_sticks() {
        let b = Balancer::default();
        let all = eps(3);
        let ttl = Some(Duration::from_secs(60));
        let first = b.pick(&all, Policy::RoundRobin, CLIENT, ttl, &[]).unwrap();
        for _ in 0..10 {
            assert_eq!(
                b.pick(&all, Policy::RoundRobin, CLIENT, ttl, &[]),
                Some(first)
            );
        }
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert_ne!(
            b.pick(&all, Policy::RoundRobin, other, ttl, &[]),
            Some(first)
        );
    }
}
