//! metav1 `Status`: the one error shape every Kubernetes client understands.

use serde::{Deserialize, Serialize};

/// One field-level cause inside a `Status` (`details.causes[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

/// A Kubernetes `Status` failure. Library code returns this; the API server
/// serialises it as-is, so the code, reason and field reach the client intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct Status {
    pub code: u16,
    pub reason: String,
    pub message: String,
    /// Boxed: most errors carry none, and `Result<_, Status>` stays small.
    pub details: Option<Box<Details>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Details {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
    #[serde(
        default,
        rename = "retryAfterSeconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_after_seconds: Option<u32>,
}

impl Status {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Status {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, group: &str, kind: &str, name: &str) -> Self {
        self.details = Some(Box::new(Details {
            name: name.to_string(),
            group: group.to_string(),
            kind: kind.to_string(),
            ..Default::default()
        }));
        self
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Status::new(400, "BadRequest", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Status::new(401, "Unauthorized", "Unauthorized")
    }

    /// 404 NotFound for an object: `pods "nope" not found`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualified(group, resource);
        Status::new(404, "NotFound", format!("{qualified} \"{name}\" not found"))
            .with_details(group, resource, name)
    }

    /// 404 for a path that names no resource.
    pub fn no_route() -> Self {
        Status::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(verb: &str, what: &str) -> Self {
        Status::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource: {verb} {what}"
            ),
        )
    }

    /// 409 AlreadyExists.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualified(group, resource);
        Status::new(
            409,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
        )
        .with_details(group, resource, name)
    }

    /// 409 Conflict on a stale resourceVersion, worded as kube-apiserver words it.
    pub fn conflict(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualified(group, resource);
        Status::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {qualified} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(group, resource, name)
    }

    /// 410 Gone: a watch or list asked for a revision older than the history window.
    pub fn expired(message: impl Into<String>) -> Self {
        Status::new(410, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(limit: usize) -> Self {
        Status::new(
            413,
            "RequestEntityTooLarge",
            format!("request entity too large: limit is {limit} bytes"),
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Status::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"
            ),
        )
    }

    /// 422 Invalid, with one cause per offending field.
    pub fn invalid(kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let joined = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>();
        let summary = if joined.len() == 1 {
            joined[0].clone()
        } else {
            format!("[{}]", joined.join(", "))
        };
        let mut s = Status::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {summary}"),
        );
        s.details = Some(Box::new(Details {
            name: name.to_string(),
            kind: kind.to_string(),
            causes,
            ..Default::default()
        }));
        s
    }

    /// 500 InternalError. The message is generic: details go to the log, not the client.
    pub fn internal() -> Self {
        Status::new(
            500,
            "InternalError",
            "an internal error occurred; see the server log",
        )
    }

    /// 503 ServiceUnavailable, for errors a client should retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut s = Status::new(503, "ServiceUnavailable", message);
        s.details = Some(Box::new(Details {
            retry_after_seconds: Some(1),
            ..Default::default()
        }));
        s
    }

    /// The wire form: a `v1 Status` object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = serde_json::to_value(d).unwrap_or_default();
        }
        v
    }

    /// Parses a `Status` body (for clients).
    pub fn from_json(v: &serde_json::Value) -> Option<Status> {
        if v.get("kind")?.as_str()? != "Status" {
            return None;
        }
        Some(Status {
            code: v.get("code")?.as_u64()? as u16,
            reason: v
                .get("reason")
                .and_then(|r| r.as_str())
                .unwrap_or("")
                .into(),
            message: v
                .get("message")
                .and_then(|r| r.as_str())
                .unwrap_or("")
                .into(),
            details: v
                .get("details")
                .and_then(|d| serde_json::from_value(d.clone()).ok()),
        })
    }
}

impl Cause {
    pub fn new(reason: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause {
            reason: reason.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// `FieldValueInvalid`: `Invalid value: "x": why`.
    pub fn invalid_value(field: impl Into<String>, value: &str, why: &str) -> Self {
        Cause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {value:?}: {why}"),
        )
    }

    /// `FieldValueRequired`.
    pub fn required(field: impl Into<String>) -> Self {
        Cause::new("FieldValueRequired", field, "Required value")
    }
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_message_matches_kubernetes() {
        let s = Status::not_found("", "pods", "nope");
        assert_eq!(s.message, "pods \"nope\" not found");
        let v = s.to_json();
        assert_eq!(v["code"], 404);
        assert_eq!(v["details"]["kind"], "pods");
        assert_eq!(Status::from_json(&v), Some(s));
    }

    #[test]
    fn invalid_names_each_field() {
        let s = Status::invalid(
            "Pod",
            "x",
            vec![
                Cause::required("spec.containers"),
                Cause::invalid_value("metadata.name", "A", "bad"),
            ],
        );
        assert_eq!(s.code, 422);
        assert!(s.message.contains("spec.containers: Required value"));
        assert!(
            s.message
                .contains("metadata.name: Invalid value: \"A\": bad")
        );
    }
}
