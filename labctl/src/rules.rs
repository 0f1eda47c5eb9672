//! `labctl rules`: the rules the lab's dataplane programs on a node, and the path a packet
//! takes through them to a Service.
//!
//! The text comes from pure functions of the API objects and the node ([`render`],
//! [`explain`]), so `labctl tutorial` and tests can call them without a running lab; [`run`]
//! only fetches the objects from the lab's API first. The node's [`NodeConfig`] is built by
//! [`node_config`], the same function that configures each node's dataplane in kernel mode,
//! so what is shown is what is programmed, in kube-proxy's order: as endpoints come and go,
//! a node's iptables applier keeps its own order of a Service's endpoint rules, with the same
//! shares (`dataplane::apply::iptables::stable_dispatch`).

use std::fmt::Write;
use std::net::Ipv4Addr;

use anyhow::{Context, Result, anyhow, bail};
use dataplane::compile::{compile, default_cluster_cidr};
use dataplane::model::{NodeConfig, ServicePort, Snapshot};
use dataplane::render::{iptables, nft};
use dataplane::trace::{Explanation, Origin, Outcome, Packet, Path, Step, Verdict};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::cluster::{self, ClusterConfig};
use crate::lab::{self, Dataplane, LabDir};
use crate::network;

/// The nftables layout of the lab's `--dataplane nftables`: the dataplane's own (`table ip
/// services-lab`). It answers NodePorts on 127.0.0.1 as the tutorial's `curl
/// 127.0.0.1:<NodePort>` needs (kube-proxy's nftables layout does not), has no per-endpoint
/// chains, and syncs several times faster (see the dataplane's benchmark).
pub const NFT_LAYOUT: nft::Layout = nft::Layout::Fast;

/// The dataplane's view of lab node `node`: its name, its InternalIP, the cluster's pod CIDR
/// (traffic from elsewhere to a ClusterIP is masqueraded) and kube-proxy's masquerade bit.
pub fn node_config(node: &cluster::NodeConfig) -> NodeConfig {
    NodeConfig {
        node_ips: vec![node.internal_ip],
        cluster_cidr: Some(default_cluster_cidr()),
        ..NodeConfig::new(node.name.clone())
    }
}

/// The text format of `labctl rules`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `iptables-restore` input (kube-proxy's layout), then the hooks as comments.
    Iptables,
    /// One `nft -f` transaction (the lab's `services-lab` table).
    Nft,
}

impl Format {
    /// The format a lab's dataplane programs: nft for `nftables`, else iptables.
    pub fn of(dataplane: Option<Dataplane>) -> Format {
        match dataplane {
            Some(Dataplane::Nftables) => Format::Nft,
            _ => Format::Iptables,
        }
    }
}

/// Where the explained packet starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum From {
    /// A process on the node (its source is the node's IP, or 127.0.0.1 for 127.0.0.1).
    Node,
    /// The client namespace outside the cluster (172.18.0.100).
    Client,
    /// A Pod on the node.
    Pod,
}

/// `labctl rules` arguments (besides the lab's).
#[derive(Debug, Clone, clap::Args)]
pub struct RulesArgs {
    /// The node whose rules to show [default: the first worker].
    #[arg(long)]
    pub node: Option<String>,
    /// The text format [default: the lab's dataplane's: nft for nftables, else iptables].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Instead of the rules, the path a new connection to this Service takes through them
    /// (`svc/NAME`, `service/NAME` or `NAME`), for each of its addresses.
    #[arg(long, value_name = "svc/NAME")]
    pub explain: Option<String>,
    /// With --explain: only this Service port (number or name).
    #[arg(long, requires = "explain")]
    pub port: Option<String>,
    /// With --explain: where the packet starts.
    #[arg(long, value_enum, default_value_t = From::Node, requires = "explain")]
    pub from: From,
    /// With --explain: the Service's namespace.
    #[arg(long, short = 'n', default_value = "default", requires = "explain")]
    pub namespace: String,
}

/// The rules compiled for `node` from the objects, as text in `format`, with a header of
/// `#` comments saying what they are. `active` is the lab's dataplane (`None`: API only).
pub fn render(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &cluster::NodeConfig,
    format: Format,
    active: Option<Dataplane>,
) -> Result<String> {
    let snapshot = Snapshot::from_objects(services, slices)?;
    let config = node_config(node);
    let mut out = String::new();
    let what = match format {
        Format::Iptables => "iptables rules (iptables-restore input, kube-proxy's layout)",
        Format::Nft => "nftables rules (one `nft -f` transaction, table ip services-lab)",
    };
    let _ = writeln!(
        out,
        "# {what} for node {} ({}), from {} Service port{}.",
        node.name,
        node.internal_ip,
        snapshot.services.len(),
        if snapshot.services.len() == 1 {
            ""
        } else {
            "s"
        }
    );
    let _ = writeln!(out, "# {}", provenance(format, active, &node.name));
    match format {
        Format::Iptables => {
            let rules = compile(&snapshot, &config);
            out.push_str(&iptables::render(&rules));
            out.push_str("# Hooks from the built-in chains, inserted with `iptables -I`:\n");
            for hook in &rules.hooks {
                let _ = writeln!(
                    out,
                    "# -t {} -I {}{}",
                    hook.table.name(),
                    hook.builtin,
                    iptables::rule_args(&hook.rule)
                );
            }
        }
        Format::Nft => out.push_str(&nft::render(&snapshot, &config, NFT_LAYOUT)?),
    }
    Ok(out)
}

/// Where the shown rules live, or why none are programmed.
fn provenance(format: Format, active: Option<Dataplane>, node: &str) -> String {
    match (active, format) {
        (Some(Dataplane::Iptables), Format::Iptables) => format!(
            "The lab's iptables dataplane programs them in the node's namespace: `labctl exec {node} -- iptables-save`."
        ),
        (Some(Dataplane::Nftables), Format::Nft) => format!(
            "The lab's nftables dataplane programs them in the node's namespace: `labctl exec {node} -- nft list ruleset`."
        ),
        (Some(Dataplane::Iptables), Format::Nft) => {
            "The lab's dataplane is iptables: these are the same decisions in nftables form, not programmed anywhere.".into()
        }
        (Some(Dataplane::Nftables), Format::Iptables) => {
            "The lab's dataplane is nftables: these are the same decisions in iptables form, not programmed anywhere.".into()
        }
        (Some(Dataplane::Userspace), _) => {
            "The lab runs the userspace dataplane: no kernel rules are programmed; these are the rules its proxy implements (same endpoints, a random one per connection, the same refusals).".into()
        }
        (None, _) => {
            "The lab runs without a dataplane (API only): these are the rules a node would get.".into()
        }
    }
}

/// What `labctl rules --explain` asks.
#[derive(Debug, Clone)]
pub struct ExplainRequest {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// Only this port (number or name).
    pub port: Option<String>,
    /// Where the packet starts.
    pub from: From,
}

/// Parses `svc/NAME`, `service/NAME`, `services/NAME` or `NAME`.
pub fn parse_service(text: &str) -> Result<String> {
    let name = match text.split_once('/') {
        Some(("svc" | "service" | "services", name)) => name,
        Some((kind, _)) => bail!("{text:?}: only Services can be explained (svc/NAME), not {kind}"),
        None => text,
    };
    if name.is_empty() {
        bail!("{text:?} names no Service; write svc/NAME");
    }
    Ok(name.to_string())
}

/// The path of a new connection to each address of the requested Service, traced through the
/// iptables form of the rules for `node`, as readable text.
pub fn explain(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &cluster::NodeConfig,
    request: &ExplainRequest,
    active: Option<Dataplane>,
) -> Result<String> {
    let snapshot = Snapshot::from_objects(services, slices)?;
    let config = node_config(node);
    let ports: Vec<&ServicePort> = snapshot
        .services
        .values()
        .map(|e| &e.port)
        .filter(|p| p.namespace == request.namespace && p.name == request.name)
        .collect();
    if ports.is_empty() {
        let exists = services.iter().any(|s| {
            s.metadata.name.as_deref() == Some(&request.name)
                && s.metadata.namespace.as_deref().unwrap_or("default") == request.namespace
        });
        if exists {
            bail!(
                "Service {}/{} has no ClusterIP (headless or ExternalName), so no rules route to it",
                request.namespace,
                request.name
            );
        }
        let known: Vec<String> = services
            .iter()
            .filter(|s| s.metadata.namespace.as_deref().unwrap_or("default") == request.namespace)
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        bail!(
            "no Service {:?} in namespace {}; its Services are: {}",
            request.name,
            request.namespace,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    }
    let ports: Vec<&ServicePort> = match &request.port {
        None => ports,
        Some(want) => {
            let chosen: Vec<&ServicePort> = ports
                .iter()
                .copied()
                .filter(|p| p.port.to_string() == *want || p.port_name == *want)
                .collect();
            if chosen.is_empty() {
                let known: Vec<String> = ports
                    .iter()
                    .map(|p| {
                        if p.port_name.is_empty() {
                            p.port.to_string()
                        } else {
                            format!("{} ({})", p.port, p.port_name)
                        }
                    })
                    .collect();
                bail!(
                    "Service {}/{} has no port {want:?}; its ports are {}",
                    request.namespace,
                    request.name,
                    known.join(", ")
                );
            }
            chosen
        }
    };
    let rules = compile(&snapshot, &config);
    let (source, source_text) = match request.from {
        From::Node => (
            node.internal_ip,
            format!("node {} ({})", node.name, node.internal_ip),
        ),
        From::Client => (
            network::CLIENT_IP,
            format!(
                "the client outside the cluster ({}), arriving at node {}",
                network::CLIENT_IP,
                node.name
            ),
        ),
        From::Pod => {
            let ip = pod_on(slices, node);
            (ip, format!("a Pod on node {} ({ip})", node.name))
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Service {}/{}: new connections from {source_text}, through the rules of node {}.",
        request.namespace, request.name, node.name
    );
    match active {
        Some(Dataplane::Nftables) => out.push_str(
            "The lab's nftables table makes the same choices (`labctl rules --format nft`); the path is shown through the equivalent iptables chains.\n",
        ),
        Some(Dataplane::Userspace) => out.push_str(
            "The lab's userspace proxy makes these choices itself; the path is shown through the iptables rules it implements.\n",
        ),
        None => out.push_str(
            "The lab runs without a dataplane (API only): this is the path a node's rules would give.\n",
        ),
        Some(Dataplane::Iptables) => {}
    }
    for port in ports {
        for (label, dst, dport) in addresses(port, node.internal_ip) {
            let _ = write!(
                out,
                "\n{label} {dst}:{dport}/{}",
                port.protocol.lower().to_uppercase()
            );
            if let Some(why) = unreachable(request.from, dst, label) {
                let _ = writeln!(out, ": {why}");
                continue;
            }
            out.push('\n');
            let packet = Packet {
                src: if request.from == From::Node && dst.is_loopback() {
                    Ipv4Addr::LOCALHOST
                } else {
                    source
                },
                dst,
                protocol: port.protocol,
                dport,
                origin: match request.from {
                    From::Node => Origin::Node,
                    From::Client | From::Pod => Origin::Inbound,
                },
            };
            write_explanation(
                &mut out,
                &dataplane::trace::explain(&rules, &config, &packet),
            );
        }
    }
    Ok(out)
}

/// The Service port's addresses: ClusterIP, NodePort on the node's IP and 127.0.0.1,
/// LoadBalancer ingress IPs and external IPs.
fn addresses(port: &ServicePort, node_ip: Ipv4Addr) -> Vec<(&'static str, Ipv4Addr, u16)> {
    let mut list = Vec::new();
    if let Some(ip) = port.cluster_ip {
        list.push(("ClusterIP", ip, port.port));
    }
    if let Some(np) = port.node_port {
        list.push(("NodePort", node_ip, np));
        list.push(("NodePort", Ipv4Addr::LOCALHOST, np));
    }
    for &ip in &port.load_balancer_ips {
        list.push(("LoadBalancer", ip, port.port));
    }
    for &ip in &port.external_ips {
        list.push(("external IP", ip, port.port));
    }
    list
}

/// Why a packet from `from` never reaches the node's rules for this address, if it does not.
fn unreachable(from: From, dst: Ipv4Addr, label: &str) -> Option<String> {
    match from {
        From::Client if label == "ClusterIP" => Some(
            "not reachable from outside the cluster (the client has no route to the Service CIDR, as on kind)".into(),
        ),
        From::Client | From::Pod if dst.is_loopback() => {
            Some("127.0.0.1 is the sender's own loopback, not the node's".into())
        }
        _ => None,
    }
}

/// An address of a Pod on `node`, for `--from pod`: an endpoint there if there is one (so a
/// Pod reaching itself shows the hairpin masquerade), else the second host of the node's pod
/// CIDR.
fn pod_on(slices: &[EndpointSlice], node: &cluster::NodeConfig) -> Ipv4Addr {
    let mut on_node: Vec<Ipv4Addr> = slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.node_name.as_deref() == Some(&node.name))
        .flat_map(|e| &e.addresses)
        .filter_map(|a| a.parse().ok())
        .collect();
    on_node.sort();
    on_node
        .first()
        .copied()
        .unwrap_or_else(|| Ipv4Addr::from(u32::from(network::bridge_ip(node.pod_cidr)) + 1))
}

/// `1/2`, or a percentage when the share is not one over a whole number.
fn share(p: f64) -> String {
    let inverse = 1.0 / p;
    if (inverse - inverse.round()).abs() < 1e-6 {
        format!("1/{}", inverse.round() as u64)
    } else {
        format!("{:.0}%", p * 100.0)
    }
}

/// The steps every path shares at the start and at the end are written once; the paths'
/// own steps are listed per path, with their share of new connections.
fn write_explanation(out: &mut String, e: &Explanation) {
    let paths: &[Path] = &e.paths;
    let Some(first) = paths.first() else {
        let _ = writeln!(out, "  (no rule applies)");
        write_verdict(out, e);
        return;
    };
    let common = |a: &[Step], b: &[Step]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let prefix = paths
        .iter()
        .map(|p| common(&first.steps, &p.steps))
        .min()
        .unwrap_or(0);
    let suffix = if paths.len() > 1 {
        paths
            .iter()
            .map(|p| {
                first
                    .steps
                    .iter()
                    .rev()
                    .zip(p.steps.iter().rev())
                    .take_while(|(x, y)| x == y)
                    .count()
            })
            .min()
            .unwrap_or(0)
            .min(first.steps.len() - prefix)
    } else {
        0
    };
    for step in &first.steps[..prefix] {
        let _ = writeln!(out, "  {step}");
    }
    if paths.len() > 1 {
        let _ = writeln!(
            out,
            "  then one of {} paths, chosen at random per connection:",
            paths.len()
        );
        for p in paths {
            let own = &p.steps[prefix..p.steps.len() - suffix];
            let tag = format!("[{}]", share(p.probability));
            for (i, step) in own.iter().enumerate() {
                let lead = if i == 0 { tag.as_str() } else { "" };
                let _ = writeln!(out, "    {lead:<6}{step}");
            }
        }
    }
    for step in &first.steps[first.steps.len() - suffix..] {
        let _ = writeln!(out, "  {step}");
    }
    write_verdict(out, e);
}

fn write_verdict(out: &mut String, e: &Explanation) {
    let text = match &e.verdict {
        Verdict::Dnat {
            endpoints,
            masquerade,
        } => {
            let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
            let some_masq = e
                .paths
                .iter()
                .any(|p| matches!(p.outcome, Outcome::Dnat(_)) && p.masquerade);
            let masq = if *masquerade {
                "source masqueraded to the node's address (the reply returns through this node)"
            } else if some_masq {
                "source masqueraded on some paths only (see each path's KUBE-POSTROUTING)"
            } else {
                "source kept"
            };
            if list.len() == 1 {
                format!("DNAT to {}, {masq}", list[0])
            } else {
                format!("DNAT to one of {}, {masq}", list.join(", "))
            }
        }
        Verdict::Reject => "REJECT (no endpoint can serve it: connection refused)".into(),
        Verdict::Drop => "DROP (no endpoint may serve it here)".into(),
        Verdict::Untouched => "no Service rule applies; the packet goes on unchanged".into(),
    };
    let _ = writeln!(out, "  verdict: {text}");
}

/// `labctl rules`: fetches the lab's Services and EndpointSlices and renders or explains.
pub async fn run(dir: &LabDir, args: &RulesArgs) -> Result<String> {
    let config = dir
        .running_config()
        .context("`labctl rules` reads the running lab's objects")?;
    let active = match lab::running_mode(dir) {
        Some(lab::Mode::Kernel) => Some(config.dataplane),
        Some(lab::Mode::Userspace) => Some(Dataplane::Userspace),
        _ => None,
    };
    let node = pick_node(&config.cluster, args.node.as_deref())?;
    let client = lab::client(dir).await?;
    let lp = kube::api::ListParams::default();
    let services = kube::Api::<Service>::all(client.clone())
        .list(&lp)
        .await
        .context("listing the lab's Services")?
        .items;
    let slices = kube::Api::<EndpointSlice>::all(client)
        .list(&lp)
        .await
        .context("listing the lab's EndpointSlices")?
        .items;
    match &args.explain {
        Some(target) => {
            let request = ExplainRequest {
                namespace: args.namespace.clone(),
                name: parse_service(target)?,
                port: args.port.clone(),
                from: args.from,
            };
            explain(&services, &slices, node, &request, active)
        }
        None => render(
            &services,
            &slices,
            node,
            args.format.unwrap_or(Format::of(active)),
            active,
        ),
    }
}

/// The node named `name`, or the first worker.
pub fn pick_node<'a>(
    cluster: &'a ClusterConfig,
    name: Option<&str>,
) -> Result<&'a cluster::NodeConfig> {
    match name {
        None => Ok(cluster
            .nodes
            .iter()
            .find(|n| !n.control_plane)
            .unwrap_or(&cluster.nodes[0])),
        Some(name) => cluster
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
                anyhow!(
                    "no node {name:?} in the lab; its nodes are {}",
                    known.join(", ")
                )
            }),
    }
}

#[cfg(test)]
mod tests;
