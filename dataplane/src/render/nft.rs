//! `nft -f` input: the whole table replaced in one atomic transaction.
//!
//! Two layouts, both driven by the same [`ServicePlan`]s as the iptables rules:
//!
//! - [`Layout::KubeProxy`], table `ip kube-proxy`: kube-proxy's nftables mode (its map names,
//!   chain names, `numgen` dispatch to one chain per endpoint, `reject-chain`). As there,
//!   NodePorts are not served on 127.0.0.1.
//! - [`Layout::Fast`], table `ip services-lab`: one chain per service port that DNATs through
//!   a `numgen`-indexed map of `addr . port`, so there are no per-endpoint chains; hairpin
//!   traffic (a Pod reaching itself through its Service) is masqueraded through one set of
//!   `pod . pod` pairs; NodePorts also answer on 127.0.0.1, as in iptables mode.
//!
//! Session affinity and loadBalancerSourceRanges are not rendered for nftables yet: a
//! service that uses them is an error rather than rules that mean something else.

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::compile::ServicePlan;
use crate::model::{Endpoint, NodeConfig, Snapshot};
use crate::names;

/// Which nftables layout to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// kube-proxy's own layout, in table `ip kube-proxy`.
    KubeProxy,
    /// Our layout without per-endpoint chains, in table `ip services-lab`.
    Fast,
}

impl Layout {
    /// The table the layout owns.
    pub fn table(self) -> &'static str {
        match self {
            Layout::KubeProxy => "kube-proxy",
            Layout::Fast => "services-lab",
        }
    }
}

/// A service the nftables layouts cannot express yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{service}: {feature} is not supported in nftables mode yet; use --mode iptables")]
pub struct Unsupported {
    /// The service port name.
    pub service: String,
    /// The feature.
    pub feature: &'static str,
}

/// The `nft -f` input that replaces the layout's table with the rules for `snapshot`.
pub fn render(
    snapshot: &Snapshot,
    node: &NodeConfig,
    layout: Layout,
) -> Result<String, Unsupported> {
    let plans: Vec<ServicePlan> = snapshot
        .services
        .values()
        .filter_map(|entry| ServicePlan::new(entry, node))
        .collect();
    for plan in &plans {
        let svc = &plan.entry.port;
        if svc.affinity_seconds.is_some() {
            return Err(Unsupported {
                service: plan.spn.clone(),
                feature: "sessionAffinity ClientIP",
            });
        }
        if !svc.load_balancer_source_ranges.is_empty() {
            return Err(Unsupported {
                service: plan.spn.clone(),
                feature: "loadBalancerSourceRanges",
            });
        }
    }
    let mark = node.masquerade_mark();
    let cidr = node.cluster_cidr.map(|c| c.to_string());
    let table = layout.table();
    let chains: Vec<Chains> = plans.iter().map(|p| Chains::new(p, layout)).collect();

    let mut service_ips = Vec::new();
    let mut nodeports = Vec::new();
    let mut no_ep_services = Vec::new();
    let mut no_ep_nodeports = Vec::new();
    for (plan, names) in plans.iter().zip(&chains) {
        let svc = &plan.entry.port;
        let proto = svc.protocol.lower();
        let key = |ip: Ipv4Addr| format!("{ip} . {proto} . {}", svc.port);
        let refusal = if plan.has_endpoints {
            "drop"
        } else {
            "goto reject-chain"
        };
        let internal = if plan.internal_local {
            &names.local
        } else {
            &names.cluster
        };
        if plan.has_internal {
            service_ips.push(format!("{} : goto {internal}", key(plan.cluster_ip)));
        } else {
            no_ep_services.push(format!("{} : {refusal}", key(plan.cluster_ip)));
        }
        for &ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
            if plan.has_endpoints {
                service_ips.push(format!("{} : goto {}", key(ip), names.external));
            }
            if !plan.has_external {
                no_ep_services.push(format!("{} : {refusal}", key(ip)));
            }
        }
        if let Some(np) = svc.node_port {
            if plan.has_endpoints {
                nodeports.push(format!("{proto} . {np} : goto {}", names.external));
            }
            if !plan.has_external {
                no_ep_nodeports.push(format!("{proto} . {np} : {refusal}"));
            }
        }
    }

    let mut out = String::new();
    // Create-then-delete makes the transaction work whether or not the table exists yet.
    let _ = writeln!(
        out,
        "table ip {table}\ndelete table ip {table}\ntable ip {table} {{"
    );
    let _ = writeln!(
        out,
        "\tcomment \"rules for {}\"",
        match layout {
            Layout::KubeProxy => "kube-proxy",
            Layout::Fast => "services-lab",
        }
    );
    map(
        &mut out,
        "service-ips",
        "ipv4_addr . inet_proto . inet_service : verdict",
        &service_ips,
    );
    map(
        &mut out,
        "service-nodeports",
        "inet_proto . inet_service : verdict",
        &nodeports,
    );
    map(
        &mut out,
        "no-endpoint-services",
        "ipv4_addr . inet_proto . inet_service : verdict",
        &no_ep_services,
    );
    map(
        &mut out,
        "no-endpoint-nodeports",
        "inet_proto . inet_service : verdict",
        &no_ep_nodeports,
    );
    let local_nodeports = match layout {
        Layout::KubeProxy => "ip daddr != 127.0.0.0/8 ",
        Layout::Fast => "",
    };
    let masquerade = match layout {
        Layout::KubeProxy => "jump mark-for-masquerade".to_owned(),
        Layout::Fast => format!("meta mark set meta mark | {mark}"),
    };
    if layout == Layout::Fast {
        let pairs: Vec<String> = plans
            .iter()
            .flat_map(|p| p.reachable())
            .map(|e| format!("{} . {}", e.ip, e.ip))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let _ = writeln!(out, "\tset hairpin {{\n\t\ttype ipv4_addr . ipv4_addr");
        elements(&mut out, &pairs);
        out.push_str("\t}\n");
    }
    chain(&mut out, "reject-chain", None, &["reject".into()]);
    if layout == Layout::KubeProxy {
        chain(
            &mut out,
            "mark-for-masquerade",
            None,
            &[format!("meta mark set meta mark | {mark}")],
        );
        chain(
            &mut out,
            "masquerading",
            None,
            &[
                format!("meta mark & {mark} == 0x00000000 return"),
                format!("meta mark set meta mark ^ {mark}"),
                "masquerade fully-random".into(),
            ],
        );
    }
    chain(
        &mut out,
        "services",
        None,
        &[
            "ip daddr . meta l4proto . th dport vmap @service-ips".into(),
            format!(
                "fib daddr type local {local_nodeports}meta l4proto . th dport vmap @service-nodeports"
            ),
        ],
    );
    chain(
        &mut out,
        "service-endpoints-check",
        None,
        &["ip daddr . meta l4proto . th dport vmap @no-endpoint-services".into()],
    );
    chain(
        &mut out,
        "nodeport-endpoints-check",
        None,
        &[format!(
            "fib daddr type local {local_nodeports}meta l4proto . th dport vmap @no-endpoint-nodeports"
        )],
    );
    chain(
        &mut out,
        "nat-prerouting",
        Some("type nat hook prerouting priority -100"),
        &["jump services".into()],
    );
    chain(
        &mut out,
        "nat-output",
        Some("type nat hook output priority -100"),
        &["jump services".into()],
    );
    let postrouting = match layout {
        Layout::KubeProxy => vec!["jump masquerading".to_owned()],
        Layout::Fast => vec![
            format!(
                "meta mark & {mark} == {mark} meta mark set meta mark ^ {mark} masquerade fully-random"
            ),
            "ct status dnat ip saddr . ip daddr @hairpin masquerade fully-random".to_owned(),
        ],
    };
    chain(
        &mut out,
        "nat-postrouting",
        Some("type nat hook postrouting priority 100"),
        &postrouting,
    );
    chain(
        &mut out,
        "filter-input",
        Some("type filter hook input priority 0"),
        &[
            "ct state new jump nodeport-endpoints-check".into(),
            "ct state new jump service-endpoints-check".into(),
        ],
    );
    chain(
        &mut out,
        "filter-forward",
        Some("type filter hook forward priority 0"),
        &["ct state new jump service-endpoints-check".into()],
    );
    chain(
        &mut out,
        "filter-output",
        Some("type filter hook output priority 0"),
        &["ct state new jump service-endpoints-check".into()],
    );

    for (plan, names) in plans.iter().zip(&chains) {
        let svc = &plan.entry.port;
        let proto = svc.protocol.lower();
        if plan.uses_cluster {
            let mut rules = Vec::new();
            if !plan.internal_local
                && let Some(cidr) = &cidr
            {
                rules.push(format!(
                    "ip daddr {} {proto} dport {} ip saddr != {cidr} {masquerade}",
                    plan.cluster_ip, svc.port
                ));
            }
            rules.push(dispatch(plan, &plan.cluster_eps, layout));
            chain(&mut out, &names.cluster, None, &rules);
        }
        if plan.uses_local {
            let mut rules = Vec::new();
            if plan.internal_local
                && let Some(cidr) = &cidr
            {
                rules.push(format!(
                    "ip daddr {} {proto} dport {} ip saddr != {cidr} {masquerade}",
                    plan.cluster_ip, svc.port
                ));
            }
            rules.push(dispatch(plan, &plan.local_eps, layout));
            chain(&mut out, &names.local, None, &rules);
        }
        if plan.has_endpoints && plan.external {
            let mut rules = Vec::new();
            if !plan.external_local {
                rules.push(masquerade.clone());
                rules.push(format!("goto {}", names.cluster));
            } else {
                if let Some(cidr) = &cidr {
                    rules.push(format!(
                        "ip saddr {cidr} goto {} comment \"short-circuit pod traffic\"",
                        names.cluster
                    ));
                }
                rules.push(format!(
                    "fib saddr type local {masquerade} comment \"masquerade local traffic\""
                ));
                rules.push(format!(
                    "fib saddr type local goto {} comment \"short-circuit local traffic\"",
                    names.cluster
                ));
                if plan.has_external {
                    rules.push(format!("goto {}", names.local));
                }
            }
            chain(&mut out, &names.external, None, &rules);
        }
        if layout == Layout::KubeProxy {
            for ep in plan.reachable() {
                chain(
                    &mut out,
                    &endpoint_chain(plan, ep),
                    None,
                    &[
                        format!("ip saddr {} {masquerade}", ep.ip),
                        format!("meta l4proto {proto} dnat to {}:{}", ep.ip, ep.port),
                    ],
                );
            }
        }
    }
    out.push_str("}\n");
    Ok(out)
}

/// The names of one service port's chains in a layout.
struct Chains {
    cluster: String,
    local: String,
    external: String,
}

impl Chains {
    fn new(plan: &ServicePlan, layout: Layout) -> Self {
        let svc = &plan.entry.port;
        match layout {
            Layout::KubeProxy => {
                let base = names::nft_service_base(
                    &svc.namespace,
                    &svc.name,
                    svc.protocol,
                    &svc.port_name,
                );
                Chains {
                    cluster: names::nft_service_chain("service", &base),
                    local: names::nft_service_chain("local", &base),
                    external: names::nft_service_chain("external", &base),
                }
            }
            Layout::Fast => {
                let hash = names::service_hash(&plan.spn, svc.protocol);
                Chains {
                    cluster: format!("svc-{hash}"),
                    local: format!("svl-{hash}"),
                    external: format!("ext-{hash}"),
                }
            }
        }
    }
}

fn endpoint_chain(plan: &ServicePlan, ep: &Endpoint) -> String {
    let svc = &plan.entry.port;
    let base = names::nft_service_base(&svc.namespace, &svc.name, svc.protocol, &svc.port_name);
    names::nft_endpoint_chain(&base, ep.ip, ep.port)
}

/// The rule that picks an endpoint: a `numgen` vmap to endpoint chains (kube-proxy), or a
/// `numgen`-indexed DNAT map (ours).
fn dispatch(plan: &ServicePlan, endpoints: &[&Endpoint], layout: Layout) -> String {
    let n = endpoints.len();
    match layout {
        Layout::KubeProxy => {
            let arms: Vec<String> = endpoints
                .iter()
                .enumerate()
                .map(|(i, ep)| format!("{i} : goto {}", endpoint_chain(plan, ep)))
                .collect();
            format!("numgen random mod {n} vmap {{ {} }}", arms.join(", "))
        }
        Layout::Fast => {
            let proto = plan.entry.port.protocol.lower();
            if let [only] = endpoints {
                return format!("meta l4proto {proto} dnat to {}:{}", only.ip, only.port);
            }
            let arms: Vec<String> = endpoints
                .iter()
                .enumerate()
                .map(|(i, ep)| format!("{i} : {} . {}", ep.ip, ep.port))
                .collect();
            format!(
                "meta l4proto {proto} dnat ip addr . port to numgen random mod {n} map {{ {} }}",
                arms.join(", ")
            )
        }
    }
}

fn elements(out: &mut String, items: &[String]) {
    if !items.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", items.join(",\n\t\t\t     "));
    }
}

fn map(out: &mut String, name: &str, type_: &str, items: &[String]) {
    let _ = writeln!(out, "\tmap {name} {{\n\t\ttype {type_}");
    elements(out, items);
    out.push_str("\t}\n");
}

fn chain(out: &mut String, name: &str, base: Option<&str>, rules: &[String]) {
    let _ = writeln!(out, "\tchain {name} {{");
    if let Some(base) = base {
        let _ = writeln!(out, "\t\t{base}; policy accept;");
    }
    for rule in rules {
        let _ = writeln!(out, "\t\t{rule}");
    }
    out.push_str("\t}\n");
}
