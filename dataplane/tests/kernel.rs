//! The rules in a real kernel: a lab node in network namespaces made by the test (a bridge
//! `cni0` with two Pod namespaces serving HTTP), rules applied with iptables-restore, and
//! connections from the node's namespace to the ClusterIP and to 127.0.0.1:<NodePort>.
//!
//! Needs root, `ip` and iptables. Without them it prints why it skips; under `CI` it fails.
//! Nothing is linked to the host's own namespace: every address here exists only inside the
//! test's namespaces, which are deleted when the test ends.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dataplane::apply::Netns;
use dataplane::apply::iptables::IptablesApplier;
use dataplane::apply::nft::{NftApplier, TableWrite};
use dataplane::compile::{compile, default_cluster_cidr};
use dataplane::model::{NodeConfig, Snapshot};
use dataplane::render::nft::{self, Layout};
use dataplane::ruleset::{RuleSet, Table, Target};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const CLUSTER_IP: &str = "10.96.0.10";
const NODE_PORT: u16 = 30080;

fn skip(reason: &str) -> bool {
    assert!(
        std::env::var_os("CI").is_none(),
        "kernel test cannot run in CI: {reason}"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED kernel test: {reason}");
    true
}

fn unavailable() -> bool {
    if !rustix::process::geteuid().is_root() {
        return skip("needs root to create network namespaces and program iptables");
    }
    for tool in ["ip", "iptables-restore", "iptables-save", "nft", "sysctl"] {
        if Command::new(tool).arg("-V").output().is_err()
            && Command::new(tool).arg("--version").output().is_err()
        {
            return skip(&format!(
                "{tool} is not installed (apt-get install iproute2 iptables procps)"
            ));
        }
    }
    false
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node namespace with a bridge and Pod namespaces behind it; deleted on drop.
struct LabNode {
    node: String,
    pods: Vec<String>,
}

static LABS: AtomicUsize = AtomicUsize::new(0);

impl LabNode {
    fn new(pod_count: usize) -> Self {
        let id = format!(
            "{}-{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let lab = LabNode {
            node: format!("dpn-{id}"),
            pods: (0..pod_count).map(|i| format!("dpp-{id}-{i}")).collect(),
        };
        let n = lab.node.as_str();
        ip(&["netns", "add", n]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&["-n", n, "link", "add", "cni0", "type", "bridge"]);
        ip(&["-n", n, "addr", "add", "10.244.1.1/24", "dev", "cni0"]);
        ip(&["-n", n, "link", "set", "cni0", "up"]);
        // Locally generated packets to a ClusterIP need a route before nat OUTPUT sees them.
        ip(&["-n", n, "route", "add", "10.96.0.0/12", "dev", "cni0"]);
        for (i, pod) in lab.pods.iter().enumerate() {
            let veth = format!("veth{i}");
            let addr = format!("10.244.1.{}/24", i + 2);
            ip(&["netns", "add", pod]);
            ip(&["-n", pod, "link", "set", "lo", "up"]);
            // Both ends are created inside the lab's namespaces, never in the host's.
            ip(&[
                "-n", n, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", pod,
            ]);
            ip(&["-n", n, "link", "set", &veth, "master", "cni0", "up"]);
            ip(&["-n", pod, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", pod, "link", "set", "eth0", "up"]);
            ip(&["-n", pod, "route", "add", "default", "via", "10.244.1.1"]);
            serve_in(pod, format!("pod-{i}"));
        }
        lab
    }

    fn netns(&self) -> Netns {
        Netns::named(&self.node)
    }

    /// `table` as the kernel lists it in JSON, without handles, objects and set elements
    /// sorted: the same for the same rules however they were written.
    fn nft_canonical(&self, table: &str) -> Vec<String> {
        fn strip(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Object(o) => {
                    o.remove("handle");
                    o.values_mut().for_each(strip);
                    if let Some(serde_json::Value::Array(elems)) = o.get_mut("elem") {
                        elems.sort_by_key(|e| e.to_string());
                    }
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
                _ => {}
            }
        }
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.node, "nft", "-j", "list", "table", "ip", table,
            ])
            .output()
            .unwrap();
        let mut listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        strip(&mut listing);
        let mut objects: Vec<String> = listing["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o.get("metainfo").is_none())
            .map(|o| o.to_string())
            .collect();
        objects.sort();
        objects
    }

    /// Asserts that the table partial syncs left is what one whole sync of `snapshot`
    /// writes (which it then holds).
    fn assert_whole_sync_would_match(
        &self,
        applier: &NftApplier,
        layout: Layout,
        snapshot: &Snapshot,
    ) {
        let partial = self.nft_canonical(layout.table());
        applier
            .apply(&nft::render(snapshot, &node(), layout).unwrap())
            .unwrap();
        assert_eq!(partial, self.nft_canonical(layout.table()));
    }

    fn nat_listing(&self, chain: &str) -> String {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.node, "iptables", "-t", "nat", "-L", chain, "-n",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many endpoint chains (`KUBE-SEP-*`) the kernel holds.
    fn sep_chains(&self) -> usize {
        self.save()
            .lines()
            .filter(|l| l.starts_with(":KUBE-SEP-"))
            .count()
    }

    fn save(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node, "iptables-save"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for LabNode {
    fn drop(&mut self) {
        for ns in self.pods.iter().chain(std::iter::once(&self.node)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread that has entered the network namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("enter the namespace");
        f()
    })
}

/// A tiny HTTP server on port 8080 inside `ns` answering `name`.
fn serve_in(ns: &str, name: String) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(ns, move || {
        let listener = TcpListener::bind("0.0.0.0:8080").expect("bind in the pod");
        tx.send(()).unwrap();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                name.len()
            );
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("pod server listening");
}

/// One HTTP request from inside `ns`; the answering pod's name, or `None` if nothing answered.
fn request_from(ns: &str, addr: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    in_netns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        text.split("\r\n\r\n").nth(1).map(str::to_owned)
    })
    .join()
    .unwrap()
}

/// Answers to `n` requests (bounded: each has a 1 s connect and 2 s read timeout).
fn spread(ns: &str, addr: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let who = request_from(ns, addr).unwrap_or_else(|| "no answer".into());
        *counts.entry(who).or_insert(0) += 1;
    }
    counts
}

fn objects(endpoints: &[&str]) -> Snapshot {
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("hello-world".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("NodePort".into()),
            cluster_ip: Some(CLUSTER_IP.into()),
            ports: Some(vec![ServicePort {
                port: 80,
                node_port: Some(NODE_PORT.into()),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some("hello-world-x".into()),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".into(),
                "hello-world".into(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints: endpoints
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![(*ip).into()],
                node_name: Some("lab-worker".into()),
                ..Default::default()
            })
            .collect(),
    };
    Snapshot::from_objects(&[svc], &[slice]).unwrap()
}

fn node() -> NodeConfig {
    NodeConfig {
        node_ips: vec!["10.244.1.1".parse().unwrap()],
        cluster_cidr: Some(default_cluster_cidr()),
        ..NodeConfig::new("lab-worker")
    }
}

fn rules(endpoints: &[&str]) -> RuleSet {
    compile(&objects(endpoints), &node())
}

#[test]
fn iptables_rules_route_clusterip_and_nodeport_to_every_pod() {
    if unavailable() {
        return;
    }
    let lab = LabNode::new(2);
    let applier = IptablesApplier::new(lab.netns());
    let both = rules(&["10.244.1.2", "10.244.1.3"]);
    applier.apply(&both).expect("apply");

    // As in the tutorial: KUBE-SERVICES is entered from PREROUTING and OUTPUT.
    let services = lab.nat_listing("KUBE-SERVICES");
    assert!(
        services.starts_with("Chain KUBE-SERVICES (2 references)"),
        "{services}"
    );
    assert!(services.contains("KUBE-SVC-"), "{services}");
    let svc_chain = services
        .split_whitespace()
        .find(|w| w.starts_with("KUBE-SVC-"))
        .unwrap()
        .to_owned();
    let listing = lab.nat_listing(&svc_chain);
    assert!(
        listing.contains("statistic mode random probability 0.50000000000"),
        "{listing}"
    );

    let cluster = spread(&lab.node, &format!("{CLUSTER_IP}:80"), 24);
    assert_eq!(
        cluster.keys().collect::<Vec<_>>(),
        ["pod-0", "pod-1"],
        "{cluster:?}"
    );
    let nodeport = spread(&lab.node, &format!("127.0.0.1:{NODE_PORT}"), 24);
    assert_eq!(
        nodeport.keys().collect::<Vec<_>>(),
        ["pod-0", "pod-1"],
        "{nodeport:?}"
    );

    // Applying the same rules again changes nothing.
    let before = lab.save();
    applier.apply(&both).unwrap();
    assert_eq!(lab.save(), before);

    // One endpoint left: only it answers, and the other's chain is gone.
    let one = rules(&["10.244.1.2"]);
    applier.apply(&one).unwrap();
    assert_eq!(
        spread(&lab.node, &format!("{CLUSTER_IP}:80"), 8),
        BTreeMap::from([("pod-0".into(), 8)])
    );
    assert_eq!(lab.sep_chains(), 1);

    // No endpoints: the ClusterIP is refused at once (REJECT), not left to time out.
    applier.apply(&rules(&[])).unwrap();
    let addr: SocketAddr = format!("{CLUSTER_IP}:80").parse().unwrap();
    let refused = in_netns(&lab.node, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .map(|_| ())
            .map_err(|e| e.kind())
    })
    .join()
    .unwrap();
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused));
    assert!(
        lab.save()
            .contains("\"default/hello-world has no endpoints\"")
    );

    // Cleanup removes everything of ours, hooks included, and nothing else.
    applier.cleanup(&both).unwrap();
    let left = lab.save();
    assert!(!left.contains("KUBE-"), "{left}");
}

/// The kernel's dispatch of the service's ClusterIP chain, from `iptables-save`: each rule's
/// endpoint chain and probability (1 for the last).
fn dispatch_in_kernel(lab: &LabNode) -> Vec<(String, f64)> {
    let save = lab.save();
    let chain = save
        .lines()
        .find_map(|l| {
            l.strip_prefix("-A KUBE-SERVICES ")
                .filter(|l| l.contains("cluster IP"))
                .and_then(|l| l.split_whitespace().last())
        })
        .expect("a ClusterIP rule")
        .to_owned();
    save.lines()
        .filter_map(|l| l.strip_prefix(&format!("-A {chain} ")))
        .filter(|l| l.contains("-j KUBE-SEP-"))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let after = |flag: &str| words.iter().position(|w| *w == flag).map(|i| words[i + 1]);
            let p = after("--probability").map_or(1.0, |p| p.parse().unwrap());
            (after("-j").unwrap().to_owned(), p)
        })
        .collect()
}

/// Syncs `endpoints` partially over `applied` and checks what the kernel then holds: the
/// stable order, an even split, and no chain of a gone endpoint.
fn partial_sync_and_check(
    lab: &LabNode,
    applier: &IptablesApplier,
    applied: &mut RuleSet,
    endpoints: &[String],
) {
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    let mut expected = rules(&endpoints);
    assert!(applier.apply_changes(&expected).expect("partial sync"));
    dataplane::apply::iptables::stable_dispatch(applied, &mut expected);
    *applied = expected;

    let dispatch = dispatch_in_kernel(lab);
    assert_eq!(dispatch.len(), endpoints.len(), "{dispatch:?}");
    let mut reaching = 1.0;
    for (sep, p) in &dispatch {
        let share = reaching * p;
        assert!(
            (share - 1.0 / endpoints.len() as f64).abs() < 1e-6,
            "{sep} gets {share} of {}",
            endpoints.len()
        );
        reaching *= 1.0 - p;
    }
    let want: Vec<String> = applied.tables[&Table::Nat]
        .iter()
        .find(|(n, _)| n.starts_with("KUBE-SVC-"))
        .unwrap()
        .1
        .rules
        .iter()
        .filter_map(|r| match &r.target {
            Target::Jump(j) if j.starts_with("KUBE-SEP-") => Some(j.clone()),
            _ => None,
        })
        .collect();
    let held: Vec<String> = dispatch.into_iter().map(|(s, _)| s).collect();
    assert_eq!(held, want);
    assert_eq!(lab.sep_chains(), endpoints.len());
}

#[test]
fn iptables_partial_syncs_edit_a_service_chain_rule_by_rule_and_keep_the_split_even() {
    if unavailable() {
        return;
    }
    let lab = LabNode::new(3);
    let applier = IptablesApplier::new(lab.netns());
    // Three Pods that serve, and seventeen addresses that only fill the chain.
    let mut endpoints: Vec<String> = (2..5).map(|i| format!("10.244.1.{i}")).collect();
    endpoints.extend((100..117).map(|i| format!("10.244.1.{i}")));
    let mut applied = rules(&endpoints.iter().map(String::as_str).collect::<Vec<_>>());
    applier.apply(&applied).expect("apply");

    // One leaves at a time, from the middle of those left, as scaled-down Pods do.
    while endpoints.len() > 3 {
        endpoints.remove(3 + (endpoints.len() - 3) / 2);
        partial_sync_and_check(&lab, &applier, &mut applied, &endpoints);
    }
    // What is left serves, through the chain the edits made.
    let cluster = spread(&lab.node, &format!("{CLUSTER_IP}:80"), 30);
    assert_eq!(
        cluster.keys().collect::<Vec<_>>(),
        ["pod-0", "pod-1", "pod-2"],
        "{cluster:?}"
    );
    // New endpoints are inserted at the top.
    for extra in ["10.244.1.120", "10.244.1.121"] {
        endpoints.push(extra.into());
        partial_sync_and_check(&lab, &applier, &mut applied, &endpoints);
    }
}

fn refused(ns: &str, addr: &str) -> Result<(), std::io::ErrorKind> {
    let addr: SocketAddr = addr.parse().unwrap();
    in_netns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .map(|_| ())
            .map_err(|e| e.kind())
    })
    .join()
    .unwrap()
}

/// The same journey as the iptables test, through one nftables layout: the first sync
/// is the whole table, later ones are [`nft::NftSync`]'s partial transactions.
fn nftables_journey(layout: Layout, nodeport: &str) {
    if unavailable() {
        return;
    }
    let lab = LabNode::new(3);
    let applier = NftApplier::new(lab.netns(), layout.table());
    let mut sync = nft::NftSync::new(layout);
    let mut update = |eps: &[&str]| sync.update_change(&objects(eps), &node()).expect("renders");
    // As the sync loop does: endpoint moves over netlink, anything else through `nft`.
    let mut via_netlink = 0;
    let mut apply_partial = |change: nft::NftUpdate| match change.elements {
        Some(elements) => {
            applier.apply_elements(&elements).expect("netlink change");
            via_netlink += 1;
        }
        None => applier.apply_change(&change.text()).expect("nft change"),
    };
    applier
        .apply(&update(&["10.244.1.2", "10.244.1.3"]).text())
        .expect("apply");

    let cluster = spread(&lab.node, &format!("{CLUSTER_IP}:80"), 24);
    assert_eq!(
        cluster.keys().collect::<Vec<_>>(),
        ["pod-0", "pod-1"],
        "{cluster:?}"
    );
    let via_nodeport = spread(&lab.node, nodeport, 24);
    assert_eq!(
        via_nodeport.keys().collect::<Vec<_>>(),
        ["pod-0", "pod-1"],
        "{via_nodeport:?}"
    );

    apply_partial(update(&["10.244.1.2"]));
    assert_eq!(
        spread(&lab.node, &format!("{CLUSTER_IP}:80"), 8),
        BTreeMap::from([("pod-0".into(), 8)])
    );

    apply_partial(update(&[]));
    assert_eq!(
        refused(&lab.node, &format!("{CLUSTER_IP}:80")),
        Err(std::io::ErrorKind::ConnectionRefused)
    );

    apply_partial(update(&["10.244.1.4", "10.244.1.2"]));
    let via_nodeport = spread(&lab.node, nodeport, 24);
    assert_eq!(
        via_nodeport.keys().collect::<Vec<_>>(),
        ["pod-0", "pod-2"],
        "{via_nodeport:?}"
    );
    apply_partial(update(&["10.244.1.4", "10.244.1.2", "10.244.1.3"]));
    let cluster = spread(&lab.node, &format!("{CLUSTER_IP}:80"), 36);
    assert_eq!(
        cluster.keys().collect::<Vec<_>>(),
        ["pod-0", "pod-1", "pod-2"],
        "{cluster:?}"
    );
    let last = ["10.244.1.2", "10.244.1.3"];
    apply_partial(update(&last));
    let cluster = spread(&lab.node, &format!("{CLUSTER_IP}:80"), 24);
    assert_eq!(
        cluster.keys().collect::<Vec<_>>(),
        ["pod-0", "pod-1"],
        "{cluster:?}"
    );
    // The fast layout sends the three endpoint moves (one removal, one arrival, one
    // removal that moves the highest slot down) over netlink; kube-proxy's layout adds and
    // deletes endpoint chains, which takes `nft`.
    let expected = if layout == Layout::Fast { 3 } else { 0 };
    assert_eq!(via_netlink, expected);
    lab.assert_whole_sync_would_match(&applier, layout, &objects(&last));

    applier.cleanup().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.node, "nft", "list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&out.stdout);
    assert!(!tables.contains(layout.table()), "{tables}");
}

#[test]
fn thousands_of_endpoints_arriving_at_once_go_over_netlink_in_one_change() {
    if unavailable() {
        return;
    }
    let lab = LabNode::new(1);
    let layout = Layout::Fast;
    let applier = NftApplier::new(lab.netns(), layout.table());
    let mut sync = nft::NftSync::new(layout);
    let first = sync.update_change(&objects(&["10.244.1.2"]), &node());
    applier.apply(&first.unwrap().text()).unwrap();
    // 3,000 more: more elements than one message holds, and a batch larger than a netlink
    // socket's default send buffer.
    let many: Vec<String> = (0..3000)
        .map(|i| format!("10.245.{}.{}", i / 250, 1 + i % 250))
        .collect();
    let endpoints: Vec<&str> = std::iter::once("10.244.1.2")
        .chain(many.iter().map(String::as_str))
        .collect();
    let change = sync.update_change(&objects(&endpoints), &node()).unwrap();
    let elements = change.elements.as_ref().expect("only endpoints change");
    assert_eq!((elements.add.len(), elements.modulus.len()), (6000, 1));
    applier.apply_elements(elements).expect("netlink change");
    lab.assert_whole_sync_would_match(&applier, layout, &objects(&endpoints));
    applier.cleanup().unwrap();
}

#[test]
fn a_first_full_sync_sends_its_elements_over_netlink_and_writes_what_nft_would() {
    if unavailable() {
        return;
    }
    let lab = LabNode::new(2);
    let layout = Layout::Fast;
    let applier = NftApplier::new(lab.netns(), layout.table());
    let endpoints = ["10.244.1.2", "10.244.1.3"];
    let table = nft::table(&objects(&endpoints), &node(), layout).unwrap();
    let (rest, elements) = table.without_elements().expect("elements read back");
    assert_eq!(
        elements.add.len(),
        4,
        "two endpoint slots, two hairpin pairs"
    );
    assert!(!rest.full().contains("10.244.1.2"), "{}", rest.full());
    // No table yet: the elements go over netlink, and traffic reaches both Pods.
    assert_eq!(
        applier.apply_table(&table).unwrap(),
        TableWrite::NftAndNetlink
    );
    let cluster = spread(&lab.node, &format!("{CLUSTER_IP}:80"), 24);
    assert_eq!(
        cluster.keys().collect::<Vec<_>>(),
        ["pod-0", "pod-1"],
        "{cluster:?}"
    );
    lab.assert_whole_sync_would_match(&applier, layout, &objects(&endpoints));
    // The table exists now: a full sync replaces it in one `nft` transaction.
    let one = nft::table(&objects(&endpoints[..1]), &node(), layout).unwrap();
    assert_eq!(applier.apply_table(&one).unwrap(), TableWrite::Nft);
    lab.assert_whole_sync_would_match(&applier, layout, &objects(&endpoints[..1]));
    applier.cleanup().unwrap();
}

/// Services `(name, protocol)` on port 53, each with one endpoint; `a` is at 10.96.0.1 with
/// endpoint 10.244.1.2, `b` at 10.96.0.2 with 10.244.1.3, and so on.
fn protocols(services: &[(&str, &str)]) -> Snapshot {
    let (svcs, slices): (Vec<Service>, Vec<EndpointSlice>) = services
        .iter()
        .map(|(name, proto)| {
            let i = usize::from(name.as_bytes()[0] - b'a');
            let meta = |n: String| ObjectMeta {
                name: Some(n),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".into(),
                    (*name).into(),
                )])),
                ..Default::default()
            };
            let svc = Service {
                metadata: meta((*name).into()),
                spec: Some(ServiceSpec {
                    cluster_ip: Some(format!("10.96.0.{}", i + 1)),
                    ports: Some(vec![ServicePort {
                        port: 53,
                        protocol: Some((*proto).into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                status: None,
            };
            let slice = EndpointSlice {
                metadata: meta(format!("{name}-x")),
                address_type: "IPv4".into(),
                ports: Some(vec![EndpointPort {
                    port: Some(5353),
                    protocol: Some((*proto).into()),
                    ..Default::default()
                }]),
                endpoints: vec![Endpoint {
                    addresses: vec![format!("10.244.1.{}", i + 2)],
                    node_name: Some("lab-worker".into()),
                    ..Default::default()
                }],
            };
            (svc, slice)
        })
        .unzip();
    Snapshot::from_objects(&svcs, &slices).unwrap()
}

#[test]
fn services_of_each_protocol_join_the_shared_endpoint_maps_one_by_one() {
    if unavailable() {
        return;
    }
    let lab = LabNode::new(0);
    let layout = Layout::Fast;
    let applier = NftApplier::new(lab.netns(), layout.table());
    let mut sync = nft::NftSync::new(layout);
    let steps: [&[(&str, &str)]; 4] = [
        &[("a", "TCP")],
        &[("a", "TCP"), ("b", "UDP")],
        &[("a", "TCP"), ("b", "UDP"), ("c", "SCTP"), ("d", "TCP")],
        &[("a", "TCP"), ("c", "SCTP"), ("d", "TCP")],
    ];
    for (i, step) in steps.iter().enumerate() {
        let change = sync.update_change(&protocols(step), &node()).unwrap();
        // `nft` reads the maps' declarations back from the kernel and checks each new rule
        // against them: a rule of one protocol reading a map of another's is refused.
        if i == 0 {
            applier.apply(&change.text()).unwrap();
        } else {
            applier
                .apply_change(&change.text())
                .unwrap_or_else(|e| panic!("step {i}: {e}"));
        }
        if i == 2 {
            let listing = lab.nft_canonical(layout.table()).join("\n");
            for map in ["tcp-endpoints-0", "udp-endpoints-0", "sctp-endpoints-0"] {
                assert!(listing.contains(map), "no {map} in {listing}");
            }
            // Services that came in name order hold the ids a whole sync gives them.
            lab.assert_whole_sync_would_match(&applier, layout, &protocols(step));
        }
    }
    // b's elements went; its emptied map stays until the next whole sync.
    let listing = lab.nft_canonical(layout.table()).join("\n");
    assert!(!listing.contains("10.244.1.3"), "{listing}");
    assert!(listing.contains("udp-endpoints-0"), "{listing}");
    applier.cleanup().unwrap();
}

#[test]
fn a_refused_netlink_change_leaves_the_table_as_it_was() {
    use dataplane::apply::ApplyError;
    use dataplane::render::nft::{Element, ElementChange};
    if unavailable() {
        return;
    }
    let lab = LabNode::new(2);
    let layout = Layout::Fast;
    let applier = NftApplier::new(lab.netns(), layout.table());
    let mut sync = nft::NftSync::new(layout);
    let both = ["10.244.1.2", "10.244.1.3"];
    applier
        .apply(&sync.update_change(&objects(&both), &node()).unwrap().text())
        .unwrap();
    let before = lab.nft_canonical(layout.table());
    let pair = |ip: &str| Element::Pair(ip.parse().unwrap(), ip.parse().unwrap());
    // A good addition and the deletion of an element that is not there, in one batch: the
    // kernel refuses the batch as a whole.
    let refused = ElementChange {
        table: layout.table(),
        delete: vec![("hairpin".into(), pair("10.244.9.9"))],
        add: vec![("hairpin".into(), pair("10.244.8.8"))],
        modulus: vec![],
    };
    match applier.apply_elements(&refused) {
        Err(ApplyError::Netlink(e)) => assert!(e.undone(), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(before, lab.nft_canonical(layout.table()));
    // A draw rule that is not as expected: nothing is sent.
    let chain = dataplane::names::svc_chain("default/hello-world", dataplane::model::Protocol::Tcp)
        .replace("KUBE-SVC-", "svc-");
    let stale = ElementChange {
        table: layout.table(),
        add: vec![("hairpin".into(), pair("10.244.8.8"))],
        modulus: vec![(chain, 7, 8)],
        ..ElementChange::default()
    };
    let error = applier.apply_elements(&stale).unwrap_err().to_string();
    assert!(error.contains("no draw rule with modulus 7"), "{error}");
    assert_eq!(before, lab.nft_canonical(layout.table()));
    // The kept socket still serves the next change.
    let change = sync
        .update_change(&objects(&["10.244.1.3"]), &node())
        .unwrap();
    applier
        .apply_elements(change.elements.as_ref().expect("only endpoints change"))
        .unwrap();
    lab.assert_whole_sync_would_match(&applier, layout, &objects(&["10.244.1.3"]));
}

#[test]
fn nftables_kube_proxy_layout_routes_to_every_pod() {
    // kube-proxy's nftables mode serves NodePorts on the node's addresses, not on 127.0.0.1.
    nftables_journey(Layout::KubeProxy, &format!("10.244.1.1:{NODE_PORT}"));
}

#[test]
fn nftables_fast_layout_routes_to_every_pod() {
    nftables_journey(Layout::Fast, &format!("127.0.0.1:{NODE_PORT}"));
}

#[test]
fn restore_errors_show_the_failing_line() {
    if unavailable() {
        return;
    }
    let lab = LabNode::new(0);
    let applier = IptablesApplier::new(lab.netns());
    let mut broken = rules(&["10.244.1.2"]);
    // A jump to a chain that does not exist makes the kernel refuse that line.
    broken
        .tables
        .get_mut(&dataplane::ruleset::Table::Nat)
        .unwrap()[0]
        .1
        .rules[0]
        .target = dataplane::ruleset::Target::Jump("KUBE-NO-SUCH-CHAIN".into());
    let err = applier.apply(&broken).unwrap_err().to_string();
    assert!(err.contains("iptables-restore failed at line"), "{err}");
    assert!(
        err.contains("> ") && err.contains("KUBE-NO-SUCH-CHAIN"),
        "{err}"
    );
}
