//! `hello-app`: the tutorial's sample app, natively or as a wasm component in an embedded host.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
#[cfg(feature = "wasm-host")]
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hello_app::respond::AppVersion;
use hello_app::server::native::{Hostname, NativeApp};
use hello_app::server::{DRAIN_TIMEOUT, log, port_from_env, serve, termination_signal};

/// The Kubernetes tutorial's sample app: every request gets `Hello, world!`, the version and
/// the host name.
///
/// Without a subcommand it is the native server, as in the container image: it listens on
/// 0.0.0.0:$PORT (8080 when PORT is unset or empty) and drains in-flight requests on SIGTERM.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  PORT=9000 hello-app\n  hello-app --app-version 2.0\n  hello-app wasm --pod hello-a=127.0.0.1:8081 --pod hello-b=127.0.0.1:8082"
)]
struct Cli {
    /// The app release to answer as: 1.0 (`Version: 1.0.0`) or 2.0 (`Version: 2.0.0`).
    #[arg(long, env = "HELLO_APP_VERSION", default_value = "1.0", global = true)]
    app_version: AppVersion,

    /// Answer with this host name instead of the kernel's (native server only).
    #[arg(long)]
    hostname: Option<String>,

    /// The address to listen on; the port comes from PORT.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[cfg(feature = "wasm-host")]
    /// Serve the app's WebAssembly component from an embedded wasmtime host, one instance set
    /// per Pod; each Pod answers with its own name as host name.
    ///
    /// Prints `Server listening on port N` once per Pod, in the order given.
    Wasm {
        /// A Pod as NAME=ADDRESS (e.g. hello-a=127.0.0.1:8081); repeat for more Pods. Without
        /// it, one Pod named after the kernel's host name listens on 0.0.0.0:$PORT.
        #[arg(long = "pod", value_parser = parse_pod)]
        pods: Vec<(String, SocketAddr)>,

        /// Serve this wasi:http component instead of the built-in hello-app.
        #[arg(long)]
        component: Option<PathBuf>,

        /// Where compiled components are cached (default: ~/.cache/services-lab/wasm).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
}

#[cfg(feature = "wasm-host")]
fn parse_pod(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=ADDRESS, got {s:?}"))?;
    if name.is_empty() {
        return Err(format!("the Pod name is empty in {s:?}"));
    }
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?} in {s:?}: {e}"))?;
    Ok((name.to_owned(), addr))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HELLO_APP_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello-app: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let port = port_from_env(std::env::var("PORT").ok().as_deref())?;
    match cli.command {
        None => {
            // Worker threads only help with more than one CPU; on one (a pinned process, a
            // one-core Pod) waking them costs more than the request itself.
            let runtime = if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
                tokio::runtime::Builder::new_multi_thread()
            } else {
                tokio::runtime::Builder::new_current_thread()
            }
            .enable_all()
            .build()
            .context("starting the runtime")?;
            let hostname = cli.hostname.map_or(Hostname::Kernel, Hostname::Fixed);
            let app = NativeApp::new(cli.app_version, hostname);
            runtime.block_on(async {
                let listener = bind_and_log(SocketAddr::new(cli.bind, port)).await?;
                serve(
                    listener,
                    move |_, _| app.clone(),
                    termination_signal(),
                    DRAIN_TIMEOUT,
                )
                .await
                .context("serving")
            })
        }
        #[cfg(feature = "wasm-host")]
        Some(Command::Wasm {
            pods,
            component,
            cache_dir,
        }) => run_wasm(cli.bind, port, cli.app_version, pods, component, cache_dir),
    }
}

/// Serves the wasm component, one Pod per `NAME=ADDRESS`.
#[cfg(feature = "wasm-host")]
fn run_wasm(
    bind: IpAddr,
    port: u16,
    version: AppVersion,
    pods: Vec<(String, SocketAddr)>,
    component: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    use hello_app::wasm_host::{ComponentSource, HostConfig, PodSpec, WasmHost};
    let mut config = HostConfig::default();
    if let Some(path) = component {
        config.component = ComponentSource::File(path);
    }
    if cache_dir.is_some() {
        config.cache_dir = cache_dir;
    }
    let pods = if pods.is_empty() {
        let name = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        vec![(name, SocketAddr::new(bind, port))]
    } else {
        pods
    };
    // One thread: per-request work is a few microseconds, and on small VMs waking
    // other worker threads costs more than it saves (see the serve benchmark).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let host = WasmHost::new(config).context("starting the wasm host")?;
        let mut tasks = tokio::task::JoinSet::new();
        let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
        for (name, addr) in pods {
            let listener = bind_and_log(addr).await?;
            let pod = host.pod(PodSpec::new(name).version(version));
            let mut stopped = stop.subscribe();
            tasks.spawn(async move {
                pod.serve(listener, async move {
                    let _ = stopped.recv().await;
                })
                .await
            });
        }
        termination_signal().await;
        let _ = stop.send(());
        while let Some(done) = tasks.join_next().await {
            done.context("a Pod's server panicked")?
                .context("serving")?;
        }
        Ok(())
    })
}

/// Binds like the original and logs `Server listening on port N` with the bound port.
async fn bind_and_log(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let port = listener.local_addr().map_or(addr.port(), |a| a.port());
    log(&format!("Server listening on port {port}"));
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pods_parse_as_name_and_address() {
        assert_eq!(
            parse_pod("hello-a=127.0.0.1:8081").unwrap(),
            ("hello-a".to_owned(), "127.0.0.1:8081".parse().unwrap())
        );
        assert!(parse_pod("=127.0.0.1:1").unwrap_err().contains("empty"));
        assert!(
            parse_pod("a=nowhere")
                .unwrap_err()
                .contains("bad address \"nowhere\"")
        );
    }

    #[test]
    fn versions_come_from_the_flag() {
        let cli = Cli::try_parse_from(["hello-app", "--app-version", "2.0"]).unwrap();
        assert_eq!(cli.app_version, AppVersion::V2);
        assert!(Cli::try_parse_from(["hello-app", "--app-version", "3"]).is_err());
    }
}
