//! The tutorial's commands through the real kubectl against the embedded lab cluster, with
//! their outputs checked column by column.

mod support;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use support::{Lab, rows};

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello-world
spec:
  selector:
    matchLabels:
      app: hello-world
  replicas: 1
  template:
    metadata:
      labels:
        app: hello-world
    spec:
      containers:
        - name: hello-world
          image: gcr.io/google-samples/hello-app:1.0
          ports:
            - containerPort: 8080
              protocol: TCP
";

const WAIT: Duration = Duration::from_secs(20);

fn require_kubectl() -> bool {
    if support::kubectl_present() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "kubectl is missing at {} in CI",
        support::KUBECTL
    );
    eprintln!("skipping: kubectl is not installed at {}", support::KUBECTL);
    false
}

fn in_cidr(ip: &str, net: &str) -> bool {
    let net: ipnet::Ipv4Net = net.parse().unwrap();
    ip.parse::<Ipv4Addr>().is_ok_and(|ip| net.contains(&ip))
}

fn pod_ips(lab: &Lab) -> Vec<String> {
    let out = lab.ok(&["get", "pods", "-o", "wide"]);
    let mut ips: Vec<String> = rows(&out).into_iter().map(|r| r[5].clone()).collect();
    ips.sort();
    ips
}

#[test]
fn the_tutorial_runs_verbatim() {
    if !require_kubectl() {
        return;
    }
    let lab = Lab::start();

    // Nodes as on the tutorial's kind cluster.
    let nodes = lab.ok(&["get", "nodes", "-o", "wide"]);
    assert!(
        nodes.starts_with("NAME ") && nodes.contains("INTERNAL-IP"),
        "{nodes}"
    );
    let node_rows = rows(&nodes);
    assert_eq!(
        node_rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["lab-control-plane", "lab-worker", "lab-worker2"]
    );
    assert_eq!(
        node_rows[0][1..3],
        ["Ready".to_string(), "control-plane".to_string()]
    );
    assert_eq!(node_rows[1][5], "172.18.0.3");

    // The Deployment.
    std::fs::write(lab.dir.path().join("deployment.yaml"), DEPLOYMENT).unwrap();
    assert_eq!(
        lab.ok(&["apply", "-f", "deployment.yaml"]).trim(),
        "deployment.apps/hello-world created"
    );
    assert_eq!(
        lab.ok(&["apply", "-f", "deployment.yaml"]).trim(),
        "deployment.apps/hello-world unchanged"
    );
    let deploys = lab.until(&["get", "deployments.apps"], WAIT, |o| o.contains(" 1/1 "));
    assert_eq!(
        deploys
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    let (ok, _, err) = lab.kubectl(&["create", "-f", "deployment.yaml"]);
    assert!(!ok);
    assert!(err.contains(r#"Error from server (AlreadyExists): error when creating "deployment.yaml": deployments.apps "hello-world" already exists"#), "{err}");

    assert_eq!(
        lab.ok(&["scale", "deployment", "hello-world", "--replicas=2"])
            .trim(),
        "deployment.apps/hello-world scaled"
    );
    let rollout = lab.ok(&[
        "rollout",
        "status",
        "deployment/hello-world",
        "--timeout=20s",
    ]);
    assert!(
        rollout
            .trim_end()
            .ends_with(r#"deployment "hello-world" successfully rolled out"#),
        "{rollout}"
    );

    let pods = lab.until(&["get", "pods", "-o", "wide"], WAIT, |o| {
        rows(o).len() == 2 && rows(o).iter().all(|r| r[2] == "Running")
    });
    let header: Vec<&str> = pods.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED",
            "NODE",
            "READINESS",
            "GATES"
        ]
    );
    let pod_rows = rows(&pods);
    let mut nodes_used: Vec<&str> = pod_rows.iter().map(|r| r[6].as_str()).collect();
    nodes_used.sort();
    assert_eq!(
        nodes_used,
        ["lab-worker", "lab-worker2"],
        "Pods spread over the workers:\n{pods}"
    );
    for r in &pod_rows {
        assert!(r[0].starts_with("hello-world-"), "{r:?}");
        assert_eq!(r[1], "1/1");
        let cidr = if r[6] == "lab-worker" {
            "10.244.1.0/24"
        } else {
            "10.244.2.0/24"
        };
        assert!(in_cidr(&r[5], cidr), "Pod IP {} outside {cidr}", r[5]);
    }
    let ips = pod_ips(&lab);

    // ClusterIP.
    assert_eq!(
        lab.ok(&[
            "expose",
            "deployment",
            "hello-world",
            "--port=80",
            "--target-port=8080"
        ])
        .trim(),
        "service/hello-world exposed"
    );
    let svcs = lab.ok(&["get", "svc"]);
    let svc_rows = rows(&svcs);
    assert_eq!(
        svcs.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert_eq!(
        svc_rows[0][..5],
        [
            "hello-world",
            "ClusterIP",
            &svc_rows[0][2],
            "<none>",
            "80/TCP"
        ]
        .map(String::from)
    );
    assert!(in_cidr(&svc_rows[0][2], "10.96.0.0/12"), "{svcs}");
    assert_eq!(
        svc_rows[1][..5],
        ["kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"].map(String::from)
    );
    let yaml = lab.ok(&["get", "svc", "hello-world", "-o", "yaml"]);
    for needle in [
        "kind: Service",
        &format!("clusterIP: {}", svc_rows[0][2]),
        "targetPort: 8080",
        "type: ClusterIP",
        "sessionAffinity: None",
        "uid: ",
    ] {
        assert!(yaml.contains(needle), "missing {needle:?} in:\n{yaml}");
    }
    let slices = lab.until(&["get", "endpointslices"], WAIT, |o| {
        ips.iter().all(|ip| o.contains(ip.as_str()))
    });
    assert!(
        slices.contains("IPv4") && slices.contains("8080"),
        "{slices}"
    );
    let describe = lab.ok(&["describe", "svc", "hello-world"]);
    let endpoints_line = describe
        .lines()
        .find(|l| l.starts_with("Endpoints:"))
        .unwrap_or_default()
        .to_string();
    for ip in &ips {
        assert!(endpoints_line.contains(&format!("{ip}:8080")), "{describe}");
    }
    assert_eq!(
        lab.ok(&["delete", "svc", "hello-world"]).trim(),
        r#"service "hello-world" deleted"#
    );
    let (ok, _, err) = lab.kubectl(&["get", "svc", "hello-world"]);
    assert!(
        !ok && err.contains(r#"Error from server (NotFound): services "hello-world" not found"#),
        "{err}"
    );

    // NodePort: the port comes from the container port, the nodePort from the allocator.
    lab.ok(&[
        "expose",
        "deployment",
        "hello-world",
        "--target-port=8080",
        "--type=NodePort",
    ]);
    let svcs = lab.ok(&["get", "svc", "hello-world"]);
    let port = &rows(&svcs)[0][4];
    let node_port: u16 = port
        .strip_prefix("8080:")
        .and_then(|p| p.strip_suffix("/TCP"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{svcs}"));
    assert!((30000..=32767).contains(&node_port));
    lab.ok(&["delete", "svc", "hello-world"]);

    // LoadBalancer: the lab's pool plays cloud-provider-kind.
    lab.ok(&[
        "expose",
        "deployment",
        "hello-world",
        "--port=80",
        "--target-port=8080",
        "--type=LoadBalancer",
    ]);
    let svcs = lab.until(&["get", "svc", "hello-world"], WAIT, |o| {
        !o.contains("<pending>")
    });
    let r = &rows(&svcs)[0];
    assert_eq!(r[1], "LoadBalancer");
    assert!(in_cidr(&r[3], "172.18.255.192/26"), "{svcs}");
    assert!(r[4].starts_with("80:") && r[4].ends_with("/TCP"), "{svcs}");
    let describe = lab.ok(&["describe", "svc", "hello-world"]);
    assert!(
        describe.contains(&format!("LoadBalancer Ingress:     {} (VIP)", r[3])),
        "{describe}"
    );
    assert!(describe.contains("EnsuredLoadBalancer"), "{describe}");
    lab.ok(&["delete", "svc", "hello-world"]);

    // A rolling update: a second ReplicaSet takes over, the first is scaled to zero.
    lab.ok(&[
        "set",
        "image",
        "deployment/hello-world",
        "hello-world=gcr.io/google-samples/hello-app:2.0",
    ]);
    let rollout = lab.ok(&[
        "rollout",
        "status",
        "deployment/hello-world",
        "--timeout=20s",
    ]);
    assert!(rollout.contains("successfully rolled out"), "{rollout}");
    let rs = lab.until(&["get", "rs"], WAIT, |o| {
        rows(o).len() == 2 && rows(o).iter().any(|r| r[1..4] == ["0", "0", "0"])
    });
    assert!(rows(&rs).iter().any(|r| r[1..4] == ["2", "2", "2"]), "{rs}");
    let images = lab.until(
        &[
            "get",
            "pods",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ],
        WAIT,
        |o| o.split_whitespace().count() == 2 && o.split_whitespace().all(|i| i.ends_with(":2.0")),
    );
    assert!(images.contains("hello-app:2.0"));

    // get pods -w shows the Pod that a scale adds.
    let mut watch = lab
        .kubectl_command(&["get", "pods", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(rx.recv_timeout(WAIT).expect("the watch lists the Pods"));
    }
    lab.ok(&["scale", "deployment", "hello-world", "--replicas=3"]);
    let deadline = std::time::Instant::now() + WAIT;
    let names_before: Vec<String> = seen
        .iter()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    let mut new_running = false;
    while !new_running && std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let name = line.split_whitespace().next().unwrap_or("").to_string();
            new_running = !names_before.contains(&name) && line.contains("Running");
            seen.push(line);
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        new_running,
        "no new Running Pod in the watch:\n{}",
        seen.join("\n")
    );

    // Deleting the Deployment takes its ReplicaSet and Pods with it.
    assert_eq!(
        lab.ok(&["delete", "deployment", "hello-world"]).trim(),
        r#"deployment.apps "hello-world" deleted"#
    );
    lab.until(&["get", "pods", "-o", "name"], WAIT, |o| {
        o.trim().is_empty()
    });
    assert!(
        lab.ok(&["get", "replicasets", "-o", "name"])
            .trim()
            .is_empty()
    );
}

#[test]
fn kubectl_errors_read_like_a_real_cluster() {
    if !require_kubectl() {
        return;
    }
    let lab = Lab::start();
    let (ok, _, err) = lab.kubectl(&["get", "deploy", "nosuch"]);
    assert!(
        !ok && err.contains(r#"Error from server (NotFound): deployments.apps "nosuch" not found"#),
        "{err}"
    );
    let service = |name: &str, node_port: u32| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: NodePort\n  selector:\n    app: web\n  ports:\n  - port: 80\n    nodePort: {node_port}\n"
        )
    };
    std::fs::write(lab.dir.path().join("low.yaml"), service("low", 80)).unwrap();
    let (ok, _, err) = lab.kubectl(&["apply", "-f", "low.yaml"]);
    assert!(!ok && err.contains("spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"), "{err}");
    std::fs::write(lab.dir.path().join("name.yaml"), service("Bad_Name", 30080)).unwrap();
    let (ok, _, err) = lab.kubectl(&["apply", "-f", "name.yaml"]);
    assert!(!ok && err.contains("Invalid value: \"Bad_Name\""), "{err}");
    assert_eq!(
        lab.ok(&["get", "svc", "-o", "name"]).trim(),
        "service/kubernetes",
        "nothing was stored"
    );
    std::fs::write(
        lab.dir.path().join("typo.yaml"),
        DEPLOYMENT.replace("  replicas: 1", "  replicass: 1"),
    )
    .unwrap();
    let (ok, _, err) = lab.kubectl(&["apply", "-f", "typo.yaml"]);
    assert!(
        !ok && err.contains("unknown field \"spec.replicass\""),
        "{err}"
    );
    assert!(
        lab.ok(&["get", "deploy", "-o", "name"]).trim().is_empty(),
        "nothing was stored"
    );
}
