//! The agent's API client over several control-plane members, as k3s
//! agents' client-side load balancer: requests go to one member until one
//! fails in transport (refused, reset, timed out), then to the next.
//!
//! A GET that failed so is sent once more, to the next member: it has no
//! body and changes nothing. Other requests are not resent (the body is
//! consumed, and a write may have arrived); the agent's loops retry them on
//! their own schedule (the next heartbeat, the next status write).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Request, Response};
use kube::client::Body;

#[derive(Clone)]
pub(crate) struct Failover {
    members: Arc<[kube::Client]>,
    current: Arc<AtomicUsize>,
}

impl Failover {
    pub(crate) fn new(members: Vec<kube::Client>) -> Failover {
        Failover {
            members: members.into(),
            current: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Whether the member never answered (as opposed to answering an error).
fn unreachable(e: &kube::Error) -> bool {
    matches!(e, kube::Error::HyperError(_) | kube::Error::Service(_))
}

impl tower::Service<Request<Body>> for Failover {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, kube::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), kube::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let again = (req.method() == http::Method::GET).then(|| bodiless_copy(&req));
            let n = this.members.len();
            let i = this.current.load(Ordering::Relaxed) % n;
            let res = this.members[i].send(req).await;
            let Err(e) = &res else { return res };
            if !unreachable(e) {
                return res;
            }
            // Only the first of several concurrent failures moves on.
            let next = (i + 1) % n;
            if this
                .current
                .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                tracing::warn!(
                    member = i,
                    next,
                    "API server unreachable ({e}); moving to the next"
                );
            }
            match again {
                Some(req) => this.members[next].send(req).await,
                None => res,
            }
        })
    }
}

/// A GET as sent, for sending again elsewhere.
fn bodiless_copy(req: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(Body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

#[cfg(test)]
mod tests {
    use kube::api::Api;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use weft_api::k8s_openapi::api::core::v1::Namespace;

    /// A member that answers every request with the `default` Namespace.
    async fn live_member() -> String {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", live.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = live.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let body =
                        r#"{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"default"}}"#;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all((head + body).as_bytes()).await;
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn a_get_goes_to_the_next_member_when_one_refuses() {
        // A port with nothing listening any more: connections are refused.
        let dead = {
            let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}", closed.local_addr().unwrap())
        };
        let client = super::super::client_of(&[dead, live_member().await], "t", None).unwrap();
        let namespaces: Api<Namespace> = Api::all(client);
        for _ in 0..2 {
            let got = namespaces
                .get("default")
                .await
                .expect("answered by the live member");
            assert_eq!(got.metadata.name.as_deref(), Some("default"));
        }
    }
}
