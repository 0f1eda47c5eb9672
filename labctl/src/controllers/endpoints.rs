//! A Service's EndpointSlices (up to 100 endpoints each, as the EndpointSlice controller makes
//! them), its read-only Endpoints mirror, and its LoadBalancer address from the lab's pool.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use labapi::selector::LabelSelector;
use labapi::{ApiError, Kind};
use rustc_hash::FxHashMap;
use serde_json::{Value, json};

use super::{Ctx, endpoint_ready, is_ready, meta};
use crate::apiserver::Api;

const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// One endpoint of a slice, shared between the cache and the slices that hold it.
type Endpoint = Arc<Value>;
/// Resolved ports, and the endpoints that have them.
type Group = (Vec<Value>, Vec<Endpoint>);
/// Ports resolved on one Pod: (name, port, protocol) for each Service port.
type ResolvedPorts = Vec<(String, i64, String)>;
/// Slice name -> the stored slice as the controller last saw it and its endpoints.
type SliceMemo = HashMap<String, (Arc<Value>, Vec<Endpoint>)>;

/// What the controller made for each Service at its last reconcile. A reconcile runs over
/// every Pod of the namespace each time one of a Service's Pods changes; with this, a Pod
/// that was selected, whose stored object and Service's are the ones seen last time, costs
/// a pointer lookup, not a read of its labels, status and uid, and the slices' unchanged
/// endpoints are compared by pointer. It holds the stored Service, the selected Pods and
/// the slices with their endpoints; a Service without a selector has no entry.
#[derive(Default)]
pub struct EndpointCache {
    services: HashMap<(String, String), ServiceMemo>,
}

#[derive(Default)]
struct ServiceMemo {
    /// The stored Service the Pods below were selected with.
    service: Option<Arc<Value>>,
    /// The selected Pods, by the address of their stored object (held here, so the address
    /// names that object only): the object and the endpoint made of it.
    pods: FxHashMap<usize, (Arc<Value>, Endpoint)>,
    /// Slice name -> the stored slice and its endpoints (equal by value).
    slices: SliceMemo,
}

/// Whether this controller manages the slice (its `managed-by` label); slices that others
/// make for a Service, with its name label, are theirs.
fn is_managed(slice: &Value) -> bool {
    slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == MANAGED_BY
}

/// The Service (namespace, name) that a slice this controller manages belongs to.
pub fn service_of_slice(slice: &Value) -> Option<(String, String)> {
    let name = slice["metadata"]["labels"][SERVICE_NAME_LABEL].as_str()?;
    is_managed(slice).then(|| (meta(slice, "namespace").to_owned(), name.to_owned()))
}

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

/// Whether a Service's endpoints include this Pod: selected, with an address, not finished.
fn selects(selector: &LabelSelector, pod: &Value) -> bool {
    selector.matches_object(pod)
        && pod["status"]["podIP"].is_string()
        && !matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
}

/// Desired endpoints of the namespace's `pods` (in name order), grouped by their resolved
/// ports. The memo's Pods are those selected at the last reconcile on entry and this one's
/// on return; a Pod it holds, unchanged, under the same Service, is selected without a look.
fn desired_groups(
    svc: &Arc<Value>,
    selector: &LabelSelector,
    pods: &[Arc<Value>],
    memo: &mut ServiceMemo,
) -> Vec<Group> {
    let same_service = memo.service.as_ref().is_some_and(|s| Arc::ptr_eq(s, svc));
    let mut before = std::mem::take(&mut memo.pods);
    let mut selected = Vec::new();
    for pod in pods {
        let address = Arc::as_ptr(pod) as usize;
        let known = before.remove(&address).map(|(_, endpoint)| endpoint);
        let endpoint = match known {
            Some(endpoint) if same_service => endpoint,
            _ if !selects(selector, pod) => continue,
            known => known.unwrap_or_else(|| Arc::new(endpoint(pod))),
        };
        memo.pods.insert(address, (pod.clone(), endpoint.clone()));
        selected.push((pod, endpoint));
    }
    memo.service = Some(svc.clone());

    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let resolve = |pod: &Value| -> Option<ResolvedPorts> {
        ports
            .iter()
            .map(|p| {
                let name = p["name"].as_str().unwrap_or("").to_string();
                let protocol = p["protocol"].as_str().unwrap_or("TCP").to_string();
                target_port(p, pod).map(|n| (name, n, protocol))
            })
            .collect()
    };
    let mut groups: BTreeMap<ResolvedPorts, Vec<Endpoint>> = BTreeMap::new();
    // Numeric target ports resolve the same for every Pod: once, not once per Pod.
    if ports.iter().all(|p| !p["targetPort"].is_string()) {
        if let Some(shared) = resolve(&Value::Null).filter(|_| !selected.is_empty()) {
            groups.insert(shared, selected.into_iter().map(|(_, e)| e).collect());
        }
    } else {
        for (pod, endpoint) in selected {
            if let Some(resolved) = resolve(pod) {
                groups.entry(resolved).or_default().push(endpoint);
            }
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
    slices: Vec<(Option<String>, Vec<Value>, Vec<Endpoint>)>,
    delete: Vec<String>,
}

/// What an endpoint is known by: its Pod's uid, or its address when it has no Pod.
fn endpoint_key(e: &Value) -> Cow<'_, str> {
    match e["targetRef"]["uid"].as_str() {
        Some(uid) => Cow::Borrowed(uid),
        None => Cow::Owned(e["addresses"][0].to_string()),
    }
}

/// A stored slice as placement sees it.
struct Existing<'a> {
    name: &'a str,
    ports: Option<&'a Vec<Value>>,
    endpoints: Cow<'a, [Endpoint]>,
}

/// Places `groups` (ports, endpoints) into the `existing` slices as Kubernetes' EndpointSlice
/// controller does: an endpoint stays in the slice that holds it, one that is gone leaves a
/// gap, and newcomers fill slices with room (at most [`MAX_ENDPOINTS_PER_SLICE`]) before
/// new slices are made. Nothing is rebalanced, so a Pod that comes or goes rewrites one
/// slice. (Cutting the sorted endpoints into chunks instead shifted every later chunk by one
/// on each change, one slice write at a time, and between two writes an endpoint was in no
/// slice, or in two, for every node's dataplane to see and sync.)
fn place(existing: &[Existing], groups: &[Group]) -> Placement {
    let mut placement = Placement::default();
    let mut used = vec![false; existing.len()];
    for (ports, endpoints) in groups {
        let mine: Vec<&Existing> = existing
            .iter()
            .zip(used.iter_mut())
            .filter(|(slice, used)| !**used && slice.ports == Some(ports))
            .map(|(slice, used)| {
                *used = true;
                slice
            })
            .collect();
        // Which desired endpoint each held one still is: the same one by pointer (an
        // unchanged Pod's), then by key among the rest (a Pod that changed).
        let mut taken = vec![false; endpoints.len()];
        let by_pointer: FxHashMap<*const Value, usize> = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (Arc::as_ptr(e), i))
            .collect();
        let mut kept: Vec<Vec<Option<usize>>> = Vec::with_capacity(mine.len());
        for slice in &mine {
            let same = |e: &Endpoint| by_pointer.get(&Arc::as_ptr(e)).copied();
            let held = slice
                .endpoints
                .iter()
                .map(|e| same(e).filter(|&i| !std::mem::replace(&mut taken[i], true)));
            kept.push(held.collect());
        }
        let mut by_key: HashMap<Cow<str>, usize> = endpoints
            .iter()
            .enumerate()
            .filter(|&(i, _)| !taken[i])
            .map(|(i, e)| (endpoint_key(e), i))
            .collect();
        for (slice, kept) in mine.iter().zip(&mut kept) {
            for (e, kept) in slice.endpoints.iter().zip(kept.iter_mut()) {
                if kept.is_none() && !by_key.is_empty() {
                    *kept = by_key.remove(endpoint_key(e).as_ref());
                    if let Some(i) = *kept {
                        taken[i] = true;
                    }
                }
            }
        }
        let mut slices: Vec<(Option<String>, Vec<Endpoint>)> = mine
            .iter()
            .zip(kept)
            .map(|(slice, kept)| {
                let kept = kept.into_iter().flatten().map(|i| endpoints[i].clone());
                (Some(slice.name.to_owned()), kept.collect())
            })
            .collect();
        let mut newcomers = endpoints
            .iter()
            .zip(&taken)
            .filter(|(_, taken)| !**taken)
            .map(|(e, _)| e);
        for (_, kept) in &mut slices {
            while kept.len() < MAX_ENDPOINTS_PER_SLICE {
                let Some(e) = newcomers.next() else { break };
                kept.push(e.clone());
            }
        }
        loop {
            let chunk: Vec<Endpoint> = newcomers
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
            placement.delete.push(slice.name.to_owned());
        }
    }
    // A Service with no endpoints still has one (empty) slice, as on a real cluster.
    if placement.slices.is_empty() {
        let name = (!placement.delete.is_empty()).then(|| placement.delete.remove(0));
        placement.slices.push((name, Vec::new(), Vec::new()));
    }
    placement
}

/// The Service's Endpoints, as the endpoints controller keeps them for older readers: the
/// addresses of its slices by port set, in Pod name order, ready ones apart from the rest
/// (terminating ones left out).
fn endpoints_mirror(svc: &Value, slices: &[Arc<Value>]) -> Value {
    let mut groups: BTreeMap<ResolvedPorts, (&Value, Vec<&Value>)> = BTreeMap::new();
    for slice in slices {
        let ports = &slice["ports"];
        let key = ports
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let name = p["name"].as_str().unwrap_or("").to_owned();
                let protocol = p["protocol"].as_str().unwrap_or("TCP").to_owned();
                (name, p["port"].as_i64().unwrap_or(0), protocol)
            })
            .collect();
        let endpoints = slice["endpoints"].as_array().into_iter().flatten();
        groups
            .entry(key)
            .or_insert((ports, Vec::new()))
            .1
            .extend(endpoints);
    }
    let subsets: Vec<Value> = groups
        .into_values()
        .filter(|(_, eps)| !eps.is_empty())
        .map(|(ports, mut eps)| {
            let order = |e: &Value| (e["targetRef"]["name"].as_str().unwrap_or("").to_owned(), e["addresses"][0].to_string());
            eps.sort_by_cached_key(|e| order(e));
            let address = |e: &&Value| json!({"ip": e["addresses"][0], "nodeName": e["nodeName"], "targetRef": e["targetRef"]});
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

/// The slices this controller manages for the Service (by label), by name.
fn current_slices(api: &Api, ns: &str, name: &str) -> Vec<Arc<Value>> {
    let mut slices: Vec<Arc<Value>> = api
        .store
        .list(Kind::EndpointSlice, Some(ns))
        .0
        .into_iter()
        .filter(|s| s["metadata"]["labels"][SERVICE_NAME_LABEL] == name && is_managed(s))
        .collect();
    slices.sort_by(|a, b| meta(a, "name").cmp(meta(b, "name")));
    slices
}

/// A stored slice as placement sees it: its endpoints are the ones the memo saw it written
/// with when it is the same stored object, else copies of its own.
fn existing<'a>(slice: &'a Arc<Value>, memo: &'a SliceMemo) -> Existing<'a> {
    let name = meta(slice, "name");
    let endpoints = match memo.get(name) {
        Some((seen, endpoints)) if Arc::ptr_eq(seen, slice) => Cow::Borrowed(&endpoints[..]),
        _ => slice["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| Arc::new(e.clone()))
            .collect(),
    };
    Existing {
        name,
        ports: slice["ports"].as_array(),
        endpoints,
    }
}

/// Whether two lists hold equal endpoints, most of them the same ones.
fn same_endpoints(a: &[Endpoint], b: &[Endpoint]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
}

fn write_slices(
    ctx: &Ctx,
    svc: &Value,
    groups: &[Group],
    memo: &mut SliceMemo,
) -> Result<(), ApiError> {
    let (ns, name) = (meta(svc, "namespace"), meta(svc, "name"));
    let store = &ctx.api.store;
    let stored = current_slices(&ctx.api, ns, name);
    let existing: Vec<Existing> = stored.iter().map(|s| existing(s, memo)).collect();
    let placement = place(&existing, groups);
    let mut seen = HashMap::new();
    for (slice_name, ports, endpoints) in &placement.slices {
        let current = slice_name.as_deref().and_then(|n| {
            let i = existing.iter().position(|s| s.name == n)?;
            Some((&stored[i], &existing[i]))
        });
        let as_json = || Value::Array(endpoints.iter().map(|e| Value::clone(e)).collect());
        match (slice_name, current) {
            // Most of a large Service's slices stay as they were when one Pod changes.
            (Some(slice_name), Some((slice, held)))
                if held.ports == Some(ports) && same_endpoints(&held.endpoints, endpoints) =>
            {
                seen.insert(slice_name.clone(), (slice.clone(), endpoints.clone()));
            }
            (Some(slice_name), _) => {
                let written = store
                    .modify(
                        Kind::EndpointSlice,
                        ns,
                        slice_name,
                        |s| -> Result<bool, ()> {
                            s["ports"] = json!(ports);
                            s["endpoints"] = as_json();
                            Ok(true)
                        },
                    )
                    .map_err(|_| ApiError::internal("endpointslice update failed"))?;
                if let Some(written) = written {
                    seen.insert(slice_name.clone(), (written, endpoints.clone()));
                }
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
                    "endpoints": as_json(),
                });
                let created = ctx.api.create_value(Kind::EndpointSlice, slice)?;
                let name = meta(&created, "name");
                if let Some(stored) = store.get(Kind::EndpointSlice, ns, name) {
                    seen.insert(name.to_owned(), (stored, endpoints.clone()));
                }
            }
        }
    }
    for gone in &placement.delete {
        let _ = store.delete(Kind::EndpointSlice, ns, gone, None);
    }
    *memo = seen;
    Ok(())
}

fn write_endpoints(ctx: &Ctx, mirror: Value) -> Result<(), ApiError> {
    let store = &ctx.api.store;
    let (ns, name) = (
        meta(&mirror, "namespace").to_string(),
        meta(&mirror, "name").to_string(),
    );
    match store.get(Kind::Endpoints, &ns, &name) {
        // Compared before `modify`, which would copy 1,000 addresses to find the same.
        Some(current) if current.get("subsets") == mirror.get("subsets") => {}
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

/// Brings a Service's slices and LoadBalancer status up to date.
pub fn reconcile(ctx: &Ctx, ns: &str, name: &str) -> Result<(), ApiError> {
    let started = std::time::Instant::now();
    let store = &ctx.api.store;
    let key = (ns.to_owned(), name.to_owned());
    let mut cache = ctx.endpoint_cache.lock().unwrap_or_else(|e| e.into_inner());
    let Some(svc) = store.get(Kind::Service, ns, name) else {
        cache.services.remove(&key);
        for s in current_slices(&ctx.api, ns, name) {
            let _ = store.delete(Kind::EndpointSlice, ns, meta(&s, "name"), None);
        }
        return Ok(());
    };
    assign_load_balancer(ctx, &svc)?;
    let selector = selector_of(&svc);
    // Services without a selector have slices managed by someone else.
    if selector.is_none() && !is_api_server(ns, name) {
        cache.services.remove(&key);
        return Ok(());
    }
    let memo = cache.services.entry(key).or_default();
    let desired = match selector.filter(|_| !is_api_server(ns, name)) {
        None => {
            let cp = ctx.api.cluster.control_plane();
            vec![(
                vec![json!({"name": "https", "port": 6443, "protocol": "TCP"})],
                vec![Arc::new(
                    json!({"addresses": [cp.internal_ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}}),
                )],
            )]
        }
        // In name order, as the store lists them.
        Some(selector) => {
            let pods = store.list(Kind::Pod, Some(ns)).0;
            desired_groups(&svc, &selector, &pods, memo)
        }
    };
    write_slices(ctx, &svc, &desired, &mut memo.slices)?;
    tracing::debug!(service = name, took = ?started.elapsed(), "slices reconciled");
    Ok(())
}

/// The `kubernetes` Service, whose endpoint is the API server.
fn is_api_server(ns: &str, name: &str) -> bool {
    ns == "default" && name == "kubernetes"
}

/// Brings a Service's Endpoints in line with its slices. A task of its own, after the
/// slices': the dataplanes wait for slices, while the Endpoints (1,000 addresses in one
/// object) are for readers, and a burst of slice changes rewrites them once. Slices that
/// are not the ones this controller last wrote (edited or deleted by a client) are
/// reconciled first, so the Endpoints never copy a damaged slice.
pub fn reconcile_mirror(ctx: &Ctx, ns: &str, name: &str) -> Result<(), ApiError> {
    let store = &ctx.api.store;
    let Some(svc) = store.get(Kind::Service, ns, name) else {
        let _ = store.delete(Kind::Endpoints, ns, name, None);
        return Ok(());
    };
    // Services without a selector have their Endpoints managed by someone else.
    if selector_of(&svc).is_none() && !is_api_server(ns, name) {
        return Ok(());
    }
    let mut slices = current_slices(&ctx.api, ns, name);
    let written = {
        let cache = ctx.endpoint_cache.lock().unwrap_or_else(|e| e.into_inner());
        let memo = cache.services.get(&(ns.to_owned(), name.to_owned()));
        memo.is_some_and(|memo| {
            memo.slices.len() == slices.len()
                && slices.iter().all(|s| {
                    let seen = memo.slices.get(meta(s, "name"));
                    seen.is_some_and(|(seen, _)| Arc::ptr_eq(seen, s))
                })
        })
    };
    if !written {
        reconcile(ctx, ns, name)?;
        slices = current_slices(&ctx.api, ns, name);
    }
    write_endpoints(ctx, endpoints_mirror(&svc, &slices))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(i: usize) -> Endpoint {
        Arc::new(
            json!({"addresses": [format!("10.244.1.{i}")], "targetRef": {"uid": format!("uid-{i}")}}),
        )
    }

    /// Slices as placement sees them without a memo.
    fn seen(slices: &[Arc<Value>]) -> Vec<Existing<'_>> {
        static NO_MEMO: std::sync::LazyLock<SliceMemo> = std::sync::LazyLock::new(HashMap::new);
        slices.iter().map(|s| existing(s, &NO_MEMO)).collect()
    }

    fn as_json(endpoints: &[Endpoint]) -> Vec<Value> {
        endpoints.iter().map(|e| Value::clone(e)).collect()
    }

    fn ports() -> Vec<Value> {
        vec![json!({"name": "", "port": 8080, "protocol": "TCP"})]
    }

    /// Stored slices named `s0`, `s1`, ... holding the placement's endpoints.
    fn stored(placement: &Placement) -> Vec<Arc<Value>> {
        placement
            .slices
            .iter()
            .enumerate()
            .map(|(i, (_, ports, eps))| {
                Arc::new(json!({"metadata": {"name": format!("s{i}")}, "ports": ports, "endpoints": as_json(eps)}))
            })
            .collect()
    }

    #[test]
    fn a_pod_that_goes_or_comes_rewrites_one_slice() {
        let all: Vec<Endpoint> = (0..250).map(ep).collect();
        let first = place(&[], &[(ports(), all.clone())]);
        let sizes: Vec<usize> = first.slices.iter().map(|(_, _, e)| e.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let slices = stored(&first);

        // Endpoint 5 leaves: only the first slice changes; no endpoint moves.
        let mut fewer = all.clone();
        fewer.remove(5);
        let after = place(&seen(&slices), &[(ports(), fewer.clone())]);
        let changed: Vec<&str> = after
            .slices
            .iter()
            .zip(&slices)
            .filter(|((_, _, eps), s)| s["endpoints"].as_array() != Some(&as_json(eps)))
            .map(|(_, s)| meta(s, "name"))
            .collect();
        assert_eq!(changed, ["s0"]);
        assert_eq!(after.slices[0].2.len(), 99);
        assert!(after.delete.is_empty());

        // A newcomer fills the gap in the first slice with room.
        let slices = stored(&after);
        let mut more = fewer;
        more.push(ep(250));
        let after = place(&seen(&slices), &[(ports(), more)]);
        assert_eq!(after.slices[0].2.len(), 100);
        assert_eq!(after.slices[0].2[99], ep(250));
        assert_eq!(
            &as_json(&after.slices[1].2),
            slices[1]["endpoints"].as_array().unwrap()
        );
    }

    #[test]
    fn new_ports_get_new_slices_and_each_port_group_keeps_its_own() {
        let first = place(&[], &[(ports(), (0..3).map(ep).collect())]);
        let slices = stored(&first);
        // The target port changes: the old slice no longer fits and goes, after the new
        // one is written (the plan lists writes; deletions happen last).
        let other = vec![json!({"name": "", "port": 9090, "protocol": "TCP"})];
        let moved = place(&seen(&slices), &[(other.clone(), (0..3).map(ep).collect())]);
        assert_eq!(moved.slices.len(), 1);
        assert_eq!(moved.slices[0].0, None);
        assert_eq!(moved.delete, ["s0"]);
        // Two groups (Pods that resolve a named port differently) keep their slices apart.
        let groups = [(ports(), vec![ep(0), ep(1)]), (other.clone(), vec![ep(2)])];
        let split = place(&seen(&slices), &groups);
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
        let api = |ip: &str| Arc::new(json!({"addresses": [ip], "conditions": {"ready": true}}));
        let first = place(&[], &[(ports(), vec![api("172.18.0.2")])]);
        let again = place(
            &seen(&stored(&first)),
            &[(ports(), vec![api("172.18.0.2")])],
        );
        assert_eq!(
            again.slices,
            [(Some("s0".to_owned()), ports(), vec![api("172.18.0.2")])]
        );
    }

    #[test]
    fn emptied_slices_go_but_a_service_keeps_one() {
        let first = place(&[], &[(ports(), (0..150).map(ep).collect())]);
        let slices = stored(&first);
        let after = place(&seen(&slices), &[(ports(), (0..50).map(ep).collect())]);
        assert_eq!(after.slices.len(), 1);
        assert_eq!(after.delete, ["s1"]);
        let none = place(&seen(&slices), &[]);
        assert_eq!(none.slices, [(Some("s0".to_owned()), vec![], vec![])]);
        assert_eq!(none.delete, ["s1"]);
    }

    fn selector() -> LabelSelector {
        LabelSelector::from_map(json!({"app": "web"}).as_object().unwrap())
    }

    fn pod(name: &str, ip: &str, ready: bool) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "lab-worker"},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
    }

    #[test]
    fn an_unchanged_pod_keeps_its_endpoint_and_the_memo_forgets_pods_that_left() {
        let svc = Arc::new(json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}));
        let (a, b) = (pod("a", "10.244.1.2", true), pod("b", "10.244.1.3", true));
        let other = Arc::new(
            json!({"metadata": {"name": "c", "labels": {"app": "db"}}, "status": {"podIP": "10.244.1.4"}}),
        );
        let mut memo = ServiceMemo::default();
        let first = desired_groups(
            &svc,
            &selector(),
            &[a.clone(), b.clone(), other.clone()],
            &mut memo,
        );
        assert_eq!(
            first[0].0,
            [json!({"name": "", "port": 8080, "protocol": "TCP"})]
        );
        assert_eq!(
            first[0].1.len(),
            2,
            "the Pod the selector leaves out has no endpoint"
        );
        assert_eq!(memo.pods.len(), 2, "and the memo does not hold it");
        assert_eq!(first[0].1[1]["addresses"], json!(["10.244.1.3"]));

        // b changes (a new stored object) and a stays: a's endpoint is the same one.
        let b2 = pod("b", "10.244.1.3", false);
        let second = desired_groups(
            &svc,
            &selector(),
            &[a.clone(), b2.clone(), other.clone()],
            &mut memo,
        );
        assert!(Arc::ptr_eq(&first[0].1[0], &second[0].1[0]));
        assert!(!Arc::ptr_eq(&first[0].1[1], &second[0].1[1]));
        assert_eq!(second[0].1[1]["conditions"]["ready"], false);

        // An equal but newly stored Pod gets a new endpoint, equal by value; Pods that left
        // are forgotten.
        let a2 = Arc::new(Value::clone(&a));
        let third = desired_groups(&svc, &selector(), std::slice::from_ref(&a2), &mut memo);
        assert!(!Arc::ptr_eq(&first[0].1[0], &third[0].1[0]));
        assert_eq!(first[0].1[0], third[0].1[0]);
        assert_eq!(memo.pods.len(), 1);

        // A Pod relabelled out of the selector leaves, under the same Service.
        let mut relabelled = Value::clone(&b2);
        relabelled["metadata"]["labels"] = json!({"app": "other"});
        let relabelled = Arc::new(relabelled);
        let fewer = desired_groups(&svc, &selector(), &[a2.clone(), relabelled], &mut memo);
        assert_eq!(fewer[0].1.len(), 1);
        assert_eq!(memo.pods.len(), 1);

        // A changed Service selects again: the Pod it no longer selects leaves, the other
        // keeps its endpoint.
        let narrower = Arc::new(json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}));
        let selector =
            LabelSelector::from_map(json!({"app": "web", "tier": "x"}).as_object().unwrap());
        assert!(
            desired_groups(&narrower, &selector, std::slice::from_ref(&a2), &mut memo).is_empty()
        );
        let fourth = desired_groups(&svc, &self::selector(), &[a2], &mut memo);
        assert_eq!(fourth[0].1[0], first[0].1[0]);
    }

    #[test]
    fn a_slice_the_memo_saw_written_gives_the_endpoints_it_was_written_with() {
        let endpoints = vec![ep(1), ep(2)];
        let slice = Arc::new(
            json!({"metadata": {"name": "s0"}, "ports": ports(), "endpoints": as_json(&endpoints)}),
        );
        let mut memo = HashMap::new();
        let copies = existing(&slice, &memo);
        assert_eq!((copies.name, copies.ports), ("s0", Some(&ports())));
        assert!(!Arc::ptr_eq(&copies.endpoints[0], &endpoints[0]));
        assert!(same_endpoints(&copies.endpoints, &endpoints));
        memo.insert("s0".to_owned(), (slice.clone(), endpoints.clone()));
        assert!(Arc::ptr_eq(
            &existing(&slice, &memo).endpoints[1],
            &endpoints[1]
        ));
        // A memo of another stored object is not trusted: the stored slice is read.
        let rewritten = Arc::new(Value::clone(&slice));
        assert!(!Arc::ptr_eq(
            &existing(&rewritten, &memo).endpoints[1],
            &endpoints[1]
        ));
        assert!(!same_endpoints(&endpoints, &[ep(1), ep(3)]));
        assert!(!same_endpoints(&endpoints, &endpoints[..1]));
    }

    #[test]
    fn an_endpoint_that_changed_keeps_its_place_and_unchanged_ones_are_matched_by_pointer() {
        let all: Vec<Endpoint> = (0..150).map(ep).collect();
        let first = place(&[], &[(ports(), all.clone())]);
        let slices = stored(&first);
        let memo: SliceMemo = slices
            .iter()
            .zip(&first.slices)
            .map(|(s, (_, _, eps))| (meta(s, "name").to_owned(), (s.clone(), eps.clone())))
            .collect();
        let existing: Vec<Existing> = slices.iter().map(|s| existing(s, &memo)).collect();
        // Endpoint 120 (in the second slice) is rebuilt: a new Arc with the same uid; 3 leaves.
        let mut now = all.clone();
        now[120] = Arc::new(json!({"addresses": ["10.244.9.9"], "targetRef": {"uid": "uid-120"}}));
        now.remove(3);
        let after = place(&existing, &[(ports(), now.clone())]);
        assert_eq!(after.slices[0].2.len(), 99);
        assert!(same_endpoints(&after.slices[1].2[..20], &all[100..120]));
        assert!(Arc::ptr_eq(&after.slices[1].2[20], &now[119]));
        assert_eq!(after.slices[1].2.len(), 50);
    }

    #[test]
    fn the_endpoints_mirror_lists_slice_addresses_in_pod_order_without_terminating_ones() {
        let svc =
            json!({"metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}}});
        let address = |name: &str, ip: &str, ready: bool, terminating: bool| {
            json!({
                "addresses": [ip], "nodeName": "lab-worker",
                "conditions": {"ready": ready, "serving": ready, "terminating": terminating},
                "targetRef": {"kind": "Pod", "name": name},
            })
        };
        let ports = json!([{"name": "", "port": 8080, "protocol": "TCP"}]);
        let slices = [
            Arc::new(json!({"ports": ports, "endpoints": [
                address("web-c", "10.244.1.4", true, false),
                address("web-a", "10.244.1.2", true, false),
            ]})),
            Arc::new(json!({"ports": ports, "endpoints": [
                address("web-b", "10.244.2.2", false, false),
                address("web-d", "10.244.2.3", false, true),
            ]})),
            Arc::new(json!({"ports": [], "endpoints": []})),
        ];
        let mirror = endpoints_mirror(&svc, &slices);
        let ips = |field: &str| -> Vec<Value> {
            mirror["subsets"][0][field]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["ip"].clone())
                .collect()
        };
        assert_eq!(mirror["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(mirror["subsets"].as_array().unwrap().len(), 1);
        assert_eq!(mirror["subsets"][0]["ports"], ports);
        assert_eq!(ips("addresses"), [json!("10.244.1.2"), json!("10.244.1.4")]);
        assert_eq!(ips("notReadyAddresses"), [json!("10.244.2.2")]);
        assert_eq!(
            mirror["subsets"][0]["addresses"][0]["targetRef"]["name"],
            "web-a"
        );
        // No endpoints at all: no subsets, as kube-controller-manager writes them.
        assert!(
            endpoints_mirror(&svc, &slices[2..])
                .get("subsets")
                .is_none()
        );
    }
}
