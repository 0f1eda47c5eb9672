//! A lab on disk and as a process: its state directory, configuration, kubeconfig, and the
//! `up` / `down` / `serve` lifecycle of the embedded lab cluster.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use labapi::Kind;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::apiserver::{self, Api, ServeOptions};
use crate::cluster::ClusterConfig;
use crate::controllers::{self, ApiOnlyRuntime, PodRuntime};
use crate::network::{self, KernelTool};
use crate::pki::{Credentials, write_private};
use crate::runtime::{Placement, WasmRuntime};
use crate::store::Store;

/// Where a lab keeps its files.
#[derive(Debug, Clone)]
pub struct LabDir {
    /// The lab's name.
    pub name: String,
    /// Its directory.
    pub root: PathBuf,
}

/// What is fixed when a lab is first created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabConfig {
    /// Nodes and address ranges.
    pub cluster: ClusterConfig,
    /// The API server's port on 127.0.0.1.
    pub port: u16,
    /// Where Pods run and Services route.
    #[serde(default)]
    pub network: NetworkMode,
    /// What programs Services on the nodes in kernel mode (labs made before the flag existed
    /// have iptables).
    #[serde(default)]
    pub dataplane: Dataplane,
}

impl LabConfig {
    /// The configured dataplane: `userspace` in userspace mode, `none` when API-only, else
    /// the kernel dataplane (which `auto` uses when it gets kernel mode).
    pub fn dataplane_word(&self) -> &'static str {
        match self.network {
            NetworkMode::Userspace => Dataplane::Userspace.as_str(),
            NetworkMode::None => "none",
            NetworkMode::Auto | NetworkMode::Kernel => self.dataplane.as_str(),
        }
    }
}

/// What implements Services: kernel rules per node, or the userspace proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    /// iptables rules per node, in kube-proxy's layout (the tutorial's listings).
    #[default]
    Iptables,
    /// One nftables table per node (the dataplane's `services-lab` layout).
    Nftables,
    /// The dataplane's userspace proxy on loopback addresses (no privileges).
    Userspace,
}

impl Dataplane {
    /// The word the flag, the configuration and `labctl status` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Dataplane::Iptables => "iptables",
            Dataplane::Nftables => "nftables",
            Dataplane::Userspace => "userspace",
        }
    }

    /// The programs a kernel-mode lab with this dataplane runs in its namespaces.
    pub fn kernel_tools(self) -> &'static [KernelTool] {
        const fn tool(program: &'static str, package: &'static str) -> KernelTool {
            KernelTool { program, package }
        }
        const IPTABLES: &[KernelTool] = &[
            tool("iptables-restore", "iptables"),
            tool("iptables-save", "iptables"),
            tool("iptables", "iptables"),
            tool("sysctl", "procps"),
        ];
        const NFTABLES: &[KernelTool] = &[tool("nft", "nftables"), tool("sysctl", "procps")];
        match self {
            Dataplane::Iptables => IPTABLES,
            Dataplane::Nftables => NFTABLES,
            Dataplane::Userspace => &[],
        }
    }
}

/// Folds `--network` and `--dataplane` (either may be left out) into what a new lab stores.
/// A kernel dataplane needs kernel mode, and the userspace one is userspace mode, so
/// combinations that ask for both at once are refused with the reason.
pub fn resolve_flags(
    network: Option<NetworkMode>,
    dataplane: Option<Dataplane>,
) -> Result<(NetworkMode, Dataplane), String> {
    use Dataplane as D;
    use NetworkMode as N;
    match (network, dataplane) {
        (network, None) => Ok((
            network.unwrap_or_default(),
            if network == Some(N::Userspace) {
                D::Userspace
            } else {
                D::Iptables
            },
        )),
        (None | Some(N::Auto | N::Userspace), Some(D::Userspace)) => {
            Ok((N::Userspace, D::Userspace))
        }
        (None | Some(N::Auto | N::Kernel), Some(d @ (D::Iptables | D::Nftables))) => {
            Ok((N::Kernel, d))
        }
        (Some(n), Some(d)) => Err(format!(
            "--network {} and --dataplane {} contradict each other: {}",
            n.as_str(),
            d.as_str(),
            match (n, d) {
                (N::None, _) => "`--network none` runs no dataplane at all (API only)",
                (N::Kernel, _) => {
                    "kernel mode programs iptables or nftables on each node; use `--dataplane iptables` or `--dataplane nftables`"
                }
                _ => {
                    "userspace mode has no kernel rules; use `--dataplane userspace`, or `--network kernel` (root) for iptables or nftables"
                }
            }
        )),
    }
}

/// Where the lab's Pods run and its Services route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Kernel mode when this process may make network namespaces, else userspace.
    #[default]
    Auto,
    /// Network namespaces per node and Pod, wasm Pods, iptables rules per node (root).
    Kernel,
    /// Wasm Pods and the dataplane's userspace proxy on loopback addresses (no privileges).
    Userspace,
    /// The API and controllers only: Pods are Ready in the API but nothing serves.
    None,
}

impl NetworkMode {
    /// The flag's word.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Auto => "auto",
            NetworkMode::Kernel => "kernel",
            NetworkMode::Userspace => "userspace",
            NetworkMode::None => "none",
        }
    }
}

/// For `labctl up` of an existing lab: what the lab was made with and the flag asking for
/// something else, when `--network` or `--dataplane` (fixed when a lab is made) differs.
pub fn fixed_flag_differs(
    config: &LabConfig,
    (network, dataplane): (Option<NetworkMode>, Option<Dataplane>),
) -> Option<(String, String)> {
    let made = match config.network {
        NetworkMode::None => "--network none (API-only)".to_string(),
        _ => format!("the {} dataplane", config.dataplane_word()),
    };
    // Kernel mode is what an `auto` lab runs in wherever it can, so asking for it is no change.
    let same = |n: NetworkMode| {
        n == config.network || (n == NetworkMode::Kernel && config.network == NetworkMode::Auto)
    };
    if let Some(n) = network.filter(|n| !same(*n)) {
        let made = format!("--network {}", config.network.as_str());
        return Some((made, format!("--network {}", n.as_str())));
    }
    dataplane
        .filter(|d| d.as_str() != config.dataplane_word())
        .map(|d| (made, format!("--dataplane {}", d.as_str())))
}

/// The lab that commands act on when no `--name` is given.
pub const DEFAULT_NAME: &str = "lab";

/// The longest lab name: node names (`<name>-control-plane`) must stay valid host names.
const MAX_NAME_LEN: usize = 40;

/// Checks a lab name before anything is made from it: node names (`<name>-worker`), its
/// network namespaces and its kubeconfig context all carry it, so it must be a lower-case
/// RFC 1123 label as Kubernetes requires of node names.
pub fn parse_name(name: &str) -> std::result::Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "a lab name is 1 to {MAX_NAME_LEN} lower-case letters, digits or '-', starting and \
             ending with a letter or digit (its nodes are named <name>-worker, ...), for \
             example `demo` or `lab-2`"
        ))
    }
}

/// The command a user types to run `labctl <verb>` on the lab named `name`.
pub fn command_for(verb: &str, name: &str) -> String {
    if name == DEFAULT_NAME {
        format!("labctl {verb}")
    } else {
        format!("labctl {verb} --name {name}")
    }
}

/// The default base for state directories: `$XDG_STATE_HOME/services-lab`, else
/// `~/.local/state/services-lab`.
pub fn default_state_base() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("services-lab");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/state/services-lab")
}

impl LabDir {
    /// The directory of lab `name` under `base`.
    pub fn new(name: &str, base: &Path) -> LabDir {
        LabDir {
            name: name.to_string(),
            root: base.join(name),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The lab's kubeconfig file.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.file("kubeconfig")
    }

    /// The server's log.
    pub fn log_path(&self) -> PathBuf {
        self.file("labctl.log")
    }

    /// The running server's PID file.
    pub fn pid_path(&self) -> PathBuf {
        self.file("labctl.pid")
    }

    fn ready_path(&self) -> PathBuf {
        self.file("ready")
    }

    /// The stored configuration, or an error that says the lab does not exist and how to
    /// make it.
    pub fn existing_config(&self) -> Result<LabConfig> {
        self.config()?.ok_or_else(|| {
            anyhow!(
                "lab {:?} does not exist under {}; run `{}` first",
                self.name,
                self.root.display(),
                command_for("up", &self.name)
            )
        })
    }

    /// The stored configuration of a running lab, or an error that says how to make or
    /// start it.
    pub fn running_config(&self) -> Result<LabConfig> {
        let config = self.existing_config()?;
        if self.running_pid().is_none() {
            bail!(
                "lab {:?} is not running; `{}` starts it",
                self.name,
                command_for("up", &self.name)
            );
        }
        Ok(config)
    }

    /// The stored configuration, if the lab was created.
    pub fn config(&self) -> Result<Option<LabConfig>> {
        let path = self.file("config.json");
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| format!("{} is not a valid lab configuration; `labctl down --purge --name {}` starts over", path.display(), self.name)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Creates the directory, configuration, credentials and kubeconfig on first use.
    /// `pool` (first and last address) replaces the default LoadBalancer pool of a new lab.
    pub fn create(
        &self,
        workers: usize,
        pool: Option<(Ipv4Addr, Ipv4Addr)>,
        network_mode: NetworkMode,
        dataplane: Dataplane,
    ) -> Result<(LabConfig, Credentials)> {
        fs::create_dir_all(&self.root).with_context(|| {
            format!("creating the lab's state directory {}", self.root.display())
        })?;
        let config = match self.config()? {
            Some(c) => c,
            None => {
                let mut cluster = ClusterConfig::new(&self.name, workers);
                if let Some(pool) = pool {
                    cluster.load_balancer_pool = pool;
                }
                let c = LabConfig {
                    cluster,
                    port: free_port()?,
                    network: network_mode,
                    dataplane,
                };
                write_private(
                    &self.file("config.json"),
                    &serde_json::to_string_pretty(&c)?,
                )?;
                c
            }
        };
        let creds = Credentials::load_or_create(&self.root)?;
        write_private(
            &self.kubeconfig_path(),
            &kubeconfig(&self.name, config.port, &creds),
        )?;
        Ok((config, creds))
    }

    /// The PID of the lab's server, if it runs.
    pub fn running_pid(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.pid_path())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // A PID file left by a crash may name a process that is something else now.
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let is_lab = cmdline.split(|b| *b == 0).any(|arg| arg == b"serve")
            && String::from_utf8_lossy(&cmdline).contains("labctl");
        is_lab.then_some(pid)
    }

    /// Whether the process named in the PID file still exists in any state (a server that
    /// crashed or was killed may be exiting, or a zombie nobody has reaped).
    fn previous_server_exists(&self) -> bool {
        fs::read_to_string(self.pid_path())
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// Parses a LoadBalancer pool `FIRST-LAST` (`172.18.255.200-172.18.255.250`).
pub fn parse_pool(text: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (a, b) = text.split_once('-').ok_or_else(|| {
        format!("{text:?} is not a range: write FIRST-LAST, e.g. 172.18.255.200-172.18.255.250")
    })?;
    let first: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    let last: Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} is not an IPv4 address"))?;
    if first > last {
        return Err(format!(
            "the pool's first address {first} comes after its last {last}"
        ));
    }
    Ok((first, last))
}

/// The kubeconfig kubectl uses by default: the first file in `$KUBECONFIG`, else
/// `~/.kube/config`.
pub fn user_kubeconfig() -> PathBuf {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).next())
        .filter(|p| !p.as_os_str().is_empty())
    {
        return first;
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".kube/config")
}

/// The context (and cluster and user) name of lab `name` in kubeconfigs.
pub fn context_name(name: &str) -> String {
    format!("labctl-{name}")
}

/// A kubeconfig for the lab: its CA, its address, its token.
pub fn kubeconfig(name: &str, port: u16, creds: &Credentials) -> String {
    let ctx = context_name(name);
    let ca = base64::engine::general_purpose::STANDARD.encode(creds.ca_pem.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {ctx}\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\ncontexts:\n- name: {ctx}\n  context:\n    cluster: {ctx}\n    user: {ctx}\n    namespace: default\ncurrent-context: {ctx}\nusers:\n- name: {ctx}\n  user:\n    token: {token}\npreferences: {{}}\n",
        token = creds.token
    )
}

/// Merges (or, with `remove`, takes out) the lab's entries in the kubeconfig at `path`.
pub fn merge_kubeconfig(path: &Path, lab_config: &str, name: &str, remove: bool) -> Result<()> {
    let ctx = context_name(name);
    let mut doc: serde_yaml::Value = match fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => serde_yaml::from_str(&text).with_context(|| {
            format!(
                "{} is not valid YAML; fix it or merge by hand",
                path.display()
            )
        })?,
        Ok(_) => serde_yaml::from_str("{apiVersion: v1, kind: Config}")?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if remove {
                return Ok(());
            }
            serde_yaml::from_str("{apiVersion: v1, kind: Config}")?
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let lab: serde_yaml::Value = serde_yaml::from_str(lab_config)?;
    for section in ["clusters", "contexts", "users"] {
        let list = doc
            .get_mut(section)
            .and_then(|v| v.as_sequence_mut())
            .map(std::mem::take)
            .unwrap_or_default();
        let mut list: Vec<serde_yaml::Value> = list
            .into_iter()
            .filter(|e| e.get("name").and_then(|n| n.as_str()) != Some(ctx.as_str()))
            .collect();
        if !remove {
            list.extend(lab[section].as_sequence().cloned().unwrap_or_default());
        }
        doc[section] = serde_yaml::Value::Sequence(list);
    }
    if remove {
        if doc.get("current-context").and_then(|c| c.as_str()) == Some(ctx.as_str()) {
            doc["current-context"] = serde_yaml::Value::String(String::new());
        }
    } else {
        doc["current-context"] = serde_yaml::Value::String(ctx);
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_private(path, &serde_yaml::to_string(&doc)?)
}

/// The objects a fresh cluster has: namespaces, nodes, `default/kubernetes`.
pub fn seed(api: &Api) -> Result<()> {
    let mut objects = Vec::new();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        objects.push((
            Kind::Namespace,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        ));
    }
    for node in api.cluster.node_objects() {
        objects.push((Kind::Node, node));
    }
    objects.push((
        Kind::Service,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": api.cluster.kubernetes_service_ip().to_string(), "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
        }),
    ));
    for (kind, obj) in objects {
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if api.store.get(kind, &ns, &name).is_some() {
            continue;
        }
        api.create_value(kind, obj).map_err(|e| {
            anyhow!(
                "creating the built-in {} {name}: {}",
                kind.info().singular,
                e.message
            )
        })?;
    }
    Ok(())
}

/// A kube-rs client of the lab's API, through its kubeconfig.
pub async fn client(dir: &LabDir) -> Result<kube::Client> {
    let text = fs::read_to_string(dir.kubeconfig_path())
        .with_context(|| format!("reading {}", dir.kubeconfig_path().display()))?;
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&text).context("reading the lab's kubeconfig")?;
    let client_config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .context("the lab's kubeconfig")?;
    kube::Client::try_from(client_config).context("a client of the lab's API")
}

/// Runs the lab's API server and controllers in this process until SIGTERM or SIGINT.
pub async fn serve(dir: &LabDir) -> Result<()> {
    let config = dir.existing_config()?;
    let mode = resolve_mode(config.network, config.dataplane)?;
    let creds = Credentials::load_or_create(&dir.root)?;
    let store = Store::open(&dir.file("store.sqlite"))
        .with_context(|| format!("opening the lab's store in {}", dir.root.display()))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, config.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}: the port is in use (is the lab already up? `{}`), or another program holds it", command_for("status", &dir.name)))?;
    let api = Arc::new(Api::new(Arc::new(store), config.cluster.clone()));
    seed(&api)?;
    let runtime: Arc<dyn PodRuntime> = match mode {
        Mode::ApiOnly => Arc::new(ApiOnlyRuntime),
        Mode::Kernel | Mode::Userspace => {
            let placement = if mode == Mode::Kernel {
                // Namespaces left by a run that was killed are removed and the network is
                // rebuilt; the Pods in the store are started again at their addresses.
                network::build(&network::Names::new(&dir.name), &config.cluster, &dir.name)
                    .context("building the lab's network namespaces")?;
                Placement::Namespaces(network::Names::new(&dir.name))
            } else {
                Placement::Loopback
            };
            // Every Pod keeps a warm instance once it has served, so the instance pool holds
            // as many as the workers' pod CIDRs have addresses (253 a /24), and a few more
            // for concurrent requests.
            let capacity: usize = config
                .cluster
                .nodes
                .iter()
                .filter(|n| !n.control_plane)
                .map(|n| n.pod_cidr.hosts().count().saturating_sub(1))
                .sum();
            let host = hello_app::wasm_host::WasmHost::new(hello_app::wasm_host::HostConfig {
                max_instances: u32::try_from(capacity + 64)
                    .unwrap_or(u32::MAX)
                    .clamp(256, 8192),
                ..Default::default()
            })
            .context("loading the hello-app component")?;
            Arc::new(WasmRuntime::new(
                host,
                placement,
                tokio::runtime::Handle::current(),
            ))
        }
    };
    api.use_runtime(runtime.clone());
    controllers::start(api.clone(), runtime);
    let opts = ServeOptions {
        tls: creds.server_config()?,
        token: creds.token.clone(),
        address: addr.to_string(),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(apiserver::serve(
        api,
        listener,
        opts,
        until_stopped(stopped.clone()),
    ));
    let mut dataplanes = Vec::new();
    if mode != Mode::ApiOnly {
        let client = client(dir).await?;
        if mode == Mode::Kernel {
            for node in &config.cluster.nodes {
                dataplanes.push(tokio::spawn(run_dataplane(
                    client.clone(),
                    dir.name.clone(),
                    node.clone(),
                    config.dataplane,
                    until_stopped(stopped.clone()),
                )));
            }
        } else {
            dataplanes.push(tokio::spawn(crate::userspace::run(
                client,
                config.cluster.clone(),
                until_stopped(stopped.clone()),
            )));
        }
    }
    write_private(&dir.pid_path(), &std::process::id().to_string())?;
    write_private(&dir.ready_path(), mode.as_str())?;
    tracing::info!(%addr, mode = mode.as_str(), "lab {} serving", dir.name);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop.send(true);
    server
        .await
        .context("the API server task")?
        .context("serving the API")?;
    for d in dataplanes {
        let _ = d.await;
    }
    if mode == Mode::Kernel {
        network::teardown(&dir.name);
    }
    let _ = fs::remove_file(dir.ready_path());
    let _ = fs::remove_file(dir.pid_path());
    tracing::info!("lab {} stopped", dir.name);
    Ok(())
}

/// How a running lab serves Pods and Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Network namespaces, wasm Pods inside them, iptables per node.
    Kernel,
    /// Wasm Pods and the userspace proxy on loopback addresses, no privileges needed.
    Userspace,
    /// The API and controllers only.
    ApiOnly,
}

impl Mode {
    /// The word `labctl status` and the ready file use.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Kernel => "kernel",
            Mode::Userspace => "userspace",
            Mode::ApiOnly => "none",
        }
    }
}

fn resolve_mode(asked: NetworkMode, dataplane: Dataplane) -> Result<Mode> {
    Ok(match asked {
        NetworkMode::None => Mode::ApiOnly,
        NetworkMode::Userspace => Mode::Userspace,
        NetworkMode::Kernel => {
            network::kernel_mode_available(dataplane.kernel_tools()).map_err(|why| {
                anyhow!(
                    "kernel mode (the {} dataplane) was asked for, but {why}; the userspace dataplane needs no privileges (a new lab with `--dataplane userspace`)",
                    dataplane.as_str()
                )
            })?;
            Mode::Kernel
        }
        NetworkMode::Auto => match network::kernel_mode_available(dataplane.kernel_tools()) {
            Ok(()) => Mode::Kernel,
            Err(why) => {
                tracing::warn!(
                    "userspace mode: {why}; Pods and Services are served on loopback addresses (127.x twins of their IPs; reach them with `labctl curl`)"
                );
                Mode::Userspace
            }
        },
    })
}

/// Why a lab that may pick its mode (`--network auto`) cannot run in kernel mode here, if it
/// cannot: the reason it runs in userspace mode.
pub fn why_not_kernel(config: &LabConfig) -> Option<String> {
    if config.network != NetworkMode::Auto {
        return None;
    }
    network::kernel_mode_available(config.dataplane.kernel_tools()).err()
}

/// What implements Services in a lab running in `mode`: the configured kernel dataplane, the
/// userspace proxy, or nothing (`none`).
pub fn dataplane_in(mode: Mode, config: &LabConfig) -> &'static str {
    match mode {
        Mode::Kernel => config.dataplane.as_str(),
        Mode::Userspace => Dataplane::Userspace.as_str(),
        Mode::ApiOnly => "none",
    }
}

/// The mode a running lab serves in, from its ready file.
pub fn running_mode(dir: &LabDir) -> Option<Mode> {
    match fs::read_to_string(dir.ready_path()).ok()?.trim() {
        "kernel" => Some(Mode::Kernel),
        "userspace" => Some(Mode::Userspace),
        "none" => Some(Mode::ApiOnly),
        _ => None,
    }
}

/// kube-proxy's part on one node: the dataplane's sync loop, watching the lab's API and
/// programming iptables or nftables in the node's namespace.
async fn run_dataplane(
    client: kube::Client,
    lab: String,
    node: crate::cluster::NodeConfig,
    dataplane: Dataplane,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use dataplane::apply::Netns;
    use dataplane::apply::iptables::IptablesApplier;
    use dataplane::apply::nft::NftApplier;
    use dataplane::watch::{IptablesBackend, NftBackend, SyncOptions, SyncStats, run};
    let netns = Netns::named(network::Names::new(&lab).node(&node.name));
    let config = crate::rules::node_config(&node);
    // The lab's rule sets are small: sync within 50 ms of a change rather than kube-proxy's 1 s.
    let options = SyncOptions {
        min_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let stats = Arc::new(std::sync::Mutex::new(SyncStats::default()));
    let result = match dataplane {
        Dataplane::Nftables => {
            let layout = crate::rules::NFT_LAYOUT;
            let backend = NftBackend::new(NftApplier::new(netns, layout.table()), layout);
            run(client, config, backend, options, stats, shutdown).await
        }
        Dataplane::Iptables | Dataplane::Userspace => {
            let backend = IptablesBackend(IptablesApplier::new(netns));
            run(client, config, backend, options, stats, shutdown).await
        }
    };
    if let Err(e) = result {
        tracing::error!(node = %node.name, "the dataplane stopped: {e}");
    }
}

/// Checks that the lab's API port can be bound. A server killed a moment ago holds its
/// port until its last thread has exited (its PID file still names it), so wait for that.
fn bind_when_free(dir: &LabDir, port: u16) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline && dir.previous_server_exists() => {
                tracing::debug!("port {port} still held ({e}); waiting for the old server to exit");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Starts the lab's server in the background and waits until it answers.
pub fn start_background(dir: &LabDir, base: &Path, timeout: Duration) -> Result<i32> {
    if let Some(pid) = dir.running_pid() {
        return Ok(pid);
    }
    if let Some(config) = dir.config()?
        && let Err(e) = bind_when_free(dir, config.port)
    {
        bail!(
            "lab {:?} serves its API on 127.0.0.1:{} (chosen when the lab was created), but that port is taken: {e}; stop whatever listens there (`ss -ltnp 'sport = :{}'` shows it), or `labctl down --name {} --purge` and `{}` to make the lab anew on a free port",
            dir.name,
            config.port,
            config.port,
            dir.name,
            command_for("up", &dir.name)
        );
    }
    let _ = fs::remove_file(dir.ready_path());
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log_path())
        .with_context(|| format!("opening {}", dir.log_path().display()))?;
    let exe = std::env::current_exe().context("finding the labctl executable")?;
    let mut child = Command::new(exe)
        .args(["serve", "--name", &dir.name, "--state-dir"])
        .arg(base)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in the shell that ran `labctl up` leaves it alone.
        .process_group(0)
        .spawn()
        .context("starting the lab's server process")?;
    let started = Instant::now();
    while started.elapsed() < timeout {
        if dir.ready_path().exists() {
            return Ok(child.id() as i32);
        }
        if let Some(status) = child.try_wait()? {
            let tail = fs::read_to_string(dir.log_path()).unwrap_or_default();
            let tail: Vec<&str> = tail
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!(
                "the lab's server exited ({status}) before it was ready; its log ({}) ends with:\n{}",
                dir.log_path().display(),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "the lab's server did not become ready within {timeout:?}; see {}",
        dir.log_path().display()
    )
}

/// What `down` did.
#[derive(Debug, Clone, Default)]
pub struct DownReport {
    /// Whether the lab's server was running.
    pub was_running: bool,
    /// Network namespaces removed (left by a crash, or by the server just stopped).
    pub namespaces_removed: usize,
    /// The kubeconfig the lab's context was taken out of.
    pub context_removed_from: Option<PathBuf>,
}

/// Stops lab `dir`, removes its namespaces and its context from `user_kubeconfig`, and with
/// `purge` deletes its state directory.
pub fn down(dir: &LabDir, purge: bool, user_kubeconfig: &Path) -> Result<DownReport> {
    let was_running = stop(dir, Duration::from_secs(15))?;
    // A lab killed without a chance to clean up leaves its namespaces behind.
    let namespaces_removed = network::teardown(&dir.name);
    let mut context_removed_from = None;
    // KUBECONFIG may point at the lab's own file, which goes with the lab.
    if user_kubeconfig != dir.kubeconfig_path()
        && fs::read_to_string(user_kubeconfig).is_ok_and(|t| t.contains(&context_name(&dir.name)))
    {
        merge_kubeconfig(user_kubeconfig, "{}", &dir.name, true)?;
        context_removed_from = Some(user_kubeconfig.to_path_buf());
    }
    if purge && dir.root.exists() {
        fs::remove_dir_all(&dir.root)
            .with_context(|| format!("deleting {}", dir.root.display()))?;
    }
    Ok(DownReport {
        was_running,
        namespaces_removed,
        context_removed_from,
    })
}

/// The files an embedded lab makes in its directory besides its log and its credentials
/// ([`crate::pki::FILES`]): configuration, kubeconfig, object store, and the server's PID and
/// readiness marker.
const LAB_FILES: &[&str] = &[
    "config.json",
    "kubeconfig",
    "store.sqlite",
    "store.sqlite-shm",
    "store.sqlite-wal",
    "labctl.pid",
    "ready",
];

/// Undoes the making of a lab whose server never became ready: stops what may be left of it
/// and deletes the files it made but its log, so that the lab no longer exists and `labctl
/// up` with other flags (the ones that made it fail are fixed once a lab exists) makes it
/// anew. Anything else in the directory is left alone.
pub fn forget_unstarted(dir: &LabDir, user_kubeconfig: &Path) -> Result<()> {
    down(dir, false, user_kubeconfig)?;
    for name in LAB_FILES.iter().chain(&crate::pki::FILES) {
        let path = dir.root.join(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("deleting {}", path.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Stops the lab's server (SIGTERM, then SIGKILL after `grace`). Returns whether one ran.
pub fn stop(dir: &LabDir, grace: Duration) -> Result<bool> {
    let Some(pid) = dir.running_pid() else {
        let _ = fs::remove_file(dir.pid_path());
        let _ = fs::remove_file(dir.ready_path());
        return Ok(false);
    };
    let target = rustix::process::Pid::from_raw(pid).ok_or_else(|| anyhow!("invalid pid {pid}"))?;
    let _ = rustix::process::kill_process(target, rustix::process::Signal::TERM);
    let started = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && started.elapsed() < grace {
        if fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if dir.running_pid().is_some() {
        let _ = rustix::process::kill_process(target, rustix::process::Signal::KILL);
    }
    let _ = fs::remove_file(dir.pid_path());
    let _ = fs::remove_file(dir.ready_path());
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Dataplane as D;
    use NetworkMode as N;

    fn made(network: N, dataplane: D) -> LabConfig {
        LabConfig {
            cluster: ClusterConfig::new("t", 1),
            port: 1,
            network,
            dataplane,
        }
    }

    #[test]
    fn up_refuses_only_flags_that_differ_from_what_the_lab_was_made_with() {
        let auto = made(N::Auto, D::Iptables);
        assert_eq!(fixed_flag_differs(&auto, (None, None)), None);
        assert_eq!(
            fixed_flag_differs(&auto, (Some(N::Auto), Some(D::Iptables))),
            None
        );
        assert_eq!(
            fixed_flag_differs(&auto, (None, Some(D::Nftables))),
            Some((
                "the iptables dataplane".into(),
                "--dataplane nftables".into()
            ))
        );
        assert_eq!(fixed_flag_differs(&auto, (Some(N::Kernel), None)), None);
        assert_eq!(
            fixed_flag_differs(&auto, (Some(N::None), None)),
            Some(("--network auto".into(), "--network none".into()))
        );
        let user = made(N::Userspace, D::Iptables);
        assert_eq!(fixed_flag_differs(&user, (None, Some(D::Userspace))), None);
        let api_only = made(N::None, D::Iptables);
        assert_eq!(
            fixed_flag_differs(&api_only, (None, Some(D::Nftables))),
            Some((
                "--network none (API-only)".into(),
                "--dataplane nftables".into()
            ))
        );
    }

    #[test]
    fn lab_names_are_checked_before_anything_is_made() {
        for good in ["lab", "demo", "lab-2", "e2e-usr", "a", &"x".repeat(40)] {
            assert_eq!(parse_name(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "bad name",
            "Demo",
            "-lab",
            "lab-",
            "lab_2",
            "lab.2",
            &"x".repeat(41),
        ] {
            let err = parse_name(bad).unwrap_err();
            assert!(
                err.contains("lower-case letters, digits or '-'"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn an_unstarted_lab_is_forgotten_but_its_log_and_other_files_stay() {
        let base = tempfile::tempdir().unwrap();
        let dir = LabDir::new("unstarted-unit", base.path());
        dir.create(1, None, NetworkMode::None, Dataplane::Iptables)
            .unwrap();
        fs::write(dir.log_path(), "why it failed\n").unwrap();
        fs::write(dir.root.join("notes.txt"), "mine\n").unwrap();
        let kubeconfig = base.path().join("user-kubeconfig");
        forget_unstarted(&dir, &kubeconfig).unwrap();
        assert!(dir.config().unwrap().is_none());
        let mut left: Vec<String> = fs::read_dir(&dir.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["labctl.log", "notes.txt"]);
    }

    #[test]
    fn commands_name_the_lab_unless_it_is_the_default() {
        assert_eq!(command_for("up", DEFAULT_NAME), "labctl up");
        assert_eq!(command_for("up", "demo"), "labctl up --name demo");
    }

    #[test]
    fn network_and_dataplane_flags_fold_into_one_choice() {
        use Dataplane as D;
        use NetworkMode as N;
        assert_eq!(resolve_flags(None, None), Ok((N::Auto, D::Iptables)));
        assert_eq!(
            resolve_flags(Some(N::Kernel), None),
            Ok((N::Kernel, D::Iptables))
        );
        assert_eq!(
            resolve_flags(Some(N::Userspace), None),
            Ok((N::Userspace, D::Userspace))
        );
        assert_eq!(
            resolve_flags(None, Some(D::Nftables)),
            Ok((N::Kernel, D::Nftables))
        );
        assert_eq!(
            resolve_flags(Some(N::Auto), Some(D::Iptables)),
            Ok((N::Kernel, D::Iptables))
        );
        assert_eq!(
            resolve_flags(None, Some(D::Userspace)),
            Ok((N::Userspace, D::Userspace))
        );
        let err = resolve_flags(Some(N::None), Some(D::Nftables)).unwrap_err();
        assert!(
            err.starts_with("--network none and --dataplane nftables contradict each other"),
            "{err}"
        );
        let err = resolve_flags(Some(N::Userspace), Some(D::Iptables)).unwrap_err();
        assert!(err.contains("userspace mode has no kernel rules"), "{err}");
        let err = resolve_flags(Some(N::Kernel), Some(D::Userspace)).unwrap_err();
        assert!(
            err.contains("use `--dataplane iptables` or `--dataplane nftables`"),
            "{err}"
        );
    }
}
