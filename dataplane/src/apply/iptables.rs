//! Applying a rule set with `iptables-restore`, as kube-proxy does.
//!
//! One `iptables-restore --noflush` replaces every chain we own and deletes the per-service
//! chains that are no longer wanted, in one transaction; nothing else in the tables is
//! touched. The jumps from the built-in chains are checked (`-C`) and inserted (`-I`) only if
//! missing, so applying twice changes nothing.

use std::collections::BTreeSet;

use crate::render::iptables::{hook_args, render};
use crate::ruleset::{RuleSet, Table};

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

/// Programs rule sets into one network namespace with iptables.
#[derive(Debug, Clone)]
pub struct IptablesApplier {
    netns: Netns,
}

impl IptablesApplier {
    /// An applier for `netns`.
    pub fn new(netns: Netns) -> Self {
        Self { netns }
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
        self.netns.enable_localhost_nodeports()
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
