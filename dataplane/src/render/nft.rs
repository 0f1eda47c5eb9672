//! `nft -f` input: the whole table replaced in one atomic transaction, or the changes from
//! one table to the next ([`diff`], and [`NftSync`], which renders only the service ports
//! that changed).
//!
//! Two layouts, both driven by the same [`ServicePlan`]s as the iptables rules:
//!
//! - [`Layout::KubeProxy`], table `ip kube-proxy`: kube-proxy's nftables mode (its map names,
//!   chain names, `numgen` dispatch to one chain per endpoint, `reject-chain`). As there,
//!   NodePorts are not served on 127.0.0.1.
//! - [`Layout::Fast`], table `ip services-lab`: one chain per service port that draws a key
//!   with `numgen` and DNATs through a map of `key : addr . port`, so there are no
//!   per-endpoint chains; hairpin traffic (a Pod reaching itself through its Service) is
//!   masqueraded through one set of `pod . pod` pairs (of this node's Pods, unless a
//!   NodePort with externalTrafficPolicy Local can send another node's Pod back to itself);
//!   NodePorts also answer on 127.0.0.1, as in iptables mode.
//!
//!   The endpoint maps are shared: each dispatch chain has an id, and its endpoints are the
//!   keys `id << 16 | slot` of map `<protocol>-endpoints-<id / 8>`: `ct mark set numgen
//!   random mod N offset <id << 16>` draws one into the connection's conntrack mark and
//!   `dnat ip addr . port to ct mark map @...` looks it up. A rule with `dnat` makes the
//!   kernel validate the whole table when it is added, one that only sets the mark does not,
//!   so a changed `mod N` is a cheap rule replacement. The layout thus owns the conntrack
//!   mark of connections to Services: whatever copies it back to packet marks (policy
//!   routing, `meta mark set ct mark`) sees the drawn key, so such hosts want
//!   [`Layout::KubeProxy`]. Each protocol has its own maps: `nft`
//!   refuses to add a rule for one protocol that reads a map declared with another's port.
//!   One map per chain would make a full sync quadratic in the kernel, which looks a new
//!   named set up among all the table's sets; one map for all would too, as the kernel checks
//!   each added element against every rule that reads the map.
//!
//!   Kept up to date by [`NftSync`], every endpoint that stays keeps its slot, whatever the
//!   number of endpoints: one arriving is one element added; one leaving is at most three
//!   element commands (its slot and the highest deleted, the highest one's endpoint added in
//!   its slot); and the chain's `mod N` changes.
//!
//! Session affinity and loadBalancerSourceRanges are not rendered for nftables yet: a
//! service that uses them is an error rather than rules that mean something else.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write;
use std::net::Ipv4Addr;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::compile::ServicePlan;
use crate::model::{Endpoint, NodeConfig, Protocol, ServiceEntry, Snapshot};
use crate::names;

mod elements;

pub use elements::{Element, ElementChange};

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

/// The layout's table for `snapshot` on `node`, as data (see [`diff`]); endpoint map ids
/// are given in service order.
pub fn table(
    snapshot: &Snapshot,
    node: &NodeConfig,
    layout: Layout,
) -> Result<NftTable, Unsupported> {
    let mut ids = Ids::default();
    let fragments = snapshot
        .services
        .values()
        .filter_map(|entry| ServicePlan::new(entry, node))
        .map(|plan| {
            fragment(&plan, node, layout, &mut |_| {
                Ok((ids.take(&plan.spn)?, None))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(assemble(node, layout, fragments.iter()))
}

/// Dispatch chains that share one endpoint map (see the module docs).
const CHAINS_PER_MAP: u32 = 8;
/// Key bits of a slot: a chain draws from keys `id << SLOT_BITS ..`.
const SLOT_BITS: u32 = 16;
/// The most endpoints one dispatch chain can draw from.
pub const MAX_ENDPOINTS: usize = 1 << SLOT_BITS;
/// The declaration of the shared endpoint maps of `proto`: the drawn key (`ct mark`) to
/// `addr . port`.
fn endpoint_map_type(proto: &str) -> &'static str {
    match proto {
        "udp" => "typeof ct mark : ip daddr . udp dport",
        "sctp" => "typeof ct mark : ip daddr . sctp dport",
        _ => "typeof ct mark : ip daddr . tcp dport",
    }
}

/// The endpoint map that dispatch chain `id` of protocol `proto` draws from.
fn endpoint_map(proto: &str, id: u32) -> String {
    format!("{proto}-endpoints-{}", id / CHAINS_PER_MAP)
}

/// Whether map `name` is one of the shared endpoint maps.
pub fn is_endpoint_map(name: &str) -> bool {
    name.contains("-endpoints-")
}

/// The first key of dispatch chain `id`.
fn endpoint_base(id: u32) -> u32 {
    id << SLOT_BITS
}

/// The ids of dispatch chains: freed ones are reused first, so the endpoint maps stay few.
#[derive(Debug, Clone, Default)]
struct Ids {
    free: BTreeSet<u32>,
    next: u32,
}

impl Ids {
    fn take(&mut self, service: &str) -> Result<u32, Unsupported> {
        if let Some(id) = self.free.pop_first() {
            return Ok(id);
        }
        if self.next >= 1 << (32 - SLOT_BITS) {
            return Err(Unsupported {
                service: service.to_owned(),
                feature: "more than 65,536 dispatch chains (service ports, and their Local variants)",
            });
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    fn give(&mut self, id: u32) {
        self.free.insert(id);
    }
}

/// A chain's dispatch, read back from its two rules: `ct mark set numgen random mod N
/// [offset O]` draws a key, `... dnat ip addr . port to ct mark map @M` looks it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// `N`, the number of endpoints.
    pub modulus: u32,
    /// `O`, the chain's first key.
    pub offset: u32,
    /// `M`, the map.
    pub map: String,
}

impl Dispatch {
    /// The dispatch in a chain's `rules` (as written here or as `nft list` prints them), if
    /// it has one.
    pub fn parse<'a>(rules: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut draw = None;
        for rule in rules {
            if let Some(d) = Self::draw(rule) {
                draw = Some(d);
            } else if let (Some((modulus, offset)), Some(map)) = (draw, Self::map_of(rule)) {
                return Some(Dispatch {
                    modulus,
                    offset,
                    map: map.to_owned(),
                });
            }
        }
        None
    }

    /// `N` and `O` of a rule that draws a key: `ct mark set numgen random mod N [offset O]`.
    pub fn draw(rule: &str) -> Option<(u32, u32)> {
        let tail = rule.trim().strip_prefix("ct mark set numgen random mod ")?;
        let mut words = tail.split_whitespace();
        let modulus = words.next()?.parse().ok()?;
        let offset = match words.next() {
            Some("offset") => words.next()?.parse().ok()?,
            Some(_) => return None,
            None => 0,
        };
        // Anything more would be lost by a change that only patches the modulus.
        words.next().is_none().then_some((modulus, offset))
    }

    /// The map a rule looks the drawn key up in: `... to ct mark map @M`.
    fn map_of(rule: &str) -> Option<&str> {
        let (_, map) = rule.split_once(" to ct mark map @")?;
        map.split_whitespace().next()
    }

    /// The keys the rule draws.
    pub fn keys(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.modulus).filter_map(|i| self.offset.checked_add(i))
    }

    /// Whether the rule draws `key`.
    pub fn draws(&self, key: u32) -> bool {
        key.checked_sub(self.offset)
            .is_some_and(|i| i < self.modulus)
    }

    /// The first dispatch among the lines of `listing` (`nft list chain ...`).
    pub fn find(listing: &str) -> Option<Self> {
        Self::parse(listing.lines())
    }

    /// The values this rule draws from `map_listing` (`nft list map ...` of its map).
    pub fn drawn(&self, map_listing: &str) -> Vec<String> {
        listed_elements(map_listing)
            .into_iter()
            .filter(|(k, _)| self.draws(*k))
            .map(|(_, v)| v)
            .collect()
    }
}

/// The `key : value` elements of a map with integer keys, as `nft list map` prints it.
pub fn listed_elements(listing: &str) -> Vec<(u32, String)> {
    let Some((_, rest)) = listing.split_once("elements = {") else {
        return Vec::new();
    };
    let body = rest.split('}').next().unwrap_or_default();
    body.split(',')
        .filter_map(|e| {
            let (k, v) = e.split_once(" : ")?;
            // `nft` lists `ct mark` keys in hexadecimal.
            let k = k.trim();
            let key = match k.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => k.parse().ok()?,
            };
            Some((key, v.trim().to_owned()))
        })
        .collect()
}

/// One service port's share of a table: its elements in the shared maps and sets, its own
/// maps and its chains. A table is the fixed chains plus every service's fragment, so a
/// change to one service is a change to its fragment only ([`NftSync`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fragment {
    service_ips: MapElements,
    nodeports: MapElements,
    no_endpoint_services: MapElements,
    no_endpoint_nodeports: MapElements,
    /// `pod . pod` pairs of the fast layout's hairpin set.
    hairpin: Vec<String>,
    /// The fast layout's dispatch chains and their elements in the shared endpoint maps.
    endpoint_maps: Vec<EndpointMap>,
    chains: Vec<(String, Option<&'static str>, Vec<String>)>,
}

/// One dispatch chain's share of an endpoint map.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EndpointMap {
    chain: String,
    proto: &'static str,
    id: u32,
    /// `key : addr . port`, keys from the chain's base up.
    elements: MapElements,
}

const IP_PROTO_PORT: &str = "type ipv4_addr . inet_proto . inet_service : verdict";
const PROTO_PORT: &str = "type inet_proto . inet_service : verdict";
const HAIRPIN: &str = "ipv4_addr . ipv4_addr";

/// The table made of the fixed chains and `fragments`, in their order.
fn assemble<'a>(
    node: &NodeConfig,
    layout: Layout,
    fragments: impl Iterator<Item = &'a Fragment> + Clone,
) -> NftTable {
    let mut t = fragments_only(layout, fragments.clone());
    t.chains.splice(0..0, fixed_chains(node, layout));
    if layout == Layout::Fast {
        let mut pairs: Vec<&String> = fragments.flat_map(|f| &f.hairpin).collect();
        pairs.sort_unstable();
        pairs.dedup();
        t.sets.push((
            "hairpin".into(),
            HAIRPIN,
            pairs.into_iter().cloned().collect(),
        ));
    }
    t
}

/// What `fragments` put in a table: their elements of the shared maps, their own maps and
/// their chains; no fixed chains and no hairpin set (pairs are shared between fragments).
fn fragments_only<'a>(
    layout: Layout,
    fragments: impl Iterator<Item = &'a Fragment> + Clone,
) -> NftTable {
    let mut t = NftTable {
        name: layout.table(),
        comment: match layout {
            Layout::KubeProxy => "rules for kube-proxy",
            Layout::Fast => "rules for services-lab",
        },
        maps: Vec::new(),
        sets: Vec::new(),
        chains: Vec::new(),
    };
    type Pick = fn(&Fragment) -> &MapElements;
    let shared: [(&str, &'static str, Pick); 4] = [
        ("service-ips", IP_PROTO_PORT, |f| &f.service_ips),
        ("service-nodeports", PROTO_PORT, |f| &f.nodeports),
        ("no-endpoint-services", IP_PROTO_PORT, |f| {
            &f.no_endpoint_services
        }),
        ("no-endpoint-nodeports", PROTO_PORT, |f| {
            &f.no_endpoint_nodeports
        }),
    ];
    for (name, decl, pick) in shared {
        let items = fragments.clone().flat_map(pick).cloned().collect();
        t.maps.push((name.into(), decl, items));
    }
    let mut endpoint_maps: Vec<&EndpointMap> = Vec::new();
    for f in fragments {
        endpoint_maps.extend(&f.endpoint_maps);
        t.chains.extend(f.chains.iter().cloned());
    }
    endpoint_maps.sort_unstable_by_key(|m| (m.proto, m.id));
    for m in endpoint_maps {
        let name = endpoint_map(m.proto, m.id);
        match t.maps.last_mut() {
            Some((last, _, items)) if *last == name => items.extend(m.elements.iter().cloned()),
            _ => t
                .maps
                .push((name, endpoint_map_type(m.proto), m.elements.clone())),
        }
    }
    t
}

/// The chains every table of `layout` has, whatever the services.
fn fixed_chains(
    node: &NodeConfig,
    layout: Layout,
) -> Vec<(String, Option<&'static str>, Vec<String>)> {
    let mark = node.masquerade_mark();
    let local_nodeports = match layout {
        Layout::KubeProxy => "ip daddr != 127.0.0.0/8 ",
        Layout::Fast => "",
    };
    let mut chains = Vec::new();
    let mut chain = |name: &str, base: Option<&'static str>, rules: Vec<String>| {
        chains.push((name.to_owned(), base, rules));
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
    chains
}

/// Gives a dispatch chain's id and, when it had one before, the elements it held.
type EndpointIds<'f, 'p> =
    dyn FnMut(&str) -> Result<(u32, Option<&'p MapElements>), Unsupported> + 'f;

/// `plan`'s fragment; `endpoint_id` gives a dispatch chain's id and the elements it held
/// before, so that endpoints keep their slots.
fn fragment<'p>(
    plan: &ServicePlan,
    node: &NodeConfig,
    layout: Layout,
    endpoint_id: &mut EndpointIds<'_, 'p>,
) -> Result<Fragment, Unsupported> {
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
    let names = Chains::new(plan, layout);
    let mut f = Fragment::default();
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
        f.service_ips
            .push((key(plan.cluster_ip), format!("goto {internal}")));
    } else {
        f.no_endpoint_services
            .push((key(plan.cluster_ip), refusal.clone()));
    }
    for &ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
        if plan.has_endpoints {
            f.service_ips
                .push((key(ip), format!("goto {}", names.external)));
        }
        if !plan.has_external {
            f.no_endpoint_services.push((key(ip), refusal.clone()));
        }
    }
    if let Some(np) = svc.node_port {
        if plan.has_endpoints {
            f.nodeports.push((
                format!("{proto} . {np}"),
                format!("goto {}", names.external),
            ));
        }
        if !plan.has_external {
            f.no_endpoint_nodeports
                .push((format!("{proto} . {np}"), refusal.clone()));
        }
    }
    if layout == Layout::Fast {
        // Only Pods that can be sent back to themselves through this node's rules (see
        // `hairpin_ips`). Pairs are per address, whatever the ports.
        f.hairpin = plan
            .hairpin_ips(&node.node_name)
            .iter()
            .map(|ip| format!("{ip} . {ip}"))
            .collect();
    }

    let mark = node.masquerade_mark();
    let masquerade = match layout {
        Layout::KubeProxy => "jump mark-for-masquerade".to_owned(),
        Layout::Fast => format!("meta mark set meta mark | {mark}"),
    };
    let cidr = node.cluster_cidr.map(|c| c.to_string());
    let mut dispatch = |chain: &str, endpoints: &[&Endpoint]| {
        if layout == Layout::KubeProxy {
            return Ok(vec![kube_proxy_dispatch(plan, endpoints)]);
        }
        // A duplicate would take a slot of its own and leave a gap that `mod N` draws.
        let mut seen = FxHashSet::default();
        let wanted: Vec<String> = endpoints
            .iter()
            .filter(|ep| seen.insert((ep.ip, ep.port)))
            .map(|ep| format!("{} . {}", ep.ip, ep.port))
            .collect();
        if wanted.len() > MAX_ENDPOINTS {
            return Err(Unsupported {
                service: plan.spn.clone(),
                feature: "more than 65,536 endpoints in one service port",
            });
        }
        let (id, previous) = endpoint_id(chain)?;
        let base = endpoint_base(id);
        let elements = slots(previous, base, wanted);
        let offset = match base {
            0 => String::new(),
            b => format!(" offset {b}"),
        };
        // The draw is a rule of its own so that a changed `mod N` replaces a rule the kernel
        // need not check: a rule with `dnat` makes it validate the whole table at commit
        // (about 20 ms at 10,000 services), one that sets a conntrack mark does not.
        let draw = format!("ct mark set numgen random mod {}{offset}", elements.len());
        let dnat = format!(
            "meta l4proto {proto} dnat ip addr . port to ct mark map @{}",
            endpoint_map(proto, id)
        );
        f.endpoint_maps.push(EndpointMap {
            chain: chain.to_owned(),
            proto,
            id,
            elements,
        });
        Ok(vec![draw, dnat])
    };
    let masq_rule = |cidr: &str| {
        format!(
            "ip daddr {} {proto} dport {} ip saddr != {cidr} {masquerade}",
            plan.cluster_ip, svc.port
        )
    };
    let mut chains = Vec::new();
    if plan.uses_cluster {
        let mut rules = Vec::new();
        if !plan.internal_local
            && let Some(cidr) = &cidr
        {
            rules.push(masq_rule(cidr));
        }
        rules.extend(dispatch(&names.cluster, &plan.cluster_eps)?);
        chains.push((names.cluster.clone(), None, rules));
    }
    if plan.uses_local {
        let mut rules = Vec::new();
        if plan.internal_local
            && let Some(cidr) = &cidr
        {
            rules.push(masq_rule(cidr));
        }
        rules.extend(dispatch(&names.local, &plan.local_eps)?);
        chains.push((names.local.clone(), None, rules));
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
        chains.push((names.external.clone(), None, rules));
    }
    if layout == Layout::KubeProxy {
        for ep in plan.reachable() {
            chains.push((
                endpoint_chain(plan, ep),
                None,
                vec![
                    format!("ip saddr {} {masquerade}", ep.ip),
                    format!("meta l4proto {proto} dnat to {}:{}", ep.ip, ep.port),
                ],
            ));
        }
    }
    f.chains = chains;
    Ok(f)
}

/// A layout's table kept in step with snapshots, one service port at a time: each
/// [`NftSync::update`] re-renders only the service ports whose entries changed and returns
/// the transaction for just those, so a change to one service costs the same whatever the
/// number of services (kube-proxy's partial sync, without recomputing the rest).
#[derive(Debug, Clone)]
pub struct NftSync {
    layout: Layout,
    node: Option<NodeConfig>,
    services: BTreeMap<(String, Protocol), (Arc<ServiceEntry>, Fragment)>,
    /// How many fragments hold each hairpin pair (two services may share a Pod).
    hairpin: FxHashMap<String, usize>,
    ids: Ids,
    /// The endpoint maps written since the last whole table, with their declarations:
    /// partial syncs empty them but do not delete them.
    endpoint_maps: BTreeMap<String, &'static str>,
}

impl NftSync {
    /// An empty table of `layout`.
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            node: None,
            services: BTreeMap::new(),
            hairpin: FxHashMap::default(),
            ids: Ids::default(),
            endpoint_maps: BTreeMap::new(),
        }
    }

    /// The node of the last update, if any: until then, or when the node changes, an update
    /// returns the whole table.
    pub fn node(&self) -> Option<&NodeConfig> {
        self.node.as_ref()
    }

    /// Takes every service of `snapshot` into an empty table.
    fn fill(&mut self, snapshot: &Snapshot, node: &NodeConfig) -> Result<(), Unsupported> {
        for (key, entry) in &snapshot.services {
            let fragment = match ServicePlan::new(entry, node) {
                Some(plan) => {
                    let ids = &mut self.ids;
                    fragment(&plan, node, self.layout, &mut |_| {
                        Ok((ids.take(&plan.spn)?, None))
                    })?
                }
                None => Fragment::default(),
            };
            for pair in &fragment.hairpin {
                *self.hairpin.entry(pair.clone()).or_default() += 1;
            }
            for m in &fragment.endpoint_maps {
                self.endpoint_maps
                    .insert(endpoint_map(m.proto, m.id), endpoint_map_type(m.proto));
            }
            self.services.insert(key.clone(), (entry.clone(), fragment));
        }
        Ok(())
    }

    /// The whole table for a full sync, which drops the endpoint maps that partial syncs
    /// emptied: from here on only the maps in use count as written.
    pub fn whole(&mut self) -> NftTable {
        let node = self
            .node
            .clone()
            .unwrap_or_else(|| NodeConfig::new("unsynced"));
        let t = assemble(&node, self.layout, self.services.values().map(|(_, f)| f));
        self.endpoint_maps = t
            .maps
            .iter()
            .filter(|(n, _, _)| is_endpoint_map(n))
            .map(|(n, d, _)| (n.clone(), *d))
            .collect();
        t
    }

    /// The whole table as it stands after the last update (with any endpoint map a partial
    /// sync emptied, as the kernel holds it).
    pub fn table(&self) -> NftTable {
        let node = self
            .node
            .clone()
            .unwrap_or_else(|| NodeConfig::new("unsynced"));
        let mut t = assemble(&node, self.layout, self.services.values().map(|(_, f)| f));
        let held: HashSet<String> = t.maps.iter().map(|(n, _, _)| n.clone()).collect();
        for (name, decl) in self
            .endpoint_maps
            .iter()
            .filter(|(n, _)| !held.contains(*n))
        {
            t.maps.push((name.clone(), decl, MapElements::new()));
        }
        t
    }

    /// Moves the table to `snapshot` on `node` and returns the transaction that takes the
    /// previous table there (the whole table on the first update or when `node` changed).
    /// On error nothing changes.
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        node: &NodeConfig,
    ) -> Result<String, Unsupported> {
        Ok(self.update_change(snapshot, node)?.text())
    }

    /// [`NftSync::update`], with the same change also as element changes when it is made of
    /// nothing else (fast layout only; see [`ElementChange`]).
    pub fn update_change(
        &mut self,
        snapshot: &Snapshot,
        node: &NodeConfig,
    ) -> Result<NftUpdate, Unsupported> {
        if self.node.as_ref() != Some(node) {
            let mut fresh = Self::new(self.layout);
            fresh.node = Some(node.clone());
            fresh.fill(snapshot, node)?;
            *self = fresh;
            return Ok(NftUpdate {
                change: Change::Whole(Box::new(self.table())),
                elements: None,
            });
        }
        // Ids this update takes, given back if it fails.
        let mut taken = Vec::new();
        // Both maps are sorted by key: one walk over the two pairs each service with its
        // previous entry and finds the services that are gone, without a lookup per service.
        let mut gone: Vec<&(String, Protocol)> = Vec::new();
        let mut changed = Vec::new();
        let mut before = self.services.iter().peekable();
        for (key, entry) in &snapshot.services {
            while let Some((k, _)) = before.next_if(|(k, _)| *k < key) {
                gone.push(k);
            }
            let previous = before.next_if(|(k, _)| *k == key).map(|(_, v)| v);
            // Snapshots derived from one another share their unchanged entries, so most
            // services are told unchanged without reading their endpoints.
            if previous.is_some_and(|(e, _)| Arc::ptr_eq(e, entry) || e == entry) {
                continue;
            }
            let fragment = match ServicePlan::new(entry, node) {
                Some(plan) => {
                    let ids = &mut self.ids;
                    let taken = &mut taken;
                    let mut endpoint_id = |chain: &str| {
                        let kept = previous
                            .and_then(|(_, f)| f.endpoint_maps.iter().find(|m| m.chain == chain));
                        match kept {
                            Some(m) => Ok((m.id, Some(&m.elements))),
                            None => {
                                let id = ids.take(&plan.spn)?;
                                taken.push(id);
                                Ok((id, None))
                            }
                        }
                    };
                    match fragment(&plan, node, self.layout, &mut endpoint_id) {
                        Ok(f) => f,
                        Err(e) => {
                            // The ids go back, so an error changes nothing.
                            for id in taken {
                                self.ids.give(*id);
                            }
                            return Err(e);
                        }
                    }
                }
                None => Fragment::default(),
            };
            changed.push((key.clone(), entry.clone(), fragment));
        }
        gone.extend(before.map(|(k, _)| k));
        if changed.is_empty() && gone.is_empty() {
            return Ok(NftUpdate::default());
        }
        // The new side is read from the changed fragments before they move into the table.
        let mut new = fragments_only(self.layout, changed.iter().map(|(_, _, f)| f));
        let mut delta: FxHashMap<String, isize> = FxHashMap::default();
        for pair in changed.iter().flat_map(|(_, _, f)| &f.hairpin) {
            *delta.entry(pair.clone()).or_default() += 1;
        }
        let gone: Vec<(String, Protocol)> = gone.into_iter().cloned().collect();
        let mut before = Vec::new();
        for key in gone {
            before.extend(self.services.remove(&key).map(|(_, f)| f));
        }
        let in_use: HashSet<u32> = changed
            .iter()
            .flat_map(|(_, _, f)| f.endpoint_maps.iter().map(|m| m.id))
            .collect();
        for (key, entry, f) in changed {
            before.extend(self.services.insert(key, (entry, f)).map(|(_, old)| old));
        }
        // Ids are given back only now, so none is reused within one change.
        for m in before.iter().flat_map(|f| &f.endpoint_maps) {
            if !in_use.contains(&m.id) {
                self.ids.give(m.id);
            }
        }
        let mut old = fragments_only(self.layout, before.iter());
        // An endpoint map the kernel holds is not declared again.
        for (name, decl, _) in &new.maps {
            if self.endpoint_maps.contains_key(name) && !old.maps.iter().any(|(n, _, _)| n == name)
            {
                old.maps.push((name.clone(), decl, MapElements::new()));
            }
        }
        self.endpoint_maps.extend(
            new.maps
                .iter()
                .filter(|(n, _, _)| is_endpoint_map(n))
                .map(|(n, d, _)| (n.clone(), *d)),
        );
        // A hairpin pair comes or goes with its last holder; a re-rendered service mostly
        // gives back the pairs it had, so the net change per pair is counted first.
        if self.layout == Layout::Fast {
            for pair in before.iter().flat_map(|f| &f.hairpin) {
                *delta.entry(pair.clone()).or_default() -= 1;
            }
            let mut appeared = Vec::new();
            let mut vanished = Vec::new();
            for (pair, d) in delta.into_iter().filter(|(_, d)| *d != 0) {
                let held = self.hairpin.get(&pair).copied().unwrap_or(0);
                let now = held.checked_add_signed(d).expect("counted when added");
                match (held, now) {
                    (0, _) => appeared.push(pair.clone()),
                    (_, 0) => vanished.push(pair.clone()),
                    _ => {}
                }
                if now == 0 {
                    self.hairpin.remove(&pair);
                } else {
                    self.hairpin.insert(pair, now);
                }
            }
            appeared.sort_unstable();
            vanished.sort_unstable();
            old.sets = vec![("hairpin".into(), HAIRPIN, vanished)];
            new.sets = vec![("hairpin".into(), HAIRPIN, appeared)];
        }
        let elements = match self.layout {
            Layout::Fast => elements::element_change(&old, &new),
            Layout::KubeProxy => None,
        };
        Ok(NftUpdate {
            change: Change::Diff(Box::new((old, new))),
            elements,
        })
    }
}

/// What [`NftSync::update_change`] returns: the change, as an `nft -f` transaction
/// ([`NftUpdate::text`], rendered on demand: a sync that sends elements does not need it)
/// and, when it is made of nothing else, as elements and moduli.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftUpdate {
    change: Change,
    /// The same change as elements and moduli, when it is made of nothing else.
    pub elements: Option<ElementChange>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Change {
    #[default]
    Nothing,
    /// The whole table (rendered only if asked for: a full sync may write it otherwise).
    Whole(Box<NftTable>),
    /// The changed services' fragments before and after.
    Diff(Box<(NftTable, NftTable)>),
}

impl NftUpdate {
    /// The whole table, when the update is one (the first, or after the node changed).
    pub fn into_whole(self) -> Option<NftTable> {
        match self.change {
            Change::Whole(table) => Some(*table),
            _ => None,
        }
    }

    /// The `nft -f` transaction (empty when nothing changed).
    pub fn text(&self) -> String {
        match &self.change {
            Change::Nothing => String::new(),
            Change::Whole(table) => table.full(),
            Change::Diff(tables) => diff(&tables.0, &tables.1),
        }
    }
}

/// A dispatch chain's elements (`base + slot : addr . port`) holding `wanted` (no
/// duplicates), slots `0..n`.
/// Endpoints in `previous` keep their slots; new ones fill the slots of those that left, and
/// when fewer remain, the ones in the highest slots move down into the gaps.
fn slots(previous: Option<&MapElements>, base: u32, wanted: Vec<String>) -> MapElements {
    let Some(previous) = previous else {
        return (base..).map(|key| key.to_string()).zip(wanted).collect();
    };
    let n = wanted.len();
    let wanted_set: HashSet<&str> = wanted.iter().map(String::as_str).collect();
    let mut by_slot: BTreeMap<usize, &str> = previous
        .iter()
        .filter_map(|(k, v)| {
            let key: u32 = k.parse().ok()?;
            Some((key.checked_sub(base)? as usize, v.as_str()))
        })
        .filter(|(_, v)| wanted_set.contains(v))
        .collect();
    let kept: HashSet<&str> = by_slot.values().copied().collect();
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
        .map(|(slot, ep)| ((base as usize + slot).to_string(), ep.to_owned()))
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
/// deleted one by one, and chains nothing refers to any more deleted last. Maps are never
/// deleted: `old` and `new` may be parts of tables whose other parts use them.
pub fn diff(old: &NftTable, new: &NftTable) -> String {
    let t = new.name;
    let mut out = String::new();
    let old_chains: BTreeMap<&str, &Vec<String>> =
        old.chains.iter().map(|(n, _, r)| (n.as_str(), r)).collect();
    let new_chains: BTreeMap<&str, &Vec<String>> =
        new.chains.iter().map(|(n, _, r)| (n.as_str(), r)).collect();
    // New chains exist before any element points at them.
    for (name, _) in new_chains
        .iter()
        .filter(|(n, _)| !old_chains.contains_key(*n))
    {
        let _ = writeln!(out, "add chain ip {t} {name}");
    }
    // Maps by name: new ones are declared before their elements and the rules that use them.
    let old_maps: BTreeMap<&str, &MapElements> =
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
        let (deleted, added) = element_diff(old_items, new_items);
        for (k, _) in deleted {
            let _ = writeln!(out, "delete element ip {t} {name} {{ {k} }}");
        }
        for (k, v) in added {
            let _ = writeln!(out, "add element ip {t} {name} {{ {k} : {v} }}");
        }
    }
    // A map the changed services no longer use may hold other services' endpoints: only
    // their elements go (an emptied endpoint map stays until the next full sync).
    let new_maps: HashSet<&str> = new.maps.iter().map(|(n, _, _)| n.as_str()).collect();
    for (name, _, items) in old
        .maps
        .iter()
        .filter(|(n, _, _)| !new_maps.contains(n.as_str()))
    {
        for (k, _) in items {
            let _ = writeln!(out, "delete element ip {t} {name} {{ {k} }}");
        }
    }
    for ((name, _, old_items), (_, _, new_items)) in old.sets.iter().zip(&new.sets) {
        let before: HashSet<&String> = old_items.iter().collect();
        let after: HashSet<&String> = new_items.iter().collect();
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
    out
}

/// A map element as (key, value).
type Pair<'a> = (&'a str, &'a str);

/// The elements of map `old` that `new` lacks or holds with another value, and those of `new`
/// that `old` lacks or holds with another value, each in key order.
fn element_diff<'a>(old: &'a MapElements, new: &'a MapElements) -> (Vec<Pair<'a>>, Vec<Pair<'a>>) {
    let by_key = |items: &'a MapElements| -> BTreeMap<&'a str, &'a str> {
        items
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    };
    let (before, after) = (by_key(old), by_key(new));
    let changed = |from: &BTreeMap<&'a str, &'a str>, to: &BTreeMap<&'a str, &'a str>| {
        from.iter()
            .filter(|(k, v)| to.get(*k) != Some(*v))
            .map(|(k, v)| (*k, *v))
            .collect()
    };
    (changed(&before, &after), changed(&after, &before))
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
    fn a_dispatch_reads_back_from_a_listing_with_the_endpoints_it_draws() {
        let chain = "table ip services-lab {\n\tchain svc-A {\n\t\tip daddr 10.96.0.1 tcp dport 80 x\n\t\tct mark set numgen random mod 2 offset 65536\n\t\tmeta l4proto tcp dnat ip to ct mark map @tcp-endpoints-0\n\t}\n}\n";
        let d = Dispatch::find(chain).expect("a dispatch");
        assert_eq!(
            d,
            Dispatch {
                modulus: 2,
                offset: 65536,
                map: "tcp-endpoints-0".into()
            }
        );
        let map = "\tmap tcp-endpoints-0 {\n\t\ttypeof ct mark : ip daddr . tcp dport\n\t\telements = { 0x00000000 : 10.244.1.2 . 80, 0x00010000 : 10.244.1.3 . 80,\n\t\t\t     0x00010001 : 10.244.1.4 . 80, 0x00010002 : 10.244.1.5 . 80 }\n\t}\n";
        assert_eq!(d.drawn(map), ["10.244.1.3 . 80", "10.244.1.4 . 80"]);
        assert_eq!(
            Dispatch::parse([
                "ct mark set numgen random mod 3",
                "meta l4proto tcp dnat ip addr . port to ct mark map @tcp-endpoints-1"
            ]),
            Some(Dispatch {
                modulus: 3,
                offset: 0,
                map: "tcp-endpoints-1".into()
            })
        );
        assert_eq!(
            Dispatch::parse(["numgen random mod 2 vmap { 0 : goto a }"]),
            None
        );
        assert_eq!(
            Dispatch::parse(["meta l4proto tcp dnat ip to ct mark map @tcp-endpoints-1"]),
            None,
            "a lookup without a draw before it"
        );
        // A patch of the modulus alone would lose anything else in the rule.
        assert_eq!(
            Dispatch::draw("ct mark set numgen random mod 2 offset 65536"),
            Some((2, 65536))
        );
        assert_eq!(
            Dispatch::draw("ct mark set numgen random mod 2 counter"),
            None
        );
        assert_eq!(
            Dispatch::draw("ct mark set numgen random mod 2 offset 65536 counter"),
            None
        );
    }

    #[test]
    fn slots_without_a_previous_map_follow_the_given_order() {
        assert_eq!(
            slots(None, 0, owned(&["a", "b", "c"])),
            pairs(&[("0", "a"), ("1", "b"), ("2", "c")])
        );
        assert_eq!(
            slots(None, 65536, owned(&["a", "b"])),
            pairs(&[("65536", "a"), ("65537", "b")])
        );
        assert_eq!(slots(None, 0, vec![]), MapElements::new());
    }

    #[test]
    fn slots_keep_their_endpoints_and_fill_gaps_with_newcomers_then_the_highest() {
        let previous = pairs(&[("0", "a"), ("1", "b"), ("2", "c"), ("3", "d")]);
        // b left and e came: e takes b's slot.
        assert_eq!(
            slots(Some(&previous), 0, owned(&["e", "d", "c", "a"])),
            pairs(&[("0", "a"), ("1", "e"), ("2", "c"), ("3", "d")])
        );
        // b left: d, in the highest slot, moves down into it.
        assert_eq!(
            slots(Some(&previous), 0, owned(&["a", "c", "d"])),
            pairs(&[("0", "a"), ("1", "d"), ("2", "c")])
        );
        // a and b left, e came: e fills slot 0, d moves to slot 1.
        assert_eq!(
            slots(Some(&previous), 0, owned(&["c", "d", "e"])),
            pairs(&[("0", "e"), ("1", "d"), ("2", "c")])
        );
        // Two came: they take the slots after the last.
        assert_eq!(
            slots(Some(&previous), 0, owned(&["a", "b", "c", "d", "e", "f"])),
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
