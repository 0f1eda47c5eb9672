//! Pod benchmark, kernel mode (root): a lab of five workers runs the real `labctl` server; a
//! Deployment behind a ClusterIP Service is scaled from 0 to 1,000 replicas, and we measure
//!
//! - **serving**: from the scale request until (1) the Service's EndpointSlices list 1,000
//!   ready endpoints, (2) a worker's iptables (read back with `iptables-save` in its namespace)
//!   DNAT to all 1,000 Pod IPs, and (3) 1,000 requests through the ClusterIP from that worker's
//!   namespace are all answered `200` by a hello-app Pod. The clock stops when (3) finishes.
//!   Afterwards (untimed) every Pod IP is asked once directly, so every Pod is known to serve.
//! - **RSS per Pod**: the server process's VmRSS (from /proc) after every Pod has served,
//!   minus its VmRSS before the scale, divided by 1,000.
//! - **endpoint removal**: from a Pod's DELETE until its IP is gone from that worker's rules,
//!   over several deletions (one at a time; the Deployment replaces each).
//!
//! Traffic goes only to addresses inside the lab's own namespaces; every wait is bounded. The
//! last line is one JSON object of the headline figures. `PODS_BENCH_REPLICAS` (1000),
//! `PODS_BENCH_DELETIONS` (20) and `PODS_BENCH_DATAPLANE` (`iptables`, or `nftables`, whose
//! rules are read back with `nft list table`) change the run; `PODS_BENCH_LOG=<file>` keeps a
//! copy of the server's log. During deletions only the
//! Service's endpoints are watched: `nft monitor` in the worker's namespace announces each
//! transaction, after which the rules (its nftables endpoint map, or its `KUBE-SVC-` chain)
//! are read once; a removal is dated to the transaction that printed the IP leaving its
//! endpoint map where the monitor printed that, else to the last transaction before the
//! read that found the IP gone. Legacy (not nf_tables) iptables is polled back to back.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const LAB: &str = "podbench";
const WORKERS: &str = "5";
const LIMIT: Duration = Duration::from_secs(120);
const GOAL_SERVING_S: f64 = 5.0;
const GOAL_RSS_PER_POD_MIB: f64 = 1.0;
const GOAL_REMOVAL_MS: f64 = 100.0;
const NFT_TABLE: &str = labctl::rules::NFT_LAYOUT.table();

/// Whether `ip` is in the lab's Pod network (a listing also holds ClusterIPs and node IPs).
fn is_pod_ip(ip: &Ipv4Addr) -> bool {
    matches!(ip.octets(), [10, 244, _, _])
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn labctl(state: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_labctl"))
        .args(args)
        .env("LABCTL_STATE_DIR", state)
        .env("HOME", state)
        .env_remove("KUBECONFIG")
        .output()
        .context("running labctl")?;
    ensure!(
        out.status.success(),
        "labctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Takes the lab down (and its namespaces with it) however the benchmark ends.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        // The server's log goes with the lab; `PODS_BENCH_LOG=<file>` keeps a copy (with
        // `LABCTL_LOG=info,dataplane::watch=debug` it times every sync).
        if let Some(keep) = std::env::var_os("PODS_BENCH_LOG") {
            let _ = std::fs::copy(self.0.join(LAB).join("labctl.log"), keep);
        }
        let _ = labctl(self.0, &["down", "--name", LAB, "--purge"]);
    }
}

fn rss_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// What a poll of a node's rules lists.
#[derive(Clone, Copy, PartialEq)]
enum Listing {
    /// Every rule (the whole nftables table, or the nat table).
    All,
    /// Only the Service's endpoints: the keys its nftables chain draws from the shared
    /// endpoint map (the chain exists once it has endpoints) or its `KUBE-SVC-` chain, so that polling back to back takes less of the CPU
    /// the lab is measured on.
    HelloWorldEndpoints,
}

/// What `program` with `args` prints in namespace `node_ns`.
fn run(node_ns: &str, program: &'static str, args: Vec<String>) -> Result<String> {
    // Spawned from a thread inside the node's namespace (not `ip netns exec`, whose mount
    // namespace copy would add to what is measured).
    let out =
        labctl::network::in_namespace(node_ns, move || Command::new(program).args(args).output())
            .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} in {node_ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Pod IPs a node's rules DNAT to, read back from the kernel.
fn programmed(node_ns: &str, dataplane: &str, listing: Listing) -> Result<HashSet<Ipv4Addr>> {
    let hash =
        dataplane::names::service_hash("default/hello-world", dataplane::model::Protocol::Tcp);
    let (program, args): (&str, Vec<String>) = match (dataplane, listing) {
        ("nftables", Listing::All) => (
            "nft",
            vec!["list".into(), "table".into(), "ip".into(), NFT_TABLE.into()],
        ),
        ("nftables", Listing::HelloWorldEndpoints) => {
            // The chain's dispatch names the shared map and the keys it draws.
            let list = |what: &str, name: &str| {
                let args: Vec<String> = ["list", what, "ip", NFT_TABLE, name]
                    .map(String::from)
                    .into();
                run(node_ns, "nft", args)
            };
            let chain = list("chain", &format!("svc-{hash}"))?;
            let dispatch = dataplane::render::nft::Dispatch::find(&chain)
                .with_context(|| format!("svc-{hash} in {node_ns} has no dispatch rule"))?;
            let map = list("map", &dispatch.map)?;
            return Ok(dispatch
                .drawn(&map)
                .iter()
                .filter_map(|v| v.split(" . ").next()?.parse().ok())
                .collect());
        }
        (_, Listing::All) => ("iptables-save", vec!["-t".into(), "nat".into()]),
        (_, Listing::HelloWorldEndpoints) => (
            "iptables",
            vec![
                "-t".into(),
                "nat".into(),
                "-S".into(),
                format!("KUBE-SVC-{hash}"),
            ],
        ),
    };
    let text = run(node_ns, program, args)?;
    let addr = |d: &str| d.split(':').next()?.parse().ok();
    Ok(match (program, listing) {
        // The fast layout's endpoint maps hold `<pod ip> . <port>` elements.
        ("nft", _) => text
            .split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}')
            .filter_map(|word| word.parse().ok())
            .filter(is_pod_ip)
            .collect(),
        // KUBE-SVC- rules name their endpoint in a comment: "default/hello-world -> ip:port".
        (_, Listing::HelloWorldEndpoints) => text
            .lines()
            .filter_map(|l| l.split_once(" -> ").map(|(_, d)| d))
            .filter_map(addr)
            .collect(),
        _ => text
            .lines()
            .filter_map(|l| l.split_once("--to-destination ").map(|(_, d)| d))
            .filter_map(addr)
            .collect(),
    })
}

/// The transactions committed to a node's nftables, as `nft monitor` announces them, timed
/// when they arrive: the kernel announces each one as it commits, so the rules need to be
/// read back only after a change, not back to back (each read starts an `nft`, which would
/// be most of what is measured and take CPU from the lab).
struct Monitor {
    child: std::process::Child,
    generations: std::sync::mpsc::Receiver<Generation>,
}

/// One announced transaction: when it arrived, and the element changes it printed.
struct Generation {
    at: Instant,
    changes: Vec<String>,
}

impl Generation {
    /// Whether this transaction changed an endpoint map's element holding `ip` (`{ key :
    /// ip . port }` in a map named `<proto>-endpoints-<n>`), by deleting or adding it.
    fn touches(&self, verb: &str, ip: Ipv4Addr) -> bool {
        let value = format!(": {ip} . ");
        self.changes.iter().any(|l| {
            l.strip_prefix(verb)
                .and_then(|rest| rest.split_whitespace().nth(1))
                .is_some_and(|map| map.contains("-endpoints-"))
                && l.contains(&value)
        })
    }

    /// Whether this transaction took `ip` out of an endpoint map without putting it back
    /// under another key (the fast layout fills a gap with the last endpoint: a delete and
    /// an add of that one). nft 1.0.6's monitor does not reliably print the elements of
    /// sets made after it started, so a transaction that prints nothing about `ip` proves
    /// nothing; the rules are read back either way.
    fn takes_out(&self, ip: Ipv4Addr) -> bool {
        self.touches("delete element ip ", ip) && !self.touches("add element ip ", ip)
    }
}

impl Monitor {
    fn start(node_ns: &str) -> Result<Monitor> {
        let mut child = labctl::network::in_namespace(node_ns, || {
            Command::new("nft")
                .arg("monitor")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
        })
        .context("starting nft monitor")?;
        let stdout = child.stdout.take().context("nft monitor's output")?;
        let (tx, generations) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut changes = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !line.starts_with("# new generation") {
                    if line.contains(" element ip ") {
                        changes.push(line);
                    }
                    continue;
                }
                let at = Instant::now();
                let changes = std::mem::take(&mut changes);
                if tx.send(Generation { at, changes }).is_err() {
                    break;
                }
            }
        });
        Ok(Monitor { child, generations })
    }

    /// Forgets the transactions announced so far.
    fn drain(&self) {
        while self.generations.try_recv().is_ok() {}
    }

    /// When the transaction that took `ip` out of the node's rules (`still_there` reads them
    /// back) was committed: after each announced transaction the rules are read once, until
    /// a read finds `ip` gone. The removal is dated to the last transaction that printed
    /// `ip`'s element leaving an endpoint map, unless a later one printed it coming back;
    /// when none did, to the last transaction announced before that read ended (the right
    /// one, unless two came during one read: then the later, which is how a read that took
    /// 40 ms once made a 30 ms removal count 80). Returns the time, and whether an element
    /// change dated it.
    fn removed(
        &self,
        ip: Ipv4Addr,
        limit: Duration,
        mut still_there: impl FnMut() -> Result<bool>,
        reads: &mut Vec<f64>,
    ) -> Result<(Instant, bool)> {
        let deadline = Instant::now() + limit;
        let mut taken_out = None;
        let mut note = |g: &Generation| {
            if g.takes_out(ip) {
                taken_out = Some(g.at);
            } else if g.touches("add element ip ", ip) {
                taken_out = None;
            }
            g.at
        };
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let generation = self
                .generations
                .recv_timeout(wait)
                .map_err(|_| anyhow::anyhow!("{ip} still in the rules after {limit:?}"))?;
            let mut last = note(&generation);
            let read = Instant::now();
            let there = still_there()?;
            reads.push(ms(read.elapsed()));
            while let Ok(generation) = self.generations.try_recv() {
                last = note(&generation);
            }
            if !there {
                return Ok((taken_out.unwrap_or(last), taken_out.is_some()));
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ready endpoint addresses of `service` in its EndpointSlices.
async fn ready_endpoints(slices: &Api<EndpointSlice>, service: &str) -> Result<HashSet<String>> {
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await?;
    Ok(list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect())
}

/// `count` GETs of `target` from inside namespace `ns` on `threads` threads; returns the
/// distinct hostnames that answered, or the first failure.
fn requests_from(
    ns: &str,
    targets: Arc<Vec<SocketAddr>>,
    count: usize,
    threads: usize,
) -> Result<HashSet<String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..threads {
        let (ns, targets, next) = (ns.to_string(), targets.clone(), next.clone());
        handles.push(std::thread::spawn(move || -> Result<HashSet<String>> {
            // One thread per worker, entered into the namespace once: every socket it makes
            // lives there.
            labctl::network::in_namespace(&ns, move || {
                let mut seen = HashSet::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok(seen);
                    }
                    let target = targets[i % targets.len()];
                    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))
                        .map_err(|e| std::io::Error::other(format!("connect {target}: {e}")))?;
                    let body = labctl::network::http_exchange(
                        stream,
                        &target.to_string(),
                        Duration::from_secs(2),
                    )
                    .map_err(|e| std::io::Error::other(format!("GET {target}: {e}")))?;
                    let host = body
                        .lines()
                        .find_map(|l| l.strip_prefix("Hostname: "))
                        .unwrap_or("")
                        .to_string();
                    seen.insert(host);
                }
            })
            .map_err(anyhow::Error::from)
        }));
    }
    let mut seen = HashSet::new();
    for h in handles {
        seen.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("request thread panicked"))??,
        );
    }
    Ok(seen)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

/// Network namespaces the kernel holds, live or waiting to be freed (`/proc/slabinfo`).
fn kernel_namespaces() -> Option<u64> {
    let slabs = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let line = slabs.lines().find(|l| l.starts_with("net_namespace "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits (at most 60 s) until the kernel has freed the namespaces of earlier labs. It frees
/// them lazily: a run right after another (its 1,000 Pod namespaces just released) was seen
/// to hold ~1,000 dead namespaces that the kernel freed, under its rtnl lock, only once some
/// later namespace was deleted, in the middle of the next run's scale-up or deletions. A
/// namespace made and dropped here sets that cleanup going now.
fn settle_namespaces() {
    let Some(before) = kernel_namespaces() else {
        eprintln!("/proc/slabinfo unreadable: not waiting for earlier namespaces to be freed");
        return;
    };
    let kick = format!("slab-{LAB}-kick");
    if labctl::podnet::create(&kick).is_ok() {
        labctl::podnet::remove(&kick);
    }
    let started = Instant::now();
    let (mut last, mut steady_since) = (before, Instant::now());
    while started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
        let now = kernel_namespaces().unwrap_or(last);
        if now < last {
            steady_since = Instant::now();
        }
        last = now;
        if steady_since.elapsed() >= Duration::from_secs(2) {
            break;
        }
    }
    eprintln!(
        "kernel network namespaces: {before} before, {last} after waiting {:.1?} for earlier ones to be freed",
        started.elapsed()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: the pods benchmark runs the lab in kernel mode, which needs root");
        println!("{}", json!({"skipped": "needs root"}));
        return Ok(());
    }
    let replicas = env_usize("PODS_BENCH_REPLICAS", 1000);
    let deletions = env_usize("PODS_BENCH_DELETIONS", 20);
    let dataplane = std::env::var("PODS_BENCH_DATAPLANE").unwrap_or_else(|_| "iptables".into());
    ensure!(
        matches!(dataplane.as_str(), "iptables" | "nftables"),
        "PODS_BENCH_DATAPLANE={dataplane:?}: expected iptables or nftables"
    );
    let dir = tempfile::tempdir()?;
    let state = dir.path();
    // A lab of an earlier, interrupted run would hold the same namespace names.
    let _ = labctl(state, &["down", "--name", LAB]);
    labctl::network::teardown(LAB);
    settle_namespaces();
    labctl(
        state,
        &[
            "up",
            "--name",
            LAB,
            "--workers",
            WORKERS,
            "--network",
            "kernel",
            "--dataplane",
            &dataplane,
        ],
    )?;
    let _down = Down(state);
    let pid: i32 = std::fs::read_to_string(state.join(LAB).join("labctl.pid"))?
        .trim()
        .parse()?;
    let kubeconfig = std::fs::read_to_string(state.join(LAB).join("kubeconfig"))?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&kubeconfig)?,
        &Default::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let worker_ns = labctl::network::Names::new(LAB).node(&format!("{LAB}-worker"));

    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "hello-world"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "hello-world"}},
            "template": {"metadata": {"labels": {"app": "hello-world"}},
                "spec": {"containers": [{"name": "hello-world", "image": "gcr.io/google-samples/hello-app:1.0", "ports": [{"containerPort": 8080}]}]}},
        },
    }))?;
    deployments.create(&PostParams::default(), &deploy).await?;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "hello-world"},
        "spec": {"selector": {"app": "hello-world"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))?;
    let svc = services.create(&PostParams::default(), &svc).await?;
    let cluster_ip: Ipv4Addr = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("no clusterIP")?
        .parse()?;
    // Let the lab settle (the Service's empty slice synced everywhere) before the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss_kib(pid)?;
    eprintln!("lab up (pid {pid}), RSS {rss_before} KiB; scaling 0 -> {replicas}");

    // Scale and time the three stages.
    let started = Instant::now();
    deployments
        .patch_scale(
            "hello-world",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    let ips = loop {
        let ready = ready_endpoints(&slices, "hello-world").await?;
        if ready.len() == replicas {
            break ready;
        }
        ensure!(
            started.elapsed() < LIMIT,
            "only {} of {replicas} endpoints ready after {LIMIT:?}",
            ready.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let slices_ready = started.elapsed();
    eprintln!("{replicas} endpoints ready in the slices at {slices_ready:?}");
    let ips: HashSet<Ipv4Addr> = ips.iter().filter_map(|i| i.parse().ok()).collect();
    loop {
        let (ns, dp) = (worker_ns.clone(), dataplane.clone());
        let have =
            tokio::task::spawn_blocking(move || programmed(&ns, &dp, Listing::All)).await??;
        let missing = ips.difference(&have).count();
        if missing == 0 {
            break;
        }
        ensure!(
            started.elapsed() < LIMIT,
            "{missing} endpoints still not in {worker_ns}'s rules after {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rules_programmed = started.elapsed();
    eprintln!("all programmed in {worker_ns} at {rules_programmed:?}");
    let vip = Arc::new(vec![SocketAddr::from((cluster_ip, 80))]);
    let ns = worker_ns.clone();
    let through_vip =
        tokio::task::spawn_blocking(move || requests_from(&ns, vip, replicas, 8)).await??;
    let serving = started.elapsed();
    eprintln!(
        "{replicas} requests through {cluster_ip}:80 answered by {} Pods; serving at {serving:?}",
        through_vip.len()
    );

    // Untimed: every Pod answers on its own IP.
    let direct: Arc<Vec<SocketAddr>> =
        Arc::new(ips.iter().map(|ip| SocketAddr::from((*ip, 8080))).collect());
    let ns = worker_ns.clone();
    let n = direct.len();
    let every = tokio::task::spawn_blocking(move || requests_from(&ns, direct, n, 8)).await??;
    ensure!(
        every.len() == replicas,
        "{} of {replicas} Pods answered",
        every.len()
    );
    let rss_after = rss_kib(pid)?;
    let rss_per_pod_mib = (rss_after.saturating_sub(rss_before)) as f64 / 1024.0 / replicas as f64;
    eprintln!(
        "all {replicas} Pods answered directly; RSS {rss_after} KiB ({rss_per_pod_mib:.3} MiB per Pod)"
    );

    // Removals are timed on a settled lab: every node's rules hold every Pod first (the
    // other nodes may still be catching up with the scale when the first worker has).
    let names = labctl::network::Names::new(LAB);
    for node in labctl::cluster::ClusterConfig::new(LAB, WORKERS.parse()?).nodes {
        let node = node.name;
        let ns = names.node(&node);
        let settled = Instant::now();
        loop {
            let (n, dp) = (ns.clone(), dataplane.clone());
            let have = tokio::task::spawn_blocking(move || {
                programmed(&n, &dp, Listing::HelloWorldEndpoints)
            })
            .await??;
            if ips.iter().all(|ip| have.contains(ip)) {
                break;
            }
            ensure!(
                settled.elapsed() < LIMIT,
                "{node}'s rules still miss Pods after {LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Deletions, one at a time: from DELETE until the IP leaves the worker's rules. The
    // kernel's announcements date them when the rules live in nf_tables (nftables, and
    // iptables of the nf_tables flavour, `iptables -V`); legacy iptables is polled.
    let on_nf_tables = dataplane == "nftables"
        || Command::new("iptables")
            .arg("-V")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("nf_tables"));
    let monitor = if on_nf_tables {
        Some(Monitor::start(&worker_ns)?)
    } else {
        None
    };
    let mut removals = Vec::new();
    let mut polls = Vec::new();
    let mut reads = Vec::new();
    let mut dated_by_element = 0;
    let list = pods
        .list(&ListParams::default().labels("app=hello-world"))
        .await?;
    for pod in list.items.iter().take(deletions) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ip: Ipv4Addr = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .context("a Pod without an IP")?
            .parse()?;
        if let Some(m) = &monitor {
            m.drain();
        }
        let t = Instant::now();
        pods.delete(&name, &DeleteParams::default()).await?;
        if let Some(m) = &monitor {
            let (at, by_element) = tokio::task::block_in_place(|| {
                m.removed(
                    ip,
                    Duration::from_secs(10),
                    || {
                        Ok(
                            programmed(&worker_ns, &dataplane, Listing::HelloWorldEndpoints)?
                                .contains(&ip),
                        )
                    },
                    &mut reads,
                )
            })
            .with_context(|| format!("{name} was deleted"))?;
            removals.push(ms(at.duration_since(t)));
            dated_by_element += usize::from(by_element);
        } else {
            loop {
                let (ns, dp) = (worker_ns.clone(), dataplane.clone());
                let poll = Instant::now();
                let have = tokio::task::spawn_blocking(move || {
                    programmed(&ns, &dp, Listing::HelloWorldEndpoints)
                })
                .await??;
                polls.push(ms(poll.elapsed()));
                if !have.contains(&ip) {
                    break;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    bail!("{name} ({ip}) still in the rules 10 s after its deletion");
                }
            }
            removals.push(ms(t.elapsed()));
        }
        // Let the replacement start and the terminating Pod go before the next one.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(monitor);
    eprintln!("endpoint removal (ms, in order of deletion): {removals:?}");
    removals.sort_by(f64::total_cmp);
    let removal_p50 = percentile(&removals, 0.5);
    let removal_p99 = percentile(&removals, 0.99);
    polls.sort_by(f64::total_cmp);
    // A polled removal is seen at the end of the first poll that starts after it, so each
    // figure includes up to about two polls.
    let poll_p50 = (!polls.is_empty()).then(|| percentile(&polls, 0.5));
    match poll_p50 {
        Some(p) => eprintln!("one poll of the rules: p50 {p} ms ({} polls)", polls.len()),
        None => eprintln!(
            "removals dated by nft monitor ({dated_by_element} by the transaction that printed the IP leaving its map, the rest by the last one before the read); the rules were read {} times, once after each transaction",
            reads.len()
        ),
    }

    let serving_s = (serving.as_secs_f64() * 1000.0).round() / 1000.0;
    let figures = json!({
        "replicas": replicas,
        "workers": WORKERS.parse::<u32>()?,
        "dataplane": dataplane,
        "slices_ready_s": (slices_ready.as_secs_f64() * 1000.0).round() / 1000.0,
        "rules_programmed_s": (rules_programmed.as_secs_f64() * 1000.0).round() / 1000.0,
        "serving_s": serving_s,
        "pods_answering_through_cluster_ip": through_vip.len(),
        "rss_before_mib": rss_before / 1024,
        "rss_after_mib": rss_after / 1024,
        "rss_per_pod_mib": (rss_per_pod_mib * 1000.0).round() / 1000.0,
        "removal_p50_ms": removal_p50,
        "removal_p99_ms": removal_p99,
        "deletions": removals.len(),
        "removal_poll_p50_ms": poll_p50,
        "removal_timed_by": if poll_p50.is_some() { "polling" } else { "nft monitor" },
        "removals_dated_by_element": dated_by_element,
        "goal_serving_s": GOAL_SERVING_S,
        "goal_rss_per_pod_mib": GOAL_RSS_PER_POD_MIB,
        "goal_removal_ms": GOAL_REMOVAL_MS,
        "serving_goal_met": serving_s < GOAL_SERVING_S,
        "rss_goal_met": rss_per_pod_mib < GOAL_RSS_PER_POD_MIB,
        "removal_goal_met": removal_p99 < GOAL_REMOVAL_MS,
    });
    println!("{figures}");
    Ok(())
}
