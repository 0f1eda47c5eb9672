//! Services (`ValidateService` in `pkg/apis/core/validation`), plus the checks the lab's
//! single-stack IPv4 allocator makes (`pkg/registry/core/service/storage/alloc.go`).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{gofmt, invalid_raw, meta, names, net, str_at};
use crate::field::Cause;

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
/// `core.MaxClientIPServiceAffinitySeconds`.
const MAX_AFFINITY_SECONDS: i64 = 86400;
/// The kubelet's port, which a LoadBalancer may not expose.
const KUBELET_PORT: i64 = 10250;

/// `spec.clusterIPs` as the create strategy leaves it: `clusterIP` and `clusterIPs` are kept
/// in step, so a client that sets only one is checked as if it had set both.
fn cluster_ips(spec: &Value) -> Vec<String> {
    let ips: Vec<String> = spec
        .get("clusterIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect();
    let ip = str_at(spec, "clusterIP");
    if ips.is_empty() && !ip.is_empty() {
        vec![ip.to_string()]
    } else {
        ips
    }
}

fn is_headless(ips: &[String]) -> bool {
    ips.len() == 1 && ips[0] == "None"
}

/// `ValidateService` without the metadata.
pub(crate) fn service_spec(spec: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let kind = str_at(spec, "type");
    let ips = cluster_ips(spec);
    let headless = is_headless(&ips);
    let ports = spec.get("ports").and_then(Value::as_array);
    let ports = ports.map_or(&[][..], Vec::as_slice);

    if ports.is_empty() && !headless && kind != "ExternalName" {
        causes.push(Cause::required("spec.ports", ""));
    }
    match kind {
        "LoadBalancer" | "NodePort" if headless => causes.push(Cause::invalid(
            "spec.clusterIPs[0]",
            &json!("None"),
            format!("may not be set to 'None' for {kind} services"),
        )),
        "ExternalName" => causes.extend(external_name(spec, &ips)),
        _ => {}
    }
    if kind == "LoadBalancer" {
        for (i, port) in ports.iter().enumerate() {
            if port.get("port").and_then(Value::as_i64) == Some(KUBELET_PORT) {
                causes.push(Cause::invalid(
                    format!("spec.ports[{i}]"),
                    &json!(KUBELET_PORT),
                    format!(
                        "may not expose port {KUBELET_PORT} externally since it is used by kubelet"
                    ),
                ));
            }
        }
    }

    let mut port_names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        causes.extend(service_port(port, ports.len() > 1, &mut port_names, i));
    }
    if spec.get("selector").is_some() {
        causes.extend(meta::labels(spec.get("selector"), "spec.selector"));
    }
    causes.extend(session_affinity(spec));
    if kind != "ExternalName" {
        causes.extend(cluster_ip_fields(spec, &ips));
    }
    let external_ips = spec.get("externalIPs").and_then(Value::as_array);
    for (i, ip) in external_ips.into_iter().flatten().enumerate() {
        let path = format!("spec.externalIPs[{i}]");
        let ip = ip.as_str().unwrap_or("");
        let errs = net::valid_ip(&path, ip);
        if errs.is_empty() {
            causes.extend(net::non_special_ip(&path, ip));
        } else {
            causes.extend(errs);
        }
    }
    if kind.is_empty() {
        causes.push(Cause::required("spec.type", ""));
    } else if !TYPES.contains(&kind) {
        causes.push(Cause::not_supported("spec.type", &json!(kind), TYPES));
    }
    causes.extend(port_uniqueness(ports, kind));
    causes.extend(load_balancer_fields(spec, kind));
    causes.extend(traffic_policies(spec, kind));
    causes.extend(lab_ip_families(spec, kind));
    causes
}

fn external_name(spec: &Value, ips: &[String]) -> Vec<Cause> {
    let mut causes = Vec::new();
    let forbidden = "may not be set for ExternalName services";
    if !ips.is_empty() {
        causes.push(Cause::forbidden("spec.clusterIPs", forbidden));
    }
    if spec
        .get("ipFamilies")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
    {
        causes.push(Cause::forbidden("spec.ipFamilies", forbidden));
    }
    if spec.get("ipFamilyPolicy").is_some_and(|p| !p.is_null()) {
        causes.push(Cause::forbidden("spec.ipFamilyPolicy", forbidden));
    }
    // The CNAME may end in a dot to mark it fully qualified.
    let cname = str_at(spec, "externalName");
    let cname = cname.strip_suffix('.').unwrap_or(cname);
    if cname.is_empty() {
        causes.push(Cause::required("spec.externalName", ""));
    } else {
        for msg in names::dns1123_subdomain(cname) {
            causes.push(Cause::invalid("spec.externalName", &json!(cname), msg));
        }
    }
    causes
}

/// `validateServicePort`.
fn service_port(
    port: &Value,
    require_name: bool,
    seen: &mut BTreeSet<String>,
    i: usize,
) -> Vec<Cause> {
    let path = format!("spec.ports[{i}]");
    let mut causes = Vec::new();
    let name = str_at(port, "name");
    if require_name && name.is_empty() {
        causes.push(Cause::required(format!("{path}.name"), ""));
    } else if !name.is_empty() {
        for msg in names::dns1123_label(name) {
            causes.push(Cause::invalid(format!("{path}.name"), &json!(name), msg));
        }
        if !seen.insert(name.to_string()) {
            causes.push(Cause::duplicate(format!("{path}.name"), &json!(name)));
        }
    }
    let number = port.get("port").and_then(Value::as_i64).unwrap_or(0);
    for msg in names::port_number(number) {
        causes.push(Cause::invalid(format!("{path}.port"), &json!(number), msg));
    }
    let protocol = str_at(port, "protocol");
    if protocol.is_empty() {
        causes.push(Cause::required(format!("{path}.protocol"), ""));
    } else if !PROTOCOLS.contains(&protocol) {
        causes.push(Cause::not_supported(
            format!("{path}.protocol"),
            &json!(protocol),
            PROTOCOLS,
        ));
    }
    let target_path = format!("{path}.targetPort");
    match port.get("targetPort") {
        Some(Value::String(s)) => {
            for msg in names::port_name(s) {
                causes.push(Cause::invalid(&target_path, &json!(s), msg));
            }
        }
        other => {
            let n = other.and_then(Value::as_i64).unwrap_or(0);
            for msg in names::port_number(n) {
                causes.push(Cause::invalid(&target_path, &json!(n), msg));
            }
        }
    }
    if let Some(app) = port.get("appProtocol").and_then(Value::as_str) {
        for msg in names::qualified_name(app) {
            causes.push(Cause::invalid(
                format!("{path}.appProtocol"),
                &json!(app),
                msg,
            ));
        }
    }
    causes
}

fn session_affinity(spec: &Value) -> Vec<Cause> {
    let affinity = str_at(spec, "sessionAffinity");
    let config = spec.get("sessionAffinityConfig").filter(|c| !c.is_null());
    match affinity {
        "" => vec![Cause::required("spec.sessionAffinity", "")],
        "None" if config.is_some() => vec![Cause::forbidden(
            "spec.sessionAffinityConfig",
            "must not be set when session affinity is None",
        )],
        "None" => Vec::new(),
        "ClientIP" => {
            let detail = "when session affinity type is ClientIP";
            let path = "spec.sessionAffinityConfig";
            let Some(config) = config else {
                return vec![Cause::required(path, detail)];
            };
            let Some(client_ip) = config.get("clientIP").filter(|c| !c.is_null()) else {
                return vec![Cause::required(format!("{path}.clientIP"), detail)];
            };
            let timeout_path = format!("{path}.clientIP.timeoutSeconds");
            match client_ip.get("timeoutSeconds").and_then(Value::as_i64) {
                None => vec![Cause::required(timeout_path, detail)],
                Some(t) if t <= 0 || t > MAX_AFFINITY_SECONDS => vec![Cause::invalid(
                    timeout_path,
                    &json!(t),
                    format!("must be greater than 0 and less than {MAX_AFFINITY_SECONDS}"),
                )],
                Some(_) => Vec::new(),
            }
        }
        other => vec![Cause::not_supported(
            "spec.sessionAffinity",
            &json!(other),
            &["ClientIP", "None"],
        )],
    }
}

/// `ValidateServiceClusterIPsRelatedFields`, for one IP family.
fn cluster_ip_fields(spec: &Value, ips: &[String]) -> Vec<Cause> {
    let mut causes = Vec::new();
    let ip = str_at(spec, "clusterIP");
    let ips_value = spec.get("clusterIPs");
    if !ip.is_empty() && ips.first().is_some_and(|first| first != ip) {
        causes.push(invalid_raw(
            "spec.clusterIPs",
            gofmt::string_slice(ips_value),
            "first value must match `clusterIP`",
        ));
    }
    let families = spec.get("ipFamilies").and_then(Value::as_array);
    let mut seen = BTreeSet::new();
    for (i, family) in families.into_iter().flatten().enumerate() {
        let family = family.as_str().unwrap_or("");
        let path = format!("spec.ipFamilies[{i}]");
        if !["IPv4", "IPv6"].contains(&family) {
            causes.push(Cause::not_supported(
                &path,
                &json!(family),
                &["IPv4", "IPv6"],
            ));
        }
        if !seen.insert(family) {
            causes.push(Cause::duplicate(&path, &json!(family)));
        }
    }
    if let Some(policy) = spec.get("ipFamilyPolicy").and_then(Value::as_str) {
        let supported = ["PreferDualStack", "RequireDualStack", "SingleStack"];
        if !supported.contains(&policy) {
            causes.push(Cause::not_supported(
                "spec.ipFamilyPolicy",
                &json!(policy),
                &supported,
            ));
        }
    }
    let mut bad_ip = false;
    for (i, ip) in ips.iter().enumerate() {
        if i == 0 && ip == "None" {
            if ips.len() > 1 {
                bad_ip = true;
                causes.push(invalid_raw(
                    "spec.clusterIPs",
                    gofmt::string_slice(Some(&json!(ips))),
                    "'None' must be the first and only value",
                ));
            }
            continue;
        }
        let errs = net::valid_ip(&format!("spec.clusterIPs[{i}]"), ip);
        bad_ip |= !errs.is_empty();
        causes.extend(errs);
    }
    if ips.len() > 2 {
        causes.push(invalid_raw(
            "spec.clusterIPs",
            gofmt::string_slice(Some(&json!(ips))),
            "may only hold up to 2 values",
        ));
    }
    if bad_ip || is_headless(ips) {
        return causes;
    }
    for (i, (ip, family)) in ips.iter().zip(families.into_iter().flatten()).enumerate() {
        let v6 = ip.contains(':');
        let expected = match family.as_str() {
            Some("IPv4") if v6 => "IPv4",
            Some("IPv6") if !v6 => "IPv6",
            _ => continue,
        };
        causes.push(Cause::invalid(
            format!("spec.clusterIPs[{i}]"),
            &json!(ip),
            format!("expected an {expected} value as indicated by `ipFamilies[{i}]`"),
        ));
    }
    causes
}

/// No `nodePort` on a ClusterIP Service, and no repeated `nodePort` or `port` per protocol.
fn port_uniqueness(ports: &[Value], kind: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let node_port = |p: &Value| p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
    if kind == "ClusterIP" {
        for (i, port) in ports.iter().enumerate() {
            if node_port(port) != 0 {
                causes.push(Cause::forbidden(
                    format!("spec.ports[{i}].nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }
    let mut node_ports = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let n = node_port(port);
        if n != 0 && !node_ports.insert((str_at(port, "protocol"), n)) {
            causes.push(Cause::duplicate(
                format!("spec.ports[{i}].nodePort"),
                &json!(n),
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let protocol = str_at(port, "protocol");
        let number = port.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !seen.insert((protocol, number)) {
            causes.push(Cause {
                reason: crate::field::CauseReason::Duplicate,
                field: format!("spec.ports[{i}]"),
                message: format!(
                    "Duplicate value: {}",
                    gofmt::service_port_key(protocol, number)
                ),
            });
        }
    }
    causes
}

fn load_balancer_fields(spec: &Value, kind: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let only_lb = "may only be used when `type` is 'LoadBalancer'";
    let ranges = spec
        .get("loadBalancerSourceRanges")
        .and_then(Value::as_array);
    if let Some(ranges) = ranges.filter(|r| !r.is_empty()) {
        // Kubernetes names this path with a capital L, a historical accident kept here.
        let path = "spec.LoadBalancerSourceRanges";
        if kind != "LoadBalancer" {
            causes.push(Cause::forbidden(path, only_lb));
        }
        for (i, cidr) in ranges.iter().enumerate() {
            let cidr = cidr.as_str().unwrap_or("").trim();
            causes.extend(net::valid_cidr(&format!("{path}[{i}]"), cidr));
        }
    }
    let allocate = spec
        .get("allocateLoadBalancerNodePorts")
        .filter(|v| !v.is_null());
    if allocate.is_some() && kind != "LoadBalancer" {
        causes.push(Cause::forbidden(
            "spec.allocateLoadBalancerNodePorts",
            only_lb,
        ));
    }
    if kind == "LoadBalancer" && allocate.is_none() {
        // Kubernetes reports this one without the `spec.` prefix.
        causes.push(Cause::required("allocateLoadBalancerNodePorts", ""));
    }
    if spec.get("loadBalancerClass").is_some_and(|v| !v.is_null()) && kind != "LoadBalancer" {
        causes.push(Cause::forbidden("spec.loadBalancerClass", only_lb));
    }
    causes
}

/// `validateServiceExternalTrafficPolicy` and `validateServiceInternalTrafficFieldsValue`.
/// A missing `healthCheckNodePort` is not reported: the allocator assigns it.
fn traffic_policies(spec: &Value, kind: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let policies = ["Cluster", "Local"];
    let has_external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|ips| !ips.is_empty());
    let externally_accessible =
        kind == "LoadBalancer" || kind == "NodePort" || (kind == "ClusterIP" && has_external_ips);
    let external = str_at(spec, "externalTrafficPolicy");
    if !externally_accessible {
        if !external.is_empty() {
            causes.push(Cause::invalid(
                "spec.externalTrafficPolicy",
                &json!(external),
                "may only be set for externally-accessible services",
            ));
        }
    } else if external.is_empty() {
        causes.push(Cause::required("spec.externalTrafficPolicy", ""));
    } else if !policies.contains(&external) {
        causes.push(Cause::not_supported(
            "spec.externalTrafficPolicy",
            &json!(external),
            &policies,
        ));
    }
    let health = spec
        .get("healthCheckNodePort")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let needs_health = kind == "LoadBalancer" && external == "Local";
    if health != 0 {
        if !needs_health {
            causes.push(Cause::invalid(
                "spec.healthCheckNodePort",
                &json!(health),
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            ));
        } else {
            for msg in names::port_number(health) {
                causes.push(Cause::invalid(
                    "spec.healthCheckNodePort",
                    &json!(health),
                    msg,
                ));
            }
        }
    }
    match spec.get("internalTrafficPolicy").filter(|v| !v.is_null()) {
        None if matches!(kind, "ClusterIP" | "NodePort" | "LoadBalancer") => {
            causes.push(Cause::required("spec.internalTrafficPolicy", ""));
        }
        None => {}
        Some(v) => {
            let v = v.as_str().unwrap_or("");
            if !policies.contains(&v) {
                causes.push(Cause::not_supported(
                    "spec.internalTrafficPolicy",
                    &json!(v),
                    &policies,
                ));
            }
        }
    }
    causes
}

/// The lab's cluster is single-stack IPv4, so the registry's allocator refuses IPv6 and
/// dual-stack requirements in its own words.
fn lab_ip_families(spec: &Value, kind: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if kind == "ExternalName" {
        return causes;
    }
    if str_at(spec, "ipFamilyPolicy") == "RequireDualStack" {
        causes.push(Cause::invalid(
            "spec.ipFamilyPolicy",
            &json!("RequireDualStack"),
            "this cluster is not configured for dual-stack services",
        ));
    }
    let families = spec.get("ipFamilies").and_then(Value::as_array);
    for (i, family) in families.into_iter().flatten().enumerate() {
        if family.as_str() == Some("IPv6") {
            causes.push(Cause::invalid(
                format!("spec.ipFamilies[{i}]"),
                family,
                "not configured on this cluster",
            ));
        }
    }
    causes
}
