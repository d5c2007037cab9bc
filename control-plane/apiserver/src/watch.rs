//! Watch: chunked newline-delimited JSON events from any revision still in
//! the window, with bookmarks, timeouts and Table-encoded events for
//! `kubectl get -w`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use weft_api::Status;

use super::handlers::{ApiResult, Ctx};
use super::registry::Watch;
use super::table;
use weft_store::{Event, EventType, Feed};

/// Default watch length when the client sets none (kube-apiserver picks 30–60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

struct Encoder {
    kind: &'static str,
    api_version: String,
    table: bool,
    include: String,
}

impl Encoder {
    fn line(&self, ty: &str, object_json: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(object_json.len() + 32);
        b.put_slice(b"{\"type\":\"");
        b.put_slice(ty.as_bytes());
        b.put_slice(b"\",\"object\":");
        b.put_slice(object_json);
        b.put_slice(b"}\n");
        b.freeze()
    }

    fn event(&self, ty: EventType, e: &Event) -> Bytes {
        if self.table {
            let rv = e.revision.to_string();
            let t = table::render(self.kind, &[&e.object], &rv, None, &self.include, false);
            return self.line(ty.as_str(), t.to_string().as_bytes());
        }
        self.line(ty.as_str(), e.object_json())
    }

    fn object(&self, ty: EventType, o: &Value) -> Bytes {
        if self.table {
            let rv = o
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            let t = table::render(self.kind, &[o], rv, None, &self.include, false);
            return self.line(ty.as_str(), t.to_string().as_bytes());
        }
        self.line(ty.as_str(), o.to_string().as_bytes())
    }

    fn bookmark(&self, revision: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let o = json!({"kind": self.kind, "apiVersion": self.api_version, "metadata": meta});
        self.line("BOOKMARK", o.to_string().as_bytes())
    }

    fn error(&self, s: &Status) -> Bytes {
        self.line("ERROR", s.to_json().to_string().as_bytes())
    }
}

/// One watch's sending side: the initial state, the backlog, then the live
/// feed, until the timeout, shutdown, the client leaving or a relist.
struct Stream {
    enc: Encoder,
    watch: Watch,
    initial_events: bool,
    bookmarks: bool,
    bookmark_every: Duration,
    timeout: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Stream {
    async fn run(self) {
        let Stream {
            enc,
            watch:
                Watch {
                    initial,
                    from,
                    filter,
                    events,
                },
            initial_events,
            bookmarks,
            bookmark_every,
            timeout,
            mut shutdown,
            tx,
        } = self;
        // False once the client has gone.
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(b)).await.is_ok() }
        };
        let (backlog, mut live) = match events {
            Ok(s) => s,
            Err(e) => {
                let s = Status::expired(format!(
                    "too old resource version: {} ({})",
                    e.requested, e.oldest
                ));
                send(enc.error(&s)).await;
                return;
            }
        };
        for o in &initial {
            if !send(enc.object(EventType::Added, o)).await {
                return;
            }
        }
        if initial_events && bookmarks {
            send(enc.bookmark(from, true)).await;
        }
        let mut last_seen = from;
        let emit = |e: &Arc<Event>, last_seen: &mut u64| -> Option<Bytes> {
            if e.revision <= *last_seen {
                return None;
            }
            *last_seen = e.revision;
            filter.classify(e).map(|ty| enc.event(ty, e))
        };
        for e in &backlog {
            if let Some(b) = emit(e, &mut last_seen)
                && !send(b).await
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(bookmark_every);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = shutdown.changed() => break,
                _ = tx.closed() => break,
                _ = ticker.tick(), if bookmarks => {
                    if !send(enc.bookmark(last_seen, false)).await { break }
                }
                msg = live.recv() => match msg {
                    Ok(Feed::Event(e)) => {
                        if let Some(b) = emit(&e, &mut last_seen)
                            && !send(b).await
                        {
                            break;
                        }
                    }
                    // Fell behind the feed or the state was replaced: the client must relist.
                    Ok(Feed::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        send(enc.error(&Status::expired("the watch fell behind or the store was reset; relist"))).await;
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    }
}

/// Streams a watch: chunked newline-delimited JSON (or Table) events.
pub fn serve(ctx: &Ctx<'_>) -> ApiResult {
    let res = ctx.target.res;
    let accept = ctx
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let enc = Encoder {
        kind: res.kind,
        api_version: res.api_version(),
        table: table::wants_table(accept),
        include: ctx
            .query
            .include_object
            .clone()
            .unwrap_or_else(|| "Metadata".into()),
    };
    let initial_events = ctx.query.send_initial_events == Some(true);
    let watch = ctx
        .api
        .registry
        .watch(&ctx.target, ctx.list_options()?, initial_events)?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let stream = Stream {
        enc,
        watch,
        initial_events,
        bookmarks: ctx.query.allow_watch_bookmarks == Some(true),
        bookmark_every: ctx.api.bookmark_interval,
        timeout: ctx
            .query
            .timeout_seconds
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TIMEOUT),
        shutdown: ctx.api.shutdown.clone(),
        tx,
    };
    let watchers = ctx.api.metrics.watchers.clone();
    tokio::spawn(async move {
        watchers.inc();
        stream.run().await;
        watchers.dec();
    });

    let body = Body::from_stream(ReceiverStream::new(rx));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json;stream=watch"),
            (header::CACHE_CONTROL, "no-cache, private"),
        ],
        body,
    )
        .into_response())
}
