//! Times the phases of a first full sync of the fast nftables layout (compute, the table
//! without its elements through `nft`, the elements over netlink) into a network namespace
//! made here, for profiling: `cargo run --release -p dataplane --example first_sync -- 5000 50`.
//! Needs root and nftables.

use std::time::Instant;

use dataplane::apply::Netns;
use dataplane::apply::nft::NftApplier;
use dataplane::compile::default_cluster_cidr;
use dataplane::model::{
    Endpoint, NodeConfig, Protocol, ServiceEntry, ServicePort, Snapshot, TrafficPolicy,
};
use dataplane::render::nft::{ElementChange, Layout, NftSync};

/// `n` ClusterIP services with `m` endpoints each; service `i` is 10.96.x.y:80.
fn snapshot(n: usize, m: usize) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for i in 0..n {
        let port = ServicePort {
            namespace: "bench".into(),
            name: format!("svc-{i:05}"),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            cluster_ip: Some(std::net::Ipv4Addr::new(
                10,
                96 + (i / 65_000) as u8,
                ((i / 250) % 256) as u8,
                (i % 250 + 1) as u8,
            )),
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            affinity_seconds: None,
            external_policy: TrafficPolicy::Cluster,
            internal_policy: TrafficPolicy::Cluster,
        };
        let endpoints = (0..m)
            .map(|j| {
                let idx = (i * m + j) as u32;
                Endpoint {
                    ip: std::net::Ipv4Addr::new(
                        10,
                        200 + (idx >> 16) as u8,
                        (idx >> 8) as u8,
                        idx as u8,
                    ),
                    port: 8080,
                    ready: true,
                    serving: true,
                    terminating: false,
                    node: Some("bench-node".into()),
                }
            })
            .collect();
        snapshot.services.insert(
            (port.port_name_string(), Protocol::Tcp),
            ServiceEntry { port, endpoints }.into(),
        );
    }
    snapshot
}

fn node() -> NodeConfig {
    NodeConfig {
        node_ips: vec!["10.244.1.1".parse().unwrap()],
        cluster_cidr: Some(default_cluster_cidr()),
        ..NodeConfig::new("bench-node")
    }
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let (n, m) = (args.next().unwrap_or(5000), args.next().unwrap_or(50));
    let snap = snapshot(n, m);
    let node = node();
    let t = Instant::now();
    let mut sync = NftSync::new(Layout::Fast);
    let table = sync
        .update_change(&snap, &node)
        .expect("renders")
        .into_whole()
        .expect("a first update is the whole table");
    let compute = t.elapsed();
    let t = Instant::now();
    let (rest, elements) = table.without_elements().expect("elements read");
    let split = t.elapsed();
    let t = Instant::now();
    let text = rest.full();
    let render = t.elapsed();
    let ns = format!("first-sync-{}", std::process::id());
    let ip = |args: &[&str]| {
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("ip runs")
            .success();
        assert!(ok, "ip {args:?}");
    };
    ip(&["netns", "add", &ns]);
    let applier = NftApplier::new(Netns::named(&ns), Layout::Fast.table());
    let t = Instant::now();
    applier.apply(&text).expect("nft");
    let nft = t.elapsed();
    let t = Instant::now();
    for add in elements.add.chunks(50_000) {
        let part = ElementChange {
            table: elements.table,
            add: add.to_vec(),
            ..ElementChange::default()
        };
        applier.apply_elements(&part).expect("netlink");
    }
    let netlink = t.elapsed();
    drop(applier);
    ip(&["netns", "del", &ns]);
    println!(
        "{n}x{m}: compute {:.3} s, split {:.3} s, render {:.3} s ({} bytes), nft {:.3} s, netlink {:.3} s ({} elements)",
        compute.as_secs_f64(),
        split.as_secs_f64(),
        render.as_secs_f64(),
        text.len(),
        nft.as_secs_f64(),
        netlink.as_secs_f64(),
        elements.add.len()
    );
}
