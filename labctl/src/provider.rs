//! Which kind of cluster a lab is: the embedded one, a kind cluster, or any cluster reached
//! through a kubeconfig. Everything after bringing it up is shared.

/// Which cluster labctl works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Provider {
    /// The embedded lab cluster (no Docker needed).
    #[default]
    Embedded,
    /// A kind cluster (needs Docker and kind; cloud-provider-kind for LoadBalancers).
    Kind,
    /// An existing cluster from a kubeconfig (e.g. AKS, as in the tutorial's LoadBalancer part).
    Kubeconfig,
}
