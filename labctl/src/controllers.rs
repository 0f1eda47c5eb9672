//! The lab's controllers, in one thread: Deployments, ReplicaSets, the scheduler and node
//! agent ("kubelet"), EndpointSlices and Endpoints, LoadBalancer addresses, garbage collection
//! and namespace deletion.
//!
//! Level-triggered like Kubernetes' controllers: an event only says which object to look at;
//! each reconcile reads the current state and writes what differs. A task queued twice runs
//! once, so a burst of 1,000 Pod events recomputes a Service's slices a few times, not 1,000.

mod deployment;
mod endpoints;
mod events;
mod gc;
mod kubelet;
mod pod_index;
mod queue;
mod replicaset;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use labapi::Kind;
use labapi::selector::LabelSelector;
use serde_json::Value;

pub use kubelet::{ApiOnlyRuntime, ContainerExit, ExitSink, PodRuntime, RuntimeError};

use crate::apiserver::Api;
use crate::store::{Event, EventType};
use events::Recorder;
use queue::{Task, WorkQueue};

/// Shared by the reconcilers.
struct Ctx {
    api: Arc<Api>,
    runtime: Arc<dyn PodRuntime>,
    recorder: Recorder,
    /// Pods whose termination has started (uids), so that it starts once.
    stopping: Arc<std::sync::Mutex<HashSet<String>>>,
    /// What the EndpointSlice controller made at its last reconcile of each Service.
    endpoint_cache: std::sync::Mutex<endpoints::EndpointCache>,
}

/// Whether a Pod's Ready condition is true.
fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Whether a Pod's endpoint is ready: the Pod is Ready and not terminating.
fn endpoint_ready(pod: &Value) -> bool {
    is_ready(pod) && !pod["metadata"]["deletionTimestamp"].is_string()
}

/// Whether a Pod event takes a ready endpoint away: readiness lost, termination begun, or
/// the Pod gone.
fn loses_endpoint(event: &Event) -> bool {
    let before = match event.event_type {
        EventType::Deleted => Some(&event.object),
        _ => event.old.as_ref(),
    };
    let now = event.event_type != EventType::Deleted && endpoint_ready(&event.object);
    before.is_some_and(|b| endpoint_ready(b)) && !now
}

fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or("")
}

fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str())
}

fn owner_named<'a>(obj: &'a Value, kind: &str) -> Option<&'a str> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["kind"] == kind)
        .and_then(|r| r["name"].as_str())
}

/// Maps events to reconciles. Keeps every Service's selector, indexed by one of its
/// `key=value` terms, so that a Pod event looks only at Services that could select it.
#[derive(Default)]
struct Router {
    /// (namespace, label key, label value) -> Services whose selector requires that label.
    by_label: HashMap<(String, String, String), BTreeMap<String, LabelSelector>>,
    /// (namespace, name) -> the index entry the Service is filed under.
    filed: HashMap<(String, String), (String, String, String)>,
    /// Namespaces being deleted: the last Pod leaving one lets the namespace go.
    terminating: HashSet<String>,
    /// Pods by node, IP and owner.
    pods: pod_index::PodIndex,
}

impl Router {
    fn services_selecting(&self, ns: &str, pods: [Option<&Value>; 2]) -> Vec<String> {
        let mut names = Vec::new();
        for pod in pods.iter().flatten() {
            let Some(labels) = pod["metadata"]["labels"].as_object() else {
                continue;
            };
            for (k, v) in labels {
                let key = (
                    ns.to_string(),
                    k.clone(),
                    v.as_str().unwrap_or("").to_string(),
                );
                for (name, sel) in self.by_label.get(&key).into_iter().flatten() {
                    if !names.contains(name) && sel.matches(labels) {
                        names.push(name.clone());
                    }
                }
            }
        }
        names
    }

    fn tasks_for(&mut self, event: &Event, out: &mut Vec<Task>) {
        if event.kind == Kind::Service {
            let (ns, name) = (
                meta(&event.object, "namespace").to_string(),
                meta(&event.object, "name").to_string(),
            );
            if let Some(old) = self.filed.remove(&(ns.clone(), name.clone()))
                && let Some(entry) = self.by_label.get_mut(&old)
            {
                entry.remove(&name);
            }
            let selector = endpoints::selector_of(&event.object)
                .filter(|_| event.event_type != EventType::Deleted);
            // A Service's selector is equality terms only, so any one of them is a filing key.
            let first_term = event.object["spec"]["selector"]
                .as_object()
                .and_then(|m| m.iter().next());
            if let (Some(sel), Some((k, v))) = (selector, first_term) {
                let key = (ns.clone(), k.clone(), v.as_str().unwrap_or("").to_string());
                self.by_label
                    .entry(key.clone())
                    .or_default()
                    .insert(name.clone(), sel);
                self.filed.insert((ns, name), key);
            }
        }
        if event.kind == Kind::Pod {
            self.pods.apply(event);
        }
        if event.kind == Kind::Namespace {
            let name = meta(&event.object, "name").to_string();
            if event.event_type != EventType::Deleted
                && event.object["metadata"]["deletionTimestamp"].is_string()
            {
                self.terminating.insert(name);
            } else {
                self.terminating.remove(&name);
            }
        }
        tasks_for(self, event, out);
    }
}

/// Which reconciles an event calls for.
fn tasks_for(router: &Router, event: &Event, out: &mut Vec<Task>) {
    let obj = &event.object;
    let (ns, name) = (
        meta(obj, "namespace").to_string(),
        meta(obj, "name").to_string(),
    );
    if event.event_type == EventType::Deleted
        && matches!(
            event.kind,
            Kind::Deployment | Kind::ReplicaSet | Kind::Service | Kind::Pod
        )
    {
        out.push(Task::Collect(meta(obj, "uid").to_string()));
    }
    match event.kind {
        Kind::Deployment => out.push(Task::Deployment(ns, name)),
        Kind::ReplicaSet => {
            if let Some(d) = owner_named(obj, "Deployment") {
                out.push(Task::Deployment(ns.clone(), d.to_string()));
            }
            out.push(Task::ReplicaSet(ns, name));
        }
        Kind::Pod => {
            if let Some(rs) = owner_named(obj, "ReplicaSet") {
                out.push(Task::ReplicaSet(ns.clone(), rs.to_string()));
            }
            if event.event_type != EventType::Deleted {
                out.push(Task::Pod(ns.clone(), name));
            } else if router.terminating.contains(&ns) {
                out.push(Task::Namespace(ns.clone()));
            }
            // A lost endpoint leaves the slices before anything else is done (a replacement
            // Pod's start included), so that clients stop being sent to it at once.
            let lost = loses_endpoint(event);
            for svc in router.services_selecting(&ns, [Some(obj.as_ref()), event.old.as_deref()]) {
                out.push(if lost {
                    Task::ServiceNow(ns.clone(), svc)
                } else {
                    Task::Service(ns.clone(), svc)
                });
            }
        }
        Kind::Service => {
            out.push(Task::Service(ns.clone(), name.clone()));
            out.push(Task::Endpoints(ns, name));
        }
        Kind::EndpointSlice => {
            if let Some((ns, svc)) = endpoints::service_of_slice(obj) {
                out.push(Task::Endpoints(ns, svc));
            }
        }
        Kind::Namespace if obj["metadata"]["deletionTimestamp"].is_string() => {
            out.push(Task::Namespace(name))
        }
        _ => {}
    }
}

/// Starts the controllers on their own thread; they run until the process ends.
pub fn start(api: Arc<Api>, runtime: Arc<dyn PodRuntime>) -> std::thread::JoinHandle<()> {
    let (snapshot, mut events) = api.store.subscribe_now();
    let mut queue = WorkQueue::default();
    let mut router = Router::default();
    // Everything that exists may need work after a restart (Pods to start, slices to fix).
    for kind in [
        Kind::Namespace,
        Kind::Deployment,
        Kind::ReplicaSet,
        Kind::Pod,
        Kind::Service,
    ] {
        for obj in snapshot.get(&kind).into_iter().flatten() {
            let event = Event {
                rv: 0,
                kind,
                event_type: EventType::Added,
                object: obj.clone(),
                old: None,
            };
            let mut tasks = Vec::new();
            router.tasks_for(&event, &mut tasks);
            tasks.into_iter().for_each(|t| queue.push(t));
        }
    }
    let reporter = api.clone();
    runtime.report_exits(Arc::new(move |ns, name, uid, exit| {
        kubelet::record_exit(&reporter, ns, name, uid, exit)
    }));
    let ctx = Ctx {
        recorder: Recorder::new(api.clone()),
        api,
        runtime,
        stopping: Arc::default(),
        endpoint_cache: Default::default(),
    };
    std::thread::Builder::new()
        .name("controllers".into())
        .spawn(move || {
            let mut tasks = Vec::new();
            loop {
                while let Ok(e) = events.try_recv() {
                    router.tasks_for(&e, &mut tasks);
                }
                tasks.drain(..).for_each(|t| queue.push(t));
                match queue.pop() {
                    Some(task) => run(&ctx, &router.pods, task),
                    None => {
                        ctx.recorder.flush();
                        match events.try_recv() {
                            Ok(e) => router.tasks_for(&e, &mut tasks),
                            Err(_) => match events.blocking_recv() {
                                Some(e) => router.tasks_for(&e, &mut tasks),
                                None => return,
                            },
                        }
                    }
                }
            }
        })
        .expect("spawning the controller thread")
}

fn run(ctx: &Ctx, pods: &pod_index::PodIndex, task: Task) {
    let result = match &task {
        Task::Deployment(ns, name) => deployment::reconcile(ctx, ns, name),
        Task::ReplicaSet(ns, name) => replicaset::reconcile(ctx, pods, ns, name),
        Task::Pod(ns, name) => kubelet::reconcile(ctx, pods, ns, name),
        Task::Service(ns, name) | Task::ServiceNow(ns, name) => endpoints::reconcile(ctx, ns, name),
        Task::Endpoints(ns, name) => endpoints::reconcile_mirror(ctx, ns, name),
        Task::Collect(uid) => gc::collect(ctx, uid),
        Task::Namespace(name) => gc::finish_namespace(ctx, name),
    };
    if let Err(e) = result {
        tracing::warn!(?task, "reconcile failed: {}", e.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ready: bool, terminating: bool) -> Arc<Value> {
        let mut p = json!({
            "metadata": {"name": "p", "namespace": "default"},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        });
        if terminating {
            p["metadata"]["deletionTimestamp"] = json!("2026-11-25T00:00:00Z");
        }
        Arc::new(p)
    }

    fn event(event_type: EventType, old: Option<Arc<Value>>, object: Arc<Value>) -> Event {
        Event {
            rv: 1,
            kind: Kind::Pod,
            event_type,
            object,
            old,
        }
    }

    #[test]
    fn only_a_serving_pod_that_stops_serving_loses_an_endpoint() {
        use EventType::{Added, Deleted, Modified};
        let serving = pod(true, false);
        assert!(loses_endpoint(&event(
            Modified,
            Some(serving.clone()),
            pod(true, true)
        )));
        assert!(loses_endpoint(&event(
            Modified,
            Some(serving.clone()),
            pod(false, false)
        )));
        assert!(loses_endpoint(&event(Deleted, None, serving.clone())));
        assert!(!loses_endpoint(&event(Added, None, serving.clone())));
        assert!(!loses_endpoint(&event(
            Modified,
            Some(pod(false, false)),
            serving.clone()
        )));
        assert!(!loses_endpoint(&event(
            Modified,
            Some(serving.clone()),
            serving
        )));
        assert!(!loses_endpoint(&event(Deleted, None, pod(true, true))));
    }

    #[test]
    fn a_slice_this_controller_manages_brings_its_services_endpoints_up_to_date() {
        let slice = |managed_by: &str| Event {
            rv: 1,
            kind: Kind::EndpointSlice,
            event_type: EventType::Modified,
            object: Arc::new(json!({
                "metadata": {"name": "web-x1", "namespace": "default", "labels": {
                    "kubernetes.io/service-name": "web",
                    "endpointslice.kubernetes.io/managed-by": managed_by,
                }},
            })),
            old: None,
        };
        let mut out = Vec::new();
        tasks_for(
            &Router::default(),
            &slice("endpointslice-controller.k8s.io"),
            &mut out,
        );
        assert_eq!(out, [Task::Endpoints("default".into(), "web".into())]);
        out.clear();
        tasks_for(&Router::default(), &slice("someone-else"), &mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
