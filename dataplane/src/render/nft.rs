//! `nft -f` input: the whole table replaced in one atomic transaction.
//!
//! Two layouts, both driven by the same [`ServicePlan`]s as the iptables rules:
//!
//! - [`Layout::KubeProxy`], table `ip kube-proxy`: kube-proxy's nftables mode (its map names,
//!   chain names, `numgen` dispatch to one chain per endpoint, `reject-chain`). As there,
//!   NodePorts are not served on 127.0.0.1.
//! - [`Layout::Fast`], table `ip services-lab`: one chain per service port that DNATs through
//!   a named `numgen`-indexed map of `addr . port` (`<chain>-endpoints`), so there are no
//!   per-endpoint chains; hairpin traffic (a Pod reaching itself through its Service) is
//!   masqueraded through one set of `pod . pod` pairs; NodePorts also answer on 127.0.0.1, as
//!   in iptables mode. Rendered after an earlier table ([`table_after`]), every endpoint that
//!   stays keeps its slot in the map, whatever the number of endpoints: one arriving is one
//!   element added; one leaving is at most three element commands (its slot and the highest
//!   deleted, the highest one's endpoint added in its slot); and the chain's `mod N` changes.
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
    pub const fn table(self) -> &'static str {
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
    Ok(table(snapshot, node, layout)?.full())
}

/// The layout's table for `snapshot` on `node`, as data (see [`diff`]).
pub fn table(
    snapshot: &Snapshot,
    node: &NodeConfig,
    layout: Layout,
) -> Result<NftTable, Unsupported> {
    table_after(snapshot, node, layout, None)
}

/// [`table`], rendered as a change from `previous` (the table the kernel holds): endpoints
/// keep their slots in the endpoint maps of the fast layout, so [`diff`] stays small.
pub fn table_after(
    snapshot: &Snapshot,
    node: &NodeConfig,
    layout: Layout,
    previous: Option<&NftTable>,
) -> Result<NftTable, Unsupported> {
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
    let chains_names: Vec<Chains> = plans.iter().map(|p| Chains::new(p, layout)).collect();

    let mut t = NftTable {
        name: table,
        comment: match layout {
            Layout::KubeProxy => "rules for kube-proxy",
            Layout::Fast => "rules for services-lab",
        },
        maps: Vec::new(),
        sets: Vec::new(),
        chains: Vec::new(),
    };
    let mut service_ips = Vec::new();
    let mut nodeports = Vec::new();
    let mut no_ep_services = Vec::new();
    let mut no_ep_nodeports = Vec::new();
    for (plan, names) in plans.iter().zip(&chains_names) {
        let svc = &plan.entry.port;
        let proto = svc.protocol.lower();
        let key = |ip: Ipv4Addr| format!("{ip} . {proto} . {}", svc.port);
        let refusal = if plan.has_endpoints {
            "drop".to_owned()
        } else {
            "goto reject-chain".to_owned()
        };
        let internal = if plan.internal_local {
            &names.local
        } else {
            &names.cluster
        };
        if plan.has_internal {
            service_ips.push((key(plan.cluster_ip), format!("goto {internal}")));
        } else {
            no_ep_services.push((key(plan.cluster_ip), refusal.clone()));
        }
        for &ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
            if plan.has_endpoints {
                service_ips.push((key(ip), format!("goto {}", names.external)));
            }
            if !plan.has_external {
                no_ep_services.push((key(ip), refusal.clone()));
            }
        }
        if let Some(np) = svc.node_port {
            if plan.has_endpoints {
                nodeports.push((
                    format!("{proto} . {np}"),
                    format!("goto {}", names.external),
                ));
            }
            if !plan.has_external {
                no_ep_nodeports.push((format!("{proto} . {np}"), refusal.clone()));
            }
        }
    }
    const IP_PROTO_PORT: &str = "type ipv4_addr . inet_proto . inet_service : verdict";
    const PROTO_PORT: &str = "type inet_proto . inet_service : verdict";
    t.maps
        .push(("service-ips".into(), IP_PROTO_PORT, service_ips));
    t.maps
        .push(("service-nodeports".into(), PROTO_PORT, nodeports));
    t.maps
        .push(("no-endpoint-services".into(), IP_PROTO_PORT, no_ep_services));
    t.maps
        .push(("no-endpoint-nodeports".into(), PROTO_PORT, no_ep_nodeports));
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
        t.sets
            .push(("hairpin".into(), "ipv4_addr . ipv4_addr", pairs));
    }
    let previous_maps: std::collections::HashMap<&str, &MapElements> = previous
        .map(|p| {
            p.maps
                .iter()
                .map(|(n, _, items)| (n.as_str(), items))
                .collect()
        })
        .unwrap_or_default();
    let mut endpoint_maps = Vec::new();
    let mut dispatch = |plan: &ServicePlan, chain: &str, endpoints: &[&Endpoint]| {
        if layout == Layout::KubeProxy {
            return kube_proxy_dispatch(plan, endpoints);
        }
        let map = names::nft_endpoint_map(chain);
        // A duplicate would take a slot of its own and leave a gap that `mod N` draws.
        let mut seen = std::collections::HashSet::new();
        let wanted: Vec<String> = endpoints
            .iter()
            .filter(|ep| seen.insert((ep.ip, ep.port)))
            .map(|ep| format!("{} . {}", ep.ip, ep.port))
            .collect();
        let elements = slots(previous_maps.get(map.as_str()).copied(), &wanted);
        let proto = plan.entry.port.protocol.lower();
        let rule = format!(
            "meta l4proto {proto} dnat ip addr . port to numgen random mod {} map @{map}",
            elements.len()
        );
        endpoint_maps.push((map, endpoint_map_type(proto), elements));
        rule
    };
    let mut chain = |name: &str, base: Option<&'static str>, rules: Vec<String>| {
        t.chains.push((name.to_owned(), base, rules));
    };
    chain("reject-chain", None, vec!["reject".into()]);
    if layout == Layout::KubeProxy {
        chain(
            "mark-for-masquerade",
            None,
            vec![format!("meta mark set meta mark | {mark}")],
        );
        chain(
            "masquerading",
            None,
            vec![
                format!("meta mark & {mark} == 0x00000000 return"),
                format!("meta mark set meta mark ^ {mark}"),
                "masquerade fully-random".into(),
            ],
        );
    }
    chain(
        "services",
        None,
        vec![
            "ip daddr . meta l4proto . th dport vmap @service-ips".into(),
            format!(
                "fib daddr type local {local_nodeports}meta l4proto . th dport vmap @service-nodeports"
            ),
        ],
    );
    chain(
        "service-endpoints-check",
        None,
        vec!["ip daddr . meta l4proto . th dport vmap @no-endpoint-services".into()],
    );
    chain(
        "nodeport-endpoints-check",
        None,
        vec![format!(
            "fib daddr type local {local_nodeports}meta l4proto . th dport vmap @no-endpoint-nodeports"
        )],
    );
    chain(
        "nat-prerouting",
        Some("type nat hook prerouting priority -100"),
        vec!["jump services".into()],
    );
    chain(
        "nat-output",
        Some("type nat hook output priority -100"),
        vec!["jump services".into()],
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
        "nat-postrouting",
        Some("type nat hook postrouting priority 100"),
        postrouting,
    );
    chain(
        "filter-input",
        Some("type filter hook input priority 0"),
        vec![
            "ct state new jump nodeport-endpoints-check".into(),
            "ct state new jump service-endpoints-check".into(),
        ],
    );
    chain(
        "filter-forward",
        Some("type filter hook forward priority 0"),
        vec!["ct state new jump service-endpoints-check".into()],
    );
    chain(
        "filter-output",
        Some("type filter hook output priority 0"),
        vec!["ct state new jump service-endpoints-check".into()],
    );

    for (plan, names) in plans.iter().zip(&chains_names) {
        let svc = &plan.entry.port;
        let proto = svc.protocol.lower();
        let masq_rule = |cidr: &str| {
            format!(
                "ip daddr {} {proto} dport {} ip saddr != {cidr} {masquerade}",
                plan.cluster_ip, svc.port
            )
        };
        if plan.uses_cluster {
            let mut rules = Vec::new();
            if !plan.internal_local
                && let Some(cidr) = &cidr
            {
                rules.push(masq_rule(cidr));
            }
            rules.push(dispatch(plan, &names.cluster, &plan.cluster_eps));
            chain(&names.cluster, None, rules);
        }
        if plan.uses_local {
            let mut rules = Vec::new();
            if plan.internal_local
                && let Some(cidr) = &cidr
            {
                rules.push(masq_rule(cidr));
            }
            rules.push(dispatch(plan, &names.local, &plan.local_eps));
            chain(&names.local, None, rules);
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
            chain(&names.external, None, rules);
        }
        if layout == Layout::KubeProxy {
            for ep in plan.reachable() {
                chain(
                    &endpoint_chain(plan, ep),
                    None,
                    vec![
                        format!("ip saddr {} {masquerade}", ep.ip),
                        format!("meta l4proto {proto} dnat to {}:{}", ep.ip, ep.port),
                    ],
                );
            }
        }
    }
    t.maps.extend(endpoint_maps);
    Ok(t)
}

/// The declaration of an endpoint map for `proto`: numgen slot to `addr . port`.
fn endpoint_map_type(proto: &str) -> &'static str {
    match proto {
        "udp" => "typeof numgen random mod 1 : ip daddr . udp dport",
        "sctp" => "typeof numgen random mod 1 : ip daddr . sctp dport",
        _ => "typeof numgen random mod 1 : ip daddr . tcp dport",
    }
}

/// The elements (`slot : addr . port`) of an endpoint map holding `wanted` (no duplicates),
/// slots `0..n`.
/// Endpoints in `previous` keep their slots; new ones fill the slots of those that left, and
/// when fewer remain, the ones in the highest slots move down into the gaps.
fn slots(previous: Option<&MapElements>, wanted: &[String]) -> MapElements {
    let n = wanted.len();
    let wanted_set: std::collections::HashSet<&str> = wanted.iter().map(String::as_str).collect();
    let mut by_slot: std::collections::BTreeMap<usize, &str> = previous
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str())))
        .filter(|(_, v)| wanted_set.contains(v))
        .collect();
    let kept: std::collections::HashSet<&str> = by_slot.values().copied().collect();
    let mut arriving = wanted
        .iter()
        .map(String::as_str)
        .filter(|w| !kept.contains(w));
    for slot in 0..n {
        if by_slot.contains_key(&slot) {
            continue;
        }
        let filler = match arriving.next() {
            Some(ep) => ep,
            None => {
                let (&top, _) = by_slot.last_key_value().expect("a kept endpoint above n");
                by_slot.remove(&top).expect("present")
            }
        };
        by_slot.insert(slot, filler);
    }
    by_slot
        .into_iter()
        .map(|(slot, ep)| (slot.to_string(), ep.to_owned()))
        .collect()
}

/// A map's elements as (key, value), in write order.
pub type MapElements = Vec<(String, String)>;

/// An nftables table as data: what [`render`] writes in full and [`diff`] writes as changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftTable {
    /// The table's name (family `ip`).
    pub name: &'static str,
    /// Its comment.
    pub comment: &'static str,
    /// Maps: name, declaration (`type ...` or `typeof ...`), elements as (key, value) in
    /// write order.
    pub maps: Vec<(String, &'static str, MapElements)>,
    /// Sets: name, type, elements.
    pub sets: Vec<(String, &'static str, Vec<String>)>,
    /// Chains: name, base-chain hook spec, rules.
    pub chains: Vec<(String, Option<&'static str>, Vec<String>)>,
}

impl NftTable {
    /// The transaction that replaces the table with this one (create-then-delete makes it work
    /// whether or not the table exists yet).
    pub fn full(&self) -> String {
        let table = self.name;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "table ip {table}\ndelete table ip {table}\ntable ip {table} {{"
        );
        let _ = writeln!(out, "\tcomment \"{}\"", self.comment);
        for (name, type_, items) in &self.maps {
            let items: Vec<String> = items.iter().map(|(k, v)| format!("{k} : {v}")).collect();
            let _ = writeln!(out, "\tmap {name} {{\n\t\t{type_}");
            elements(&mut out, &items);
            out.push_str("\t}\n");
        }
        for (name, type_, items) in &self.sets {
            let _ = writeln!(out, "\tset {name} {{\n\t\ttype {type_}");
            elements(&mut out, items);
            out.push_str("\t}\n");
        }
        for (name, base, rules) in &self.chains {
            let _ = writeln!(out, "\tchain {name} {{");
            if let Some(base) = base {
                let _ = writeln!(out, "\t\t{base}; policy accept;");
            }
            for rule in rules {
                let _ = writeln!(out, "\t\t{rule}");
            }
            out.push_str("\t}\n");
        }
        out.push_str("}\n");
        out
    }
}

/// The transaction that turns table `old` into `new`, touching only what differs (kube-proxy's
/// partial sync): changed chains are flushed and refilled, map and set elements added or
/// deleted one by one, and chains nothing refers to any more deleted last.
pub fn diff(old: &NftTable, new: &NftTable) -> String {
    let t = new.name;
    let mut out = String::new();
    let old_chains: std::collections::BTreeMap<&str, &Vec<String>> =
        old.chains.iter().map(|(n, _, r)| (n.as_str(), r)).collect();
    let new_chains: std::collections::BTreeMap<&str, &Vec<String>> =
        new.chains.iter().map(|(n, _, r)| (n.as_str(), r)).collect();
    // New chains exist before any element points at them.
    for (name, _) in new_chains
        .iter()
        .filter(|(n, _)| !old_chains.contains_key(*n))
    {
        let _ = writeln!(out, "add chain ip {t} {name}");
    }
    // Maps by name: new ones are declared before their elements and the rules that use them.
    let old_maps: std::collections::BTreeMap<&str, &MapElements> =
        old.maps.iter().map(|(n, _, e)| (n.as_str(), e)).collect();
    let no_elements = MapElements::new();
    for (name, decl, new_items) in &new.maps {
        let old_items = match old_maps.get(name.as_str()) {
            Some(items) => *items,
            None => {
                let _ = writeln!(out, "add map ip {t} {name} {{ {decl}; }}");
                &no_elements
            }
        };
        let before: std::collections::BTreeMap<&str, &str> = old_items
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let after: std::collections::BTreeMap<&str, &str> = new_items
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (k, v) in &before {
            if after.get(k) != Some(v) {
                let _ = writeln!(out, "delete element ip {t} {name} {{ {k} }}");
            }
        }
        for (k, v) in &after {
            if before.get(k) != Some(v) {
                let _ = writeln!(out, "add element ip {t} {name} {{ {k} : {v} }}");
            }
        }
    }
    for ((name, _, old_items), (_, _, new_items)) in old.sets.iter().zip(&new.sets) {
        let before: std::collections::HashSet<&String> = old_items.iter().collect();
        let after: std::collections::HashSet<&String> = new_items.iter().collect();
        for gone in old_items.iter().filter(|e| !after.contains(e)) {
            let _ = writeln!(out, "delete element ip {t} {name} {{ {gone} }}");
        }
        for added in new_items.iter().filter(|e| !before.contains(e)) {
            let _ = writeln!(out, "add element ip {t} {name} {{ {added} }}");
        }
    }
    for (name, rules) in &new_chains {
        if old_chains.get(name) == Some(rules) {
            continue;
        }
        if old_chains.contains_key(name) {
            let _ = writeln!(out, "flush chain ip {t} {name}");
        }
        for rule in rules.iter() {
            let _ = writeln!(out, "add rule ip {t} {name} {rule}");
        }
    }
    // Chains that only gone chains jumped to are flushed first so every delete succeeds.
    let gone: Vec<&&str> = old_chains
        .keys()
        .filter(|n| !new_chains.contains_key(**n))
        .collect();
    for name in &gone {
        let _ = writeln!(out, "flush chain ip {t} {name}");
    }
    for name in &gone {
        let _ = writeln!(out, "delete chain ip {t} {name}");
    }
    // Maps go last, once no rule refers to them.
    let new_maps: std::collections::HashSet<&str> =
        new.maps.iter().map(|(n, _, _)| n.as_str()).collect();
    for (name, _, _) in old
        .maps
        .iter()
        .filter(|(n, _, _)| !new_maps.contains(n.as_str()))
    {
        let _ = writeln!(out, "delete map ip {t} {name}");
    }
    out
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

/// kube-proxy's rule that picks an endpoint: a `numgen` vmap to endpoint chains.
fn kube_proxy_dispatch(plan: &ServicePlan, endpoints: &[&Endpoint]) -> String {
    let arms: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| format!("{i} : goto {}", endpoint_chain(plan, ep)))
        .collect();
    format!(
        "numgen random mod {} vmap {{ {} }}",
        endpoints.len(),
        arms.join(", ")
    )
}

fn elements(out: &mut String, items: &[String]) {
    if !items.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", items.join(",\n\t\t\t     "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn pairs(items: &[(&str, &str)]) -> MapElements {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn slots_without_a_previous_map_follow_the_given_order() {
        assert_eq!(
            slots(None, &owned(&["a", "b", "c"])),
            pairs(&[("0", "a"), ("1", "b"), ("2", "c")])
        );
        assert_eq!(slots(None, &[]), MapElements::new());
    }

    #[test]
    fn slots_keep_their_endpoints_and_fill_gaps_with_newcomers_then_the_highest() {
        let previous = pairs(&[("0", "a"), ("1", "b"), ("2", "c"), ("3", "d")]);
        // b left and e came: e takes b's slot.
        assert_eq!(
            slots(Some(&previous), &owned(&["e", "d", "c", "a"])),
            pairs(&[("0", "a"), ("1", "e"), ("2", "c"), ("3", "d")])
        );
        // b left: d, in the highest slot, moves down into it.
        assert_eq!(
            slots(Some(&previous), &owned(&["a", "c", "d"])),
            pairs(&[("0", "a"), ("1", "d"), ("2", "c")])
        );
        // a and b left, e came: e fills slot 0, d moves to slot 1.
        assert_eq!(
            slots(Some(&previous), &owned(&["c", "d", "e"])),
            pairs(&[("0", "e"), ("1", "d"), ("2", "c")])
        );
        // Two came: they take the slots after the last.
        assert_eq!(
            slots(Some(&previous), &owned(&["a", "b", "c", "d", "e", "f"])),
            pairs(&[
                ("0", "a"),
                ("1", "b"),
                ("2", "c"),
                ("3", "d"),
                ("4", "e"),
                ("5", "f")
            ])
        );
    }
}
