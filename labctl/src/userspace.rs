//! Userspace mode's Services: the dataplane's userspace proxy, fed by its sync loop against
//! the lab's API, listening on the loopback twins of ClusterIPs, LoadBalancer IPs and node
//! IPs (and on 127.0.0.1 for NodePorts) and connecting to the Pods' loopback twins.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataplane::model::{NodeConfig, Snapshot};
use dataplane::proxy::{UserspaceProxy, routes};
use dataplane::watch::{Backend, SyncError, SyncOptions, SyncStats, Synced};

use crate::cluster::ClusterConfig;
use crate::runtime::{loopback_twin, userspace_port};

fn twin(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if !ip.is_loopback() => {
            SocketAddr::new(IpAddr::V4(loopback_twin(ip)), addr.port())
        }
        _ => addr,
    }
}

/// The proxy, serving every route at its loopback twin.
struct LoopbackProxy(UserspaceProxy);

impl Backend for LoopbackProxy {
    async fn sync(&mut self, snapshot: &Snapshot, node: &NodeConfig) -> Result<Synced, SyncError> {
        let mut wanted = routes(snapshot, node, |ip| ip);
        for r in &mut wanted {
            let listen = twin(r.listen);
            r.listen = SocketAddr::new(listen.ip(), userspace_port(listen.port()));
            for e in &mut r.endpoints {
                *e = twin(*e);
            }
        }
        self.0.sync(&wanted).await?;
        Ok(Synced::Changed)
    }
}

/// Runs the proxy's sync loop until `shutdown`. One proxy serves the whole lab: its node IPs
/// are every node's, so each NodePort listens once on 127.0.0.1 and on each node's twin.
pub async fn run(
    client: kube::Client,
    cluster: ClusterConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let first_worker = cluster
        .nodes
        .iter()
        .find(|n| !n.control_plane)
        .unwrap_or(&cluster.nodes[0]);
    let mut node = crate::rules::node_config(first_worker);
    node.node_ips = cluster.nodes.iter().map(|n| n.internal_ip).collect();
    let options = SyncOptions {
        min_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let stats = Arc::new(Mutex::new(SyncStats::default()));
    if let Err(e) = dataplane::watch::run(
        client,
        node,
        LoopbackProxy(UserspaceProxy::new()),
        options,
        stats,
        shutdown,
    )
    .await
    {
        tracing::error!("the userspace proxy stopped: {e}");
    }
}
