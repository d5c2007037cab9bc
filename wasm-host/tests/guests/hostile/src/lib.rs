//! A guest that misbehaves on request, to prove a bad pod only hurts itself.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hostile;

#[inline(never)]
fn recurse(depth: u64, sink: &mut [u64; 64]) -> u64 {
    sink[(depth % 64) as usize] = depth;
    // Both branches recurse, so this cannot become a loop.
    if std::hint::black_box(depth) == u64::MAX {
        0
    } else {
        recurse(depth + 1, sink) + sink[0]
    }
}

impl Guest for Hostile {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        match path.as_str() {
            "/loop" => loop {
                std::hint::black_box(());
            },
            "/oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "/stack" => {
                let mut sink = [0u64; 64];
                std::hint::black_box(recurse(0, &mut sink));
            }
            "/trap" => panic!("trapping on purpose"),
            "/handles" => {
                // Each Fields is an entry in the host's resource table.
                let held: Vec<Fields> = (0..100_000).map(|_| Fields::new()).collect();
                std::hint::black_box(&held);
            }
            _ => {}
        }
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("body");
        ResponseOutparam::set(response_out, Ok(response));
        let out = body.write().expect("stream");
        out.blocking_write_and_flush(b"ok\n").expect("write");
        drop(out);
        OutgoingBody::finish(body, None).expect("finish");
    }
}

wasi::http::proxy::export!(Hostile);
