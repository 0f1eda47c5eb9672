//! `labctl`: bring up the embedded lab cluster and point kubectl at it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use labctl::lab::{self, LabDir};
use labctl::provider::Provider;
use labctl::{probe, reach, tutorial, verify};

/// Services Lab: the Kubernetes Services tutorial on an embedded lab cluster.
#[derive(Parser)]
#[command(
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  labctl tutorial                      # the whole tutorial, every step checked\n  labctl up                            # a lab to explore with kubectl\n  export KUBECONFIG=$(labctl kubeconfig --path)\n  kubectl get nodes -o wide\n  labctl verify svc/hello-world        # is load spread over the Pods?\n  labctl rules --explain svc/hello-world\n  labctl down --purge"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct LabArgs {
    /// The lab's name (node names start with it, as on kind).
    #[arg(long, default_value = lab::DEFAULT_NAME, env = "LABCTL_NAME", value_parser = lab::parse_name)]
    name: String,
    /// Where labs keep their state [default: $XDG_STATE_HOME/services-lab or ~/.local/state/services-lab].
    #[arg(long, env = "LABCTL_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

impl LabArgs {
    fn base(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(lab::default_state_base)
    }
    fn dir(&self) -> LabDir {
        LabDir::new(&self.name, &self.base())
    }
}

/// Where `labctl curl` sends from.
#[derive(Clone, Copy, clap::ValueEnum)]
enum From {
    /// A node's namespace (as `curl` on a kind node).
    Node,
    /// The client namespace outside the cluster (as a browser on the host).
    Client,
    /// The host itself (userspace mode, where the lab's addresses have loopback twins).
    Host,
}

/// How `labctl verify` prints its verdict.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// A bar chart and one line per check.
    Text,
    /// One JSON object.
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the embedded lab cluster (in the background unless --foreground) and wait until
    /// its API answers.
    #[command(
        after_help = "Examples:\n  labctl up\n  labctl up --dataplane nftables\n  labctl up --name demo --nodes 3 --merge-kubeconfig"
    )]
    Up {
        #[command(flatten)]
        lab: LabArgs,
        /// Which cluster: the embedded lab; a kind cluster named --name (needs Docker and kind);
        /// or a check that the cluster of the current kubeconfig context answers.
        #[arg(long, value_enum, default_value_t = Provider::Embedded)]
        provider: Provider,
        /// Worker nodes (pod CIDRs 10.244.1.0/24, 10.244.2.0/24, ...), besides the control
        /// plane; fixed when the lab is created.
        #[arg(long, visible_alias = "nodes", default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=50))]
        workers: u8,
        /// Run in this terminal until Ctrl-C instead of in the background.
        #[arg(long)]
        foreground: bool,
        /// Also add the lab to ~/.kube/config (or $KUBECONFIG) as context labctl-<name> and make it current.
        #[arg(long)]
        merge_kubeconfig: bool,
        /// Where Pods run: `kernel` (network namespaces, wasm Pods, rules per node; needs
        /// root, or an unprivileged user namespace), `userspace` (loopback, no privileges),
        /// `none` (API only), `auto` (kernel when possible) [default: auto]; fixed when the
        /// lab is created.
        #[arg(long, value_enum)]
        network: Option<lab::NetworkMode>,
        /// What implements Services: `iptables` (kernel mode, kube-proxy's rules, the
        /// tutorial's listings) [default], `nftables` (kernel mode, one nftables table per
        /// node) or `userspace` (the userspace proxy); fixed when the lab is created.
        #[arg(long, value_enum)]
        dataplane: Option<lab::Dataplane>,
        /// LoadBalancer ingress addresses, FIRST-LAST (what cloud-provider-kind or MetalLB
        /// hands out on kind); fixed when the lab is created.
        #[arg(long, value_name = "FIRST-LAST", value_parser = lab::parse_pool)]
        load_balancer_pool: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
    },
    /// Stop the lab's server and remove its network namespaces; with --purge also delete its
    /// stored objects and credentials.
    #[command(after_help = "Examples:\n  labctl down\n  labctl down --name demo --purge")]
    Down {
        #[command(flatten)]
        lab: LabArgs,
        /// Delete the lab's state directory (objects, credentials, kubeconfig).
        #[arg(long)]
        purge: bool,
    },
    /// Print the lab's kubeconfig (like `kind get kubeconfig`).
    #[command(
        after_help = "Examples:\n  labctl kubeconfig > lab.yaml\n  export KUBECONFIG=$(labctl kubeconfig --path)"
    )]
    Kubeconfig {
        #[command(flatten)]
        lab: LabArgs,
        /// Print the kubeconfig file's path instead of its contents.
        #[arg(long)]
        path: bool,
        /// Merge it into ~/.kube/config (or $KUBECONFIG) as context labctl-<name>.
        #[arg(long)]
        merge: bool,
    },
    /// Say whether the lab runs, in which mode and with which dataplane, and where its files are.
    #[command(after_help = "Examples:\n  labctl status\n  labctl status --name demo")]
    Status {
        #[command(flatten)]
        lab: LabArgs,
    },
    /// Run a command inside a lab node's network namespace (kernel mode), where the tutorial
    /// runs it on a node.
    #[command(
        after_help = "Examples:\n  labctl exec lab-worker -- iptables -t nat -L KUBE-SERVICES -n\n  labctl exec client -- ip route"
    )]
    Exec {
        #[command(flatten)]
        lab: LabArgs,
        /// A node name (`lab-worker`) or `client` (the namespace outside the cluster).
        node: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Send HTTP GETs from inside the lab (kernel mode) and print the answers.
    #[command(
        after_help = "Examples:\n  labctl curl http://10.96.12.34\n  labctl curl http://172.18.255.200 --from client --count 4\n  labctl curl http://127.0.0.1:30583 --from node --node lab-worker2"
    )]
    Curl {
        #[command(flatten)]
        lab: LabArgs,
        /// `http://IP[:PORT]` (port 80 when left out).
        url: String,
        /// Where the request starts: a node, the client outside the cluster, or the host
        /// (userspace mode).
        #[arg(long, value_enum, default_value_t = From::Node)]
        from: From,
        /// Which node, with `--from node` [default: the first worker].
        #[arg(long)]
        node: Option<String>,
        /// How many requests.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
        count: u32,
    },
    /// Run the Services tutorial from start to end on a fresh lab: the Deployment, ClusterIP,
    /// NodePort and LoadBalancer Services, the kube-proxy rules behind them, and whether load
    /// is spread over the Pods. Exits 0 only if every check held.
    #[command(
        after_help = "Steps: cluster, deployment, clusterip, nodeport, loadbalancer, cleanup.\n\nExamples:\n  labctl tutorial\n  labctl tutorial --step clusterip --keep\n  labctl tutorial --dataplane nftables\n  labctl tutorial --dataplane userspace --requests 300\n  labctl tutorial --provider kind\n  labctl tutorial --provider kubeconfig --context my-aks"
    )]
    Tutorial {
        /// The tutorial's lab; a lab of that name is removed first, so that it starts fresh.
        #[arg(long, default_value = "tutorial", value_parser = lab::parse_name)]
        name: String,
        /// Where labs keep their state [default: $XDG_STATE_HOME/services-lab or ~/.local/state/services-lab].
        #[arg(long, env = "LABCTL_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Worker nodes.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=50))]
        workers: u8,
        /// Where Pods run (see `labctl up --help`) [default: auto].
        #[arg(long, value_enum)]
        network: Option<lab::NetworkMode>,
        /// What programs Services: iptables (the tutorial's listings), nftables, or the
        /// userspace proxy [default: iptables; userspace where kernel mode is out of reach].
        #[arg(long, value_enum)]
        dataplane: Option<lab::Dataplane>,
        /// Leave the lab up at the end, for exploring with kubectl.
        #[arg(long)]
        keep: bool,
        /// Stop after this step.
        #[arg(long, value_enum)]
        step: Option<tutorial::Step>,
        /// Requests per load-distribution check.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10000))]
        requests: u32,
        /// Which cluster: the embedded lab, a kind cluster named --name (needs Docker and
        /// kind), or an existing cluster from a kubeconfig (its objects hello-world are
        /// created and deleted in namespace default; nothing else is touched).
        #[arg(long, value_enum, default_value_t = Provider::Embedded)]
        provider: Provider,
        /// With --provider kubeconfig: the kubeconfig [default: $KUBECONFIG or ~/.kube/config].
        #[arg(long, requires = "provider")]
        kubeconfig: Option<PathBuf>,
        /// With --provider kubeconfig: the context [default: the current one].
        #[arg(long, requires = "provider")]
        context: Option<String>,
    },
    /// Send requests through a Service, count the answers per Pod, and check that every Ready
    /// Pod answered and that the split is uniform (chi-square goodness of fit).
    #[command(
        after_help = "Examples:\n  labctl verify svc/hello-world\n  labctl verify svc/hello-world --from client --requests 500\n  labctl verify svc/hello-world --output json --junit verify.xml"
    )]
    Verify {
        #[command(flatten)]
        lab: LabArgs,
        /// The Service: svc/<name>.
        service: String,
        /// Its namespace.
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// Which service port [default: the first].
        #[arg(long)]
        port: Option<u16>,
        /// How many requests (one connection each).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100000))]
        requests: u32,
        /// Where they start: a node (to the ClusterIP), the client outside the cluster (to the
        /// EXTERNAL-IP, else a node's NodePort), or the host (userspace mode).
        #[arg(long, value_enum, default_value_t = From::Node)]
        from: From,
        /// Which node, with `--from node` [default: the first worker].
        #[arg(long)]
        node: Option<String>,
        /// The significance level below which the uniformity test fails.
        #[arg(long, default_value_t = verify::DEFAULT_SIGNIFICANCE)]
        significance: f64,
        /// How to print the verdict.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Also write the verdict as a JUnit XML file (for CI).
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
    },
    /// Print the rules the lab's dataplane programs on a node, or with --explain the path a
    /// new connection to a Service takes through them.
    #[command(
        after_help = "Examples:\n  labctl rules\n  labctl rules --node lab-worker2 --format nft\n  labctl rules --explain svc/hello-world\n  labctl rules --explain svc/hello-world --port 80 --from client"
    )]
    Rules {
        #[command(flatten)]
        lab: LabArgs,
        #[command(flatten)]
        args: labctl::rules::RulesArgs,
    },
    /// Forward a port on the host's 127.0.0.1 to a Service of the lab, for a browser on the
    /// host; runs until Ctrl-C, like `kubectl port-forward`.
    #[command(
        after_help = "Examples:\n  labctl port-forward svc/hello-world 8080:80   # then open http://127.0.0.1:8080\n  labctl port-forward svc/hello-world :80       # any free local port"
    )]
    PortForward {
        #[command(flatten)]
        lab: LabArgs,
        /// The Service: svc/NAME (or NAME).
        target: String,
        /// LOCAL:REMOTE (REMOTE is the Service's port), PORT for both, or :REMOTE for a
        /// free local port.
        ports: String,
        /// The Service's namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Run the lab's server in this process (what `labctl up` starts in the background).
    #[command(hide = true)]
    Serve {
        #[command(flatten)]
        lab: LabArgs,
    },
}

/// Adds to a connection error what it means in the lab, and where to look.
fn explain_unreachable(e: std::io::Error, target: std::net::SocketAddr) -> anyhow::Error {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        NetworkUnreachable | HostUnreachable | ConnectionRefused | TimedOut
    ) {
        anyhow::Error::new(e).context(format!(
            "nothing in the lab answers on {target}: no Service, Pod or node has that address and port, or the Service has no ready endpoints (`kubectl get svc,endpointslices,pods -o wide` shows them)"
        ))
    } else {
        e.into()
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LABCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Before any thread starts: joining or making a user namespace needs a single thread.
    rootless(&cli);
    // One line per cause, as a CLI should; no backtrace even when RUST_BACKTRACE is set.
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Without root, kernel mode runs in an unprivileged user namespace (see `labctl::userns`):
/// a command on a running lab joins its server's namespaces; a command that starts a kernel
/// or auto-mode lab makes new ones, which the server inherits. Nothing happens as root, for
/// other providers, or for labs in userspace or API-only mode.
fn rootless(cli: &Cli) {
    if rustix::process::geteuid().is_root() {
        return;
    }
    let kernel_flags = |network: Option<lab::NetworkMode>, dataplane: Option<lab::Dataplane>| {
        matches!(
            lab::resolve_flags(network, dataplane),
            Ok((lab::NetworkMode::Auto | lab::NetworkMode::Kernel, _))
        )
    };
    let (dir, starts) = match &cli.command {
        Cmd::Up {
            lab,
            provider: Provider::Embedded,
            network,
            dataplane,
            ..
        } => (lab.dir(), kernel_flags(*network, *dataplane)),
        Cmd::Up { .. } => return,
        Cmd::Tutorial {
            name,
            state_dir,
            provider: Provider::Embedded,
            network,
            dataplane,
            ..
        } => {
            let lab = LabArgs {
                name: name.clone(),
                state_dir: state_dir.clone(),
            };
            (lab.dir(), kernel_flags(*network, *dataplane))
        }
        Cmd::Tutorial { .. } => return,
        Cmd::Serve { lab } => (lab.dir(), true),
        Cmd::Down { lab, .. }
        | Cmd::Kubeconfig { lab, .. }
        | Cmd::Status { lab }
        | Cmd::Exec { lab, .. }
        | Cmd::Curl { lab, .. }
        | Cmd::Verify { lab, .. }
        | Cmd::Rules { lab, .. }
        | Cmd::PortForward { lab, .. } => (lab.dir(), false),
    };
    if let Some(pid) = dir.running_pid() {
        if let Err(e) = labctl::userns::join(pid) {
            eprintln!(
                "note: lab {:?} runs in namespaces this user cannot join ({e}); what reaches into its network namespaces will fail",
                dir.name
            );
        }
        return;
    }
    // A lab created earlier keeps its mode; `up` of an existing userspace lab makes nothing.
    let keeps_kernel = match dir.config() {
        Ok(Some(config)) if !matches!(cli.command, Cmd::Tutorial { .. }) => {
            matches!(
                config.network,
                lab::NetworkMode::Auto | lab::NetworkMode::Kernel
            ) && config.dataplane != lab::Dataplane::Userspace
        }
        _ => true,
    };
    if starts && keeps_kernel {
        let _ = labctl::userns::enter_new();
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Up {
            lab,
            provider,
            workers,
            foreground,
            merge_kubeconfig,
            load_balancer_pool,
            network,
            dataplane,
        } => {
            let dir = lab.dir();
            match provider {
                Provider::Embedded => {}
                Provider::Kind => return up_kind(&dir, usize::from(workers)),
                Provider::Kubeconfig => return check_kubeconfig_cluster(),
            }
            let asked = (network, dataplane);
            let (network, dataplane) =
                lab::resolve_flags(network, dataplane).map_err(anyhow::Error::msg)?;
            if labctl::kind::is_kind_lab(&dir) {
                anyhow::bail!(
                    "lab {:?} is a kind cluster (made with --provider kind); `labctl down --name {}` deletes it, or choose another --name",
                    lab.name,
                    lab.name
                );
            }
            let existing = dir.config()?;
            if let Some(config) = &existing
                && let Some((made, flag)) = lab::fixed_flag_differs(config, asked)
            {
                anyhow::bail!(
                    "lab {:?} was made with {made}, which is fixed when a lab is made; `labctl down --name {} --purge` deletes it and its objects, then `{} {flag}` makes it anew (or choose another --name)",
                    lab.name,
                    lab.name,
                    lab::command_for("up", &lab.name),
                );
            }
            let (config, _) =
                dir.create(usize::from(workers), load_balancer_pool, network, dataplane)?;
            if config.cluster.nodes.len() != usize::from(workers) + 1 && workers != 2 {
                eprintln!(
                    "note: lab {:?} already exists with {} workers; --workers applies to new labs only",
                    lab.name,
                    config.cluster.nodes.len() - 1
                );
            }
            let merge = || -> Result<()> {
                if merge_kubeconfig && lab::user_kubeconfig() != dir.kubeconfig_path() {
                    let path = lab::user_kubeconfig();
                    let text = std::fs::read_to_string(dir.kubeconfig_path())?;
                    lab::merge_kubeconfig(&path, &text, &lab.name, false)?;
                    eprintln!(
                        "Added context {} to {} and made it current.",
                        lab::context_name(&lab.name),
                        path.display()
                    );
                }
                Ok(())
            };
            if foreground {
                merge()?;
                init_tracing();
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                return rt.block_on(lab::serve(&dir));
            }
            let spin = labctl::console::spinner(format!("starting lab {:?}", lab.name));
            let pid = lab::start_background(&dir, &lab.base(), Duration::from_secs(30));
            spin.finish_and_clear();
            let pid = match pid {
                Ok(pid) => pid,
                // A lab that never ran holds nothing worth keeping, and kept it would hold on
                // to the flags that made it fail.
                Err(e) if existing.is_none() => {
                    if let Err(undo) = lab::forget_unstarted(&dir, &lab::user_kubeconfig()) {
                        return Err(e.context(format!(
                            "lab {:?} did not start, and undoing it failed ({undo:#}); `labctl down --name {} --purge` deletes it",
                            lab.name, lab.name
                        )));
                    }
                    return Err(e.context(format!(
                        "lab {:?} did not start, so it was not kept (its log stays at {}); fix the cause, or choose other flags, and run `{}` again",
                        lab.name,
                        dir.log_path().display(),
                        lab::command_for("up", &lab.name)
                    )));
                }
                Err(e) => return Err(e),
            };
            merge()?;
            println!(
                "Lab {:?} is up: API at https://127.0.0.1:{} (pid {pid}, log {}).",
                lab.name,
                config.port,
                dir.log_path().display()
            );
            println!(
                "Use it with kubectl:\n  export KUBECONFIG={}\n  kubectl get nodes -o wide",
                dir.kubeconfig_path().display()
            );
            match lab::running_mode(&dir) {
                Some(lab::Mode::Kernel) => {
                    println!(
                        "Kernel mode, {} dataplane: nodes, Pods and a client are network namespaces; try `{} http://<CLUSTER-IP>`, `{}` or `{} {}-worker -- {}`.",
                        config.dataplane.as_str(),
                        lab::command_for("curl", &lab.name),
                        lab::command_for("rules", &lab.name),
                        lab::command_for("exec", &lab.name),
                        lab.name,
                        if config.dataplane == lab::Dataplane::Nftables {
                            "nft list ruleset"
                        } else {
                            "iptables -t nat -L KUBE-SERVICES -n"
                        }
                    );
                    if let Some(uid) = labctl::userns::outside_uid() {
                        println!("{}", labctl::userns::note(uid));
                    }
                }
                Some(lab::Mode::Userspace) => println!(
                    "Userspace mode{}: Pods and Services are served on loopback twins of their addresses (10.96.0.5 at 127.96.0.5); reach them with `{} http://<CLUSTER-IP>`.",
                    lab::why_not_kernel(&config)
                        .map(|why| format!(" ({why})"))
                        .unwrap_or_default(),
                    lab::command_for("curl", &lab.name)
                ),
                _ => println!(
                    "API-only mode: Pods become Ready in the API, but nothing serves them."
                ),
            }
            Ok(())
        }
        Cmd::Down { lab, purge } => {
            let dir = lab.dir();
            if labctl::kind::is_kind_lab(&dir) {
                labctl::kind::down(&dir)?;
                if purge {
                    std::fs::remove_dir_all(&dir.root)
                        .with_context(|| format!("deleting {}", dir.root.display()))?;
                }
                println!("kind cluster {:?} deleted.", lab.name);
                return Ok(());
            }
            let report = lab::down(&dir, purge, &lab::user_kubeconfig())?;
            if report.namespaces_removed > 0 {
                eprintln!(
                    "Removed {} network namespaces of lab {:?}.",
                    report.namespaces_removed, lab.name
                );
            }
            if let Some(path) = &report.context_removed_from {
                eprintln!(
                    "Removed context {} from {}.",
                    lab::context_name(&lab.name),
                    path.display()
                );
            }
            let was_running = report.was_running;
            match (was_running, purge) {
                (true, true) => println!("Lab {:?} stopped and its state deleted.", lab.name),
                (true, false) => println!(
                    "Lab {:?} stopped; its objects are kept in {} (`{}` resumes, `--purge` deletes).",
                    lab.name,
                    dir.root.display(),
                    lab::command_for("up", &lab.name)
                ),
                (false, true) => {
                    println!("Lab {:?} was not running; its state is deleted.", lab.name)
                }
                (false, false) => println!("Lab {:?} was not running.", lab.name),
            }
            Ok(())
        }
        Cmd::Kubeconfig { lab, path, merge } => {
            let dir = lab.dir();
            dir.existing_config()?;
            let text = std::fs::read_to_string(dir.kubeconfig_path())
                .with_context(|| format!("reading {}", dir.kubeconfig_path().display()))?;
            if merge && lab::user_kubeconfig() != dir.kubeconfig_path() {
                let target = lab::user_kubeconfig();
                lab::merge_kubeconfig(&target, &text, &lab.name, false)?;
                eprintln!(
                    "Added context {} to {} and made it current.",
                    lab::context_name(&lab.name),
                    target.display()
                );
            } else if path {
                println!("{}", dir.kubeconfig_path().display());
            } else {
                print!("{text}");
            }
            Ok(())
        }
        Cmd::Status { lab } => {
            let dir = lab.dir();
            if labctl::kind::is_kind_lab(&dir) {
                println!(
                    "Lab {:?} is a kind cluster: kubeconfig {} (`kind get clusters` lists it, `labctl down --name {}` deletes it).",
                    lab.name,
                    dir.kubeconfig_path().display(),
                    lab.name
                );
                return Ok(());
            }
            match (dir.config()?, dir.running_pid()) {
                (None, _) if dir.log_path().is_file() => println!(
                    "Lab {:?} does not exist: its last start failed, and its log is at {}.",
                    lab.name,
                    dir.log_path().display()
                ),
                (None, _) => println!(
                    "Lab {:?} does not exist (state directory {}).",
                    lab.name,
                    dir.root.display()
                ),
                (Some(c), Some(pid)) => println!(
                    "Lab {:?} is running in {} mode (dataplane {}): https://127.0.0.1:{} (pid {pid}), {} nodes, kubeconfig {}.",
                    lab.name,
                    match lab::running_mode(&dir) {
                        Some(lab::Mode::ApiOnly) => "API-only",
                        Some(mode) => mode.as_str(),
                        None => "unknown",
                    },
                    lab::running_mode(&dir)
                        .map(|m| lab::dataplane_in(m, &c))
                        .unwrap_or("unknown"),
                    c.port,
                    c.cluster.nodes.len(),
                    dir.kubeconfig_path().display()
                ),
                (Some(c), None) => println!(
                    "Lab {:?} is stopped (network {}, dataplane {}); `{}` resumes it.",
                    lab.name,
                    c.network.as_str(),
                    c.dataplane_word(),
                    lab::command_for("up", &lab.name)
                ),
            }
            Ok(())
        }
        Cmd::Exec { lab, node, command } => {
            let dir = lab.dir();
            let config = dir.running_config()?;
            let ns = reach::namespace(&dir, &config, &node)?;
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(&command)
                .status()
                .context("running `ip netns exec` (is iproute2 installed?)")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Curl {
            lab,
            url,
            from,
            node,
            count,
        } => {
            let target = reach::parse_url(&url)?;
            let origin = match from {
                From::Node => reach::Origin::Node(node),
                From::Client => reach::Origin::Client,
                From::Host => reach::Origin::Host,
            };
            let place = reach::Reach::new(&lab.dir(), &origin)?;
            for answer in place.get_many(target, count, Duration::from_secs(3)) {
                let body = answer
                    .map_err(|e| explain_unreachable(e, target))
                    .with_context(|| place.describe(target))?;
                print!("{body}");
            }
            Ok(())
        }
        Cmd::Tutorial {
            name,
            state_dir,
            workers,
            network,
            dataplane,
            keep,
            step,
            requests,
            provider,
            kubeconfig,
            context,
        } => {
            if provider != Provider::Kubeconfig && (kubeconfig.is_some() || context.is_some()) {
                anyhow::bail!(
                    "--kubeconfig and --context choose an existing cluster: add `--provider kubeconfig`"
                );
            }
            // kubectl runs in the lab's directory: a relative path is the caller's.
            let kubeconfig = kubeconfig
                .map(|p| std::path::absolute(&p).with_context(|| format!("{}", p.display())))
                .transpose()?;
            // kubectl would fall back to localhost:8080 and blame the cluster instead.
            if let Some(path) = kubeconfig.as_ref().filter(|p| !p.is_file()) {
                anyhow::bail!(
                    "--kubeconfig {}: no such file; give the path of a kubeconfig (`kubectl config view --raw > FILE` writes the one kubectl uses now)",
                    path.display()
                );
            }
            let (network, dataplane) =
                lab::resolve_flags(network, dataplane).map_err(anyhow::Error::msg)?;
            let lab = LabArgs { name, state_dir };
            tutorial::run(&tutorial::Options {
                dir: lab.dir(),
                base: lab.base(),
                workers: usize::from(workers),
                network,
                dataplane,
                keep,
                stop_after: step,
                requests,
                significance: verify::DEFAULT_SIGNIFICANCE,
                provider,
                kubeconfig,
                context,
            })
        }
        Cmd::Verify {
            lab,
            service,
            namespace,
            port,
            requests,
            from,
            node,
            significance,
            output,
            junit,
        } => {
            if !(significance > 0.0 && significance < 1.0) {
                anyhow::bail!("--significance {significance} is not a probability between 0 and 1");
            }
            let dir = lab.dir();
            let config = dir.existing_config()?;
            let request = probe::Request {
                name: probe::parse_service(&service)?,
                namespace,
                port,
                origin: match from {
                    From::Node => reach::Origin::Node(node),
                    From::Client => reach::Origin::Client,
                    From::Host => reach::Origin::Host,
                },
                requests,
                significance,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(probe::verify(&dir, &config, &request))?;
            if let Some(path) = &junit {
                let xml = verify::junit(&report, &format!("svc/{}", request.name))?;
                std::fs::write(path, xml).with_context(|| format!("writing {}", path.display()))?;
            }
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Text => {
                    let mut console = labctl::console::Console::default();
                    console.output(&format!("{}\n", report.target));
                    console.output(&verify::chart(&report));
                    let line = verify::summary(&report);
                    if report.passed {
                        console.pass(&line);
                    } else {
                        console.fail(&line);
                    }
                }
            }
            if !report.passed {
                anyhow::bail!("{}", report.reasons.join("; "));
            }
            Ok(())
        }
        Cmd::Rules { lab, args } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            print!("{}", rt.block_on(labctl::rules::run(&lab.dir(), &args))?);
            Ok(())
        }
        Cmd::PortForward {
            lab,
            target,
            ports,
            namespace,
        } => {
            let forward = labctl::portforward::Forward::parse(&target, &ports)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(labctl::portforward::run(&lab.dir(), &namespace, &forward))
        }
        Cmd::Serve { lab } => {
            init_tracing();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(lab::serve(&lab.dir()))
        }
    }
}

/// `labctl up --provider kind`.
fn up_kind(dir: &LabDir, workers: usize) -> Result<()> {
    let spin = labctl::console::spinner(format!(
        "creating kind cluster {:?} (about a minute)",
        dir.name
    ));
    let up = labctl::kind::up(dir, workers);
    spin.finish_and_clear();
    let (notes, _) = up?;
    for note in notes {
        println!("{note}");
    }
    println!(
        "kind cluster {:?} is up. Use it with kubectl:\n  export KUBECONFIG={}\n  kubectl get nodes -o wide
`labctl down --name {}` deletes it.",
        dir.name,
        dir.kubeconfig_path().display(),
        dir.name
    );
    Ok(())
}

/// `labctl up --provider kubeconfig`: nothing to bring up; says whether the cluster of the
/// current context answers, and how to run the tutorial on it.
fn check_kubeconfig_cluster() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // kube's error already names every place it looked; one line is enough.
        let config = kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!("no usable kubeconfig (KUBECONFIG or ~/.kube/config): {e}")
        })?;
        let url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).context("building the API client")?;
        let version = client.apiserver_version().await.with_context(|| {
            format!("the cluster at {url} does not answer; check the kubeconfig's current context (`kubectl cluster-info`)")
        })?;
        println!(
            "The cluster at {url} answers (Kubernetes {}.{}); there is nothing to bring up. Run the tutorial on it with `labctl tutorial --provider kubeconfig` (it creates and deletes hello-world in namespace default).",
            version.major, version.minor
        );
        Ok(())
    })
}
