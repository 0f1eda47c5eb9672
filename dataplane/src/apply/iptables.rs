//! Applying a rule set with `iptables-restore`, as kube-proxy does.
//!
//! One `iptables-restore --noflush` replaces every chain we own and deletes the per-service
//! chains that are no longer wanted, in one transaction; nothing else in the tables is
//! touched. The jumps from the built-in chains are checked (`-C`) and inserted (`-I`) only if
//! missing, so applying twice changes nothing.
//!
//! Later syncs write only what changed, and inside a changed chain only the rules that
//! changed when they are few (`-D`, `-R` and `-I` by position). A service chain's endpoint
//! dispatch gives endpoint `i` of `n` the probability `1/(n-i)`, so in kube-proxy's sorted
//! order one endpoint leaving changes every rule before it. The order the kernel holds is
//! therefore kept from sync to sync ([`stable_dispatch`]): a leaving endpoint's rule is taken
//! by an arriving endpoint if there is one, else by the first endpoint, whose rule then goes;
//! other arriving endpoints come first; every other rule keeps its position from the end and
//! so its probability. One of 1,000 endpoints
//! leaving is then two rule edits instead of 1,000 rules rewritten. Each endpoint still gets
//! `1/n` of the new connections; only the listing's order departs from kube-proxy's.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::render::iptables::{hook_args, render, rule_args};
use crate::ruleset::{Chain, Match, Rule, RuleSet, Table, Target};

use super::{ApplyError, Netns};

/// Chains we create whatever the services are; per-service chains are recognised by prefix.
const FIXED_CHAINS: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];
const SERVICE_PREFIXES: &[&str] = &[
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

fn ours(chain: &str) -> bool {
    FIXED_CHAINS.contains(&chain) || SERVICE_PREFIXES.iter().any(|p| chain.starts_with(p))
}

/// How often a partial sync is a whole one instead, as kube-proxy's are: rules changed behind
/// the applier's back are repaired then, and rule edits by position start from what the
/// kernel really holds.
pub const FULL_SYNC_EVERY: Duration = Duration::from_secs(3600);

/// What an applier last wrote, and when it last wrote everything.
#[derive(Debug)]
struct Applied {
    rules: RuleSet,
    full_at: Instant,
}

/// Programs rule sets into one network namespace with iptables. Clones share what was last
/// applied (see [`IptablesApplier::apply_changes`]).
#[derive(Debug, Clone)]
pub struct IptablesApplier {
    netns: Netns,
    last: Arc<Mutex<Option<Applied>>>,
}

impl IptablesApplier {
    /// An applier for `netns`.
    pub fn new(netns: Netns) -> Self {
        Self {
            netns,
            last: Arc::default(),
        }
    }

    /// Applies only what differs from the rule set this applier last applied: the chains
    /// whose rules changed are edited or rewritten, chains no longer wanted are deleted, and
    /// nothing else is read or written (one `iptables-restore`, or no process at all when
    /// nothing changed), as kube-proxy's partial syncs do. Without an earlier apply, after one
    /// failed, or [`FULL_SYNC_EVERY`] after the last whole one, this is
    /// [`IptablesApplier::apply`]. Returns whether anything was written.
    pub fn apply_changes(&self, rules: &RuleSet) -> Result<bool, ApplyError> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(last) =
            last.filter(|l| l.rules.hooks == rules.hooks && l.full_at.elapsed() < FULL_SYNC_EVERY)
        else {
            self.apply(rules)?;
            return Ok(true);
        };
        let mut rules = rules.clone();
        stable_dispatch(&last.rules, &mut rules);
        let input = changes(&last.rules, &rules);
        if !input.is_empty() {
            self.netns
                .run("iptables-restore", &["--noflush"], Some(&input))?;
        }
        let written = !input.is_empty();
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Applied {
            rules,
            full_at: last.full_at,
        });
        Ok(written)
    }

    /// The chains of ours that exist now, per table (from `iptables-save`).
    pub fn existing_chains(&self) -> Result<Vec<(Table, BTreeSet<String>)>, ApplyError> {
        let mut out = Vec::new();
        for table in [Table::Filter, Table::Nat] {
            let save = self
                .netns
                .run("iptables-save", &["-t", table.name()], None)?;
            let chains = save
                .lines()
                .filter_map(|l| l.strip_prefix(':'))
                .filter_map(|l| l.split_whitespace().next())
                .filter(|c| ours(c))
                .map(str::to_owned)
                .collect();
            out.push((table, chains));
        }
        Ok(out)
    }

    /// The restore input that makes the kernel's chains equal `rules`: our chains rewritten,
    /// stale per-service chains flushed and deleted.
    pub fn restore_input(&self, rules: &RuleSet) -> Result<String, ApplyError> {
        let mut text = render(rules);
        for (table, existing) in self.existing_chains()? {
            let wanted: BTreeSet<&str> = rules
                .tables
                .get(&table)
                .map(|chains| chains.iter().map(|(n, _)| n.as_str()).collect())
                .unwrap_or_default();
            let stale: Vec<&String> = existing
                .iter()
                .filter(|c| !wanted.contains(c.as_str()))
                .collect();
            if stale.is_empty() {
                continue;
            }
            // Deleting needs the chain flushed in the same transaction.
            let mut block = format!("*{}\n", table.name());
            for chain in &stale {
                block.push_str(&format!(":{chain} - [0:0]\n"));
            }
            for chain in &stale {
                block.push_str(&format!("-X {chain}\n"));
            }
            block.push_str("COMMIT\n");
            text.push_str(&block);
        }
        Ok(text)
    }

    /// Applies `rules`: one restore, the hooks, and `route_localnet` so NodePorts answer on
    /// 127.0.0.1 (kube-proxy's localhost NodePorts).
    pub fn apply(&self, rules: &RuleSet) -> Result<(), ApplyError> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).take();
        let input = self.restore_input(rules)?;
        self.netns
            .run("iptables-restore", &["--noflush"], Some(&input))?;
        for hook in &rules.hooks {
            let args = hook_args(hook);
            let mut check: Vec<&str> = args.iter().map(String::as_str).collect();
            check.insert(2, "-C");
            if self.netns.run("iptables", &check, None).is_err() {
                let mut insert: Vec<&str> = args.iter().map(String::as_str).collect();
                insert.insert(2, "-I");
                self.netns.run("iptables", &insert, None)?;
            }
        }
        self.netns.enable_localhost_nodeports()?;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Applied {
            rules: rules.clone(),
            full_at: Instant::now(),
        });
        Ok(())
    }

    /// Removes the hooks and every chain of ours, and nothing else.
    pub fn cleanup(&self, rules: &RuleSet) -> Result<(), ApplyError> {
        for hook in &rules.hooks {
            let args = hook_args(hook);
            let mut delete: Vec<&str> = args.iter().map(String::as_str).collect();
            delete.insert(2, "-D");
            // A hook inserted twice by someone else is removed as often as it is there.
            while self.netns.run("iptables", &delete, None).is_ok() {}
        }
        let mut input = String::new();
        for (table, existing) in self.existing_chains()? {
            if existing.is_empty() {
                continue;
            }
            input.push_str(&format!("*{}\n", table.name()));
            for chain in &existing {
                input.push_str(&format!(":{chain} - [0:0]\n"));
            }
            for chain in &existing {
                input.push_str(&format!("-X {chain}\n"));
            }
            input.push_str("COMMIT\n");
        }
        if !input.is_empty() {
            self.netns
                .run("iptables-restore", &["--noflush"], Some(&input))?;
        }
        Ok(())
    }
}

/// Whether `rule` is one of a service chain's statistic jumps to an endpoint (not a
/// session-affinity check, which does not depend on its position).
fn is_dispatch(rule: &Rule) -> bool {
    matches!(&rule.target, Target::Jump(chain) if chain.starts_with("KUBE-SEP-"))
        && !rule
            .matches
            .iter()
            .any(|m| matches!(m, Match::RecentCheck { .. }))
}

/// Where a chain's endpoint dispatch starts: its trailing run of [`is_dispatch`] rules.
fn dispatch_start(chain: &Chain) -> usize {
    chain.rules.len()
        - chain
            .rules
            .iter()
            .rev()
            .take_while(|r| is_dispatch(r))
            .count()
}

fn endpoint_of(rule: &Rule) -> &str {
    match &rule.target {
        Target::Jump(chain) => chain,
        _ => unreachable!("a dispatch rule jumps to its endpoint's chain"),
    }
}

/// The endpoints of a dispatch in the order that keeps most of `previous` in place: each
/// endpoint that left is replaced by a new one while there are new ones (a rolling update
/// is one rule edit per Pod), else by the first endpoint, taken from the front; new
/// endpoints left over come first, in `wanted`'s order.
fn stable_order<'a>(previous: &[&'a str], wanted: &[&'a str]) -> Vec<&'a str> {
    let wanted_set: HashSet<&str> = wanted.iter().copied().collect();
    let previous_set: HashSet<&str> = previous.iter().copied().collect();
    let mut arriving = wanted.iter().copied().filter(|e| !previous_set.contains(e));
    let mut slots: Vec<Option<&str>> = previous
        .iter()
        .map(|e| wanted_set.contains(e).then_some(*e))
        .collect();
    for slot in slots.iter_mut().filter(|s| s.is_none()) {
        match arriving.next() {
            Some(new) => *slot = Some(new),
            None => break,
        }
    }
    let mut front = 0;
    while front < slots.len() {
        match slots[front] {
            None => front += 1,
            Some(first) => match slots.iter().rposition(Option::is_none) {
                Some(hole) if hole > front => {
                    slots[hole] = Some(first);
                    front += 1;
                }
                _ => break,
            },
        }
    }
    arriving
        .chain(slots[front..].iter().flatten().copied())
        .collect()
}

/// Reorders each service chain's endpoint dispatch in `next` into the [`stable_order`] of
/// the same chain in `last`, with each rule's probability set for its new position.
pub fn stable_dispatch(last: &RuleSet, next: &mut RuleSet) {
    for (table, chains) in &mut next.tables {
        let Some(before) = last.tables.get(table) else {
            continue;
        };
        let before: BTreeMap<&str, &Chain> = before.iter().map(|(n, c)| (n.as_str(), c)).collect();
        for (name, chain) in chains.iter_mut() {
            let Some(old) = before.get(name.as_str()) else {
                continue;
            };
            if old == &&*chain {
                continue;
            }
            let previous: Vec<&str> = old.rules[dispatch_start(old)..]
                .iter()
                .map(endpoint_of)
                .collect();
            let start = dispatch_start(chain);
            let dispatch = chain.rules.split_off(start);
            let by_endpoint: BTreeMap<&str, &Rule> =
                dispatch.iter().map(|r| (endpoint_of(r), r)).collect();
            let wanted: Vec<&str> = dispatch.iter().map(endpoint_of).collect();
            let order = stable_order(&previous, &wanted);
            let n = order.len();
            for (i, endpoint) in order.into_iter().enumerate() {
                let mut rule = by_endpoint[endpoint].clone();
                rule.matches.retain(|m| !matches!(m, Match::Probability(_)));
                if i + 1 < n {
                    rule.matches.push(Match::Probability(1.0 / (n - i) as f64));
                }
                chain.rules.push(rule);
            }
        }
    }
}

/// How long finding a chain's rule edits may take before the diff settles for more edits
/// than the fewest (which may then mean a rewrite).
const DIFF_DEADLINE: Duration = Duration::from_millis(5);

/// The restore lines that edit chain `name` from `old` into `new` in place, rule by rule, or
/// `None` when they would be at least half as many as the new chain's rules (a rewrite is
/// then about as short, and needs no positions).
fn rule_edits(name: &str, old: &Chain, new: &Chain) -> Option<Vec<String>> {
    use similar::{Algorithm, DiffOp, capture_diff_slices_deadline};
    if old.rules.len().abs_diff(new.rules.len()) * 2 >= new.rules.len().max(1) {
        return None;
    }
    let old: Vec<String> = old.rules.iter().map(rule_args).collect();
    let new: Vec<String> = new.rules.iter().map(rule_args).collect();
    let mut edits = Vec::new();
    let ops = capture_diff_slices_deadline(
        Algorithm::Myers,
        &old,
        &new,
        Some(Instant::now() + DIFF_DEADLINE),
    );
    // Ops in order: before each one the chain reads `new[..at]` then the rest of `old`, so
    // `at + 1` is the (1-based) position it works at. (`at` is counted here: a delete's
    // `new_index` from `similar` is not always that position.)
    let mut at = 0;
    for op in ops {
        let (old_len, new_len) = match op {
            DiffOp::Equal { len, .. } => {
                at += len;
                continue;
            }
            DiffOp::Delete { old_len, .. } => (old_len, 0),
            DiffOp::Insert { new_len, .. } => (0, new_len),
            DiffOp::Replace {
                old_len, new_len, ..
            } => (old_len, new_len),
        };
        let replaced = old_len.min(new_len);
        for i in 0..replaced {
            edits.push(format!("-R {name} {}{}", at + i + 1, new[at + i]));
        }
        for _ in new_len..old_len {
            edits.push(format!("-D {name} {}", at + replaced + 1));
        }
        for i in old_len..new_len {
            edits.push(format!("-I {name} {}{}", at + i + 1, new[at + i]));
        }
        at += new_len;
        if edits.len() * 2 >= new.len().max(1) {
            return None;
        }
    }
    Some(edits)
}

/// The restore input that turns `last` into `rules`: chains with a few changed rules edited
/// in place ([`rule_edits`]), other changed and new chains declared (which flushes them) and
/// refilled, stale chains flushed and deleted; empty when nothing changed.
fn changes(last: &RuleSet, rules: &RuleSet) -> String {
    let mut out = String::new();
    let tables: BTreeSet<Table> = last
        .tables
        .keys()
        .chain(rules.tables.keys())
        .copied()
        .collect();
    for table in tables {
        let before: BTreeMap<&str, &Chain> = last
            .tables
            .get(&table)
            .into_iter()
            .flatten()
            .map(|(n, c)| (n.as_str(), c))
            .collect();
        let after = rules
            .tables
            .get(&table)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let changed: Vec<&(String, Chain)> = after
            .iter()
            .filter(|(n, c)| before.get(n.as_str()) != Some(&c))
            .collect();
        let wanted: BTreeSet<&str> = after.iter().map(|(n, _)| n.as_str()).collect();
        let stale: Vec<&str> = before
            .keys()
            .copied()
            .filter(|n| !wanted.contains(n))
            .collect();
        if changed.is_empty() && stale.is_empty() {
            continue;
        }
        let (edited, rewritten): (Vec<_>, Vec<_>) = changed
            .into_iter()
            .map(|(name, chain)| {
                let edits = before
                    .get(name.as_str())
                    .and_then(|old| rule_edits(name, old, chain));
                (name, chain, edits)
            })
            .partition(|(_, _, edits)| edits.is_some());
        let _ = writeln!(out, "*{}", table.name());
        for name in rewritten
            .iter()
            .map(|(n, _, _)| n.as_str())
            .chain(stale.iter().copied())
        {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        for (name, chain, _) in &rewritten {
            for rule in &chain.rules {
                let _ = writeln!(out, "-A {name}{}", rule_args(rule));
            }
        }
        for edit in edited
            .into_iter()
            .flat_map(|(_, _, edits)| edits.into_iter().flatten())
        {
            let _ = writeln!(out, "{edit}");
        }
        for name in &stale {
            let _ = writeln!(out, "-X {name}");
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Rule, Target};

    fn set(chains: &[(&str, &[&str])]) -> RuleSet {
        let mut rules = RuleSet::default();
        let nat = rules.tables.entry(Table::Nat).or_default();
        for (name, jumps) in chains {
            let chain = Chain {
                rules: jumps
                    .iter()
                    .map(|j| Rule {
                        matches: Vec::new(),
                        target: Target::Jump((*j).to_string()),
                    })
                    .collect(),
            };
            nat.push(((*name).to_string(), chain));
        }
        rules
    }

    #[test]
    fn only_changed_and_stale_chains_are_written() {
        let last = set(&[
            ("KUBE-SERVICES", &["KUBE-SVC-A"]),
            ("KUBE-SVC-A", &["KUBE-SEP-1", "KUBE-SEP-2"]),
            ("KUBE-SEP-1", &[]),
            ("KUBE-SEP-2", &[]),
        ]);
        let next = set(&[
            ("KUBE-SERVICES", &["KUBE-SVC-A"]),
            ("KUBE-SVC-A", &["KUBE-SEP-1"]),
            ("KUBE-SEP-1", &[]),
        ]);
        assert_eq!(
            changes(&last, &next),
            "*nat\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-2 - [0:0]\n-A KUBE-SVC-A -j KUBE-SEP-1\n-X KUBE-SEP-2\nCOMMIT\n"
        );
        assert_eq!(changes(&next, &next), "");
    }

    /// A service chain dispatching to `endpoints` as the compiler writes it.
    fn service(endpoints: &[&str]) -> Chain {
        let n = endpoints.len();
        Chain {
            rules: endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let mut matches = vec![Match::Comment(format!("svc -> {e}"))];
                    if i + 1 < n {
                        matches.push(Match::Probability(1.0 / (n - i) as f64));
                    }
                    Rule {
                        matches,
                        target: Target::Jump(format!("KUBE-SEP-{e}")),
                    }
                })
                .collect(),
        }
    }

    fn with_service(endpoints: &[&str]) -> RuleSet {
        let mut rules = RuleSet::default();
        let nat = rules.tables.entry(Table::Nat).or_default();
        nat.push(("KUBE-SVC-A".into(), service(endpoints)));
        for e in endpoints {
            nat.push((format!("KUBE-SEP-{e}"), Chain::default()));
        }
        rules
    }

    /// Each endpoint's share of new connections under the chain's statistic rules.
    fn shares(chain: &Chain) -> BTreeMap<String, f64> {
        let mut reaching = 1.0;
        let mut out = BTreeMap::new();
        for rule in &chain.rules {
            let p = rule
                .matches
                .iter()
                .find_map(|m| match m {
                    Match::Probability(p) => Some(*p),
                    _ => None,
                })
                .unwrap_or(1.0);
            out.insert(endpoint_of(rule).to_string(), reaching * p);
            reaching *= 1.0 - p;
        }
        out
    }

    #[test]
    fn stable_order_fills_holes_from_the_front_and_puts_new_endpoints_first() {
        assert_eq!(stable_order(&["a", "b", "c"], &["a", "c"]), ["a", "c"]);
        assert_eq!(
            stable_order(&["a", "b", "c", "d", "e"], &["a", "c", "e"]),
            ["c", "a", "e"]
        );
        assert_eq!(stable_order(&["a", "b", "c"], &["b", "c"]), ["b", "c"]);
        assert_eq!(stable_order(&["a", "b"], &["a", "b", "x"]), ["x", "a", "b"]);
        assert_eq!(stable_order(&["a", "b"], &["y"]), ["y"]);
        // A rolling update: the new Pod takes the old one's place.
        assert_eq!(
            stable_order(&["a", "b", "c"], &["a", "c", "x"]),
            ["a", "x", "c"]
        );
        assert_eq!(
            stable_order(&["a", "b", "c", "d"], &["a", "x", "y", "z"]),
            ["a", "x", "y", "z"]
        );
        assert_eq!(stable_order(&["a", "b", "c"], &["c", "x"]), ["x", "c"]);
        assert_eq!(stable_order(&[], &["a", "b"]), ["a", "b"]);
    }

    #[test]
    fn one_of_many_endpoints_leaving_is_two_rule_edits_and_shares_stay_equal() {
        let all: Vec<String> = (0..20).map(|i| format!("{i:02}")).collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let last = with_service(&all);
        let mut fewer: Vec<&str> = all.clone();
        fewer.remove(7);
        let mut next = with_service(&fewer);
        stable_dispatch(&last, &mut next);
        let chain = &next.tables[&Table::Nat][0].1;
        for (endpoint, share) in shares(chain) {
            assert!((share - 1.0 / 19.0).abs() < 1e-9, "{endpoint}: {share}");
        }
        // Endpoint 00 took 07's place; everything after it is unchanged.
        assert_eq!(endpoint_of(&chain.rules[6]), "KUBE-SEP-00");
        assert_eq!(chain.rules[7..], last.tables[&Table::Nat][0].1.rules[8..]);
        let input = changes(&last, &next);
        assert_eq!(
            input,
            format!(
                "*nat\n:KUBE-SEP-07 - [0:0]\n-D KUBE-SVC-A 1\n-R KUBE-SVC-A 7{}\n-X KUBE-SEP-07\nCOMMIT\n",
                rule_args(&chain.rules[6])
            )
        );

        // A new endpoint is one insert at the top.
        let mut more = fewer.clone();
        more.push("99");
        let mut grown = with_service(&more);
        stable_dispatch(&next, &mut grown);
        let chain = &grown.tables[&Table::Nat][0].1;
        assert_eq!(endpoint_of(&chain.rules[0]), "KUBE-SEP-99");
        for share in shares(chain).values() {
            assert!((share - 1.0 / 20.0).abs() < 1e-9);
        }
        assert_eq!(
            changes(&next, &grown),
            format!(
                "*nat\n:KUBE-SEP-99 - [0:0]\n-I KUBE-SVC-A 1{}\nCOMMIT\n",
                rule_args(&chain.rules[0])
            )
        );
    }

    #[test]
    fn a_chain_that_changed_throughout_is_rewritten() {
        let last = with_service(&["a", "b", "c", "d"]);
        let next = with_service(&["e", "f", "g", "h"]);
        let input = changes(&last, &next);
        assert!(input.contains(":KUBE-SVC-A - [0:0]\n"), "{input}");
        assert!(!input.contains("-R ") && !input.contains("-D "), "{input}");
    }

    /// Runs restore edit lines on a chain held as rule texts, as iptables does.
    fn replay(chain: &mut Vec<String>, edits: &[String]) {
        for edit in edits {
            let mut words = edit.splitn(3, ' ');
            let (op, _name) = (words.next().unwrap(), words.next().unwrap());
            let rest = words.next().unwrap();
            let (pos, args) = rest.split_once(' ').map_or((rest, ""), |(p, a)| (p, a));
            let at = pos.parse::<usize>().unwrap() - 1;
            let rule = format!(" {args}");
            match op {
                "-D" => {
                    chain.remove(at);
                }
                "-R" => chain[at] = rule,
                "-I" => chain.insert(at, rule),
                _ => panic!("unexpected edit {edit}"),
            }
        }
    }

    #[test]
    fn rule_edits_turn_the_old_chain_into_the_new_one() {
        let rule = |label: u32| Rule {
            matches: vec![Match::Comment(format!("r{label}"))],
            target: Target::Return,
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let mut edited = 0;
        for _ in 0..2000 {
            let old: Vec<Rule> = (0..rng.usize(1..40))
                .map(|_| rule(rng.u32(0..60)))
                .collect();
            let mut new = old.clone();
            for _ in 0..rng.usize(0..4) {
                match rng.u8(0..3) {
                    0 if !new.is_empty() => {
                        new.remove(rng.usize(0..new.len()));
                    }
                    1 if !new.is_empty() => {
                        let at = rng.usize(0..new.len());
                        new[at] = rule(rng.u32(0..60));
                    }
                    _ => new.insert(rng.usize(0..=new.len()), rule(rng.u32(0..60))),
                }
            }
            let (old, new) = (Chain { rules: old }, Chain { rules: new });
            let Some(edits) = rule_edits("C", &old, &new) else {
                continue;
            };
            edited += 1;
            let mut chain: Vec<String> = old.rules.iter().map(rule_args).collect();
            replay(&mut chain, &edits);
            let want: Vec<String> = new.rules.iter().map(rule_args).collect();
            let before: Vec<String> = old.rules.iter().map(rule_args).collect();
            assert_eq!(chain, want, "edits {edits:?} old {before:?}");
        }
        assert!(edited > 500, "only {edited} cases were edited in place");
    }
}
