//! EndpointSlices (`pkg/apis/discovery/validation`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{Value, json};

use super::{names, net, str_at};
use crate::field::{Cause, CauseReason};

const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;
const MAX_PORTS: usize = 20000;

/// `field.TooMany`. `Cause` has no reason of that name, so it is reported as too long, the
/// nearest one; the message is Kubernetes'.
fn too_many(path: String, count: usize, max: usize) -> Cause {
    Cause {
        reason: CauseReason::TooLong,
        field: path,
        message: format!("Too many: {count}: must have at most {max} items"),
    }
}

/// `ValidateEndpointSlice` without the metadata.
pub(crate) fn endpoint_slice(slice: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let address_type = str_at(slice, "addressType");
    if address_type.is_empty() {
        causes.push(Cause::required("addressType", ""));
    } else if !["FQDN", "IPv4", "IPv6"].contains(&address_type) {
        causes.push(Cause::not_supported(
            "addressType",
            &json!(address_type),
            &["FQDN", "IPv4", "IPv6"],
        ));
    }
    let endpoints = slice.get("endpoints").and_then(Value::as_array);
    let endpoints = endpoints.map_or(&[][..], Vec::as_slice);
    if endpoints.len() > MAX_ENDPOINTS {
        causes.push(too_many("endpoints".into(), endpoints.len(), MAX_ENDPOINTS));
    } else {
        for (i, ep) in endpoints.iter().enumerate() {
            causes.extend(endpoint(ep, address_type, &format!("endpoints[{i}]")));
        }
    }
    causes.extend(ports(slice));
    causes
}

fn endpoint(ep: &Value, address_type: &str, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let addresses = ep.get("addresses").and_then(Value::as_array);
    let addresses = addresses.map_or(&[][..], Vec::as_slice);
    let addr_path = format!("{path}.addresses");
    if addresses.is_empty() {
        causes.push(Cause::required(
            addr_path.clone(),
            "must contain at least 1 address",
        ));
    } else if addresses.len() > MAX_ADDRESSES {
        causes.push(too_many(addr_path.clone(), addresses.len(), MAX_ADDRESSES));
    }
    for (i, address) in addresses.iter().enumerate() {
        let a_path = format!("{addr_path}[{i}]");
        let address = address.as_str().unwrap_or("");
        match address_type {
            "IPv4" => match net::parse_ip(address) {
                Some(IpAddr::V4(_)) => causes.extend(net::non_special_ip(&a_path, address)),
                _ => causes.push(Cause::invalid(
                    a_path,
                    &json!(address),
                    "must be a valid IPv4 address",
                )),
            },
            "IPv6" if !matches!(net::parse_ip(address), Some(IpAddr::V6(_))) => {
                causes.push(Cause::invalid(
                    a_path,
                    &json!(address),
                    "must be a valid IPv6 address",
                ));
            }
            "FQDN" => causes.extend(fqdn(&a_path, address)),
            _ => {}
        }
    }
    if let Some(node) = ep.get("nodeName").and_then(Value::as_str) {
        for msg in names::dns1123_subdomain(node) {
            causes.push(Cause::invalid(
                format!("{path}.nodeName"),
                &json!(node),
                msg,
            ));
        }
    }
    if let Some(host) = ep.get("hostname").and_then(Value::as_str) {
        for msg in names::dns1123_label(host) {
            causes.push(Cause::invalid(
                format!("{path}.hostname"),
                &json!(host),
                msg,
            ));
        }
    }
    causes
}

/// `IsFullyQualifiedDomainName`.
fn fqdn(path: &str, name: &str) -> Vec<Cause> {
    if name.is_empty() {
        return vec![Cause::required(path, "")];
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let errs = names::dns1123_subdomain(name);
    if !errs.is_empty() {
        return vec![Cause::invalid(path, &json!(name), errs.join(","))];
    }
    if name.split('.').count() < 2 {
        return vec![Cause::invalid(
            path,
            &json!(name),
            "should be a domain with at least two segments separated by dots",
        )];
    }
    for label in name.split('.') {
        let errs = names::dns1123_label(label);
        if !errs.is_empty() {
            return vec![Cause::invalid(path, &json!(label), errs.join(","))];
        }
    }
    Vec::new()
}

fn ports(slice: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let ports = slice.get("ports").and_then(Value::as_array);
    let ports = ports.map_or(&[][..], Vec::as_slice);
    if ports.len() > MAX_PORTS {
        return vec![too_many("ports".into(), ports.len(), MAX_PORTS)];
    }
    let mut seen = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let path = format!("ports[{i}]");
        let name = str_at(port, "name");
        if !name.is_empty() {
            for msg in names::dns1123_label(name) {
                causes.push(Cause::invalid(format!("{path}.name"), &json!(name), msg));
            }
        }
        if !seen.insert(name.to_string()) {
            causes.push(Cause::duplicate(format!("{path}.name"), &json!(name)));
        }
        match port.get("protocol").and_then(Value::as_str) {
            None => causes.push(Cause::required(format!("{path}.protocol"), "")),
            Some(p) if !["SCTP", "TCP", "UDP"].contains(&p) => causes.push(Cause::not_supported(
                format!("{path}.protocol"),
                &json!(p),
                &["SCTP", "TCP", "UDP"],
            )),
            Some(_) => {}
        }
    }
    causes
}
