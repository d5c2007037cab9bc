//! Cluster DNS on every node (CoreDNS's kubernetes plugin, in small), built
//! on hickory: `<svc>.<ns>.svc.cluster.local` answers with the ClusterIP (a
//! headless Service's ready pod IPs), SRV records name its ports, and every
//! other name goes to the host's resolver (resolv.conf and /etc/hosts).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_server::ServerFuture;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};

use super::Proxy;
use super::egress::CLUSTER_DOMAIN;
use super::table::Table;

/// Cluster answers change with the Services; clients should not keep them long.
const TTL: u32 = 5;

/// What the cluster zone says of a name.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Records(Vec<Record>),
    NxDomain,
    /// Not a cluster name: ask the host's resolver.
    Forward,
}

/// Answers a query from the table alone.
pub fn answer(table: &Table, name: &Name, qtype: RecordType) -> Answer {
    let lower = name.to_lowercase().to_ascii();
    let fqdn = lower.trim_end_matches('.');
    let Some(rest) = fqdn.strip_suffix(&format!(".svc.{CLUSTER_DOMAIN}")) else {
        return if fqdn == CLUSTER_DOMAIN || fqdn.ends_with(&format!(".{CLUSTER_DOMAIN}")) {
            Answer::NxDomain
        } else {
            Answer::Forward
        };
    };
    let labels: Vec<&str> = rest.split('.').collect();
    let (port, proto, svc, ns) = match labels.as_slice() {
        [svc, ns] => (None, None, *svc, *ns),
        [port, proto, svc, ns] if port.starts_with('_') && proto.starts_with('_') => {
            (Some(&port[1..]), Some(&proto[1..]), *svc, *ns)
        }
        _ => return Answer::NxDomain,
    };
    let Some(entry) = table.services.get(&(ns.to_string(), svc.to_string())) else {
        return Answer::NxDomain;
    };
    let mut records = Vec::new();
    match qtype {
        RecordType::A if port.is_none() => {
            let ips = match entry.cluster_ip {
                Some(ip) => vec![ip],
                None => entry.endpoint_ips.clone(),
            };
            for ip in ips {
                records.push(Record::from_rdata(name.clone(), TTL, RData::A(A(ip))));
            }
        }
        RecordType::SRV => {
            let target = Name::from_ascii(format!("{svc}.{ns}.svc.{CLUSTER_DOMAIN}."));
            for (pname, pnum, pproto) in &entry.ports {
                let wanted = port.is_none_or(|p| p == pname)
                    && proto.is_none_or(|p| p.eq_ignore_ascii_case(pproto));
                if let (true, Ok(target)) = (wanted && !pname.is_empty(), &target) {
                    let srv = SRV::new(0, 100, *pnum, target.clone());
                    records.push(Record::from_rdata(name.clone(), TTL, RData::SRV(srv)));
                }
            }
            if records.is_empty() && port.is_some() {
                return Answer::NxDomain;
            }
        }
        _ if port.is_some() => return Answer::NxDomain,
        // The name exists but has no records of this type (NODATA).
        _ => {}
    }
    Answer::Records(records)
}

struct Handler {
    proxy: Arc<Proxy>,
    upstream: Option<TokioResolver>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(true);
        let builder = MessageResponseBuilder::from_message_request(request);
        let Ok(info) = request.request_info() else {
            header.set_response_code(ResponseCode::FormErr);
            return send(&mut response, builder, header, &[]).await;
        };
        let name = Name::from(info.query.name());
        let qtype = info.query.query_type();
        let records = match answer(&self.proxy.table(), &name, qtype) {
            Answer::Records(r) => {
                header.set_authoritative(true);
                r
            }
            Answer::NxDomain => {
                header.set_authoritative(true);
                header.set_response_code(ResponseCode::NXDomain);
                Vec::new()
            }
            Answer::Forward => match &self.upstream {
                None => {
                    header.set_response_code(ResponseCode::ServFail);
                    Vec::new()
                }
                Some(upstream) => match upstream.lookup(name, qtype).await {
                    Ok(lookup) => lookup.records().to_vec(),
                    Err(e) if e.is_nx_domain() => {
                        header.set_response_code(ResponseCode::NXDomain);
                        Vec::new()
                    }
                    Err(e) if e.is_no_records_found() => Vec::new(),
                    Err(_) => {
                        header.set_response_code(ResponseCode::ServFail);
                        Vec::new()
                    }
                },
            },
        };
        send(&mut response, builder, header, &records).await
    }
}

async fn send<R: ResponseHandler>(
    response: &mut R,
    builder: MessageResponseBuilder<'_>,
    header: Header,
    records: &[Record],
) -> ResponseInfo {
    let msg = builder.build(header, records.iter(), [], [], []);
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!("DNS response not sent: {e}");
            let mut h = Header::new();
            h.set_response_code(ResponseCode::ServFail);
            h.into()
        }
    }
}

/// Serves cluster DNS on `addr` (UDP and TCP, shared with other agents on the host).
pub fn serve(addr: SocketAddr, proxy: Arc<Proxy>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let udp = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    udp.set_reuse_address(true)?;
    udp.set_reuse_port(true)?;
    udp.set_nonblocking(true)?;
    udp.bind(&addr.into())?;
    let udp = tokio::net::UdpSocket::from_std(udp.into())?;
    let tcp = super::listen(addr)?;
    let upstream = match hickory_resolver::Resolver::builder_tokio() {
        Ok(b) => Some(b.build()),
        Err(e) => {
            tracing::warn!("cluster DNS: no host resolver ({e}); other names get SERVFAIL");
            None
        }
    };
    let mut server = ServerFuture::new(Handler { proxy, upstream });
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5));
    Ok(tokio::spawn(async move {
        let _ = server.block_until_done().await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::table::ServiceEntry;
    use std::net::Ipv4Addr;

    fn table() -> Table {
        let mut t = Table::default();
        t.services.insert(
            ("default".into(), "web".into()),
            ServiceEntry {
                cluster_ip: Some(Ipv4Addr::new(127, 96, 0, 20)),
                ports: vec![("http".into(), 80, "TCP".into())],
                ..ServiceEntry::default()
            },
        );
        t.services.insert(
            ("default".into(), "db".into()),
            ServiceEntry {
                endpoint_ips: vec![Ipv4Addr::new(127, 10, 0, 2), Ipv4Addr::new(127, 10, 0, 3)],
                ..ServiceEntry::default()
            },
        );
        t
    }

    fn rdata(a: Answer) -> Vec<RData> {
        match a {
            Answer::Records(r) => r.into_iter().map(|r| r.data().clone()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cluster_names() {
        let t = table();
        let n = |s: &str| Name::from_ascii(s).unwrap();
        assert_eq!(
            rdata(answer(
                &t,
                &n("web.default.svc.cluster.local."),
                RecordType::A
            )),
            [RData::A(A::new(127, 96, 0, 20))]
        );
        assert_eq!(
            rdata(answer(
                &t,
                &n("DB.default.svc.cluster.local."),
                RecordType::A
            ))
            .len(),
            2,
            "headless: the ready pod IPs"
        );
        let srv = rdata(answer(
            &t,
            &n("_http._tcp.web.default.svc.cluster.local."),
            RecordType::SRV,
        ));
        assert_eq!(
            srv,
            [RData::SRV(SRV::new(
                0,
                100,
                80,
                n("web.default.svc.cluster.local.")
            ))]
        );
        assert_eq!(
            answer(
                &t,
                &n("_grpc._tcp.web.default.svc.cluster.local."),
                RecordType::SRV
            ),
            Answer::NxDomain
        );
        assert_eq!(
            rdata(answer(
                &t,
                &n("web.default.svc.cluster.local."),
                RecordType::AAAA
            )),
            []
        );
        assert_eq!(
            answer(&t, &n("nope.default.svc.cluster.local."), RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            answer(&t, &n("example.com."), RecordType::A),
            Answer::Forward
        );
    }
}
