//! A Service's EndpointSlices (up to 100 endpoints each, as the EndpointSlice controller makes
//! them), its read-only Endpoints mirror, and its LoadBalancer address from the lab's pool.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use labapi::selector::LabelSelector;
use labapi::{ApiError, Kind};
use serde_json::{Value, json};

use super::{Ctx, endpoint_ready, is_ready, meta};
use crate::apiserver::Api;

const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// A Service's selector; `None` for Services without one (their slices are managed elsewhere).
pub fn selector_of(svc: &Value) -> Option<LabelSelector> {
    let map = svc["spec"]["selector"]
        .as_object()
        .filter(|m| !m.is_empty())?;
    Some(LabelSelector::from_map(map))
}

/// The port a Service port's targetPort means on this Pod: a number, or a container port name.
fn target_port(port: &Value, pod: &Value) -> Option<i64> {
    match &port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64()),
        _ => port["port"].as_i64(),
    }
}

fn endpoint(pod: &Value) -> Value {
    json!({
        "addresses": [pod["status"]["podIP"]],
        "conditions": {
            "ready": endpoint_ready(pod),
            "serving": is_ready(pod),
            "terminating": pod["metadata"]["deletionTimestamp"].is_string(),
        },
        "nodeName": pod["spec"]["nodeName"],
        "targetRef": {"kind": "Pod", "name": pod["metadata"]["name"], "namespace": pod["metadata"]["namespace"], "uid": pod["metadata"]["uid"]},
    })
}

/// Desired endpoints, grouped by their resolved ports.
fn desired_groups(svc: &Value, pods: &[Arc<Value>]) -> Vec<(Vec<Value>, Vec<Value>)> {
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let resolve = |pod: &Value| -> Option<Vec<(String, i64, String)>> {
        ports
            .iter()
            .map(|p| {
                let name = p["name"].as_str().unwrap_or("").to_string();
                let protocol = p["protocol"].as_str().unwrap_or("TCP").to_string();
                target_port(p, pod).map(|n| (name, n, protocol))
            })
            .collect()
    };
    // Numeric target ports resolve the same for every Pod: once, not once per Pod, as this
    // runs for every Pod of a Service each time one of them changes.
    let shared = ports
        .iter()
        .all(|p| !p["targetPort"].is_string())
        .then(|| resolve(&Value::Null));
    let mut groups: BTreeMap<Vec<(String, i64, String)>, Vec<Value>> = BTreeMap::new();
    for pod in pods {
        let resolved = match &shared {
            Some(ports) => ports.clone(),
            None => resolve(pod),
        };
        if let Some(resolved) = resolved {
            groups.entry(resolved).or_default().push(endpoint(pod));
        }
    }
    groups
        .into_iter()
        .map(|(ports, endpoints)| {
            let ports = ports
                .into_iter()
                .map(|(name, port, protocol)| json!({"name": name, "port": port, "protocol": protocol}))
                .collect();
            (ports, endpoints)
        })
        .collect()
}

/// Where each desired endpoint goes: slices to write (an existing one by name, or a new
/// one) and existing slices to delete.
#[derive(Debug, Default, PartialEq)]
struct Placement {
    slices: Vec<(Option<String>, Vec<Value>, Vec<Value>)>,
    delete: Vec<String>,
}

/// Places `groups` (ports, endpoints) into the `existing` slices as Kubernetes' EndpointSlice
/// controller does: an endpoint stays in the slice that holds it, one that is gone leaves a
/// gap, and newcomers fill slices with room (at most [`MAX_ENDPOINTS_PER_SLICE`]) before
/// new slices are made. Nothing is rebalanced, so a Pod that comes or goes rewrites one
/// slice. (Cutting the sorted endpoints into chunks instead shifted every later chunk by one
/// on each change, one slice write at a time, and between two writes an endpoint was in no
/// slice, or in two, for every node's dataplane to see and sync.)
fn place(existing: &[Arc<Value>], groups: &[(Vec<Value>, Vec<Value>)]) -> Placement {
    let key = |e: &Value| match e["targetRef"]["uid"].as_str() {
        Some(uid) => uid.to_owned(),
        None => e["addresses"][0].to_string(),
    };
    let mut placement = Placement::default();
    let mut used = vec![false; existing.len()];
    for (ports, endpoints) in groups {
        let mut wanted: HashMap<String, &Value> = endpoints.iter().map(|e| (key(e), e)).collect();
        let mut slices: Vec<(Option<String>, Vec<Value>)> = Vec::new();
        for (slice, used) in existing.iter().zip(used.iter_mut()) {
            if *used || slice["ports"].as_array() != Some(ports) {
                continue;
            }
            *used = true;
            let kept = slice["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| wanted.remove(&key(e)).cloned())
                .collect();
            slices.push((Some(meta(slice, "name").to_owned()), kept));
        }
        let mut newcomers = endpoints.iter().filter(|e| wanted.contains_key(&key(e)));
        for (_, kept) in &mut slices {
            while kept.len() < MAX_ENDPOINTS_PER_SLICE {
                let Some(e) = newcomers.next() else { break };
                kept.push(e.clone());
            }
        }
        loop {
            let chunk: Vec<Value> = newcomers
                .by_ref()
                .take(MAX_ENDPOINTS_PER_SLICE)
                .cloned()
                .collect();
            if chunk.is_empty() {
                break;
            }
            slices.push((None, chunk));
        }
        for (name, endpoints) in slices {
            match (name, endpoints.is_empty()) {
                (Some(name), true) => placement.delete.push(name),
                (name, _) => placement.slices.push((name, ports.clone(), endpoints)),
            }
        }
    }
    for (slice, used) in existing.iter().zip(&used) {
        if !used {
            placement.delete.push(meta(slice, "name").to_owned());
        }
    }
    // A Service with no endpoints still has one (empty) slice, as on a real cluster.
    if placement.slices.is_empty() {
        let name = (!placement.delete.is_empty()).then(|| placement.delete.remove(0));
        placement.slices.push((name, Vec::new(), Vec::new()));
    }
    placement
}

fn endpoints_mirror(svc: &Value, slices: &[(Vec<Value>, Vec<Value>)]) -> Value {
    let subsets: Vec<Value> = slices
        .iter()
        .filter(|(_, eps)| !eps.is_empty())
        .map(|(ports, eps)| {
            let address = |e: &Value| json!({"ip": e["addresses"][0], "nodeName": e["nodeName"], "targetRef": e["targetRef"]});
            let ready: Vec<Value> = eps.iter().filter(|e| e["conditions"]["ready"] == true).map(address).collect();
            let not_ready: Vec<Value> = eps.iter().filter(|e| e["conditions"]["ready"] != true && e["conditions"]["terminating"] != true).map(address).collect();
            let mut subset = json!({"ports": ports});
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            subset
        })
        .collect();
    let mut e = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": svc["metadata"]["name"], "namespace": svc["metadata"]["namespace"], "labels": svc["metadata"]["labels"]},
    });
    if !e["metadata"]["labels"].is_object() {
        e["metadata"].as_object_mut().map(|m| m.remove("labels"));
    }
    if !subsets.is_empty() {
        e["subsets"] = json!(subsets);
    }
    e
}

/// The Service's own slices (by label), by name.
fn current_slices(api: &Api, ns: &str, name: &str) -> Vec<Arc<Value>> {
    let mut slices: Vec<Arc<Value>> = api
        .store
        .list(Kind::EndpointSlice, Some(ns))
        .0
        .into_iter()
        .filter(|s| s["metadata"]["labels"][SERVICE_NAME_LABEL] == name)
        .collect();
    slices.sort_by(|a, b| meta(a, "name").cmp(meta(b, "name")));
    slices
}

fn write_slices(
    ctx: &Ctx,
    svc: &Value,
    groups: &[(Vec<Value>, Vec<Value>)],
) -> Result<(), ApiError> {
    let (ns, name) = (meta(svc, "namespace"), meta(svc, "name"));
    let store = &ctx.api.store;
    let existing = current_slices(&ctx.api, ns, name);
    let placement = place(&existing, groups);
    for (slice_name, ports, endpoints) in &placement.slices {
        let current = slice_name
            .as_deref()
            .and_then(|n| existing.iter().find(|s| meta(s, "name") == n));
        match (slice_name, current) {
            // Most of a large Service's slices stay as they were when one Pod changes.
            (_, Some(slice))
                if slice["ports"].as_array() == Some(ports)
                    && slice["endpoints"].as_array() == Some(endpoints) => {}
            (Some(slice_name), _) => {
                store
                    .modify(
                        Kind::EndpointSlice,
                        ns,
                        slice_name,
                        |s| -> Result<bool, ()> {
                            s["ports"] = json!(ports);
                            s["endpoints"] = json!(endpoints);
                            Ok(true)
                        },
                    )
                    .map_err(|_| ApiError::internal("endpointslice update failed"))?;
            }
            (None, _) => {
                let slice = json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "generateName": format!("{name}-"),
                        "namespace": ns,
                        "labels": {SERVICE_NAME_LABEL: name, "endpointslice.kubernetes.io/managed-by": MANAGED_BY},
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": svc["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}],
                    },
                    "addressType": "IPv4",
                    "ports": ports,
                    "endpoints": endpoints,
                });
                ctx.api.create_value(Kind::EndpointSlice, slice)?;
            }
        }
    }
    for gone in &placement.delete {
        let _ = store.delete(Kind::EndpointSlice, ns, gone, None);
    }
    Ok(())
}

fn write_endpoints(ctx: &Ctx, mirror: Value) -> Result<(), ApiError> {
    let store = &ctx.api.store;
    let (ns, name) = (
        meta(&mirror, "namespace").to_string(),
        meta(&mirror, "name").to_string(),
    );
    match store.get(Kind::Endpoints, &ns, &name) {
        Some(_) => {
            store
                .modify(Kind::Endpoints, &ns, &name, |e| -> Result<bool, ()> {
                    match mirror.get("subsets") {
                        Some(s) => e["subsets"] = s.clone(),
                        None => {
                            e.as_object_mut().map(|o| o.remove("subsets"));
                        }
                    }
                    Ok(true)
                })
                .map_err(|_| ApiError::internal("endpoints update failed"))?;
        }
        None => {
            // Endpoints are read-only for clients; the controller writes them to the store.
            let mut e = mirror;
            crate::apiserver::admission::stamp_create(Kind::Endpoints, Some(&ns), &mut e)?;
            let _ = store.create(Kind::Endpoints, e);
        }
    }
    Ok(())
}

fn assign_load_balancer(ctx: &Ctx, svc: &Value) -> Result<(), ApiError> {
    let (ns, name) = (meta(svc, "namespace"), meta(svc, "name"));
    let is_lb = svc["spec"]["type"] == "LoadBalancer";
    let has_ingress = svc["status"]["loadBalancer"]["ingress"]
        .as_array()
        .is_some_and(|i| !i.is_empty());
    if is_lb == has_ingress {
        return Ok(());
    }
    if !is_lb {
        ctx.api
            .store
            .modify(Kind::Service, ns, name, |s| -> Result<bool, ()> {
                s["status"]["loadBalancer"] = json!({});
                Ok(true)
            })
            .map_err(|_| ApiError::internal("service status update failed"))?;
        return Ok(());
    }
    ctx.recorder.record(
        Kind::Service,
        svc,
        "Normal",
        "EnsuringLoadBalancer",
        "Ensuring load balancer",
        "service-controller",
    );
    let used: HashSet<String> = ctx
        .api
        .store
        .list(Kind::Service, None)
        .0
        .iter()
        .flat_map(|s| {
            s["status"]["loadBalancer"]["ingress"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|i| i["ip"].as_str().map(str::to_string))
        .collect();
    let (first, last) = ctx.api.cluster.load_balancer_pool;
    let Some(ip) = (u32::from(first)..=u32::from(last))
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(&ip.to_string()))
    else {
        ctx.recorder.record(
            Kind::Service,
            svc,
            "Warning",
            "SyncLoadBalancerFailed",
            &format!("no free address in the lab's pool {first}-{last}"),
            "service-controller",
        );
        return Ok(());
    };
    let updated = ctx
        .api
        .store
        .modify(Kind::Service, ns, name, |s| -> Result<bool, ()> {
            s["status"]["loadBalancer"] =
                json!({"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]});
            Ok(true)
        })
        .map_err(|_| ApiError::internal("service status update failed"))?;
    if let Some(updated) = updated {
        ctx.recorder.record(
            Kind::Service,
            &updated,
            "Normal",
            "EnsuredLoadBalancer",
            "Ensured load balancer",
            "service-controller",
        );
    }
    Ok(())
}

/// Brings a Service's slices, Endpoints and LoadBalancer status up to date.
pub fn reconcile(ctx: &Ctx, ns: &str, name: &str) -> Result<(), ApiError> {
    let started = std::time::Instant::now();
    let store = &ctx.api.store;
    let Some(svc) = store.get(Kind::Service, ns, name) else {
        let _ = store.delete(Kind::Endpoints, ns, name, None);
        for s in current_slices(&ctx.api, ns, name) {
            let _ = store.delete(Kind::EndpointSlice, ns, meta(&s, "name"), None);
        }
        return Ok(());
    };
    assign_load_balancer(ctx, &svc)?;
    let desired = if ns == "default" && name == "kubernetes" {
        let cp = ctx.api.cluster.control_plane();
        vec![(
            vec![json!({"name": "https", "port": 6443, "protocol": "TCP"})],
            vec![
                json!({"addresses": [cp.internal_ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}}),
            ],
        )]
    } else {
        // Services without a selector have slices managed by someone else.
        let Some(selector) = selector_of(&svc) else {
            return Ok(());
        };
        let mut pods: Vec<Arc<Value>> = store
            .list(Kind::Pod, Some(ns))
            .0
            .into_iter()
            .filter(|p| selector.matches_object(p))
            .filter(|p| p["status"]["podIP"].is_string())
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
            .collect();
        pods.sort_by(|a, b| meta(a, "name").cmp(meta(b, "name")));
        desired_groups(&svc, &pods)
    };
    // Slices first: the dataplanes wait for them; the Endpoints mirror is for readers.
    write_slices(ctx, &svc, &desired)?;
    tracing::debug!(service = name, took = ?started.elapsed(), "slices reconciled");
    write_endpoints(ctx, endpoints_mirror(&svc, &desired))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(i: usize) -> Value {
        json!({"addresses": [format!("10.244.1.{i}")], "targetRef": {"uid": format!("uid-{i}")}})
    }

    fn ports() -> Vec<Value> {
        vec![json!({"name": "", "port": 8080, "protocol": "TCP"})]
    }

    /// Existing slices named `s0`, `s1`, ... holding the placement's endpoints.
    fn existing(placement: &Placement) -> Vec<Arc<Value>> {
        placement
            .slices
            .iter()
            .enumerate()
            .map(|(i, (_, ports, eps))| {
                Arc::new(json!({"metadata": {"name": format!("s{i}")}, "ports": ports, "endpoints": eps}))
            })
            .collect()
    }

    #[test]
    fn a_pod_that_goes_or_comes_rewrites_one_slice() {
        let all: Vec<Value> = (0..250).map(ep).collect();
        let first = place(&[], &[(ports(), all.clone())]);
        let sizes: Vec<usize> = first.slices.iter().map(|(_, _, e)| e.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let slices = existing(&first);

        // Endpoint 5 leaves: only the first slice changes; no endpoint moves.
        let mut fewer = all.clone();
        fewer.remove(5);
        let after = place(&slices, &[(ports(), fewer.clone())]);
        let changed: Vec<&str> = after
            .slices
            .iter()
            .zip(&slices)
            .filter(|((_, _, eps), s)| s["endpoints"].as_array() != Some(eps))
            .map(|(_, s)| meta(s, "name"))
            .collect();
        assert_eq!(changed, ["s0"]);
        assert_eq!(after.slices[0].2.len(), 99);
        assert!(after.delete.is_empty());

        // A newcomer fills the gap in the first slice with room.
        let slices = existing(&after);
        let mut more = fewer;
        more.push(ep(250));
        let after = place(&slices, &[(ports(), more)]);
        assert_eq!(after.slices[0].2.len(), 100);
        assert_eq!(after.slices[0].2[99], ep(250));
        assert_eq!(
            after.slices[1].2,
            slices[1]["endpoints"].as_array().unwrap().clone()
        );
    }

    #[test]
    fn new_ports_get_new_slices_and_each_port_group_keeps_its_own() {
        let first = place(&[], &[(ports(), (0..3).map(ep).collect())]);
        let slices = existing(&first);
        // The target port changes: the old slice no longer fits and goes, after the new
        // one is written (the plan lists writes; deletions happen last).
        let other = vec![json!({"name": "", "port": 9090, "protocol": "TCP"})];
        let moved = place(&slices, &[(other.clone(), (0..3).map(ep).collect())]);
        assert_eq!(moved.slices.len(), 1);
        assert_eq!(moved.slices[0].0, None);
        assert_eq!(moved.delete, ["s0"]);
        // Two groups (Pods that resolve a named port differently) keep their slices apart.
        let groups = [(ports(), vec![ep(0), ep(1)]), (other.clone(), vec![ep(2)])];
        let split = place(&slices, &groups);
        assert_eq!(split.slices[0].0.as_deref(), Some("s0"));
        assert_eq!(split.slices[0].2, [ep(0), ep(1)]);
        assert_eq!(
            (split.slices[1].0.as_deref(), &split.slices[1].1),
            (None, &other)
        );
        assert!(split.delete.is_empty());
    }

    #[test]
    fn endpoints_without_a_pod_are_known_by_address() {
        // The `kubernetes` Service's endpoint is the API server's address, not a Pod.
        let api = |ip: &str| json!({"addresses": [ip], "conditions": {"ready": true}});
        let first = place(&[], &[(ports(), vec![api("172.18.0.2")])]);
        let again = place(&existing(&first), &[(ports(), vec![api("172.18.0.2")])]);
        assert_eq!(
            again.slices,
            [(Some("s0".to_owned()), ports(), vec![api("172.18.0.2")])]
        );
    }

    #[test]
    fn emptied_slices_go_but_a_service_keeps_one() {
        let first = place(&[], &[(ports(), (0..150).map(ep).collect())]);
        let slices = existing(&first);
        let after = place(&slices, &[(ports(), (0..50).map(ep).collect())]);
        assert_eq!(after.slices.len(), 1);
        assert_eq!(after.delete, ["s1"]);
        let none = place(&slices, &[]);
        assert_eq!(none.slices, [(Some("s0".to_owned()), vec![], vec![])]);
        assert_eq!(none.delete, ["s1"]);
    }
}
