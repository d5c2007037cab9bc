//! The proxy's metrics, per Service port and endpoint, served on the agent's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    /// `namespace/name:port`.
    pub service: String,
    /// `ip:port`, empty when no endpoint was available.
    pub endpoint: String,
}

impl Labels {
    pub fn new(service: &str, endpoint: Option<std::net::SocketAddr>) -> Self {
        Labels {
            service: service.to_string(),
            endpoint: endpoint.map(|e| e.to_string()).unwrap_or_default(),
        }
    }
}

pub struct ProxyMetrics {
    /// HTTP requests, and TCP connections on the L4 path.
    pub requests: Family<Labels, Counter>,
    pub latency: Family<Labels, Histogram>,
    pub active: Family<Labels, Gauge>,
    pub ejections: Family<Labels, Counter>,
    registry: Registry,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        let requests = Family::<Labels, Counter>::default();
        // 50 µs to ~13 s: the in-process path answers in tens of microseconds.
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.00005, 2.0, 19))
        });
        let active = Family::<Labels, Gauge>::default();
        let ejections = Family::<Labels, Counter>::default();
        let mut registry = Registry::with_prefix("weft_proxy");
        registry.register(
            "requests",
            "HTTP requests and TCP connections routed, by Service port and endpoint",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to the response head (HTTP) or the connection's whole life (TCP)",
            latency.clone(),
        );
        registry.register(
            "active_connections",
            "Open connections and in-flight requests, by endpoint",
            active.clone(),
        );
        registry.register(
            "ejections",
            "Times an endpoint was left out after a failed connection",
            ejections.clone(),
        );
        ProxyMetrics {
            requests,
            latency,
            active,
            ejections,
            registry,
        }
    }
}

/// One endpoint's metric handles, resolved when the table is built so the
/// request path does no label lookups.
#[derive(Clone, Debug)]
pub struct EndpointMetrics {
    pub requests: Counter,
    pub latency: Histogram,
    pub active: Gauge,
    pub ejections: Counter,
}

impl ProxyMetrics {
    pub fn endpoint(
        &self,
        service: &str,
        endpoint: Option<std::net::SocketAddr>,
    ) -> EndpointMetrics {
        let l = Labels::new(service, endpoint);
        EndpointMetrics {
            requests: self.requests.get_or_create(&l).clone(),
            latency: self.latency.get_or_create(&l).clone(),
            active: self.active.get_or_create(&l).clone(),
            ejections: self.ejections.get_or_create(&l).clone(),
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
