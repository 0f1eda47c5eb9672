//! The compiled rules as data: tables of chains of rules, in the order they are written.
//!
//! A rule is a list of matches and a target, kept structured so that the same value can be
//! rendered (iptables-restore text) and traced (which endpoints a packet can reach).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;

use crate::model::Protocol;

/// The iptables tables the dataplane writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Filtering: REJECT/DROP for services without endpoints, forwarding rules.
    Filter,
    /// Address translation: service dispatch, DNAT, masquerade marks.
    Nat,
}

impl Table {
    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

/// One match of a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    /// `-m comment --comment TEXT` (quoted when it contains spaces).
    Comment(String),
    /// `-m PROTO -p PROTO`.
    Protocol(Protocol),
    /// `-d ADDR`.
    Dst(Ipv4Net),
    /// `! -d ADDR`.
    NotDst(Ipv4Net),
    /// `-s ADDR`.
    Src(Ipv4Net),
    /// `! -s ADDR`.
    NotSrc(Ipv4Net),
    /// `--dport PORT` (after a protocol match).
    DstPort(u16),
    /// `-m addrtype --dst-type LOCAL`.
    DstLocal,
    /// `-m addrtype --src-type LOCAL`.
    SrcLocal,
    /// `-m statistic --mode random --probability P`, P written with 10 decimals.
    Probability(f64),
    /// `-m recent --name NAME --rcheck --seconds S --reap`.
    RecentCheck {
        /// The recent list (the endpoint's chain).
        name: String,
        /// Affinity timeout.
        seconds: u32,
    },
    /// `-m recent --name NAME --set`.
    RecentSet(String),
    /// `-m mark ! --mark MARK/MARK`.
    NotMarked(String),
    /// `-m mark --mark MARK/MARK`.
    Marked(String),
    /// `-m conntrack --ctstate STATES`.
    CtState(&'static str),
    /// `-m conntrack ! --ctstate STATES`.
    NotCtState(&'static str),
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// `-j CHAIN`.
    Jump(String),
    /// `-j DNAT --to-destination ADDR`.
    Dnat(SocketAddrV4),
    /// `-j MARK --or-mark MARK`.
    MarkOr(String),
    /// `-j MARK --xor-mark MARK`.
    MarkXor(String),
    /// `-j MASQUERADE --random-fully`.
    Masquerade,
    /// `-j RETURN`.
    Return,
    /// `-j REJECT`.
    Reject,
    /// `-j DROP`.
    Drop,
    /// `-j ACCEPT`.
    Accept,
    /// No target: the rule only counts (kube-proxy's "will be dropped" marker in KUBE-FW).
    None,
}

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Matches, in the order they are written.
    pub matches: Vec<Match>,
    /// The target.
    pub target: Target,
}

/// A chain: its rules in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chain {
    /// The rules.
    pub rules: Vec<Rule>,
}

/// A jump from a built-in chain into ours, installed with `iptables -I` (not part of the
/// restore input, which only names chains we own).
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    /// The table.
    pub table: Table,
    /// The built-in chain (`PREROUTING`, `OUTPUT`, ...).
    pub builtin: &'static str,
    /// The rule inserted there.
    pub rule: Rule,
}

/// Every chain of every table, plus the hooks that lead into them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    /// Chains per table, in the order they are declared; rules in write order.
    pub tables: BTreeMap<Table, Vec<(String, Chain)>>,
    /// Jumps from built-in chains.
    pub hooks: Vec<Hook>,
    /// Where each chain is in `tables`, so that building stays linear with 100k+ chains.
    index: HashMap<(Table, String), usize>,
}

impl RuleSet {
    /// The chain `name` of `table`, if declared.
    pub fn chain(&self, table: Table, name: &str) -> Option<&Chain> {
        match self.index.get(&(table, name.to_owned())) {
            Some(&i) => self.tables.get(&table)?.get(i).map(|(_, c)| c),
            // Built by hand rather than through `push`: look it up.
            None => self
                .tables
                .get(&table)?
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| c),
        }
    }

    /// Declares `name` in `table` (once) and returns it for appending rules.
    pub(crate) fn chain_mut(&mut self, table: Table, name: &str) -> &mut Chain {
        let chains = self.tables.entry(table).or_default();
        let index = match self.index.get(&(table, name.to_owned())) {
            Some(&i) => i,
            None => {
                chains.push((name.to_owned(), Chain::default()));
                self.index
                    .insert((table, name.to_owned()), chains.len() - 1);
                chains.len() - 1
            }
        };
        &mut chains[index].1
    }

    /// Appends a rule to `chain` of `table`.
    pub(crate) fn push(&mut self, table: Table, chain: &str, matches: Vec<Match>, target: Target) {
        self.chain_mut(table, chain)
            .rules
            .push(Rule { matches, target });
    }

    /// Problems that would make the rules wrong or unloadable: jumps to chains that are not
    /// declared, and per-service chains nothing jumps to (the fixed chains such as
    /// `KUBE-MARK-MASQ` are declared whether or not a service needs them, as kube-proxy does).
    pub fn consistency_errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for (table, chains) in &self.tables {
            let declared: Vec<&str> = chains.iter().map(|(n, _)| n.as_str()).collect();
            let declared_set: std::collections::HashSet<&str> = declared.iter().copied().collect();
            let mut referenced: std::collections::HashSet<&str> = std::collections::HashSet::new();
            let rules = chains.iter().flat_map(|(_, c)| c.rules.iter()).chain(
                self.hooks
                    .iter()
                    .filter(|h| h.table == *table)
                    .map(|h| &h.rule),
            );
            for rule in rules {
                if let Target::Jump(target) = &rule.target {
                    referenced.insert(target);
                    if !declared_set.contains(target.as_str()) {
                        errors.push(format!(
                            "{}: jump to undeclared chain {target}",
                            table.name()
                        ));
                    }
                }
            }
            let per_service = |n: &str| {
                [
                    "KUBE-SVC-",
                    "KUBE-SVL-",
                    "KUBE-EXT-",
                    "KUBE-FW-",
                    "KUBE-SEP-",
                ]
                .iter()
                .any(|p| n.starts_with(p))
            };
            for name in declared {
                if per_service(name) && !referenced.contains(&name) {
                    errors.push(format!("{}: chain {name} is never jumped to", table.name()));
                }
            }
        }
        errors
    }
}

/// A host address as a /32 network.
pub fn host(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("32 is a valid prefix")
}
