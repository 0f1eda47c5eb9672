//! The lab's "kubelet" runtime in kernel mode: each Pod gets its own network namespace on its
//! node's bridge and is served by the built-in hello-app component (one wasmtime engine and one
//! compiled component for every Pod), listening on its containerPort inside that namespace.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use hello_app::respond::AppVersion;
use hello_app::wasm_host::{PodLog, PodSpec, WasmHost};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::cluster::NodeConfig;
use crate::controllers::{PodRuntime, RuntimeError};
use crate::network::{self, Names};

/// The images the lab can run, and the version each serves.
pub const IMAGES: &[(&str, AppVersion)] = &[
    ("gcr.io/google-samples/hello-app:1.0", AppVersion::V1),
    ("gcr.io/google-samples/hello-app:2.0", AppVersion::V2),
    ("xiaopeng163/hello-app:1.0", AppVersion::V1),
    ("docker.io/xiaopeng163/hello-app:1.0", AppVersion::V1),
];

/// How long a stopping Pod may take to finish its requests.
const DRAIN: Duration = Duration::from_secs(5);

/// Which version an image runs, or why the lab cannot run it.
pub fn image_version(image: &str) -> Result<AppVersion, RuntimeError> {
    IMAGES.iter().find(|(name, _)| *name == image).map(|(_, v)| *v).ok_or_else(|| RuntimeError {
        reason: "ErrImagePull".into(),
        message: format!(
            "Failed to pull image \"{image}\": the lab runs only its built-in hello-app component, as {}",
            IMAGES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ),
    })
}

struct Running {
    stop: oneshot::Sender<()>,
    done: std::sync::mpsc::Receiver<()>,
}

/// Pods as wasm instances in their own network namespaces.
pub struct KernelRuntime {
    host: WasmHost,
    names: Names,
    handle: tokio::runtime::Handle,
    running: Mutex<HashMap<String, Running>>,
}

impl KernelRuntime {
    /// A runtime for lab `lab`, spawning its servers on `handle`.
    pub fn new(host: WasmHost, lab: &str, handle: tokio::runtime::Handle) -> KernelRuntime {
        KernelRuntime {
            host,
            names: Names::new(lab),
            handle,
            running: Mutex::new(HashMap::new()),
        }
    }
}

fn uid(pod: &Value) -> &str {
    pod["metadata"]["uid"].as_str().unwrap_or("")
}

impl PodRuntime for KernelRuntime {
    fn start(&self, pod: &Value, node: &NodeConfig, ip: Ipv4Addr) -> Result<(), RuntimeError> {
        let containers = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let container = containers.first().ok_or_else(|| RuntimeError {
            reason: "CreateContainerError".into(),
            message: "the Pod has no containers".into(),
        })?;
        let version = image_version(container["image"].as_str().unwrap_or(""))?;
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
        let ns = network::add_pod(&self.names, &node.name, node.pod_cidr, uid(pod), ip)
            .map_err(|e| failed(format!("setting up the Pod's network: {e}")))?;
        let listener = network::listen_in(&ns, port)
            .map_err(|e| failed(format!("listening on port {port} in the Pod: {e}")))?;
        let served = self
            .host
            .pod(PodSpec::new(name).version(version).log(PodLog::Discard));
        let (stop, stopped) = oneshot::channel::<()>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let _guard = self.handle.enter();
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| failed(format!("adopting the Pod's socket: {e}")))?;
        self.handle.spawn(async move {
            let _ = served
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await;
            let _ = done_tx.send(());
        });
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid(pod).to_string(), Running { stop, done });
        Ok(())
    }

    fn stop(&self, pod: &Value) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid(pod));
        if let Some(r) = running {
            let _ = r.stop.send(());
            let _ = r.done.recv_timeout(DRAIN);
        }
        network::remove_pod(&self.names, uid(pod));
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
    fn only_the_tutorials_images_run() {
        assert!(matches!(
            image_version("gcr.io/google-samples/hello-app:2.0"),
            Ok(AppVersion::V2)
        ));
        let e = image_version("nginx:latest").unwrap_err();
        assert_eq!(e.reason, "ErrImagePull");
        assert!(
            e.message.contains("gcr.io/google-samples/hello-app:1.0"),
            "{}",
            e.message
        );
    }
}
