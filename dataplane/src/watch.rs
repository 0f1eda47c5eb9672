//! Watching any Kubernetes API with kube-rs and keeping a backend's rules in sync, in the
//! manner of kube-proxy: Services and EndpointSlices are mirrored by reflectors; any change
//! wakes the sync loop, which takes a snapshot of both and hands it to the backend, no more
//! often than the minimum sync interval, and at least every resync period. One change skips
//! that wait: an endpoint that was ready and no longer is (its Pod is going away), so that
//! clients stop being sent to it at once; additions are what the interval batches. The
//! backends send the kernel only what changed: iptables rewrites the chains whose rules
//! differ, nftables re-renders only the service ports whose entries differ
//! ([`nft::NftSync`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

use crate::apply::ApplyError;
use crate::apply::iptables::IptablesApplier;
use crate::apply::nft::{NftApplier, TableWrite};
use crate::compile::compile;
use crate::model::{ModelError, NodeConfig, Snapshot, SnapshotCache};
use crate::proxy::{ProxyError, UserspaceProxy, routes};
use crate::render::nft::{self, Layout, Unsupported};

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// An object could not be modelled.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The kernel refused the rules.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The layout cannot express a service.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// The userspace proxy could not listen.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// The rules (or the proxy's routes) were written.
    Changed,
    /// They matched the snapshot already; nothing was written.
    Unchanged,
}

/// Where synced rules go.
pub trait Backend: Send {
    /// Makes the backend's state match `snapshot` on `node`.
    fn sync(
        &mut self,
        snapshot: &Snapshot,
        node: &NodeConfig,
    ) -> impl Future<Output = Result<Synced, SyncError>> + Send;
}

/// [`Synced::Changed`] when `written`.
pub fn synced(written: bool) -> Synced {
    if written {
        Synced::Changed
    } else {
        Synced::Unchanged
    }
}

/// iptables rules in a network namespace.
pub struct IptablesBackend(pub IptablesApplier);

impl Backend for IptablesBackend {
    async fn sync(&mut self, snapshot: &Snapshot, node: &NodeConfig) -> Result<Synced, SyncError> {
        let rules = compile(snapshot, node);
        let applier = self.0.clone();
        // The tools block; keep them off the runtime's threads.
        let written = tokio::task::spawn_blocking(move || applier.apply_changes(&rules))
            .await
            .expect("the apply task does not panic")?;
        Ok(synced(written))
    }
}

/// An nftables table in a network namespace, synced partially: after the first (full) sync,
/// only the service ports that changed are re-rendered and sent ([`nft::NftSync`]), with a
/// full sync every [`NftBackend::FULL_SYNC_EVERY`] and after any failure, as kube-proxy does.
pub struct NftBackend {
    applier: NftApplier,
    table: nft::NftSync,
    /// When the kernel last got the whole table; `None` until it has, or after a failure.
    full_at: Option<Instant>,
}

impl NftBackend {
    /// How often a full sync replaces the whole table anyway.
    pub const FULL_SYNC_EVERY: Duration = Duration::from_secs(3600);

    /// A backend for `layout`'s table through `applier`.
    pub fn new(applier: NftApplier, layout: Layout) -> Self {
        Self {
            applier,
            table: nft::NftSync::new(layout),
            full_at: None,
        }
    }
}

impl Backend for NftBackend {
    async fn sync(&mut self, snapshot: &Snapshot, node: &NodeConfig) -> Result<Synced, SyncError> {
        let started = Instant::now();
        let whole = self.table.node() != Some(node);
        let change = self.table.update_change(snapshot, node)?;
        let last_full = self
            .full_at
            .take()
            .filter(|at| at.elapsed() < Self::FULL_SYNC_EVERY);
        // The first update is the whole table already; later full syncs write it out again.
        let full = whole || last_full.is_none();
        let rendered = started.elapsed();
        let applier = self.applier.clone();
        // Endpoint moves go straight to the kernel as elements; a full sync writes the whole
        // table (see `NftApplier::apply_table`); anything else is an `nft -f` transaction.
        let work = match &change.elements {
            _ if full => {
                let table = match change.into_whole() {
                    Some(table) => table,
                    None => self.table.whole(),
                };
                Some(Apply::Table(Box::new(table)))
            }
            Some(elements) if elements.is_empty() => None,
            Some(_) => Some(Apply::Elements(change)),
            None => {
                let input = change.text();
                (!input.is_empty()).then_some(Apply::Text(input))
            }
        };
        let written = work.is_some();
        if let Some(work) = work {
            let via = tokio::task::spawn_blocking(move || match work {
                Apply::Table(table) => applier.apply_table(&table).map(|how| match how {
                    TableWrite::Nft => "nft",
                    TableWrite::NftAndNetlink => "nft+netlink",
                }),
                Apply::Text(input) => applier.apply_change(&input).map(|()| "nft"),
                Apply::Elements(change) => match applier
                    .apply_elements(change.elements.as_ref().expect("an element change"))
                {
                    Ok(()) => Ok("netlink"),
                    // Whether the kernel took the batch is unknown: the sync fails, and the
                    // next one writes the whole table.
                    Err(ApplyError::Netlink(e)) if !e.undone() => Err(ApplyError::Netlink(e)),
                    // The kernel's table is as it was: `nft` gets the same change.
                    Err(e) => {
                        tracing::warn!(error = %e, "netlink sync failed; using nft");
                        applier.apply_change(&change.text()).map(|()| "nft")
                    }
                },
            })
            .await
            .expect("the apply task does not panic")?;
            tracing::debug!(?rendered, applied = ?started.elapsed() - rendered, full, via, "nft");
        }
        self.full_at = if full { Some(started) } else { last_full };
        Ok(synced(written))
    }
}

/// What an nftables sync sends.
enum Apply {
    Table(Box<nft::NftTable>),
    Text(String),
    /// An update whose `elements` are set.
    Elements(nft::NftUpdate),
}

/// The userspace proxy; `ip_for` maps service IPs to addresses that exist here.
pub struct UserspaceBackend<F>(pub UserspaceProxy, pub F);

impl<F: Fn(std::net::Ipv4Addr) -> std::net::Ipv4Addr + Send + Sync> Backend
    for UserspaceBackend<F>
{
    async fn sync(&mut self, snapshot: &Snapshot, node: &NodeConfig) -> Result<Synced, SyncError> {
        let wanted = routes(snapshot, node, &self.1);
        self.0.sync(&wanted).await?;
        Ok(Synced::Changed)
    }
}

/// Sync loop settings (kube-proxy's defaults).
#[derive(Debug, Clone, Copy)]
pub struct SyncOptions {
    /// A sync never starts closer than this after one that wrote something (`minSyncPeriod`,
    /// 1 s), unless a ready endpoint was lost. A sync that found nothing to write does not
    /// count: it cost little, and a real change right after it should not wait.
    pub min_interval: Duration,
    /// A sync happens at least this often even without changes (`syncPeriod`, 30 s).
    pub resync: Duration,
    /// Sync once, as soon as both object kinds are listed, then return.
    pub once: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(1),
            resync: Duration::from_secs(30),
            once: false,
        }
    }
}

/// Counters of a sync loop, readable while it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Syncs that succeeded.
    pub syncs: u64,
    /// Syncs that failed (retried after the minimum interval).
    pub failures: u64,
    /// How long the last sync took.
    pub last_duration: Duration,
    /// Time spent syncing in all.
    pub total_duration: Duration,
}

/// Runs the sync loop until `shutdown` completes (or after one sync with
/// [`SyncOptions::once`], returning that sync's result).
pub async fn run<B: Backend>(
    client: kube::Client,
    node: NodeConfig,
    mut backend: B,
    options: SyncOptions,
    stats: Arc<Mutex<SyncStats>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SyncError> {
    let changed = Arc::new(Notify::new());
    // Counts slice events that took a ready endpoint away, and wakes a loop that waits out
    // the interval when one comes.
    let lost = Arc::new((AtomicU64::new(0), Notify::new()));
    let (services, services_task) =
        mirror::<Service>(Api::all(client.clone()), changed.clone(), |_| {});
    let mut ready = ReadyEndpoints::default();
    let (slices, slices_task) = mirror::<EndpointSlice>(Api::all(client), changed.clone(), {
        let lost = lost.clone();
        move |event| {
            if ready.apply(event) {
                lost.0.fetch_add(1, Ordering::SeqCst);
                lost.1.notify_one();
            }
        }
    });
    let _tasks = AbortOnDrop(vec![services_task, slices_task]);
    tokio::pin!(shutdown);
    // Like kube-proxy, no sync until both kinds have been listed once: a partial view would
    // delete the rules of every service whose endpoints are not known yet.
    tokio::select! {
        _ = async { let _ = services.wait_until_ready().await; let _ = slices.wait_until_ready().await; } => {}
        () = &mut shutdown => return Ok(()),
    }
    let mut last_write: Option<Instant> = None;
    let mut cache = SnapshotCache::default();
    loop {
        let started = Instant::now();
        // Losses up to here are in this sync's snapshot (the reflectors update their stores
        // before they report an event).
        let losses_seen = lost.0.load(Ordering::SeqCst);
        let result = sync_once(&services, &slices, &node, &mut cache, &mut backend).await;
        // A failure counts as a write, so that it is retried after the minimum interval.
        if !matches!(result, Ok(Synced::Unchanged)) {
            last_write = Some(started);
        }
        {
            let took = started.elapsed();
            let mut s = stats.lock().expect("stats");
            s.last_duration = took;
            s.total_duration += took;
            tracing::debug!(node = %node.node_name, ?took, ok = result.is_ok(), "synced");
            match &result {
                Ok(_) => s.syncs += 1,
                Err(e) => {
                    s.failures += 1;
                    tracing::warn!(error = %e, "sync failed; retrying");
                }
            }
        }
        if options.once {
            return result.map(|_| ());
        }
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(options.resync) => {}
            () = &mut shutdown => return Ok(()),
        }
        if let Some(at) = last_write {
            let deadline = tokio::time::Instant::from(at + options.min_interval);
            // A wake-up left from a loss this sync already covered does not cut the wait.
            while lost.0.load(Ordering::SeqCst) == losses_seen {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    () = lost.1.notified() => {}
                    () = &mut shutdown => return Ok(()),
                }
            }
        }
    }
}

async fn sync_once<B: Backend>(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    node: &NodeConfig,
    cache: &mut SnapshotCache,
    backend: &mut B,
) -> Result<Synced, SyncError> {
    let started = Instant::now();
    // The stores' objects are read in place, not cloned: in a lab every node's dataplane
    // takes a snapshot after each slice change, on the same few cores.
    let services = services.state();
    let slices = slices.state();
    let snapshot = cache.build(services.iter().map(|s| &**s), slices.iter().map(|s| &**s))?;
    tracing::debug!(took = ?started.elapsed(), "snapshot");
    let span = tracing::info_span!("sync", services = snapshot.services.len());
    tracing::Instrument::instrument(backend.sync(&snapshot, node), span).await
}

/// The ready endpoint addresses of every slice (namespace/name), to tell which slice changes
/// take a ready endpoint away.
#[derive(Default)]
struct ReadyEndpoints(std::collections::HashMap<String, std::collections::HashSet<String>>);

impl ReadyEndpoints {
    /// Records a slice event; says whether an address that was ready is no longer.
    fn apply(&mut self, event: &watcher::Event<EndpointSlice>) -> bool {
        let key = |s: &EndpointSlice| {
            format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or(""),
                s.metadata.name.as_deref().unwrap_or("")
            )
        };
        match event {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                let now = ready_addresses(s);
                let before = self.0.insert(key(s), now.clone());
                matches!(event, watcher::Event::Apply(_))
                    && before.is_some_and(|b| b.difference(&now).next().is_some())
            }
            watcher::Event::Delete(s) => self.0.remove(&key(s)).is_some_and(|b| !b.is_empty()),
            watcher::Event::Init | watcher::Event::InitDone => false,
        }
    }
}

/// A slice's ready addresses (a missing `ready` condition means ready, as kube-proxy reads it).
fn ready_addresses(slice: &EndpointSlice) -> std::collections::HashSet<String> {
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect()
}

/// A reflector of `api` whose every event pokes `changed`; `on_event` sees each event first.
fn mirror<K>(
    api: Api<K>,
    changed: Arc<Notify>,
    mut on_event: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    on_event(&event);
                    changed.notify_one()
                }
                Err(e) => tracing::warn!(error = %e, "watch failed; retrying with backoff"),
            }
        }
    });
    (store, task)
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
