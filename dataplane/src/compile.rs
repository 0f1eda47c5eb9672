//! `compile(snapshot, node) -> RuleSet`: kube-proxy's iptables layout, deterministic, no I/O.
//!
//! The structure follows kube-proxy's `syncProxyRules`: per service port a dispatch rule in
//! `KUBE-SERVICES` (or a REJECT/DROP in the filter table when nothing can serve it), NodePorts
//! in `KUBE-NODEPORTS`, external traffic through `KUBE-EXT-*` (and `KUBE-FW-*` for source
//! ranges), endpoint choice in `KUBE-SVC-*`/`KUBE-SVL-*` and DNAT in `KUBE-SEP-*`. Services are
//! written in a stable order (kube-proxy's follows a Go map) and the NodePorts jump comes last
//! in `KUBE-SERVICES`, because it matches every local destination.

use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;

use crate::model::{Endpoint, NodeConfig, ServiceEntry, Snapshot, TrafficPolicy};
use crate::names;
use crate::ruleset::{Hook, Match, Rule, RuleSet, Table, Target, host};

const KUBE_SERVICES: &str = "KUBE-SERVICES";
const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
const KUBE_FORWARD: &str = "KUBE-FORWARD";
const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";

/// The endpoints a service port may use on this node, per kube-proxy's `CategorizeEndpoints`:
/// ready ones, or, when none is ready, serving ones that are terminating (so that a rolling
/// update does not drop traffic).
fn usable<'a>(endpoints: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
    let ready: Vec<&Endpoint> = endpoints.clone().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints.filter(|e| e.serving && e.terminating).collect()
}

/// Compiles the rules for `node`.
pub fn compile(snapshot: &Snapshot, node: &NodeConfig) -> RuleSet {
    let mut rs = RuleSet::default();
    let mark = node.masquerade_mark();
    // Declare the fixed chains first, in kube-proxy's order, so they exist even when empty.
    for chain in [
        KUBE_SERVICES,
        KUBE_EXTERNAL_SERVICES,
        KUBE_FORWARD,
        KUBE_NODEPORTS,
        KUBE_PROXY_FIREWALL,
    ] {
        rs.chain_mut(Table::Filter, chain);
    }
    for chain in [
        KUBE_SERVICES,
        KUBE_NODEPORTS,
        KUBE_POSTROUTING,
        KUBE_MARK_MASQ,
    ] {
        rs.chain_mut(Table::Nat, chain);
    }
    for entry in snapshot.services.values() {
        compile_service(&mut rs, entry, node);
    }
    rs.push(
        Table::Nat,
        KUBE_SERVICES,
        vec![
            Match::Comment(
                "kubernetes service nodeports; NOTE: this must be the last rule in this chain"
                    .into(),
            ),
            Match::DstLocal,
        ],
        Target::Jump(KUBE_NODEPORTS.into()),
    );
    rs.push(
        Table::Nat,
        KUBE_MARK_MASQ,
        vec![],
        Target::MarkOr(mark.clone()),
    );
    rs.push(
        Table::Nat,
        KUBE_POSTROUTING,
        vec![Match::NotMarked(mark.clone())],
        Target::Return,
    );
    rs.push(
        Table::Nat,
        KUBE_POSTROUTING,
        vec![],
        Target::MarkXor(mark.clone()),
    );
    rs.push(
        Table::Nat,
        KUBE_POSTROUTING,
        vec![Match::Comment(
            "kubernetes service traffic requiring SNAT".into(),
        )],
        Target::Masquerade,
    );
    rs.push(
        Table::Filter,
        KUBE_FORWARD,
        vec![Match::CtState("INVALID")],
        Target::Drop,
    );
    rs.push(
        Table::Filter,
        KUBE_FORWARD,
        vec![
            Match::Comment("kubernetes forwarding rules".into()),
            Match::Marked(mark),
        ],
        Target::Accept,
    );
    rs.push(
        Table::Filter,
        KUBE_FORWARD,
        vec![
            Match::Comment("kubernetes forwarding conntrack rule".into()),
            Match::CtState("RELATED,ESTABLISHED"),
        ],
        Target::Accept,
    );
    rs.hooks = hooks();
    rs
}

fn hook(table: Table, builtin: &'static str, matches: Vec<Match>, chain: &str) -> Hook {
    Hook {
        table,
        builtin,
        rule: Rule {
            matches,
            target: Target::Jump(chain.into()),
        },
    }
}

/// kube-proxy's jumps from the built-in chains (its `iptablesJumpChains`).
fn hooks() -> Vec<Hook> {
    let new = || Match::CtState("NEW");
    let c = |s: &str| Match::Comment(s.into());
    vec![
        hook(
            Table::Filter,
            "INPUT",
            vec![new(), c("kubernetes externally-visible service portals")],
            KUBE_EXTERNAL_SERVICES,
        ),
        hook(
            Table::Filter,
            "FORWARD",
            vec![new(), c("kubernetes externally-visible service portals")],
            KUBE_EXTERNAL_SERVICES,
        ),
        hook(
            Table::Filter,
            "INPUT",
            vec![c("kubernetes health check service ports")],
            KUBE_NODEPORTS,
        ),
        hook(
            Table::Filter,
            "FORWARD",
            vec![new(), c("kubernetes service portals")],
            KUBE_SERVICES,
        ),
        hook(
            Table::Filter,
            "OUTPUT",
            vec![new(), c("kubernetes service portals")],
            KUBE_SERVICES,
        ),
        hook(
            Table::Filter,
            "FORWARD",
            vec![c("kubernetes forwarding rules")],
            KUBE_FORWARD,
        ),
        hook(
            Table::Filter,
            "INPUT",
            vec![new(), c("kubernetes load balancer firewall")],
            KUBE_PROXY_FIREWALL,
        ),
        hook(
            Table::Filter,
            "OUTPUT",
            vec![new(), c("kubernetes load balancer firewall")],
            KUBE_PROXY_FIREWALL,
        ),
        hook(
            Table::Filter,
            "FORWARD",
            vec![new(), c("kubernetes load balancer firewall")],
            KUBE_PROXY_FIREWALL,
        ),
        hook(
            Table::Nat,
            "OUTPUT",
            vec![c("kubernetes service portals")],
            KUBE_SERVICES,
        ),
        hook(
            Table::Nat,
            "PREROUTING",
            vec![c("kubernetes service portals")],
            KUBE_SERVICES,
        ),
        hook(
            Table::Nat,
            "POSTROUTING",
            vec![c("kubernetes postrouting rules")],
            KUBE_POSTROUTING,
        ),
    ]
}

/// What one service port needs on one node, whatever the rule format: which endpoints serve
/// internal and external traffic, and which chains are in use. Shared by the iptables and
/// nftables layouts so that both make the same decisions.
#[derive(Debug)]
pub struct ServicePlan<'a> {
    /// The port and its endpoints.
    pub entry: &'a ServiceEntry,
    /// kube-proxy's service port name (`ns/name[:port]`).
    pub spn: String,
    /// The ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// Endpoints for Cluster policy.
    pub cluster_eps: Vec<&'a Endpoint>,
    /// Endpoints on this node, for Local policies.
    pub local_eps: Vec<&'a Endpoint>,
    /// Whether the port takes traffic from outside.
    pub external: bool,
    /// externalTrafficPolicy is Local (and the port takes external traffic).
    pub external_local: bool,
    /// internalTrafficPolicy is Local.
    pub internal_local: bool,
    /// The Cluster-policy chain is in use.
    pub uses_cluster: bool,
    /// The Local-policy chain is in use.
    pub uses_local: bool,
    /// Some endpoint can serve.
    pub has_endpoints: bool,
    /// Internal traffic (to the ClusterIP) can be served.
    pub has_internal: bool,
    /// External traffic (NodePort, external and LB IPs) can be served.
    pub has_external: bool,
}

impl<'a> ServicePlan<'a> {
    /// The plan for `entry` on `node`; `None` for a headless service.
    pub fn new(entry: &'a ServiceEntry, node: &NodeConfig) -> Option<Self> {
        let svc = &entry.port;
        let cluster_ip = svc.cluster_ip?;
        let cluster_eps = usable(entry.endpoints.iter());
        let local_eps = usable(
            entry
                .endpoints
                .iter()
                .filter(|e| e.node.as_deref() == Some(node.node_name.as_str())),
        );
        let external = svc.externally_accessible();
        let external_local = external && svc.external_policy == TrafficPolicy::Local;
        let internal_local = svc.internal_policy == TrafficPolicy::Local;
        let has_endpoints = !cluster_eps.is_empty();
        Some(Self {
            entry,
            spn: svc.port_name_string(),
            cluster_ip,
            // Even with an external Local policy, pod and host traffic is short-circuited to
            // the Cluster chain, so that chain is in use whenever the port is reachable from
            // outside.
            uses_cluster: has_endpoints && (!internal_local || external),
            uses_local: !local_eps.is_empty() && (internal_local || external_local),
            has_internal: if internal_local {
                !local_eps.is_empty()
            } else {
                has_endpoints
            },
            has_external: if external_local {
                !local_eps.is_empty()
            } else {
                has_endpoints
            },
            cluster_eps,
            local_eps,
            external,
            external_local,
            internal_local,
            has_endpoints,
        })
    }

    /// The addresses of the endpoints a used policy chain can reach that may be their own
    /// client through node `node_name`'s rules, sorted, each once. A Pod's traffic
    /// to a cluster, load-balancer or external IP is DNATed on the Pod's own node, so only
    /// endpoints there (or on no known node) count; but with externalTrafficPolicy Local,
    /// Pod traffic to this node's NodePort goes to the Cluster chain without masquerade, so a
    /// Pod on another node may be sent back to itself and every endpoint counts.
    pub fn hairpin_ips(&self, node_name: &str) -> Vec<std::net::Ipv4Addr> {
        let mut ips = Vec::new();
        let any_node = self.external_local;
        let here = |e: &&&Endpoint| any_node || e.node.as_deref().is_none_or(|n| n == node_name);
        if self.uses_cluster {
            ips.extend(self.cluster_eps.iter().filter(here).map(|e| e.ip));
        }
        if self.uses_local {
            ips.extend(self.local_eps.iter().map(|e| e.ip));
        }
        ips.sort_unstable();
        ips.dedup();
        ips
    }

    /// Every endpoint a used policy chain can reach, in `ip:port` order.
    pub fn reachable(&self) -> Vec<&'a Endpoint> {
        let mut reachable: Vec<&Endpoint> = Vec::new();
        if self.uses_cluster {
            reachable.extend(&self.cluster_eps);
        }
        if self.uses_local {
            reachable.extend(&self.local_eps);
        }
        reachable.sort_by_cached_key(|e| e.addr());
        reachable.dedup_by_key(|e| (e.ip, e.port));
        reachable
    }
}

fn compile_service(rs: &mut RuleSet, entry: &ServiceEntry, node: &NodeConfig) {
    let Some(plan) = ServicePlan::new(entry, node) else {
        return;
    };
    let svc = &entry.port;
    let cluster_ip = plan.cluster_ip;
    let spn = plan.spn.clone();
    let proto = svc.protocol;
    let cluster_chain = names::svc_chain(&spn, proto);
    let local_chain = names::svl_chain(&spn, proto);
    let ext_chain = names::ext_chain(&spn, proto);
    let fw_chain = names::fw_chain(&spn, proto);
    let cluster_eps = &plan.cluster_eps;
    let local_eps = &plan.local_eps;
    let (external, external_local) = (plan.external, plan.external_local);
    let (uses_cluster, uses_local) = (plan.uses_cluster, plan.uses_local);
    let (has_endpoints, has_internal, has_external) =
        (plan.has_endpoints, plan.has_internal, plan.has_external);
    let internal_chain = if plan.internal_local {
        &local_chain
    } else {
        &cluster_chain
    };
    let external_policy_chain = if external_local {
        &local_chain
    } else {
        &cluster_chain
    };
    let uses_ext = has_endpoints && external;
    let uses_fw = has_endpoints
        && !svc.load_balancer_ips.is_empty()
        && !svc.load_balancer_source_ranges.is_empty();
    let lb_chain = if uses_fw { &fw_chain } else { &ext_chain };

    let (internal_filter, internal_filter_target) = if has_endpoints {
        (format!("{spn} has no local endpoints"), Target::Drop)
    } else {
        (format!("{spn} has no endpoints"), Target::Reject)
    };
    let (external_filter, external_filter_target) = if has_endpoints {
        (format!("{spn} has no local endpoints"), Target::Drop)
    } else {
        (format!("{spn} has no endpoints"), Target::Reject)
    };
    let to = |ip: Ipv4Addr| {
        vec![
            Match::Protocol(proto),
            Match::Dst(host(ip)),
            Match::DstPort(svc.port),
        ]
    };
    let with = |comment: String, rest: Vec<Match>| {
        let mut m = vec![Match::Comment(comment)];
        m.extend(rest);
        m
    };

    // The ClusterIP.
    if has_internal {
        rs.push(
            Table::Nat,
            KUBE_SERVICES,
            with(format!("{spn} cluster IP"), to(cluster_ip)),
            Target::Jump(internal_chain.clone()),
        );
    } else {
        rs.push(
            Table::Filter,
            KUBE_SERVICES,
            with(internal_filter, to(cluster_ip)),
            internal_filter_target,
        );
    }
    // External IPs.
    for &ip in &svc.external_ips {
        if has_endpoints {
            rs.push(
                Table::Nat,
                KUBE_SERVICES,
                with(format!("{spn} external IP"), to(ip)),
                Target::Jump(ext_chain.clone()),
            );
        }
        if !has_external {
            rs.push(
                Table::Filter,
                KUBE_EXTERNAL_SERVICES,
                with(external_filter.clone(), to(ip)),
                external_filter_target.clone(),
            );
        }
    }
    // Load-balancer IPs.
    for &ip in &svc.load_balancer_ips {
        if has_endpoints {
            rs.push(
                Table::Nat,
                KUBE_SERVICES,
                with(format!("{spn} loadbalancer IP"), to(ip)),
                Target::Jump(lb_chain.clone()),
            );
        }
        if uses_fw {
            rs.push(
                Table::Filter,
                KUBE_PROXY_FIREWALL,
                with(format!("{spn} traffic not accepted by {fw_chain}"), to(ip)),
                Target::Drop,
            );
        }
    }
    if !has_external {
        for &ip in &svc.load_balancer_ips {
            rs.push(
                Table::Filter,
                KUBE_EXTERNAL_SERVICES,
                with(external_filter.clone(), to(ip)),
                external_filter_target.clone(),
            );
        }
    }
    // The NodePort.
    if let Some(node_port) = svc.node_port {
        if has_endpoints {
            rs.push(
                Table::Nat,
                KUBE_NODEPORTS,
                vec![
                    Match::Comment(spn.clone()),
                    Match::Protocol(proto),
                    Match::DstPort(node_port),
                ],
                Target::Jump(ext_chain.clone()),
            );
        }
        if !has_external {
            rs.push(
                Table::Filter,
                KUBE_EXTERNAL_SERVICES,
                vec![
                    Match::Comment(external_filter.clone()),
                    Match::DstLocal,
                    Match::Protocol(proto),
                    Match::DstPort(node_port),
                ],
                external_filter_target.clone(),
            );
        }
    }

    // Masquerade traffic to the ClusterIP that does not come from a pod: its reply must come
    // back through this node to be un-DNATed.
    if has_internal && let Some(cidr) = node.cluster_cidr {
        let mut matches = with(format!("{spn} cluster IP"), to(cluster_ip));
        matches.push(Match::NotSrc(cidr));
        rs.push(
            Table::Nat,
            internal_chain,
            matches,
            Target::Jump(KUBE_MARK_MASQ.into()),
        );
    }

    if uses_ext {
        rs.chain_mut(Table::Nat, &ext_chain);
        if !external_local {
            // Endpoints may be on other nodes: masquerade so replies return through here.
            rs.push(
                Table::Nat,
                &ext_chain,
                vec![Match::Comment(format!(
                    "masquerade traffic for {spn} external destinations"
                ))],
                Target::Jump(KUBE_MARK_MASQ.into()),
            );
        } else {
            // Local endpoints keep the client's source IP; pods and the node itself go to
            // any endpoint.
            if let Some(cidr) = node.cluster_cidr {
                rs.push(
                    Table::Nat,
                    &ext_chain,
                    vec![
                        Match::Comment(format!("pod traffic for {spn} external destinations")),
                        Match::Src(cidr),
                    ],
                    Target::Jump(cluster_chain.clone()),
                );
            }
            rs.push(
                Table::Nat,
                &ext_chain,
                vec![
                    Match::Comment(format!(
                        "masquerade LOCAL traffic for {spn} external destinations"
                    )),
                    Match::SrcLocal,
                ],
                Target::Jump(KUBE_MARK_MASQ.into()),
            );
            rs.push(
                Table::Nat,
                &ext_chain,
                vec![
                    Match::Comment(format!(
                        "route LOCAL traffic for {spn} external destinations"
                    )),
                    Match::SrcLocal,
                ],
                Target::Jump(cluster_chain.clone()),
            );
        }
        if has_external {
            rs.push(
                Table::Nat,
                &ext_chain,
                vec![],
                Target::Jump(external_policy_chain.clone()),
            );
        }
    }

    if uses_fw {
        rs.chain_mut(Table::Nat, &fw_chain);
        let comment = || Match::Comment(format!("{spn} loadbalancer IP"));
        for &range in &svc.load_balancer_source_ranges {
            rs.push(
                Table::Nat,
                &fw_chain,
                vec![comment(), Match::Src(range)],
                Target::Jump(ext_chain.clone()),
            );
        }
        // A node inside an allowed range reaches the LB IP with the LB IP as source (hairpin).
        if node.node_ips.iter().any(|ip| {
            svc.load_balancer_source_ranges
                .iter()
                .any(|r| r.contains(ip))
        }) {
            for &ip in &svc.load_balancer_ips {
                rs.push(
                    Table::Nat,
                    &fw_chain,
                    vec![comment(), Match::Src(host(ip))],
                    Target::Jump(ext_chain.clone()),
                );
            }
        }
        rs.push(
            Table::Nat,
            &fw_chain,
            vec![Match::Comment(format!(
                "other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"
            ))],
            Target::None,
        );
    }

    if uses_cluster {
        endpoint_dispatch(rs, &spn, entry, &cluster_chain, cluster_eps);
    }
    if uses_local {
        endpoint_dispatch(rs, &spn, entry, &local_chain, local_eps);
    }

    // One chain per endpoint any used policy chain can reach.
    let reachable = plan.reachable();
    for ep in reachable {
        let chain = names::sep_chain(&spn, proto, &ep.addr());
        rs.chain_mut(Table::Nat, &chain);
        // A pod reaching itself through the service: SNAT so the reply is un-DNATed.
        rs.push(
            Table::Nat,
            &chain,
            vec![Match::Comment(spn.clone()), Match::Src(host(ep.ip))],
            Target::Jump(KUBE_MARK_MASQ.into()),
        );
        let mut matches = vec![Match::Comment(spn.clone())];
        if svc.affinity_seconds.is_some() {
            matches.push(Match::RecentSet(chain.clone()));
        }
        matches.push(Match::Protocol(proto));
        rs.push(
            Table::Nat,
            &chain,
            matches,
            Target::Dnat(SocketAddrV4::new(ep.ip, ep.port)),
        );
    }
}

/// Session-affinity checks, then one statistic rule per endpoint: endpoint `i` of `n` is
/// taken with probability `1/(n-i)` of what reaches it, so each gets `1/n` overall.
fn endpoint_dispatch(
    rs: &mut RuleSet,
    spn: &str,
    entry: &ServiceEntry,
    chain: &str,
    endpoints: &[&Endpoint],
) {
    rs.chain_mut(Table::Nat, chain);
    let proto = entry.port.protocol;
    if let Some(seconds) = entry.port.affinity_seconds {
        for ep in endpoints {
            let sep = names::sep_chain(spn, proto, &ep.addr());
            rs.push(
                Table::Nat,
                chain,
                vec![
                    Match::Comment(format!("{spn} -> {}", ep.addr())),
                    Match::RecentCheck {
                        name: sep.clone(),
                        seconds,
                    },
                ],
                Target::Jump(sep),
            );
        }
    }
    let n = endpoints.len();
    for (i, ep) in endpoints.iter().enumerate() {
        let sep = names::sep_chain(spn, proto, &ep.addr());
        let mut matches = vec![Match::Comment(format!("{spn} -> {}", ep.addr()))];
        if i + 1 < n {
            matches.push(Match::Probability(1.0 / (n - i) as f64));
        }
        rs.push(Table::Nat, chain, matches, Target::Jump(sep));
    }
}

/// The pod CIDR of the tutorial's kind cluster, `10.244.0.0/16`.
pub fn default_cluster_cidr() -> Ipv4Net {
    "10.244.0.0/16".parse().expect("a valid CIDR")
}
