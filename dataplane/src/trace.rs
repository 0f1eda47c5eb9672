//! A packet tracer over a compiled [`RuleSet`]: which endpoints the first packet of a
//! connection can be DNATed to, whether it is marked for masquerading, or whether it is
//! rejected or dropped. Tests use it to check what rules mean, beside how they read, and
//! [`explain`] also returns the path: every rule the packet matched, chain by chain, from the
//! built-in chain it enters by to its verdict.
//!
//! Probabilistic rules are followed both ways, so the result lists every endpoint a packet can
//! reach (and, in [`explain`], how likely each path is). Session-affinity checks never match
//! (a first packet has no history).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::model::{NodeConfig, Protocol};
use crate::render::iptables::rule_args;
use crate::ruleset::{Match, Rule, RuleSet, Table, Target};

/// Where a packet enters the node's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Sent by a process on the node (nat OUTPUT): its source is a local address.
    Node,
    /// Arriving on an interface, from a pod or from outside (nat PREROUTING).
    Inbound,
}

/// The first packet of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub dport: u16,
    /// Where it enters.
    pub origin: Origin,
}

/// What the rules do with a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten to one of these endpoints.
    Dnat {
        /// Every endpoint some path reaches.
        endpoints: BTreeSet<SocketAddrV4>,
        /// Whether every path marks it for masquerading (source NAT on the way out).
        masquerade: bool,
    },
    /// Refused with an ICMP error (a service without endpoints).
    Reject,
    /// Dropped silently (Local policy without local endpoints, source ranges).
    Drop,
    /// No service rule applies.
    Untouched,
}

/// One rule a packet matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The table.
    pub table: Table,
    /// The chain the rule is in: one of ours, or the built-in chain (`PREROUTING`, ...) whose
    /// hook leads into ours.
    pub chain: String,
    /// The rule's 1-based position in its chain; `None` for a hook (inserted into a built-in
    /// chain among other programs' rules, so it has no stable position).
    pub position: Option<usize>,
    /// The rule.
    pub rule: Rule,
}

impl fmt::Display for Step {
    /// `KUBE-SERVICES rule 3 "default/hello-world cluster IP" -> KUBE-SVC-...`; a hook reads
    /// `nat PREROUTING "kubernetes service portals" -> KUBE-SERVICES`. The comment is quoted;
    /// other matches are shown in iptables syntax, except the protocol and destination
    /// (the packet's own), and a random match as `random 1/N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(n) => write!(f, "{} rule {n}", self.chain)?,
            None => write!(f, "{} {}", self.table.name(), self.chain)?,
        }
        let mut rest = Vec::new();
        for m in &self.rule.matches {
            match m {
                Match::Comment(c) => write!(f, " \"{c}\"")?,
                Match::Protocol(_) | Match::Dst(_) | Match::DstPort(_) => {}
                Match::Probability(p) => {
                    let inverse = 1.0 / p;
                    if (inverse - inverse.round()).abs() < 1e-6 {
                        write!(f, " random 1/{}", inverse.round() as u64)?;
                    } else {
                        write!(f, " random {p:.4}")?;
                    }
                }
                other => rest.push(other.clone()),
            }
        }
        if !rest.is_empty() {
            let shown = rule_args(&Rule {
                matches: rest,
                target: Target::None,
            });
            write!(f, "{shown}")?;
        }
        match &self.rule.target {
            Target::Jump(chain) => write!(f, " -> {chain}"),
            Target::Dnat(addr) => write!(f, ": DNAT to {addr}"),
            Target::MarkOr(mark) => write!(f, ": MARK or {mark}"),
            Target::MarkXor(mark) => write!(f, ": MARK xor {mark}"),
            Target::Masquerade => write!(f, ": MASQUERADE"),
            Target::Return => write!(f, ": RETURN"),
            Target::Reject => write!(f, ": REJECT"),
            Target::Drop => write!(f, ": DROP"),
            Target::Accept => write!(f, ": ACCEPT"),
            Target::None => Ok(()),
        }
    }
}

/// How one path through the rules ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// DNATed to this endpoint.
    Dnat(SocketAddrV4),
    /// Rejected.
    Reject,
    /// Dropped.
    Drop,
    /// Passed through every rule unchanged.
    Untouched,
}

/// One way a packet can go through the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// Every rule it matched, in order (hooks included).
    pub steps: Vec<Step>,
    /// How it ends.
    pub outcome: Outcome,
    /// Whether it is marked for masquerading when DNATed (the steps then include
    /// `KUBE-POSTROUTING`'s `MASQUERADE`).
    pub masquerade: bool,
    /// The share of first packets that take this path (random rules split them).
    pub probability: f64,
}

/// A packet's verdict and the paths that lead to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The verdict, as [`trace`] gives it.
    pub verdict: Verdict,
    /// For a DNAT, every path through the nat table (one per reachable endpoint, usually);
    /// for REJECT or DROP, the filter path that refuses it; for an untouched packet, the nat
    /// path it falls through.
    pub paths: Vec<Path>,
}

/// A packet's state on one path.
#[derive(Debug, Clone)]
struct State {
    marked: bool,
    steps: Vec<Step>,
    probability: f64,
}

#[derive(Debug, Clone)]
enum End {
    Dnat(SocketAddrV4, State),
    Reject(State),
    Drop(State),
    /// Fell off the end of the chain (or RETURN).
    Through(State),
}

struct Tracer<'a> {
    rules: &'a RuleSet,
    node: &'a NodeConfig,
    packet: &'a Packet,
}

impl Tracer<'_> {
    fn is_local(&self, ip: Ipv4Addr) -> bool {
        ip.is_loopback() || self.node.node_ips.contains(&ip)
    }

    /// `Some(true)` matches, `Some(false)` does not, `None` matches on some paths only.
    fn matches(&self, m: &Match, marked: bool) -> Option<bool> {
        let p = self.packet;
        Some(match m {
            Match::Comment(_) => true,
            Match::Protocol(proto) => *proto == p.protocol,
            Match::Dst(n) => n.contains(&p.dst),
            Match::NotDst(n) => !n.contains(&p.dst),
            Match::Src(n) => n.contains(&p.src),
            Match::NotSrc(n) => !n.contains(&p.src),
            Match::DstPort(port) => *port == p.dport,
            Match::DstLocal => self.is_local(p.dst),
            Match::SrcLocal => p.origin == Origin::Node || self.is_local(p.src),
            Match::Probability(_) => return None,
            Match::RecentCheck { .. } => false,
            Match::RecentSet(_) => true,
            Match::Marked(_) => marked,
            Match::NotMarked(_) => !marked,
            // Only first packets are traced.
            Match::CtState(states) => states.split(',').any(|s| s == "NEW"),
            Match::NotCtState(states) => !states.split(',').any(|s| s == "NEW"),
        })
    }

    /// The hook in `builtin` of `table` that jumps to `chain`, as a step.
    fn hook_step(&self, table: Table, builtin: &str, chain: &str) -> Option<Step> {
        self.rules
            .hooks
            .iter()
            .find(|h| {
                h.table == table
                    && h.builtin == builtin
                    && h.rule.target == Target::Jump(chain.to_owned())
            })
            .map(|h| Step {
                table,
                chain: builtin.to_owned(),
                position: None,
                rule: h.rule.clone(),
            })
    }

    fn walk(&self, table: Table, chain_name: &str, state: State, depth: usize) -> Vec<End> {
        assert!(depth < 32, "jump loop through {chain_name}");
        let Some(chain) = self.rules.chain(table, chain_name) else {
            return vec![End::Through(state)];
        };
        let mut live = vec![state];
        let mut ended = Vec::new();
        for (i, rule) in chain.rules.iter().enumerate() {
            let mut next: Vec<State> = Vec::new();
            for state in live {
                let mut certain = true;
                let mut hit = true;
                for m in &rule.matches {
                    match self.matches(m, state.marked) {
                        Some(true) => {}
                        Some(false) => hit = false,
                        None => certain = false,
                    }
                }
                if !hit {
                    next.push(state);
                    continue;
                }
                let mut taken = state.clone();
                if !certain {
                    // The packet may also not match and go on to the next rule.
                    let p: f64 = rule
                        .matches
                        .iter()
                        .map(|m| match m {
                            Match::Probability(p) => *p,
                            _ => 1.0,
                        })
                        .product();
                    taken.probability *= p;
                    next.push(State {
                        probability: state.probability * (1.0 - p),
                        ..state
                    });
                }
                taken.steps.push(Step {
                    table,
                    chain: chain_name.to_owned(),
                    position: Some(i + 1),
                    rule: rule.clone(),
                });
                match &rule.target {
                    Target::Jump(sub) => {
                        for end in self.walk(table, sub, taken, depth + 1) {
                            match end {
                                End::Through(s) => next.push(s),
                                other => ended.push(other),
                            }
                        }
                    }
                    Target::Dnat(addr) => ended.push(End::Dnat(*addr, taken)),
                    Target::MarkOr(_) => {
                        taken.marked = true;
                        next.push(taken);
                    }
                    Target::MarkXor(_) => {
                        taken.marked = !taken.marked;
                        next.push(taken);
                    }
                    Target::Return | Target::Accept | Target::Masquerade => {
                        ended.push(End::Through(taken))
                    }
                    Target::Reject => ended.push(End::Reject(taken)),
                    Target::Drop => ended.push(End::Drop(taken)),
                    Target::None => next.push(taken),
                }
            }
            // Paths that meet again in the same state go on as one (keeping the first one's
            // steps), so the walk stays linear in the number of rules.
            next.dedup_by(|later, earlier| {
                let same = later.marked == earlier.marked;
                if same {
                    earlier.probability += later.probability;
                }
                same
            });
            live = next;
        }
        ended.extend(live.into_iter().map(End::Through));
        ended
    }
}

/// Traces the first packet of a connection through `rules` compiled for `node`.
pub fn trace(rules: &RuleSet, node: &NodeConfig, packet: &Packet) -> Verdict {
    explain(rules, node, packet).verdict
}

/// Traces the first packet of a connection like [`trace`], and returns the paths it takes:
/// nat `OUTPUT` (from the node) or `PREROUTING` (from elsewhere) into `KUBE-SERVICES` and on
/// to the DNAT, then nat `POSTROUTING` for the masquerade decision; when it is not DNATed, the
/// filter chains that reject or drop it.
pub fn explain(rules: &RuleSet, node: &NodeConfig, packet: &Packet) -> Explanation {
    let tracer = Tracer {
        rules,
        node,
        packet,
    };
    let start = |table: Table, builtin: &str, chain: &str| State {
        marked: false,
        steps: tracer
            .hook_step(table, builtin, chain)
            .into_iter()
            .collect(),
        probability: 1.0,
    };
    let nat_entry = match packet.origin {
        Origin::Node => "OUTPUT",
        Origin::Inbound => "PREROUTING",
    };
    let nat = tracer.walk(
        Table::Nat,
        "KUBE-SERVICES",
        start(Table::Nat, nat_entry, "KUBE-SERVICES"),
        0,
    );
    let mut endpoints = BTreeSet::new();
    let mut all_marked = true;
    let mut paths = Vec::new();
    let mut untouched = Vec::new();
    for end in nat {
        match end {
            End::Dnat(addr, state) => {
                endpoints.insert(addr);
                all_marked &= state.marked;
                let (masquerade, probability) = (state.marked, state.probability);
                // Where the source is rewritten, or not: nat POSTROUTING.
                let mut post = state;
                post.steps
                    .extend(tracer.hook_step(Table::Nat, "POSTROUTING", "KUBE-POSTROUTING"));
                let steps = tracer
                    .walk(Table::Nat, "KUBE-POSTROUTING", post, 0)
                    .into_iter()
                    .find_map(|e| match e {
                        End::Through(s) => Some(s.steps),
                        _ => None,
                    })
                    .unwrap_or_default();
                paths.push(Path {
                    steps,
                    outcome: Outcome::Dnat(addr),
                    masquerade,
                    probability,
                });
            }
            End::Through(state) => untouched.push(Path {
                steps: state.steps,
                outcome: Outcome::Untouched,
                masquerade: false,
                probability: state.probability,
            }),
            // The nat table never rejects or drops.
            End::Reject(_) | End::Drop(_) => {}
        }
    }
    if !endpoints.is_empty() {
        return Explanation {
            verdict: Verdict::Dnat {
                endpoints,
                masquerade: all_marked,
            },
            paths,
        };
    }
    // Not DNATed: the filter table sees the original destination.
    let (builtin, chains): (&str, &[&str]) = match packet.origin {
        Origin::Node => ("OUTPUT", &["KUBE-SERVICES", "KUBE-PROXY-FIREWALL"]),
        Origin::Inbound if tracer.is_local(packet.dst) => {
            ("INPUT", &["KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL"])
        }
        Origin::Inbound => (
            "FORWARD",
            &[
                "KUBE-EXTERNAL-SERVICES",
                "KUBE-SERVICES",
                "KUBE-PROXY-FIREWALL",
            ],
        ),
    };
    for chain in chains {
        for end in tracer.walk(
            Table::Filter,
            chain,
            start(Table::Filter, builtin, chain),
            0,
        ) {
            let (verdict, outcome, state) = match end {
                End::Reject(s) => (Verdict::Reject, Outcome::Reject, s),
                End::Drop(s) => (Verdict::Drop, Outcome::Drop, s),
                _ => continue,
            };
            return Explanation {
                verdict,
                paths: vec![Path {
                    steps: state.steps,
                    outcome,
                    masquerade: false,
                    probability: state.probability,
                }],
            };
        }
    }
    Explanation {
        verdict: Verdict::Untouched,
        paths: untouched,
    }
}
