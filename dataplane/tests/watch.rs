//! The kube-rs sync loop against a small Kubernetes API fake served over HTTP on loopback
//! (list and watch of Services and EndpointSlices with resourceVersions), until the embedded
//! lab API server can take its place.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dataplane::model::{NodeConfig, Snapshot};
use dataplane::watch::{Backend, SyncError, SyncOptions, SyncStats, Synced, run};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(&'static str, String), Value>,
    log: Vec<(u64, &'static str, String)>,
}

/// Just enough of the Kubernetes API for a reflector: list and watch, with resourceVersions.
#[derive(Clone)]
struct FakeApi {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<(u64, &'static str, String)>,
}

impl FakeApi {
    fn new() -> Self {
        Self {
            state: Arc::default(),
            events: broadcast::channel(256).0,
        }
    }

    fn record(&self, path: &'static str, kind: &str, mut object: Value) {
        let mut state = self.state.lock().unwrap();
        state.rv += 1;
        let rv = state.rv;
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (path, name);
        let event = if kind == "DELETED" {
            state.objects.remove(&key);
            "DELETED"
        } else if state.objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let line = format!("{}\n", json!({"type": event, "object": object}));
        state.log.push((rv, path, line.clone()));
        let _ = self.events.send((rv, path, line));
    }

    fn upsert(&self, path: &'static str, object: Value) {
        self.record(path, "UPSERT", object);
    }

    fn delete(&self, path: &'static str, object: Value) {
        self.record(path, "DELETED", object);
    }

    async fn serve(self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let api = self.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.handle(req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    fn handle(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<BoxBody<Bytes, Infallible>> {
        let path: &'static str = match req.uri().path() {
            SERVICES => SERVICES,
            SLICES => SLICES,
            _ => {
                return hyper::Response::builder()
                    .status(404)
                    .body(Full::new(Bytes::from_static(b"{}")).boxed())
                    .unwrap();
            }
        };
        let query = req.uri().query().unwrap_or("");
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .map(str::to_owned)
        };
        if param("watch").as_deref() == Some("true") {
            let since: u64 = param("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut live = self.events.subscribe();
            let backlog: Vec<(u64, String)> = self
                .state
                .lock()
                .unwrap()
                .log
                .iter()
                .filter(|(rv, p, _)| *rv > since && *p == path)
                .map(|(rv, _, line)| (*rv, line.clone()))
                .collect();
            let (tx, rx) = mpsc::channel::<Bytes>(64);
            tokio::spawn(async move {
                let mut sent = since;
                for (rv, line) in backlog {
                    sent = rv;
                    if tx.send(Bytes::from(line)).await.is_err() {
                        return;
                    }
                }
                while let Ok((rv, p, line)) = live.recv().await {
                    if p == path && rv > sent && tx.send(Bytes::from(line)).await.is_err() {
                        return;
                    }
                }
            });
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            return hyper::Response::builder()
                .header("content-type", "application/json")
                .body(StreamBody::new(stream).boxed())
                .unwrap();
        }
        let state = self.state.lock().unwrap();
        let items: Vec<&Value> = state
            .objects
            .iter()
            .filter(|((p, _), _)| *p == path)
            .map(|(_, v)| v)
            .collect();
        let kind = if path == SERVICES {
            "ServiceList"
        } else {
            "EndpointSliceList"
        };
        let body = json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": state.rv.to_string()}, "items": items});
        hyper::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())).boxed())
            .unwrap()
    }
}

fn service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "hello-world", "namespace": "default"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]}})
}

fn slice(ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "hello-world-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "hello-world"}},
        "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}], "endpoints": endpoints})
}

/// Records every snapshot it is asked to sync, and says it did what the second field says.
struct Recording(mpsc::UnboundedSender<Snapshot>, Synced);

impl Backend for Recording {
    async fn sync(&mut self, snapshot: &Snapshot, _node: &NodeConfig) -> Result<Synced, SyncError> {
        let _ = self.0.send(snapshot.clone());
        Ok(self.1)
    }
}

/// The fake API with the tutorial's Service and one slice of `endpoints`, served on loopback.
async fn serving(endpoints: &[&str]) -> (FakeApi, SocketAddr) {
    let api = FakeApi::new();
    api.upsert(SERVICES, service());
    api.upsert(SLICES, slice(endpoints));
    let addr = api.clone().serve().await;
    (api, addr)
}

fn endpoint_ips(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .services
        .values()
        .flat_map(|e| e.endpoints.iter().map(|ep| ep.ip.to_string()))
        .collect()
}

async fn client(addr: SocketAddr) -> kube::Client {
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Snapshot>) -> Snapshot {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a sync in time")
        .expect("the loop runs")
}

/// The sync loop against the fake API at `addr`, until the returned sender is used.
async fn start<B: Backend + 'static>(
    addr: SocketAddr,
    backend: B,
    min_interval: Duration,
    resync: Duration,
    stats: Arc<Mutex<SyncStats>>,
) -> (
    tokio::task::JoinHandle<Result<(), SyncError>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = SyncOptions {
        min_interval,
        resync,
        once: false,
    };
    let task = tokio::spawn(run(
        client(addr).await,
        NodeConfig::new("lab-worker"),
        backend,
        options,
        stats,
        async {
            let _ = stopped.await;
        },
    ));
    (task, stop)
}

/// Stops a loop from [`start`]; it must end cleanly.
async fn stop_loop(
    task: tokio::task::JoinHandle<Result<(), SyncError>>,
    stop: tokio::sync::oneshot::Sender<()>,
) {
    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn changes_in_the_api_reach_the_backend_rate_limited() {
    let (api, addr) = serving(&["10.244.1.2", "10.244.1.3"]).await;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let stats = Arc::new(Mutex::new(SyncStats::default()));
    let (task, stop) = start(
        addr,
        Recording(tx, Synced::Changed),
        Duration::from_millis(300),
        Duration::from_secs(60),
        stats.clone(),
    )
    .await;

    assert_eq!(
        endpoint_ips(&next(&mut rx).await),
        ["10.244.1.2", "10.244.1.3"]
    );

    // An endpoint goes away.
    api.upsert(SLICES, slice(&["10.244.1.2"]));
    let mut snapshot = next(&mut rx).await;
    while endpoint_ips(&snapshot) != ["10.244.1.2"] {
        snapshot = next(&mut rx).await;
    }

    // A burst of additions is coalesced, not synced once per change.
    let before = stats.lock().unwrap().syncs;
    let mut ips = vec!["10.244.1.2".to_string()];
    for last in 4..=9 {
        ips.push(format!("10.244.1.{last}"));
        let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
        api.upsert(SLICES, slice(&refs));
    }
    loop {
        let s = next(&mut rx).await;
        if endpoint_ips(&s) == ips {
            break;
        }
    }
    let burst = stats.lock().unwrap().syncs - before;
    assert!((1..=3).contains(&burst), "6 changes took {burst} syncs");

    // The service is deleted: its rules go.
    api.delete(SERVICES, service());
    let mut snapshot = next(&mut rx).await;
    while !snapshot.services.is_empty() {
        snapshot = next(&mut rx).await;
    }
    assert_eq!(stats.lock().unwrap().failures, 0);
    stop_loop(task, stop).await;
}

#[tokio::test]
async fn syncs_that_write_nothing_do_not_hold_back_the_next_change() {
    let (api, addr) = serving(&["10.244.1.2"]).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Far longer than the test may take: a sync that counted would block the next one.
    let hour = Duration::from_secs(3600);
    let (task, stop) = start(
        addr,
        Recording(tx, Synced::Unchanged),
        hour,
        hour,
        Default::default(),
    )
    .await;
    assert_eq!(endpoint_ips(&next(&mut rx).await), ["10.244.1.2"]);
    for last in 3..=5 {
        let wanted = format!("10.244.1.{last}");
        api.upsert(SLICES, slice(&[&wanted]));
        while endpoint_ips(&next(&mut rx).await) != [wanted.as_str()] {}
    }
    stop_loop(task, stop).await;
}

#[tokio::test]
async fn a_lost_ready_endpoint_is_synced_without_waiting_for_the_interval() {
    let (api, addr) = serving(&["10.244.1.2", "10.244.1.3"]).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Far longer than the test may take: only a lost endpoint may cut it short.
    let hour = Duration::from_secs(3600);
    let (task, stop) = start(
        addr,
        Recording(tx, Synced::Changed),
        hour,
        hour,
        Default::default(),
    )
    .await;
    assert_eq!(
        endpoint_ips(&next(&mut rx).await),
        ["10.244.1.2", "10.244.1.3"]
    );
    // An addition waits for the interval.
    api.upsert(SLICES, slice(&["10.244.1.2", "10.244.1.3", "10.244.1.4"]));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "an addition was synced inside the minimum interval"
    );
    // A ready endpoint leaving goes at once, with what waited.
    api.upsert(SLICES, slice(&["10.244.1.2", "10.244.1.4"]));
    let mut snapshot = next(&mut rx).await;
    while endpoint_ips(&snapshot) != ["10.244.1.2", "10.244.1.4"] {
        snapshot = next(&mut rx).await;
    }
    // So does a whole slice going.
    api.delete(SLICES, slice(&[]));
    let mut snapshot = next(&mut rx).await;
    while !endpoint_ips(&snapshot).is_empty() {
        snapshot = next(&mut rx).await;
    }
    stop_loop(task, stop).await;
}

#[tokio::test]
async fn once_syncs_a_single_time_and_returns() {
    let (_api, addr) = serving(&["10.244.1.2"]).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stats = Arc::new(Mutex::new(SyncStats::default()));
    let options = SyncOptions {
        once: true,
        ..SyncOptions::default()
    };
    tokio::time::timeout(
        PATIENCE,
        run(
            client(addr).await,
            NodeConfig::new("n"),
            Recording(tx, Synced::Changed),
            options,
            stats.clone(),
            std::future::pending(),
        ),
    )
    .await
    .expect("returns after one sync")
    .unwrap();
    assert_eq!(endpoint_ips(&rx.recv().await.unwrap()), ["10.244.1.2"]);
    assert_eq!(stats.lock().unwrap().syncs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_syncs_once_from_a_kubeconfig_and_prints_the_rules() {
    let (_api, addr) = serving(&["10.244.1.2", "10.244.1.3"]).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{addr}\"}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u}}\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_dataplane"))
            .args([
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--once",
                "--dry-run",
                "--node-name",
                "lab-worker",
            ])
            .output(),
    )
    .await
    .expect("exits after one sync")
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("-A KUBE-SERVICES -m comment --comment \"default/hello-world cluster IP\" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j KUBE-SVC-"), "{stdout}");
    assert_eq!(stdout.matches("-j DNAT --to-destination").count(), 2);
}

#[test]
fn an_unreadable_kubeconfig_is_named() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dataplane"))
        .args(["--kubeconfig", "/nonexistent/kubeconfig", "--once"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("dataplane: reading the kubeconfig /nonexistent/kubeconfig"),
        "{stderr}"
    );
}
