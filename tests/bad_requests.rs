//! Bad input gets a 4xx Kubernetes Status that names the problem, and the
//! server keeps serving.

mod common;

use common::TestCluster;
use serde_json::{Value, json};

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
    /// None: no token; Some(""): the admin token; Some(x): token x.
    token: Option<&'static str>,
    code: u16,
    /// Substring the Status message must contain.
    says: &'static str,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: &str,
    body: Value,
    code: u16,
    says: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.into(),
        content_type: "application/json",
        body: body.to_string().into_bytes(),
        token: Some(""),
        code,
        says,
    }
}

fn raw(
    what: &'static str,
    method: &'static str,
    path: &str,
    content_type: &'static str,
    body: &[u8],
    code: u16,
    says: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.into(),
        content_type,
        body: body.to_vec(),
        token: Some(""),
        code,
        says,
    }
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
}

const PODS: &str = "/api/v1/namespaces/default/pods";
const CMS: &str = "/api/v1/namespaces/default/configmaps";
const DEPLOYS: &str = "/apis/apps/v1/namespaces/default/deployments";

fn cases(stale_rv: &str) -> Vec<Case> {
    let mut unknown = pod("u1");
    unknown["spec"]["bogus"] = json!(1);
    let mut nested = pod("u2");
    nested["spec"]["containers"][0]["colour"] = json!("red");
    let mut no_image = pod("noimg");
    no_image["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("image");
    let mut stale = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1", "resourceVersion": stale_rv}, "data": {"a": "2"}});
    stale["data"]["a"] = json!("3");
    let deploy = |labels: Value| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d1"},
        "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    };
    let mut typed = deploy(json!({"app": "a"}));
    typed["spec"]["replicas"] = json!("three");
    let huge = vec![b'x'; 4 * 1024 * 1024];
    let mut big_body =
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"big"},"data":{"a":""#
            .to_vec();
    big_body.extend_from_slice(&huge);
    big_body.extend_from_slice(br#""}}"#);

    vec![
        raw(
            "malformed JSON",
            "POST",
            PODS,
            "application/json",
            br#"{"kind": "Pod", "metadata": "#,
            400,
            "couldn't decode the request body as JSON",
        ),
        raw(
            "malformed YAML",
            "POST",
            CMS,
            "application/yaml",
            b"metadata: [unclosed\n",
            400,
            "as YAML",
        ),
        raw(
            "JSON that is not an object",
            "POST",
            CMS,
            "application/json",
            b"[1, 2]",
            400,
            "must be a JSON object",
        ),
        raw(
            "empty body",
            "POST",
            CMS,
            "application/json",
            b"",
            400,
            "body is empty",
        ),
        raw(
            "garbage protobuf",
            "POST",
            CMS,
            "application/vnd.kubernetes.protobuf",
            b"\x01\x02\x03",
            415,
            "k8s\\0 envelope",
        ),
        raw(
            "unsupported content type",
            "POST",
            CMS,
            "text/csv",
            b"a,b",
            415,
            "unknown format",
        ),
        case(
            "unknown field under Strict",
            "POST",
            &format!("{PODS}?fieldValidation=Strict"),
            unknown,
            400,
            "unknown field \"spec.bogus\"",
        ),
        case(
            "unknown nested field under Strict",
            "POST",
            &format!("{PODS}?fieldValidation=Strict"),
            nested,
            400,
            "spec.containers[0].colour",
        ),
        case(
            "invalid fieldValidation value",
            "POST",
            &format!("{PODS}?fieldValidation=Loud"),
            pod("fv"),
            400,
            "fieldValidation",
        ),
        case(
            "invalid name",
            "POST",
            PODS,
            pod("Bad_Name"),
            422,
            "metadata.name: Invalid value: \"Bad_Name\"",
        ),
        case(
            "name too long",
            "POST",
            CMS,
            json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "a".repeat(254)}}),
            422,
            "no more than 253 characters",
        ),
        case(
            "namespace name with a dot",
            "POST",
            "/api/v1/namespaces",
            json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "a.b"}}),
            422,
            "RFC 1123 label",
        ),
        case(
            "no name nor generateName",
            "POST",
            CMS,
            json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {}}),
            422,
            "name or generateName is required",
        ),
        case(
            "bad label value",
            "POST",
            CMS,
            json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "l", "labels": {"k": "bad value!"}}}),
            422,
            "metadata.labels",
        ),
        case(
            "bad config key",
            "POST",
            CMS,
            json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "k"}, "data": {"bad key": "v"}}),
            422,
            "valid config key",
        ),
        case(
            "stale resourceVersion",
            "PUT",
            &format!("{CMS}/cm1"),
            stale,
            409,
            "the object has been modified",
        ),
        case(
            "missing namespace",
            "POST",
            "/api/v1/namespaces/nope/configmaps",
            json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x"}}),
            404,
            "namespaces \"nope\" not found",
        ),
        case(
            "wrong kind for the URL",
            "POST",
            PODS,
            json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "x"}}),
            400,
            "does not match the expected kind (Pod)",
        ),
        case(
            "wrong apiVersion for the URL",
            "POST",
            DEPLOYS,
            json!({"kind": "Deployment", "apiVersion": "apps/v1beta1", "metadata": {"name": "x"}}),
            400,
            "API version in the data (apps/v1beta1)",
        ),
        case(
            "namespace mismatch",
            "POST",
            CMS,
            json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x", "namespace": "kube-system"}}),
            400,
            "does not match the namespace",
        ),
        case(
            "name mismatch on update",
            "PUT",
            &format!("{CMS}/cm1"),
            json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "other"}}),
            400,
            "does not match the name on the URL",
        ),
        raw(
            "oversize body",
            "POST",
            CMS,
            "application/json",
            &big_body,
            413,
            "request entity too large",
        ),
        case(
            "type error names the field",
            "POST",
            DEPLOYS,
            typed,
            400,
            "spec.replicas",
        ),
        case(
            "pod without containers",
            "POST",
            PODS,
            json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "empty"}, "spec": {"containers": []}}),
            422,
            "spec.containers: Required value",
        ),
        case(
            "container without image",
            "POST",
            PODS,
            no_image,
            422,
            "spec.containers[0].image: Required value",
        ),
        case(
            "selector does not match template",
            "POST",
            DEPLOYS,
            deploy(json!({"app": "b"})),
            422,
            "spec.template.metadata.labels",
        ),
        case(
            "service without ports",
            "POST",
            "/api/v1/namespaces/default/services",
            json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "s"}, "spec": {"selector": {"a": "b"}}}),
            422,
            "spec.ports: Required value",
        ),
        case(
            "ClusterIP outside the service range",
            "POST",
            "/api/v1/namespaces/default/services",
            json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "s"},
                   "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80}]}}),
            422,
            "spec.clusterIPs: Invalid value: \"10.0.0.1\": failed to allocate IP 10.0.0.1: the provided IP (10.0.0.1) is not in the valid range",
        ),
        case(
            "NodePort outside the node port range",
            "POST",
            "/api/v1/namespaces/default/services",
            json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "s"},
                   "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}}),
            422,
            "spec.ports[0].nodePort: Invalid value: \"80\": provided port is not in the valid range. The range of valid ports is 30000-32767",
        ),
        raw(
            "a ClusterIP changed",
            "PATCH",
            "/api/v1/namespaces/default/services/kubernetes",
            "application/merge-patch+json",
            br#"{"spec": {"clusterIP": "127.0.0.9"}}"#,
            422,
            "spec.clusterIPs[0]: Invalid value: \"127.0.0.9\": may not change once set",
        ),
        case(
            "duplicate create",
            "POST",
            CMS,
            json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "cm1"}}),
            409,
            "configmaps \"cm1\" already exists",
        ),
        raw(
            "get of a missing object",
            "GET",
            &format!("{PODS}/nope"),
            "application/json",
            b"",
            404,
            "pods \"nope\" not found",
        ),
        raw(
            "unknown resource",
            "GET",
            "/api/v1/namespaces/default/gizmos",
            "application/json",
            b"",
            404,
            "could not find the requested resource",
        ),
        raw(
            "verb not allowed",
            "PUT",
            CMS,
            "application/json",
            b"{}",
            405,
            "does not allow this method",
        ),
        raw(
            "bad JSON patch",
            "PATCH",
            &format!("{CMS}/cm1"),
            "application/json-patch+json",
            br#"[{"op": "replace", "path": "/nope/deeper", "value": 1}]"#,
            422,
            "invalid patch",
        ),
        raw(
            "patch body that is not JSON",
            "PATCH",
            &format!("{CMS}/cm1"),
            "application/merge-patch+json",
            b"{not json",
            400,
            "couldn't decode the patch",
        ),
        raw(
            "unsupported patch type",
            "PATCH",
            &format!("{CMS}/cm1"),
            "text/plain",
            b"x",
            415,
            "unknown format",
        ),
        raw(
            "strategic patch element without merge key",
            "PATCH",
            &format!("{PODS}/p1"),
            "application/strategic-merge-patch+json",
            br#"{"spec": {"containers": [{"image": "x"}]}}"#,
            422,
            "merge key",
        ),
        raw(
            "scale without replicas",
            "PUT",
            &format!("{DEPLOYS}/good/scale"),
            "application/json",
            br#"{"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "good"}, "spec": {}}"#,
            422,
            "spec.replicas: Required value",
        ),
        raw(
            "negative scale",
            "PATCH",
            &format!("{DEPLOYS}/good/scale"),
            "application/merge-patch+json",
            br#"{"spec": {"replicas": -1}}"#,
            422,
            "spec.replicas",
        ),
        raw(
            "unsupported field selector",
            "GET",
            &format!("{PODS}?fieldSelector=spec.colour%3Dred"),
            "application/json",
            b"",
            400,
            "field label not supported: spec.colour",
        ),
        raw(
            "malformed label selector",
            "GET",
            &format!("{PODS}?labelSelector=app%20in%20web"),
            "application/json",
            b"",
            400,
            "unable to parse requirement",
        ),
        raw(
            "invalid continue token",
            "GET",
            &format!("{PODS}?limit=1&continue=garbage"),
            "application/json",
            b"",
            400,
            "continue key is not valid",
        ),
        raw(
            "invalid watch resourceVersion",
            "GET",
            &format!("{PODS}?watch=true&resourceVersion=abc"),
            "application/json",
            b"",
            400,
            "invalid resourceVersion",
        ),
        raw(
            "invalid propagationPolicy",
            "DELETE",
            &format!("{CMS}/cm1"),
            "application/json",
            br#"{"propagationPolicy": "Sideways"}"#,
            400,
            "propagationPolicy",
        ),
        Case {
            token: None,
            ..raw(
                "no token",
                "GET",
                PODS,
                "application/json",
                b"",
                401,
                "Unauthorized",
            )
        },
        Case {
            token: Some("not-the-token"),
            ..raw(
                "wrong token",
                "GET",
                PODS,
                "application/json",
                b"",
                401,
                "Unauthorized",
            )
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses_and_lose_nothing() {
    let c = TestCluster::start();
    let (http, token) = (c.http(), c.token());
    let send = |method: &str, path: &str, ct: &str, body: Vec<u8>, tok: Option<String>| {
        let mut r = http
            .request(method.parse().unwrap(), format!("{}{path}", c.url))
            .header("Content-Type", ct)
            .body(body);
        if let Some(t) = tok {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // Fixtures the cases refer to.
    let created: Value = send("POST", CMS, "application/json", json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "cm1"}, "data": {"a": "1"}}).to_string().into_bytes(), Some(token.clone()))
        .await.unwrap().json().await.unwrap();
    let stale_rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let r = send("PUT", &format!("{CMS}/cm1"), "application/json", json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "cm1", "resourceVersion": stale_rv}, "data": {"a": "2"}}).to_string().into_bytes(), Some(token.clone())).await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "an update at the current revision succeeds"
    );
    assert_eq!(
        send(
            "POST",
            PODS,
            "application/json",
            pod("p1").to_string().into_bytes(),
            Some(token.clone())
        )
        .await
        .unwrap()
        .status()
        .as_u16(),
        201
    );
    let good = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "good"},
        "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    assert_eq!(
        send(
            "POST",
            DEPLOYS,
            "application/json",
            good.to_string().into_bytes(),
            Some(token.clone())
        )
        .await
        .unwrap()
        .status()
        .as_u16(),
        201
    );

    let cases = cases(&stale_rv);
    assert!(cases.len() >= 30, "the issue asks for at least 30 cases");
    let mut failures = Vec::new();
    for case in &cases {
        let tok = case.token.map(|t| {
            if t.is_empty() {
                token.clone()
            } else {
                t.to_string()
            }
        });
        let resp = send(
            case.method,
            &case.path,
            case.content_type,
            case.body.clone(),
            tok,
        )
        .await
        .expect("request");
        let code = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let message = body["message"].as_str().unwrap_or("");
        if code != case.code
            || body["kind"] != "Status"
            || !message.contains(case.says)
            || body["code"] != case.code
        {
            failures.push(format!(
                "{}: got {code} {body}, want {} containing {:?}",
                case.what, case.code, case.says
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Nothing was lost or changed by the rejected requests, and the server is up.
    let cm: Value = send(
        "GET",
        &format!("{CMS}/cm1"),
        "application/json",
        vec![],
        Some(token.clone()),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(cm["data"]["a"], "2");
    let dep: Value = send(
        "GET",
        &format!("{DEPLOYS}/good"),
        "application/json",
        vec![],
        Some(token.clone()),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        dep["spec"]["replicas"], 1,
        "the negative scale changed nothing"
    );
    let health = send("GET", "/healthz", "application/json", vec![], None)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(health, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_before_the_window_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start_in(dir.path());
    c.kubectl_ok(&["create", "configmap", "a", "--from-literal=k=v"]);
    c.stop();
    // After a restart the window starts at the current revision.
    let c = TestCluster::start_in(dir.path());
    let resp = c
        .http()
        .get(format!("{}{CMS}?watch=true&resourceVersion=1", c.url))
        .bearer_auth(c.token())
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    let event: Value =
        serde_json::from_str(text.lines().next().unwrap_or("")).unwrap_or(Value::Null);
    assert_eq!(event["type"], "ERROR", "{text}");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");
}
