//! A packet tracer over a compiled [`RuleSet`]: which endpoints the first packet of a
//! connection can be DNATed to, whether it is marked for masquerading, or whether it is
//! rejected or dropped. Tests use it to check what rules mean, beside how they read.
//!
//! Probabilistic rules are followed both ways, so the result lists every endpoint a packet can
//! reach. Session-affinity checks never match (a first packet has no history).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::model::{NodeConfig, Protocol};
use crate::ruleset::{Match, RuleSet, Table, Target};

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

#[derive(Debug, Clone, Copy)]
enum End {
    Dnat(SocketAddrV4, bool),
    Reject,
    Drop,
    /// Fell off the end of the chain (or RETURN) with this mark state.
    Through(bool),
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

    fn walk(&self, table: Table, chain: &str, marked: bool, depth: usize) -> Vec<End> {
        assert!(depth < 32, "jump loop through {chain}");
        let Some(chain) = self.rules.chain(table, chain) else {
            return vec![End::Through(marked)];
        };
        let mut live = vec![marked];
        let mut ended = Vec::new();
        for rule in &chain.rules {
            let mut next = Vec::new();
            for &mark in &live {
                let mut certain = true;
                let mut hit = true;
                for m in &rule.matches {
                    match self.matches(m, mark) {
                        Some(true) => {}
                        Some(false) => hit = false,
                        None => certain = false,
                    }
                }
                if !hit {
                    next.push(mark);
                    continue;
                }
                if !certain {
                    // The packet may also not match and go on to the next rule.
                    next.push(mark);
                }
                match &rule.target {
                    Target::Jump(sub) => {
                        for end in self.walk(table, sub, mark, depth + 1) {
                            match end {
                                End::Through(m) => next.push(m),
                                other => ended.push(other),
                            }
                        }
                    }
                    Target::Dnat(addr) => ended.push(End::Dnat(*addr, mark)),
                    Target::MarkOr(_) => next.push(true),
                    Target::MarkXor(_) => next.push(!mark),
                    Target::Return | Target::Accept | Target::Masquerade => {
                        ended.push(End::Through(mark))
                    }
                    Target::Reject => ended.push(End::Reject),
                    Target::Drop => ended.push(End::Drop),
                    Target::None => next.push(mark),
                }
            }
            next.dedup();
            live = next;
        }
        ended.extend(live.into_iter().map(End::Through));
        ended
    }
}

/// Traces the first packet of a connection through `rules` compiled for `node`.
pub fn trace(rules: &RuleSet, node: &NodeConfig, packet: &Packet) -> Verdict {
    let tracer = Tracer {
        rules,
        node,
        packet,
    };
    let nat = tracer.walk(Table::Nat, "KUBE-SERVICES", false, 0);
    let mut endpoints = BTreeSet::new();
    let mut all_marked = true;
    for end in &nat {
        if let End::Dnat(addr, marked) = end {
            endpoints.insert(*addr);
            all_marked &= *marked;
        }
    }
    if !endpoints.is_empty() {
        return Verdict::Dnat {
            endpoints,
            masquerade: all_marked,
        };
    }
    // Not DNATed: the filter table sees the original destination.
    let chains: &[&str] = match packet.origin {
        Origin::Node => &["KUBE-SERVICES", "KUBE-PROXY-FIREWALL"],
        Origin::Inbound if tracer.is_local(packet.dst) => {
            &["KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL"]
        }
        Origin::Inbound => &[
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-SERVICES",
            "KUBE-PROXY-FIREWALL",
        ],
    };
    for chain in chains {
        for end in tracer.walk(Table::Filter, chain, false, 0) {
            match end {
                End::Reject => return Verdict::Reject,
                End::Drop => return Verdict::Drop,
                _ => {}
            }
        }
    }
    Verdict::Untouched
}
