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

/// A pod the watch saw turn Ready, and when.
#[allow(dead_code)] // each benchmark uses part of this file
#[derive(Debug)]
pub struct Ready {
    pub name: String,
    pub ip: String,
    pub at: std::time::Instant,
}

/// Opens one watch on `pods_url` and reports every Ready pod event.
#[allow(dead_code)]
pub async fn ready_pods(
    http: &reqwest::Client,
    pods_url: &str,
    token: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<Ready> {
    let resp = http
        .get(format!("{pods_url}?watch=true"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(for_each_event(resp, move |v| {
        if is_ready(&v) {
            let text = |p: &str| {
                v.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let _ = tx.send(Ready {
                name: text("/object/metadata/name"),
                ip: text("/object/status/podIP"),
                at: std::time::Instant::now(),
            });
        }
        true
    }));
    rx
}

/// Whether a watch event's pod is Ready.
fn is_ready(event: &Value) -> bool {
    event["object"]["status"]["conditions"]
        .as_array()
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}
