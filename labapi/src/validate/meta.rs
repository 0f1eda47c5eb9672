//! `metadata` and label selectors: apimachinery's `ValidateObjectMeta`, `ValidateLabels`,
//! `ValidateAnnotations` and `ValidateLabelSelector`.

use serde_json::{Map, Value, json};

use super::names::{self, NameFn};
use super::{gofmt, invalid_raw, str_at};
use crate::field::Cause;

/// kube-apiserver's limit on the summed length of an object's annotation keys and values.
const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// Validates `metadata`. A missing name is fine when `generateName` is set: the server
/// generates the name from it. The namespace is checked only when present, because the
/// server takes it from the URL and the caller fills it in.
pub(crate) fn object_meta(obj: &Value, name_fn: NameFn, namespaced: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let meta = obj.get("metadata").unwrap_or(&Value::Null);
    let generate_name = str_at(meta, "generateName");
    if !generate_name.is_empty() {
        for msg in name_fn(generate_name, true) {
            causes.push(Cause::invalid(
                "metadata.generateName",
                &json!(generate_name),
                msg,
            ));
        }
    }
    let name = str_at(meta, "name");
    if name.is_empty() {
        if generate_name.is_empty() {
            causes.push(Cause::required(
                "metadata.name",
                "name or generateName is required",
            ));
        }
    } else {
        for msg in name_fn(name, false) {
            causes.push(Cause::invalid("metadata.name", &json!(name), msg));
        }
    }
    let namespace = str_at(meta, "namespace");
    if namespaced && !namespace.is_empty() {
        for msg in names::name_is_dns_label(namespace, false) {
            causes.push(Cause::invalid("metadata.namespace", &json!(namespace), msg));
        }
    }
    causes.extend(labels(meta.get("labels"), "metadata.labels"));
    causes.extend(annotations(meta.get("annotations"), "metadata.annotations"));
    causes
}

/// `ValidateLabels`: every key a qualified name, every value a label value. The path is the
/// map's, not the key's, as in Kubernetes.
pub(crate) fn labels(labels: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    for (key, value) in labels.and_then(Value::as_object).into_iter().flatten() {
        for msg in names::qualified_name(key) {
            causes.push(Cause::invalid(path, &json!(key), msg));
        }
        let value = value.as_str().unwrap_or("");
        for msg in names::label_value(value) {
            causes.push(Cause::invalid(path, &json!(value), msg));
        }
    }
    causes
}

/// `ValidateAnnotations`: keys are qualified names in any case; the total size is capped.
pub(crate) fn annotations(annotations: Option<&Value>, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut size = 0;
    for (key, value) in annotations.and_then(Value::as_object).into_iter().flatten() {
        for msg in names::qualified_name(&key.to_lowercase()) {
            causes.push(Cause::invalid(path, &json!(key), msg));
        }
        size += key.len() + value.as_str().map_or(0, str::len);
    }
    if size > TOTAL_ANNOTATION_SIZE_LIMIT {
        causes.push(Cause::too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
    causes
}

/// `ValidateLabelSelector` (label values must be valid), plus the `invalid label selector`
/// that `LabelSelectorAsSelector` adds for the same faults.
pub(crate) fn label_selector(sel: &Value, path: &str) -> Vec<Cause> {
    let mut causes = labels(sel.get("matchLabels"), &format!("{path}.matchLabels"));
    let exprs = sel.get("matchExpressions").and_then(Value::as_array);
    for (i, req) in exprs.into_iter().flatten().enumerate() {
        let req_path = format!("{path}.matchExpressions[{i}]");
        let values = req.get("values").and_then(Value::as_array);
        let count = values.map_or(0, Vec::len);
        let operator = str_at(req, "operator");
        match operator {
            "In" | "NotIn" if count == 0 => causes.push(Cause::required(
                format!("{req_path}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if count > 0 => causes.push(Cause::forbidden(
                format!("{req_path}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            _ => causes.push(Cause::invalid(
                format!("{req_path}.operator"),
                &json!(operator),
                "not a valid selector operator",
            )),
        }
        let key = str_at(req, "key");
        for msg in names::qualified_name(key) {
            causes.push(Cause::invalid(format!("{req_path}.key"), &json!(key), msg));
        }
        for (j, value) in values.into_iter().flatten().enumerate() {
            let value = value.as_str().unwrap_or("");
            for msg in names::label_value(value) {
                causes.push(Cause::invalid(
                    format!("{req_path}.values[{j}]"),
                    &json!(value),
                    msg,
                ));
            }
        }
    }
    if !causes.is_empty() {
        causes.push(invalid_raw(
            path,
            gofmt::label_selector(sel),
            "invalid label selector",
        ));
    }
    causes
}

/// Whether a selector has no terms (and so, for workloads, selects nothing useful).
pub(crate) fn selector_is_empty(sel: &Value) -> bool {
    let len = |key: &str| {
        sel.get(key).map_or(0, |v| match v {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        })
    };
    len("matchLabels") + len("matchExpressions") == 0
}

/// Whether a valid selector selects an object with these labels.
pub(crate) fn selector_matches(sel: &Value, labels: &Map<String, Value>) -> bool {
    let match_labels = sel.get("matchLabels").and_then(Value::as_object);
    let labels_ok = match_labels
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs = sel.get("matchExpressions").and_then(Value::as_array);
    let exprs_ok = exprs.into_iter().flatten().all(|req| {
        let value = labels.get(str_at(req, "key")).and_then(Value::as_str);
        let values = req.get("values").and_then(Value::as_array);
        let listed = |v: &str| values.into_iter().flatten().any(|x| x.as_str() == Some(v));
        match str_at(req, "operator") {
            "In" => value.is_some_and(listed),
            "NotIn" => !value.is_some_and(listed),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}
