//! Deployments and ReplicaSets (`pkg/apis/apps/validation`).

use serde_json::{Value, json};

use super::{gofmt, invalid_raw, meta, nonnegative, pod, str_at};
use crate::field::Cause;

/// `ValidateDeploymentSpec`.
pub(crate) fn deployment_spec(spec: &Value) -> Vec<Cause> {
    let mut causes = nonnegative(spec, "replicas", "spec");
    causes.extend(selector_and_template(spec));
    causes.extend(strategy(spec.get("strategy").unwrap_or(&Value::Null)));
    causes.extend(nonnegative(spec, "minReadySeconds", "spec"));
    causes.extend(nonnegative(spec, "revisionHistoryLimit", "spec"));
    if let Some(deadline) = spec.get("progressDeadlineSeconds").and_then(Value::as_i64) {
        causes.extend(nonnegative(spec, "progressDeadlineSeconds", "spec"));
        let min_ready = spec
            .get("minReadySeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if deadline <= min_ready {
            causes.push(Cause::invalid(
                "spec.progressDeadlineSeconds",
                &json!(deadline),
                "must be greater than minReadySeconds",
            ));
        }
    }
    causes
}

/// `ValidateReplicaSetSpec`.
pub(crate) fn replica_set_spec(spec: &Value) -> Vec<Cause> {
    let mut causes = nonnegative(spec, "replicas", "spec");
    causes.extend(nonnegative(spec, "minReadySeconds", "spec"));
    causes.extend(selector_and_template(spec));
    causes
}

/// The selector, and the template it must select; shared by both kinds (Kubernetes words
/// the empty-selector error for Deployments in both).
fn selector_and_template(spec: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let template = spec.get("template").unwrap_or(&Value::Null);
    match spec.get("selector").filter(|s| !s.is_null()) {
        None => {
            causes.push(Cause::required("spec.selector", ""));
        }
        Some(sel) => {
            let errs = meta::label_selector(sel, "spec.selector");
            let valid = errs.is_empty();
            causes.extend(errs);
            if meta::selector_is_empty(sel) {
                causes.push(invalid_raw(
                    "spec.selector",
                    gofmt::label_selector(sel),
                    "empty selector is invalid for deployment",
                ));
            } else if valid {
                let labels = template
                    .get("metadata")
                    .and_then(|m| m.get("labels"))
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                if !meta::selector_matches(sel, &labels) {
                    causes.push(invalid_raw(
                        "spec.template.metadata.labels",
                        gofmt::string_map(template.get("metadata").and_then(|m| m.get("labels"))),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        }
    }
    causes.extend(pod::pod_template(template, "spec.template"));
    let restart = str_at(
        template.get("spec").unwrap_or(&Value::Null),
        "restartPolicy",
    );
    if !restart.is_empty() && restart != "Always" {
        causes.push(Cause::not_supported(
            "spec.template.spec.restartPolicy",
            &json!(restart),
            &["Always"],
        ));
    }
    if let Some(deadline) = template
        .get("spec")
        .and_then(|s| s.get("activeDeadlineSeconds"))
        .filter(|v| !v.is_null())
    {
        causes.push(Cause::invalid(
            "spec.template.spec.activeDeadlineSeconds",
            deadline,
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        ));
    }
    causes
}

/// `ValidateDeploymentStrategy`.
fn strategy(strategy: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let rolling = strategy.get("rollingUpdate").filter(|r| !r.is_null());
    match str_at(strategy, "type") {
        "Recreate" => {
            if rolling.is_some() {
                causes.push(Cause::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        "RollingUpdate" => match rolling {
            None => causes.push(Cause::required(
                "spec.strategy.rollingUpdate",
                "this should be defaulted and never be nil",
            )),
            Some(r) => causes.extend(rolling_update(r)),
        },
        // Kubernetes prints the whole strategy struct here; its type says the same.
        other => causes.push(Cause::not_supported(
            "spec.strategy",
            &json!(other),
            &["Recreate", "RollingUpdate"],
        )),
    }
    causes
}

/// `ValidateRollingUpdateDeployment`.
fn rolling_update(r: &Value) -> Vec<Cause> {
    let path = "spec.strategy.rollingUpdate";
    let zero = json!(0);
    let max_unavailable = r.get("maxUnavailable").unwrap_or(&zero);
    let max_surge = r.get("maxSurge").unwrap_or(&zero);
    let mut causes = int_or_percent(max_unavailable, &format!("{path}.maxUnavailable"));
    causes.extend(int_or_percent(max_surge, &format!("{path}.maxSurge")));
    if int_or_percent_value(max_unavailable) == 0 && int_or_percent_value(max_surge) == 0 {
        causes.push(invalid_raw(
            format!("{path}.maxUnavailable"),
            gofmt::int_or_string(max_unavailable),
            "may not be 0 when `maxSurge` is 0",
        ));
    }
    if let Some(p) = percent_value(max_unavailable)
        && p > 100
    {
        causes.push(invalid_raw(
            format!("{path}.maxUnavailable"),
            gofmt::int_or_string(max_unavailable),
            "must not be greater than 100%",
        ));
    }
    causes
}

/// `ValidatePositiveIntOrPercent`.
fn int_or_percent(v: &Value, path: &str) -> Vec<Cause> {
    match v {
        Value::String(s) => super::names::percent(s)
            .into_iter()
            .map(|msg| invalid_raw(path, gofmt::int_or_string(v), msg))
            .collect(),
        other => match other.as_i64() {
            Some(n) if n < 0 => vec![Cause::invalid(
                path,
                &json!(n),
                "must be greater than or equal to 0",
            )],
            _ => Vec::new(),
        },
    }
}

fn percent_value(v: &Value) -> Option<i64> {
    v.as_str()?.strip_suffix('%')?.parse().ok()
}

/// Go's `getIntOrPercentValue`: a percentage's number, an int, or 0 for anything else.
fn int_or_percent_value(v: &Value) -> i64 {
    percent_value(v)
        .or_else(|| v.as_i64())
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}
