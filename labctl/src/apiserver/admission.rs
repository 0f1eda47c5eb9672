//! What the API server does to an object before storing it: server-owned metadata, defaults,
//! validation, and the Service address allocators.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use labapi::{ApiError, Cause, Kind};
use serde_json::{Value, json};

use crate::cluster::ClusterConfig;
use crate::store::Store;

/// RFC 3339 time to the second, as Kubernetes writes timestamps.
pub fn timestamp(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Now, as a Kubernetes timestamp.
pub fn now() -> String {
    timestamp(jiff::Timestamp::now())
}

/// Kinds whose `metadata.generation` counts spec changes.
fn has_generation(kind: Kind) -> bool {
    matches!(kind, Kind::Deployment | Kind::ReplicaSet | Kind::Pod)
}

/// Kinds whose status the client cannot set on create (the controllers own it).
fn status_is_server_owned(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Pod | Kind::Service | Kind::Deployment | Kind::ReplicaSet
    )
}

const NAME_SUFFIX_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Five characters from Kubernetes' `generateName` alphabet (no vowels, no look-alikes).
pub fn random_suffix(len: usize) -> String {
    (0..len)
        .map(|_| NAME_SUFFIX_CHARS[fastrand::usize(..NAME_SUFFIX_CHARS.len())] as char)
        .collect()
}

/// Fills the metadata a create gets from the server and checks the namespace.
pub fn stamp_create(
    kind: Kind,
    url_namespace: Option<&str>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let info = kind.info();
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    if info.namespaced {
        let ns = url_namespace.unwrap_or("default");
        match meta["namespace"].as_str() {
            Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => meta["namespace"] = json!(ns),
        }
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    let name_missing = meta["name"].as_str().is_none_or(str::is_empty);
    if name_missing && let Some(prefix) = meta["generateName"].as_str().filter(|p| !p.is_empty()) {
        meta["name"] = json!(format!("{prefix}{}", random_suffix(5)));
    }
    meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
    meta["creationTimestamp"] = json!(now());
    let m = meta.as_object_mut().expect("metadata is an object");
    for server_owned in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    ] {
        m.remove(server_owned);
    }
    if has_generation(kind) {
        m.insert("generation".into(), json!(1));
    } else {
        m.remove("generation");
    }
    if status_is_server_owned(kind)
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
    let info = kind.info();
    obj["apiVersion"] = json!(info.api_version());
    obj["kind"] = json!(info.kind_name);
    Ok(())
}

/// Carries over what an update may not change (uid, creation time, generation unless the
/// spec changed) from the stored object.
pub fn stamp_update(kind: Kind, old: &Value, obj: &mut Value, status_only: bool) {
    let info = kind.info();
    obj["apiVersion"] = json!(info.api_version());
    obj["kind"] = json!(info.kind_name);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    for keep in [
        "uid",
        "creationTimestamp",
        "namespace",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old["metadata"].get(keep) {
            Some(v) => obj["metadata"][keep] = v.clone(),
            None => {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove(keep);
                }
            }
        }
    }
    if status_only {
        // The status subresource changes status and nothing else.
        let status = obj.get("status").cloned();
        *obj = old.clone();
        match status {
            Some(s) => obj["status"] = s,
            None => {
                obj.as_object_mut().map(|o| o.remove("status"));
            }
        }
        return;
    }
    if status_is_server_owned(kind) {
        match old.get("status") {
            Some(s) => obj["status"] = s.clone(),
            None => {
                obj.as_object_mut().map(|o| o.remove("status"));
            }
        }
    }
    if has_generation(kind) {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let bumped = if old.get("spec") != obj.get("spec") {
            generation + 1
        } else {
            generation
        };
        obj["metadata"]["generation"] = json!(bumped);
    }
}

fn ip_to_u32(ip: &str) -> Option<u32> {
    ip.parse::<Ipv4Addr>().ok().map(u32::from)
}

/// Gives a Service its ClusterIP and NodePorts, honouring requested values. The in-use sets are
/// read from the stored Services each time, so nothing can drift from the store; the caller
/// holds the allocation lock until the Service is stored.
pub fn allocate_service(
    store: &Store,
    cluster: &ClusterConfig,
    svc: &mut Value,
    old: Option<&Value>,
) -> Result<(), Vec<Cause>> {
    let (services, _) = store.list(Kind::Service, None);
    let me = (
        svc["metadata"]["namespace"].clone(),
        svc["metadata"]["name"].clone(),
    );
    let others = services.iter().filter(|s| {
        (
            s["metadata"]["namespace"].clone(),
            s["metadata"]["name"].clone(),
        ) != me
    });
    let mut used_ips: HashSet<u32> = HashSet::new();
    let mut used_ports: HashSet<i64> = HashSet::new();
    for s in others {
        if let Some(ip) = s["spec"]["clusterIP"].as_str().and_then(ip_to_u32) {
            used_ips.insert(ip);
        }
        for p in s["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(np) = p["nodePort"].as_i64() {
                used_ports.insert(np);
            }
        }
    }
    let mut causes = Vec::new();
    let svc_type = svc["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    if svc_type != "ExternalName" {
        allocate_cluster_ip(cluster, svc, old, &used_ips, &mut causes);
    }
    let wants_node_ports = svc_type == "NodePort"
        || (svc_type == "LoadBalancer"
            && svc["spec"]["allocateLoadBalancerNodePorts"].as_bool() != Some(false));
    let ports = svc["spec"]["ports"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut ports_out = Vec::with_capacity(ports.len());
    let (lo, hi) = cluster.node_port_range;
    for (i, mut p) in ports.into_iter().enumerate() {
        if !wants_node_ports {
            if let Some(np) = p.get("nodePort")
                && !np.is_null()
                && svc_type == "ClusterIP"
            {
                causes.push(Cause::forbidden(
                    format!("spec.ports[{i}].nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
            ports_out.push(p);
            continue;
        }
        match p["nodePort"].as_i64().filter(|n| *n != 0) {
            Some(np) => {
                let field = format!("spec.ports[{i}].nodePort");
                if np < i64::from(lo) || np > i64::from(hi) {
                    causes.push(Cause::invalid(
                        field,
                        &json!(np),
                        format!("provided port is not in the valid range. The range of valid ports is {lo}-{hi}"),
                    ));
                } else if !used_ports.insert(np) {
                    causes.push(Cause::invalid(
                        field,
                        &json!(np),
                        "provided port is already allocated",
                    ));
                }
            }
            None => {
                // Keep the port this Service had, as kube-apiserver does on type changes.
                let kept = old
                    .and_then(|o| o["spec"]["ports"].as_array())
                    .and_then(|ps| {
                        ps.iter()
                            .find(|op| op["port"] == p["port"] && op["protocol"] == p["protocol"])
                    })
                    .and_then(|op| op["nodePort"].as_i64());
                let port = kept.or_else(|| random_free(i64::from(lo), i64::from(hi), &used_ports));
                match port {
                    Some(np) => {
                        used_ports.insert(np);
                        p["nodePort"] = json!(np);
                    }
                    None => causes.push(Cause::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        &json!(0),
                        "range is full",
                    )),
                }
            }
        }
        ports_out.push(p);
    }
    svc["spec"]["ports"] = json!(ports_out);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(causes)
    }
}

fn allocate_cluster_ip(
    cluster: &ClusterConfig,
    svc: &mut Value,
    old: Option<&Value>,
    used: &HashSet<u32>,
    causes: &mut Vec<Cause>,
) {
    let requested = svc["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
    if requested == "None" {
        svc["spec"]["clusterIPs"] = json!(["None"]);
        return;
    }
    if requested.is_empty()
        && let Some(kept) = old
            .and_then(|o| o["spec"]["clusterIP"].as_str())
            .filter(|ip| !ip.is_empty())
    {
        svc["spec"]["clusterIP"] = json!(kept);
        svc["spec"]["clusterIPs"] = json!([kept]);
        return;
    }
    let net = cluster.service_cidr;
    let first = u32::from(net.network()) + 1;
    let last = u32::from(net.broadcast()) - 1;
    let ip = if requested.is_empty() {
        // Random, as kube-apiserver allocates; the low addresses (kubernetes, DNS) stay free.
        let mut pick = None;
        for _ in 0..1000 {
            let candidate = fastrand::u32(first + 16..=last);
            if !used.contains(&candidate) {
                pick = Some(candidate);
                break;
            }
        }
        match pick.or_else(|| (first..=last).find(|c| !used.contains(c))) {
            Some(ip) => ip,
            None => {
                causes.push(Cause::invalid(
                    "spec.clusterIPs",
                    &json!([]),
                    "failed to allocate IP: range is full",
                ));
                return;
            }
        }
    } else {
        let Some(ip) = ip_to_u32(&requested) else {
            causes.push(Cause::invalid(
                "spec.clusterIPs[0]",
                &json!(requested),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
            return;
        };
        let unchanged =
            old.and_then(|o| o["spec"]["clusterIP"].as_str()) == Some(requested.as_str());
        if !unchanged {
            if ip < first || ip > last {
                causes.push(Cause::invalid(
                    "spec.clusterIPs",
                    &json!(format!("[]string{{\"{requested}\"}}")),
                    format!("failed to allocate IP {requested}: provided IP ({requested}) is not in the valid range. The range of valid IPs is {net}"),
                ));
                return;
            }
            if used.contains(&ip) {
                causes.push(Cause::invalid(
                    "spec.clusterIPs",
                    &json!(format!("[]string{{\"{requested}\"}}")),
                    format!("failed to allocate IP {requested}: provided IP is already allocated"),
                ));
                return;
            }
        }
        ip
    };
    let ip = Ipv4Addr::from(ip).to_string();
    svc["spec"]["clusterIP"] = json!(ip);
    svc["spec"]["clusterIPs"] = json!([ip]);
}

fn random_free(lo: i64, hi: i64, used: &HashSet<i64>) -> Option<i64> {
    for _ in 0..1000 {
        let p = fastrand::i64(lo..=hi);
        if !used.contains(&p) {
            return Some(p);
        }
    }
    (lo..=hi).find(|p| !used.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, spec: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn allocates_in_range_and_refuses_clashes() {
        let store = Store::in_memory();
        let cluster = ClusterConfig::new("lab", 2);
        let mut a = svc(
            "a",
            json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}),
        );
        allocate_service(&store, &cluster, &mut a, None).unwrap();
        let ip: Ipv4Addr = a["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(cluster.service_cidr.contains(&ip));
        let np = a["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&np));
        store.create(Kind::Service, a.clone()).unwrap();

        let mut b = svc(
            "b",
            json!({"type": "NodePort", "clusterIP": ip.to_string(), "ports": [{"port": 80, "protocol": "TCP", "nodePort": np}]}),
        );
        let causes = allocate_service(&store, &cluster, &mut b, None).unwrap_err();
        let text: Vec<String> = causes.iter().map(Cause::to_string).collect();
        assert!(
            text[0].contains("provided IP is already allocated"),
            "{text:?}"
        );
        assert!(
            text[1].contains("provided port is already allocated"),
            "{text:?}"
        );

        let mut c = svc(
            "c",
            json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 80}]}),
        );
        let causes = allocate_service(&store, &cluster, &mut c, None).unwrap_err();
        assert_eq!(
            causes[0].to_string(),
            "spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"
        );
    }

    #[test]
    fn a_type_change_keeps_addresses() {
        let store = Store::in_memory();
        let cluster = ClusterConfig::new("lab", 2);
        let mut a = svc(
            "a",
            json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}),
        );
        allocate_service(&store, &cluster, &mut a, None).unwrap();
        let mut changed = a.clone();
        changed["spec"]["ports"][0]
            .as_object_mut()
            .unwrap()
            .remove("nodePort");
        changed["spec"]["type"] = json!("NodePort");
        allocate_service(&store, &cluster, &mut changed, Some(&a)).unwrap();
        assert_eq!(
            changed["spec"]["ports"][0]["nodePort"],
            a["spec"]["ports"][0]["nodePort"]
        );
        assert_eq!(changed["spec"]["clusterIP"], a["spec"]["clusterIP"]);
    }
}
