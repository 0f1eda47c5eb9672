//! The compiled rules for the tutorial's objects: golden iptables-restore text (re-bless with
//! `UPDATE_GOLDEN=1`), what the rules mean (packet traces), and their consistency.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use dataplane::compile::{compile, default_cluster_cidr};
use dataplane::model::{NodeConfig, Protocol, Snapshot};
use dataplane::render::iptables;
use dataplane::ruleset::RuleSet;
use dataplane::trace::{Origin, Packet, Verdict, trace};
use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const CLUSTER_IP: &str = "10.111.34.177";
const NODE_PORT: i32 = 30583;
const LB_IP: &str = "172.18.255.200";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);

/// The tutorial's `hello-world` Service, port 8080, with optional changes.
fn hello_world(
    type_: &str,
    change: impl FnOnce(&mut ServiceSpec, &mut Option<ServiceStatus>),
) -> Service {
    let mut spec = ServiceSpec {
        type_: Some(type_.into()),
        cluster_ip: Some(CLUSTER_IP.into()),
        selector: Some(BTreeMap::from([("app".into(), "hello-world".into())])),
        ports: Some(vec![ServicePort {
            port: 8080,
            protocol: Some("TCP".into()),
            node_port: (type_ != "ClusterIP").then_some(NODE_PORT),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let mut status = (type_ == "LoadBalancer").then(|| ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some(LB_IP.into()),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
    change(&mut spec, &mut status);
    Service {
        metadata: ObjectMeta {
            name: Some("hello-world".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(spec),
        status,
    }
}

/// An endpoint: (pod IP, node, ready, serving, terminating).
type Ep = (&'static str, &'static str, bool, bool, bool);

fn ready(ip: &'static str, node: &'static str) -> Ep {
    (ip, node, true, true, false)
}

fn slice(endpoints: &[Ep]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some("hello-world-abcde".into()),
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
            .map(|(ip, node, ready, serving, terminating)| Endpoint {
                addresses: vec![(*ip).into()],
                node_name: Some((*node).into()),
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    serving: Some(*serving),
                    terminating: Some(*terminating),
                }),
                ..Default::default()
            })
            .collect(),
    }
}

fn node() -> NodeConfig {
    NodeConfig {
        node_ips: vec![NODE_IP],
        cluster_cidr: Some(default_cluster_cidr()),
        ..NodeConfig::new("lab-worker")
    }
}

const TWO: &[Ep] = &[
    ("10.244.2.192", "lab-worker2", true, true, false),
    ("10.244.1.200", "lab-worker", true, true, false),
];

fn compiled(svc: Service, endpoints: &[Ep]) -> RuleSet {
    let snapshot = Snapshot::from_objects(&[svc], &[slice(endpoints)]).expect("valid objects");
    let rules = compile(&snapshot, &node());
    assert_eq!(rules.consistency_errors(), Vec::<String>::new());
    rules
}

/// Compares `text` with `tests/golden/<name>.iptables`; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, text: &str) {
    golden_file(&format!("{name}.iptables"), text);
}

fn packet(dst: &str, dport: u16, src: &str, origin: Origin) -> Packet {
    Packet {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: Protocol::Tcp,
        dport,
        origin,
    }
}

fn dnat(endpoints: &[&str], masquerade: bool) -> Verdict {
    Verdict::Dnat {
        endpoints: endpoints
            .iter()
            .map(|e| e.parse::<SocketAddrV4>().unwrap())
            .collect::<BTreeSet<_>>(),
        masquerade,
    }
}

#[test]
fn clusterip_two_endpoints() {
    let rules = compiled(hello_world("ClusterIP", |_, _| {}), TWO);
    golden("clusterip_2_endpoints", &iptables::render(&rules));
    let both = ["10.244.1.200:8080", "10.244.2.192:8080"];
    // From the node (curl on the node, as in the tutorial): masqueraded, not from a pod.
    assert_eq!(
        trace(
            &rules,
            &node(),
            &packet(CLUSTER_IP, 8080, "172.18.0.3", Origin::Node)
        ),
        dnat(&both, true)
    );
    // From a pod: the source is kept.
    assert_eq!(
        trace(
            &rules,
            &node(),
            &packet(CLUSTER_IP, 8080, "10.244.1.5", Origin::Inbound)
        ),
        dnat(&both, false)
    );
    // Another port of the ClusterIP is not a service.
    assert_eq!(
        trace(
            &rules,
            &node(),
            &packet(CLUSTER_IP, 80, "10.244.1.5", Origin::Inbound)
        ),
        Verdict::Untouched
    );
}

#[test]
fn clusterip_one_endpoint() {
    let rules = compiled(
        hello_world("ClusterIP", |_, _| {}),
        &[ready("10.244.1.200", "lab-worker")],
    );
    golden("clusterip_1_endpoint", &iptables::render(&rules));
}

#[test]
fn nodeport_two_endpoints_as_in_the_tutorial() {
    let rules = compiled(hello_world("NodePort", |_, _| {}), TWO);
    let text = iptables::render(&rules);
    golden("nodeport_2_endpoints", &text);
    assert!(text.contains("-A KUBE-NODEPORTS -m comment --comment default/hello-world -m tcp -p tcp --dport 30583 -j KUBE-EXT-DZ6LTOHRG6HQWHYE\n"));
    let both = ["10.244.1.200:8080", "10.244.2.192:8080"];
    // curl 127.0.0.1:<NodePort> on the node, and <node-ip>:<NodePort> from outside.
    assert_eq!(
        trace(
            &rules,
            &node(),
            &packet("127.0.0.1", 30583, "127.0.0.1", Origin::Node)
        ),
        dnat(&both, true)
    );
    assert_eq!(
        trace(
            &rules,
            &node(),
            &packet("172.18.0.3", 30583, "192.168.9.9", Origin::Inbound)
        ),
        dnat(&both, true)
    );
    // The NodePort is not open on other addresses.
    assert_eq!(
        trace(
            &rules,
            &node(),
            &packet("172.18.0.9", 30583, "192.168.9.9", Origin::Inbound)
        ),
        Verdict::Untouched
    );
}

#[test]
fn nodeports_jump_is_the_last_rule_of_kube_services() {
    let rules = compiled(
        hello_world("LoadBalancer", |spec, _| {
            spec.external_ips = Some(vec!["192.0.2.7".into()])
        }),
        TWO,
    );
    let text = iptables::render(&rules);
    let nat = text.split("*nat").nth(1).unwrap();
    let services: Vec<&str> = nat
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SERVICES "))
        .collect();
    assert_eq!(services.len(), 4, "{services:#?}");
    assert!(
        services
            .last()
            .unwrap()
            .ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    );
}

#[test]
fn loadbalancer_three_endpoints() {
    let three: &[Ep] = &[
        ready("10.244.1.200", "lab-worker"),
        ready("10.244.2.192", "lab-worker2"),
        ready("10.244.1.10", "lab-worker"),
    ];
    let rules = compiled(hello_world("LoadBalancer", |_, _| {}), three);
    let text = iptables::render(&rules);
    golden("loadbalancer_3_endpoints", &text);
    // Endpoints sorted by `ip:port` string; 1/3, then 1/2, then the rest.
    let svc: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains(" -> "))
        .collect();
    assert!(svc[0].contains("10.244.1.10:8080") && svc[0].contains("--probability 0.3333333333"));
    assert!(svc[1].contains("10.244.1.200:8080") && svc[1].contains("--probability 0.5000000000"));
    assert!(svc[2].contains("10.244.2.192:8080") && !svc[2].contains("probability"));
    let all = ["10.244.1.10:8080", "10.244.1.200:8080", "10.244.2.192:8080"];
    assert_eq!(
        trace(
            &rules,
            &node(),
            &packet(LB_IP, 8080, "192.168.9.9", Origin::Inbound)
        ),
        dnat(&all, true)
    );
}

#[test]
fn services_without_endpoints_are_rejected() {
    let rules = compiled(hello_world("LoadBalancer", |_, _| {}), &[]);
    golden("no_endpoints", &iptables::render(&rules));
    for p in [
        packet(CLUSTER_IP, 8080, "172.18.0.3", Origin::Node),
        packet("172.18.0.3", 30583, "192.168.9.9", Origin::Inbound),
        packet(LB_IP, 8080, "192.168.9.9", Origin::Inbound),
    ] {
        assert_eq!(trace(&rules, &node(), &p), Verdict::Reject, "{p:?}");
    }
}

#[test]
fn client_ip_affinity() {
    let svc = hello_world("ClusterIP", |spec, _| {
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(600),
            }),
        });
    });
    let rules = compiled(svc, TWO);
    let text = iptables::render(&rules);
    golden("affinity", &text);
    assert!(text.contains("--rcheck --seconds 600 --reap"));
    assert!(text.contains("--set -m tcp -p tcp -j DNAT"));
}

#[test]
fn local_traffic_policies() {
    let svc = hello_world("NodePort", |spec, _| {
        spec.external_traffic_policy = Some("Local".into());
    });
    let rules = compiled(svc, TWO);
    golden("external_policy_local", &iptables::render(&rules));
    // From outside: only this node's endpoint, source kept.
    assert_eq!(
        trace(
            &rules,
            &node(),
            &packet("172.18.0.3", 30583, "192.168.9.9", Origin::Inbound)
        ),
        dnat(&["10.244.1.200:8080"], false)
    );
    // From a pod: short-circuited to every endpoint.
    assert_eq!(
        trace(
            &rules,
            &node(),
            &packet("172.18.0.3", 30583, "10.244.1.5", Origin::Inbound)
        ),
        dnat(&["10.244.1.200:8080", "10.244.2.192:8080"], false)
    );

    // Internal Local with no endpoint on this node: DROP, not REJECT.
    let svc = hello_world("ClusterIP", |spec, _| {
        spec.internal_traffic_policy = Some("Local".into())
    });
    let rules = compiled(svc, &[ready("10.244.2.192", "lab-worker2")]);
    golden("internal_policy_local_none_here", &iptables::render(&rules));
    assert_eq!(
        trace(
            &rules,
            &node(),
            &packet(CLUSTER_IP, 8080, "10.244.1.5", Origin::Inbound)
        ),
        Verdict::Drop
    );
}

#[test]
fn load_balancer_source_ranges() {
    let svc = hello_world("LoadBalancer", |spec, _| {
        spec.load_balancer_source_ranges = Some(vec!["203.0.113.0/24".into()]);
    });
    let rules = compiled(svc, TWO);
    golden("loadbalancer_source_ranges", &iptables::render(&rules));
    assert_eq!(
        trace(
            &rules,
            &node(),
            &packet(LB_IP, 8080, "203.0.113.9", Origin::Inbound)
        ),
        dnat(&["10.244.1.200:8080", "10.244.2.192:8080"], true)
    );
    assert_eq!(
        trace(
            &rules,
            &node(),
            &packet(LB_IP, 8080, "198.51.100.1", Origin::Inbound)
        ),
        Verdict::Drop
    );
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    let rolling: &[Ep] = &[
        ("10.244.1.200", "lab-worker", false, true, true),
        ("10.244.2.192", "lab-worker2", true, true, false),
    ];
    let rules_a = compiled(hello_world("ClusterIP", |_, _| {}), rolling);
    assert_eq!(
        trace(
            &rules_a,
            &node(),
            &packet(CLUSTER_IP, 8080, "10.244.1.5", Origin::Inbound)
        ),
        dnat(&["10.244.2.192:8080"], false)
    );
    let draining: &[Ep] = &[
        ("10.244.1.200", "lab-worker", false, true, true),
        ("10.244.2.192", "lab-worker2", false, false, true),
    ];
    let rules_b = compiled(hello_world("ClusterIP", |_, _| {}), draining);
    golden("terminating_fallback", &iptables::render(&rules_b));
    assert_eq!(
        trace(
            &rules_b,
            &node(),
            &packet(CLUSTER_IP, 8080, "10.244.1.5", Origin::Inbound)
        ),
        dnat(&["10.244.1.200:8080"], false)
    );
}

#[test]
fn bad_objects_name_the_field() {
    let svc = hello_world("ClusterIP", |spec, _| {
        spec.ports.as_mut().unwrap()[0].protocol = Some("ICMP".into());
    });
    let err = Snapshot::from_objects(&[svc], &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Service default/hello-world: spec.ports[0].protocol: unknown protocol \"ICMP\" (expected TCP, UDP or SCTP)"
    );
}

#[test]
fn output_is_deterministic() {
    let a = iptables::render(&compiled(hello_world("NodePort", |_, _| {}), TWO));
    let reversed: Vec<Ep> = TWO.iter().rev().copied().collect();
    let b = iptables::render(&compiled(hello_world("NodePort", |_, _| {}), &reversed));
    assert_eq!(a, b);
}

/// Compares `text` with `tests/golden/<file>`; `UPDATE_GOLDEN=1` rewrites it.
fn golden_file(file: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        want == text,
        "{} differs:\n{}\nre-run with `UPDATE_GOLDEN=1` to accept",
        path.display(),
        similar::TextDiff::from_lines(want.as_str(), text)
            .unified_diff()
            .header("golden", "rendered")
    );
}

#[test]
fn nftables_layouts_for_the_tutorial() {
    use dataplane::render::nft::{Layout, render};
    let cases: [(&str, Service, &[Ep]); 3] = [
        (
            "nodeport_2_endpoints",
            hello_world("NodePort", |_, _| {}),
            TWO,
        ),
        ("no_endpoints", hello_world("LoadBalancer", |_, _| {}), &[]),
        (
            "external_policy_local",
            hello_world("NodePort", |spec, _| {
                spec.external_traffic_policy = Some("Local".into())
            }),
            TWO,
        ),
    ];
    for (name, svc, eps) in cases {
        let snapshot = Snapshot::from_objects(&[svc], &[slice(eps)]).unwrap();
        let kube_proxy = render(&snapshot, &node(), Layout::KubeProxy).unwrap();
        golden_file(&format!("{name}.kube-proxy.nft"), &kube_proxy);
        let fast = render(&snapshot, &node(), Layout::Fast).unwrap();
        golden_file(&format!("{name}.fast.nft"), &fast);
        // Ours has no per-endpoint chains; kube-proxy's has one per reachable endpoint.
        assert!(!fast.contains("chain endpoint-"));
        assert_eq!(
            kube_proxy.matches("chain endpoint-").count(),
            eps.len().min(2)
        );
    }
}

#[test]
fn the_fast_layouts_hairpin_set_holds_the_pods_that_can_be_sent_back_to_themselves_here() {
    use dataplane::render::nft::{Layout, table};
    let mut objects = slice(&[
        ready("10.244.1.200", "lab-worker"),
        ready("10.244.2.192", "lab-worker2"),
        ready("10.244.3.7", "lab-worker3"),
    ]);
    // An endpoint whose node is not known may be here.
    objects.endpoints.as_mut_slice()[2].node_name = None;
    let svc = hello_world("ClusterIP", |_, _| {});
    let snapshot = Snapshot::from_objects(&[svc], &[objects]).unwrap();
    let t = table(&snapshot, &node(), Layout::Fast).unwrap();
    let (_, _, pairs) = t.sets.iter().find(|(n, _, _)| n == "hairpin").unwrap();
    assert_eq!(
        pairs,
        &["10.244.1.200 . 10.244.1.200", "10.244.3.7 . 10.244.3.7"]
    );
    // Every endpoint is still drawn, wherever it runs.
    let (_, _, slots) = t
        .maps
        .iter()
        .find(|(n, _, _)| n == "tcp-endpoints-0")
        .unwrap();
    assert_eq!(slots.len(), 3);

    // A NodePort with externalTrafficPolicy Local sends Pod traffic to the Cluster chain
    // unmasqueraded: a Pod on another node can reach this node's NodePort and be sent back
    // to itself, so every endpoint keeps its pair.
    let local = hello_world("NodePort", |spec, _| {
        spec.external_traffic_policy = Some("Local".into())
    });
    let snapshot = Snapshot::from_objects(&[local], &[slice(TWO)]).unwrap();
    let t = table(&snapshot, &node(), Layout::Fast).unwrap();
    let (_, _, pairs) = t.sets.iter().find(|(n, _, _)| n == "hairpin").unwrap();
    assert_eq!(
        pairs,
        &["10.244.1.200 . 10.244.1.200", "10.244.2.192 . 10.244.2.192"]
    );
}

#[test]
fn nftables_refuses_what_it_cannot_express() {
    let svc = hello_world("ClusterIP", |spec, _| {
        spec.session_affinity = Some("ClientIP".into())
    });
    let snapshot = Snapshot::from_objects(&[svc], &[slice(TWO)]).unwrap();
    let err =
        dataplane::render::nft::render(&snapshot, &node(), dataplane::render::nft::Layout::Fast)
            .unwrap_err();
    assert_eq!(
        err.to_string(),
        "default/hello-world: sessionAffinity ClientIP is not supported in nftables mode yet; use --mode iptables"
    );
}

#[test]
fn nft_partial_sync_touches_only_what_changed() {
    use dataplane::render::nft::{Layout, NftSync, diff};
    let other = {
        let mut s = hello_world("ClusterIP", |spec, _| {
            spec.cluster_ip = Some("10.96.0.20".into())
        });
        s.metadata.name = Some("other".into());
        s
    };
    let mut other_slice = slice(&[ready("10.244.2.7", "lab-worker2")]);
    other_slice
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("kubernetes.io/service-name".into(), "other".into());
    other_slice.metadata.name = Some("other-x".into());
    let snap = |eps: &[Ep]| {
        Snapshot::from_objects(
            &[hello_world("NodePort", |_, _| {}), other.clone()],
            &[slice(eps), other_slice.clone()],
        )
        .unwrap()
    };
    let mut sync = NftSync::new(Layout::Fast);
    sync.update(&snap(TWO), &node()).unwrap();
    let change = sync.update(&snap(&TWO[..1]), &node()).unwrap();
    let after = sync.table();
    // The endpoint left in slot 1 moves down to slot 0, as `mod 1` only draws 0.
    assert_eq!(
        change,
        "delete element ip services-lab tcp-endpoints-0 { 0 }\n\
         delete element ip services-lab tcp-endpoints-0 { 1 }\n\
         add element ip services-lab tcp-endpoints-0 { 0 : 10.244.2.192 . 8080 }\n\
         delete element ip services-lab hairpin { 10.244.1.200 . 10.244.1.200 }\n\
         flush chain ip services-lab svc-DZ6LTOHRG6HQWHYE\n\
         add rule ip services-lab svc-DZ6LTOHRG6HQWHYE ip daddr 10.111.34.177 tcp dport 8080 ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x00004000\n\
         add rule ip services-lab svc-DZ6LTOHRG6HQWHYE ct mark set numgen random mod 1\n\
         add rule ip services-lab svc-DZ6LTOHRG6HQWHYE meta l4proto tcp dnat ip addr . port to ct mark map @tcp-endpoints-0\n"
    );
    assert_eq!(diff(&after, &after), "");
}

#[test]
fn nft_fast_layout_changes_a_few_elements_when_one_of_a_thousand_endpoints_goes() {
    use dataplane::render::nft::{Layout, NftSync};
    let many: Vec<Ep> = (0..1000)
        .map(|i| {
            let ip: &'static str =
                Box::leak(format!("10.244.{}.{}", 1 + i / 200, 10 + i % 200).into_boxed_str());
            ready(ip, "lab-worker")
        })
        .collect();
    let snap = |eps: &[Ep]| {
        Snapshot::from_objects(&[hello_world("ClusterIP", |_, _| {})], &[slice(eps)]).unwrap()
    };
    let mut sync = NftSync::new(Layout::Fast);
    sync.update(&snap(&many), &node()).unwrap();
    let before = sync.table();
    let mut fewer = many.clone();
    let gone = fewer.remove(500);
    let change = sync.update(&snap(&fewer), &node()).unwrap();
    let after = sync.table();
    let map = "tcp-endpoints-0";
    let slot_of = |t: &dataplane::render::nft::NftTable, ep: &str| {
        let (_, _, elements) = t.maps.iter().find(|(n, _, _)| n == map).unwrap();
        elements
            .iter()
            .find(|(_, v)| v.as_str() == format!("{ep} . 8080"))
            .map(|(k, _)| k.clone())
    };
    let freed = slot_of(&before, gone.0).expect("the endpoint had a slot");
    let (_, _, old_elements) = before.maps.iter().find(|(n, _, _)| n == map).unwrap();
    let (_, last) = old_elements.iter().find(|(k, _)| k == "999").unwrap();
    let moved = last.clone();
    // The last slot's endpoint fills the freed slot; every other endpoint keeps its slot.
    assert_eq!(
        change
            .lines()
            .filter(|l| l.contains("element"))
            .collect::<Vec<_>>(),
        [
            format!("delete element ip services-lab {map} {{ {freed} }}"),
            format!("delete element ip services-lab {map} {{ 999 }}"),
            format!("add element ip services-lab {map} {{ {freed} : {moved} }}"),
            format!(
                "delete element ip services-lab hairpin {{ {} . {} }}",
                gone.0, gone.0
            ),
        ]
    );
    assert!(
        change.contains("ct mark set numgen random mod 999\n"),
        "{change}"
    );
    assert!(
        change.len() < 1000,
        "a removal rewrote {} bytes:\n{change}",
        change.len()
    );
    for ep in many
        .iter()
        .filter(|ep| ep.0 != gone.0 && format!("{} . 8080", ep.0) != moved)
    {
        assert_eq!(
            slot_of(&before, ep.0),
            slot_of(&after, ep.0),
            "{} moved",
            ep.0
        );
    }
    // One endpoint coming back takes the last slot.
    sync.update(&snap(&many), &node()).unwrap();
    let again = sync.table();
    assert_eq!(slot_of(&again, gone.0).as_deref(), Some("999"));
}

/// `name`'s Service (ClusterIP `ip`) and its slice of `endpoints`.
fn named(name: &str, ip: &str, endpoints: &[Ep]) -> (Service, EndpointSlice) {
    let mut svc = hello_world("NodePort", |spec, _| spec.cluster_ip = Some(ip.into()));
    svc.metadata.name = Some(name.into());
    svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = None;
    let mut s = slice(endpoints);
    s.metadata.name = Some(format!("{name}-x"));
    s.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("kubernetes.io/service-name".into(), name.into());
    (svc, s)
}

/// `t` with each draw rule written as the endpoints it draws, sorted, each lookup without
/// its map, and the endpoint maps left out: two tables that send the same traffic to the same
/// endpoints read the same, whatever their ids and slots. Panics if a rule draws a key its map lacks.
fn canonical(t: &dataplane::render::nft::NftTable) -> String {
    use dataplane::render::nft::Dispatch;
    use std::fmt::Write;
    let endpoint_map = dataplane::render::nft::is_endpoint_map;
    let elements: HashMap<(&str, u32), &str> = t
        .maps
        .iter()
        .filter(|(n, _, _)| endpoint_map(n))
        .flat_map(|(n, _, items)| {
            items
                .iter()
                .map(move |(k, v)| ((n.as_str(), k.parse().unwrap()), v.as_str()))
        })
        .collect();
    let mut out = String::new();
    for (name, _, items) in t.maps.iter().filter(|(n, _, _)| !endpoint_map(n)) {
        writeln!(out, "map {name} {items:?}").unwrap();
    }
    for set in &t.sets {
        writeln!(out, "set {set:?}").unwrap();
    }
    for (name, base, rules) in &t.chains {
        let dispatch = Dispatch::parse(rules.iter().map(String::as_str));
        for rule in rules {
            let rule = match (&dispatch, Dispatch::draw(rule)) {
                (Some(d), Some(_)) => {
                    let mut eps: Vec<&str> =
                        d.keys().map(|k| elements[&(d.map.as_str(), k)]).collect();
                    eps.sort_unstable();
                    format!("draws {eps:?}")
                }
                // The lookup's map depends on the chain's id.
                _ => match rule.split_once(" to ct mark map @") {
                    Some((head, _)) => format!("{head} to the drawn endpoint"),
                    None => rule.clone(),
                },
            };
            writeln!(out, "{name} {base:?} {rule}").unwrap();
        }
    }
    out
}

#[test]
fn nft_sync_sends_only_the_changed_services_and_agrees_with_whole_tables() {
    use dataplane::render::nft::{Layout, NftSync, diff, table};
    let a = ("10.244.1.10", "lab-worker");
    let b = ("10.244.2.20", "lab-worker2");
    let c = ("10.244.1.30", "lab-worker");
    let ep = |(ip, node): (&'static str, &'static str)| ready(ip, node);
    // Each step: the services there are, with their endpoints. Pod a backs both services
    // for a while, so its hairpin pair must stay until neither does.
    let steps: Vec<Vec<(&str, &str, Vec<Ep>)>> = vec![
        vec![("one", "10.96.0.1", vec![ep(a), ep(b)])],
        vec![
            ("one", "10.96.0.1", vec![ep(a), ep(b)]),
            ("two", "10.96.0.2", vec![ep(a)]),
        ],
        vec![
            ("one", "10.96.0.1", vec![ep(b), ep(c)]),
            ("two", "10.96.0.2", vec![ep(a)]),
        ],
        vec![
            ("one", "10.96.0.1", vec![ep(b), ep(c)]),
            ("two", "10.96.0.2", vec![]),
        ],
        vec![("one", "10.96.0.1", vec![ep(c)])],
        // A service that sorts first goes while a later one comes back.
        vec![("two", "10.96.0.2", vec![ep(a)])],
        vec![],
    ];
    for layout in [Layout::Fast, Layout::KubeProxy] {
        let mut sync = NftSync::new(layout);
        let mut previous: Option<dataplane::render::nft::NftTable> = None;
        for (i, step) in steps.iter().enumerate() {
            let objects: Vec<(Service, EndpointSlice)> = step
                .iter()
                .map(|(name, ip, eps)| named(name, ip, eps))
                .collect();
            let snap = Snapshot::from_objects(
                objects.iter().map(|(s, _)| s),
                objects.iter().map(|(_, e)| e),
            )
            .unwrap();
            let change = sync.update(&snap, &node()).unwrap();
            let whole = sync.table();
            assert_eq!(
                canonical(&whole),
                canonical(&table(&snap, &node(), layout).unwrap()),
                "{layout:?} step {i}"
            );
            match &previous {
                None => assert_eq!(
                    change,
                    whole.full(),
                    "{layout:?}: the first update is whole"
                ),
                Some(before) => {
                    let mut got: Vec<&str> = change.lines().collect();
                    let expected = diff(before, &whole);
                    let mut want: Vec<&str> = expected.lines().collect();
                    got.sort_unstable();
                    want.sort_unstable();
                    assert_eq!(got, want, "{layout:?} step {i}:\n{change}");
                }
            }
            assert_eq!(
                sync.update(&snap, &node()).unwrap(),
                "",
                "{layout:?} step {i} again"
            );
            previous = Some(whole);
        }
    }
}

#[test]
fn a_snapshot_cache_reuses_the_entries_of_services_whose_objects_did_not_change() {
    use dataplane::model::SnapshotCache;
    let versioned = |name: &str, ip: &str, eps: &[Ep], rv: &str| {
        let (mut svc, mut slice) = named(name, ip, eps);
        svc.metadata.resource_version = Some(format!("{rv}0"));
        slice.metadata.resource_version = Some(rv.to_owned());
        (svc, slice)
    };
    let build = |cache: &mut SnapshotCache, objects: &[(Service, EndpointSlice)]| {
        let services = objects.iter().map(|(s, _)| s);
        let slices = objects.iter().map(|(_, e)| e);
        let cached = cache.build(services.clone(), slices.clone()).unwrap();
        assert_eq!(cached, Snapshot::from_objects(services, slices).unwrap());
        cached
    };
    let a = ready("10.244.1.10", "lab-worker");
    let b = ready("10.244.2.20", "lab-worker2");
    let mut cache = SnapshotCache::default();
    let first = build(
        &mut cache,
        &[
            versioned("one", "10.96.0.1", &[a], "1"),
            versioned("two", "10.96.0.2", &[a], "2"),
        ],
    );
    // Service two's slice changes (a new resourceVersion); one's objects do not.
    let second = build(
        &mut cache,
        &[
            versioned("one", "10.96.0.1", &[a], "1"),
            versioned("two", "10.96.0.2", &[a, b], "3"),
        ],
    );
    let entry = |s: &Snapshot, i: usize| s.services.values().nth(i).unwrap().clone();
    assert!(std::sync::Arc::ptr_eq(
        &entry(&first, 0),
        &entry(&second, 0)
    ));
    assert!(!std::sync::Arc::ptr_eq(
        &entry(&first, 1),
        &entry(&second, 1)
    ));
    assert_eq!(entry(&second, 1).endpoints.len(), 2);
    // Objects without versions are never reused; gone services leave the snapshot.
    let third = build(&mut cache, &[named("one", "10.96.0.1", &[a])]);
    assert!(!std::sync::Arc::ptr_eq(
        &entry(&second, 0),
        &entry(&third, 0)
    ));
    assert_eq!(third.services.len(), 1);
}

#[test]
fn nft_sync_of_one_service_among_many_mentions_only_that_service() {
    use dataplane::render::nft::{Layout, NftSync};
    let objects: Vec<(Service, EndpointSlice)> = (0..500)
        .map(|i| {
            let ip: &'static str =
                Box::leak(format!("10.244.{}.{}", 1 + i / 200, 10 + i % 200).into_boxed_str());
            named(
                &format!("svc-{i}"),
                &format!("10.96.{}.{}", i / 250, 1 + i % 250),
                &[ready(ip, "lab-worker")],
            )
        })
        .collect();
    let snap = |objects: &[(Service, EndpointSlice)]| {
        Snapshot::from_objects(
            objects.iter().map(|(s, _)| s),
            objects.iter().map(|(_, e)| e),
        )
        .unwrap()
    };
    let mut sync = NftSync::new(Layout::Fast);
    sync.update(&snap(&objects), &node()).unwrap();
    let mut changed = objects.clone();
    changed[123].1.endpoints[0].addresses = vec!["10.244.9.9".into()];
    let change = sync.update(&snap(&changed), &node()).unwrap();
    let chain = dataplane::names::svc_chain("default/svc-123", dataplane::model::Protocol::Tcp)
        .replace("KUBE-SVC-", "svc-");
    // svc-123 is the 29th service in name order: id 28, keys from 28 << 16, in the map of
    // chains 24 to 31.
    assert!(
        sync.table()
            .chains
            .iter()
            .any(|(name, _, rules)| *name == chain
                && rules.ends_with(&[
                    "ct mark set numgen random mod 1 offset 1835008".to_owned(),
                    "meta l4proto tcp dnat ip addr . port to ct mark map @tcp-endpoints-3"
                        .to_owned()
                ])),
        "{chain} draws key 1835008"
    );
    assert_eq!(
        change.lines().collect::<Vec<_>>(),
        [
            "delete element ip services-lab tcp-endpoints-3 { 1835008 }".to_owned(),
            "add element ip services-lab tcp-endpoints-3 { 1835008 : 10.244.9.9 . 8080 }".into(),
            "delete element ip services-lab hairpin { 10.244.1.133 . 10.244.1.133 }".into(),
            "add element ip services-lab hairpin { 10.244.9.9 . 10.244.9.9 }".into(),
        ]
    );
}

/// Every path's steps, one line each, then its outcome and share.
fn paths_text(e: &dataplane::trace::Explanation) -> String {
    let mut out = String::new();
    for p in &e.paths {
        for s in &p.steps {
            out.push_str(&format!("{s}\n"));
        }
        out.push_str(&format!(
            "=> {:?} masquerade={} share={:.3}\n",
            p.outcome, p.masquerade, p.probability
        ));
    }
    out
}

#[test]
fn explain_records_the_path_of_a_clusterip_packet_from_the_node() {
    use dataplane::trace::explain;
    let rules = compiled(hello_world("NodePort", |_, _| {}), TWO);
    let p = packet(CLUSTER_IP, 8080, "172.18.0.3", Origin::Node);
    let e = explain(&rules, &node(), &p);
    assert_eq!(e.verdict, trace(&rules, &node(), &p));
    golden_file("explain_clusterip_from_node.txt", &paths_text(&e));
}

#[test]
fn explain_splits_new_connections_evenly_and_keeps_the_verdict_of_trace() {
    use dataplane::trace::{Outcome, explain};
    let three = &[
        ready("10.244.1.200", "lab-worker"),
        ready("10.244.2.190", "lab-worker2"),
        ready("10.244.2.192", "lab-worker2"),
    ];
    let rules = compiled(hello_world("LoadBalancer", |_, _| {}), three);
    let p = packet(LB_IP, 8080, "172.18.0.100", Origin::Inbound);
    let e = explain(&rules, &node(), &p);
    assert_eq!(e.verdict, trace(&rules, &node(), &p));
    assert_eq!(e.paths.len(), 3);
    for path in &e.paths {
        assert!((path.probability - 1.0 / 3.0).abs() < 1e-9, "{path:?}");
        assert!(path.masquerade);
        assert!(matches!(path.outcome, Outcome::Dnat(_)));
        let first = path.steps[0].to_string();
        assert_eq!(
            first,
            "nat PREROUTING \"kubernetes service portals\" -> KUBE-SERVICES"
        );
        let second = path.steps[1].to_string();
        assert!(
            second.starts_with(
                "KUBE-SERVICES rule 2 \"default/hello-world loadbalancer IP\" -> KUBE-EXT-"
            ),
            "{second}"
        );
    }
    golden_file("explain_loadbalancer_from_client.txt", &paths_text(&e));

    // A Pod reaching itself through the Service: the hairpin rule marks it.
    let p = packet(CLUSTER_IP, 8080, "10.244.1.200", Origin::Inbound);
    let e = explain(&rules, &node(), &p);
    let own = e
        .paths
        .iter()
        .find(|p| p.outcome == Outcome::Dnat("10.244.1.200:8080".parse().unwrap()))
        .unwrap();
    assert!(own.masquerade);
    assert!(
        e.paths.iter().filter(|p| p.masquerade).count() == 1,
        "only the hairpin path is masqueraded: {}",
        paths_text(&e)
    );
}

#[test]
fn explain_shows_the_filter_rule_that_refuses_and_the_fall_through() {
    use dataplane::trace::{Outcome, explain};
    let rules = compiled(hello_world("NodePort", |_, _| {}), &[]);
    let e = explain(
        &rules,
        &node(),
        &packet(CLUSTER_IP, 8080, "172.18.0.3", Origin::Node),
    );
    assert_eq!(e.verdict, Verdict::Reject);
    let text = paths_text(&e);
    assert_eq!(
        text,
        "filter OUTPUT \"kubernetes service portals\" -m conntrack --ctstate NEW -> KUBE-SERVICES\n\
         KUBE-SERVICES rule 1 \"default/hello-world has no endpoints\": REJECT\n\
         => Reject masquerade=false share=1.000\n"
    );
    let e = explain(
        &rules,
        &node(),
        &packet("172.18.0.3", 30583, "172.18.0.100", Origin::Inbound),
    );
    assert_eq!(e.verdict, Verdict::Reject);
    assert!(
        paths_text(&e).contains("filter INPUT"),
        "{}",
        paths_text(&e)
    );

    // Nothing to do with a service: the nat path falls through.
    let rules = compiled(hello_world("NodePort", |_, _| {}), TWO);
    let e = explain(
        &rules,
        &node(),
        &packet("10.96.9.9", 80, "172.18.0.3", Origin::Node),
    );
    assert_eq!(e.verdict, Verdict::Untouched);
    assert_eq!(e.paths.len(), 1);
    assert_eq!(e.paths[0].outcome, Outcome::Untouched);
}

#[test]
fn nft_sync_gives_back_the_ids_of_a_failed_update_and_a_full_sync_drops_emptied_maps() {
    use dataplane::render::nft::{Layout, NftSync};
    let a = ready("10.244.1.10", "lab-worker");
    let snap = |objects: &[(Service, EndpointSlice)]| {
        Snapshot::from_objects(
            objects.iter().map(|(s, _)| s),
            objects.iter().map(|(_, e)| e),
        )
        .unwrap()
    };
    let dispatch = |sync: &NftSync, chain_of: &str| -> String {
        let chain = dataplane::names::svc_chain(&format!("default/{chain_of}"), Protocol::Tcp)
            .replace("KUBE-SVC-", "svc-");
        let table = sync.table();
        let (_, _, rules) = table.chains.iter().find(|(n, _, _)| *n == chain).unwrap();
        rules[rules.len() - 2..].join("\n")
    };
    let one = named("one", "10.96.0.1", &[a]);
    let two = named("two", "10.96.0.2", &[a]);
    let mut sticky = named("zeta", "10.96.0.3", &[a]);
    sticky.0.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
    let mut sync = NftSync::new(Layout::Fast);
    sync.update(&snap(std::slice::from_ref(&one)), &node())
        .unwrap();
    // "two" takes id 1 before "zeta" (after it in name order) fails: the update changes
    // nothing, id 1 included.
    sync.update(&snap(&[one.clone(), two.clone(), sticky]), &node())
        .unwrap_err();
    sync.update(&snap(&[one.clone(), two.clone()]), &node())
        .unwrap();
    assert!(
        dispatch(&sync, "two").ends_with(
            "mod 1 offset 65536\nmeta l4proto tcp dnat ip addr . port to ct mark map @tcp-endpoints-0"
        ),
        "{}",
        dispatch(&sync, "two")
    );

    // A UDP service's map is emptied when it goes, and dropped by the next full sync.
    let mut udp = named("dns", "10.96.0.10", &[a]);
    udp.0.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
    udp.1.ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
    sync.update(&snap(&[one.clone(), two.clone(), udp]), &node())
        .unwrap();
    let change = sync.update(&snap(&[one, two]), &node()).unwrap();
    assert!(
        change.contains("delete element ip services-lab udp-endpoints-0 { 131072 }"),
        "{change}"
    );
    assert!(!change.contains("delete map"), "{change}");
    let maps = |t: &dataplane::render::nft::NftTable| -> Vec<String> {
        t.maps
            .iter()
            .map(|(n, _, _)| n.clone())
            .filter(|n| n.contains("-endpoints-"))
            .collect()
    };
    assert_eq!(maps(&sync.table()), ["tcp-endpoints-0", "udp-endpoints-0"]);
    assert_eq!(maps(&sync.whole()), ["tcp-endpoints-0"]);
    assert_eq!(maps(&sync.table()), ["tcp-endpoints-0"]);
}
