//! The API server's semantics, in process, over real HTTPS and the real store.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use weft_control_plane::{ControlPlane, ControlPlaneConfig};

struct Env {
    cp: ControlPlane,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start(window: usize) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ControlPlaneConfig::new(
        dir.path().to_path_buf(),
        "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
    );
    cfg.watch_window = window;
    cfg.bookmark_interval = Duration::from_millis(200);
    let cp = ControlPlane::start(cfg)
        .await
        .expect("control plane starts");
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(cp.ca_pem.as_ref().unwrap().as_bytes()).unwrap(),
        )
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    Env {
        cp,
        http,
        _dir: dir,
    }
}

impl Env {
    async fn call(&self, method: &str, path: &str, ct: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.cp.url))
            .bearer_auth(&self.cp.token);
        if let Some(b) = body {
            r = r.header("Content-Type", ct).body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let code = resp.status().as_u16();
        (code, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, "application/json", Some(body))
            .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, "", None).await
    }

    async fn patch(&self, path: &str, ct: &str, body: Value) -> (u16, Value) {
        self.call("PATCH", path, ct, Some(body)).await
    }
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test]
async fn revisions_are_global_and_cas_detects_conflicts() {
    let e = start(1000).await;
    let (c1, a) = e.post(CMS, cm("a", json!({}))).await;
    let (c2, b) = e.post(CMS, cm("b", json!({}))).await;
    assert_eq!((c1, c2), (201, 201));
    assert_eq!(rv(&b), rv(&a) + 1, "one global revision counter");
    assert!(a["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));

    let mut upd = a.clone();
    upd["data"]["k"] = json!("v2");
    let (code, updated) = e
        .call(
            "PUT",
            &format!("{CMS}/a"),
            "application/json",
            Some(upd.clone()),
        )
        .await;
    assert_eq!(code, 200);
    assert!(rv(&updated) > rv(&b));
    let (code, status) = e
        .call("PUT", &format!("{CMS}/a"), "application/json", Some(upd))
        .await;
    assert_eq!(code, 409, "{status}");
    assert_eq!(status["reason"], "Conflict");

    // A no-op update keeps the revision.
    let (code, same) = e
        .call(
            "PUT",
            &format!("{CMS}/a"),
            "application/json",
            Some(updated.clone()),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(rv(&same), rv(&updated));
}

#[tokio::test]
async fn list_pagination_and_selectors() {
    let e = start(1000).await;
    for i in 0..7 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        assert_eq!(
            e.post(CMS, cm(&format!("cm{i}"), json!({"tier": tier})))
                .await
                .0,
            201
        );
    }
    let mut names = Vec::new();
    let mut cont = String::new();
    let mut pages = 0;
    loop {
        let (code, page) = e.get(&format!("{CMS}?limit=3&continue={cont}")).await;
        assert_eq!(code, 200);
        pages += 1;
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        match page["metadata"]["continue"].as_str() {
            Some(c) => cont = c.to_string(),
            None => break,
        }
        assert!(pages < 10, "pagination must end");
    }
    assert_eq!(pages, 3);
    assert_eq!(names, (0..7).map(|i| format!("cm{i}")).collect::<Vec<_>>());
    let (_, even) = e.get(&format!("{CMS}?labelSelector=tier%3Deven")).await;
    assert_eq!(even["items"].as_array().unwrap().len(), 4);
    let (_, notodd) = e
        .get(&format!(
            "{CMS}?labelSelector=tier%20notin%20(odd)&fieldSelector=metadata.name!%3Dcm0"
        ))
        .await;
    assert_eq!(notodd["items"].as_array().unwrap().len(), 3);
    let (_, all) = e.get("/api/v1/configmaps").await;
    assert_eq!(all["kind"], "ConfigMapList");
    assert_eq!(all["items"].as_array().unwrap().len(), 7);
}

/// Reads watch events until `n` arrive or the deadline passes.
async fn events(resp: reqwest::Response, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut stream = resp.bytes_stream();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(c))) => c,
            _ => break,
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            out.push(serde_json::from_slice(&line).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn watch_replays_from_a_revision_and_follows_selectors() {
    let e = start(1000).await;
    let (_, a) = e.post(CMS, cm("a", json!({"app": "web"}))).await;
    e.post(CMS, cm("b", json!({"app": "db"}))).await;
    let start_rv = rv(&a) - 1;
    let resp = e
        .http
        .get(format!(
            "{}{CMS}?watch=true&resourceVersion={start_rv}&labelSelector=app%3Dweb",
            e.cp.url
        ))
        .bearer_auth(&e.cp.token)
        .send()
        .await
        .unwrap();
    // b moves into the selector (ADDED), a moves out (DELETED).
    e.patch(
        &format!("{CMS}/b"),
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"app": "web"}}}),
    )
    .await;
    e.patch(
        &format!("{CMS}/a"),
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"app": "db"}}}),
    )
    .await;
    let got = events(resp, 3).await;
    let summary: Vec<(String, String)> = got
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().into(),
                e["object"]["metadata"]["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("ADDED".into(), "a".into()),
            ("ADDED".into(), "b".into()),
            ("DELETED".into(), "a".into())
        ]
    );
}

#[tokio::test]
async fn watch_without_revision_starts_with_state_and_sends_bookmarks() {
    let e = start(1000).await;
    e.post(CMS, cm("x", json!({}))).await;
    let resp = e
        .http
        .get(format!(
            "{}{CMS}?watch=true&allowWatchBookmarks=true&timeoutSeconds=2",
            e.cp.url
        ))
        .bearer_auth(&e.cp.token)
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let got = events(resp, 2).await;
    assert_eq!(got[0]["type"], "ADDED");
    assert_eq!(got[0]["object"]["metadata"]["name"], "x");
    assert_eq!(got[1]["type"], "BOOKMARK");
    assert!(
        got[1]["object"]["metadata"]["resourceVersion"]
            .as_str()
            .is_some()
    );
}

#[tokio::test]
async fn watch_older_than_the_window_is_expired() {
    let e = start(3).await;
    let (_, first) = e.post(CMS, cm("w0", json!({}))).await;
    for i in 1..6 {
        e.post(CMS, cm(&format!("w{i}"), json!({}))).await;
    }
    let resp = e
        .http
        .get(format!(
            "{}{CMS}?watch=true&resourceVersion={}",
            e.cp.url,
            rv(&first)
        ))
        .bearer_auth(&e.cp.token)
        .send()
        .await
        .unwrap();
    let got = events(resp, 1).await;
    assert_eq!(got[0]["type"], "ERROR");
    assert_eq!(got[0]["object"]["code"], 410);
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let e = start(1000).await;
    let mut obj = cm("held", json!({}));
    obj["metadata"]["finalizers"] = json!(["example.com/hold"]);
    e.post(CMS, obj).await;
    let (code, marked) = e.call("DELETE", &format!("{CMS}/held"), "", None).await;
    assert_eq!(code, 200);
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        e.get(&format!("{CMS}/held")).await.0,
        200,
        "still present while finalized"
    );
    let (code, _) = e
        .patch(
            &format!("{CMS}/held"),
            "application/merge-patch+json",
            json!({"metadata": {"finalizers": null}}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        e.get(&format!("{CMS}/held")).await.0,
        404,
        "gone once the last finalizer is removed"
    );
}

#[tokio::test]
async fn pods_bind_once_and_bound_pods_delete_gracefully() {
    let e = start(1000).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
    let (_, created) = e.post(PODS, pod).await;
    assert_eq!(created["status"]["phase"], "Pending");
    assert_eq!(created["status"]["qosClass"], "BestEffort");
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
    assert_eq!(
        e.post(&format!("{PODS}/p/binding"), binding.clone())
            .await
            .0,
        201
    );
    let (code, again) = e.post(&format!("{PODS}/p/binding"), binding).await;
    assert_eq!(code, 409, "{again}");
    let (_, bound) = e.get(&format!("{PODS}/p")).await;
    assert_eq!(bound["spec"]["nodeName"], "n1");

    // Bound and running: deletion is graceful, left for the node agent to finish.
    let (code, deleting) = e
        .call(
            "DELETE",
            &format!("{PODS}/p"),
            "application/json",
            Some(json!({"gracePeriodSeconds": 5})),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(deleting["metadata"]["deletionGracePeriodSeconds"], 5);
    assert_eq!(e.get(&format!("{PODS}/p")).await.0, 200);
    // Force deletion removes it at once.
    let (code, _) = e
        .call(
            "DELETE",
            &format!("{PODS}/p"),
            "application/json",
            Some(json!({"gracePeriodSeconds": 0})),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(e.get(&format!("{PODS}/p")).await.0, 404);
}

#[tokio::test]
async fn deployment_scale_status_and_generation() {
    let e = start(1000).await;
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
    let path = "/apis/apps/v1/namespaces/default/deployments/d";
    let (_, created) = e
        .post("/apis/apps/v1/namespaces/default/deployments", d)
        .await;
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(
        created["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        "25%"
    );
    let (code, scale) = e
        .patch(
            &format!("{path}/scale"),
            "application/merge-patch+json",
            json!({"spec": {"replicas": 4}}),
        )
        .await;
    assert_eq!(
        (
            code,
            scale["kind"].as_str(),
            scale["spec"]["replicas"].as_i64()
        ),
        (200, Some("Scale"), Some(4))
    );
    assert_eq!(scale["status"]["selector"], "app=d");
    let (_, after) = e.get(path).await;
    assert_eq!(
        (
            after["spec"]["replicas"].as_i64(),
            after["metadata"]["generation"].as_i64()
        ),
        (Some(4), Some(2))
    );

    // Status writes go through /status only, and do not bump generation.
    let (code, _) = e
        .patch(
            &format!("{path}/status"),
            "application/merge-patch+json",
            json!({"status": {"replicas": 4, "observedGeneration": 2}}),
        )
        .await;
    assert_eq!(code, 200);
    let (_, ignored) = e
        .patch(
            path,
            "application/merge-patch+json",
            json!({"status": {"replicas": 99}}),
        )
        .await;
    assert_eq!(
        ignored["status"]["replicas"], 4,
        "main resource ignores status"
    );
    assert_eq!(ignored["metadata"]["generation"], 2);

    // rollout undo's JSON patch and apply's strategic merge both land.
    let (code, undone) = e.patch(path, "application/json-patch+json", json!([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "i:0"}])).await;
    assert_eq!(
        (
            code,
            undone["spec"]["template"]["spec"]["containers"][0]["image"].as_str()
        ),
        (200, Some("i:0"))
    );
    let smp = json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "c"}], "containers": [{"name": "c", "image": "i:2"}]}}}});
    let (_, merged) = e
        .patch(path, "application/strategic-merge-patch+json", smp)
        .await;
    assert_eq!(
        merged["spec"]["template"]["spec"]["containers"][0]["image"],
        "i:2"
    );
    assert_eq!(
        merged["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"],
        "File"
    );
}

#[tokio::test]
async fn tables_and_discovery() {
    let e = start(1000).await;
    e.post(CMS, cm("t", json!({}))).await;
    let resp = e
        .http
        .get(format!("{}{CMS}", e.cp.url))
        .bearer_auth(&e.cp.token)
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .send()
        .await
        .unwrap();
    let t: Value = resp.json().await.unwrap();
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["columnDefinitions"][1]["name"], "Data");
    assert_eq!(t["rows"][0]["cells"][0], "t");
    assert!(t["metadata"]["resourceVersion"].as_str().is_some());

    let resp = e
        .http
        .get(format!("{}/apis", e.cp.url))
        .bearer_auth(&e.cp.token)
        .header(
            "Accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    let (_, legacy) = e.get("/apis/apps/v1").await;
    assert_eq!(legacy["kind"], "APIResourceList");
    let (_, ver) = e.get("/version").await;
    assert_eq!(
        (ver["major"].as_str(), ver["minor"].as_str()),
        (Some("1"), Some("32"))
    );
    let metrics = e
        .http
        .get(format!("{}/metrics", e.cp.url))
        .bearer_auth(&e.cp.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("apiserver_request_total"), "{metrics}");
    assert!(metrics.contains("weft_store_revision"));
}

#[tokio::test]
async fn shutdown_is_bounded_with_an_open_watch() {
    let e = start(1000).await;
    let resp = e
        .http
        .get(format!("{}{CMS}?watch=true", e.cp.url))
        .bearer_auth(&e.cp.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let t = std::time::Instant::now();
    e.cp.shutdown(Duration::from_secs(10)).await;
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        t.elapsed()
    );
}
