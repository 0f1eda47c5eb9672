//! Golden text of `labctl rules` for fixed objects (re-bless with `UPDATE_GOLDEN=1`).

use super::*;
use serde_json::json;

/// The tutorial's `hello-world` as a LoadBalancer Service (port 80 to 8080) with two Pods, one
/// per worker, and the lab's `default/kubernetes` (no endpoints in the lab).
fn objects() -> (Vec<Service>, Vec<EndpointSlice>) {
    let services = vec![
        serde_json::from_value(json!({
            "metadata": {"name": "hello-world", "namespace": "default"},
            "spec": {
                "type": "LoadBalancer", "clusterIP": "10.96.123.45",
                "selector": {"app": "hello-world"},
                "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30583}],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "172.18.255.200"}]}},
        }))
        .unwrap(),
        serde_json::from_value(json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]},
        }))
        .unwrap(),
    ];
    let slices = vec![
        serde_json::from_value(json!({
            "metadata": {
                "name": "hello-world-x7k2p", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "hello-world"},
            },
            "addressType": "IPv4",
            "ports": [{"port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.2"], "nodeName": "lab-worker", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.2"], "nodeName": "lab-worker2", "conditions": {"ready": true}},
            ],
        }))
        .unwrap(),
    ];
    (services, slices)
}

fn golden(file: &str, text: &str) {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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

fn lab() -> ClusterConfig {
    ClusterConfig::new("lab", 2)
}

#[test]
fn rules_of_the_first_worker_in_both_formats() {
    let (services, slices) = objects();
    let cluster = lab();
    let node = pick_node(&cluster, None).unwrap();
    assert_eq!(node.name, "lab-worker");
    let text = render(
        &services,
        &slices,
        node,
        Format::Iptables,
        Some(Dataplane::Iptables),
    )
    .unwrap();
    golden("rules_lab_worker.iptables", &text);
    let text = render(
        &services,
        &slices,
        node,
        Format::Nft,
        Some(Dataplane::Nftables),
    )
    .unwrap();
    golden("rules_lab_worker.nft", &text);
    // In userspace mode the same rules, said to be what the proxy implements.
    let text = render(
        &services,
        &slices,
        node,
        Format::of(Some(Dataplane::Userspace)),
        Some(Dataplane::Userspace),
    )
    .unwrap();
    assert!(text.contains("the rules its proxy implements"), "{text}");
    assert!(text.contains(":KUBE-SERVICES - [0:0]"));
}

#[test]
fn the_per_node_dataplane_and_labctl_rules_share_the_node_config() {
    let cluster = lab();
    let config = node_config(&cluster.nodes[1]);
    assert_eq!(config.node_name, "lab-worker");
    assert_eq!(config.node_ips, vec![Ipv4Addr::new(172, 18, 0, 3)]);
    assert_eq!(config.cluster_cidr, Some(default_cluster_cidr()));
}

fn request(from: From) -> ExplainRequest {
    ExplainRequest {
        namespace: "default".into(),
        name: "hello-world".into(),
        port: None,
        from,
    }
}

#[test]
fn explain_from_the_node_the_client_and_a_pod() {
    let (services, slices) = objects();
    let cluster = lab();
    let node = pick_node(&cluster, None).unwrap();
    for (from, file) in [
        (From::Node, "explain_hello_world_from_node.txt"),
        (From::Client, "explain_hello_world_from_client.txt"),
        (From::Pod, "explain_hello_world_from_pod.txt"),
    ] {
        let text = explain(
            &services,
            &slices,
            node,
            &request(from),
            Some(Dataplane::Iptables),
        )
        .unwrap();
        golden(file, &text);
    }
}

#[test]
fn explain_refusals_and_bad_requests() {
    let (services, slices) = objects();
    let cluster = lab();
    let node = pick_node(&cluster, None).unwrap();
    let mut req = request(From::Node);
    req.name = "kubernetes".into();
    let text = explain(&services, &slices, node, &req, None).unwrap();
    assert!(
        text.contains("ClusterIP 10.96.0.1:443/TCP\n")
            && text.contains("\"default/kubernetes:https has no endpoints\": REJECT")
            && text.contains("verdict: REJECT"),
        "{text}"
    );
    req.name = "nope".into();
    let err = explain(&services, &slices, node, &req, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no Service \"nope\" in namespace default; its Services are: hello-world, kubernetes"
    );
    let mut req = request(From::Node);
    req.port = Some("81".into());
    let err = explain(&services, &slices, node, &req, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Service default/hello-world has no port \"81\"; its ports are 80"
    );
    assert_eq!(parse_service("svc/hello-world").unwrap(), "hello-world");
    assert_eq!(parse_service("hello-world").unwrap(), "hello-world");
    assert!(parse_service("deploy/hello-world").is_err());
}
