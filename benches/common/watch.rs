//! Reading a watch response in the benchmarks: one JSON event per line.

use futures::StreamExt;
use serde_json::Value;

/// Calls `each` with every event of a watch response until it returns
/// false or the stream ends.
pub async fn for_each_event(resp: reqwest::Response, mut each: impl FnMut(Value) -> bool) {
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let event = serde_json::from_slice(&line).unwrap_or(Value::Null);
            if !each(event) {
                return;
            }
        }
    }
}

/// Whether a watch event's pod is Ready.
#[allow(dead_code)] // each benchmark uses part of this file
pub fn is_ready(event: &Value) -> bool {
    event["object"]["status"]["conditions"]
        .as_array()
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}
