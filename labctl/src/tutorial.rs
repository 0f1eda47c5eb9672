//! `labctl tutorial`: the Services tutorial from start to end on a fresh lab. Each step prints
//! the commands a user would type with their real output, in the tutorial's order, then
//! verdicts on what the output shows. The run stops at the first check that does not hold.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use dataplane::model::Protocol;
use dataplane::names;
use dataplane::render::nft::Dispatch;
use serde_json::Value;

use crate::console::{self, Console};
use crate::kind;
use crate::lab::{self, Dataplane, LabDir, Mode, NetworkMode};
pub use crate::provider::Provider;
use crate::reach::{Origin, Reach};
use crate::verify;

/// The tutorial's Deployment, verbatim.
pub const DEPLOYMENT_YAML: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello-world
spec:
  replicas: 1
  selector:
    matchLabels:
      app: hello-world
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

/// The tutorial's steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Step {
    /// A fresh lab cluster and its nodes.
    Cluster,
    /// The hello-world Deployment, scaled to 2.
    Deployment,
    /// A ClusterIP Service, curls from a node, the KUBE-SERVICES / KUBE-SVC rules.
    Clusterip,
    /// A NodePort Service, curl on 127.0.0.1:<nodePort>, the KUBE-NODEPORTS / KUBE-EXT rules.
    Nodeport,
    /// A LoadBalancer Service reached from outside the cluster.
    Loadbalancer,
    /// Delete what the tutorial made.
    Cleanup,
}

const STEPS: [(Step, &str); 6] = [
    (Step::Cluster, "The lab cluster"),
    (Step::Deployment, "The hello-world Deployment"),
    (Step::Clusterip, "ClusterIP (the default)"),
    (Step::Nodeport, "NodePort"),
    (Step::Loadbalancer, "LoadBalancer"),
    (Step::Cleanup, "Cleanup"),
];

/// What `labctl tutorial` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The tutorial's lab (made fresh; a previous lab of that name is removed first).
    pub dir: LabDir,
    /// Where labs keep their state (passed to the lab's server).
    pub base: PathBuf,
    /// Worker nodes.
    pub workers: usize,
    /// Where Pods run.
    pub network: NetworkMode,
    /// What programs Services in kernel mode.
    pub dataplane: Dataplane,
    /// Leave the lab up at the end.
    pub keep: bool,
    /// Stop after this step.
    pub stop_after: Option<Step>,
    /// Requests per load-distribution check.
    pub requests: u32,
    /// The uniformity test's significance level.
    pub significance: f64,
    /// Which cluster.
    pub provider: Provider,
    /// With `Provider::Kubeconfig`: the kubeconfig (else kubectl's default) and context.
    pub kubeconfig: Option<PathBuf>,
    /// With `Provider::Kubeconfig`: the context (else the current one).
    pub context: Option<String>,
}

/// Runs the tutorial; `Ok` only if every check held.
pub fn run(options: &Options) -> Result<()> {
    let started = Instant::now();
    let mut t = Tutorial::new(options)?;
    let result = t.steps();
    let cleanup = t.teardown();
    let elapsed = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => t.console.summary(
            true,
            &format!(
                "Tutorial passed: {} checks held{} in {elapsed:.1} s.",
                t.checks,
                match t.skipped {
                    0 => String::new(),
                    n => format!(", {n} skipped (see SKIP above)"),
                }
            ),
        ),
        Err(e) => t.console.summary(
            false,
            &format!(
                "Tutorial failed after {} checks ({elapsed:.1} s): {e:#}",
                t.checks
            ),
        ),
    }
    result.and(cleanup)
}

struct Tutorial<'a> {
    options: &'a Options,
    console: Console,
    kubectl: Kubectl,
    checks: usize,
    skipped: usize,
    /// Filled once the cluster is up.
    lab: Option<Running>,
}

/// What the cluster offers the tutorial.
struct Running {
    /// Sends from a node (and runs commands there), where the provider gives node access.
    node: Option<Reach>,
    /// Sends from outside the cluster.
    client: Reach,
    /// The kernel's rules can be listed on the node; otherwise why not.
    rules: Result<Dataplane, String>,
    /// Prompts name where commands run (`tutorial-worker$`).
    prompts: bool,
    /// LoadBalancer addresses come from this pool (the embedded lab's).
    pool: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Nodes the cluster should have, when known.
    nodes: Option<usize>,
    /// How long a LoadBalancer address may take to appear.
    lb_wait: Duration,
}

/// The hello-world Pods as the API shows them.
#[derive(Debug, Clone)]
struct Pod {
    name: String,
    ip: Ipv4Addr,
    node: String,
}

impl<'a> Tutorial<'a> {
    fn new(options: &'a Options) -> Result<Tutorial<'a>> {
        // kubectl runs in the lab's directory, where deployment.yaml is written.
        std::fs::create_dir_all(&options.dir.root)
            .with_context(|| format!("creating {}", options.dir.root.display()))?;
        Ok(Tutorial {
            options,
            console: Console::default(),
            kubectl: Kubectl::find(options)?,
            checks: 0,
            skipped: 0,
            lab: None,
        })
    }

    /// Takes down what the tutorial brought up, unless asked to keep it.
    fn teardown(&mut self) -> Result<()> {
        let o = self.options;
        if o.keep {
            let how = match o.provider {
                Provider::Embedded => format!(
                    "export KUBECONFIG={}; labctl commands take `--name {}` (`{} svc/hello-world`); `labctl down --name {} --purge` removes it",
                    o.dir.kubeconfig_path().display(),
                    o.dir.name,
                    lab::command_for("verify", &o.dir.name),
                    o.dir.name
                ),
                Provider::Kind => format!(
                    "export KUBECONFIG={}; `kind delete cluster --name {}` removes it",
                    o.dir.kubeconfig_path().display(),
                    o.dir.name
                ),
                Provider::Kubeconfig => {
                    "its hello-world objects are left in namespace default".into()
                }
            };
            self.console
                .note(&format!("The cluster stays up (--keep): {how}."));
            return Ok(());
        }
        match o.provider {
            Provider::Embedded => lab::down(&o.dir, true, &lab::user_kubeconfig())
                .map(|_| ())
                .context("removing the tutorial's lab"),
            // Nothing to take down when the cluster was never made (kind cleans up a failed
            // create), but the lab's directory, if nothing was written to it.
            Provider::Kind if self.lab.is_none() => {
                let _ = std::fs::remove_dir(&o.dir.root);
                Ok(())
            }
            Provider::Kind => kind::down(&o.dir),
            Provider::Kubeconfig => {
                // Leave the user's cluster as it was found, also after a failure or --step.
                let _ =
                    self.kubectl
                        .run(&["delete", "service", "hello-world", "--ignore-not-found"]);
                let _ = self.kubectl.run(&[
                    "delete",
                    "deployment",
                    "hello-world",
                    "--ignore-not-found",
                ]);
                Ok(())
            }
        }
    }

    /// Records a check that could not be made here, and why.
    fn skip(&mut self, what: &str, why: &str) {
        self.skipped += 1;
        self.console.note(&format!("SKIP {what}: {why}"));
    }

    fn steps(&mut self) -> Result<()> {
        for (i, (step, title)) in STEPS.iter().enumerate() {
            self.console.step(i + 1, STEPS.len(), title);
            match step {
                Step::Cluster => self.cluster(),
                Step::Deployment => self.deployment(),
                Step::Clusterip => self.cluster_ip(),
                Step::Nodeport => self.node_port(),
                Step::Loadbalancer => self.load_balancer(),
                Step::Cleanup => self.cleanup(),
            }
            .with_context(|| format!("step {} ({title})", i + 1))?;
            if self.options.stop_after == Some(*step) {
                self.console
                    .note(&format!("Stopping after step {} as asked (--step).", i + 1));
                break;
            }
        }
        Ok(())
    }

    /// The tutorial's cleanup at the end of a Service's step, except when the run stops
    /// there and keeps the cluster: then the Service is what is left to explore.
    fn delete_service(&mut self, step: Step) -> Result<()> {
        if self.options.keep && self.options.stop_after == Some(step) {
            self.console.note(
                "svc/hello-world is kept for exploring (--keep with --step); the tutorial deletes it here",
            );
            return Ok(());
        }
        self.console.note("cleanup and delete the service");
        self.kubectl(&["delete", "svc", "hello-world"])?;
        Ok(())
    }

    fn running(&self) -> &Running {
        self.lab.as_ref().expect("the cluster step ran first")
    }

    /// Records a check: PASS, or FAIL and the error that ends the run.
    fn check(&mut self, held: bool, what: &str, otherwise: impl FnOnce() -> String) -> Result<()> {
        if held {
            self.checks += 1;
            self.console.pass(what);
            Ok(())
        } else {
            let why = otherwise();
            self.console.fail(&format!("{what}: {why}"));
            Err(anyhow!("{what}: {why}"))
        }
    }

    /// Prints and runs a kubectl command; its stdout.
    fn kubectl(&mut self, args: &[&str]) -> Result<String> {
        self.console
            .command(None, &format!("kubectl {}", args.join(" ")));
        let out = self.kubectl.run(args)?;
        self.console.output(&out);
        Ok(out)
    }

    fn cluster(&mut self) -> Result<()> {
        match self.options.provider {
            Provider::Embedded => self.embedded_cluster()?,
            Provider::Kind => self.kind_cluster()?,
            Provider::Kubeconfig => self.existing_cluster()?,
        }
        let nodes = self.kubectl(&["get", "nodes", "-o", "wide"])?;
        let listed = rows(&nodes).count();
        let ready = rows(&nodes).filter(|r| r.get(1) == Some(&"Ready")).count();
        let expected = self.running().nodes.unwrap_or(listed);
        self.check(
            listed > 0 && listed == expected && ready == expected,
            &format!("{expected} nodes are Ready"),
            || format!("{ready} of {listed} are (expected {expected})"),
        )
    }

    fn embedded_cluster(&mut self) -> Result<()> {
        let o = self.options;
        if o.dir.config()?.is_some() {
            self.console.note(&format!(
                "Removing the previous lab {:?} so that the tutorial starts fresh.",
                o.dir.name
            ));
            lab::down(&o.dir, true, &lab::user_kubeconfig())?;
        }
        self.console
            .command(None, &format!("labctl up --name {}", o.dir.name));
        let (config, _) = o.dir.create(o.workers, None, o.network, o.dataplane)?;
        let spin = console::spinner("starting the lab cluster");
        let pid = lab::start_background(&o.dir, &o.base, Duration::from_secs(60));
        spin.finish_and_clear();
        let pid = pid?;
        let mode = lab::running_mode(&o.dir).unwrap_or(Mode::ApiOnly);
        self.console.output(&format!(
            "Lab {:?} is up: API at https://127.0.0.1:{} (pid {pid}), {} mode.\n",
            o.dir.name,
            config.port,
            mode.as_str()
        ));
        if mode == Mode::ApiOnly {
            bail!(
                "the lab runs API-only, so nothing would answer the tutorial's curls; run it with `--network auto`"
            );
        }
        if mode == Mode::Kernel
            && let Some(uid) = crate::userns::outside_uid()
        {
            self.console.note(&crate::userns::note(uid));
        }
        if mode == Mode::Userspace {
            let why = lab::why_not_kernel(&config)
                .map(|why| format!(" Kernel mode is not available: {why}."))
                .unwrap_or_default();
            self.console.note(&format!("Userspace mode: Pods and Services are served on loopback twins of their addresses (10.96.0.5 at 127.96.0.5) by the dataplane's userspace proxy.{why}"));
        }
        self.console.note(&format!(
            "kubectl below uses KUBECONFIG={}",
            o.dir.kubeconfig_path().display()
        ));
        self.lab = Some(Running {
            node: Some(Reach::new(&o.dir, &Origin::Node(None))?),
            client: Reach::new(&o.dir, &Origin::Client)?,
            rules: match mode {
                Mode::Kernel => Ok(config.dataplane),
                _ => Err(format!(
                    "userspace mode has no kernel rules to list: the dataplane's userspace proxy makes the same choices (random endpoint, session affinity, refusal without endpoints) on the loopback twins; `{}` prints the rules it implements",
                    lab::command_for("rules", &o.dir.name)
                )),
            },
            prompts: mode == Mode::Kernel,
            pool: Some(config.cluster.load_balancer_pool),
            nodes: Some(config.cluster.nodes.len()),
            lb_wait: Duration::from_secs(20),
        });
        Ok(())
    }

    fn kind_cluster(&mut self) -> Result<()> {
        let o = self.options;
        self.console.command(
            None,
            &format!(
                "labctl up --provider kind --name {} --workers {}",
                o.dir.name, o.workers
            ),
        );
        let spin = console::spinner("creating the kind cluster (about a minute)");
        let up = kind::up(&o.dir, o.workers);
        spin.finish_and_clear();
        let (notes, _) = up?;
        for note in notes {
            self.console.note(&note);
        }
        self.lab = Some(Running {
            node: Some(Reach::docker(&kind::worker(&o.dir.name, 0))),
            client: Reach::host(),
            rules: Ok(Dataplane::Iptables),
            prompts: true,
            pool: None,
            nodes: Some(o.workers + 1),
            lb_wait: Duration::from_secs(90),
        });
        Ok(())
    }

    fn existing_cluster(&mut self) -> Result<()> {
        let o = self.options;
        self.console.note(&format!(
            "An existing cluster: kubeconfig {}, context {}",
            o.kubeconfig
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "from KUBECONFIG or ~/.kube/config".into()),
            o.context.as_deref().unwrap_or("(current)")
        ));
        self.kubectl.run(&["version"]).context(
            "the cluster does not answer; check the kubeconfig and context (`kubectl cluster-info` shows what kubectl reaches)",
        )?;
        for kind in ["deployment", "service"] {
            let found = self.kubectl.run(&[
                "get",
                kind,
                "hello-world",
                "--ignore-not-found",
                "-o",
                "name",
            ])?;
            if !found.trim().is_empty() {
                bail!(
                    "{} already exists in namespace default; the tutorial creates it (delete it, or use another context)",
                    found.trim()
                );
            }
        }
        self.lab = Some(Running {
            node: None,
            client: Reach::host(),
            rules: Err("an existing cluster gives labctl no shell on its nodes; run the listing on a node (e.g. through `kubectl debug node/<node> -it --image=...`)".into()),
            prompts: false,
            pool: None,
            nodes: None,
            lb_wait: Duration::from_secs(300),
        });
        Ok(())
    }

    fn deployment(&mut self) -> Result<()> {
        let path = self.options.dir.root.join("deployment.yaml");
        std::fs::write(&path, DEPLOYMENT_YAML)
            .with_context(|| format!("writing {}", path.display()))?;
        self.console.command(None, "cat deployment.yaml");
        self.console.output(DEPLOYMENT_YAML);
        self.console.note(&format!(
            "kubectl runs in {}, where deployment.yaml is",
            self.options.dir.root.display()
        ));
        self.kubectl(&["apply", "-f", "deployment.yaml"])?;
        self.kubectl(&["scale", "deployment", "hello-world", "--replicas=2"])?;
        self.kubectl(&[
            "rollout",
            "status",
            "deployment/hello-world",
            "--timeout=60s",
        ])?;
        let deployments = self.kubectl(&["get", "deployments.apps"])?;
        let ready = rows(&deployments)
            .find(|r| r[0] == "hello-world")
            .and_then(|r| r.get(1).map(|s| s.to_string()))
            .unwrap_or_default();
        self.check(ready == "2/2", "the Deployment has 2/2 Pods ready", || {
            format!("READY is {ready:?}")
        })?;
        self.kubectl(&["get", "pods", "-o", "wide"])?;
        let pods = self.pods()?;
        let cidrs = self.pod_cidrs()?;
        let misplaced: Vec<String> = pods
            .iter()
            .filter(|p| cidrs.get(&p.node).is_some_and(|cidr| !cidr.contains(&p.ip)))
            .map(|p| format!("{} ({} on {})", p.name, p.ip, p.node))
            .collect();
        self.check(
            pods.len() == 2 && misplaced.is_empty(),
            "both Pods run, each with an IP from its node's pod CIDR",
            || format!("{} Pods; misplaced: {}", pods.len(), misplaced.join(", ")),
        )?;
        let mut nodes: Vec<&str> = pods.iter().map(|p| p.node.as_str()).collect();
        nodes.dedup();
        // The lab's scheduler spreads replicas over the workers; a real one only prefers to.
        if self.options.provider == Provider::Embedded && self.options.workers >= 2 {
            self.check(
                nodes.len() == 2,
                "the scheduler spread them over two nodes",
                || format!("both run on {}", nodes[0]),
            )?;
        }
        Ok(())
    }

    /// Each node's pod CIDR, where the cluster records one.
    fn pod_cidrs(&self) -> Result<std::collections::BTreeMap<String, ipnet::Ipv4Net>> {
        let out = self.kubectl.run(&["get", "nodes", "-o", "json"])?;
        let list: Value = serde_json::from_str(&out).context("kubectl's JSON")?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| {
                Some((
                    n["metadata"]["name"].as_str()?.to_string(),
                    n["spec"]["podCIDR"].as_str()?.parse().ok()?,
                ))
            })
            .collect())
    }

    fn cluster_ip(&mut self) -> Result<()> {
        self.kubectl(&[
            "expose",
            "deployment",
            "hello-world",
            "--port=80",
            "--target-port=8080",
        ])?;
        let services = self.kubectl(&["get", "svc"])?;
        let row = service_row(&services);
        let cluster_ip: Option<Ipv4Addr> = row.as_ref().and_then(|r| r[2].parse().ok());
        let kubernetes =
            rows(&services).any(|r| r.len() >= 3 && r[0] == "kubernetes" && r[2] == "10.96.0.1");
        self.check(
            row.as_ref()
                .is_some_and(|r| r[1] == "ClusterIP" && r[3] == "<none>" && r[4] == "80/TCP")
                && cluster_ip.is_some()
                && kubernetes,
            "hello-world is a ClusterIP Service on port 80, next to kubernetes at 10.96.0.1",
            || format!("the rows are {row:?}"),
        )?;
        let cluster_ip = cluster_ip.expect("checked");
        let target = SocketAddr::from((cluster_ip, 80));
        if self.running().node.is_some() {
            self.wait_until_served(target, false)?;
            for _ in 0..2 {
                self.curl(false, &cluster_ip.to_string(), target)?;
            }
            self.distribution(false, target, "svc/hello-world via its ClusterIP")?;
        } else {
            self.skip(
                &format!("curl {cluster_ip} from a node"),
                "an existing cluster gives labctl no place inside it to send from",
            );
        }
        self.kubectl(&["get", "svc", "hello-world", "-o", "yaml"])?;
        self.deep_dive_cluster_ip(cluster_ip, 80)?;
        self.delete_service(Step::Clusterip)
    }

    fn node_port(&mut self) -> Result<()> {
        self.kubectl(&[
            "expose",
            "deployment",
            "hello-world",
            "--target-port=8080",
            "--type=NodePort",
        ])?;
        let services = self.kubectl(&["get", "svc"])?;
        let row = service_row(&services);
        let ports = row.as_ref().map(|r| r[4].to_string()).unwrap_or_default();
        let node_port: Option<u16> = ports
            .strip_prefix("8080:")
            .and_then(|p| p.strip_suffix("/TCP"))
            .and_then(|p| p.parse().ok());
        self.check(
            row.as_ref().is_some_and(|r| r[1] == "NodePort")
                && node_port.is_some_and(|p| (30000..=32767).contains(&p)),
            "hello-world is a NodePort Service, 8080:<nodePort>/TCP with a port in 30000-32767",
            || format!("the row is {row:?}"),
        )?;
        let node_port = node_port.expect("checked");
        let cluster_ip: Ipv4Addr = row.as_ref().expect("checked")[2]
            .parse()
            .context("the CLUSTER-IP column")?;
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, node_port));
        if self.running().node.is_some() {
            self.wait_until_served(target, false)?;
            self.curl(false, &format!("127.0.0.1:{node_port}"), target)?;
            self.distribution(false, target, "svc/hello-world via 127.0.0.1:<nodePort>")?;
        } else {
            self.skip(
                &format!("curl 127.0.0.1:{node_port} on a node"),
                "an existing cluster gives labctl no shell on its nodes",
            );
        }
        self.deep_dive_node_port(cluster_ip, node_port)?;
        self.delete_service(Step::Nodeport)
    }

    fn load_balancer(&mut self) -> Result<()> {
        self.kubectl(&["get", "nodes", "-o", "wide"])?;
        self.kubectl(&["get", "deployments.apps"])?;
        self.kubectl(&["get", "pods", "-o", "wide"])?;
        self.kubectl(&[
            "expose",
            "deployment",
            "hello-world",
            "--port=80",
            "--target-port=8080",
            "--type=LoadBalancer",
        ])?;
        // The tutorial's `get service` shows the address once the cloud has assigned it.
        let spin = console::spinner("waiting for the LoadBalancer's EXTERNAL-IP");
        let kubectl = &self.kubectl;
        let lb_wait = self.running().lb_wait;
        let external = until(lb_wait, || {
            let ip = kubectl.run(&[
                "get",
                "svc",
                "hello-world",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ])?;
            Ok(ip.trim().parse::<Ipv4Addr>().ok())
        });
        spin.finish_and_clear();
        let external = external.with_context(|| {
            format!("the Service got no EXTERNAL-IP within {lb_wait:?} (is a LoadBalancer controller running?)")
        })?;
        let services = self.kubectl(&["get", "service"])?;
        let row = service_row(&services);
        let (in_pool, pool) = match self.running().pool {
            Some((first, last)) => (
                (first..=last).contains(&external),
                format!(" from the lab's pool {first}-{last}"),
            ),
            None => (true, String::new()),
        };
        self.check(
            row.as_ref().is_some_and(|r| {
                r[1] == "LoadBalancer"
                    && r[3] == external.to_string()
                    && r[4].starts_with("80:")
                    && r[4].ends_with("/TCP")
            }) && in_pool,
            &format!("hello-world is a LoadBalancer Service with EXTERNAL-IP {external}{pool}"),
            || format!("the row is {row:?}"),
        )?;
        self.console.note(&format!(
            "open http://{external}/ in a browser: here, from {}",
            match self.running().client.place.as_str() {
                "client" => "the client outside the cluster",
                _ => "this host",
            }
        ));
        let target = SocketAddr::from((external, 80));
        self.wait_until_served(target, true)?;
        self.curl(true, &format!("http://{external}/"), target)?;
        self.distribution(true, target, "svc/hello-world via its EXTERNAL-IP")
    }

    fn cleanup(&mut self) -> Result<()> {
        self.kubectl(&["delete", "service", "hello-world", "--ignore-not-found"])?;
        self.kubectl(&["delete", "deployment", "hello-world"])?;
        let kubectl = &self.kubectl;
        let spin = console::spinner("waiting for the Pods to terminate");
        let gone = until(Duration::from_secs(20), || {
            let out = kubectl.run(&["get", "pods", "-l", "app=hello-world", "-o", "name"])?;
            Ok(out.trim().is_empty().then_some(()))
        });
        spin.finish_and_clear();
        self.check(gone.is_ok(), "the Pods are gone", || {
            "they were still listed after 20 s".into()
        })?;
        if !self.options.keep {
            self.console.command(
                None,
                &format!("labctl down --name {} --purge", self.options.dir.name),
            );
        }
        Ok(())
    }

    /// The hello-world Pods that are Ready (and not terminating).
    fn pods(&self) -> Result<Vec<Pod>> {
        let out = self
            .kubectl
            .run(&["get", "pods", "-l", "app=hello-world", "-o", "json"])?;
        let list: Value = serde_json::from_str(&out).context("kubectl's JSON")?;
        let mut pods: Vec<Pod> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .filter_map(|p| {
                Some(Pod {
                    name: p["metadata"]["name"].as_str()?.to_string(),
                    ip: p["status"]["podIP"].as_str()?.parse().ok()?,
                    node: p["spec"]["nodeName"].as_str()?.to_string(),
                })
            })
            .collect();
        pods.sort_by(|a, b| a.node.cmp(&b.node).then(a.name.cmp(&b.name)));
        Ok(pods)
    }

    fn place(&self, from_client: bool) -> &Reach {
        let lab = self.running();
        match (&lab.node, from_client) {
            (Some(node), false) => node,
            _ => &lab.client,
        }
    }

    /// The prompt of a command run at a node or the client, where prompts name places.
    fn prompt(&self, from_client: bool) -> Option<String> {
        self.running()
            .prompts
            .then(|| self.place(from_client).place.clone())
    }

    /// A new Service answers once every node's dataplane has synced; kube-proxy takes a
    /// moment too. Bounded, and quiet unless it fails.
    fn wait_until_served(&self, target: SocketAddr, from_client: bool) -> Result<()> {
        let place = self.place(from_client);
        let spin = console::spinner(format!("waiting until {target} answers"));
        let answered = until(Duration::from_secs(10), || {
            Ok(place
                .get_many(target, 1, Duration::from_millis(500))
                .pop()
                .and_then(|r| r.ok()))
        });
        spin.finish_and_clear();
        answered.with_context(|| format!("{} never answered", place.describe(target)))?;
        Ok(())
    }

    fn curl(&mut self, from_client: bool, shown: &str, target: SocketAddr) -> Result<()> {
        let prompt = self.prompt(from_client);
        self.console
            .command(prompt.as_deref(), &format!("curl {shown}"));
        let body = self
            .place(from_client)
            .get(target, Duration::from_secs(3))?;
        self.console.output(&body);
        let pods = self.pods()?;
        let host = verify::hostname(&body).unwrap_or("").to_string();
        self.check(
            pods.iter().any(|p| p.name == host),
            &format!("answered by Pod {host}"),
            || format!("no Ready Pod is called {host:?}; the answer was {body:?}"),
        )
    }

    fn distribution(&mut self, from_client: bool, target: SocketAddr, what: &str) -> Result<()> {
        let n = self.options.requests;
        let place = self.place(from_client).place.clone();
        self.console.command(
            None,
            &format!(
                "{} svc/hello-world --requests {n}{}",
                lab::command_for("verify", &self.options.dir.name),
                if from_client { " --from client" } else { "" }
            ),
        );
        let ready: Vec<String> = self.pods()?.into_iter().map(|p| p.name).collect();
        let reach = self.place(from_client);
        let report = verify::judge_confirmed(
            &format!("{what} ({target}) from {place}"),
            &ready,
            self.options.significance,
            || {
                verify::Tally::of(reach.get_many(target, n, Duration::from_secs(3)), |e| {
                    e.to_string()
                })
            },
        );
        self.console.output(&verify::chart(&report));
        self.check(
            report.passed,
            &format!(
                "load is spread over every Ready Pod: {}",
                verify::summary(&report)
            ),
            || report.reasons.join("; "),
        )
    }

    /// Runs `iptables -t nat -L <chain> [-n]` on the node and prints it through `column -t`,
    /// as the tutorial does.
    fn list_chain(&mut self, chain: &str, numeric: bool) -> Result<Vec<Vec<String>>> {
        let n = if numeric { " -n" } else { "" };
        let prompt = self.prompt(false);
        self.console.command(
            prompt.as_deref(),
            &format!("iptables -t nat -L {chain}{n} | column -t"),
        );
        let mut cmd = self
            .running()
            .node
            .as_ref()
            .context("no node to list rules on")?
            .command("iptables");
        cmd.args(["-t", "nat", "-L", chain]);
        if numeric {
            cmd.arg("-n");
        }
        let out = run_captured(&mut cmd)?;
        self.console.output(&console::column_t(&out));
        // Rule lines have target, prot, opt, source and destination at least; a rule without
        // a target has one column less and is not one the checks look for.
        Ok(out
            .lines()
            .skip(2)
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter(|r| r.len() >= 5)
            .collect())
    }

    /// Whether the deep dive can list kernel rules here; says why not when it cannot.
    fn kernel_rules(&mut self) -> Option<Dataplane> {
        match self.running().rules.clone() {
            Ok(dataplane) => Some(dataplane),
            Err(why) => {
                self.skip("the rule listings", &why);
                None
            }
        }
    }

    /// Runs `nft list <what>` on the node and prints it.
    fn list_nft(&mut self, what: &str) -> Result<String> {
        let prompt = self.prompt(false);
        self.console.command(
            prompt.as_deref(),
            &format!(
                "nft list {} ip {NFT_TABLE} {}",
                what.split(' ').next().unwrap_or(what),
                what_name(what)
            ),
        );
        let (kind, name) = what.split_once(' ').unwrap_or((what, ""));
        let mut cmd = self
            .running()
            .node
            .as_ref()
            .context("no node to list rules on")?
            .command("nft");
        cmd.args(["list", kind, "ip", NFT_TABLE, name]);
        let out = run_captured(&mut cmd)?;
        self.console.output(&out);
        Ok(out)
    }

    /// The nftables deep dive: the maps and chains that stand for KUBE-SERVICES, KUBE-SVC-,
    /// KUBE-NODEPORTS and KUBE-EXT- in the dataplane's own layout.
    fn deep_dive_nft(
        &mut self,
        cluster_ip: Ipv4Addr,
        port: u16,
        node_port: Option<u16>,
    ) -> Result<()> {
        let hash = names::service_hash("default/hello-world", Protocol::Tcp);
        self.console.note(&format!(
            "nftables dataplane: table ip {NFT_TABLE} holds one map of service addresses (KUBE-SERVICES' job) and a chain per service port that draws a key with numgen and DNATs to the Pod address the key maps to (KUBE-SVC-'s and KUBE-SEP-'s)"
        ));
        let ips = self.list_nft("map service-ips")?;
        let entry = format!("{cluster_ip} . tcp . {port} : goto svc-{hash}");
        self.check(
            ips.contains(&entry),
            &format!("service-ips sends {cluster_ip}:{port} to chain svc-{hash}"),
            || format!("no element {entry:?}"),
        )?;
        if let Some(np) = node_port {
            let ports = self.list_nft("map service-nodeports")?;
            let entry = format!("tcp . {np} : goto ext-{hash}");
            self.check(
                ports.contains(&entry),
                &format!("service-nodeports sends port {np} to chain ext-{hash}"),
                || format!("no element {entry:?}"),
            )?;
            let ext = self.list_nft(&format!("chain ext-{hash}"))?;
            self.check(
                ext.contains("meta mark set meta mark | 0x00004000")
                    && ext.contains(&format!("goto svc-{hash}")),
                &format!(
                    "ext-{hash} marks external traffic for masquerade, then goes to svc-{hash}"
                ),
                || "the chain reads otherwise".into(),
            )?;
        }
        let chain = self.list_nft(&format!("chain svc-{hash}"))?;
        let pods = self.pods()?;
        let found = Dispatch::find(&chain);
        let map = found.as_ref().map_or("tcp-endpoints-0", |d| d.map.as_str());
        let endpoints = self.list_nft(&format!("map {map}"))?;
        let drawn = found
            .as_ref()
            .map(|d| d.drawn(&endpoints))
            .unwrap_or_default();
        let missing: Vec<String> = pods
            .iter()
            .map(|p| format!("{} . 8080", p.ip))
            .filter(|e| !drawn.contains(e))
            .collect();
        let dispatch = format!(
            "ct mark set numgen random mod {} ... then dnat ... to ct mark map @{map}",
            pods.len()
        );
        self.check(
            missing.is_empty()
                && found
                    .as_ref()
                    .is_some_and(|d| d.modulus as usize == pods.len()),
            &format!(
                "svc-{hash} picks one of the {} Ready Pods at random (numgen)",
                pods.len()
            ),
            || {
                if missing.is_empty() {
                    format!("the chain has no rules like {dispatch:?}")
                } else {
                    format!("{map} lacks {missing:?}")
                }
            },
        )?;
        self.check(
            chain.contains("ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x00004000"),
            "traffic from outside the pod network 10.244.0.0/16 is marked for masquerade",
            || "no such rule".into(),
        )
    }

    fn deep_dive_cluster_ip(&mut self, cluster_ip: Ipv4Addr, port: u16) -> Result<()> {
        match self.kernel_rules() {
            None => return Ok(()),
            Some(Dataplane::Nftables) => return self.deep_dive_nft(cluster_ip, port, None),
            Some(_) => {}
        }
        self.console.note("How it works (deep dive)");
        self.console
            .note("iptables 1.8.9 and later print protocol numbers with -n: 6 is tcp, 0 is all");
        let svc = names::svc_chain("default/hello-world", Protocol::Tcp);
        let services = self.list_chain("KUBE-SERVICES", true)?;
        self.check_services_chain(&services, &svc, cluster_ip, port)?;
        let chain = self.list_chain(&svc, true)?;
        self.check_svc_chain(&chain, cluster_ip, port)
    }

    fn check_services_chain(
        &mut self,
        rules: &[Vec<String>],
        svc: &str,
        cluster_ip: Ipv4Addr,
        port: u16,
    ) -> Result<()> {
        let ip = cluster_ip.to_string();
        let dpt = format!("dpt:{port}");
        let jump = rules
            .iter()
            .any(|r| r[0] == svc && r[4] == ip && r.contains(&dpt));
        self.check(
            jump,
            &format!("KUBE-SERVICES sends {ip}:{port} to {svc} (the tutorial's chain name for default/hello-world)"),
            || "no such rule".into(),
        )?;
        let last = rules.last().map(|r| r[0].as_str()).unwrap_or("");
        self.check(
            last == "KUBE-NODEPORTS",
            "the KUBE-NODEPORTS jump is the last rule",
            || format!("the last rule jumps to {last}"),
        )
    }

    fn check_svc_chain(
        &mut self,
        rules: &[Vec<String>],
        cluster_ip: Ipv4Addr,
        port: u16,
    ) -> Result<()> {
        let pods = self.pods()?;
        let masq = rules.iter().any(|r| {
            r[0] == "KUBE-MARK-MASQ"
                && r[3] == "!10.244.0.0/16"
                && r[4] == cluster_ip.to_string()
                && r.contains(&format!("dpt:{port}"))
        });
        self.check(
            masq,
            "traffic to the ClusterIP from outside the pod network 10.244.0.0/16 is marked for masquerade",
            || "no KUBE-MARK-MASQ rule for it".into(),
        )?;
        let seps: Vec<&Vec<String>> = rules
            .iter()
            .filter(|r| r[0].starts_with("KUBE-SEP-"))
            .collect();
        let endpoints: Vec<String> = seps
            .iter()
            .filter_map(|r| {
                let arrow = r.iter().position(|c| c == "->")?;
                Some(r.get(arrow + 1)?.clone())
            })
            .collect();
        let mut expected: Vec<String> = pods.iter().map(|p| format!("{}:8080", p.ip)).collect();
        let mut listed = endpoints.clone();
        expected.sort();
        listed.sort();
        self.check(
            listed == expected,
            &format!("one KUBE-SEP chain per Ready Pod: {}", endpoints.join(", ")),
            || format!("the rules name {listed:?}, the Pods are {expected:?}"),
        )?;
        let first_probability = seps
            .first()
            .and_then(|r| {
                let i = r.iter().position(|c| c == "probability")?;
                r.get(i + 1).cloned()
            })
            .unwrap_or_default();
        self.check(
            seps.len() != 2 || first_probability == "0.50000000000",
            "the first endpoint is chosen with probability 0.5, the second takes the rest",
            || format!("the first probability is {first_probability:?}"),
        )
    }

    fn deep_dive_node_port(&mut self, cluster_ip: Ipv4Addr, node_port: u16) -> Result<()> {
        match self.kernel_rules() {
            None => return Ok(()),
            Some(Dataplane::Nftables) => {
                return self.deep_dive_nft(cluster_ip, 8080, Some(node_port));
            }
            Some(_) => {}
        }
        self.console.note("iptables rules");
        let svc = names::svc_chain("default/hello-world", Protocol::Tcp);
        let ext = names::ext_chain("default/hello-world", Protocol::Tcp);
        let prerouting = self.list_chain("PREROUTING", false)?;
        self.check(
            prerouting.iter().any(|r| {
                r[0] == "KUBE-SERVICES" && r.join(" ").contains("kubernetes service portals")
            }),
            "PREROUTING sends every packet to KUBE-SERVICES (\"kubernetes service portals\")",
            || "no such rule".into(),
        )?;
        let services = self.list_chain("KUBE-SERVICES", true)?;
        self.check_services_chain(&services, &svc, cluster_ip, 8080)?;
        let node_ports = self.list_chain("KUBE-NODEPORTS", true)?;
        let dpt = format!("dpt:{node_port}");
        self.check(
            node_ports.iter().any(|r| r[0] == ext && r.contains(&dpt)),
            &format!("KUBE-NODEPORTS sends port {node_port} to {ext}"),
            || "no such rule".into(),
        )?;
        let external = self.list_chain(&ext, true)?;
        let masq = external.iter().any(|r| {
            r[0] == "KUBE-MARK-MASQ"
                && r.join(" ")
                    .contains("masquerade traffic for default/hello-world external destinations")
        });
        let to_svc = external.iter().any(|r| r[0] == svc);
        self.check(
            masq && to_svc,
            &format!("{ext} marks external traffic for masquerade, then goes to {svc}"),
            || format!("masquerade rule: {masq}, jump to {svc}: {to_svc}"),
        )?;
        let chain = self.list_chain(&svc, true)?;
        self.check_svc_chain(&chain, cluster_ip, 8080)
    }
}

/// The nftables table of the lab's nftables dataplane.
const NFT_TABLE: &str = "services-lab";

/// `map service-ips` -> `service-ips`.
fn what_name(what: &str) -> &str {
    what.split_once(' ').map(|(_, n)| n).unwrap_or(what)
}

/// kubectl with the tutorial lab's kubeconfig.
struct Kubectl {
    program: PathBuf,
    /// Where it runs (deployment.yaml is written there).
    dir: PathBuf,
    kubeconfig: Option<PathBuf>,
    cache: Option<PathBuf>,
    context: Option<String>,
}

impl Kubectl {
    fn find(options: &Options) -> Result<Kubectl> {
        let program = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
            .context("kubectl is not on PATH; the tutorial runs the real kubectl (install it: https://kubernetes.io/docs/tasks/tools/#kubectl)")?;
        let dir = &options.dir;
        let (kubeconfig, cache) = match options.provider {
            Provider::Kubeconfig => (options.kubeconfig.clone(), None),
            _ => (
                Some(dir.kubeconfig_path()),
                Some(dir.root.join("kube-cache")),
            ),
        };
        Ok(Kubectl {
            program,
            dir: dir.root.clone(),
            kubeconfig,
            cache,
            context: options.context.clone(),
        })
    }

    /// Runs kubectl; its stdout, or an error with its stderr.
    fn run(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.program);
        if let Some(context) = &self.context {
            cmd.args(["--context", context]);
        }
        cmd.args(args).current_dir(&self.dir);
        if let Some(path) = &self.kubeconfig {
            cmd.env("KUBECONFIG", path);
        }
        if let Some(path) = &self.cache {
            cmd.env("KUBECACHEDIR", path);
        }
        run_captured(&mut cmd).with_context(|| format!("kubectl {}", args.join(" ")))
    }
}

fn run_captured(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// Polls `probe` every 50 ms until it yields a value, for at most `limit`.
fn until<T>(limit: Duration, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let started = Instant::now();
    let mut last_error = None;
    while started.elapsed() < limit {
        match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match last_error {
        Some(e) => Err(e.context(format!("still failing after {limit:?}"))),
        None => bail!("not within {limit:?}"),
    }
}

/// A table's rows after its header, split on whitespace.
fn rows(table: &str) -> impl Iterator<Item = Vec<&str>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|r| !r.is_empty())
}

/// The hello-world row of `kubectl get svc`: NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE.
fn service_row(table: &str) -> Option<Vec<String>> {
    rows(table)
        .find(|r| r[0] == "hello-world" && r.len() >= 6)
        .map(|r| r.iter().map(|s| s.to_string()).collect())
}
