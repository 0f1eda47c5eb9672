//! ReplicaSets: as many Pods as `spec.replicas`, made from the template, and the status counts.

use labapi::{ApiError, Kind};
use serde_json::{Value, json};

use super::pod_index::PodIndex;
use super::{Ctx, is_ready, meta};

/// Pods owned by the object with `uid`, from the index.
fn owned_pods(ctx: &Ctx, index: &PodIndex, uid: &str) -> Vec<std::sync::Arc<Value>> {
    index
        .owned_by(uid)
        .iter()
        .filter_map(|(ns, name)| ctx.api.store.get(Kind::Pod, ns, name))
        .collect()
}

/// Pods owned by `uid`, read from the store: right after this reconcile's own writes, which
/// the index has not seen yet.
fn owned_pods_now(ctx: &Ctx, ns: &str, uid: &str) -> Vec<std::sync::Arc<Value>> {
    ctx.api
        .store
        .list(Kind::Pod, Some(ns))
        .0
        .into_iter()
        .filter(|p| super::owner_uids(p).any(|u| u == uid))
        .collect()
}

/// Which Pod to delete first when scaling down: unscheduled, then not running, then not
/// ready, then the newest (as the ReplicaSet controller ranks them).
fn deletion_rank(pod: &Value) -> (bool, bool, bool, std::cmp::Reverse<String>) {
    (
        pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty),
        pod["status"]["phase"] != "Running",
        !is_ready(pod),
        std::cmp::Reverse(meta(pod, "creationTimestamp").to_string()),
    )
}

/// Creates or deletes Pods to match `spec.replicas` and updates the status.
pub fn reconcile(ctx: &Ctx, index: &PodIndex, ns: &str, name: &str) -> Result<(), ApiError> {
    let Some(rs) = ctx.api.store.get(Kind::ReplicaSet, ns, name) else {
        return Ok(());
    };
    let uid = meta(&rs, "uid").to_string();
    let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let count = index.count_owned(&uid);
    if count.active == want {
        // Nothing to create or delete (the common case: one of its Pods changed), so the
        // index's counts give the status without reading every Pod.
        return write_status(ctx, &rs, count.active, count.ready);
    }
    let pods = owned_pods(ctx, index, &uid);
    let mut active: Vec<_> = pods
        .iter()
        .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
        .cloned()
        .collect();
    let changed = active.len() != want;
    if active.len() < want {
        let template = &rs["spec"]["template"];
        for _ in active.len()..want {
            let mut metadata = template["metadata"].clone();
            if !metadata.is_object() {
                metadata = json!({});
            }
            metadata["generateName"] = json!(format!("{name}-"));
            metadata["namespace"] = json!(ns);
            metadata["ownerReferences"] = json!([{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }]);
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]});
            match ctx.api.create_value(Kind::Pod, pod) {
                Ok(p) => ctx.recorder.record(
                    Kind::ReplicaSet,
                    &rs,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created pod: {}", meta(&p, "name")),
                    "replicaset-controller",
                ),
                Err(e) => {
                    ctx.recorder.record(
                        Kind::ReplicaSet,
                        &rs,
                        "Warning",
                        "FailedCreate",
                        &format!("Error creating: {}", e.message),
                        "replicaset-controller",
                    );
                    return Err(e);
                }
            }
        }
    } else if active.len() > want {
        active.sort_by_key(|p| deletion_rank(p));
        for pod in active.iter().take(active.len() - want) {
            let pod_name = meta(pod, "name");
            ctx.api.delete_object(Kind::Pod, ns, pod_name)?;
            ctx.recorder.record(
                Kind::ReplicaSet,
                &rs,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted pod: {pod_name}"),
                "replicaset-controller",
            );
        }
    }
    let pods = if changed {
        owned_pods_now(ctx, ns, &uid)
    } else {
        owned_pods(ctx, index, &uid)
    };
    let active: Vec<_> = pods
        .iter()
        .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
        .collect();
    let ready = active.iter().filter(|p| is_ready(p)).count();
    write_status(ctx, &rs, active.len(), ready)
}

/// Writes the status counts, unless they are already there.
fn write_status(ctx: &Ctx, rs: &Value, active: usize, ready: usize) -> Result<(), ApiError> {
    let status = json!({
        "replicas": active,
        "fullyLabeledReplicas": active,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": rs["metadata"]["generation"],
    });
    if rs["status"] == status {
        return Ok(());
    }
    ctx.api
        .store
        .modify(
            Kind::ReplicaSet,
            meta(rs, "namespace"),
            meta(rs, "name"),
            |rs| -> Result<bool, ()> {
                rs["status"] = status;
                Ok(true)
            },
        )
        .map_err(|_| ApiError::internal("replicaset status update failed"))?;
    Ok(())
}
