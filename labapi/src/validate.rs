//! Object validation in Kubernetes' own rules and words (`pkg/apis/*/validation` and
//! apimachinery's `validation.go`), run on an object after its defaults are applied.
//!
//! The result is a list of [`Cause`]s; [`crate::ApiError::invalid`] turns it into the 422
//! kubectl prints as `The Service "bad" is invalid: spec.ports[0].port: Invalid value: ...`.
//! Where Kubernetes prints a Go value (`map[string]string{"app":"x"}`), so do these messages.

mod apps;
mod discovery;
mod gofmt;
mod meta;
mod names;
mod net;
mod pod;
mod service;

use std::ops::RangeInclusive;

use serde_json::{Value, json};

use crate::field::{Cause, CauseReason};
use crate::resource::Kind;

/// kube-apiserver's default `--service-node-port-range`.
pub const DEFAULT_NODE_PORT_RANGE: RangeInclusive<u16> = 30000..=32767;

/// Checks a new object of `kind`. Expects defaults applied and the namespace (of namespaced
/// kinds) filled in from the URL; a missing name is allowed when `generateName` is set.
pub fn validate(kind: Kind, obj: &Value) -> Vec<Cause> {
    let info = kind.info();
    let name_fn: names::NameFn = match kind {
        Kind::Namespace => names::name_is_dns_label,
        Kind::Service => names::name_is_dns1035_label,
        _ => names::name_is_dns_subdomain,
    };
    let mut causes = meta::object_meta(obj, name_fn, info.namespaced);
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match kind {
        Kind::Pod => causes.extend(pod::pod_spec(spec, "spec")),
        Kind::Service => causes.extend(service::service_spec(spec)),
        Kind::EndpointSlice => causes.extend(discovery::endpoint_slice(obj)),
        Kind::Deployment => causes.extend(apps::deployment_spec(spec)),
        Kind::ReplicaSet => causes.extend(apps::replica_set_spec(spec)),
        Kind::Namespace | Kind::Node | Kind::Endpoints | Kind::Event => {}
    }
    causes
}

/// Checks an update from `old` to `new`: the fields that may not change once set, then
/// everything [`validate`] checks of `new`. A name or namespace change is the caller's to
/// refuse. An empty `clusterIP` in `new` counts as unchanged: the caller carries allocated
/// values over from `old`, as the real registry does before validating.
pub fn validate_update(kind: Kind, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = match kind {
        Kind::Service => service_ips_unchanged(old, new),
        Kind::Deployment | Kind::ReplicaSet => selector_unchanged(old, new),
        Kind::Pod => pod_spec_updates_allowed(old, new),
        _ => Vec::new(),
    };
    causes.extend(validate(kind, new));
    causes
}

/// `ValidatePodUpdate`: once a Pod exists, its spec may change only in its containers'
/// images, `activeDeadlineSeconds`, added tolerations and `terminationGracePeriodSeconds`.
fn pod_spec_updates_allowed(old: &Value, new: &Value) -> Vec<Cause> {
    let old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
    let mut changed = new.get("spec").cloned().unwrap_or(Value::Null);
    // Take back what may change; whatever differs after that may not.
    for list in ["containers", "initContainers"] {
        if let (Some(olds), Some(news)) = (
            old_spec.get(list).and_then(Value::as_array),
            changed.get_mut(list).and_then(Value::as_array_mut),
        ) && olds.len() == news.len()
        {
            for (o, n) in olds.iter().zip(news.iter_mut()) {
                match o.get("image") {
                    Some(image) => n["image"] = image.clone(),
                    None => {
                        n.as_object_mut().map(|c| c.remove("image"));
                    }
                }
            }
        }
    }
    let old_tolerations = old_spec.get("tolerations").and_then(Value::as_array);
    let added_only = match (
        old_tolerations,
        changed.get("tolerations").and_then(Value::as_array),
    ) {
        (Some(o), Some(n)) => n.starts_with(o),
        (None, _) => true,
        (Some(_), None) => false,
    };
    for field in [
        "activeDeadlineSeconds",
        "terminationGracePeriodSeconds",
        "tolerations",
    ] {
        if field == "tolerations" && !added_only {
            continue;
        }
        match old_spec.get(field) {
            Some(v) => changed[field] = v.clone(),
            None => {
                changed.as_object_mut().map(|s| s.remove(field));
            }
        }
    }
    if changed == old_spec {
        return Vec::new();
    }
    vec![Cause::forbidden(
        "spec",
        "pod updates may not change fields other than `spec.containers[*].image`,\
         `spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only \
         additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to \
         be set to 1 if it was previously negative)",
    )]
}

/// The range check kube-apiserver's node port allocator makes, in its words:
/// `provided port is not in the valid range. The range of valid ports is 30000-32767`.
/// `field` is the port's path, as in `spec.ports[0].nodePort`.
pub fn validate_node_port(
    field: &str,
    node_port: i64,
    range: &RangeInclusive<u16>,
) -> Option<Cause> {
    let (lo, hi) = (i64::from(*range.start()), i64::from(*range.end()));
    (!(lo..=hi).contains(&node_port)).then(|| {
        Cause::invalid(
            field,
            &json!(node_port),
            format!(
                "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
            ),
        )
    })
}

/// The allocator's refusal of a node port another Service holds.
pub fn node_port_allocated(field: &str, node_port: i64) -> Cause {
    Cause::invalid(
        field,
        &json!(node_port),
        "provided port is already allocated",
    )
}

/// `validateUpgradeDowngradeClusterIPs` for a single-stack cluster: an allocated cluster IP
/// stays.
fn service_ips_unchanged(old: &Value, new: &Value) -> Vec<Cause> {
    let spec = |o: &Value| o.get("spec").cloned().unwrap_or(Value::Null);
    let (old_spec, new_spec) = (spec(old), spec(new));
    let kind_of = |s: &Value| str_at(s, "type").to_string();
    if kind_of(&old_spec) == "ExternalName" || kind_of(&new_spec) == "ExternalName" {
        return Vec::new();
    }
    let ips = |s: &Value| -> Vec<String> {
        let list: Vec<String> = s
            .get("clusterIPs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let ip = str_at(s, "clusterIP");
        if list.is_empty() && !ip.is_empty() {
            vec![ip.to_string()]
        } else {
            list
        }
    };
    let (old_ips, new_ips) = (ips(&old_spec), ips(&new_spec));
    let headless = |ips: &[String]| ips.len() == 1 && ips[0] == "None";
    if headless(&old_ips) && headless(&new_ips) {
        return Vec::new();
    }
    let shown = gofmt::string_slice(Some(&json!(new_ips)));
    old_ips
        .iter()
        .zip(&new_ips)
        .enumerate()
        .filter(|(_, (o, n))| o != n)
        .map(|(i, _)| {
            invalid_raw(
                format!("spec.clusterIPs[{i}]"),
                shown.clone(),
                "may not change once set",
            )
        })
        .collect()
}

/// A workload's selector is immutable in `apps/v1`. Empty and absent parts compare equal, as
/// with Kubernetes' semantic equality.
fn selector_unchanged(old: &Value, new: &Value) -> Vec<Cause> {
    let selector = |o: &Value| -> Value {
        let mut sel = o.pointer("/spec/selector").cloned().unwrap_or(json!({}));
        if let Some(map) = sel.as_object_mut() {
            map.retain(|_, v| match v {
                Value::Object(m) => !m.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Null => false,
                _ => true,
            });
        }
        sel
    };
    if selector(old) == selector(new) {
        return Vec::new();
    }
    let shown = gofmt::label_selector(new.pointer("/spec/selector").unwrap_or(&Value::Null));
    vec![invalid_raw("spec.selector", shown, "field is immutable")]
}

/// A string field, or `""`.
fn str_at<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `ValidateNonnegativeField` for `<path>.<key>` when set.
fn nonnegative(obj: &Value, key: &str, path: &str) -> Vec<Cause> {
    match obj.get(key).and_then(Value::as_i64) {
        Some(n) if n < 0 => vec![Cause::invalid(
            format!("{path}.{key}"),
            &json!(n),
            "must be greater than or equal to 0",
        )],
        _ => Vec::new(),
    }
}

/// `Invalid value: <text>: <detail>` with the value already rendered as Go prints it.
fn invalid_raw(field: impl Into<String>, value: String, detail: impl std::fmt::Display) -> Cause {
    Cause {
        reason: CauseReason::Invalid,
        field: field.into(),
        message: format!("Invalid value: {value}: {detail}"),
    }
}

#[cfg(test)]
mod tests;
