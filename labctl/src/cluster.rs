//! The shape of a lab cluster: its nodes, address ranges and seed objects.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One lab node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// Node name (`lab-worker`).
    pub name: String,
    /// The node's InternalIP on the lab's underlay.
    pub internal_ip: Ipv4Addr,
    /// The node's pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// Whether it is the control-plane node (tainted: no workload Pods).
    pub control_plane: bool,
}

/// The lab cluster's configuration, fixed when the lab is first created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Lab name (`lab`); node names start with it, as kind's do.
    pub name: String,
    /// Nodes, control plane first.
    pub nodes: Vec<NodeConfig>,
    /// ClusterIP range.
    pub service_cidr: Ipv4Net,
    /// NodePort range, inclusive.
    pub node_port_range: (u16, u16),
    /// LoadBalancer ingress addresses, first and last (inclusive): the role cloud-provider-kind
    /// or MetalLB plays on kind.
    pub load_balancer_pool: (Ipv4Addr, Ipv4Addr),
}

impl ClusterConfig {
    /// A lab like the tutorial's: a control plane and `workers` workers with pod CIDRs
    /// 10.244.<n>.0/24, node IPs on 172.18.0.0/16 as on kind's docker network.
    pub fn new(name: &str, workers: usize) -> ClusterConfig {
        let mut nodes = vec![NodeConfig {
            name: format!("{name}-control-plane"),
            internal_ip: Ipv4Addr::new(172, 18, 0, 2),
            pod_cidr: "10.244.0.0/24".parse().expect("valid CIDR"),
            control_plane: true,
        }];
        for i in 1..=workers {
            let suffix = if i == 1 { String::new() } else { i.to_string() };
            nodes.push(NodeConfig {
                name: format!("{name}-worker{suffix}"),
                internal_ip: Ipv4Addr::new(172, 18, 0, 2 + i as u8),
                pod_cidr: Ipv4Net::new(Ipv4Addr::new(10, 244, i as u8, 0), 24)
                    .expect("valid prefix"),
                control_plane: false,
            });
        }
        ClusterConfig {
            name: name.to_string(),
            nodes,
            service_cidr: "10.96.0.0/12".parse().expect("valid CIDR"),
            node_port_range: (30000, 32767),
            load_balancer_pool: (
                Ipv4Addr::new(172, 18, 255, 200),
                Ipv4Addr::new(172, 18, 255, 250),
            ),
        }
    }

    /// The ClusterIP of `default/kubernetes`: the first address of the range.
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_cidr.network()) + 1)
    }

    /// The control-plane node.
    pub fn control_plane(&self) -> &NodeConfig {
        self.nodes
            .iter()
            .find(|n| n.control_plane)
            .unwrap_or(&self.nodes[0])
    }

    /// The Node objects of a fresh lab.
    pub fn node_objects(&self) -> Vec<Value> {
        self.nodes.iter().map(node_object).collect()
    }
}

fn node_object(n: &NodeConfig) -> Value {
    let mut labels = json!({
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": n.name,
        "kubernetes.io/os": "linux",
    });
    let mut spec = json!({"podCIDR": n.pod_cidr.to_string(), "podCIDRs": [n.pod_cidr.to_string()], "providerID": format!("lab://{}", n.name)});
    if n.control_plane {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
        spec["taints"] =
            json!([{"effect": "NoSchedule", "key": "node-role.kubernetes.io/control-plane"}]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": n.name, "labels": labels},
        "spec": spec,
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": n.internal_ip.to_string()},
                {"type": "Hostname", "address": n.name},
            ],
            "allocatable": {"cpu": "2", "memory": "24Gi", "pods": "1100"},
            "capacity": {"cpu": "2", "memory": "24Gi", "pods": "1100"},
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
            }],
            "nodeInfo": {
                "architecture": "amd64",
                "containerRuntimeVersion": "wasmtime://48.0.8",
                "kernelVersion": "6.1.0-lab",
                "kubeProxyVersion": "",
                "kubeletVersion": "v1.32.4",
                "operatingSystem": "linux",
                "osImage": "Services Lab",
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lab_matches_the_tutorial() {
        let c = ClusterConfig::new("lab", 2);
        let names: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["lab-control-plane", "lab-worker", "lab-worker2"]);
        assert_eq!(c.nodes[1].pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(c.nodes[2].pod_cidr.to_string(), "10.244.2.0/24");
        assert_eq!(c.kubernetes_service_ip(), Ipv4Addr::new(10, 96, 0, 1));
    }
}
