//! Where each Pod is: its node, its IP, its owner and whether it is active and ready, kept
//! from Pod events so that the scheduler, the node agent and the ReplicaSet controller do not
//! scan every Pod per Pod.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use serde_json::Value;

use super::{meta, owner_uids};
use crate::store::{Event, EventType};

type Key = (String, String);

#[derive(Debug, Clone, Default, PartialEq)]
struct Placement {
    node: String,
    ip: Option<Ipv4Addr>,
    owners: Vec<String>,
    /// Not being deleted.
    active: bool,
    /// Active and Ready.
    ready: bool,
}

/// What an owner's Pods add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnedCount {
    /// Pods not being deleted.
    pub active: usize,
    /// Of those, the Ready ones.
    pub ready: usize,
}

impl OwnedCount {
    fn add(&mut self, p: &Placement, sign: isize) {
        let step = |n: &mut usize, on: bool| {
            if on {
                *n = n.saturating_add_signed(sign);
            }
        };
        step(&mut self.active, p.active);
        step(&mut self.ready, p.ready);
    }
}

/// The index.
#[derive(Default)]
pub struct PodIndex {
    pods: HashMap<Key, Placement>,
    /// Per node: its Pods not being deleted, and the IPs of all its Pods (a terminating
    /// Pod still holds its address).
    per_node: HashMap<String, (usize, HashSet<Ipv4Addr>)>,
    by_owner: HashMap<String, HashSet<Key>>,
    counts: HashMap<String, OwnedCount>,
}

fn placement(pod: &Value) -> Placement {
    Placement {
        node: pod["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
        ip: pod["status"]["podIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok()),
        owners: owner_uids(pod).map(str::to_string).collect(),
        active: !pod["metadata"]["deletionTimestamp"].is_string(),
        ready: super::endpoint_ready(pod),
    }
}

impl PodIndex {
    /// Applies a Pod event.
    pub fn apply(&mut self, event: &Event) {
        let key = (
            meta(&event.object, "namespace").to_string(),
            meta(&event.object, "name").to_string(),
        );
        let new = (event.event_type != EventType::Deleted).then(|| placement(&event.object));
        let old = self.pods.get(&key).cloned();
        if old == new {
            return;
        }
        if let Some(old) = old {
            self.pods.remove(&key);
            if let Some((count, ips)) = self.per_node.get_mut(&old.node) {
                if old.active {
                    *count -= 1;
                }
                if let Some(ip) = old.ip {
                    ips.remove(&ip);
                }
            }
            for uid in &old.owners {
                if let Some(set) = self.by_owner.get_mut(uid) {
                    set.remove(&key);
                }
                if let Some(count) = self.counts.get_mut(uid) {
                    count.add(&old, -1);
                }
            }
        }
        if let Some(new) = new {
            let (count, ips) = self.per_node.entry(new.node.clone()).or_default();
            if new.active {
                *count += 1;
            }
            if let Some(ip) = new.ip {
                ips.insert(ip);
            }
            for uid in &new.owners {
                self.by_owner
                    .entry(uid.clone())
                    .or_default()
                    .insert(key.clone());
                self.counts.entry(uid.clone()).or_default().add(&new, 1);
            }
            self.pods.insert(key, new);
        }
    }

    /// How many Pods not being deleted are bound to `node`: what the scheduler spreads, as
    /// kube-scheduler leaves terminating Pods out.
    pub fn pods_on(&self, node: &str) -> usize {
        self.per_node.get(node).map_or(0, |(count, _)| *count)
    }

    /// Whether `ip` is taken on `node`.
    pub fn ip_used(&self, node: &str, ip: &Ipv4Addr) -> bool {
        self.per_node
            .get(node)
            .is_some_and(|(_, ips)| ips.contains(ip))
    }

    /// How many of `uid`'s Pods are active and ready.
    pub fn count_owned(&self, uid: &str) -> OwnedCount {
        self.counts.get(uid).copied().unwrap_or_default()
    }

    /// The Pods owned by `uid` (namespace, name).
    pub fn owned_by(&self, uid: &str) -> Vec<Key> {
        self.by_owner
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use labapi::Kind;
    use serde_json::json;

    use super::*;

    fn event(event_type: EventType, name: &str, node: &str, ip: &str, deleting: bool) -> Event {
        let mut pod = json!({
            "metadata": {"namespace": "default", "name": name},
            "spec": {"nodeName": node},
            "status": {"podIP": ip},
        });
        if deleting {
            pod["metadata"]["deletionTimestamp"] = json!("2026-12-01T12:00:00Z");
        }
        Event {
            rv: 1,
            kind: Kind::Pod,
            event_type,
            object: Arc::new(pod),
            old: None,
        }
    }

    #[test]
    fn terminating_pods_are_not_spread_but_keep_their_addresses() {
        let mut index = PodIndex::default();
        index.apply(&event(EventType::Added, "a", "w1", "10.244.1.2", false));
        index.apply(&event(EventType::Added, "b", "w2", "10.244.2.2", false));
        assert_eq!((index.pods_on("w1"), index.pods_on("w2")), (1, 1));
        // b is being deleted: its node counts it no more, but its IP is still in use.
        index.apply(&event(EventType::Modified, "b", "w2", "10.244.2.2", true));
        assert_eq!(index.pods_on("w2"), 0);
        assert!(index.ip_used("w2", &"10.244.2.2".parse().unwrap()));
        index.apply(&event(EventType::Deleted, "b", "w2", "10.244.2.2", true));
        assert_eq!(index.pods_on("w2"), 0);
        assert!(!index.ip_used("w2", &"10.244.2.2".parse().unwrap()));
        assert_eq!(index.pods_on("w1"), 1);
    }
}
