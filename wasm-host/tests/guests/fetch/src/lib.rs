//! Fetches `?url=` through the host's outgoing-HTTP hook and reports what
//! came back, so tests can check the egress policy.

use weft_guest::http::{Request, Response, get};

fn fetch(req: Request) -> Response {
    let url = req.path.split_once("?url=").map(|(_, u)| u.to_string()).unwrap_or_default();
    match get(&url) {
        Ok(resp) => Response::text(200, format!("{} {}", resp.status, resp.text_body())),
        Err(e) => Response::text(502, format!("fetch failed: {e}")),
    }
}

weft_guest::http_handler!(fetch);
