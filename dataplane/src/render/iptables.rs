//! `iptables-restore` input in kube-proxy's layout.
//!
//! The text declares every chain we own (`:NAME - [0:0]`, which also flushes it) and then its
//! rules, filter table first, so one `iptables-restore --noflush` replaces our chains and
//! touches nothing else. Probabilities are written with 10 decimals as kube-proxy writes them;
//! the kernel stores them as a 32-bit fraction, so `iptables -L` lists `0.33333333349` for
//! `0.3333333333`.

use std::fmt::Write;

use ipnet::Ipv4Net;

use crate::ruleset::{Hook, Match, Rule, RuleSet, Target};

/// The restore input for the whole rule set.
pub fn render(rules: &RuleSet) -> String {
    let mut out = String::new();
    for (table, chains) in &rules.tables {
        let _ = writeln!(out, "*{}", table.name());
        for (name, _) in chains {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        for (name, chain) in chains {
            for rule in &chain.rules {
                let _ = writeln!(out, "-A {name}{}", rule_args(rule));
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The arguments of `iptables -t TABLE -I CHAIN ...` that install a hook.
pub fn hook_args(hook: &Hook) -> Vec<String> {
    let mut args = vec![
        "-t".to_owned(),
        hook.table.name().to_owned(),
        hook.builtin.to_owned(),
    ];
    args.extend(shell_words(&rule_args(&hook.rule)));
    args
}

/// Splits rendered rule text back into arguments (quotes only ever wrap comments).
fn shell_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

fn net(n: &Ipv4Net) -> String {
    if n.prefix_len() == 32 {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

/// ` -m ... -j TARGET`, with a leading space.
pub fn rule_args(rule: &Rule) -> String {
    let mut s = String::new();
    for m in &rule.matches {
        match m {
            Match::Comment(text) if text.contains(' ') => {
                let _ = write!(s, " -m comment --comment \"{text}\"");
            }
            Match::Comment(text) => {
                let _ = write!(s, " -m comment --comment {text}");
            }
            Match::Protocol(p) => {
                let _ = write!(s, " -m {p} -p {p}");
            }
            Match::Dst(n) => {
                let _ = write!(s, " -d {}", net(n));
            }
            Match::NotDst(n) => {
                let _ = write!(s, " ! -d {}", net(n));
            }
            Match::Src(n) => {
                let _ = write!(s, " -s {}", net(n));
            }
            Match::NotSrc(n) => {
                let _ = write!(s, " ! -s {}", net(n));
            }
            Match::DstPort(p) => {
                let _ = write!(s, " --dport {p}");
            }
            Match::DstLocal => s.push_str(" -m addrtype --dst-type LOCAL"),
            Match::SrcLocal => s.push_str(" -m addrtype --src-type LOCAL"),
            Match::Probability(p) => {
                let _ = write!(s, " -m statistic --mode random --probability {p:.10}");
            }
            Match::RecentCheck { name, seconds } => {
                let _ = write!(
                    s,
                    " -m recent --name {name} --rcheck --seconds {seconds} --reap"
                );
            }
            Match::RecentSet(name) => {
                let _ = write!(s, " -m recent --name {name} --set");
            }
            Match::NotMarked(mark) => {
                let _ = write!(s, " -m mark ! --mark {mark}/{mark}");
            }
            Match::Marked(mark) => {
                let _ = write!(s, " -m mark --mark {mark}/{mark}");
            }
            Match::CtState(states) => {
                let _ = write!(s, " -m conntrack --ctstate {states}");
            }
            Match::NotCtState(states) => {
                let _ = write!(s, " -m conntrack ! --ctstate {states}");
            }
        }
    }
    match &rule.target {
        Target::Jump(chain) => {
            let _ = write!(s, " -j {chain}");
        }
        Target::Dnat(addr) => {
            let _ = write!(s, " -j DNAT --to-destination {addr}");
        }
        Target::MarkOr(mark) => {
            let _ = write!(s, " -j MARK --or-mark {mark}");
        }
        Target::MarkXor(mark) => {
            let _ = write!(s, " -j MARK --xor-mark {mark}");
        }
        Target::Masquerade => s.push_str(" -j MASQUERADE --random-fully"),
        Target::Return => s.push_str(" -j RETURN"),
        Target::Reject => s.push_str(" -j REJECT"),
        Target::Drop => s.push_str(" -j DROP"),
        Target::Accept => s.push_str(" -j ACCEPT"),
        Target::None => {}
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_have_ten_decimals() {
        let rule = Rule {
            matches: vec![Match::Probability(1.0 / 3.0)],
            target: Target::Jump("KUBE-SEP-X".into()),
        };
        assert_eq!(
            rule_args(&rule),
            " -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-X"
        );
        let half = Rule {
            matches: vec![Match::Probability(0.5)],
            target: Target::Jump("KUBE-SEP-Y".into()),
        };
        assert!(rule_args(&half).contains("--probability 0.5000000000 "));
    }

    #[test]
    fn comments_are_quoted_only_with_spaces() {
        let rule = Rule {
            matches: vec![Match::Comment("default/hello-world".into())],
            target: Target::None,
        };
        assert_eq!(
            rule_args(&rule),
            " -m comment --comment default/hello-world"
        );
    }

    #[test]
    fn hooks_split_back_into_arguments() {
        let hook = Hook {
            table: crate::ruleset::Table::Nat,
            builtin: "OUTPUT",
            rule: Rule {
                matches: vec![Match::Comment("kubernetes service portals".into())],
                target: Target::Jump("KUBE-SERVICES".into()),
            },
        };
        assert_eq!(
            hook_args(&hook),
            [
                "-t",
                "nat",
                "OUTPUT",
                "-m",
                "comment",
                "--comment",
                "kubernetes service portals",
                "-j",
                "KUBE-SERVICES"
            ]
        );
    }
}
