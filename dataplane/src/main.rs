//! `dataplane`: kube-proxy-style rules for Services and EndpointSlices.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use dataplane::apply::Netns;
use dataplane::apply::iptables::IptablesApplier;
use dataplane::apply::nft::NftApplier;
use dataplane::compile::compile;
use dataplane::model::{NodeConfig, Snapshot};
use dataplane::render::iptables;
use dataplane::render::nft::{self, Layout};
use dataplane::watch::{
    Backend, IptablesBackend, NftBackend, SyncError, SyncOptions, SyncStats, Synced,
    UserspaceBackend, run as run_sync,
};
use ipnet::Ipv4Net;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// kube-proxy-style rules for Services and EndpointSlices: see them, or program them into a
/// network namespace.
///
/// Without a subcommand it watches a Kubernetes API (like kube-proxy) and keeps the rules in
/// sync until SIGTERM.
#[derive(Debug, Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  dataplane --kubeconfig ~/.kube/config --node-name lab-worker --netns lab-node\n  dataplane --once --dry-run --mode nftables\n  kubectl get svc,endpointslices -o yaml > objects.yaml\n  dataplane render -f objects.yaml --node-name lab-worker --node-ip 172.18.0.3\n  dataplane apply -f objects.yaml --netns lab-node"
)]
struct Cli {
    #[command(flatten)]
    watch: WatchArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// The kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where the rules go.
    #[arg(long, value_enum, default_value_t = WatchMode::Iptables)]
    mode: WatchMode,
    /// The nftables layout, with --mode nftables.
    #[arg(long, value_enum, default_value_t = NftLayout::KubeProxy)]
    nft_layout: NftLayout,
    #[command(flatten)]
    node: NodeArgs,
    /// Program this network namespace (`ip netns` name) instead of the current one.
    #[arg(long)]
    netns: Option<String>,
    /// Sync once, then exit.
    #[arg(long)]
    once: bool,
    /// Print the rules each sync would apply instead of applying them.
    #[arg(long)]
    dry_run: bool,
    /// Minimum time between syncs (kube-proxy's minSyncPeriod).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    min_sync_period: Duration,
    /// Maximum time between syncs (kube-proxy's syncPeriod).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    sync_period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WatchMode {
    /// iptables rules in kube-proxy's layout.
    Iptables,
    /// One nftables table (see --nft-layout).
    Nftables,
    /// A userspace TCP/UDP proxy listening on the service addresses (no privileges needed).
    Userspace,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the rules for the Services and EndpointSlices in a YAML file (as `kubectl get
    /// -o yaml` prints them; `List` documents included). Needs no cluster and no privileges.
    Render(Source),
    /// Program the rules into a network namespace (root), replacing what was there.
    Apply {
        #[command(flatten)]
        source: Source,
        /// The network namespace (`ip netns` name); the current one when omitted.
        #[arg(long)]
        netns: Option<String>,
        /// Remove every rule and chain of ours instead.
        #[arg(long)]
        cleanup: bool,
    },
}

#[derive(Debug, Args)]
struct Source {
    /// The YAML file, or `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// The rule format.
    #[arg(long, value_enum, default_value_t = Mode::Iptables)]
    mode: Mode,
    /// The nftables layout, with --mode nftables.
    #[arg(long, value_enum, default_value_t = NftLayout::KubeProxy)]
    nft_layout: NftLayout,
    #[command(flatten)]
    node: NodeArgs,
}

/// The node the rules are for.
#[derive(Debug, Args)]
struct NodeArgs {
    /// The node's name (Local traffic policies keep its endpoints only).
    #[arg(long, default_value = "node")]
    node_name: String,
    /// An IP of the node (repeatable).
    #[arg(long = "node-ip")]
    node_ips: Vec<Ipv4Addr>,
    /// The cluster's pod CIDR: traffic from elsewhere to a ClusterIP is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: Ipv4Net,
}

impl NodeArgs {
    fn config(&self) -> NodeConfig {
        NodeConfig {
            node_ips: self.node_ips.clone(),
            cluster_cidr: Some(self.cluster_cidr),
            ..NodeConfig::new(&self.node_name)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// iptables-restore input in kube-proxy's layout.
    Iptables,
    /// One `nft -f` transaction replacing our table (see --nft-layout).
    Nftables,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NftLayout {
    /// kube-proxy's nftables layout (table `ip kube-proxy`).
    KubeProxy,
    /// No per-endpoint chains: a key drawn with numgen into the conntrack mark, DNATed
    /// through shared maps of key to `addr . port` (table `ip services-lab`).
    Fast,
}

impl From<NftLayout> for Layout {
    fn from(layout: NftLayout) -> Self {
        match layout {
            NftLayout::KubeProxy => Layout::KubeProxy,
            NftLayout::Fast => Layout::Fast,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "dataplane=info".into()),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dataplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(source: &Source) -> anyhow::Result<(Snapshot, NodeConfig)> {
    let text = if source.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(&source.file)
            .with_context(|| format!("reading {}", source.file.display()))?
    };
    let objects = dataplane::manifest::parse(&text)
        .with_context(|| format!("reading {}", source.file.display()))?;
    for (kind, count) in &objects.skipped {
        eprintln!(
            "dataplane: skipped {count} {kind} object(s): only Services and EndpointSlices make rules"
        );
    }
    let snapshot = Snapshot::from_objects(&objects.services, &objects.endpoint_slices)?;
    Ok((snapshot, source.node.config()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Some(command) = cli.command else {
        let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
        return runtime.block_on(watch(cli.watch));
    };
    match command {
        Command::Render(source) => {
            let (snapshot, node) = load(&source)?;
            match source.mode {
                Mode::Iptables => print!("{}", iptables::render(&compile(&snapshot, &node))),
                Mode::Nftables => print!(
                    "{}",
                    nft::render(&snapshot, &node, source.nft_layout.into())?
                ),
            }
        }
        Command::Apply {
            source,
            netns,
            cleanup,
        } => {
            let (snapshot, node) = load(&source)?;
            let netns = Netns(netns);
            match source.mode {
                Mode::Iptables => {
                    let rules = compile(&snapshot, &node);
                    let applier = IptablesApplier::new(netns);
                    if cleanup {
                        applier.cleanup(&rules).context("removing the rules")?;
                    } else {
                        applier.apply(&rules).context("applying the rules")?;
                    }
                }
                Mode::Nftables => {
                    let layout: Layout = source.nft_layout.into();
                    let applier = NftApplier::new(netns, layout.table());
                    if cleanup {
                        applier.cleanup().context("removing the rules")?;
                    } else {
                        let input = nft::render(&snapshot, &node, layout)?;
                        applier.apply(&input).context("applying the rules")?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Prints what each sync would apply.
struct DryRun(WatchMode, Layout);

impl Backend for DryRun {
    async fn sync(&mut self, snapshot: &Snapshot, node: &NodeConfig) -> Result<Synced, SyncError> {
        let text = match self.0 {
            WatchMode::Iptables => iptables::render(&compile(snapshot, node)),
            WatchMode::Nftables => nft::render(snapshot, node, self.1)?,
            WatchMode::Userspace => dataplane::proxy::routes(snapshot, node, |ip| ip)
                .iter()
                .map(|r| {
                    let eps: Vec<String> = r.endpoints.iter().map(ToString::to_string).collect();
                    format!("{} {} -> {}\n", r.protocol, r.listen, eps.join(" "))
                })
                .collect(),
        };
        print!("{text}");
        Ok(Synced::Changed)
    }
}

async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no cluster found: pass --kubeconfig, set KUBECONFIG, or run in a Pod")?,
    };
    let client = kube::Client::try_from(config).context("connecting to the cluster")?;
    let node = args.node.config();
    let options = SyncOptions {
        min_interval: args.min_sync_period,
        resync: args.sync_period,
        once: args.once,
    };
    let stats = Arc::new(Mutex::new(SyncStats::default()));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let netns = Netns(args.netns.clone());
    let layout: Layout = args.nft_layout.into();
    let result = if args.dry_run {
        run_sync(
            client,
            node,
            DryRun(args.mode, layout),
            options,
            stats.clone(),
            shutdown,
        )
        .await
    } else {
        match args.mode {
            WatchMode::Iptables => {
                let backend = IptablesBackend(IptablesApplier::new(netns));
                run_sync(client, node, backend, options, stats.clone(), shutdown).await
            }
            WatchMode::Nftables => {
                let backend = NftBackend::new(NftApplier::new(netns, layout.table()), layout);
                run_sync(client, node, backend, options, stats.clone(), shutdown).await
            }
            WatchMode::Userspace => {
                let backend = UserspaceBackend(dataplane::proxy::UserspaceProxy::new(), |ip| ip);
                run_sync(client, node, backend, options, stats.clone(), shutdown).await
            }
        }
    };
    let s = *stats.lock().expect("stats");
    tracing::info!(syncs = s.syncs, failures = s.failures, total = ?s.total_duration, "stopped");
    result.context("syncing the rules")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
