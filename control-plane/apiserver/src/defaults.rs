//! Server-side defaulting, as Kubernetes' `SetDefaults_*` functions and
//! admission plugins do it, so manifests read back the way users expect.

use serde_json::{Map, Value, json};

fn obj(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut().expect("just made an object")
}

/// Sets `key` to `default` unless present (and non-null).
fn def(m: &mut Map<String, Value>, key: &str, default: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), default);
    }
}

fn child<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    obj(m
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new())))
}

fn each<'a>(
    m: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    m.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

fn default_probe(p: &mut Map<String, Value>) {
    def(p, "timeoutSeconds", json!(1));
    def(p, "periodSeconds", json!(10));
    def(p, "successThreshold", json!(1));
    def(p, "failureThreshold", json!(3));
    if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
        def(h, "path", json!("/"));
        def(h, "scheme", json!("HTTP"));
    }
}

fn default_container(c: &mut Map<String, Value>) {
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    def(
        c,
        "imagePullPolicy",
        json!(weft_api::default_pull_policy(&image)),
    );
    def(c, "terminationMessagePath", json!("/dev/termination-log"));
    def(c, "terminationMessagePolicy", json!("File"));
    def(c, "resources", json!({}));
    for p in each(c, "ports") {
        def(p, "protocol", json!("TCP"));
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            default_probe(p);
        }
    }
    for e in each(c, "env") {
        if let Some(fr) = e
            .get_mut("valueFrom")
            .and_then(|v| v.get_mut("fieldRef"))
            .and_then(Value::as_object_mut)
        {
            def(fr, "apiVersion", json!("v1"));
        }
    }
}

pub fn pod_spec(spec: &mut Map<String, Value>) {
    def(spec, "restartPolicy", json!("Always"));
    def(spec, "dnsPolicy", json!("ClusterFirst"));
    def(spec, "schedulerName", json!("default-scheduler"));
    def(spec, "terminationGracePeriodSeconds", json!(30));
    def(spec, "securityContext", json!({}));
    def(spec, "enableServiceLinks", json!(true));
    for field in ["containers", "initContainers"] {
        for c in each(spec, field) {
            default_container(c);
        }
    }
    for v in each(spec, "volumes") {
        for src in ["configMap", "secret"] {
            if let Some(s) = v.get_mut(src).and_then(Value::as_object_mut) {
                def(s, "defaultMode", json!(420));
            }
        }
    }
}

/// The DefaultTolerationSeconds admission plugin: pods ride out a brief
/// node outage for 300 s before eviction.
fn default_tolerations(spec: &mut Map<String, Value>) {
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let present = list.iter().any(|t| {
            t.get("key").and_then(Value::as_str) == Some(key)
                || (t.get("key").is_none()
                    && t.get("operator").and_then(Value::as_str) == Some("Exists"))
        });
        if !present {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
}

fn template(spec: &mut Map<String, Value>) {
    let t = child(spec, "template");
    child(t, "metadata");
    pod_spec(child(t, "spec"));
}

/// The pod QoS class, as the kubelet and `kubectl describe` report it.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(res));
            let r = req.and_then(|r| r.get(res)).or(l);
            if l.is_none() || r != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Applies the kind's defaults. `uid` is the object's (for Job selectors).
pub fn apply(kind: &str, object: &mut Value) {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let uid = object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let o = obj(object);
    match kind {
        "Pod" => {
            let spec = child(o, "spec");
            pod_spec(spec);
            default_tolerations(spec);
        }
        "Deployment" => {
            let spec = child(o, "spec");
            def(spec, "replicas", json!(1));
            def(spec, "revisionHistoryLimit", json!(10));
            def(spec, "progressDeadlineSeconds", json!(600));
            let strategy = child(spec, "strategy");
            def(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = child(strategy, "rollingUpdate");
                def(ru, "maxUnavailable", json!("25%"));
                def(ru, "maxSurge", json!("25%"));
            }
            template(spec);
        }
        "ReplicaSet" => {
            let spec = child(o, "spec");
            def(spec, "replicas", json!(1));
            template(spec);
        }
        "DaemonSet" => {
            let spec = child(o, "spec");
            def(spec, "revisionHistoryLimit", json!(10));
            let us = child(spec, "updateStrategy");
            def(us, "type", json!("RollingUpdate"));
            if us.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let ru = child(us, "rollingUpdate");
                def(ru, "maxUnavailable", json!(1));
                def(ru, "maxSurge", json!(0));
            }
            template(spec);
        }
        "Job" => job_spec(child(o, "spec"), &name, &uid),
        "CronJob" => {
            let spec = child(o, "spec");
            def(spec, "concurrencyPolicy", json!("Allow"));
            def(spec, "suspend", json!(false));
            def(spec, "successfulJobsHistoryLimit", json!(3));
            def(spec, "failedJobsHistoryLimit", json!(1));
            let jt = child(child(spec, "jobTemplate"), "spec");
            def(jt, "backoffLimit", json!(6));
            def(jt, "completionMode", json!("NonIndexed"));
            def(jt, "suspend", json!(false));
            template(jt);
        }
        "Service" => {
            let spec = child(o, "spec");
            def(spec, "type", json!("ClusterIP"));
            def(spec, "sessionAffinity", json!("None"));
            def(spec, "internalTrafficPolicy", json!("Cluster"));
            for p in each(spec, "ports") {
                def(p, "protocol", json!("TCP"));
                if let Some(port) = p.get("port").cloned() {
                    def(p, "targetPort", port);
                }
            }
        }
        "Namespace" => {
            child(child(o, "metadata"), "labels")
                .insert("kubernetes.io/metadata.name".into(), json!(name));
            def(child(o, "spec"), "finalizers", json!(["kubernetes"]));
            def(child(o, "status"), "phase", json!("Active"));
        }
        "Secret" => {
            def(o, "type", json!("Opaque"));
            // stringData is write-only: fold it into data.
            if let Some(Value::Object(sd)) = o.remove("stringData") {
                use base64::Engine;
                let data = child(o, "data");
                for (k, v) in sd {
                    let s = v.as_str().unwrap_or_default();
                    data.insert(
                        k,
                        json!(base64::engine::general_purpose::STANDARD.encode(s)),
                    );
                }
            }
        }
        "EndpointSlice" => {
            for p in each(o, "ports") {
                def(p, "protocol", json!("TCP"));
                def(p, "name", json!(""));
            }
        }
        _ => {}
    }
}

fn job_spec(spec: &mut Map<String, Value>, name: &str, uid: &str) {
    if spec.get("completions").is_none() && spec.get("parallelism").is_none() {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    def(spec, "parallelism", json!(1));
    def(spec, "backoffLimit", json!(6));
    def(spec, "completionMode", json!("NonIndexed"));
    def(spec, "suspend", json!(false));
    def(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    // Without manualSelector the Job owns its pods by its uid, as Kubernetes does.
    if spec.get("manualSelector").and_then(Value::as_bool) != Some(true) && !uid.is_empty() {
        let labels = json!({
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        });
        if spec.get("selector").is_none() {
            spec.insert(
                "selector".into(),
                json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
            );
        }
        let tl = child(child(child(spec, "template"), "metadata"), "labels");
        for (k, v) in labels.as_object().expect("literal object") {
            tl.entry(k.clone()).or_insert(v.clone());
        }
    }
    template(spec);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_defaults() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "nginx:1.27", "readinessProbe": {"httpGet": {"port": 80}}}]}});
        apply("Pod", &mut p);
        let cs = &p["spec"]["containers"];
        assert_eq!(cs[0]["imagePullPolicy"], "Always");
        assert_eq!(cs[1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(cs[0]["ports"][0]["protocol"], "TCP");
        assert_eq!(cs[1]["readinessProbe"]["periodSeconds"], 10);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["tolerations"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn job_gets_selector_from_uid() {
        let mut j = json!({"metadata": {"name": "j", "uid": "u1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}});
        apply("Job", &mut j);
        assert_eq!(
            j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u1"
        );
        assert_eq!(j["spec"]["template"]["metadata"]["labels"]["job-name"], "j");
        assert_eq!(j["spec"]["completions"], 1);
    }

    #[test]
    fn qos() {
        assert_eq!(
            qos_class(&json!({"containers": [{"name": "a"}]})),
            "BestEffort"
        );
        assert_eq!(
            qos_class(
                &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})),
            "Burstable"
        );
    }

    #[test]
    fn secret_string_data_folds_into_data() {
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}});
        apply("Secret", &mut s);
        assert_eq!(s["data"]["k"], "dg==");
        assert!(s.get("stringData").is_none());
        assert_eq!(s["type"], "Opaque");
    }
}
