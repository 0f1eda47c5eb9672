//! The scheduler and the node agent: a Pod is bound to the worker with the fewest Pods, gets
//! an IP from that node's pod CIDR, and is started by the node's [`PodRuntime`]; a deleted Pod
//! is stopped and then removed.

use std::net::Ipv4Addr;

use labapi::{ApiError, Kind};
use serde_json::{Value, json};

use super::pod_index::PodIndex;
use super::{Ctx, meta};
use crate::apiserver::admission::now;
use crate::cluster::NodeConfig;

/// Why a Pod's containers could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeError {
    /// The waiting reason (`ErrImagePull`, `CrashLoopBackOff`, ...).
    pub reason: String,
    /// What went wrong, for the Event and the container status.
    pub message: String,
}

/// What happened to a running Pod's container, reported by the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerExit {
    /// Its server stopped by itself (the listening socket died); the runtime restarts it.
    Crashed(String),
    /// It serves again after a crash.
    Restarted,
}

/// Where a runtime reports container exits: (Pod namespace, Pod name, Pod uid, what).
pub type ExitSink = std::sync::Arc<dyn Fn(&str, &str, &str, ContainerExit) + Send + Sync>;

/// What runs Pods on a node. The lab's kernel and userspace modes serve the hello-app
/// component; [`ApiOnlyRuntime`] only reports Pods as running.
pub trait PodRuntime: Send + Sync {
    /// Starts the Pod's containers at `ip` on `node`.
    fn start(&self, pod: &Value, node: &NodeConfig, ip: Ipv4Addr) -> Result<(), RuntimeError>;
    /// Stops the Pod (drains, then frees its resources).
    fn stop(&self, pod: &Value);
    /// Replaces the Pod's container with one made from its spec as it is now (an image
    /// changed in place), at the same address.
    fn replace(&self, pod: &Value, node: &NodeConfig, ip: Ipv4Addr) -> Result<(), RuntimeError> {
        self.stop(pod);
        self.start(pod, node, ip)
    }
    /// How long a deleted Pod keeps serving after its endpoint stopped being ready, so that
    /// the dataplanes have removed it before it stops (what a preStop sleep buys on a real
    /// cluster). Zero for runtimes that serve nothing.
    fn drain_delay(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// Whether the Pod is served now (after a restart of the lab, Running Pods are not until
    /// they are started again).
    fn is_running(&self, _pod: &Value) -> bool {
        true
    }
    /// Where to report containers that crash and restart (runtimes that serve nothing never
    /// call it).
    fn report_exits(&self, _sink: ExitSink) {}
    /// The log of the Pod's container, what it writes to stderr (`kubectl logs`), or why
    /// there is none, in kube-apiserver's words where it has some.
    fn logs(&self, _pod: &Value) -> Result<hello_app::wasm_host::LogBuffer, String> {
        Err("the lab runs without a network (API-only mode): its Pods run no containers, so they have no logs".into())
    }
    /// Where a command exec'd in the Pod's container runs (`kubectl exec`), or why none can.
    fn exec_place(&self, _pod: &Value) -> Result<crate::podexec::ExecPlace, String> {
        Err("the lab runs without a network (API-only mode): its Pods run no containers, so no command can run in them".into())
    }
}

/// Records a container's crash or restart in its Pod's status, as the kubelet does: while
/// down the Pod is not Ready (so its endpoint leaves the Service), its container shows the
/// last termination, and each restart counts in `restartCount` (kubectl's RESTARTS).
pub fn record_exit(
    api: &crate::apiserver::Api,
    ns: &str,
    name: &str,
    uid: &str,
    exit: ContainerExit,
) {
    let ts = now();
    let _ = api
        .store
        .modify(Kind::Pod, ns, name, |p| -> Result<bool, ()> {
            if p["metadata"]["uid"] != uid || p["metadata"]["deletionTimestamp"].is_string() {
                return Ok(false);
            }
            let ready = matches!(exit, ContainerExit::Restarted);
            let Some(statuses) = p["status"]["containerStatuses"].as_array_mut() else {
                return Ok(false);
            };
            for c in statuses.iter_mut() {
                match &exit {
                    ContainerExit::Crashed(message) => {
                        let started = c["state"]["running"]["startedAt"].clone();
                        c["state"] = json!({"terminated": {
                            "exitCode": 1, "reason": "Error", "message": message,
                            "startedAt": started, "finishedAt": ts,
                            "containerID": c["containerID"],
                        }});
                    }
                    ContainerExit::Restarted => {
                        c["lastState"] = c["state"].clone();
                        c["state"] = json!({"running": {"startedAt": ts}});
                        c["restartCount"] = json!(c["restartCount"].as_u64().unwrap_or(0) + 1);
                    }
                }
                c["ready"] = json!(ready);
                c["started"] = json!(ready);
            }
            set_ready(p, ready, &ts);
            Ok(true)
        });
}

/// Sets the Pod's `Ready` and `ContainersReady` conditions.
fn set_ready(pod: &mut Value, ready: bool, ts: &str) {
    for cond in pod["status"]["conditions"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if cond["type"] == "Ready" || cond["type"] == "ContainersReady" {
            cond["status"] = json!(if ready { "True" } else { "False" });
            cond["lastTransitionTime"] = json!(ts);
            if ready {
                cond.as_object_mut().map(|o| o.remove("reason"));
            } else {
                cond["reason"] = json!("ContainersNotReady");
            }
        }
    }
}

/// A runtime that serves nothing: Pods are Running and Ready in the API only.
pub struct ApiOnlyRuntime;

impl PodRuntime for ApiOnlyRuntime {
    fn start(&self, _pod: &Value, _node: &NodeConfig, _ip: Ipv4Addr) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn stop(&self, _pod: &Value) {}
}

fn tolerates_control_plane(pod: &Value) -> bool {
    pod["spec"]["tolerations"].as_array().is_some_and(|ts| {
        ts.iter().any(|t| {
            t["key"] == "node-role.kubernetes.io/control-plane"
                || (t["operator"] == "Exists" && t.get("key").is_none())
        })
    })
}

fn pick_node<'a>(ctx: &'a Ctx, pod: &Value, index: &PodIndex) -> Option<&'a NodeConfig> {
    let candidates = ctx
        .api
        .cluster
        .nodes
        .iter()
        .filter(|n| !n.control_plane || tolerates_control_plane(pod));
    candidates.min_by_key(|n| index.pods_on(&n.name))
}

fn free_ip(node: &NodeConfig, index: &PodIndex) -> Option<Ipv4Addr> {
    // .1 is the node's bridge, as with kind's CNI.
    node.pod_cidr
        .hosts()
        .skip(1)
        .find(|ip| !index.ip_used(&node.name, ip))
}

fn condition(kind: &str, ts: &str) -> Value {
    json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": ts})
}

/// Schedules, starts or finishes deleting one Pod.
pub fn reconcile(ctx: &Ctx, index: &PodIndex, ns: &str, name: &str) -> Result<(), ApiError> {
    let store = &ctx.api.store;
    let Some(pod) = store.get(Kind::Pod, ns, name) else {
        return Ok(());
    };
    if pod["metadata"]["deletionTimestamp"].is_string() {
        terminate(ctx, &pod);
        return Ok(());
    }
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("").to_string();
    if node_name.is_empty() {
        let Some(node) = pick_node(ctx, &pod, index) else {
            return Ok(());
        };
        let node_name = node.name.clone();
        let ts = now();
        let bound = store
            .modify(Kind::Pod, ns, name, |p| -> Result<bool, ()> {
                p["spec"]["nodeName"] = json!(node_name);
                p["status"]["phase"] = json!("Pending");
                p["status"]["conditions"] = json!([condition("PodScheduled", &ts)]);
                p["status"]["qosClass"] = json!("BestEffort");
                Ok(true)
            })
            .map_err(|_| ApiError::internal("binding failed"))?;
        if let Some(bound) = bound {
            ctx.recorder.record(
                Kind::Pod,
                &bound,
                "Normal",
                "Scheduled",
                &format!("Successfully assigned {ns}/{name} to {node_name}"),
                "default-scheduler",
            );
        }
        return Ok(());
    }
    if image_changed(&pod) {
        return replace_container(ctx, &pod, &node_name);
    }
    let waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"].is_object();
    if pod["status"]["phase"] == "Running" && !waiting && !ctx.runtime.is_running(&pod) {
        return restart(ctx, &pod, &node_name);
    }
    if pod["status"]["phase"] != "Pending" || pod["status"]["podIP"].is_string() {
        return Ok(());
    }
    let Some(node) = ctx.api.cluster.nodes.iter().find(|n| n.name == node_name) else {
        return Ok(());
    };
    let Some(ip) = free_ip(node, index) else {
        ctx.recorder.record(
            Kind::Pod,
            &pod,
            "Warning",
            "FailedCreatePodSandBox",
            &format!("no free address in {}", node.pod_cidr),
            "kubelet",
        );
        return Ok(());
    };
    let ts = now();
    let containers: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let result = ctx.runtime.start(&pod, node, ip);
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let image = c["image"].as_str().unwrap_or("");
            let state = match &result {
                Ok(()) => json!({"running": {"startedAt": ts}}),
                Err(e) => json!({"waiting": {"reason": e.reason, "message": e.message}}),
            };
            json!({
                "name": c["name"], "image": image, "imageID": image_id(image, result.is_ok()),
                "containerID": format!("wasm://{}-{}", meta(&pod, "uid"), c["name"].as_str().unwrap_or("")),
                "ready": result.is_ok(), "started": result.is_ok(), "restartCount": 0,
                "lastState": {}, "state": state,
            })
        })
        .collect();
    let ip_text = ip.to_string();
    let host_ip = node.internal_ip.to_string();
    let ok = result.is_ok();
    let started = store
        .modify(Kind::Pod, ns, name, |p| -> Result<bool, ()> {
            let status = &mut p["status"];
            status["phase"] = json!(if ok { "Running" } else { "Pending" });
            status["podIP"] = json!(ip_text);
            status["podIPs"] = json!([{"ip": ip_text}]);
            status["hostIP"] = json!(host_ip);
            status["hostIPs"] = json!([{"ip": host_ip}]);
            status["startTime"] = json!(ts);
            status["containerStatuses"] = json!(statuses);
            let mut conditions = vec![json!({"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": null, "lastTransitionTime": ts}), condition("Initialized", &ts)];
            let ready = if ok { "True" } else { "False" };
            for c in ["Ready", "ContainersReady"] {
                conditions.push(json!({"type": c, "status": ready, "lastProbeTime": null, "lastTransitionTime": ts}));
            }
            conditions.push(condition("PodScheduled", &ts));
            status["conditions"] = json!(conditions);
            Ok(true)
        })
        .map_err(|_| ApiError::internal("pod status update failed"))?;
    let Some(started) = started else {
        return Ok(());
    };
    match &result {
        Ok(()) => {
            for c in &containers {
                started_events(
                    ctx,
                    &started,
                    c["name"].as_str().unwrap_or(""),
                    c["image"].as_str().unwrap_or(""),
                );
            }
        }
        Err(e) => ctx.recorder.record(
            Kind::Pod,
            &started,
            "Warning",
            "Failed",
            &e.message,
            "kubelet",
        ),
    }
    Ok(())
}

/// The node and address of a Pod that has both.
fn placed<'c>(ctx: &'c Ctx, pod: &Value, node_name: &str) -> Option<(&'c NodeConfig, Ipv4Addr)> {
    let node = ctx.api.cluster.nodes.iter().find(|n| n.name == node_name)?;
    let ip = pod["status"]["podIP"].as_str()?.parse().ok()?;
    Some((node, ip))
}

/// Starts a Running Pod again at its address (the lab process restarted), so that it keeps
/// its name and IP as a Pod does when its node reboots.
fn restart(ctx: &Ctx, pod: &Value, node_name: &str) -> Result<(), ApiError> {
    let Some((node, ip)) = placed(ctx, pod, node_name) else {
        return Ok(());
    };
    if let Err(e) = ctx.runtime.start(pod, node, ip) {
        ctx.recorder
            .record(Kind::Pod, pod, "Warning", "Failed", &e.message, "kubelet");
    }
    Ok(())
}

/// A container's `imageID`: empty until its image was "pulled" (the container started).
fn image_id(image: &str, started: bool) -> String {
    if started {
        format!("{image}@lab")
    } else {
        String::new()
    }
}

/// Whether the image of the Pod's (first, the only running) container was changed since its
/// container was made (`kubectl set image pod/...`, `kubectl edit`).
fn image_changed(pod: &Value) -> bool {
    let status = &pod["status"]["containerStatuses"][0]["image"];
    status.is_string() && *status != pod["spec"]["containers"][0]["image"]
}

/// Replaces a container whose image changed, as the kubelet does: the old one is stopped,
/// one of the new image started at the Pod's address, and the restart counted. An image the
/// lab cannot run leaves the container waiting (`ErrImagePull`) and the Pod not Ready.
fn replace_container(ctx: &Ctx, pod: &Value, node_name: &str) -> Result<(), ApiError> {
    let Some((node, ip)) = placed(ctx, pod, node_name) else {
        return Ok(());
    };
    let container = &pod["spec"]["containers"][0];
    let (cname, image) = (
        container["name"].as_str().unwrap_or(""),
        container["image"].as_str().unwrap_or(""),
    );
    let state = &pod["status"]["containerStatuses"][0]["state"];
    // A container that ran (even one that crashed and waits to start again) is killed and
    // counted as restarted; one that never started is simply made anew.
    let ran = state["running"].is_object() || state["terminated"].is_object();
    if ran {
        ctx.recorder.record(
            Kind::Pod,
            pod,
            "Normal",
            "Killing",
            &format!("Container {cname} definition changed, will be restarted"),
            "kubelet",
        );
    }
    let result = ctx.runtime.replace(pod, node, ip);
    let ts = now();
    let uid = meta(pod, "uid");
    let replaced = ctx
        .api
        .store
        .modify(
            Kind::Pod,
            meta(pod, "namespace"),
            meta(pod, "name"),
            |p| -> Result<bool, ()> {
                if p["metadata"]["uid"] != uid || p["metadata"]["deletionTimestamp"].is_string() {
                    return Ok(false);
                }
                let c = &mut p["status"]["containerStatuses"][0];
                if c["state"]["terminated"].is_object() {
                    c["lastState"] = c["state"].clone();
                    c["restartCount"] = json!(c["restartCount"].as_u64().unwrap_or(0) + 1);
                } else if let Some(started) = c["state"]["running"]["startedAt"].as_str() {
                    // hello-app drains on SIGTERM and exits 0.
                    c["lastState"] = json!({"terminated": {
                        "exitCode": 0, "reason": "Completed", "startedAt": started,
                        "finishedAt": ts, "containerID": c["containerID"],
                    }});
                    c["restartCount"] = json!(c["restartCount"].as_u64().unwrap_or(0) + 1);
                }
                c["image"] = json!(image);
                c["imageID"] = json!(image_id(image, result.is_ok()));
                c["state"] = match &result {
                    Ok(()) => json!({"running": {"startedAt": ts}}),
                    Err(e) => json!({"waiting": {"reason": e.reason, "message": e.message}}),
                };
                c["ready"] = json!(result.is_ok());
                c["started"] = json!(result.is_ok());
                if result.is_ok() {
                    p["status"]["phase"] = json!("Running");
                }
                set_ready(p, result.is_ok(), &ts);
                Ok(true)
            },
        )
        .map_err(|_| ApiError::internal("pod status update failed"))?;
    let Some(replaced) = replaced else {
        return Ok(());
    };
    match &result {
        Ok(()) => started_events(ctx, &replaced, cname, image),
        Err(e) => ctx.recorder.record(
            Kind::Pod,
            &replaced,
            "Warning",
            "Failed",
            &e.message,
            "kubelet",
        ),
    }
    Ok(())
}

/// The kubelet's events for a container it started.
fn started_events(ctx: &Ctx, pod: &Value, cname: &str, image: &str) {
    for (reason, message) in [
        (
            "Pulled",
            format!("Container image \"{image}\" already present on machine"),
        ),
        ("Created", format!("Created container: {cname}")),
        ("Started", format!("Started container {cname}")),
    ] {
        ctx.recorder
            .record(Kind::Pod, pod, "Normal", reason, &message, "kubelet");
    }
}

/// Ends a deleted Pod: once no EndpointSlice lists it as ready (bounded wait) and the
/// runtime's drain delay has passed, it stops serving and leaves the API. Off the controller
/// thread, so that the slice update it waits for can happen.
fn terminate(ctx: &Ctx, pod: &Value) {
    let uid = meta(pod, "uid").to_string();
    tracing::debug!(pod = meta(pod, "name"), "terminating");
    let delay = ctx.runtime.drain_delay();
    if delay.is_zero() {
        ctx.runtime.stop(pod);
        let _ = ctx.api.store.delete(
            Kind::Pod,
            meta(pod, "namespace"),
            meta(pod, "name"),
            Some(&uid),
        );
        return;
    }
    if !ctx
        .stopping
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(uid.clone())
    {
        return;
    }
    let (api, runtime, stopping, pod) = (
        ctx.api.clone(),
        ctx.runtime.clone(),
        ctx.stopping.clone(),
        pod.clone(),
    );
    let grace = pod["metadata"]["deletionGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    std::thread::spawn(move || {
        let ns = meta(&pod, "namespace");
        let limit = std::time::Instant::now() + std::time::Duration::from_secs(grace.min(2));
        let listed_ready = || {
            api.store
                .list(Kind::EndpointSlice, Some(ns))
                .0
                .iter()
                .any(|s| {
                    s["endpoints"].as_array().is_some_and(|eps| {
                        eps.iter().any(|e| {
                            e["targetRef"]["uid"] == uid.as_str()
                                && e["conditions"]["ready"] == true
                        })
                    })
                })
        };
        while listed_ready() && std::time::Instant::now() < limit {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(delay);
        runtime.stop(&pod);
        let _ = api
            .store
            .delete(Kind::Pod, ns, meta(&pod, "name"), Some(&uid));
        stopping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid);
    });
}
