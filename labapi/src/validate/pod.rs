//! Pod specs, for Pods and for the templates of Deployments and ReplicaSets
//! (`pkg/apis/core/validation`: `ValidatePodSpec`, `validateContainers`, ...).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{meta, names, str_at};
use crate::field::Cause;

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// A pod template: its labels and annotations, then its spec.
pub(crate) fn pod_template(template: &Value, path: &str) -> Vec<Cause> {
    let meta_value = template.get("metadata").unwrap_or(&Value::Null);
    let mut causes = meta::labels(meta_value.get("labels"), &format!("{path}.metadata.labels"));
    causes.extend(meta::annotations(
        meta_value.get("annotations"),
        &format!("{path}.metadata.annotations"),
    ));
    causes.extend(pod_spec(
        template.get("spec").unwrap_or(&Value::Null),
        &format!("{path}.spec"),
    ));
    causes
}

/// `ValidatePodSpec`, for what the lab's Pods use.
pub(crate) fn pod_spec(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut seen = BTreeSet::new();
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        causes.push(Cause::required(format!("{path}.containers"), ""));
    }
    for list in ["containers", "initContainers"] {
        let items = spec.get(list).and_then(Value::as_array);
        for (i, c) in items.into_iter().flatten().enumerate() {
            let c_path = format!("{path}.{list}[{i}]");
            causes.extend(container(c, &c_path));
            let name = str_at(c, "name");
            if !seen.insert(name.to_string()) {
                causes.push(Cause::duplicate(format!("{c_path}.name"), &json!(name)));
            }
        }
    }
    causes.extend(one_of(
        spec,
        "restartPolicy",
        path,
        &["Always", "OnFailure", "Never"],
        "",
    ));
    causes.extend(one_of(
        spec,
        "dnsPolicy",
        path,
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        "",
    ));
    causes
}

/// A string field that must be one of `supported`; empty is `Required value`.
fn one_of(
    obj: &Value,
    key: &str,
    path: &str,
    supported: &[&str],
    required_detail: &str,
) -> Option<Cause> {
    let value = str_at(obj, key);
    let field = format!("{path}.{key}");
    if value.is_empty() {
        Some(Cause::required(field, required_detail))
    } else if !supported.contains(&value) {
        Some(Cause::not_supported(field, &json!(value), supported))
    } else {
        None
    }
}

fn container(c: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = str_at(c, "name");
    if name.is_empty() {
        causes.push(Cause::required(format!("{path}.name"), ""));
    } else {
        for msg in names::dns1123_label(name) {
            causes.push(Cause::invalid(format!("{path}.name"), &json!(name), msg));
        }
    }
    if str_at(c, "image").is_empty() {
        causes.push(Cause::required(format!("{path}.image"), ""));
    }
    causes.extend(container_ports(c, path));
    let env = c.get("env").and_then(Value::as_array);
    for (i, var) in env.into_iter().flatten().enumerate() {
        if str_at(var, "name").is_empty() {
            causes.push(Cause::required(format!("{path}.env[{i}].name"), ""));
        }
    }
    causes.extend(one_of(
        c,
        "imagePullPolicy",
        path,
        &["Always", "IfNotPresent", "Never"],
        "",
    ));
    causes.extend(one_of(
        c,
        "terminationMessagePolicy",
        path,
        &["File", "FallbackToLogsOnError"],
        "must be 'File' or 'FallbackToLogsOnError'",
    ));
    causes
}

/// `validateContainerPorts`.
fn container_ports(c: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut seen = BTreeSet::new();
    let ports = c.get("ports").and_then(Value::as_array);
    for (i, port) in ports.into_iter().flatten().enumerate() {
        let p_path = format!("{path}.ports[{i}]");
        let name = str_at(port, "name");
        if !name.is_empty() {
            let msgs = names::port_name(name);
            if !msgs.is_empty() {
                for msg in msgs {
                    causes.push(Cause::invalid(format!("{p_path}.name"), &json!(name), msg));
                }
            } else if !seen.insert(name.to_string()) {
                causes.push(Cause::duplicate(format!("{p_path}.name"), &json!(name)));
            }
        }
        match port.get("containerPort").and_then(Value::as_i64) {
            None | Some(0) => causes.push(Cause::required(format!("{p_path}.containerPort"), "")),
            Some(n) => {
                for msg in names::port_number(n) {
                    causes.push(Cause::invalid(
                        format!("{p_path}.containerPort"),
                        &json!(n),
                        msg,
                    ));
                }
            }
        }
        if let Some(n) = port
            .get("hostPort")
            .and_then(Value::as_i64)
            .filter(|n| *n != 0)
        {
            for msg in names::port_number(n) {
                causes.push(Cause::invalid(format!("{p_path}.hostPort"), &json!(n), msg));
            }
        }
        causes.extend(one_of(port, "protocol", &p_path, PROTOCOLS, ""));
    }
    causes
}
