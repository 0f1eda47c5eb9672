//! API errors as `metav1.Status` bodies, worded as kube-apiserver words them, so that kubectl
//! prints the familiar `Error from server (NotFound): services "x" not found`.

use serde_json::{Value, json};

use crate::field::Cause;
use crate::resource::ResourceInfo;

/// An API failure: HTTP code, Kubernetes reason, message and optional details.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `metav1.StatusReason` (`NotFound`, `Invalid`, ...).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `details` of the Status (name, group, kind, causes), when there are any.
    pub details: Option<Value>,
}

fn details(info: &ResourceInfo, name: &str) -> Value {
    let mut d = json!({ "name": name, "kind": info.plural });
    if !info.group.is_empty() {
        d["group"] = json!(info.group);
    }
    d
}

impl ApiError {
    /// 404: `services "x" not found`.
    pub fn not_found(info: &ResourceInfo, name: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} {name:?} not found", info.qualified_plural()),
            details: Some(details(info, name)),
        }
    }

    /// 404 for a namespace that does not exist (what kube-apiserver says on create).
    pub fn namespace_not_found(namespace: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("namespaces {namespace:?} not found"),
            details: Some(json!({ "name": namespace, "kind": "namespaces" })),
        }
    }

    /// 404 for a path the server does not serve.
    pub fn no_route() -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".to_string(),
            details: None,
        }
    }

    /// 409: `services "x" already exists`.
    pub fn already_exists(info: &ResourceInfo, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} {name:?} already exists", info.qualified_plural()),
            details: Some(details(info, name)),
        }
    }

    /// 409 on a stale `resourceVersion`, in kube-apiserver's wording.
    pub fn conflict(info: &ResourceInfo, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                info.qualified_plural()
            ),
            details: Some(details(info, name)),
        }
    }

    /// 422: `Service "bad" is invalid: <cause>` or `... is invalid: [<cause>, <cause>]`.
    pub fn invalid(info: &ResourceInfo, name: &str, causes: &[Cause]) -> Self {
        let body = match causes {
            [one] => one.to_string(),
            many => format!(
                "[{}]",
                many.iter()
                    .map(Cause::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({ "reason": c.reason.as_str(), "message": c.message, "field": c.field }))
            .collect();
        let mut d = json!({ "name": name, "kind": info.kind_name, "causes": causes });
        if !info.group.is_empty() {
            d["group"] = json!(info.group);
        }
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{} {name:?} is invalid: {body}", info.kind_name),
            details: Some(d),
        }
    }

    /// 400 with the given message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    /// 405 for a verb the resource does not allow.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: message.into(),
            details: None,
        }
    }

    /// 410 for a watch or list from a resourceVersion older than the server keeps.
    pub fn gone(requested: u64, oldest: u64) -> Self {
        ApiError {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {requested} ({oldest})"),
            details: None,
        }
    }

    /// 401 for a request without valid credentials.
    pub fn unauthorized() -> Self {
        ApiError {
            code: 401,
            reason: "Unauthorized",
            message: "Unauthorized".to_string(),
            details: None,
        }
    }

    /// 413 for a body over the limit.
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            code: 413,
            reason: "RequestEntityTooLarge",
            message: format!("Request entity too large: limit is {limit}"),
            details: None,
        }
    }

    /// 415 for a patch type the server does not take.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
            ),
            details: None,
        }
    }

    /// 500 for a failure inside the server (the store, a bug).
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            code: 500,
            reason: "InternalError",
            message: message.into(),
            details: None,
        }
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    #[test]
    fn messages_match_kube_apiserver() {
        let e = ApiError::not_found(Kind::Deployment.info(), "nosuch");
        assert_eq!(e.message, r#"deployments.apps "nosuch" not found"#);
        assert_eq!(e.to_status()["details"]["group"], "apps");
        let c = Cause::invalid(
            "spec.ports[0].port",
            &json!(70000),
            "must be between 1 and 65535, inclusive",
        );
        let e = ApiError::invalid(Kind::Service.info(), "bad", &[c]);
        assert_eq!(
            e.message,
            r#"Service "bad" is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"#
        );
        assert_eq!(
            e.to_status()["details"]["causes"][0]["reason"],
            "FieldValueInvalid"
        );
    }
}
