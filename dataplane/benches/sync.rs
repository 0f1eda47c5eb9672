//! `cargo bench -p dataplane --bench sync`: how long rules take to compile and to program
//! into a kernel, at kube-proxy's published scales, and what a first connection costs through
//! many services.
//!
//! Every kernel step runs in a network namespace made here (nothing links it to the host's
//! own) and every apply is bounded by `SYNC_BENCH_TIMEOUT` seconds (default 120). Needs root,
//! iproute2, iptables and nftables; without them it says why and prints `{"skipped": ...}`.
//! `SYNC_BENCH_SIZES` (e.g. `1000x10,10000x10,5000x50`) picks the sizes and
//! `SYNC_BENCH_LAYOUTS` (e.g. `nft-fast,iptables`; default all three) the layouts.
//! Endpoints run `SYNC_BENCH_PODS_PER_NODE` (default 110, kubelet's default maxPods) to a
//! node, the first ones on the node whose rules are measured.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dataplane::apply::Netns;
use dataplane::apply::nft::{NftApplier, TableWrite};
use dataplane::compile::{compile, default_cluster_cidr};
use dataplane::model::{
    Endpoint, NodeConfig, Protocol, ServiceEntry, ServicePort, Snapshot, TrafficPolicy,
};
use dataplane::render::{iptables, nft};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` ClusterIP services with `m` endpoints each; service `i` is 10.96.x.y:80. Endpoints
/// run `per_node` to a node, the first ones on the node the rules are for.
fn snapshot(n: usize, m: usize, per_node: usize) -> Snapshot {
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
                    node: Some(match idx as usize / per_node.max(1) {
                        0 => "bench-node".into(),
                        k => format!("bench-node-{k}"),
                    }),
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

/// A namespace with a bridge and one Pod namespace serving HTTP on 10.244.1.2:8080.
struct Lab {
    node: String,
    pod: String,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let lab = Lab {
            node: format!("dpb-{}-{tag}", std::process::id()),
            pod: format!("dpbp-{}-{tag}", std::process::id()),
        };
        let (n, p) = (lab.node.as_str(), lab.pod.as_str());
        for args in [
            vec!["netns", "add", n],
            vec!["-n", n, "link", "set", "lo", "up"],
            vec!["-n", n, "link", "add", "cni0", "type", "bridge"],
            vec!["-n", n, "addr", "add", "10.244.1.1/24", "dev", "cni0"],
            vec!["-n", n, "link", "set", "cni0", "up"],
            vec!["-n", n, "route", "add", "10.96.0.0/12", "dev", "cni0"],
            vec!["netns", "add", p],
            vec!["-n", p, "link", "set", "lo", "up"],
            vec![
                "-n", n, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", p,
            ],
            vec!["-n", n, "link", "set", "veth0", "master", "cni0", "up"],
            vec!["-n", p, "addr", "add", "10.244.1.2/24", "dev", "eth0"],
            vec!["-n", p, "link", "set", "eth0", "up"],
            vec!["-n", p, "route", "add", "default", "via", "10.244.1.1"],
        ] {
            let ok = Command::new("ip")
                .args(&args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip {}", args.join(" "));
        }
        let path = format!("/run/netns/{p}");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter(&path);
            let listener = TcpListener::bind("0.0.0.0:8080").unwrap();
            tx.send(()).unwrap();
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        rx.recv().unwrap();
        lab
    }

    fn exec(
        &self,
        tool: &str,
        args: &[&str],
        stdin: &str,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node, tool])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut pipe = child.stdin.take().unwrap();
        let input = stdin.to_owned();
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                let _ = writer.join();
                if !status.success() {
                    let mut err = String::new();
                    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                    return Err(err);
                }
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("over the {timeout:?} limit"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Median time of `n` connect + request + response exchanges with `addr` from the node.
    /// The times of `n` first connections (connect, request, response) to `addr`.
    fn first_connections(&self, addr: &str, n: usize) -> Vec<Duration> {
        let path = format!("/run/netns/{}", self.node);
        let addr: SocketAddr = addr.parse().unwrap();
        std::thread::spawn(move || {
            enter(&path);
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let started = Instant::now();
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .expect("connect through the service");
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).unwrap();
                times.push(started.elapsed());
            }
            times
        })
        .join()
        .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.node] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn enter(path: &str) {
    let file = std::fs::File::open(path).unwrap();
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap();
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Iptables,
    NftKubeProxy,
    NftFast,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Iptables => "iptables",
            Kind::NftKubeProxy => "nft-kube-proxy",
            Kind::NftFast => "nft-fast",
        }
    }
}

/// The measured service gets a real endpoint (the lab's Pod): the last service in the order.
fn with_real_endpoint(mut s: Snapshot) -> Snapshot {
    if let Some(entry) = s.services.values_mut().last().map(std::sync::Arc::make_mut) {
        entry.endpoints = vec![Endpoint {
            ip: "10.244.1.2".parse().unwrap(),
            port: 8080,
            ready: true,
            serving: true,
            terminating: false,
            node: Some("bench-node".into()),
        }];
    }
    s
}

struct Figures {
    compile_s: f64,
    apply_s: Option<f64>,
    /// One endpoint moved to another address.
    update_ms: Option<f64>,
    /// One endpoint gone (the dispatch rule's modulus changes too).
    removal_ms: Option<f64>,
    /// The fast layout's full sync over its own table (one atomic `nft -f`).
    resync_s: Option<f64>,
    text_mb: f64,
}

fn measure(kind: Kind, n: usize, m: usize, per_node: usize, timeout: Duration) -> Figures {
    let snap = with_real_endpoint(snapshot(n, m, per_node));
    let node = node();
    let started = Instant::now();
    // The fast layout's sync loop writes a first sync from the table as data (see below):
    // its whole text is rendered here only to be measured, outside the timing.
    let mut fast_sync = (kind == Kind::NftFast).then(|| nft::NftSync::new(nft::Layout::Fast));
    let fast = fast_sync.as_mut().map(|sync| {
        let first = sync.update_change(&snap, &node).unwrap();
        first
            .into_whole()
            .expect("a first update is the whole table")
    });
    let text = match kind {
        Kind::Iptables => iptables::render(&compile(&snap, &node)),
        Kind::NftKubeProxy => nft::render(&snap, &node, nft::Layout::KubeProxy).unwrap(),
        Kind::NftFast => String::new(),
    };
    let compile_s = started.elapsed().as_secs_f64();
    let text = match &fast {
        Some(table) => table.full(),
        None => text,
    };
    let lab = Lab::new(&format!("{}-{n}", kind.name()));
    let (tool, args): (&str, &[&str]) = match kind {
        Kind::Iptables => ("iptables-restore", &["--noflush"]),
        _ => ("nft", &["-f", "-"]),
    };
    let layout = if kind == Kind::NftFast {
        nft::Layout::Fast
    } else {
        nft::Layout::KubeProxy
    };
    let applier = NftApplier::new(Netns::named(&lab.node), layout.table());
    // The fast layout's first sync as the sync loop writes it: the table through `nft`, its
    // endpoint and hairpin elements over netlink (`NftApplier::apply_table`).
    let apply = match &fast {
        Some(table) => {
            let started = Instant::now();
            match applier.apply_table(table) {
                Ok(TableWrite::NftAndNetlink) => Ok(started.elapsed()),
                Ok(how) => Err(format!("written as {how:?}, not as a first sync")),
                Err(e) => Err(e.to_string()),
            }
        }
        None => lab.exec(tool, args, &text, timeout),
    };
    if let Err(e) = &apply {
        eprintln!(
            "  {} {n}x{m}: apply failed: {}",
            kind.name(),
            e.lines().next().unwrap_or("")
        );
    }
    // One endpoint of the first service moves, then one leaves: what reaches the kernel for
    // each change.
    let mut moved = snap.clone();
    let first = std::sync::Arc::make_mut(moved.services.values_mut().next().unwrap());
    first.endpoints[0].ip = "10.199.0.1".parse().unwrap();
    let mut removed = moved.clone();
    std::sync::Arc::make_mut(removed.services.values_mut().next().unwrap())
        .endpoints
        .remove(1);
    // The sync loop keeps its table in step with the snapshots; the timed update re-renders
    // only the service that changed (the first update, not timed, renders everything).
    let mut sync = fast_sync.or_else(|| {
        (kind != Kind::Iptables).then(|| {
            let mut sync = nft::NftSync::new(layout);
            sync.update(&snap, &node).unwrap();
            sync
        })
    });
    let mut update = |what: &str, changed: &Snapshot| {
        let started = Instant::now();
        let (input, elements) = match &mut sync {
            // iptables-restore needs every rule of every chain it mentions; our iptables
            // applier rewrites the whole rule set.
            None => (iptables::render(&compile(changed, &node)), None),
            Some(sync) => {
                let change = sync.update_change(changed, &node).unwrap();
                (change.text(), change.elements)
            }
        };
        let prepared = started.elapsed();
        // As the sync loop does: endpoint moves over netlink, anything else through the tool.
        let (applied, via) = match elements {
            Some(elements) => {
                let started = Instant::now();
                let result = applier.apply_elements(&elements).map_err(|e| e.to_string());
                (result.map(|()| started.elapsed()), "netlink")
            }
            None => (lab.exec(tool, args, &input, timeout), tool),
        };
        match applied {
            Ok(applied) => {
                eprintln!(
                    "  {} {n}x{m}: one endpoint {what}: {:.1} ms to compute ({} bytes of nft text), {:.2} ms applying through {via}",
                    kind.name(),
                    prepared.as_secs_f64() * 1000.0,
                    input.len(),
                    applied.as_secs_f64() * 1000.0
                );
                Some((applied + prepared).as_secs_f64() * 1000.0)
            }
            Err(e) => {
                eprintln!(
                    "  {} {n}x{m}: one endpoint {what}: failed: {e}",
                    kind.name()
                );
                None
            }
        }
    };
    let (update, removal) = if apply.is_ok() {
        (update("moved", &moved), update("removed", &removed))
    } else {
        (None, None)
    };
    // A periodic full sync finds the table there and replaces it in one transaction.
    let resync = match (&mut sync, &fast, &apply) {
        (Some(sync), Some(_), Ok(_)) => {
            let started = Instant::now();
            match applier.apply_table(&sync.whole()) {
                Ok(_) => {
                    let took = started.elapsed().as_secs_f64();
                    eprintln!(
                        "  {} {n}x{m}: full sync over the existing table: {took:.2} s",
                        kind.name()
                    );
                    Some(took)
                }
                Err(e) => {
                    eprintln!(
                        "  {} {n}x{m}: full sync over the table failed: {e}",
                        kind.name()
                    );
                    None
                }
            }
        }
        _ => None,
    };
    Figures {
        compile_s,
        apply_s: apply.ok().map(|d| d.as_secs_f64()),
        update_ms: update,
        removal_ms: removal,
        resync_s: resync,
        text_mb: text.len() as f64 / 1e6,
    }
}

/// A lab whose rules hold `n` services in `kind`'s layout, and the address of the last one,
/// which reaches the lab's Pod.
fn first_connection_lab(kind: Kind, n: usize) -> (Lab, String) {
    let snap = with_real_endpoint(snapshot(n, 1, 1));
    let node = node();
    let lab = Lab::new(&format!("fc-{}-{n}", kind.name()));
    let (tool, args, text): (&str, &[&str], String) = match kind {
        Kind::Iptables => (
            "iptables-restore",
            &["--noflush"],
            iptables::render(&compile(&snap, &node)),
        ),
        Kind::NftKubeProxy => (
            "nft",
            &["-f", "-"],
            nft::render(&snap, &node, nft::Layout::KubeProxy).unwrap(),
        ),
        Kind::NftFast => (
            "nft",
            &["-f", "-"],
            nft::render(&snap, &node, nft::Layout::Fast).unwrap(),
        ),
    };
    lab.exec(tool, args, &text, Duration::from_secs(300))
        .expect("apply");
    if kind == Kind::Iptables {
        // iptables needs the hooks from the built-in chains.
        for hook in compile(&snap, &node).hooks {
            let mut args = iptables::hook_args(&hook);
            args.insert(2, "-I".into());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            lab.exec("iptables", &args, "", Duration::from_secs(10))
                .expect("hook");
        }
    }
    let target = snap
        .services
        .values()
        .last()
        .unwrap()
        .port
        .cluster_ip
        .unwrap();
    (lab, format!("{target}:80"))
}

/// Median first-connection times through the last of 10 and of 10,000 services. Both labs
/// exist at once and are sampled in turns, so that the machine's drift during the run (it
/// is larger than the difference measured) falls on both alike.
fn first_connections(kind: Kind) -> (Duration, Duration) {
    let (small, small_addr) = first_connection_lab(kind, 10);
    let (large, large_addr) = first_connection_lab(kind, 10_000);
    small.first_connections(&small_addr, 50); // warm-up
    large.first_connections(&large_addr, 50);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        a.extend(small.first_connections(&small_addr, 50));
        b.extend(large.first_connections(&large_addr, 50));
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    (median(a), median(b))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("sync bench: run it with `cargo bench -p dataplane --bench sync`");
        return;
    }
    let missing = ["ip", "iptables-restore", "nft"].into_iter().find(|t| {
        Command::new(t).arg("--version").output().is_err()
            && Command::new(t).arg("-V").output().is_err()
    });
    if !rustix::process::geteuid().is_root() || missing.is_some() {
        let reason = missing.map_or("needs root for network namespaces".to_owned(), |t| {
            format!("{t} is not installed")
        });
        println!("sync bench skipped: {reason}");
        println!("{{\"skipped\":\"{reason}\"}}");
        return;
    }
    let timeout = Duration::from_secs(env_or("SYNC_BENCH_TIMEOUT", 120));
    // kubelet's default maxPods: 250,000 endpoints need at least 2,273 nodes.
    let per_node = env_or("SYNC_BENCH_PODS_PER_NODE", 110);
    let sizes: Vec<(usize, usize)> = std::env::var("SYNC_BENCH_SIZES")
        .unwrap_or_else(|_| "1000x10,10000x10,5000x50".into())
        .split(',')
        .filter_map(|s| {
            let (n, m) = s.split_once('x')?;
            Some((n.trim().parse().ok()?, m.trim().parse().ok()?))
        })
        .collect();
    println!(
        "{:<16} {:>9} {:>10} {:>10} {:>12} {:>12} {:>9}",
        "layout", "size", "compile s", "apply s", "1-ep move ms", "1-ep rm ms", "text MB"
    );
    let layouts = std::env::var("SYNC_BENCH_LAYOUTS").unwrap_or_default();
    let kinds: Vec<Kind> = [Kind::NftFast, Kind::NftKubeProxy, Kind::Iptables]
        .into_iter()
        .filter(|k| layouts.is_empty() || layouts.split(',').any(|l| l.trim() == k.name()))
        .collect();
    let mut results: BTreeMap<(Kind, usize, usize), Figures> = BTreeMap::new();
    for &(n, m) in &sizes {
        for &kind in &kinds {
            let f = measure(kind, n, m, per_node, timeout);
            let opt = |v: Option<f64>, p: usize| v.map_or("-".to_owned(), |v| format!("{v:.p$}"));
            println!(
                "{:<16} {:>9} {:>10.3} {:>10} {:>12} {:>12} {:>9.1}",
                kind.name(),
                format!("{n}x{m}"),
                f.compile_s,
                opt(f.apply_s, 3),
                opt(f.update_ms, 2),
                opt(f.removal_ms, 2),
                f.text_mb
            );
            results.insert((kind, n, m), f);
        }
    }
    let mut ratios = BTreeMap::new();
    for &kind in &kinds {
        let (small, large) = first_connections(kind);
        let ratio = large.as_secs_f64() / small.as_secs_f64();
        println!(
            "first connection through a ClusterIP ({}): 10 services {:?}, 10k services {:?}, ratio {ratio:.2}",
            kind.name(),
            small,
            large
        );
        ratios.insert(kind, ratio);
    }
    let full = |kind, n, m| {
        results
            .get(&(kind, n, m))
            .and_then(|f: &Figures| f.apply_s.map(|a| a + f.compile_s))
    };
    let json_num = |v: Option<f64>| v.map_or("null".to_owned(), |v| format!("{v:.3}"));
    let worst_update = results
        .iter()
        .filter(|((k, _, _), _)| *k == Kind::NftFast)
        .flat_map(|(_, f)| [f.update_ms, f.removal_ms])
        .flatten()
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        });
    println!(
        "{{\"full_sync_5k_x50_s\":{},\"kube_proxy_layout_full_sync_5k_x50_s\":{},\"iptables_full_sync_5k_x50_s\":{},\
         \"update_one_endpoint_ms\":{},\"first_conn_latency_ratio_10k_vs_10\":{},\
         \"kube_proxy_layout_first_conn_ratio_10k_vs_10\":{},\"iptables_first_conn_ratio_10k_vs_10\":{},\
         \"fast_layout_resync_5k_x50_s\":{}}}",
        json_num(full(Kind::NftFast, 5000, 50)),
        json_num(full(Kind::NftKubeProxy, 5000, 50)),
        json_num(full(Kind::Iptables, 5000, 50)),
        json_num(worst_update),
        json_num(ratios.get(&Kind::NftFast).copied()),
        json_num(ratios.get(&Kind::NftKubeProxy).copied()),
        json_num(ratios.get(&Kind::Iptables).copied()),
        json_num(
            results
                .get(&(Kind::NftFast, 5000, 50))
                .and_then(|f| f.resync_s)
        ),
    );
}
