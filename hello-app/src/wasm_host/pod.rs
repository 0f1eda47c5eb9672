//! A Pod: the component run with one Pod's environment, its warm instances and its listener.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use tokio::net::TcpListener;
use wasmtime::Store;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::Proxy;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::{EPOCH_TICK, LogBuffer, PodState, WasmHost};
use crate::respond::{AppVersion, missing_host};
use crate::server::{DRAIN_TIMEOUT, request_head, to_response};

/// Idle instances a Pod keeps; more only exist while that many requests run at once.
const MAX_IDLE: usize = 64;

/// Where a Pod's stderr (its `Serving request:` lines) goes.
#[derive(Debug, Clone, Default)]
pub enum PodLog {
    /// The host process's stderr.
    #[default]
    Stderr,
    /// Nowhere.
    Discard,
    /// An in-memory buffer of the latest lines, which the caller reads (for `kubectl logs`).
    Memory(LogBuffer),
}

/// What makes one Pod differ from another.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// The Pod's name, which the app reports as `Hostname:` (its `HOSTNAME`).
    pub name: String,
    /// The app release the Pod runs (its image tag).
    pub version: AppVersion,
    /// More environment variables for the component.
    pub env: Vec<(String, String)>,
    /// How long one request may run in the component before it is interrupted (answer 500).
    pub request_timeout: Duration,
    /// Where the component's stderr goes.
    pub log: PodLog,
}

impl PodSpec {
    /// A Pod named `name` running version 1.0 with a 10 s request timeout, logging to stderr.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: AppVersion::V1,
            env: Vec::new(),
            request_timeout: Duration::from_secs(10),
            log: PodLog::Stderr,
        }
    }

    /// The same Pod running `version`.
    pub fn version(mut self, version: AppVersion) -> Self {
        self.version = version;
        self
    }

    /// The same Pod with its component's stderr going to `log`.
    pub fn log(mut self, log: PodLog) -> Self {
        self.log = log;
        self
    }

    /// The same Pod with another request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    fn wasi_ctx(&self) -> WasiCtx {
        let mut builder = WasiCtx::builder();
        builder
            .env("HOSTNAME", &self.name)
            .env("HELLO_APP_VERSION", self.version.tag());
        for (k, v) in &self.env {
            builder.env(k, v);
        }
        match &self.log {
            PodLog::Stderr => {
                builder.inherit_stderr();
            }
            PodLog::Discard => {}
            PodLog::Memory(log) => {
                builder.stderr(log.clone());
            }
        }
        builder.build()
    }

    fn deadline_ticks(&self) -> u64 {
        (self.request_timeout.as_nanos() / EPOCH_TICK.as_nanos()) as u64
    }
}

/// Counters of one Pod since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodStats {
    /// Requests handed to the component.
    pub requests: u64,
    /// Instances created (the first, and one after each trap or reuse limit).
    pub instances_created: u64,
    /// Requests that trapped, timed out or never produced a response (answered 500).
    pub failures: u64,
}

/// A Pod served by a [`WasmHost`]. Cheap to clone; clones share instances and counters.
#[derive(Clone)]
pub struct Pod {
    inner: Arc<PodInner>,
}

struct PodInner {
    host: WasmHost,
    spec: PodSpec,
    idle: Mutex<Vec<Instance>>,
    requests: AtomicU64,
    instances_created: AtomicU64,
    failures: AtomicU64,
}

struct Instance {
    store: Store<PodState>,
    proxy: Proxy,
    served: u32,
    deadline_ticks: u64,
}

impl Pod {
    pub(super) fn new(host: WasmHost, spec: PodSpec) -> Self {
        Self {
            inner: Arc::new(PodInner {
                host,
                spec,
                idle: Mutex::new(Vec::new()),
                requests: AtomicU64::new(0),
                instances_created: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        }
    }

    /// The Pod's name (its host name).
    pub fn name(&self) -> &str {
        &self.inner.spec.name
    }

    /// The Pod's counters.
    pub fn stats(&self) -> PodStats {
        PodStats {
            requests: self.inner.requests.load(Ordering::Relaxed),
            instances_created: self.inner.instances_created.load(Ordering::Relaxed),
            failures: self.inner.failures.load(Ordering::Relaxed),
        }
    }

    /// Makes the Pod's first instance now, as a container is started before its first
    /// request, so that the first request does not wait for instantiation (and a component
    /// that cannot start says so here). Nothing to do when an instance is already waiting.
    pub async fn warm(&self) -> wasmtime::Result<()> {
        if !self.inner.idle.lock().expect("idle pool").is_empty() {
            return Ok(());
        }
        let instance = self.checkout().await?;
        self.checkin(instance);
        Ok(())
    }

    /// Serves HTTP/1.1 on `listener` until `shutdown` completes, then drains like a Pod
    /// receiving SIGTERM.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let pod = self.clone();
        crate::server::serve(
            listener,
            move |_peer, local| {
                let pod = pod.clone();
                hyper::service::service_fn(move |req| {
                    let pod = pod.clone();
                    async move { Ok::<_, Infallible>(pod.handle(req, local).await) }
                })
            },
            shutdown,
            DRAIN_TIMEOUT,
        )
        .await
    }

    /// Answers one request through the component; `local` is the address it arrived on.
    pub async fn handle<B>(
        &self,
        mut req: Request<B>,
        local: SocketAddr,
    ) -> Response<HyperOutgoingBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let head = request_head(&req);
        if !head.has_host {
            // wasi:http requests always carry an authority; refuse as Go does where a Host is
            // mandatory (HTTP/1.1), and use the local address where it is not (HTTP/1.0).
            if head.http11_or_later {
                return boxed(to_response(missing_host()));
            }
            let host = hyper::header::HeaderValue::from_str(&local.to_string())
                .expect("a socket address is a valid header value");
            req.headers_mut().insert(hyper::header::HOST, host);
        }
        self.inner.requests.fetch_add(1, Ordering::Relaxed);

        let mut instance = match self.checkout().await {
            Ok(instance) => instance,
            Err(e) => return self.failed("instantiating the component failed", &e),
        };
        let (sender, mut receiver) = tokio::sync::oneshot::channel();
        let pod = self.clone();
        let mut run = Box::pin(async move {
            let result = instance.call(req, sender).await;
            if result.is_ok() {
                pod.checkin(instance);
            }
            result
        });
        // The component runs in this task until it has answered: hello-app writes its whole
        // body within that one poll, and a task per request cost about 6% of throughput. One
        // still writing a body that hyper is already streaming out goes on in a task of its
        // own; the instance returns to the pool when it is done.
        let (answer, finished) = std::future::poll_fn(|cx| {
            // A panic in the call (a host bug) answers 500 like a trap, not by dropping the
            // connection; the call is not polled again.
            let polled = std::panic::catch_unwind(AssertUnwindSafe(|| run.as_mut().poll(cx)))
                .unwrap_or_else(|_| Poll::Ready(Err(wasmtime::format_err!("the call panicked"))));
            if let Poll::Ready(result) = polled {
                return Poll::Ready((receiver.try_recv().ok(), Some(result)));
            }
            Pin::new(&mut receiver)
                .poll(cx)
                .map(|answer| (answer.ok(), None))
        })
        .await;
        let finished = match (answer.is_some(), finished) {
            (_, Some(result)) => result,
            // Answered, and still writing the body: it goes on in a task of its own.
            (true, None) => {
                tokio::spawn(run);
                Ok(())
            }
            // Dropped its response outparam without a response and still runs: how it ends
            // says why.
            (false, None) => run.await,
        };
        match answer {
            Some(Ok(response)) => response,
            Some(Err(code)) => self.failed(
                "the component answered with an error",
                &wasmtime::format_err!("{code:?}"),
            ),
            None => {
                let error = finished
                    .err()
                    .unwrap_or_else(|| wasmtime::format_err!("the component never set a response"));
                self.failed("the component failed", &error)
            }
        }
    }

    fn failed(&self, what: &str, error: &wasmtime::Error) -> Response<HyperOutgoingBody> {
        self.inner.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(pod = %self.inner.spec.name, error = %format!("{error:#}"), "{what}");
        let response = Response::builder()
            .status(500)
            .header(hyper::header::CONTENT_TYPE, crate::respond::TEXT_PLAIN)
            .body(Full::new(Bytes::from_static(b"Internal Server Error\n")))
            .expect("a static response is valid");
        boxed(response)
    }

    async fn checkout(&self) -> wasmtime::Result<Instance> {
        if let Some(instance) = self.inner.idle.lock().expect("idle pool").pop() {
            return Ok(instance);
        }
        let host = &self.inner.host.inner;
        let deadline_ticks = self.inner.spec.deadline_ticks();
        let mut store = Store::new(&host.engine, PodState::new(self.inner.spec.wasi_ctx()));
        // Instantiation runs the guest's start code, which the epoch deadline covers too.
        store.set_epoch_deadline(deadline_ticks);
        let proxy = host.pre.instantiate_async(&mut store).await?;
        self.inner.instances_created.fetch_add(1, Ordering::Relaxed);
        Ok(Instance {
            store,
            proxy,
            served: 0,
            deadline_ticks,
        })
    }

    fn checkin(&self, instance: Instance) {
        if instance.served >= self.inner.host.inner.config.max_reuse {
            return;
        }
        let mut idle = self.inner.idle.lock().expect("idle pool");
        if idle.len() < MAX_IDLE {
            idle.push(instance);
        }
    }
}

impl Instance {
    async fn call<B>(
        &mut self,
        req: Request<B>,
        sender: tokio::sync::oneshot::Sender<
            Result<
                Response<HyperOutgoingBody>,
                wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
            >,
        >,
    ) -> wasmtime::Result<()>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        self.served += 1;
        self.store.set_epoch_deadline(self.deadline_ticks);
        let mut http = self.store.data_mut().http();
        let req = http.new_incoming_request(Scheme::Http, req)?;
        let out = http.new_response_outparam(sender)?;
        self.proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut self.store, req, out)
            .await
    }
}

fn boxed(response: Response<Full<Bytes>>) -> Response<HyperOutgoingBody> {
    response.map(|body| {
        body.map_err(|never: Infallible| match never {})
            .boxed_unsync()
    })
}
