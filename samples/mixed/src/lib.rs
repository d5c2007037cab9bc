//! The frontend of the mixed sample: a wasi:http component that calls the
//! `backend` Service by name (a container pod behind it) and wraps what it
//! answers. Outgoing requests to Services go through the node proxy, so the
//! frontend needs no egress allow-list entry for them.

use weft_guest::http::{Request, Response, get};

fn frontend(_req: Request) -> Response {
    let backend = std::env::var("BACKEND_URL").unwrap_or_else(|_| "http://backend/".to_string());
    match get(&backend) {
        Ok(resp) => Response::text(
            200,
            format!(
                "frontend {} (Wasm) -> backend ({}): {}",
                weft_guest::pod_name(),
                resp.status,
                resp.text_body()
            ),
        ),
        Err(e) => Response::text(502, format!("backend unreachable: {e}\n")),
    }
}

weft_guest::http_handler!(frontend);
