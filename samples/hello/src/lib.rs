//! A wasi:http/proxy component: answers `Hello from <pod name>` on every path
//! (`$GREETING from <pod name>` when GREETING is set).
//! Like Kubernetes, Weft sets HOSTNAME to the pod name.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

impl Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let name = std::env::var("HOSTNAME").unwrap_or_else(|_| "an unnamed pod".to_string());
        // GREETING (from the pod's env, e.g. a ConfigMap) replaces "Hello".
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("a fresh response has a body");
        ResponseOutparam::set(response_out, Ok(response));
        let out = body.write().expect("the body has one stream");
        out.blocking_write_and_flush(format!("{greeting} from {name}\n").as_bytes())
            .expect("write the greeting");
        drop(out);
        OutgoingBody::finish(body, None).expect("finish the body");
    }
}

wasi::http::proxy::export!(Hello);
