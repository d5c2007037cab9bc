//! The agent's API client over several control-plane members, as k3s
//! agents' client-side load balancer: requests go to one member until one
//! fails in transport (refused, reset, timed out), then to the next.
//!
//! The failed request is not resent (its body is consumed); the agent's
//! loops retry on their own schedule (the next heartbeat, a watch's relist),
//! and that try goes to the next member.

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
            let n = this.members.len();
            let i = this.current.load(Ordering::Relaxed) % n;
            let res = this.members[i].send(req).await;
            if let Err(e) = &res
                && unreachable(e)
                // Only the first of several concurrent failures moves on.
                && this
                    .current
                    .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    member = i,
                    next = (i + 1) % n,
                    "API server unreachable ({e}); moving to the next"
                );
            }
            res
        })
    }
}
