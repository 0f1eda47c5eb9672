//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and Kubernetes'
//! strategic merge patch, applied to an object the way kube-apiserver applies them.
//!
//! Server-side apply (`application/apply-patch+yaml`) is not served: it needs managed
//! fields, which the lab does not keep, so it is answered 415 like any unknown type and
//! kubectl falls back to client-side apply.

mod list_strategy;
mod strategic;

use serde_json::Value;

use crate::resource::Kind;
use crate::status::ApiError;

pub use list_strategy::{ListStrategy, list_strategy};

/// The patch formats the server takes, named by the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`: a list of RFC 6902 operations.
    Json,
    /// `application/merge-patch+json`: an RFC 7386 merge document.
    Merge,
    /// `application/strategic-merge-patch+json`: a merge document that merges lists by key.
    StrategicMerge,
}

impl PatchType {
    /// The patch type of a `Content-Type` header value; parameters after `;` are ignored.
    ///
    /// Anything else, server-side apply included, is 415 Unsupported Media Type.
    pub fn from_content_type(content_type: &str) -> Result<PatchType, ApiError> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::StrategicMerge),
            _ => Err(ApiError::unsupported_media_type(content_type)),
        }
    }

    /// The media type this patch type is sent as.
    pub fn content_type(self) -> &'static str {
        match self {
            PatchType::Json => "application/json-patch+json",
            PatchType::Merge => "application/merge-patch+json",
            PatchType::StrategicMerge => "application/strategic-merge-patch+json",
        }
    }
}

/// Applies `patch` to `target`, an object of `kind`, and returns the patched object.
///
/// Errors follow kube-apiserver:
/// - a body that is not JSON of the right shape is 400 BadRequest, with serde_json's text;
/// - a JSON patch operation that cannot be applied (a failed `test`, a missing path) is
///   422 Invalid, which kube-apiserver words "the server rejected our request due to an
///   error in our request"; the operation's own error follows so the user sees which one;
/// - a strategic merge patch the merge rules reject (a list entry without its merge key, a
///   `$setElementOrder` list that contradicts the patch) is 400 BadRequest.
///
/// The result is always a JSON object; a patch that would turn the object into anything
/// else is 400 BadRequest.
pub fn apply_patch(
    kind: Kind,
    target: &Value,
    patch_type: PatchType,
    patch: &[u8],
) -> Result<Value, ApiError> {
    let patched = match patch_type {
        PatchType::Json => json_patch(target, patch)?,
        PatchType::Merge => merge_patch(target, patch)?,
        PatchType::StrategicMerge => {
            let patch = parse_object(patch, "strategic merge patch")?;
            strategic::apply(kind, target, &patch)?
        }
    };
    if !patched.is_object() {
        return Err(ApiError::bad_request(format!(
            "the patched object is not a JSON object: {}",
            json_kind(&patched)
        )));
    }
    Ok(patched)
}

fn json_patch(target: &Value, body: &[u8]) -> Result<Value, ApiError> {
    let ops: json_patch::Patch = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    let mut doc = target.clone();
    json_patch::patch(&mut doc, &ops).map_err(|e| ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("the server rejected our request due to an error in our request: {e}"),
        details: None,
    })?;
    Ok(doc)
}

fn merge_patch(target: &Value, body: &[u8]) -> Result<Value, ApiError> {
    // RFC 7386 lets a non-object patch replace the whole document, which for an API
    // object can only produce garbage, so only objects are taken.
    let patch = parse_object(body, "merge patch")?;
    let mut doc = target.clone();
    json_patch::merge(&mut doc, &patch);
    Ok(doc)
}

fn parse_object(body: &[u8], what: &str) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid {what}: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(format!(
            "invalid {what}: expected a JSON object, got {}",
            json_kind(&value)
        )));
    }
    Ok(value)
}

/// A JSON type's name for messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
