//! Decoding of `application/vnd.kubernetes.protobuf` request bodies.
//!
//! kubectl 1.32 sends protobuf for every `kubectl create <generator>`. The
//! body is `k8s\0` + `runtime.Unknown{typeMeta, raw}`, where `raw` is the
//! gogo-protobuf encoding of the object. Rather than compile all of
//! k8s.io/api, a schema table names each field of the messages those
//! generators send, and the decoder turns them into the JSON form the rest of
//! the server handles. A field outside the table is an error naming the
//! message and field number, never silently dropped.

use base64::Engine;
use serde_json::{Map, Value, json};
use weft_api::Status;

pub const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, Copy)]
enum T {
    /// A string; empty strings are dropped (Go's omitempty).
    Str,
    /// bool / int32 / int64 that Go holds by pointer: kept even when zero.
    Bool,
    Int,
    /// bool / integer that Go holds by value with omitempty: dropped when zero.
    BoolOmit,
    IntOmit,
    Msg(&'static str),
    /// A Go struct embedded inline: its fields land in the parent object.
    Inline(&'static str),
    MapStr,
    MapBytes,
    MapQuantity,
    Time,
    Quantity,
    IntOrString,
    /// Known, and ignored on purpose (status on create is reset anyway).
    Skip,
}

struct F(u32, &'static str, T, bool);

const R: bool = true; // repeated
const S: bool = false; // singular

fn schema(msg: &str) -> Option<&'static [F]> {
    use T::*;
    Some(match msg {
        "ObjectMeta" => &[
            F(1, "name", Str, S),
            F(2, "generateName", Str, S),
            F(3, "namespace", Str, S),
            F(4, "selfLink", Skip, S),
            F(5, "uid", Str, S),
            F(6, "resourceVersion", Str, S),
            F(7, "generation", IntOmit, S),
            F(8, "creationTimestamp", Time, S),
            F(9, "deletionTimestamp", Time, S),
            F(10, "deletionGracePeriodSeconds", Int, S),
            F(11, "labels", MapStr, S),
            F(12, "annotations", MapStr, S),
            F(13, "ownerReferences", Msg("OwnerReference"), R),
            F(14, "finalizers", Str, R),
            F(17, "managedFields", Skip, R),
        ],
        "OwnerReference" => &[
            F(1, "kind", Str, S),
            F(3, "name", Str, S),
            F(4, "uid", Str, S),
            F(5, "apiVersion", Str, S),
            F(6, "controller", Bool, S),
            F(7, "blockOwnerDeletion", Bool, S),
        ],
        "ConfigMap" => &[
            F(1, "metadata", Msg("ObjectMeta"), S),
            F(2, "data", MapStr, S),
            F(3, "binaryData", MapBytes, S),
            F(4, "immutable", Bool, S),
        ],
        "Secret" => &[
            F(1, "metadata", Msg("ObjectMeta"), S),
            F(2, "data", MapBytes, S),
            F(3, "type", Str, S),
            F(4, "stringData", MapStr, S),
            F(5, "immutable", Bool, S),
        ],
        "Namespace" => &[
            F(1, "metadata", Msg("ObjectMeta"), S),
            F(2, "spec", Msg("NamespaceSpec"), S),
            F(3, "status", Skip, S),
        ],
        "NamespaceSpec" => &[F(1, "finalizers", Str, R)],
        "ServiceAccount" => &[
            F(1, "metadata", Msg("ObjectMeta"), S),
            F(2, "secrets", Msg("ObjectReference"), R),
            F(3, "imagePullSecrets", Msg("LocalObjectReference"), R),
            F(4, "automountServiceAccountToken", Bool, S),
        ],
        "ObjectReference" => &[
            F(1, "kind", Str, S),
            F(2, "namespace", Str, S),
            F(3, "name", Str, S),
            F(4, "uid", Str, S),
            F(5, "apiVersion", Str, S),
            F(6, "resourceVersion", Str, S),
            F(7, "fieldPath", Str, S),
        ],
        "LocalObjectReference" => &[F(1, "name", Str, S)],
        "Deployment" => &[
            F(1, "metadata", Msg("ObjectMeta"), S),
            F(2, "spec", Msg("DeploymentSpec"), S),
            F(3, "status", Skip, S),
        ],
        "DeploymentSpec" => &[
            F(1, "replicas", Int, S),
            F(2, "selector", Msg("LabelSelector"), S),
            F(3, "template", Msg("PodTemplateSpec"), S),
            F(4, "strategy", Msg("DeploymentStrategy"), S),
            F(5, "minReadySeconds", IntOmit, S),
            F(6, "revisionHistoryLimit", Int, S),
            F(7, "paused", BoolOmit, S),
            F(9, "progressDeadlineSeconds", Int, S),
        ],
        "DeploymentStrategy" => &[
            F(1, "type", Str, S),
            F(2, "rollingUpdate", Msg("RollingUpdateDeployment"), S),
        ],
        "RollingUpdateDeployment" => &[
            F(1, "maxUnavailable", IntOrString, S),
            F(2, "maxSurge", IntOrString, S),
        ],
        "LabelSelector" => &[
            F(1, "matchLabels", MapStr, S),
            F(2, "matchExpressions", Msg("LabelSelectorRequirement"), R),
        ],
        "LabelSelectorRequirement" => &[
            F(1, "key", Str, S),
            F(2, "operator", Str, S),
            F(3, "values", Str, R),
        ],
        "PodTemplateSpec" => &[
            F(1, "metadata", Msg("ObjectMeta"), S),
            F(2, "spec", Msg("PodSpec"), S),
        ],
        "PodSpec" => &[
            F(1, "volumes", Msg("Volume"), R),
            F(2, "containers", Msg("Container"), R),
            F(3, "restartPolicy", Str, S),
            F(4, "terminationGracePeriodSeconds", Int, S),
            F(5, "activeDeadlineSeconds", Int, S),
            F(6, "dnsPolicy", Str, S),
            F(7, "nodeSelector", MapStr, S),
            F(8, "serviceAccountName", Str, S),
            F(9, "serviceAccount", Str, S),
            F(10, "nodeName", Str, S),
            F(11, "hostNetwork", BoolOmit, S),
            F(12, "hostPID", BoolOmit, S),
            F(13, "hostIPC", BoolOmit, S),
            F(14, "securityContext", Msg("PodSecurityContext"), S),
            F(15, "imagePullSecrets", Msg("LocalObjectReference"), R),
            F(16, "hostname", Str, S),
            F(17, "subdomain", Str, S),
            F(19, "schedulerName", Str, S),
            F(20, "initContainers", Msg("Container"), R),
            F(21, "automountServiceAccountToken", Bool, S),
            F(22, "tolerations", Msg("Toleration"), R),
            F(24, "priorityClassName", Str, S),
            F(25, "priority", Int, S),
            F(29, "runtimeClassName", Str, S),
            F(30, "enableServiceLinks", Bool, S),
            F(31, "preemptionPolicy", Str, S),
        ],
        "PodSecurityContext" => &[
            F(2, "runAsUser", Int, S),
            F(3, "runAsNonRoot", Bool, S),
            F(4, "supplementalGroups", Int, R),
            F(5, "fsGroup", Int, S),
            F(6, "runAsGroup", Int, S),
        ],
        "Container" => &[
            F(1, "name", Str, S),
            F(2, "image", Str, S),
            F(3, "command", Str, R),
            F(4, "args", Str, R),
            F(5, "workingDir", Str, S),
            F(6, "ports", Msg("ContainerPort"), R),
            F(7, "env", Msg("EnvVar"), R),
            F(8, "resources", Msg("ResourceRequirements"), S),
            F(9, "volumeMounts", Msg("VolumeMount"), R),
            F(10, "livenessProbe", Msg("Probe"), S),
            F(11, "readinessProbe", Msg("Probe"), S),
            F(13, "terminationMessagePath", Str, S),
            F(14, "imagePullPolicy", Str, S),
            F(15, "securityContext", Msg("SecurityContext"), S),
            F(16, "stdin", BoolOmit, S),
            F(17, "stdinOnce", BoolOmit, S),
            F(18, "tty", BoolOmit, S),
            F(19, "envFrom", Msg("EnvFromSource"), R),
            F(20, "terminationMessagePolicy", Str, S),
            F(22, "startupProbe", Msg("Probe"), S),
        ],
        "ContainerPort" => &[
            F(1, "name", Str, S),
            F(2, "hostPort", IntOmit, S),
            F(3, "containerPort", Int, S),
            F(4, "protocol", Str, S),
            F(5, "hostIP", Str, S),
        ],
        "EnvVar" => &[
            F(1, "name", Str, S),
            F(2, "value", Str, S),
            F(3, "valueFrom", Msg("EnvVarSource"), S),
        ],
        "EnvVarSource" => &[
            F(1, "fieldRef", Msg("ObjectFieldSelector"), S),
            F(3, "configMapKeyRef", Msg("ConfigMapKeySelector"), S),
            F(4, "secretKeyRef", Msg("SecretKeySelector"), S),
        ],
        "ObjectFieldSelector" => &[F(1, "apiVersion", Str, S), F(2, "fieldPath", Str, S)],
        "ConfigMapKeySelector" | "SecretKeySelector" => &[
            F(1, "", Inline("LocalObjectReference"), S),
            F(2, "key", Str, S),
            F(3, "optional", Bool, S),
        ],
        "EnvFromSource" => &[
            F(1, "prefix", Str, S),
            F(2, "configMapRef", Msg("ConfigMapEnvSource"), S),
            F(3, "secretRef", Msg("SecretEnvSource"), S),
        ],
        "ConfigMapEnvSource" | "SecretEnvSource" => &[
            F(1, "", Inline("LocalObjectReference"), S),
            F(2, "optional", Bool, S),
        ],
        "ResourceRequirements" => &[
            F(1, "limits", MapQuantity, S),
            F(2, "requests", MapQuantity, S),
        ],
        "VolumeMount" => &[
            F(1, "name", Str, S),
            F(2, "readOnly", BoolOmit, S),
            F(3, "mountPath", Str, S),
            F(4, "subPath", Str, S),
            F(5, "mountPropagation", Str, S),
            F(6, "subPathExpr", Str, S),
            F(7, "recursiveReadOnly", Str, S),
        ],
        "Volume" => &[F(1, "name", Str, S), F(2, "", Inline("VolumeSource"), S)],
        "VolumeSource" => &[
            F(2, "emptyDir", Msg("EmptyDirVolumeSource"), S),
            F(6, "secret", Msg("SecretVolumeSource"), S),
            F(19, "configMap", Msg("ConfigMapVolumeSource"), S),
        ],
        "EmptyDirVolumeSource" => &[F(1, "medium", Str, S), F(2, "sizeLimit", Quantity, S)],
        "SecretVolumeSource" => &[
            F(1, "secretName", Str, S),
            F(2, "items", Msg("KeyToPath"), R),
            F(3, "defaultMode", Int, S),
            F(4, "optional", Bool, S),
        ],
        "ConfigMapVolumeSource" => &[
            F(1, "", Inline("LocalObjectReference"), S),
            F(2, "items", Msg("KeyToPath"), R),
            F(3, "defaultMode", Int, S),
            F(4, "optional", Bool, S),
        ],
        "KeyToPath" => &[
            F(1, "key", Str, S),
            F(2, "path", Str, S),
            F(3, "mode", Int, S),
        ],
        "Probe" => &[
            F(1, "", Inline("ProbeHandler"), S),
            F(2, "initialDelaySeconds", IntOmit, S),
            F(3, "timeoutSeconds", IntOmit, S),
            F(4, "periodSeconds", IntOmit, S),
            F(5, "successThreshold", IntOmit, S),
            F(6, "failureThreshold", IntOmit, S),
            F(7, "terminationGracePeriodSeconds", Int, S),
        ],
        "ProbeHandler" => &[
            F(1, "exec", Msg("ExecAction"), S),
            F(2, "httpGet", Msg("HTTPGetAction"), S),
            F(3, "tcpSocket", Msg("TCPSocketAction"), S),
        ],
        "ExecAction" => &[F(1, "command", Str, R)],
        "HTTPGetAction" => &[
            F(1, "path", Str, S),
            F(2, "port", IntOrString, S),
            F(3, "host", Str, S),
            F(4, "scheme", Str, S),
        ],
        "TCPSocketAction" => &[F(1, "port", IntOrString, S), F(2, "host", Str, S)],
        "SecurityContext" => &[
            F(1, "capabilities", Msg("Capabilities"), S),
            F(2, "privileged", Bool, S),
            F(4, "runAsUser", Int, S),
            F(5, "runAsNonRoot", Bool, S),
            F(6, "readOnlyRootFilesystem", Bool, S),
            F(7, "allowPrivilegeEscalation", Bool, S),
            F(8, "runAsGroup", Int, S),
        ],
        "Capabilities" => &[F(1, "add", Str, R), F(2, "drop", Str, R)],
        "Toleration" => &[
            F(1, "key", Str, S),
            F(2, "operator", Str, S),
            F(3, "value", Str, S),
            F(4, "effect", Str, S),
            F(5, "tolerationSeconds", Int, S),
        ],
        "Service" => &[
            F(1, "metadata", Msg("ObjectMeta"), S),
            F(2, "spec", Msg("ServiceSpec"), S),
            F(3, "status", Skip, S),
        ],
        "ServiceSpec" => &[
            F(1, "ports", Msg("ServicePort"), R),
            F(2, "selector", MapStr, S),
            F(3, "clusterIP", Str, S),
            F(4, "type", Str, S),
            F(5, "externalIPs", Str, R),
            F(7, "sessionAffinity", Str, S),
            F(8, "loadBalancerIP", Str, S),
            F(9, "loadBalancerSourceRanges", Str, R),
            F(10, "externalName", Str, S),
            F(11, "externalTrafficPolicy", Str, S),
            F(12, "healthCheckNodePort", IntOmit, S),
            F(13, "publishNotReadyAddresses", BoolOmit, S),
            F(17, "ipFamilyPolicy", Str, S),
            F(18, "clusterIPs", Str, R),
            F(19, "ipFamilies", Str, R),
            F(20, "allocateLoadBalancerNodePorts", Bool, S),
            F(21, "loadBalancerClass", Str, S),
            F(22, "internalTrafficPolicy", Str, S),
            F(23, "trafficDistribution", Str, S),
        ],
        "ServicePort" => &[
            F(1, "name", Str, S),
            F(2, "protocol", Str, S),
            F(3, "port", Int, S),
            F(4, "targetPort", IntOrString, S),
            F(5, "nodePort", IntOmit, S),
            F(6, "appProtocol", Str, S),
        ],
        "Job" => &[
            F(1, "metadata", Msg("ObjectMeta"), S),
            F(2, "spec", Msg("JobSpec"), S),
            F(3, "status", Skip, S),
        ],
        "JobSpec" => &[
            F(1, "parallelism", Int, S),
            F(2, "completions", Int, S),
            F(3, "activeDeadlineSeconds", Int, S),
            F(4, "selector", Msg("LabelSelector"), S),
            F(5, "manualSelector", Bool, S),
            F(6, "template", Msg("PodTemplateSpec"), S),
            F(7, "backoffLimit", Int, S),
            F(8, "ttlSecondsAfterFinished", Int, S),
            F(9, "completionMode", Str, S),
            F(10, "suspend", Bool, S),
            F(14, "podReplacementPolicy", Str, S),
            F(15, "managedBy", Str, S),
        ],
        "CronJob" => &[
            F(1, "metadata", Msg("ObjectMeta"), S),
            F(2, "spec", Msg("CronJobSpec"), S),
            F(3, "status", Skip, S),
        ],
        "CronJobSpec" => &[
            F(1, "schedule", Str, S),
            F(2, "startingDeadlineSeconds", Int, S),
            F(3, "concurrencyPolicy", Str, S),
            F(4, "suspend", Bool, S),
            F(5, "jobTemplate", Msg("JobTemplateSpec"), S),
            F(6, "successfulJobsHistoryLimit", Int, S),
            F(7, "failedJobsHistoryLimit", Int, S),
            F(8, "timeZone", Str, S),
        ],
        "JobTemplateSpec" => &[
            F(1, "metadata", Msg("ObjectMeta"), S),
            F(2, "spec", Msg("JobSpec"), S),
        ],
        _ => return None,
    })
}

fn err(msg: impl std::fmt::Display) -> Status {
    Status::new(
        415,
        "UnsupportedMediaType",
        format!("unable to decode protobuf body: {msg}"),
    )
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, Status> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| err("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(err("varint too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Status> {
        let len = self.varint()? as usize;
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| err("truncated field"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn skip(&mut self, wire: u64) -> Result<(), Status> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            w => Err(err(format!("unsupported wire type {w}"))),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), Status> {
        if self.pos + n > self.buf.len() {
            return Err(err("truncated field"));
        }
        self.pos += n;
        Ok(())
    }
}

fn utf8(b: &[u8]) -> Result<String, Status> {
    String::from_utf8(b.to_vec()).map_err(|_| err("string field is not UTF-8"))
}

/// Decodes a map entry message {1: key, 2: value}.
fn map_entry(
    b: &[u8],
    value: impl Fn(&[u8]) -> Result<Value, Status>,
) -> Result<(String, Value), Status> {
    let mut r = Reader { buf: b, pos: 0 };
    let (mut k, mut v) = (String::new(), Value::Null);
    while !r.done() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => k = utf8(r.bytes()?)?,
            (2, 2) => v = value(r.bytes()?)?,
            (_, w) => r.skip(w)?,
        }
    }
    if v.is_null() {
        v = value(&[])?;
    }
    Ok((k, v))
}

fn scalar_message(msg: &str, b: &[u8]) -> Result<Value, Status> {
    let mut r = Reader { buf: b, pos: 0 };
    let mut fields: [Option<u64>; 4] = [None; 4];
    let mut text = String::new();
    while !r.done() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (n @ 1..=3, 0) => fields[n as usize] = Some(r.varint()?),
            (n @ 1..=3, 2) => {
                text = utf8(r.bytes()?)?;
                fields[n as usize] = Some(0);
            }
            (_, w) => r.skip(w)?,
        }
    }
    Ok(match msg {
        "Time" => match fields[1] {
            Some(secs) if secs != 0 => {
                let ts = jiff::Timestamp::from_second(secs as i64).map_err(err)?;
                json!(weft_cluster::time::ts(ts))
            }
            _ => Value::Null,
        },
        "Quantity" => json!(text),
        // IntOrString: type 0 = int (field 2), 1 = string (field 3).
        _ => {
            if fields[1] == Some(1) {
                json!(text)
            } else {
                json!(fields[2].unwrap_or(0) as i32)
            }
        }
    })
}

fn decode_message(msg: &str, b: &[u8], out: &mut Map<String, Value>) -> Result<(), Status> {
    let fields = schema(msg).ok_or_else(|| err(format!("message {msg} is not supported")))?;
    let mut r = Reader { buf: b, pos: 0 };
    let b64 = base64::engine::general_purpose::STANDARD;
    while !r.done() {
        let tag = r.varint()?;
        let (num, wire) = (tag >> 3, tag & 7);
        let Some(F(_, name, ty, repeated)) = fields.iter().find(|f| u64::from(f.0) == num) else {
            return Err(err(format!(
                "field {num} of {msg} is not supported; send JSON instead"
            )));
        };
        let v = match (ty, wire) {
            (T::Skip, w) => {
                r.skip(w)?;
                continue;
            }
            (T::Str, 2) => json!(utf8(r.bytes()?)?),
            (T::Bool | T::BoolOmit, 0) => json!(r.varint()? != 0),
            (T::Int | T::IntOmit, 0) => json!(r.varint()? as i64),
            (T::Int | T::IntOmit, 2) if *repeated => {
                // packed repeated integers
                let mut p = Reader {
                    buf: r.bytes()?,
                    pos: 0,
                };
                let list = out.entry(name.to_string()).or_insert_with(|| json!([]));
                while !p.done() {
                    if let Value::Array(a) = list {
                        a.push(json!(p.varint()? as i64));
                    }
                }
                continue;
            }
            (T::Msg(m), 2) => {
                let mut child = Map::new();
                decode_message(m, r.bytes()?, &mut child)?;
                Value::Object(child)
            }
            (T::Inline(m), 2) => {
                decode_message(m, r.bytes()?, out)?;
                continue;
            }
            (T::MapStr | T::MapBytes | T::MapQuantity, 2) => {
                let (k, v) = map_entry(r.bytes()?, |vb| match ty {
                    T::MapStr => Ok(json!(utf8(vb)?)),
                    T::MapBytes => Ok(json!(b64.encode(vb))),
                    _ => scalar_message("Quantity", vb),
                })?;
                if let Value::Object(m) = out.entry(name.to_string()).or_insert_with(|| json!({})) {
                    m.insert(k, v);
                }
                continue;
            }
            (T::Time, 2) => scalar_message("Time", r.bytes()?)?,
            (T::Quantity, 2) => scalar_message("Quantity", r.bytes()?)?,
            (T::IntOrString, 2) => scalar_message("IntOrString", r.bytes()?)?,
            (_, w) => {
                return Err(err(format!(
                    "field {num} ({name}) of {msg} has unexpected wire type {w}"
                )));
            }
        };
        let keep = match (ty, &v) {
            (_, Value::Null) => false,
            (T::Str, Value::String(s)) => !s.is_empty() || *repeated,
            (T::BoolOmit, Value::Bool(b)) => *b,
            (T::IntOmit, n) => n.as_i64() != Some(0),
            _ => true,
        };
        if *repeated {
            if let Value::Array(a) = out.entry(name.to_string()).or_insert_with(|| json!([])) {
                a.push(v);
            }
        } else if keep {
            out.insert(name.to_string(), v);
        }
    }
    Ok(())
}

/// Decodes a protobuf body (with its `k8s\0` envelope) expected to hold `kind`.
pub fn decode(body: &[u8], api_version: &str, kind: &str) -> Result<Value, Status> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| err("missing the k8s\\0 envelope prefix"))?;
    let mut r = Reader { buf: rest, pos: 0 };
    let (mut av, mut k, mut raw) = (String::new(), String::new(), &[][..]);
    while !r.done() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => {
                let mut tm = Reader {
                    buf: r.bytes()?,
                    pos: 0,
                };
                while !tm.done() {
                    let t = tm.varint()?;
                    match (t >> 3, t & 7) {
                        (1, 2) => av = utf8(tm.bytes()?)?,
                        (2, 2) => k = utf8(tm.bytes()?)?,
                        (_, w) => tm.skip(w)?,
                    }
                }
            }
            (2, 2) => raw = r.bytes()?,
            (_, w) => r.skip(w)?,
        }
    }
    if !k.is_empty() && k != kind {
        return Err(Status::bad_request(format!(
            "the body holds a {k}, but the URL expects a {kind}"
        )));
    }
    let mut obj = Map::new();
    obj.insert(
        "apiVersion".into(),
        json!(if av.is_empty() {
            api_version
        } else {
            av.as_str()
        }),
    );
    obj.insert("kind".into(), json!(kind));
    decode_message(kind, raw, &mut obj)?;
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![((num << 3) | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    fn entry(k: &str, v: &str) -> Vec<u8> {
        [field(1, k.as_bytes()), field(2, v.as_bytes())].concat()
    }

    /// The bytes kubectl sends for `create configmap demo --from-literal=env=prod`.
    fn configmap_body() -> Vec<u8> {
        let meta = [
            field(1, b"demo"),
            field(2, b""),
            field(3, b""),
            field(8, b""),
        ]
        .concat();
        let cm = [field(1, &meta), field(2, &entry("env", "prod"))].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let unknown = [
            field(1, &type_meta),
            field(2, &cm),
            field(3, b""),
            field(4, b""),
        ]
        .concat();
        [MAGIC, &unknown].concat()
    }

    #[test]
    fn decodes_configmap_envelope() {
        let v = decode(&configmap_body(), "v1", "ConfigMap").unwrap();
        assert_eq!(v["kind"], "ConfigMap");
        assert_eq!(v["metadata"]["name"], "demo");
        assert!(
            v["metadata"].get("generateName").is_none(),
            "empty strings dropped"
        );
        assert!(
            v["metadata"].get("creationTimestamp").is_none(),
            "zero time dropped"
        );
        assert_eq!(v["data"]["env"], "prod");
    }

    #[test]
    fn rejects_wrong_kind_and_garbage() {
        assert_eq!(
            decode(&configmap_body(), "v1", "Secret").unwrap_err().code,
            400
        );
        assert_eq!(
            decode(b"not protobuf", "v1", "ConfigMap").unwrap_err().code,
            415
        );
        let mut truncated = configmap_body();
        truncated.truncate(truncated.len() - 12);
        assert!(decode(&truncated, "v1", "ConfigMap").is_err());
    }

    #[test]
    fn unknown_fields_are_named() {
        let cm = field(9, b"x");
        let unknown = [field(1, &[field(2, b"ConfigMap")].concat()), field(2, &cm)].concat();
        let e = decode(&[MAGIC, &unknown].concat(), "v1", "ConfigMap").unwrap_err();
        assert!(e.message.contains("field 9 of ConfigMap"), "{}", e.message);
    }
}
