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
use ipnet::Ipv4Net;

/// kube-proxy-style rules for Services and EndpointSlices: see them, or program them into a
/// network namespace.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  kubectl get svc,endpointslices -o yaml > objects.yaml\n  dataplane render -f objects.yaml --node-name lab-worker --node-ip 172.18.0.3\n  dataplane apply -f objects.yaml --netns lab-node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// The node the rules are for (Local traffic policies keep its endpoints only).
    #[arg(long, default_value = "node")]
    node_name: String,
    /// An IP of the node (repeatable).
    #[arg(long = "node-ip")]
    node_ips: Vec<Ipv4Addr>,
    /// The cluster's pod CIDR: traffic from elsewhere to a ClusterIP is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: Ipv4Net,
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
    /// No per-endpoint chains: a numgen-indexed DNAT map per service (table `ip services-lab`).
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
    let node = NodeConfig {
        node_ips: source.node_ips.clone(),
        cluster_cidr: Some(source.cluster_cidr),
        ..NodeConfig::new(&source.node_name)
    };
    Ok((snapshot, node))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
