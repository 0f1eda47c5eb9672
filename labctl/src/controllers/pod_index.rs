//! Where each Pod is: its node, its IP and its owner, kept from Pod events so that the
//! scheduler, the node agent and the ReplicaSet controller do not scan every Pod per Pod.

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
}

/// The index.
#[derive(Default)]
pub struct PodIndex {
    pods: HashMap<Key, Placement>,
    per_node: HashMap<String, (usize, HashSet<Ipv4Addr>)>,
    by_owner: HashMap<String, HashSet<Key>>,
}

fn placement(pod: &Value) -> Placement {
    Placement {
        node: pod["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
        ip: pod["status"]["podIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok()),
        owners: owner_uids(pod).map(str::to_string).collect(),
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
                *count -= 1;
                if let Some(ip) = old.ip {
                    ips.remove(&ip);
                }
            }
            for uid in &old.owners {
                if let Some(set) = self.by_owner.get_mut(uid) {
                    set.remove(&key);
                }
            }
        }
        if let Some(new) = new {
            let (count, ips) = self.per_node.entry(new.node.clone()).or_default();
            *count += 1;
            if let Some(ip) = new.ip {
                ips.insert(ip);
            }
            for uid in &new.owners {
                self.by_owner
                    .entry(uid.clone())
                    .or_default()
                    .insert(key.clone());
            }
            self.pods.insert(key, new);
        }
    }

    /// How many Pods are bound to `node`.
    pub fn pods_on(&self, node: &str) -> usize {
        self.per_node.get(node).map_or(0, |(count, _)| *count)
    }

    /// Whether `ip` is taken on `node`.
    pub fn ip_used(&self, node: &str, ip: &Ipv4Addr) -> bool {
        self.per_node
            .get(node)
            .is_some_and(|(_, ips)| ips.contains(ip))
    }

    /// The Pods owned by `uid` (namespace, name).
    pub fn owned_by(&self, uid: &str) -> Vec<Key> {
        self.by_owner
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}
