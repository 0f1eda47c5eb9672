//! Kernel mode: Pods served by wasm instances in their own network namespaces, Services routed
//! by the dataplane's iptables or nftables rules in each node's namespace, reached from a node
//! and from the client namespace outside the cluster, as in the tutorial. Needs root.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::{Lab, rows};

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello-world
spec:
  selector:
    matchLabels:
      app: hello-world
  replicas: 3
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
";

const WAIT: Duration = Duration::from_secs(30);

fn kernel_mode() -> bool {
    let root = rustix::process::geteuid().is_root();
    if root && support::kubectl_present() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI runs as root with kubectl; kernel mode must be tested there"
    );
    eprintln!("skipping: kernel mode needs root and kubectl");
    false
}

/// Runs `args` inside network namespace `ns`; it must succeed. Returns its stdout.
fn in_netns(ns: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?} in {ns}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether kubectl is there for a userspace-mode test (CI must have it).
fn kubectl_available() -> bool {
    if support::kubectl_present() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "kubectl is missing in CI");
    eprintln!("skipping: kubectl is not installed");
    false
}

/// Hostnames answering `count` GETs of `url` from `from` (`node` or `client`).
fn answers(lab: &Lab, url: &str, from: &str, count: u32) -> Result<BTreeMap<String, u32>, String> {
    let out = lab.labctl(&["curl", url, "--from", from, "--count", &count.to_string()]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut seen = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(host) = line.strip_prefix("Hostname: ") {
            *seen.entry(host.to_string()).or_default() += 1;
        }
    }
    Ok(seen)
}

/// Repeats `answers` until `check` holds, within `WAIT`.
fn until(
    lab: &Lab,
    url: &str,
    from: &str,
    count: u32,
    check: impl Fn(&BTreeMap<String, u32>) -> bool,
) -> BTreeMap<String, u32> {
    let started = Instant::now();
    loop {
        let last = answers(lab, url, from, count);
        if let Ok(seen) = &last
            && check(seen)
        {
            return seen.clone();
        }
        assert!(
            started.elapsed() < WAIT,
            "{url} from {from} never satisfied the check; last: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a request of [`stream_from_node`] got: when it started, and the answering Pod or
/// the error.
type Timed = (Instant, Result<String, String>);

/// Sends requests one after another from node namespace `node_ns` to `cluster_ip`, deletes
/// `victim` once 50 have been answered, and goes on until 200 more have started at least
/// 500 ms after the deletion was accepted (at most 50,000 requests or 30 s). Asserts that the
/// victim answered before its deletion and not in those last requests.
fn stream_from_node(lab: &Lab, node_ns: &str, cluster_ip: &str, victim: &str) -> Vec<Timed> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    const SETTLED: Duration = Duration::from_millis(500);
    let log: Arc<Mutex<Vec<Timed>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let target: std::net::SocketAddr = format!("{cluster_ip}:80").parse().unwrap();
    let ns = node_ns.to_string();
    let requester = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            labctl::network::in_namespace(&ns, move || {
                let started = Instant::now();
                for _ in 0..50_000 {
                    if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(30) {
                        break;
                    }
                    let at = Instant::now();
                    let timeout = Duration::from_secs(3);
                    let answer = std::net::TcpStream::connect_timeout(&target, timeout)
                        .and_then(|s| {
                            labctl::network::http_exchange(s, &target.to_string(), timeout)
                        })
                        .map_err(|e| e.to_string())
                        .and_then(|body| {
                            body.lines()
                                .find_map(|l| l.strip_prefix("Hostname: "))
                                .map(str::to_string)
                                .ok_or_else(|| format!("no Hostname in {body:?}"))
                        });
                    log.lock().unwrap().push((at, answer));
                }
                Ok(())
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while log.lock().unwrap().len() < 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    lab.ok(&["delete", "pod", victim, "--wait=false"]);
    let deleted = Instant::now();
    let settled = |log: &[Timed]| {
        log.iter()
            .filter(|(at, _)| *at >= deleted + SETTLED)
            .count()
    };
    while settled(&log.lock().unwrap()) < 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    requester
        .join()
        .unwrap()
        .expect("the request loop in the node");
    let log = log.lock().unwrap();
    assert!(
        settled(&log) >= 200,
        "only {} requests after the deletion settled",
        settled(&log)
    );
    let before: Vec<&str> = log
        .iter()
        .filter(|(at, _)| *at < deleted)
        .filter_map(|(_, a)| a.as_deref().ok())
        .collect();
    assert!(
        before.contains(&victim),
        "{victim} never answered before its deletion"
    );
    let late = log
        .iter()
        .filter(|(at, a)| *at >= deleted + SETTLED && a.as_deref() == Ok(victim))
        .count();
    assert_eq!(
        late, 0,
        "{victim} still answered {SETTLED:?} after its deletion"
    );
    log.clone()
}

fn pod_names(lab: &Lab) -> Vec<String> {
    rows(&lab.ok(&["get", "pods"]))
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

/// `labctl port-forward svc/hello-world :80` in the background: the child and its local port
/// (from its first line, `Forwarding from 127.0.0.1:PORT -> svc/hello-world (...)`).
fn port_forward(lab: &Lab) -> (std::process::Child, u16) {
    use std::io::BufRead;
    let mut child = lab
        .labctl_command(&["port-forward", "svc/hello-world", ":80"])
        .spawn()
        .expect("labctl port-forward");
    let mut first = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
    out.read_line(&mut first)
        .expect("reading port-forward's output");
    // Keep reading (`Handling connection for PORT` lines) until it exits.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let port = first
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    assert!(first.contains("-> svc/hello-world ("), "{first}");
    (child, port)
}

/// Hostnames answering `count` GETs of 127.0.0.1:`port` on the host.
fn host_answers(port: u16, count: usize) -> BTreeMap<String, u32> {
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let body = labctl::network::http_exchange(
            stream,
            &format!("127.0.0.1:{port}"),
            Duration::from_secs(5),
        )
        .expect("GET through the port-forward");
        let host = body
            .lines()
            .find_map(|l| l.strip_prefix("Hostname: "))
            .expect("a hello-app answer")
            .to_string();
        *seen.entry(host).or_default() += 1;
    }
    seen
}

fn stop(mut child: std::process::Child) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    );
    let _ = child.wait();
}

/// The tutorial's Service in front of the Deployment, as the checks see it.
struct Exposed {
    cluster_ip: String,
    external_ip: String,
    node_port: String,
}

/// Applies hello-world with `replicas` Pods, waits for its rollout, exposes it on port 80 as
/// `service_type` and returns the Service's `kubectl get svc` row once it has its addresses.
fn deploy_and_expose(lab: &Lab, replicas: u32, service_type: &str) -> Vec<String> {
    std::fs::write(
        lab.dir.path().join("deployment.yaml"),
        DEPLOYMENT.replace("replicas: 3", &format!("replicas: {replicas}")),
    )
    .unwrap();
    lab.ok(&["apply", "-f", "deployment.yaml"]);
    lab.ok(&[
        "rollout",
        "status",
        "deployment/hello-world",
        "--timeout=30s",
    ]);
    lab.ok(&[
        "expose",
        "deployment",
        "hello-world",
        "--port=80",
        "--target-port=8080",
        &format!("--type={service_type}"),
    ]);
    let svc = lab.until(&["get", "svc", "hello-world"], WAIT, |o| {
        !o.contains("<pending>")
    });
    rows(&svc).swap_remove(0)
}

/// Deploys hello-world (3 replicas), exposes it as a LoadBalancer and checks that every Pod
/// answers through each address: the ClusterIP from a node, the NodePort on the node's
/// loopback and on a node's IP from the client, the LoadBalancer IP from the client.
fn every_service_type_reaches_every_pod(lab: &Lab) -> Exposed {
    let row = &deploy_and_expose(lab, 3, "LoadBalancer");
    let (cluster_ip, external_ip) = (row[2].clone(), row[3].clone());
    let node_port = row[4]
        .trim_start_matches("80:")
        .trim_end_matches("/TCP")
        .to_string();
    let pods = pod_names(lab);
    assert_eq!(pods.len(), 3);

    // ClusterIP from a node: every Pod answers, and no Pod gets far less than its share.
    let seen = until(lab, &format!("http://{cluster_ip}"), "node", 90, |s| {
        s.len() == 3
    });
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), pods);
    assert!(
        seen.values().all(|n| *n >= 10),
        "90 requests over 3 Pods: {seen:?}"
    );

    // NodePort on the node's loopback, NodePort on a node's IP from outside, LoadBalancer from outside.
    until(
        lab,
        &format!("http://127.0.0.1:{node_port}"),
        "node",
        30,
        |s| s.len() == 3,
    );
    until(
        lab,
        &format!("http://172.18.0.4:{node_port}"),
        "client",
        30,
        |s| s.len() == 3,
    );
    until(lab, &format!("http://{external_ip}"), "client", 30, |s| {
        s.len() == 3
    });
    Exposed {
        cluster_ip,
        external_ip,
        node_port,
    }
}

#[test]
fn services_route_to_every_pod_from_nodes_and_the_client() {
    if !kernel_mode() {
        return;
    }
    let lab = Lab::start_named("route", &["--network", "kernel"]);
    let Exposed { cluster_ip, .. } = every_service_type_reaches_every_pod(&lab);

    // The version is the image's.
    let out = lab.labctl(&["curl", &format!("http://{cluster_ip}")]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with("Hello, world!\nVersion: 1.0.0\nHostname: hello-world-")
    );

    // The tutorial's listing, run on the node.
    let out = lab.labctl(&[
        "exec",
        "route-worker",
        "--",
        "iptables",
        "-t",
        "nat",
        "-L",
        "KUBE-SERVICES",
        "-n",
    ]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("KUBE-SVC-DZ6LTOHRG6HQWHYE")
            && listing.contains("default/hello-world cluster IP"),
        "{listing}"
    );

    // Pods send no IPv6 at all (no link-local address, so no DAD, MLD or router
    // solicitations for the node's bridge to flood to every other Pod).
    let pod_ns = std::fs::read_dir("/run/netns")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("slab-route-pod-"))
        .expect("a Pod namespace");
    let in_pod = |args: &[&str]| in_netns(&pod_ns, args);
    assert_eq!(in_pod(&["ip", "-6", "addr", "show", "dev", "eth0"]), "");
    let snmp6 = in_pod(&["cat", "/proc/net/snmp6"]);
    for counter in ["Ip6OutRequests", "Ip6OutMcastPkts"] {
        let sent = snmp6
            .lines()
            .find_map(|l| l.strip_prefix(counter))
            .map(str::trim);
        assert_eq!(sent, Some("0"), "{counter} in {pod_ns}: {snmp6}");
    }
    // A Pod that nothing has talked to is known to its node's bridge (else the first frame
    // to it would be flooded to every port): its port is written down as it is set up.
    std::fs::write(
        lab.dir.path().join("quiet.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: quiet}\nspec:\n  containers:\n  - {name: app, image: gcr.io/google-samples/hello-app:1.0}\n",
    )
    .unwrap();
    lab.ok(&["apply", "-f", "quiet.yaml"]);
    lab.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/quiet",
        "--timeout=30s",
    ]);
    let ip: std::net::Ipv4Addr = lab
        .ok(&["get", "pod", "quiet", "-o", "jsonpath={.status.podIP}"])
        .parse()
        .unwrap();
    let node = lab.ok(&["get", "pod", "quiet", "-o", "jsonpath={.spec.nodeName}"]);
    let forwarding = in_netns(
        &labctl::network::Names::new("route").node(&node),
        &["bridge", "fdb", "show", "br", "cni0"],
    );
    let mac = labctl::podnet::mac_text(ip);
    // A static entry on the Pod's port (a permanent one would be the bridge's own address).
    assert!(
        forwarding.lines().any(|l| l.starts_with(&mac)
            && l.contains(" dev vp")
            && l.ends_with(" master cni0 static")),
        "{node}'s bridge does not know {mac} ({ip}): {forwarding}"
    );
    lab.ok(&["delete", "pod", "quiet"]);

    exec_runs_in_the_pods_namespace(&lab, &pod_names(&lab)[0], &cluster_ip);
    an_image_changed_in_place_restarts_the_container(&lab, &pod_names(&lab)[1]);

    // Deleting a Pod under a steady stream of requests loses none: its endpoint leaves the
    // rules before it stops serving. The stream runs from a node until well after the
    // deletion, however fast the machine answers (bounded in count and time).
    let victim = pod_names(&lab)[0].clone();
    let worker = labctl::network::Names::new("route").node("route-worker");
    let answers = stream_from_node(&lab, &worker, &cluster_ip, &victim);
    let failures: Vec<&String> = answers.iter().filter_map(|a| a.1.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failures.len(),
        answers.len(),
        failures.first()
    );
    lab.until(&["get", "pods"], WAIT, |o| {
        !o.contains(&victim) && rows(o).len() == 3
    });

    // Scaling down takes the removed Pods out of the answers.
    lab.ok(&["scale", "deployment", "hello-world", "--replicas=1"]);
    let left = lab.until(&["get", "pods", "-o", "name"], WAIT, |o| {
        o.lines().count() == 1
    });
    let left = left.trim().trim_start_matches("pod/").to_string();
    until(&lab, &format!("http://{cluster_ip}"), "node", 20, |s| {
        s.len() == 1 && s.contains_key(&left)
    });

    // An image the lab cannot run stays in ErrImagePull, with an Event saying which can.
    lab.ok(&[
        "set",
        "image",
        "deployment/hello-world",
        "hello-world=nginx:1.27",
    ]);
    let pods = lab.until(&["get", "pods"], WAIT, |o| o.contains("ErrImagePull"));
    let bad = rows(&pods)
        .into_iter()
        .find(|r| r[2] == "ErrImagePull")
        .unwrap()[0]
        .clone();
    let describe = lab.ok(&["describe", "pod", &bad]);
    assert!(
        describe.contains("the lab runs its built-in hello-app component"),
        "{describe}"
    );
    // The old Pod keeps serving: a rollout never removes the last available Pod.
    until(&lab, &format!("http://{cluster_ip}"), "node", 5, |s| {
        s.contains_key(&left)
    });
}

#[test]
fn the_nftables_dataplane_serves_the_same_scenario() {
    if !kernel_mode() {
        return;
    }
    let lab = Lab::start_named("nftdp", &["--dataplane", "nftables"]);
    let status = String::from_utf8_lossy(&lab.labctl(&["status"]).stdout).into_owned();
    assert!(
        status.contains("running in kernel mode (dataplane nftables)"),
        "{status}"
    );
    let exposed = every_service_type_reaches_every_pod(&lab);
    a_pod_reaches_every_pod_through_the_service(&lab, &pod_names(&lab)[0], &exposed.cluster_ip);

    // The node's rules are one nftables table, and no iptables chains of ours.
    let out = lab.labctl(&["exec", "nftdp-worker", "--", "nft", "list", "ruleset"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("table ip services-lab")
            && listing.contains(&format!("{} . tcp . 80 : goto", exposed.cluster_ip))
            && listing.contains(&format!("tcp . {} : goto", exposed.node_port)),
        "{listing}"
    );
    assert!(!listing.contains("KUBE-SERVICES"), "{listing}");

    // `labctl rules` shows that table; --explain traces each address.
    let out = lab.labctl(&["rules"]);
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && rules.contains("table ip services-lab {"),
        "{rules}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lab.labctl(&["rules", "--explain", "svc/hello-world", "--from", "client"]);
    let explained = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && explained.contains(&format!("LoadBalancer {}:80/TCP", exposed.external_ip))
            && explained.matches("verdict: DNAT to one of").count() == 2,
        "{explained}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_killed_lab_comes_back_with_the_same_pods_and_leaves_nothing_after_down() {
    if !kernel_mode() {
        return;
    }
    let lab = Lab::start_named("crash", &["--network", "kernel"]);
    let cluster_ip = deploy_and_expose(&lab, 2, "ClusterIP")[2].clone();
    until(&lab, &format!("http://{cluster_ip}"), "node", 20, |s| {
        s.len() == 2
    });
    let before = lab.ok(&["get", "pods", "-o", "wide"]);

    lab.kill9();
    lab.up();
    let seen = until(&lab, &format!("http://{cluster_ip}"), "node", 20, |s| {
        s.len() == 2
    });
    let after = lab.ok(&["get", "pods", "-o", "wide"]);
    let ips = |t: &str| {
        rows(t)
            .into_iter()
            .map(|r| (r[0].clone(), r[5].clone(), r[6].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ips(&before),
        ips(&after),
        "same Pods, IPs and nodes after the restart"
    );
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), pod_names(&lab));

    let out = lab.labctl(&["down"]);
    assert!(out.status.success());
    let left: Vec<String> = labctl::network::existing("crash");
    assert!(left.is_empty(), "namespaces left after down: {left:?}");
}

#[test]
fn userspace_mode_serves_the_same_scenario_on_loopback() {
    if !kubectl_available() {
        return;
    }
    let lab = Lab::start_named("user", &["--network", "userspace"]);
    let status = lab.labctl(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("running in userspace mode"),
        "{status:?}"
    );
    // The rules it shows are the ones the proxy implements, not kernel rules.
    let out = lab.labctl(&["rules"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("these are the rules its proxy implements"),
        "{out:?}"
    );
    // A kernel dataplane and API-only mode contradict each other, and the error says which.
    let other = tempfile::tempdir().unwrap();
    let out = support::labctl(
        &[
            "up",
            "--name",
            "bad",
            "--network",
            "none",
            "--dataplane",
            "nftables",
        ],
        other.path(),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--network none and --dataplane nftables contradict each other"),
        "{out:?}"
    );
    let row = &deploy_and_expose(&lab, 3, "LoadBalancer");
    let node_port = row[4]
        .trim_start_matches("80:")
        .trim_end_matches("/TCP")
        .to_string();
    let pods = pod_names(&lab);
    // The same kubectl view as kernel mode: Pod IPs from the nodes' CIDRs.
    assert!(
        rows(&lab.ok(&["get", "pods", "-o", "wide"]))
            .iter()
            .all(|r| r[5].starts_with("10.244."))
    );
    let seen = until(&lab, &format!("http://{}", row[2]), "node", 90, |s| {
        s.len() == 3
    });
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), pods);
    until(
        &lab,
        &format!("http://127.0.0.1:{node_port}"),
        "node",
        30,
        |s| s.len() == 3,
    );
    until(&lab, &format!("http://{}", row[3]), "client", 30, |s| {
        s.len() == 3
    });
    // port-forward reaches the Service from the host in userspace mode too.
    let (child, port) = port_forward(&lab);
    assert_eq!(host_answers(port, 3).values().sum::<u32>(), 3);
    stop(child);
    lab.ok(&["scale", "deployment", "hello-world", "--replicas=1"]);
    let left = lab.until(&["get", "pods", "-o", "name"], WAIT, |o| {
        o.lines().count() == 1
    });
    let left = left.trim().trim_start_matches("pod/").to_string();
    until(&lab, &format!("http://{}", row[2]), "node", 20, |s| {
        s.len() == 1 && s.contains_key(&left)
    });
    // In userspace mode a command runs on the host, where the Services' twins are.
    let (code, out, err) = exec(&lab, &[&left, "--", "sh", "-c", "echo $HOSTNAME"], "");
    assert_eq!((code, out.trim()), (Some(0), left.as_str()), "{err}");
    let twin = row[2].replacen("10.", "127.", 1);
    let port = if rustix::process::geteuid().is_root() {
        80
    } else {
        10080
    };
    let get = format!(
        "exec 3<>/dev/tcp/{twin}/{port}; printf 'GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3"
    );
    let (code, out, err) = exec(&lab, &[&left, "--", "bash", "-c", &get], "");
    assert!(
        code == Some(0) && out.contains(&format!("Hostname: {left}")),
        "{out} {err}"
    );
    pod_logs_read_like_a_clusters(&lab, &left, &format!("http://{}", row[2]));
    // An address no Service has: the lab says what that means and where to look.
    let out = lab.labctl(&["curl", "http://10.96.255.254"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains(
                "nothing in the lab answers on 10.96.255.254:80: no Service, Pod or node has that address and port"
            ),
        "{out:?}"
    );
}

/// The tutorial's Service, asked from inside `pod` with `kubectl exec` (bash's /dev/tcp: no
/// client needed): every request answered within 2 s, by every one of the 3 Pods, the asking
/// one among them (its bridge port hairpins the connections DNATed back to it).
fn a_pod_reaches_every_pod_through_the_service(lab: &Lab, pod: &str, cluster_ip: &str) {
    let get = format!(
        "for i in $(seq 30); do timeout 2 bash -c 'exec 3<>/dev/tcp/{cluster_ip}/80; \
         printf \"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n\" >&3; cat <&3' | grep Hostname; done"
    );
    let (code, out, err) = exec(lab, &[pod, "--", "bash", "-c", &get], "");
    let answered: BTreeMap<&str, usize> = out.lines().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l.trim_start_matches("Hostname: ")).or_default() += 1;
        m
    });
    assert!(
        code == Some(0)
            && answered.values().sum::<usize>() == 30
            && answered.len() == 3
            && answered.contains_key(pod),
        "{answered:?} {err}"
    );
}

/// `kubectl exec` and its exit code, stdout and stderr kept apart.
fn exec(lab: &Lab, args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    use std::io::Write;
    let mut child = lab
        .kubectl_command(&[&["exec"], args].concat())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl exec` into `pod` (kernel mode): the command sees the Pod's network and host
/// name, reaches the Service from there, gets its input and a terminal, and kubectl exits
/// with its exit code; what it leaves running ends with it.
fn exec_runs_in_the_pods_namespace(lab: &Lab, pod: &str, cluster_ip: &str) {
    let ip = lab.ok(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]);
    let (code, out, _) = exec(
        lab,
        &[
            pod,
            "--",
            "sh",
            "-c",
            "hostname; ip -4 -o addr show dev eth0",
        ],
        "",
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.starts_with(&format!("{pod}\n")) && out.contains(&format!(" {ip}/24 ")),
        "{out}"
    );
    a_pod_reaches_every_pod_through_the_service(lab, pod, cluster_ip);
    let (code, out, err) = exec(
        lab,
        &[pod, "--", "sh", "-c", "echo out; echo err >&2; exit 3"],
        "",
    );
    assert_eq!((code, out.as_str()), (Some(3), "out\n"), "{err}");
    assert!(
        err.contains("err\n") && err.contains("command terminated with exit code 3"),
        "{err}"
    );
    let (code, out, _) = exec(
        lab,
        &["-i", pod, "--", "sh", "-c", "cat; echo done"],
        "line 1\nline 2\n",
    );
    assert_eq!((code, out.as_str()), (Some(0), "line 1\nline 2\ndone\n"));
    let (code, _, err) = exec(lab, &[pod, "--", "no-such-program"], "");
    assert!(
        code == Some(1)
            && err.contains(r#"exec: "no-such-program": executable file not found in $PATH"#),
        "{err}"
    );
    let (code, _, err) = exec(lab, &[pod, "-c", "other", "--", "true"], "");
    assert!(
        code == Some(1) && err.contains(&format!("container other is not valid for pod {pod}")),
        "{err}"
    );

    // -it, with kubectl on a terminal (script's): the command's streams are one terminal,
    // sized as kubectl's. script's input stays open, as a user's keyboard does.
    let mut script = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "stty cols 91 rows 27; KUBECONFIG={} kubectl exec -it {pod} -- sh -c 'tty; stty size; exit 4'",
            lab.kubeconfig().display()
        ))
        .arg("/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = script.stdin.take();
    let out = script.wait_with_output().unwrap();
    drop(stdin);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/dev/pts/") && text.contains("27 91"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(4), "{text}");

    // A command whose kubectl goes is killed, with everything it started (a job in a process
    // group of its own included): nothing is left in the Pod's namespace. Also while its
    // input is held up: kubectl sends without end and the command reads nothing.
    let uid = lab.ok(&["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"]);
    let pod_ns = labctl::network::Names::new(&lab.name).pod(&uid);
    let pids = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", &pod_ns])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .count()
    };
    let wait_for = |want: fn(usize) -> bool| {
        let started = Instant::now();
        while !want(pids()) && started.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(100));
        }
        pids()
    };
    let job = "perl -e 'setpgrp(0, 0); exec q(sleep), 300' & sleep 301";
    let kubectl = lab
        .kubectl_command(&["exec", pod, "--", "sh", "-c", job])
        .spawn()
        .unwrap();
    assert_eq!(wait_for(|n| n >= 3), 3, "sh and two sleeps in {pod_ns}");
    stop(kubectl);
    assert_eq!(
        wait_for(|n| n == 0),
        0,
        "processes left in {pod_ns} after kubectl went"
    );
    let mut kubectl = lab
        .kubectl_command(&["exec", "-i", pod, "--", "sleep", "302"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = kubectl.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        // Bounded: 64 MiB at most; it ends at once when kubectl goes.
        let chunk = vec![b'y'; 64 * 1024];
        for _ in 0..1024 {
            if input.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    assert_eq!(wait_for(|n| n >= 1), 1, "sleep in {pod_ns}");
    // Long enough for kubectl's input to fill every buffer on the way.
    std::thread::sleep(Duration::from_millis(500));
    stop(kubectl);
    feeder.join().unwrap();
    assert_eq!(
        wait_for(|n| n == 0),
        0,
        "the command ignoring its input lives on in {pod_ns} after kubectl went"
    );
}

/// `kubectl set image pod/...`: the kubelet restarts the container with the new image at the
/// Pod's address and counts it; an image the lab cannot run leaves it waiting, and the Pod
/// comes back with a good one.
fn an_image_changed_in_place_restarts_the_container(lab: &Lab, pod: &str) {
    let ip = lab.ok(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]);
    let status = "jsonpath={.status.containerStatuses[0].image} {.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}";
    let version = || {
        let out = lab.labctl(&["curl", &format!("http://{ip}:8080")]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(version(), "Version: 1.0.0");
    let set = |image: &str| {
        lab.ok(&[
            "set",
            "image",
            &format!("pod/{pod}"),
            &format!("hello-world={image}"),
        ])
    };
    set("gcr.io/google-samples/hello-app:2.0");
    lab.until(&["get", "pod", pod, "-o", status], WAIT, |o| {
        o == "gcr.io/google-samples/hello-app:2.0 1 true"
    });
    assert_eq!(version(), "Version: 2.0.0");
    let events = lab.ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod}"),
    ]);
    assert!(
        events.contains("Container hello-world definition changed, will be restarted"),
        "{events}"
    );
    set("nginx:1.27");
    lab.until(&["get", "pod", pod], WAIT, |o| o.contains("ErrImagePull"));
    // A container that never started is not counted as restarted.
    set("gcr.io/google-samples/hello-app:1.0");
    lab.until(&["get", "pod", pod, "-o", status], WAIT, |o| {
        o == "gcr.io/google-samples/hello-app:1.0 2 true"
    });
    assert_eq!(version(), "Version: 1.0.0");

    // A Pod that never ran, fixed in place, starts as if new: Ready, no restart counted.
    std::fs::write(
        lab.dir.path().join("late.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late}\nspec:\n  containers:\n  - {name: app, image: nginx:1.27}\n",
    )
    .unwrap();
    lab.ok(&["apply", "-f", "late.yaml"]);
    lab.until(&["get", "pod", "late"], WAIT, |o| {
        o.contains("ErrImagePull")
    });
    lab.ok(&[
        "set",
        "image",
        "pod/late",
        "app=gcr.io/google-samples/hello-app:2.0",
    ]);
    lab.until(&["get", "pod", "late", "-o", status], WAIT, |o| {
        o == "gcr.io/google-samples/hello-app:2.0 0 true"
    });
    let late_ip = lab.ok(&["get", "pod", "late", "-o", "jsonpath={.status.podIP}"]);
    let out = lab.labctl(&["curl", &format!("http://{late_ip}:8080")]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Version: 2.0.0\nHostname: late\n"),
        "{out:?}"
    );
    lab.ok(&["delete", "pod", "late"]);
}

/// `kubectl logs` of `pod`, the only Pod behind `url`, which has answered requests: its
/// lines, `--tail`, the errors kube-apiserver gives, and `-f` until the Pod goes.
fn pod_logs_read_like_a_clusters(lab: &Lab, pod: &str, url: &str) {
    // As the original's: the server's start, then a line per request.
    let log = lab.ok(&["logs", pod]);
    let mut lines = log.lines();
    assert!(
        lines
            .next()
            .is_some_and(|l| l.ends_with(" Server listening on port 8080")),
        "{log}"
    );
    assert!(
        log.lines().count() >= 20 && lines.all(|l| l.ends_with(" Serving request: /")),
        "{log}"
    );
    assert_eq!(lab.ok(&["logs", pod, "--tail=1"]).lines().count(), 1);
    let (ok, _, err) = lab.kubectl(&["logs", pod, "--previous"]);
    assert!(
        !ok && err.contains(&format!(
            r#"previous terminated container "hello-world" in pod "{pod}" not found"#
        )),
        "{err}"
    );
    let (ok, _, err) = lab.kubectl(&["logs", "nosuch"]);
    assert!(!ok && err.contains(r#"pods "nosuch" not found"#), "{err}");

    // -f: each line as it is written, until the Pod stops.
    let mut follower = lab
        .kubectl_command(&["logs", "-f", "--tail=0", pod])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (lines, followed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The follower may connect after a request, whose line --tail=0 leaves out: ask until
    // one arrives (at most 30 requests).
    let line = (0..30).find_map(|_| {
        answers(lab, url, "node", 1).unwrap();
        followed.recv_timeout(Duration::from_millis(500)).ok()
    });
    let line = line.expect("kubectl logs -f printed no line").unwrap();
    assert!(line.ends_with(" Serving request: /"), "{line}");
    lab.ok(&["delete", "pod", pod, "--wait=false"]);
    let started = Instant::now();
    let ended = loop {
        if let Some(status) = follower.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > WAIT {
            stop(follower);
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        ended.is_some(),
        "kubectl logs -f still ran {WAIT:?} after its Pod's deletion"
    );
}

#[test]
fn a_users_component_file_runs_as_a_pod_image() {
    if !kubectl_available() {
        return;
    }
    let lab = Lab::start_named("own", &["--network", "userspace"]);
    // A wasi:http component of the user's, and a file that is not one.
    let component = lab.dir.path().join("app.wasm");
    std::fs::write(&component, hello_app::wasm_host::BUILTIN_COMPONENT).unwrap();
    let not_wasm = lab.dir.path().join("notes.wasm");
    std::fs::write(&not_wasm, "not a component").unwrap();
    let manifest = |name: &str, image: &std::path::Path| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  containers:\n  - name: app\n    image: file://{}\n",
            image.display()
        )
    };
    for (name, image) in [("own", &component), ("broken", &not_wasm)] {
        let file = lab.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, manifest(name, image)).unwrap();
        lab.ok(&["apply", "-f", file.to_str().unwrap()]);
    }
    lab.ok(&["wait", "--for=condition=Ready", "pod/own", "--timeout=60s"]);
    let ip = lab.ok(&["get", "pod", "own", "-o", "jsonpath={.status.podIP}"]);
    let out = lab.labctl(&["curl", &format!("http://{ip}:8080/")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello, world!\nVersion: 1.0.0\nHostname: own\n",
        "{out:?}"
    );
    // The file that is not a component is explained where kubectl shows Pod failures.
    let pods = lab.until(&["get", "pods"], WAIT, |o| o.contains("ErrImagePull"));
    assert!(
        rows(&pods)
            .iter()
            .any(|r| r[0] == "broken" && r[2] == "ErrImagePull"),
        "{pods}"
    );
    let describe = lab.ok(&["describe", "pod", "broken"]);
    assert!(
        describe.contains("failed to compile the component") && describe.contains("notes.wasm"),
        "{describe}"
    );
    // A changed file is read again for the next Pod (here it no longer is a component); the
    // running Pod keeps serving what it started with.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&component, "rebuilt, badly").unwrap();
    let file = lab.dir.path().join("next.yaml");
    std::fs::write(&file, manifest("next", &component)).unwrap();
    lab.ok(&["apply", "-f", file.to_str().unwrap()]);
    let pods = lab.until(&["get", "pods"], WAIT, |o| {
        rows(o)
            .iter()
            .any(|r| r[0] == "next" && r[2] == "ErrImagePull")
    });
    assert!(
        rows(&pods)
            .iter()
            .any(|r| r[0] == "own" && r[2] == "Running"),
        "{pods}"
    );
    let out = lab.labctl(&["curl", &format!("http://{ip}:8080/")]);
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("Hostname: own\n"),
        "{out:?}"
    );
}

#[test]
fn a_pod_whose_server_dies_is_restarted_and_counted() {
    if !kernel_mode() {
        return;
    }
    let lab = Lab::start_named("restart", &["--network", "kernel"]);
    let cluster_ip = deploy_and_expose(&lab, 1, "ClusterIP")[2].clone();
    let pod = pod_names(&lab)[0].clone();
    until(&lab, &format!("http://{cluster_ip}"), "node", 1, |s| {
        s.contains_key(&pod)
    });
    let uid = lab.ok(&["get", "pod", &pod, "-o", "jsonpath={.metadata.uid}"]);
    let ns = labctl::network::Names::new("restart").pod(uid.trim());

    // Destroy the Pod's listening socket from inside its namespace: its server fails, as a
    // container's process dies.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "ss", "-K", "-t", "state", "listening"])
        .args(["sport", "=", ":8080"])
        .output()
        .expect("ss");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && (listed.contains(":8080") || listed.contains("http-alt")),
        "ss -K found no listener: {out:?}"
    );
    // While it is down the Pod is not Ready and its endpoint is not ready.
    let ready = |o: &str| o.trim().to_string();
    let down = lab.until(
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=hello-world",
            "-o",
            "jsonpath={.items[*].endpoints[*].conditions.ready}",
        ],
        Duration::from_secs(5),
        |o| ready(o) == "false",
    );
    assert_eq!(ready(&down), "false");
    // Then it is restarted: Ready again, RESTARTS 1, and it answers through the Service.
    let pods = lab.until(&["get", "pods"], WAIT, |o| {
        rows(o)
            .first()
            .is_some_and(|r| r[1] == "1/1" && r[2] == "Running" && r[3] == "1")
    });
    assert_eq!(rows(&pods)[0][0], pod, "the same Pod, restarted in place");
    let last = lab.ok(&[
        "get",
        "pod",
        &pod,
        "-o",
        "jsonpath={.status.containerStatuses[0].lastState.terminated.reason}",
    ]);
    assert_eq!(last.trim(), "Error");
    until(&lab, &format!("http://{cluster_ip}"), "node", 1, |s| {
        s.contains_key(&pod)
    });
}

#[test]
fn port_forward_brings_a_service_to_the_hosts_loopback() {
    if !kernel_mode() {
        return;
    }
    let lab = Lab::start_named("pfwd", &["--network", "kernel"]);
    // Before the Service exists: a clear error.
    let out = lab.labctl(&["port-forward", "svc/hello-world", ":80"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("services \"hello-world\" not found in namespace \"default\""),
        "{out:?}"
    );
    let cluster_ip = deploy_and_expose(&lab, 2, "NodePort")[2].clone();
    until(&lab, &format!("http://{cluster_ip}"), "node", 20, |s| {
        s.len() == 2
    });
    let (child, port) = port_forward(&lab);
    // Each connection goes through the node's Service rules, so both Pods answer.
    let started = Instant::now();
    let mut seen = host_answers(port, 20);
    while seen.len() < 2 && started.elapsed() < WAIT {
        seen = host_answers(port, 20);
    }
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), pod_names(&lab));
    // A local port in use: a clear error.
    let out = lab.labctl(&["port-forward", "svc/hello-world", &format!("{port}:80")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{port} is in use")),
        "{out:?}"
    );
    // A port the Service does not have.
    let out = lab.labctl(&["port-forward", "svc/hello-world", ":81"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no port 81; its ports are 80"),
        "{out:?}"
    );
    stop(child);
    // A lab that is not running.
    lab.labctl(&["down"]);
    let out = lab.labctl(&["port-forward", "svc/hello-world", ":80"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not running"),
        "{out:?}"
    );
}
