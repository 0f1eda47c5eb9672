//! The dataplane's view of the cluster: service ports with their endpoints, built from
//! Kubernetes `Service` and `discovery.k8s.io/v1` `EndpointSlice` objects, and the node the
//! rules are for. No I/O here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

mod cache;

pub use cache::SnapshotCache;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Default ClientIP affinity timeout (3 hours), as in Kubernetes.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// A service port's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// `tcp`, `udp` or `sctp`, as iptables matches and chain hashes use it.
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    fn parse(s: Option<&str>) -> Result<Self, String> {
        match s.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!(
                "unknown protocol {other:?} (expected TCP, UDP or SCTP)"
            )),
        }
    }
}

/// externalTrafficPolicy / internalTrafficPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on the node that received the traffic.
    Local,
}

/// One port of one Service, with everything that decides its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name; empty for an unnamed port.
    pub port_name: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The Service port.
    pub port: u16,
    /// The ClusterIP (IPv4); `None` for headless services, which get no rules.
    pub cluster_ip: Option<Ipv4Addr>,
    /// The NodePort, for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `spec.loadBalancerSourceRanges`.
    pub load_balancer_source_ranges: Vec<Ipv4Net>,
    /// ClientIP session affinity timeout, when affinity is on.
    pub affinity_seconds: Option<u32>,
    /// `spec.externalTrafficPolicy`.
    pub external_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_policy: TrafficPolicy,
}

impl ServicePort {
    /// kube-proxy's service port name: `ns/name`, plus `:port` for a named port.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    /// Whether traffic can reach the port from outside (NodePort, external or LB IPs).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }
}

/// One endpoint of a service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Target port.
    pub port: u16,
    /// `conditions.ready` (true when unset).
    pub ready: bool,
    /// `conditions.serving` (defaults to `ready`).
    pub serving: bool,
    /// `conditions.terminating` (false when unset).
    pub terminating: bool,
    /// The node the endpoint runs on.
    pub node: Option<String>,
}

impl Endpoint {
    /// `ip:port`, the form used in comments, chain hashes and DNAT targets.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// A service port and its endpoints, sorted as kube-proxy sorts them (by `ip:port` string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The port.
    pub port: ServicePort,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// Every service port the rules are compiled from, keyed by (port name string, protocol).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The entries, in a stable order. Shared, so that a snapshot made from another by
    /// changing a few entries (`Arc::make_mut`) tells the unchanged ones apart by pointer.
    pub services: BTreeMap<(String, Protocol), Arc<ServiceEntry>>,
}

/// The node the rules are compiled for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's name, compared with endpoints' `nodeName` for Local policies.
    pub node_name: String,
    /// The node's own IPs (addrtype LOCAL besides loopback).
    pub node_ips: Vec<Ipv4Addr>,
    /// The cluster's pod CIDR, which tells pod traffic from other traffic for masquerading.
    pub cluster_cidr: Option<Ipv4Net>,
    /// The fwmark bit that asks for masquerading (kube-proxy's default is 14: 0x4000).
    pub masquerade_bit: u8,
}

impl NodeConfig {
    /// A node with kube-proxy's defaults.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            node_ips: Vec::new(),
            cluster_cidr: None,
            masquerade_bit: 14,
        }
    }

    /// The masquerade mark, as kube-proxy writes it (`0x00004000`).
    pub fn masquerade_mark(&self) -> String {
        format!("{:#010x}", 1u32 << self.masquerade_bit)
    }
}

/// A Service or EndpointSlice the model cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {reason}")]
pub struct ModelError {
    /// `Service default/hello-world` or `EndpointSlice default/hello-world-abcde`.
    pub object: String,
    /// The field path, e.g. `spec.ports[0].protocol`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Snapshot {
    /// Builds the snapshot from Services and EndpointSlices. ExternalName and headless
    /// Services, and IPv6 addresses, get no rules and are left out.
    pub fn from_objects<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Result<Self, ModelError> {
        let mut snapshot = Snapshot::default();
        for svc in services {
            for port in service_ports(svc)? {
                let key = (port.port_name_string(), port.protocol);
                snapshot.services.insert(
                    key,
                    Arc::new(ServiceEntry {
                        port,
                        endpoints: Vec::new(),
                    }),
                );
            }
        }
        for slice in slices {
            add_slice(&mut snapshot, slice)?;
        }
        for entry in snapshot.services.values_mut() {
            let entry = Arc::make_mut(entry);
            // One string per endpoint, not two per comparison: a thousand-endpoint service
            // is sorted on every sync of every node.
            entry.endpoints.sort_by_cached_key(Endpoint::addr);
            entry.endpoints.dedup_by_key(|e| (e.ip, e.port));
        }
        Ok(snapshot)
    }
}

fn service_ports(svc: &Service) -> Result<Vec<ServicePort>, ModelError> {
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    let object = format!("Service {namespace}/{name}");
    let err = |field: String, reason: String| ModelError {
        object: object.clone(),
        field,
        reason,
    };
    let Some(spec) = &svc.spec else {
        return Ok(Vec::new());
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(Vec::new());
    }
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => None,
        Some(ip) => match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => Some(v4),
            Ok(IpAddr::V6(_)) => None,
            Err(e) => return Err(err("spec.clusterIP".into(), format!("{ip:?}: {e}"))),
        },
    };
    let Some(cluster_ip) = cluster_ip else {
        return Ok(Vec::new());
    };
    let mut external_ips = Vec::new();
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => external_ips.push(v4),
            Ok(IpAddr::V6(_)) => {}
            Err(e) => {
                return Err(err(
                    format!("spec.externalIPs[{i}]"),
                    format!("{ip:?}: {e}"),
                ));
            }
        }
    }
    let mut load_balancer_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        if let Some(ip) = &ing.ip {
            match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => load_balancer_ips.push(v4),
                Ok(IpAddr::V6(_)) => {}
                Err(e) => {
                    return Err(err(
                        format!("status.loadBalancer.ingress[{i}].ip"),
                        format!("{ip:?}: {e}"),
                    ));
                }
            }
        }
    }
    let mut load_balancer_source_ranges = Vec::new();
    for (i, cidr) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        match cidr.trim().parse::<Ipv4Net>() {
            Ok(net) => load_balancer_source_ranges.push(net),
            Err(_) if cidr.contains(':') => {}
            Err(e) => {
                return Err(err(
                    format!("spec.loadBalancerSourceRanges[{i}]"),
                    format!("{cidr:?}: {e}"),
                ));
            }
        }
    }
    let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let policy = |p: Option<&str>| match p {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let protocol = Protocol::parse(p.protocol.as_deref())
            .map_err(|r| err(format!("spec.ports[{i}].protocol"), r))?;
        let port = u16::try_from(p.port).map_err(|_| {
            err(
                format!("spec.ports[{i}].port"),
                format!("{} is not a port", p.port),
            )
        })?;
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(u16::try_from(n).map_err(|_| {
                err(
                    format!("spec.ports[{i}].nodePort"),
                    format!("{n} is not a port"),
                )
            })?),
        };
        ports.push(ServicePort {
            namespace: namespace.clone(),
            name: name.clone(),
            port_name: p.name.clone().unwrap_or_default(),
            protocol,
            port,
            cluster_ip: Some(cluster_ip),
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
            affinity_seconds,
            external_policy: policy(spec.external_traffic_policy.as_deref()),
            internal_policy: policy(spec.internal_traffic_policy.as_deref()),
        });
    }
    Ok(ports)
}

fn add_slice(snapshot: &mut Snapshot, slice: &EndpointSlice) -> Result<(), ModelError> {
    let namespace = slice
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let slice_name = slice.metadata.name.clone().unwrap_or_default();
    let Some(service) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
    else {
        return Ok(());
    };
    if slice.address_type != "IPv4" {
        return Ok(());
    }
    let object = format!("EndpointSlice {namespace}/{slice_name}");
    for (pi, port) in slice.ports.iter().flatten().enumerate() {
        let protocol = Protocol::parse(port.protocol.as_deref()).map_err(|reason| ModelError {
            object: object.clone(),
            field: format!("ports[{pi}].protocol"),
            reason,
        })?;
        let port_name = port.name.clone().unwrap_or_default();
        let spn = if port_name.is_empty() {
            format!("{namespace}/{service}")
        } else {
            format!("{namespace}/{service}:{port_name}")
        };
        let Some(entry) = snapshot
            .services
            .get_mut(&(spn, protocol))
            .map(Arc::make_mut)
        else {
            continue;
        };
        let Some(target) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for (ei, ep) in slice.endpoints.iter().enumerate() {
            let Some(address) = ep.addresses.first() else {
                continue;
            };
            let ip = address.parse::<Ipv4Addr>().map_err(|e| ModelError {
                object: object.clone(),
                field: format!("endpoints[{ei}].addresses[0]"),
                reason: format!("{address:?}: {e}"),
            })?;
            let conditions = ep.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            entry.endpoints.push(Endpoint {
                ip,
                port: target,
                ready,
                serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                node: ep.node_name.clone(),
            });
        }
    }
    Ok(())
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.lower())
    }
}
