//! HTTP plumbing shared by the Wasm runtime's pod ports and the service
//! proxy: one request into a Wasm handler, plain-text answers, accepting.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use weft_wasm_host::{HttpHandler, RequestError};

pub type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn text(code: u16, msg: String) -> hyper::Response<Body> {
    let body = Full::new(Bytes::from(msg))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    hyper::Response::builder()
        .status(code)
        .header("content-type", "text/plain")
        .body(body)
        .expect("static response")
}

/// One request into a Wasm handler; the node's failures become 5xx answers.
pub async fn respond<B>(handler: &HttpHandler, req: hyper::Request<B>) -> hyper::Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match handler.handle(req).await {
        Ok(resp) => resp.map(|b| {
            b.map_err(|e| Box::new(std::io::Error::other(format!("{e:?}"))) as _)
                .boxed_unsync()
        }),
        Err(e @ RequestError::Timeout(_)) => text(504, format!("{e}\n")),
        Err(e @ RequestError::CpuBudget(_)) => text(503, format!("{e}\n")),
        Err(e) => text(500, format!("{e}\n")),
    }
}

/// The next connection, with TCP_NODELAY set. Accept errors (out of
/// descriptors, most likely) pause the loop rather than spin it.
pub async fn accept(
    listener: &tokio::net::TcpListener,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(e) => {
                tracing::debug!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
