//! Applying a rule set with `iptables-restore`, as kube-proxy does.
//!
//! One `iptables-restore --noflush` replaces every chain we own and deletes the per-service
//! chains that are no longer wanted, in one transaction; nothing else in the tables is
//! touched. The jumps from the built-in chains are checked (`-C`) and inserted (`-I`) only if
//! missing, so applying twice changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use crate::render::iptables::{hook_args, render, rule_args};
use crate::ruleset::{Chain, RuleSet, Table};

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

/// Programs rule sets into one network namespace with iptables. Clones share what was last
/// applied (see [`IptablesApplier::apply_changes`]).
#[derive(Debug, Clone)]
pub struct IptablesApplier {
    netns: Netns,
    last: Arc<Mutex<Option<RuleSet>>>,
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
    /// whose rules changed are rewritten, chains no longer wanted are deleted, and nothing
    /// else is read or written (one `iptables-restore`, or no process at all when nothing
    /// changed), as kube-proxy's partial syncs do. Without an earlier apply, or after one
    /// failed, this is [`IptablesApplier::apply`]. Returns whether anything was written.
    pub fn apply_changes(&self, rules: &RuleSet) -> Result<bool, ApplyError> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(last) = last.filter(|l| l.hooks == rules.hooks) else {
            self.apply(rules)?;
            return Ok(true);
        };
        let input = changes(&last, rules);
        if !input.is_empty() {
            self.netns
                .run("iptables-restore", &["--noflush"], Some(&input))?;
        }
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(rules.clone());
        Ok(!input.is_empty())
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
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(rules.clone());
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

/// The restore input that turns `last` into `rules`: changed and new chains declared (which
/// flushes them) and refilled, stale chains flushed and deleted; empty when nothing changed.
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
        let _ = writeln!(out, "*{}", table.name());
        for name in changed
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(stale.iter().copied())
        {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        for (name, chain) in &changed {
            for rule in &chain.rules {
                let _ = writeln!(out, "-A {name}{}", rule_args(rule));
            }
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
}
