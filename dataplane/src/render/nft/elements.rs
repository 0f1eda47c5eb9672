//! A partial sync of the fast layout that only moves endpoints, as data: element changes in
//! the endpoint maps and the hairpin set, and the new `mod N` of the rules that draw from
//! maps whose size changed. [`crate::apply::nft::NftApplier::apply_elements`] sends it as
//! netlink messages; `nft` would first read the whole table back from the kernel, which
//! costs more than the change (tens of milliseconds at a thousand services).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::{Dispatch, MapElements, NftTable};

/// One element of an endpoint map or of the hairpin set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    /// An endpoint map's `slot : addr . port`.
    Slot {
        /// The `numgen` value that picks it.
        slot: u32,
        /// The endpoint's address.
        addr: Ipv4Addr,
        /// The endpoint's port.
        port: u16,
    },
    /// The hairpin set's `pod . pod`.
    Pair(Ipv4Addr, Ipv4Addr),
}

/// Element and modulus changes that take one table to the next (see [`element_change`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElementChange {
    /// The table.
    pub table: &'static str,
    /// Elements deleted, by map or set name (sent before the additions).
    pub delete: Vec<(String, Element)>,
    /// Elements added, by map or set name.
    pub add: Vec<(String, Element)>,
    /// Chains whose draw rule (`ct mark set numgen random mod N`) changes its modulus:
    /// chain, modulus before, modulus after.
    pub modulus: Vec<(String, u32, u32)>,
}

impl ElementChange {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty() && self.modulus.is_empty()
    }
}

/// The change from `old` to `new` (the same services' fragments before and after) when it is
/// made only of endpoint map and hairpin elements and dispatch moduli; `None` when it needs
/// more (a chain, map or other rule comes or goes, or a shared verdict map changes), which
/// is left to `nft`.
pub(super) fn element_change(old: &NftTable, new: &NftTable) -> Option<ElementChange> {
    let mut change = ElementChange {
        table: new.name,
        ..ElementChange::default()
    };
    let old_chains: BTreeMap<&str, &Vec<String>> =
        old.chains.iter().map(|(n, _, r)| (n.as_str(), r)).collect();
    if old_chains.len() != new.chains.len() {
        return None;
    }
    for (name, _, rules) in &new.chains {
        let before = old_chains.get(name.as_str())?;
        if before.len() != rules.len() {
            return None;
        }
        for (a, b) in before.iter().zip(rules) {
            if a != b {
                let (from, to) = modulus_change(a, b)?;
                change.modulus.push((name.clone(), from, to));
            }
        }
    }

    let old_maps: BTreeMap<&str, (&str, &MapElements)> = old
        .maps
        .iter()
        .map(|(n, d, e)| (n.as_str(), (*d, e)))
        .collect();
    if old_maps.len() != new.maps.len() {
        return None;
    }
    for (name, decl, items) in &new.maps {
        let (old_decl, old_items) = old_maps.get(name.as_str())?;
        if old_decl != decl {
            return None;
        }
        if *old_items == items {
            continue;
        }
        if !super::is_endpoint_map(name) {
            return None;
        }
        let (deleted, added) = super::element_diff(old_items, items);
        for (k, v) in deleted {
            change.delete.push((name.clone(), slot(k, v)?));
        }
        for (k, v) in added {
            change.add.push((name.clone(), slot(k, v)?));
        }
    }

    if old.sets.len() != new.sets.len() {
        return None;
    }
    for ((name, _, before), (new_name, _, after)) in old.sets.iter().zip(&new.sets) {
        if name != new_name {
            return None;
        }
        for gone in before.iter().filter(|e| !after.contains(e)) {
            change.delete.push((name.clone(), pair(gone)?));
        }
        for added in after.iter().filter(|e| !before.contains(e)) {
            change.add.push((name.clone(), pair(added)?));
        }
    }
    Some(change)
}

impl NftTable {
    /// The table without the elements of its endpoint maps and hairpin set, and those
    /// elements as an addition: a full sync into a namespace without our table writes the
    /// rest through `nft` and sends these as netlink messages, which costs a fraction of
    /// `nft` parsing them. `None` if an element does not read as one.
    pub fn without_elements(&self) -> Option<(NftTable, ElementChange)> {
        let mut add = Vec::new();
        let mut rest = NftTable {
            maps: Vec::with_capacity(self.maps.len()),
            sets: Vec::with_capacity(self.sets.len()),
            chains: self.chains.clone(),
            ..*self
        };
        for (name, decl, items) in &self.maps {
            if !super::is_endpoint_map(name) {
                rest.maps.push((name.clone(), decl, items.clone()));
                continue;
            }
            for (k, v) in items {
                add.push((name.clone(), slot(k, v)?));
            }
            rest.maps.push((name.clone(), decl, MapElements::new()));
        }
        for (name, decl, items) in &self.sets {
            if name != "hairpin" {
                rest.sets.push((name.clone(), decl, items.clone()));
                continue;
            }
            for item in items {
                add.push((name.clone(), pair(item)?));
            }
            rest.sets.push((name.clone(), decl, Vec::new()));
        }
        let change = ElementChange {
            table: self.name,
            add,
            ..ElementChange::default()
        };
        Some((rest, change))
    }
}

/// The moduli of two draw rules that differ only in them.
fn modulus_change(a: &str, b: &str) -> Option<(u32, u32)> {
    let ((a_mod, a_offset), (b_mod, b_offset)) = (Dispatch::draw(a)?, Dispatch::draw(b)?);
    (a_offset == b_offset).then_some((a_mod, b_mod))
}

/// `slot` and `addr . port`.
fn slot(key: &str, value: &str) -> Option<Element> {
    let (addr, port) = value.split_once(" . ")?;
    Some(Element::Slot {
        slot: key.parse().ok()?,
        addr: addr.parse().ok()?,
        port: port.parse().ok()?,
    })
}

/// `addr . addr`.
fn pair(item: &str) -> Option<Element> {
    let (a, b) = item.split_once(" . ")?;
    Some(Element::Pair(a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(maps: &[(&str, &[(&str, &str)])], hairpin: &[&str], rule: &str) -> NftTable {
        NftTable {
            name: "services-lab",
            comment: "",
            maps: maps
                .iter()
                .map(|(n, items)| {
                    let items = items
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect();
                    ((*n).to_owned(), "typeof x", items)
                })
                .collect(),
            sets: vec![(
                "hairpin".into(),
                "ipv4_addr . ipv4_addr",
                hairpin.iter().map(|p| (*p).to_owned()).collect(),
            )],
            chains: vec![(
                "svc-A".into(),
                None,
                vec!["ip daddr 10.96.0.1 x".into(), rule.into()],
            )],
        }
    }

    const TWO: &str = "ct mark set numgen random mod 2";
    const ONE: &str = "ct mark set numgen random mod 1";

    #[test]
    fn a_leaving_endpoint_is_element_deletions_and_a_smaller_modulus() {
        let old = table(
            &[(
                "tcp-endpoints-0",
                &[("0", "10.244.1.2 . 80"), ("1", "10.244.1.3 . 80")],
            )],
            &["10.244.1.2 . 10.244.1.2"],
            TWO,
        );
        let new = table(
            &[("tcp-endpoints-0", &[("0", "10.244.1.3 . 80")])],
            &[],
            ONE,
        );
        let addr = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let change = element_change(&old, &new).expect("elements only");
        assert_eq!(
            change.delete,
            [
                (
                    "tcp-endpoints-0".to_owned(),
                    Element::Slot {
                        slot: 0,
                        addr: addr("10.244.1.2"),
                        port: 80
                    }
                ),
                (
                    "tcp-endpoints-0".to_owned(),
                    Element::Slot {
                        slot: 1,
                        addr: addr("10.244.1.3"),
                        port: 80
                    }
                ),
                (
                    "hairpin".to_owned(),
                    Element::Pair(addr("10.244.1.2"), addr("10.244.1.2"))
                ),
            ]
        );
        assert_eq!(
            change.add,
            [(
                "tcp-endpoints-0".to_owned(),
                Element::Slot {
                    slot: 0,
                    addr: addr("10.244.1.3"),
                    port: 80
                }
            )]
        );
        assert_eq!(change.modulus, [("svc-A".to_owned(), 2, 1)]);
    }

    #[test]
    fn anything_but_elements_and_moduli_is_left_to_nft() {
        let base = table(
            &[("tcp-endpoints-0", &[("0", "10.244.1.2 . 80")])],
            &[],
            ONE,
        );
        let mut other_rule = base.clone();
        other_rule.chains[0].2[0] = "ip daddr 10.96.0.9 x".into();
        let mut verdicts = base.clone();
        verdicts.maps.push(("service-ips".into(), "type x", vec![]));
        let mut verdicts_changed = verdicts.clone();
        verdicts_changed.maps[1]
            .2
            .push(("k".into(), "goto svc-A".into()));
        let mut new_chain = base.clone();
        new_chain.chains.push(("svc-B".into(), None, vec![]));
        assert_eq!(element_change(&base, &other_rule), None);
        assert_eq!(element_change(&verdicts, &verdicts_changed), None);
        assert_eq!(element_change(&base, &new_chain), None);
        assert_eq!(
            element_change(&verdicts, &verdicts).map(|c| c.is_empty()),
            Some(true)
        );
    }
}
