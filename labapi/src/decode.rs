//! Request bodies into objects, as kube-apiserver's decoder turns them into typed objects.
//!
//! kube-apiserver decodes a body into the Go struct of the URL's kind, which drops every field
//! the struct does not know; `fieldValidation` decides whether such fields are an error
//! (`Strict`), a `Warning` header (`Warn`) or nothing (`Ignore`). Here the typed struct is
//! k8s-openapi's, and the object kept is the client's own JSON minus what the struct dropped,
//! so numbers, quantities and timestamps stay exactly as sent.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::field::Cause;
use crate::resource::{Kind, ResourceInfo};
use crate::status::ApiError;

/// The `fieldValidation` query parameter: what to do with fields the kind does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop unknown fields and report each as a warning (kube-apiserver's default).
    Warn,
    /// Reject the request with 400 BadRequest.
    Strict,
}

/// The values kube-apiserver accepts, sorted as its `Unsupported value` message lists them.
const DIRECTIVES: &[&str] = &["", "Ignore", "Strict", "Warn"];

impl FieldValidation {
    /// Reads the parameter of a create (`POST`). Absent or empty means `Warn`, as in
    /// kube-apiserver's `fieldValidation()`: kubectl only gets `Strict` because its
    /// `--validate` flag defaults to `strict` and it sends the parameter; `kubectl expose`
    /// sends none and so gets warnings.
    pub fn from_query(value: Option<&str>) -> Result<Self, ApiError> {
        Self::from_query_for(value, "CreateOptions")
    }

    /// Like [`FieldValidation::from_query`], naming the verb's options type in the error
    /// (`CreateOptions`, `UpdateOptions` or `PatchOptions`), because kube-apiserver reports a
    /// bad value as an invalid options object: `PatchOptions.meta.k8s.io "" is invalid: ...`.
    pub fn from_query_for(value: Option<&str>, options_kind: &str) -> Result<Self, ApiError> {
        match value.unwrap_or("") {
            "" | "Warn" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            "Strict" => Ok(FieldValidation::Strict),
            other => {
                let cause = Cause::not_supported("fieldValidation", &json!(other), DIRECTIVES);
                Err(ApiError {
                    code: 422,
                    reason: "Invalid",
                    message: format!("{options_kind}.meta.k8s.io \"\" is invalid: {cause}"),
                    details: Some(json!({
                        "name": "",
                        "group": "meta.k8s.io",
                        "kind": options_kind,
                        "causes": [{
                            "reason": cause.reason.as_str(),
                            "message": cause.message,
                            "field": cause.field,
                        }],
                    })),
                })
            }
        }
    }
}

/// Decodes `body` (JSON, or YAML when it is not JSON) into an object of `kind`.
///
/// Returns the object, with `apiVersion` and `kind` filled in from the URL when the body left
/// them out and with the fields the kind does not know removed, and the warnings to send as
/// `Warning: 299 - "<text>"` headers. Errors are 400 BadRequest in kube-apiserver's words.
pub fn decode(
    kind: Kind,
    body: &[u8],
    strictness: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let info = kind.info();
    let mut obj = parse(info, body)?;
    check_type(info, &mut obj)?;
    let typed = roundtrip(kind, &obj).map_err(|e| cannot_handle(info, &e.to_string()))?;
    let mut unknown = Vec::new();
    prune(&mut obj, &typed, "", &mut unknown);
    let unknown: Vec<String> = unknown
        .iter()
        .map(|path| format!("unknown field {path:?}"))
        .collect();
    match strictness {
        FieldValidation::Strict if !unknown.is_empty() => Err(cannot_handle(
            info,
            &format!("strict decoding error: {}", unknown.join(", ")),
        )),
        FieldValidation::Strict | FieldValidation::Ignore => Ok((obj, Vec::new())),
        FieldValidation::Warn => Ok((obj, unknown)),
    }
}

/// Reads a stored or decoded object as a k8s-openapi type.
///
/// A failure means the object is not of that type; it is worded like a decode error,
/// `Service in version "v1" cannot be handled as a Deployment: ...`.
pub fn typed<T: DeserializeOwned>(obj: &Value) -> Result<T, ApiError> {
    T::deserialize(obj).map_err(|e| {
        let target = std::any::type_name::<T>().rsplit("::").next().unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let version = api_version.rsplit('/').next().unwrap_or("");
        ApiError::bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {target}: {e}"
        ))
    })
}

/// `Deployment in version "v1" cannot be handled as a Deployment: <error>`: kube-apiserver's
/// `transformDecodeError` once the body's kind is known.
fn cannot_handle(info: &ResourceInfo, error: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{} in version {:?} cannot be handled as a {}: {error}",
        info.kind_name, info.version, info.kind_name
    ))
}

/// The other branch of `transformDecodeError`, for a body whose kind could not be read.
fn unrecognized(info: &ResourceInfo, error: &str, body: &[u8]) -> ApiError {
    ApiError::bad_request(format!(
        "the object provided is unrecognized (must be of type {}): {error} ({})",
        info.kind_name,
        summarize(body)
    ))
}

/// kube-apiserver's `summarizeData(body, 30)`: the start of a JSON object as text, anything
/// else in hex.
fn summarize(body: &[u8]) -> String {
    const MAX: usize = 30;
    let (head, more) = if body.len() > MAX {
        (&body[..MAX], " ...")
    } else {
        (body, "")
    };
    match body.first() {
        None => "<empty>".to_string(),
        Some(b'{') => format!("{}{more}", String::from_utf8_lossy(head)),
        Some(_) => {
            let hex: String = head.iter().map(|b| format!("{b:02x}")).collect();
            format!("{hex}{more}")
        }
    }
}

/// Parses the body into a JSON object. YAML is tried only when the body does not start like
/// JSON (`{` or `[`), so that a JSON syntax error is reported as one.
fn parse(info: &ResourceInfo, body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(unrecognized(
            info,
            "couldn't get version/kind; json parse error: unexpected end of JSON input",
            body,
        ));
    }
    let value = match serde_json::from_slice::<Value>(body) {
        Ok(v) => v,
        Err(json_err) => {
            let looks_json = body
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'{' || *b == b'[');
            if looks_json {
                return Err(unrecognized(
                    info,
                    &format!("couldn't get version/kind; json parse error: {json_err}"),
                    body,
                ));
            }
            serde_yaml::from_slice::<Value>(body)
                .map_err(|e| unrecognized(info, &format!("yaml: {e}"), body))?
        }
    };
    match value {
        Value::Object(_) => Ok(value),
        // Go decodes `null` into a struct as a no-op: an empty object of the URL's kind.
        Value::Null => Ok(Value::Object(Map::new())),
        other => Err(unrecognized(
            info,
            &format!(
                "couldn't get version/kind; json parse error: json: cannot unmarshal {} into Go value of type struct {{ APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }}",
                go_json_type(&other)
            ),
            body,
        )),
    }
}

fn go_json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks the body's `apiVersion` and `kind` against the URL's resource, filling in the
/// missing ones as kube-apiserver's decoder does from the request's default kind.
fn check_type(info: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
    let expected_version = info.api_version();
    let map = obj.as_object_mut().expect("parse returns objects");
    let text = |key: &str, default: &str| -> Result<String, ApiError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::String(s)) if s.is_empty() => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(unrecognized(
                info,
                &format!(
                    "couldn't get version/kind; json parse error: json: cannot unmarshal {} into Go struct field .{key} of type string",
                    go_json_type(other)
                ),
                // The body as parsed: close to the bytes sent, which this step no longer has.
                &serde_json::to_vec(&*map).unwrap_or_default(),
            )),
        }
    };
    let kind = text("kind", info.kind_name)?;
    let api_version = text("apiVersion", &expected_version)?;
    map.insert("kind".to_string(), json!(kind));
    map.insert("apiVersion".to_string(), json!(api_version));

    if kind == info.kind_name && api_version == expected_version {
        return Ok(());
    }
    if kind == info.kind_name {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({expected_version})"
        )));
    }
    let version = api_version.rsplit('/').next().unwrap_or("");
    let reason = match Kind::from_type(&api_version, &kind) {
        // The body decodes as another served kind, which then has no conversion to this one.
        Some(other) => format!(
            "converting ({}.{kind}) to ({}.{}): unknown conversion",
            other.info().version,
            internal_package(info),
            info.kind_name
        ),
        None => format!(
            "no kind {kind:?} is registered for version {api_version:?} in scheme \"pkg/api/legacyscheme/scheme.go:30\""
        ),
    };
    Err(ApiError::bad_request(format!(
        "{kind} in version {version:?} cannot be handled as a {}: {reason}",
        info.kind_name
    )))
}

/// The Go package of the internal type a kind converts to (`core.Service`, `apps.Deployment`).
fn internal_package(info: &ResourceInfo) -> &'static str {
    match info.group {
        "" => "core",
        "discovery.k8s.io" => "discovery",
        other => other,
    }
}

/// Deserializes into the kind's k8s-openapi struct and serializes back: what survives is what
/// the kind knows.
fn roundtrip(kind: Kind, obj: &Value) -> Result<Value, serde_json::Error> {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, discovery::v1 as discovery};
    fn via<T: DeserializeOwned + serde::Serialize>(
        obj: &Value,
    ) -> Result<Value, serde_json::Error> {
        serde_json::to_value(T::deserialize(obj)?)
    }
    match kind {
        Kind::Namespace => via::<core::Namespace>(obj),
        Kind::Node => via::<core::Node>(obj),
        Kind::Pod => via::<core::Pod>(obj),
        Kind::Service => via::<core::Service>(obj),
        Kind::Endpoints => via::<core::Endpoints>(obj),
        Kind::Event => via::<core::Event>(obj),
        Kind::EndpointSlice => via::<discovery::EndpointSlice>(obj),
        Kind::Deployment => via::<apps::Deployment>(obj),
        Kind::ReplicaSet => via::<apps::ReplicaSet>(obj),
    }
}

/// Removes from `input` every key the round-tripped `typed` lacks, recording the non-null
/// ones as unknown (`spec.template.spec.containers[0].imagee`).
///
/// Presence in the round trip is a sound test of "known" because k8s-openapi serializes every
/// field that is `Some`, empty maps and lists included, and a field it does not know is
/// skipped on deserialization. A `null` input value is not unknown: Go decodes it as unset.
/// Maps the struct keeps verbatim (labels, `fieldsV1`) come back whole, so their keys are
/// found too.
fn prune(input: &mut Value, typed: &Value, path: &str, unknown: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(fields), Value::Object(known)) => {
            fields.retain(|key, value| {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match known.get(key) {
                    Some(typed_value) => {
                        prune(value, typed_value, &child, unknown);
                        true
                    }
                    None => {
                        if !value.is_null() {
                            unknown.push(child);
                        }
                        false
                    }
                }
            });
        }
        (Value::Array(items), Value::Array(known)) => {
            for (i, (item, typed_item)) in items.iter_mut().zip(known).enumerate() {
                prune(item, typed_item, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
pub(crate) mod tests;
