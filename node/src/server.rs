//! The agent's own HTTP endpoint (kubelet's port): container logs for the
//! API server's `pods/log`, `/healthz`, and the service proxy's `/metrics`. Plain HTTP on the node's
//! address, bearer token required (the token the agent itself uses).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::StreamExt;
use weft_api::Status;

use crate::logs::{self, Live, Options};

#[derive(Clone)]
pub struct ServerState {
    pub logs: PathBuf,
    pub live: Arc<Live>,
    pub token: String,
    /// Its metrics are served on `/metrics` (unauthenticated, as kube-proxy's).
    pub proxy: Arc<crate::proxy::Proxy>,
}

/// `kubectl logs` parameters, as the API server forwards them.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    pub follow: Option<bool>,
    pub previous: Option<bool>,
    pub timestamps: Option<bool>,
    pub tail_lines: Option<i64>,
    pub since_seconds: Option<i64>,
    pub since_time: Option<String>,
    pub limit_bytes: Option<i64>,
}

fn status(s: Status) -> Response {
    let code = StatusCode::from_u16(s.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(s.to_json())).into_response()
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|State(s): State<ServerState>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    s.proxy.metrics.encode(),
                )
            }),
        )
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .with_state(state);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await;
}

/// The newest log directory of a pod (a name may be reused by a new uid).
fn pod_dir(root: &std::path::Path, ns: &str, pod: &str) -> Option<PathBuf> {
    let prefix = format!("{ns}_{pod}_");
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

async fn container_logs(
    State(state): State<ServerState>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == state.token);
    if !authorized {
        return status(Status::unauthorized());
    }
    let Some(dir) = pod_dir(&state.logs, &ns, &pod) else {
        return status(Status::bad_request(format!(
            "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
        )));
    };
    let runs = logs::runs(&dir, &container);
    let run = if q.previous.unwrap_or(false) {
        runs.len().checked_sub(2).map(|i| runs[i])
    } else {
        runs.last().copied()
    };
    let Some(run) = run else {
        let msg = if q.previous.unwrap_or(false) {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            )
        };
        return status(Status::bad_request(msg));
    };
    let since = match (&q.since_time, q.since_seconds) {
        (Some(t), _) => match t.parse::<jiff::Timestamp>() {
            Ok(t) => Some(t),
            Err(e) => return status(Status::bad_request(format!("sinceTime {t:?}: {e}"))),
        },
        (None, Some(s)) if s > 0 => {
            Some(jiff::Timestamp::now() - std::time::Duration::from_secs(s as u64))
        }
        (None, Some(s)) => {
            return status(Status::bad_request(format!(
                "sinceSeconds: Invalid value: {s}: must be greater than 0"
            )));
        }
        (None, None) => None,
    };
    let opts = Options {
        tail_lines: q.tail_lines.and_then(|n| usize::try_from(n).ok()),
        since,
        timestamps: q.timestamps.unwrap_or(false),
        limit_bytes: q.limit_bytes.and_then(|n| usize::try_from(n).ok()),
    };
    let path = logs::run_path(&dir, &container, run);
    let (head, offset) = match logs::read(&path, &opts) {
        Ok(r) => r,
        Err(e) => {
            return status(Status::new(
                500,
                "InternalError",
                format!("reading {}: {e}", path.display()),
            ));
        }
    };
    let text = [(header::CONTENT_TYPE, "text/plain")];
    if !q.follow.unwrap_or(false) {
        return (text, head).into_response();
    }
    // Follow: what is there, then appends until the run ends or the client leaves.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let follow_opts = Options {
        tail_lines: None,
        limit_bytes: opts.limit_bytes.map(|l| l.saturating_sub(head.len())),
        ..opts
    };
    tokio::spawn(logs::follow(
        path,
        offset,
        follow_opts,
        state.live.clone(),
        tx,
    ));
    let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
    let body = futures::stream::once(async move { head })
        .chain(rest)
        .map(|chunk| Ok::<_, std::io::Error>(Bytes::from(chunk)));
    (text, axum::body::Body::from_stream(body)).into_response()
}
