//! The embedded wasmtime host: serves the `wasi:http` component, one instance set per Pod.
//!
//! One [`WasmHost`] holds one [`Engine`] and one pre-instantiated component; every [`Pod`]
//! made from it shares both and differs only in its environment (`HOSTNAME` is the Pod's name),
//! so one process can serve many Pods on many listeners. Compilation happens once, and the
//! compiled artifact is cached on disk by content hash ([`cache`]), so a restart loads it in
//! well under a millisecond.
//!
//! Each Pod keeps its instances warm and reuses them across requests: a fresh instance per
//! request (what `wasi:http/proxy` allows but does not require) costs about 20 µs of
//! instantiation and reset here, several times the guest's own work. An instance is dropped
//! after it traps (a trapped instance may not be entered again) and after
//! [`HostConfig::max_reuse`] requests, which bounds what a leaking guest can hold.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use hello_app::wasm_host::{HostConfig, PodSpec, WasmHost};
//! let host = WasmHost::new(HostConfig::default())?;
//! let pod = host.pod(PodSpec::new("hello-world-7d9f8-abcde"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! pod.serve(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod cache;
mod log;
mod pod;
mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

pub use log::LogBuffer;
pub use pod::{Pod, PodLog, PodSpec, PodStats};
use state::PodState;

/// The hello-app component, built for `wasm32-wasip2` by the build script.
pub static BUILTIN_COMPONENT: &[u8] = include_bytes!(env!("HELLO_APP_GUEST_WASM"));

/// How often the epoch advances; request timeouts are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The engine could not be configured (for example the pooling allocator could not reserve
    /// its address space under a low `ulimit -v`).
    #[error("failed to create the wasmtime engine: {0}")]
    Engine(#[source] wasmtime::Error),
    /// The component file could not be read.
    #[error("failed to read the component {path}: {source}")]
    ReadComponent {
        /// The file named.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The bytes are not a component, or not one wasmtime can compile.
    #[error("failed to compile the component: {0:#}")]
    Compile(#[source] wasmtime::Error),
    /// The component does not have the imports and exports of the `wasi:http/proxy` world.
    #[error(
        "the component cannot be served: it must export wasi:http/incoming-handler and import \
         only WASI interfaces: {0:#}"
    )]
    Link(#[source] wasmtime::Error),
}

/// Which component to serve.
#[derive(Debug, Clone, Default)]
pub enum ComponentSource {
    /// The hello-app component built into this binary.
    #[default]
    Builtin,
    /// A `wasi:http/incoming-handler` component from a `.wasm` file.
    File(PathBuf),
}

/// Settings shared by every Pod of a host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The component to serve.
    pub component: ComponentSource,
    /// Instances that may exist at once across all Pods (slots of the pooling allocator).
    pub max_instances: u32,
    /// Requests one instance serves before it is replaced by a fresh one.
    pub max_reuse: u32,
    /// Where compiled components are cached; `None` compiles at every start.
    pub cache_dir: Option<PathBuf>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            component: ComponentSource::Builtin,
            max_instances: 256,
            max_reuse: 10_000,
            cache_dir: cache::default_dir(),
        }
    }
}

/// One engine and one pre-instantiated component, shared by all Pods. Cheap to clone.
#[derive(Clone)]
pub struct WasmHost {
    inner: Arc<HostInner>,
}

struct HostInner {
    engine: Engine,
    pre: ProxyPre<PodState>,
    config: HostConfig,
}

impl WasmHost {
    /// Configures the engine, loads (or compiles and caches) the component and
    /// pre-instantiates it.
    pub fn new(config: HostConfig) -> Result<Self, HostError> {
        let engine =
            Engine::new(&engine_config(config.max_instances)).map_err(HostError::Engine)?;
        let wasm = match &config.component {
            ComponentSource::Builtin => std::borrow::Cow::Borrowed(BUILTIN_COMPONENT),
            ComponentSource::File(path) => {
                std::borrow::Cow::Owned(std::fs::read(path).map_err(|source| {
                    HostError::ReadComponent {
                        path: path.clone(),
                        source,
                    }
                })?)
            }
        };
        let component = cache::load(&engine, &wasm, config.cache_dir.as_deref())?;
        let pre = link(&engine, &component)?;
        start_epoch_ticker(&engine);
        Ok(Self {
            inner: Arc::new(HostInner {
                engine,
                pre,
                config,
            }),
        })
    }

    /// A Pod served by this host; its instances are created on its first requests.
    pub fn pod(&self, spec: PodSpec) -> Pod {
        Pod::new(self.clone(), spec)
    }

    /// The engine every Pod shares.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }
}

fn engine_config(max_instances: u32) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    // The Rust guest is three core modules in one component (main and two adapter shims).
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances.saturating_mul(3))
        .total_memories(max_instances.saturating_mul(3))
        .total_tables(max_instances.saturating_mul(3))
        .total_stacks(max_instances)
        .max_memory_size(64 << 20)
        // Resetting a slot by scanning which pages were touched is about twice as fast as
        // madvise-and-refault here (Linux >= 6.7; older kernels ignore it).
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(1 << 16);
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Epoch checks let a Pod's request time out instead of hanging its instance for good.
    config.epoch_interruption(true);
    config
}

fn link(engine: &Engine, component: &Component) -> Result<ProxyPre<PodState>, HostError> {
    let mut linker = Linker::new(engine);
    // Rust's std imports more of WASI than the proxy world (environment, exit, ...).
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(HostError::Link)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(HostError::Link)?;
    let pre = linker.instantiate_pre(component).map_err(HostError::Link)?;
    ProxyPre::new(pre).map_err(HostError::Link)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}
