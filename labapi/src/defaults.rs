//! What kube-apiserver fills in when it decodes an object: the `SetDefaults_*` functions of
//! `pkg/apis/*/v1/defaults.go`, plus the few values its create strategies and admission
//! plugins always add for a plain lab object (a Service's IP families, a Namespace's
//! finalizer, a Pod's priority). Identity and bookkeeping metadata (uid, timestamps,
//! resourceVersion, generation) and allocated values (clusterIP, nodePort) are the server's.
//!
//! Every default is applied only where the field is unset, so applying twice changes nothing.
//! As in Go, where the field is a plain string, an empty string counts as unset.

use serde_json::{Map, Value, json};

use crate::resource::Kind;

type Object = Map<String, Value>;

/// Fills in the defaults of `kind` in `obj`. Idempotent; objects that are not JSON objects
/// are left alone (the decoder never produces them).
pub fn apply_defaults(kind: Kind, obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    match kind {
        Kind::Namespace => namespace(root),
        Kind::Node => node(root),
        Kind::Pod => pod(root),
        Kind::Service => service(root),
        Kind::Endpoints => endpoints(root),
        Kind::Event => {}
        Kind::EndpointSlice => endpoint_slice(root),
        Kind::Deployment => deployment(root),
        Kind::ReplicaSet => replica_set(root),
    }
}

/// The object at `key`, created when missing or `null` (Go's zero-value structs serialize).
fn child<'a>(map: &'a mut Object, key: &str) -> &'a mut Object {
    let slot = map.entry(key).or_insert(Value::Null);
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("just made an object")
}

/// The objects of the list at `key`, if there is one.
fn each<'a>(map: &'a mut Object, key: &str) -> impl Iterator<Item = &'a mut Object> {
    map.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// Sets a pointer-like field: only a missing or `null` value counts as unset.
fn default(map: &mut Object, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_string(), value);
    }
}

/// Sets a string or number field: Go's zero value (`""`, `0`) counts as unset too.
fn default_zero(map: &mut Object, key: &str, value: Value) {
    let unset = match map.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(_) => false,
    };
    if unset {
        map.insert(key.to_string(), value);
    }
}

fn str_at<'a>(map: &'a Object, key: &str) -> &'a str {
    map.get(key).and_then(Value::as_str).unwrap_or("")
}

fn namespace(root: &mut Object) {
    let name = child(root, "metadata")
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !name.is_empty() {
        // SetDefaults_Namespace overwrites the label: it always names the namespace.
        child(child(root, "metadata"), "labels")
            .insert("kubernetes.io/metadata.name".to_string(), json!(name));
    }
    // The strategy adds the finalizer on create only, so that the namespace controller can
    // remove it later; an explicitly empty list is therefore left alone.
    default(child(root, "spec"), "finalizers", json!(["kubernetes"]));
    default_zero(child(root, "status"), "phase", json!("Active"));
}

fn node(root: &mut Object) {
    let status = child(root, "status");
    if let Some(capacity) = status.get("capacity").cloned() {
        default(status, "allocatable", capacity);
    }
}

fn deployment(root: &mut Object) {
    let spec = child(root, "spec");
    default(spec, "replicas", json!(1));
    let strategy = child(spec, "strategy");
    default_zero(strategy, "type", json!("RollingUpdate"));
    if str_at(strategy, "type") == "RollingUpdate" {
        let rolling = child(strategy, "rollingUpdate");
        default(rolling, "maxUnavailable", json!("25%"));
        default(rolling, "maxSurge", json!("25%"));
    }
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    pod_template(spec);
}

fn replica_set(root: &mut Object) {
    let spec = child(root, "spec");
    default(spec, "replicas", json!(1));
    pod_template(spec);
}

/// `spec.template` of a Deployment or ReplicaSet. The real server prints the template's zero
/// `creationTimestamp` as `null`, so `-o yaml` shows it; it is added here for the same look.
fn pod_template(spec: &mut Object) {
    let template = child(spec, "template");
    default(
        child(template, "metadata"),
        "creationTimestamp",
        Value::Null,
    );
    pod_spec(child(template, "spec"), false);
}

fn pod(root: &mut Object) {
    let spec = child(root, "spec");
    pod_spec(spec, true);
    // SetDefaults_Pod, not SetDefaults_PodSpec: templates do not get it.
    default(spec, "enableServiceLinks", json!(true));
    // The Priority admission plugin, for a pod without a priority class.
    if str_at(spec, "priorityClassName").is_empty() {
        default(spec, "priority", json!(0));
    }
    default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
}

fn pod_spec(spec: &mut Object, is_pod: bool) {
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for list in ["initContainers", "containers"] {
        for c in each(spec, list) {
            container(c, is_pod, host_network);
        }
    }
    default_zero(spec, "dnsPolicy", json!("ClusterFirst"));
    default_zero(spec, "restartPolicy", json!("Always"));
    default_zero(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    for volume in each(spec, "volumes") {
        for source in ["configMap", "secret", "downwardAPI", "projected"] {
            if let Some(src) = volume.get_mut(source).and_then(Value::as_object_mut) {
                // 0644, the mode kube-apiserver stores as decimal 420.
                default(src, "defaultMode", json!(420));
            }
        }
    }
}

fn container(c: &mut Object, is_pod: bool, host_network: bool) {
    let policy = if pulls_latest(str_at(c, "image")) {
        "Always"
    } else {
        "IfNotPresent"
    };
    default_zero(c, "imagePullPolicy", json!(policy));
    default_zero(c, "terminationMessagePath", json!("/dev/termination-log"));
    default_zero(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    for port in each(c, "ports") {
        default_zero(port, "protocol", json!("TCP"));
        if host_network && let Some(cp) = port.get("containerPort").cloned() {
            default_zero(port, "hostPort", cp);
        }
    }
    for env in each(c, "env") {
        if let Some(field_ref) = env
            .get_mut("valueFrom")
            .and_then(|v| v.get_mut("fieldRef"))
            .and_then(Value::as_object_mut)
        {
            default_zero(field_ref, "apiVersion", json!("v1"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            default_zero(p, "timeoutSeconds", json!(1));
            default_zero(p, "periodSeconds", json!(10));
            default_zero(p, "successThreshold", json!(1));
            default_zero(p, "failureThreshold", json!(3));
            if let Some(get) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                default_zero(get, "path", json!("/"));
                default_zero(get, "scheme", json!("HTTP"));
            }
        }
    }
    // SetDefaults_Pod: requests default to limits, for Pods only (not templates).
    if is_pod {
        let resources = child(c, "resources");
        if let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() {
            let requests = child(resources, "requests");
            for (name, quantity) in limits {
                requests.entry(name).or_insert(quantity);
            }
        }
    }
}

/// Whether kube-apiserver defaults the pull policy to `Always`: the image's tag is `latest`,
/// or it has neither tag nor digest (which means `latest`).
fn pulls_latest(image: &str) -> bool {
    // An unparsable reference (kubelet's ParseImageName fails) has no tag: IfNotPresent.
    if image.is_empty()
        || image
            .chars()
            .any(|c| c.is_ascii_uppercase() || c.is_whitespace())
    {
        return false;
    }
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last_segment = name.rsplit('/').next().unwrap_or(name);
    match last_segment.split_once(':') {
        Some((_, tag)) => tag == "latest",
        None => digest.is_none(),
    }
}

fn service(root: &mut Object) {
    let spec = child(root, "spec");
    default_zero(spec, "sessionAffinity", json!("None"));
    match str_at(spec, "sessionAffinity") {
        "None" => {
            spec.remove("sessionAffinityConfig");
        }
        "ClientIP" => {
            let timeout = spec
                .get("sessionAffinityConfig")
                .and_then(|c| c.get("clientIP"))
                .and_then(|c| c.get("timeoutSeconds"));
            if timeout.is_none_or(Value::is_null) {
                spec.insert(
                    "sessionAffinityConfig".to_string(),
                    json!({ "clientIP": { "timeoutSeconds": 10800 } }),
                );
            }
        }
        _ => {}
    }
    default_zero(spec, "type", json!("ClusterIP"));
    for port in each(spec, "ports") {
        default_zero(port, "protocol", json!("TCP"));
        if let Some(number) = port.get("port").filter(|p| p.is_number()).cloned() {
            default_zero(port, "targetPort", number);
        }
    }
    let kind = str_at(spec, "type").to_string();
    let external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|ips| !ips.is_empty());
    let externally_accessible =
        kind == "NodePort" || kind == "LoadBalancer" || (kind == "ClusterIP" && external_ips);
    if externally_accessible {
        default_zero(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if matches!(kind.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    // The registry's IP family allocation on a single-stack IPv4 cluster, which the lab is.
    if kind != "ExternalName" {
        default(spec, "ipFamilyPolicy", json!("SingleStack"));
        let no_families = spec
            .get("ipFamilies")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if no_families {
            spec.insert("ipFamilies".to_string(), json!(["IPv4"]));
        }
    }
    let load_balancer = child(child(root, "status"), "loadBalancer");
    if kind == "LoadBalancer" {
        for ingress in each(load_balancer, "ingress") {
            if !str_at(ingress, "ip").is_empty() {
                default(ingress, "ipMode", json!("VIP"));
            }
        }
    }
}

fn endpoints(root: &mut Object) {
    for subset in each(root, "subsets") {
        for port in each(subset, "ports") {
            default_zero(port, "protocol", json!("TCP"));
        }
    }
}

fn endpoint_slice(root: &mut Object) {
    for port in each(root, "ports") {
        default(port, "name", json!(""));
        default(port, "protocol", json!("TCP"));
    }
}

#[cfg(test)]
mod tests;
