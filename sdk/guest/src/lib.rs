//! Weft's guest SDK: write a Wasm pod as a plain Rust function.
//!
//! ```ignore
//! use weft_guest::http::{Request, Response};
//!
//! fn hello(req: Request) -> Response {
//!     Response::text(200, format!("Hello from {} at {}\n", weft_guest::pod_name(), req.path))
//! }
//! weft_guest::http_handler!(hello);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2`; the result is a
//! `wasi:http/proxy` component (the contract of `wasmtime serve`). A command
//! (a Job) is an ordinary `fn main` built for the same target. Requests and
//! bodies are read whole: this SDK is for small handlers, not streaming.

pub use wasi;

/// The pod's name: Weft, like Kubernetes, sets HOSTNAME to it.
pub fn pod_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_default()
}

pub mod http {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{
        Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest,
        OutgoingResponse, ResponseOutparam, Scheme,
    };
    use wasi::io::streams::StreamError;

    /// An HTTP request, read whole.
    #[derive(Debug, Clone, Default)]
    pub struct Request {
        pub method: String,
        /// Path and query, e.g. `/items?page=2`.
        pub path: String,
        pub headers: Vec<(String, Vec<u8>)>,
        pub body: Vec<u8>,
    }

    /// An HTTP response, sent whole.
    #[derive(Debug, Clone, Default)]
    pub struct Response {
        pub status: u16,
        pub headers: Vec<(String, Vec<u8>)>,
        pub body: Vec<u8>,
    }

    impl Request {
        /// The first value of a header, as text.
        pub fn header(&self, name: &str) -> Option<String> {
            header(&self.headers, name)
        }
    }

    impl Response {
        /// A `text/plain` response.
        pub fn text(status: u16, body: impl Into<String>) -> Response {
            Response {
                status,
                headers: vec![("content-type".into(), b"text/plain".to_vec())],
                body: body.into().into_bytes(),
            }
        }

        pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Response {
            self.headers.push((name.to_string(), value.into()));
            self
        }

        /// The first value of a header, as text.
        pub fn header(&self, name: &str) -> Option<String> {
            header(&self.headers, name)
        }

        /// The body as text (lossy).
        pub fn text_body(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    fn header(headers: &[(String, Vec<u8>)], name: &str) -> Option<String> {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    fn method_name(m: Method) -> String {
        match m {
            Method::Get => "GET".into(),
            Method::Head => "HEAD".into(),
            Method::Post => "POST".into(),
            Method::Put => "PUT".into(),
            Method::Delete => "DELETE".into(),
            Method::Connect => "CONNECT".into(),
            Method::Options => "OPTIONS".into(),
            Method::Trace => "TRACE".into(),
            Method::Patch => "PATCH".into(),
            Method::Other(o) => o,
        }
    }

    fn method_of(name: &str) -> Method {
        match name.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_string()),
        }
    }

    fn read_body(body: IncomingBody) -> Vec<u8> {
        let mut out = Vec::new();
        if let Ok(stream) = body.stream() {
            loop {
                match stream.blocking_read(64 << 10) {
                    Ok(chunk) => out.extend_from_slice(&chunk),
                    Err(StreamError::Closed) | Err(StreamError::LastOperationFailed(_)) => break,
                }
            }
        }
        out
    }

    fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), String> {
        {
            let out = body.write().map_err(|()| "the body has no stream".to_string())?;
            for chunk in bytes.chunks(4096) {
                out.blocking_write_and_flush(chunk)
                    .map_err(|e| format!("writing the body: {e:?}"))?;
            }
        }
        OutgoingBody::finish(body, None).map_err(|e| format!("finishing the body: {e:?}"))
    }

    /// Reads an incoming request whole (used by [`http_handler!`](crate::http_handler)).
    pub fn read_request(req: IncomingRequest) -> Request {
        let headers = req.headers().entries();
        let body = req.consume().map(read_body).unwrap_or_default();
        Request {
            method: method_name(req.method()),
            path: req.path_with_query().unwrap_or_else(|| "/".into()),
            headers,
            body,
        }
    }

    /// Sends a response (used by [`http_handler!`](crate::http_handler)).
    pub fn respond(out: ResponseOutparam, resp: Response) {
        let headers = Fields::from_list(&resp.headers).unwrap_or_else(|_| Fields::new());
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(resp.status);
        let body = response.body().expect("a fresh response has a body");
        ResponseOutparam::set(out, Ok(response));
        let _ = write_body(body, &resp.body);
    }

    /// Sends an outgoing request and reads the answer whole. On Weft the
    /// node's egress policy (the pod's `weft.dev/egress-allow`) decides
    /// where it may go; Service names are routed by the node.
    pub fn send(method: &str, url: &str, headers: &[(String, Vec<u8>)], body: &[u8]) -> Result<Response, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} has no scheme"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let fields = Fields::from_list(headers).map_err(|e| format!("headers: {e:?}"))?;
        let req = OutgoingRequest::new(fields);
        req.set_method(&method_of(method)).map_err(|()| "bad method".to_string())?;
        req.set_scheme(Some(&match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => Scheme::Other(other.to_string()),
        }))
        .map_err(|()| "bad scheme".to_string())?;
        req.set_authority(Some(authority)).map_err(|()| "bad authority".to_string())?;
        req.set_path_with_query(Some(path)).map_err(|()| "bad path".to_string())?;
        let out_body = req.body().map_err(|()| "the request has no body".to_string())?;
        let pending = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
        write_body(out_body, body)?;
        pending.subscribe().block();
        let resp = pending
            .get()
            .ok_or("no response")?
            .map_err(|()| "the response was already taken".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status();
        let headers = resp.headers().entries();
        let body = resp.consume().map(read_body).unwrap_or_default();
        Ok(Response { status, headers, body })
    }

    /// `GET url`.
    pub fn get(url: &str) -> Result<Response, String> {
        send("GET", url, &[], &[])
    }
}

/// Exports `$handler: fn(http::Request) -> http::Response` as the
/// component's `wasi:http/incoming-handler`.
#[macro_export]
macro_rules! http_handler {
    ($handler:path) => {
        struct __WeftHttpHandler;

        impl $crate::wasi::exports::http::incoming_handler::Guest for __WeftHttpHandler {
            fn handle(
                request: $crate::wasi::http::types::IncomingRequest,
                out: $crate::wasi::http::types::ResponseOutparam,
            ) {
                let request = $crate::http::read_request(request);
                $crate::http::respond(out, $handler(request));
            }
        }

        $crate::wasi::http::proxy::export!(__WeftHttpHandler);
    };
}
