//! Deployments: a ReplicaSet per pod template (named by the template's hash), rolling updates
//! within maxSurge / maxUnavailable, old ReplicaSets pruned to revisionHistoryLimit, and the
//! status `kubectl rollout status` reads.

use std::sync::Arc;

use labapi::{ApiError, Kind};
use serde_json::{Value, json};

use super::{Ctx, meta};
use crate::apiserver::admission::now;

const REVISION: &str = "deployment.kubernetes.io/revision";
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The `pod-template-hash`: FNV-1a of the template, its decimal digits spelled in Kubernetes'
/// safe alphabet (no vowels, so no words), as the Deployment controller names ReplicaSets.
pub fn pod_template_hash(template: &Value) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for b in template.to_string().bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// `25%` of `total`, rounded up for surge and down for unavailability, as intstr does.
fn resolve(value: &Value, total: i64, round_up: bool, default_percent: i64) -> i64 {
    let percent = |p: i64| {
        if round_up {
            (p * total + 99) / 100
        } else {
            p * total / 100
        }
    };
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .map(percent)
            .unwrap_or(0),
        _ => percent(default_percent),
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn set_replicas(ctx: &Ctx, d: &Value, rs: &Value, replicas: i64) -> Result<(), ApiError> {
    let old = int(&rs["spec"]["replicas"]);
    if old == replicas {
        return Ok(());
    }
    ctx.api
        .store
        .modify(
            Kind::ReplicaSet,
            meta(rs, "namespace"),
            meta(rs, "name"),
            |r| -> Result<bool, ()> {
                r["spec"]["replicas"] = json!(replicas);
                r["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] =
                    json!(int(&d["spec"]["replicas"]).to_string());
                Ok(true)
            },
        )
        .map_err(|_| ApiError::internal("scaling a replica set failed"))?;
    let verb = if replicas > old { "up" } else { "down" };
    ctx.recorder.record(
        Kind::Deployment,
        d,
        "Normal",
        "ScalingReplicaSet",
        &format!(
            "Scaled {verb} replica set {} from {old} to {replicas}",
            meta(rs, "name")
        ),
        "deployment-controller",
    );
    Ok(())
}

/// Brings a Deployment's ReplicaSets towards its spec and updates its status.
pub fn reconcile(ctx: &Ctx, ns: &str, name: &str) -> Result<(), ApiError> {
    let store = &ctx.api.store;
    let Some(d) = store.get(Kind::Deployment, ns, name) else {
        return Ok(());
    };
    let uid = meta(&d, "uid").to_string();
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let template = &d["spec"]["template"];
    let hash = pod_template_hash(template);
    let owned: Vec<Arc<Value>> = store
        .list(Kind::ReplicaSet, Some(ns))
        .0
        .into_iter()
        .filter(|r| super::owner_uids(r).any(|u| u == uid))
        .collect();
    let mut new_rs = owned
        .iter()
        .find(|r| r["metadata"]["labels"]["pod-template-hash"] == hash.as_str())
        .cloned();
    let mut old: Vec<Arc<Value>> = owned
        .iter()
        .filter(|r| r["metadata"]["labels"]["pod-template-hash"] != hash.as_str())
        .cloned()
        .collect();
    old.sort_by_key(|r| revision(r));
    let recreate = d["spec"]["strategy"]["type"] == "Recreate";
    let old_active: i64 = old.iter().map(|r| int(&r["spec"]["replicas"])).sum();

    if new_rs.is_none() {
        let initial = if old_active == 0 { replicas } else { 0 };
        let next_revision = owned.iter().map(|r| revision(r)).max().unwrap_or(0) + 1;
        let mut labels = template["metadata"]["labels"].clone();
        labels["pod-template-hash"] = json!(hash);
        let mut rs_template = template.clone();
        rs_template["metadata"]["labels"] = labels.clone();
        let mut selector = d["spec"]["selector"].clone();
        selector["matchLabels"]["pod-template-hash"] = json!(hash);
        let rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": format!("{name}-{hash}"),
                "namespace": ns,
                "labels": labels,
                "annotations": {
                    REVISION: next_revision.to_string(),
                    "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                    "deployment.kubernetes.io/max-replicas": (replicas + resolve(&d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], replicas, true, 25)).to_string(),
                },
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}],
            },
            "spec": {"replicas": initial, "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0), "selector": selector, "template": rs_template},
        });
        let created = ctx.api.create_value(Kind::ReplicaSet, rs)?;
        ctx.recorder.record(
            Kind::Deployment,
            &d,
            "Normal",
            "ScalingReplicaSet",
            &format!(
                "Scaled up replica set {} from 0 to {initial}",
                meta(&created, "name")
            ),
            "deployment-controller",
        );
        let created = Arc::new(created);
        new_rs = Some(created);
    }
    let new_rs = new_rs.expect("created above");

    if old_active == 0 {
        set_replicas(ctx, &d, &new_rs, replicas)?;
    } else if recreate {
        for r in &old {
            set_replicas(ctx, &d, r, 0)?;
        }
        let old_pods: usize = old
            .iter()
            .map(|r| int(&r["status"]["replicas"]) as usize)
            .sum();
        if old_pods == 0 {
            set_replicas(ctx, &d, &new_rs, replicas)?;
        }
    } else {
        let rolling = &d["spec"]["strategy"]["rollingUpdate"];
        let max_surge = resolve(&rolling["maxSurge"], replicas, true, 25);
        let mut max_unavailable = resolve(&rolling["maxUnavailable"], replicas, false, 25);
        if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        // Scale the new ReplicaSet up within the surge budget.
        let total: i64 = owned.iter().map(|r| int(&r["spec"]["replicas"])).sum();
        let new_spec = int(&new_rs["spec"]["replicas"]);
        if new_spec < replicas {
            let room = (replicas + max_surge - total).max(0);
            set_replicas(ctx, &d, &new_rs, replicas.min(new_spec + room))?;
        }
        // Scale old ones down while enough Pods stay available.
        let min_available = replicas - max_unavailable;
        let available: i64 = owned
            .iter()
            .map(|r| int(&r["status"]["availableReplicas"]))
            .sum();
        let new_unavailable =
            (int(&new_rs["spec"]["replicas"]) - int(&new_rs["status"]["availableReplicas"])).max(0);
        let all_pods: i64 = owned.iter().map(|r| int(&r["status"]["replicas"])).sum();
        let mut budget = (all_pods - min_available - new_unavailable).max(0).min(
            (available - min_available).max(0)
                + old
                    .iter()
                    .map(|r| {
                        (int(&r["spec"]["replicas"]) - int(&r["status"]["availableReplicas"]))
                            .max(0)
                    })
                    .sum::<i64>(),
        );
        for r in &old {
            if budget == 0 {
                break;
            }
            let spec = int(&r["spec"]["replicas"]);
            let cut = spec.min(budget);
            if cut > 0 {
                set_replicas(ctx, &d, r, spec - cut)?;
                budget -= cut;
            }
        }
    }
    prune_history(ctx, &d, &old)?;
    update_status(ctx, &d, &new_rs)
}

fn prune_history(ctx: &Ctx, d: &Value, old: &[Arc<Value>]) -> Result<(), ApiError> {
    let limit = d["spec"]["revisionHistoryLimit"]
        .as_i64()
        .unwrap_or(10)
        .max(0) as usize;
    let idle: Vec<&Arc<Value>> = old
        .iter()
        .filter(|r| int(&r["spec"]["replicas"]) == 0 && int(&r["status"]["replicas"]) == 0)
        .collect();
    if idle.len() > limit {
        for r in &idle[..idle.len() - limit] {
            ctx.api
                .delete_object(Kind::ReplicaSet, meta(r, "namespace"), meta(r, "name"))?;
        }
    }
    Ok(())
}

fn update_status(ctx: &Ctx, d: &Value, new_rs: &Value) -> Result<(), ApiError> {
    let store = &ctx.api.store;
    let (ns, name) = (meta(d, "namespace"), meta(d, "name"));
    let uid = meta(d, "uid");
    // Read the ReplicaSets again: their status moves on while this runs.
    let owned: Vec<Arc<Value>> = store
        .list(Kind::ReplicaSet, Some(ns))
        .0
        .into_iter()
        .filter(|r| super::owner_uids(r).any(|u| u == uid))
        .collect();
    let new_name = meta(new_rs, "name");
    let sum = |field: &str| -> i64 { owned.iter().map(|r| int(&r["status"][field])).sum() };
    let replicas_spec = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let (replicas, ready, available) = (
        sum("replicas"),
        sum("readyReplicas"),
        sum("availableReplicas"),
    );
    let updated = owned
        .iter()
        .find(|r| meta(r, "name") == new_name)
        .map(|r| int(&r["status"]["replicas"]))
        .unwrap_or(0);
    let max_unavailable = resolve(
        &d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        replicas_spec,
        false,
        25,
    );
    let is_available = available >= replicas_spec - max_unavailable;
    let complete =
        updated == replicas_spec && replicas == replicas_spec && available == replicas_spec;
    let ts = now();
    let generation = d["metadata"]["generation"].clone();
    let revision_text = owned
        .iter()
        .find(|r| meta(r, "name") == new_name)
        .map(|r| revision(r))
        .unwrap_or(1)
        .to_string();
    store
        .modify(Kind::Deployment, ns, name, |d| -> Result<bool, ()> {
            let old_conditions = d["status"]["conditions"].clone();
            let since = |kind: &str, status: &str| -> Value {
                old_conditions
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == kind && c["status"] == status))
                    .map(|c| c["lastTransitionTime"].clone())
                    .unwrap_or(json!(ts))
            };
            let (progress_reason, progress_message) = if complete {
                ("NewReplicaSetAvailable", format!("ReplicaSet \"{new_name}\" has successfully progressed."))
            } else {
                ("ReplicaSetUpdated", format!("ReplicaSet \"{new_name}\" is progressing."))
            };
            let available_status = if is_available { "True" } else { "False" };
            let (available_reason, available_message) = if is_available {
                ("MinimumReplicasAvailable", "Deployment has minimum availability.")
            } else {
                ("MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
            };
            let mut status = json!({
                "observedGeneration": generation,
                "replicas": replicas,
                "updatedReplicas": updated,
                "readyReplicas": ready,
                "availableReplicas": available,
                "conditions": [
                    {"type": "Available", "status": available_status, "reason": available_reason, "message": available_message,
                     "lastUpdateTime": ts, "lastTransitionTime": since("Available", available_status)},
                    {"type": "Progressing", "status": "True", "reason": progress_reason, "message": progress_message,
                     "lastUpdateTime": ts, "lastTransitionTime": since("Progressing", "True")},
                ],
            });
            if replicas_spec - available > 0 {
                status["unavailableReplicas"] = json!(replicas_spec - available);
            }
            // Kubernetes leaves zero counts out of the status.
            for field in ["replicas", "updatedReplicas", "readyReplicas", "availableReplicas"] {
                if status[field] == 0 {
                    status.as_object_mut().map(|s| s.remove(field));
                }
            }
            // Timestamps alone are not a change worth an event.
            let mut unchanged = d["status"].clone();
            let mut candidate = status.clone();
            for s in [&mut unchanged, &mut candidate] {
                for c in s["conditions"].as_array_mut().into_iter().flatten() {
                    c.as_object_mut().map(|c| c.remove("lastUpdateTime"));
                }
            }
            let changed = unchanged != candidate || d["metadata"]["annotations"][REVISION] != revision_text.as_str();
            d["status"] = status;
            d["metadata"]["annotations"][REVISION] = json!(revision_text);
            Ok(changed)
        })
        .map_err(|_| ApiError::internal("deployment status update failed"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hashes_are_stable_and_safe() {
        let t = json!({"metadata": {"labels": {"app": "hello-world"}}, "spec": {"containers": [{"name": "hello-world"}]}});
        let h = pod_template_hash(&t);
        assert_eq!(h, pod_template_hash(&t.clone()));
        assert!(
            h.len() <= 10 && h.bytes().all(|b| ALPHANUMS.contains(&b)),
            "{h}"
        );
        assert_ne!(h, pod_template_hash(&json!({"spec": {}})));
    }

    #[test]
    fn percentages_round_as_intstr_does() {
        assert_eq!(resolve(&json!("25%"), 2, true, 25), 1);
        assert_eq!(resolve(&json!("25%"), 2, false, 25), 0);
        assert_eq!(resolve(&Value::Null, 4, false, 25), 1);
        assert_eq!(resolve(&json!(3), 10, true, 25), 3);
    }
}
