//! The lab's "kubelet" runtime in kernel mode: each Pod gets its own network namespace on its
//! node's bridge and is served by the built-in hello-app component (one wasmtime engine and one
//! compiled component for every Pod), listening on its containerPort inside that namespace.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use hello_app::respond::AppVersion;
use hello_app::wasm_host::{LogBuffer, PodLog, PodSpec, WasmHost};
use serde_json::Value;
use tokio::sync::watch;

use crate::cluster::NodeConfig;
use crate::controllers::{ContainerExit, ExitSink, PodRuntime, RuntimeError};
use crate::network::{self, Names};
use crate::podexec::ExecPlace;

/// The images the lab can run, and the version each serves.
pub const IMAGES: &[(&str, AppVersion)] = &[
    ("gcr.io/google-samples/hello-app:1.0", AppVersion::V1),
    ("gcr.io/google-samples/hello-app:2.0", AppVersion::V2),
    ("xiaopeng163/hello-app:1.0", AppVersion::V1),
    ("docker.io/xiaopeng163/hello-app:1.0", AppVersion::V1),
];

/// How long a stopping Pod may take to finish its requests.
const DRAIN: Duration = Duration::from_secs(5);

/// The most of a Pod's log the lab keeps: about 1,600 of hello-app's `Serving request:`
/// lines; older lines are dropped, as a container runtime rotates a container's log.
const LOG_CAPACITY: usize = 64 << 10;

/// How an image names a user's own wasi:http component: `file://` and the absolute path of a
/// `.wasm` file on the lab's machine (`file:///srv/app.wasm`).
pub const FILE_IMAGE: &str = "file://";

/// What a Pod's image runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum App {
    /// The built-in hello-app component, as this version.
    Builtin(AppVersion),
    /// A wasi:http component read from this file.
    File(std::path::PathBuf),
}

fn pull_failed(image: &str, why: &str) -> RuntimeError {
    RuntimeError {
        reason: "ErrImagePull".into(),
        message: format!("Failed to pull image \"{image}\": {why}"),
    }
}

/// What an image runs, or why the lab cannot run it.
pub fn image_app(image: &str) -> Result<App, RuntimeError> {
    if let Some((_, v)) = IMAGES.iter().find(|(name, _)| *name == image) {
        return Ok(App::Builtin(*v));
    }
    if let Some(path) = image.strip_prefix(FILE_IMAGE) {
        let path = std::path::PathBuf::from(path);
        if !path.is_absolute() {
            return Err(pull_failed(
                image,
                &format!(
                    "a component file is named by its absolute path, as {FILE_IMAGE}/srv/app.wasm"
                ),
            ));
        }
        return Ok(App::File(path));
    }
    Err(pull_failed(
        image,
        &format!(
            "the lab runs its built-in hello-app component, as {}, or a wasi:http component file, as {FILE_IMAGE}/path/to/app.wasm",
            IMAGES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

struct Running {
    stop: watch::Sender<bool>,
    done: std::sync::mpsc::Receiver<()>,
}

/// How long a crashed Pod's server stays down before it is started again (the kubelet's
/// first crash-loop back-off is 10 s; the lab's is short, but long enough to see).
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Where a Pod's socket lives.
pub enum Placement {
    /// In the Pod's own network namespace, on its node's bridge (kernel mode).
    Namespaces(Names),
    /// On the host's loopback, at the Pod IP's loopback twin (userspace mode).
    Loopback,
}

/// Pods as wasm instances, in their own network namespaces or on loopback addresses.
pub struct WasmRuntime {
    host: WasmHost,
    /// Hosts of users' component files, by path, with the file's modification time: a file
    /// is compiled when a Pod first runs it, and again for new Pods once it has changed
    /// (running Pods keep the host they started with).
    file_hosts: Mutex<HashMap<std::path::PathBuf, (Option<std::time::SystemTime>, WasmHost)>>,
    placement: Placement,
    handle: tokio::runtime::Handle,
    running: Mutex<HashMap<String, Running>>,
    /// Each started Pod's log, by Pod uid, until the Pod stops.
    logs: Mutex<HashMap<String, LogBuffer>>,
    exits: std::sync::Arc<std::sync::OnceLock<ExitSink>>,
}

/// Where a Pod listens: its namespace (kernel mode) or a loopback address (userspace mode).
#[derive(Clone)]
enum Socket {
    Namespace(String, u16),
    Loopback(Ipv4Addr, u16),
}

impl Socket {
    fn listen(&self) -> std::io::Result<std::net::TcpListener> {
        match self {
            Socket::Namespace(ns, port) => network::listen_in(ns, *port),
            Socket::Loopback(ip, port) => {
                let l = std::net::TcpListener::bind((*ip, *port))?;
                l.set_nonblocking(true)?;
                Ok(l)
            }
        }
    }
}

impl WasmRuntime {
    /// A runtime placing Pods by `placement`, spawning their servers on `handle`.
    pub fn new(
        host: WasmHost,
        placement: Placement,
        handle: tokio::runtime::Handle,
    ) -> WasmRuntime {
        WasmRuntime {
            host,
            file_hosts: Mutex::default(),
            placement,
            handle,
            running: Mutex::new(HashMap::new()),
            logs: Mutex::default(),
            exits: std::sync::Arc::default(),
        }
    }
}

/// The loopback twin of a lab address in userspace mode: 10.244.1.5 is served at
/// 127.244.1.5, 10.96.0.10 at 127.96.0.10, 172.18.0.3 at 127.18.0.3. All of 127.0.0.0/8
/// is local on Linux, so no setup (and no privilege) is needed.
pub fn loopback_twin(ip: Ipv4Addr) -> Ipv4Addr {
    let [_, b, c, d] = ip.octets();
    Ipv4Addr::new(127, b, c, d)
}

/// The port a service port is served on in userspace mode: ports an unprivileged process may
/// not bind (below `net.ipv4.ip_unprivileged_port_start`, 1024 by default) move up by 10000.
/// `labctl curl` applies the same shift, so `labctl curl http://<ClusterIP>` works either way.
pub fn userspace_port(port: u16) -> u16 {
    // Root of a lab user namespace is not root of the host's network namespace, where the
    // userspace proxy listens.
    if rustix::process::geteuid().is_root() && !crate::userns::inside() {
        return port;
    }
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if port < start {
        port.saturating_add(10000)
    } else {
        port
    }
}

impl WasmRuntime {
    /// The host serving `app`, and the version the built-in component answers with.
    fn host_for(&self, app: &App, image: &str) -> Result<(WasmHost, AppVersion), RuntimeError> {
        let path = match app {
            App::Builtin(version) => return Ok((self.host.clone(), *version)),
            App::File(path) => path,
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut hosts = self.file_hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((when, host)) = hosts.get(path)
            && *when == modified
        {
            return Ok((host.clone(), AppVersion::V1));
        }
        // Pods of a user's component share one pool of at most this many instances.
        let host = WasmHost::new(hello_app::wasm_host::HostConfig {
            component: hello_app::wasm_host::ComponentSource::File(path.clone()),
            max_instances: 256,
            ..Default::default()
        })
        .map_err(|e| pull_failed(image, &e.to_string()))?;
        hosts.insert(path.clone(), (modified, host.clone()));
        Ok((host, AppVersion::V1))
    }

    /// Stops the Pod's server (draining it), if it runs, and ends the commands running in
    /// its container (`kubectl exec`), as they end with a container.
    fn stop_server(&self, pod: &Value) {
        crate::podexec::end_pod_sessions(uid(pod));
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid(pod));
        if let Some(r) = running {
            let _ = r.stop.send(true);
            let _ = r.done.recv_timeout(DRAIN);
        }
    }

    /// Starts the Pod's container, writing to `log`; with `new_sandbox` it first makes the
    /// Pod's network (kernel mode), else the container starts in the one the Pod has.
    fn start_with_log(
        &self,
        pod: &Value,
        node: &NodeConfig,
        ip: Ipv4Addr,
        log: LogBuffer,
        new_sandbox: bool,
    ) -> Result<(), RuntimeError> {
        let containers = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let container = containers.first().ok_or_else(|| RuntimeError {
            reason: "CreateContainerError".into(),
            message: "the Pod has no containers".into(),
        })?;
        let image = container["image"].as_str().unwrap_or("");
        let app = image_app(image)?;
        // hello-app listens on $PORT (8080 by default), whatever containerPort says, as the
        // original does; a PORT in the container's env is honoured.
        let port = container["env"]
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == "PORT"))
            .and_then(|e| e["value"].as_str())
            .and_then(|p| p.parse().ok())
            .unwrap_or(8080u16);
        let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        let failed = |message: String| RuntimeError {
            reason: "RunContainerError".into(),
            message,
        };
        let (listener, socket) = match &self.placement {
            Placement::Namespaces(names) if new_sandbox => {
                let (ns, l) =
                    network::add_pod(names, &node.name, node.pod_cidr, uid(pod), ip, port)
                        .map_err(|e| failed(format!("setting up the Pod's network: {e}")))?;
                (l, Socket::Namespace(ns, port))
            }
            Placement::Namespaces(names) => {
                let socket = Socket::Namespace(names.pod(uid(pod)), port);
                let l = socket.listen().map_err(|e| {
                    failed(format!(
                        "listening on port {port} in the Pod's network: {e}"
                    ))
                })?;
                (l, socket)
            }
            Placement::Loopback => {
                let socket = Socket::Loopback(loopback_twin(ip), port);
                let l = socket.listen().map_err(|e| {
                    failed(format!("listening on {}:{port}: {e}", loopback_twin(ip)))
                })?;
                (l, socket)
            }
        };
        let (host, version) = self.host_for(&app, image)?;
        let served = host.pod(
            PodSpec::new(name.clone())
                .version(version)
                .log(PodLog::Memory(log.clone())),
        );
        let (stop, mut stopped) = watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        let _guard = self.handle.enter();
        let mut listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| failed(format!("adopting the Pod's socket: {e}")))?;
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid(pod).to_string(), log.clone());
        let exits = self.exits.clone();
        let (pod_ns, pod_uid) = (
            pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            uid(pod).to_string(),
        );
        let report = move |exit: ContainerExit| {
            if let Some(sink) = exits.get() {
                sink(&pod_ns, &name, &pod_uid, exit);
            }
        };
        // The Pod's supervisor: serves until stopped; when the server ends by itself (its
        // listening socket died), reports the crash, waits, listens again and reports the
        // restart, as the kubelet restarts a failed container.
        self.handle.spawn(async move {
            // The instance is made as the container starts, beside the node's other work,
            // not by the Pod's first request; the socket already listens meanwhile.
            if let Err(e) = served.warm().await {
                tracing::warn!(pod = served.name(), "the component did not start: {e:#}");
            }
            loop {
                // The original's first line, each time its server starts listening.
                log.log(&format!("Server listening on port {port}"));
                let stop_wait = stopped.clone();
                let result = served
                    .serve(listener, async move {
                        let mut rx = stop_wait;
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
                let error = match result {
                    _ if *stopped.borrow() => break,
                    Ok(()) => "the server ended".to_string(),
                    Err(e) => format!("the server failed: {e}"),
                };
                report(ContainerExit::Crashed(error));
                listener = loop {
                    tokio::select! {
                        _ = stopped.wait_for(|s| *s) => {
                            let _ = done_tx.send(());
                            return;
                        }
                        () = tokio::time::sleep(RESTART_DELAY) => {}
                    }
                    let socket = socket.clone();
                    let again = tokio::task::spawn_blocking(move || socket.listen()).await;
                    match again.map(|r| r.and_then(tokio::net::TcpListener::from_std)) {
                        Ok(Ok(l)) => break l,
                        Ok(Err(e)) => {
                            report(ContainerExit::Crashed(format!("listening again: {e}")))
                        }
                        Err(e) => report(ContainerExit::Crashed(format!("listening again: {e}"))),
                    }
                };
                report(ContainerExit::Restarted);
            }
            let _ = done_tx.send(());
        });
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid(pod).to_string(), Running { stop, done });
        Ok(())
    }
}

fn uid(pod: &Value) -> &str {
    pod["metadata"]["uid"].as_str().unwrap_or("")
}

/// Why the Pod's container is not running here, in the kubelet's words where it has some;
/// `so` says what follows from that.
fn not_running(pod: &Value, so: &str) -> String {
    let container = pod["spec"]["containers"][0]["name"].as_str().unwrap_or("");
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let state = &pod["status"]["containerStatuses"][0]["state"];
    // The kubelet's answer for a container that has not run yet; one that ran here and
    // stopped (or ran before the lab restarted) is not running now.
    match state["waiting"]["reason"].as_str() {
        Some(reason) => format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {}",
            match reason {
                "ErrImagePull" => "image can't be pulled",
                "ImagePullBackOff" => "trying and failing to pull image",
                other => other,
            }
        ),
        None if state.get("running").is_none() && state.get("terminated").is_none() => {
            format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
            )
        }
        None => format!("container \"{container}\" in pod \"{name}\" is not running here, {so}"),
    }
}

impl PodRuntime for WasmRuntime {
    fn start(&self, pod: &Value, node: &NodeConfig, ip: Ipv4Addr) -> Result<(), RuntimeError> {
        self.start_with_log(pod, node, ip, LogBuffer::new(LOG_CAPACITY), true)
    }

    fn replace(&self, pod: &Value, node: &NodeConfig, ip: Ipv4Addr) -> Result<(), RuntimeError> {
        // The Pod's network stays, as a Pod's sandbox outlives its containers, and so does
        // its log, as across crash restarts.
        let log = self
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid(pod))
            .cloned();
        self.stop_server(pod);
        // A Pod with a log had its network made by this process (a lab restarted after a
        // crash makes its Pods' networks anew).
        let sandbox = log.is_some()
            && match &self.placement {
                Placement::Namespaces(names) => {
                    crate::podnet::netns_path(&names.pod(uid(pod))).exists()
                }
                Placement::Loopback => false,
            };
        let log = log.unwrap_or_else(|| LogBuffer::new(LOG_CAPACITY));
        self.start_with_log(pod, node, ip, log, !sandbox)
    }

    fn stop(&self, pod: &Value) {
        self.stop_server(pod);
        if let Placement::Namespaces(names) = &self.placement {
            network::remove_pod(names, uid(pod));
        }
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid(pod));
    }

    fn logs(&self, pod: &Value) -> Result<LogBuffer, String> {
        if let Some(log) = self
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid(pod))
        {
            return Ok(log.clone());
        }
        Err(not_running(
            pod,
            "so it has no log (the lab keeps a log from the container's start until the Pod stops)",
        ))
    }

    fn exec_place(&self, pod: &Value) -> Result<ExecPlace, String> {
        if !self.is_running(pod) {
            return Err(not_running(pod, "so no command can run in it"));
        }
        Ok(match &self.placement {
            Placement::Namespaces(names) => {
                ExecPlace::Namespace(crate::podnet::netns_path(&names.pod(uid(pod))))
            }
            Placement::Loopback => ExecPlace::Host,
        })
    }

    fn drain_delay(&self) -> Duration {
        // The dataplanes sync at most every 50 ms; iptables-restore of the lab's rules takes
        // a few tens of milliseconds more.
        Duration::from_millis(250)
    }

    fn report_exits(&self, sink: ExitSink) {
        let _ = self.exits.set(sink);
    }

    fn is_running(&self, pod: &Value) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(uid(pod))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tutorials_images_and_component_files_run() {
        assert_eq!(
            image_app("gcr.io/google-samples/hello-app:2.0"),
            Ok(App::Builtin(AppVersion::V2))
        );
        assert_eq!(
            image_app("file:///srv/app.wasm"),
            Ok(App::File("/srv/app.wasm".into()))
        );
        let e = image_app("nginx:latest").unwrap_err();
        assert_eq!(e.reason, "ErrImagePull");
        assert!(
            e.message.contains("gcr.io/google-samples/hello-app:1.0")
                && e.message.contains("file:///path/to/app.wasm"),
            "{}",
            e.message
        );
        let e = image_app("file://app.wasm").unwrap_err();
        assert!(e.message.contains("absolute path"), "{}", e.message);
    }
}
