//! `labctl`: bring up the embedded lab cluster and point kubectl at it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use labctl::lab::{self, LabDir};

/// Services Lab: the Kubernetes Services tutorial on an embedded lab cluster.
#[derive(Parser)]
#[command(version, about, long_about = None, after_help = "Examples:\n  labctl up\n  export KUBECONFIG=$(labctl kubeconfig --path)\n  kubectl get nodes -o wide\n  labctl down --purge")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct LabArgs {
    /// The lab's name (node names start with it, as on kind).
    #[arg(long, default_value = "lab", env = "LABCTL_NAME")]
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
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the embedded lab cluster (in the background unless --foreground) and wait until
    /// its API answers.
    #[command(
        after_help = "Examples:\n  labctl up\n  labctl up --name demo --workers 3 --merge-kubeconfig"
    )]
    Up {
        #[command(flatten)]
        lab: LabArgs,
        /// Worker nodes (pod CIDRs 10.244.1.0/24, 10.244.2.0/24, ...); fixed when the lab is created.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=50))]
        workers: u8,
        /// Run in this terminal until Ctrl-C instead of in the background.
        #[arg(long)]
        foreground: bool,
        /// Also add the lab to ~/.kube/config (or $KUBECONFIG) as context labctl-<name> and make it current.
        #[arg(long)]
        merge_kubeconfig: bool,
        /// Where Pods run: `kernel` (network namespaces, wasm Pods, iptables per node; needs
        /// root), `none` (API only), `auto` (kernel when possible); fixed when the lab is created.
        #[arg(long, value_enum, default_value_t = lab::NetworkMode::Auto)]
        network: lab::NetworkMode,
        /// LoadBalancer ingress addresses, FIRST-LAST (what cloud-provider-kind or MetalLB
        /// hands out on kind); fixed when the lab is created.
        #[arg(long, value_name = "FIRST-LAST", value_parser = lab::parse_pool)]
        load_balancer_pool: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
    },
    /// Stop the lab's server; with --purge also delete its stored objects and credentials.
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
    /// Say whether the lab runs, where, and where its files are.
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
        /// Where the request starts: a node, or the client outside the cluster.
        #[arg(long, value_enum, default_value_t = From::Node)]
        from: From,
        /// Which node, with `--from node` [default: the first worker].
        #[arg(long)]
        node: Option<String>,
        /// How many requests.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10000))]
        count: u32,
    },
    /// Forward a port on the host's 127.0.0.1 to a Service of the lab, for a browser on the
    /// host; runs until Ctrl-C, like `kubectl port-forward`.
    #[command(
        after_help = "Examples:\n  labctl port-forward svc/hello-world 8080:80   # then open http://127.0.0.1:8080\n  labctl port-forward svc/hello-world :80       # any free local port"
    )]
    PortForward {
        #[command(flatten)]
        lab: LabArgs,
        /// The Service: svc/NAME.
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

fn user_kubeconfig() -> PathBuf {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).next())
        .filter(|p| !p.as_os_str().is_empty())
    {
        return first;
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".kube/config")
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
    // One line per cause, as a CLI should; no backtrace even when RUST_BACKTRACE is set.
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Up {
            lab,
            workers,
            foreground,
            merge_kubeconfig,
            load_balancer_pool,
            network,
        } => {
            let dir = lab.dir();
            let (config, _) = dir.create(usize::from(workers), load_balancer_pool, network)?;
            if config.cluster.nodes.len() != usize::from(workers) + 1 && workers != 2 {
                eprintln!(
                    "note: lab {:?} already exists with {} workers; --workers applies to new labs only",
                    lab.name,
                    config.cluster.nodes.len() - 1
                );
            }
            if merge_kubeconfig && user_kubeconfig() != dir.kubeconfig_path() {
                let path = user_kubeconfig();
                let text = std::fs::read_to_string(dir.kubeconfig_path())?;
                lab::merge_kubeconfig(&path, &text, &lab.name, false)?;
                eprintln!(
                    "Added context {} to {} and made it current.",
                    lab::context_name(&lab.name),
                    path.display()
                );
            }
            if foreground {
                init_tracing();
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                return rt.block_on(lab::serve(&dir));
            }
            let pid = lab::start_background(&dir, &lab.base(), Duration::from_secs(30))?;
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
                Some(lab::Mode::Kernel) => println!(
                    "Kernel mode: nodes, Pods and a client are network namespaces; try `labctl curl http://<CLUSTER-IP>` or `labctl exec {}-worker -- iptables -t nat -L KUBE-SERVICES -n`.",
                    lab.name
                ),
                Some(lab::Mode::Userspace) => println!(
                    "Userspace mode{}: Pods and Services are served on loopback twins of their addresses (10.96.0.5 at 127.96.0.5); reach them with `labctl curl http://<CLUSTER-IP>`.",
                    if config.network == lab::NetworkMode::Auto {
                        " (this process may not create network namespaces; run as root for kernel mode)"
                    } else {
                        ""
                    }
                ),
                _ => println!(
                    "API-only mode: Pods become Ready in the API, but nothing serves them."
                ),
            }
            Ok(())
        }
        Cmd::Down { lab, purge } => {
            let dir = lab.dir();
            let was_running = lab::stop(&dir, Duration::from_secs(15))?;
            // A lab killed without a chance to clean up leaves its namespaces behind.
            let removed = labctl::network::teardown(&lab.name);
            if removed > 0 {
                eprintln!(
                    "Removed {removed} network namespaces of lab {:?}.",
                    lab.name
                );
            }
            let merged = user_kubeconfig();
            // KUBECONFIG may point at the lab's own file, which goes with the lab.
            if merged != dir.kubeconfig_path()
                && std::fs::read_to_string(&merged)
                    .is_ok_and(|t| t.contains(&lab::context_name(&lab.name)))
            {
                lab::merge_kubeconfig(&merged, "{}", &lab.name, true)?;
                eprintln!(
                    "Removed context {} from {}.",
                    lab::context_name(&lab.name),
                    merged.display()
                );
            }
            if purge && dir.root.exists() {
                std::fs::remove_dir_all(&dir.root)
                    .with_context(|| format!("deleting {}", dir.root.display()))?;
            }
            match (was_running, purge) {
                (true, true) => println!("Lab {:?} stopped and its state deleted.", lab.name),
                (true, false) => println!(
                    "Lab {:?} stopped; its objects are kept in {} (`labctl up` resumes, `--purge` deletes).",
                    lab.name,
                    dir.root.display()
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
            if dir.config()?.is_none() {
                anyhow::bail!(
                    "lab {:?} does not exist under {}; run `labctl up` first",
                    lab.name,
                    dir.root.display()
                );
            }
            let text = std::fs::read_to_string(dir.kubeconfig_path())
                .with_context(|| format!("reading {}", dir.kubeconfig_path().display()))?;
            if merge && user_kubeconfig() != dir.kubeconfig_path() {
                let target = user_kubeconfig();
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
            match (dir.config()?, dir.running_pid()) {
                (None, _) => println!(
                    "Lab {:?} does not exist (state directory {}).",
                    lab.name,
                    dir.root.display()
                ),
                (Some(c), Some(pid)) => println!(
                    "Lab {:?} is running in {} mode: https://127.0.0.1:{} (pid {pid}), {} nodes, kubeconfig {}.",
                    lab.name,
                    lab::running_mode(&dir)
                        .map(lab::Mode::as_str)
                        .unwrap_or("unknown"),
                    c.port,
                    c.cluster.nodes.len(),
                    dir.kubeconfig_path().display()
                ),
                (Some(_), None) => println!(
                    "Lab {:?} is stopped; `labctl up --name {}` resumes it.",
                    lab.name, lab.name
                ),
            }
            Ok(())
        }
        Cmd::Exec { lab, node, command } => {
            let ns = lab_namespace(&lab, &node)?;
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
            let target = parse_url(&url)?;
            let dir = lab.dir();
            let config = dir
                .config()?
                .context("the lab does not exist; run `labctl up` first")?;
            if lab::running_mode(&dir) == Some(lab::Mode::Userspace) {
                // Every address of the lab has a loopback twin in the host's namespace.
                let twin = match target.ip() {
                    std::net::IpAddr::V4(ip) if !ip.is_loopback() => {
                        labctl::runtime::loopback_twin(ip)
                    }
                    std::net::IpAddr::V4(ip) => ip,
                    std::net::IpAddr::V6(_) => anyhow::bail!("the lab is IPv4 only"),
                };
                let addr = std::net::SocketAddr::from((
                    twin,
                    labctl::runtime::userspace_port(target.port()),
                ));
                for _ in 0..count {
                    let stream =
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                            .with_context(|| {
                                format!("connecting to {url} (served at {addr} in userspace mode)")
                            })?;
                    print!(
                        "{}",
                        labctl::network::http_exchange(
                            stream,
                            &target.to_string(),
                            Duration::from_secs(3)
                        )
                        .with_context(|| format!("GET {url}"))?
                    );
                }
                return Ok(());
            }
            let where_from = match from {
                From::Client => "client".to_string(),
                From::Node => node.unwrap_or_else(|| {
                    config
                        .cluster
                        .nodes
                        .iter()
                        .find(|n| !n.control_plane)
                        .map(|n| n.name.clone())
                        .unwrap_or_default()
                }),
            };
            let ns = lab_namespace(&lab, &where_from)?;
            for _ in 0..count {
                let body = labctl::network::http_get(&ns, target, Duration::from_secs(3))
                    .with_context(|| format!("GET {url} from {where_from}"))?;
                print!("{body}");
            }
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

/// The namespace of `node` (or `client`) in a running kernel-mode lab.
fn lab_namespace(lab: &LabArgs, node: &str) -> Result<String> {
    let dir = lab.dir();
    let config = dir
        .config()?
        .with_context(|| format!("lab {:?} does not exist; run `labctl up` first", lab.name))?;
    if dir.running_pid().is_none() {
        anyhow::bail!(
            "lab {:?} is not running; `labctl up --name {}` starts it",
            lab.name,
            lab.name
        );
    }
    let names = labctl::network::Names::new(&lab.name);
    let ns = if node == "client" {
        names.client()
    } else if config.cluster.nodes.iter().any(|n| n.name == node) {
        names.node(node)
    } else {
        let known: Vec<&str> = config
            .cluster
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        anyhow::bail!(
            "no node {node:?} in lab {:?}; its nodes are {} (or `client`)",
            lab.name,
            known.join(", ")
        );
    };
    if !std::path::Path::new("/run/netns").join(&ns).exists() {
        anyhow::bail!(
            "lab {:?} runs without kernel networking (userspace or API-only mode), so there is no {node} namespace; labs created as root with `--network kernel` have one (in userspace mode, `labctl curl` reaches Services from the host)",
            lab.name
        );
    }
    Ok(ns)
}

/// `http://IP[:PORT][/...]` to an address.
fn parse_url(url: &str) -> Result<std::net::SocketAddr> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or("");
    let with_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:80")
    };
    with_port.parse().with_context(|| {
        format!("{url:?} is not http://IP[:PORT] (names are not resolved in the lab)")
    })
}
