//! Server-side printing: the `meta.k8s.io/v1` Table answers that `kubectl get` prints.
//!
//! kubectl 1.32 has no column printers of its own: it asks for `as=Table` and prints the
//! server's columns and cells verbatim. So every cell here follows kube-apiserver's
//! `pkg/printers/internalversion/printers.go` (and apimachinery's `duration.HumanDuration`),
//! including its placeholders (`<none>`, `<pending>`, `<unset>`, `<unknown>`) and which cells
//! are integers rather than strings. The real server always prints the wide cells (it
//! generates Tables with `Wide: true`); kubectl hides `priority: 1` columns unless `-o wide`.
//!
//! Nothing here reads the clock: the AGE-like cells are computed against a `now` the caller
//! passes in, so tests and the server agree on what "5m" means.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};

use crate::resource::Kind;
use crate::status::ApiError;

/// What each row carries besides its cells: the `includeObject` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// No `object` in the rows.
    None,
    /// A `PartialObjectMetadata` with the object's full metadata: the server's default,
    /// and what kubectl needs for `--show-labels` and the NAMESPACE column of `-A`.
    #[default]
    Metadata,
    /// The whole object (`--sort-by` asks for this).
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query value; absent or empty means `Metadata`.
    pub fn from_query(value: Option<&str>) -> Result<Self, ApiError> {
        match value.unwrap_or("") {
            "" | "Metadata" => Ok(IncludeObject::Metadata),
            "None" => Ok(IncludeObject::None),
            "Object" => Ok(IncludeObject::Object),
            other => Err(ApiError::bad_request(format!(
                "unrecognized includeObject value: {other:?}"
            ))),
        }
    }
}

/// apimachinery's `duration.HumanDuration`: about two significant figures, so that ages stay
/// short (`5m30s` becomes `5m` only after ten minutes, hours lose their minutes after eight).
pub fn human_duration(d: SignedDuration) -> String {
    // Go truncates toward zero here, and tolerates up to a second of clock skew as "0s".
    let seconds = d.as_secs();
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// How long before `now` a `metav1.Time` (or `MicroTime`) was, as `HumanDuration`;
/// `<unknown>` when the timestamp is absent, null or unreadable (Go's zero time).
pub fn since(timestamp: Option<&Value>, now: Timestamp) -> String {
    match parse_time(timestamp) {
        Some(t) => human_duration(now.duration_since(t)),
        None => "<unknown>".to_string(),
    }
}

fn parse_time(v: Option<&Value>) -> Option<Timestamp> {
    v?.as_str()?.parse().ok()
}

// The real server's descriptions are the API types' Swagger docs; kubectl ignores them, but
// `kubectl get --raw` shows them, so the common ones are the real text.
const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const CONTAINERS_DOC: &str = "Names of each container in the template.";
const IMAGES_DOC: &str = "Images referenced by each container in the template.";
const NODE_ADDRESSES_DOC: &str = "List of addresses reachable to the node. Queried from cloud provider, if available. More info: https://kubernetes.io/docs/reference/node/node-status/#addresses Note: This field is declared as mergeable, but the merge key is not sufficiently unique, which can cause data corruption when it is merged. Callers should instead use a full-replacement patch. See https://pr.k8s.io/79391 for an example. Consumers should assume that addresses can change during the lifetime of a Node. However, there are some exceptions where this may not be possible, such as Pods that inherit a Node's address in its own status or consumers of the downward API (status.hostIP).";

fn col(name: &str, ty: &str, priority: i32, description: &str) -> Value {
    json!({
        "name": name,
        "type": ty,
        "format": if name == "Name" { "name" } else { "" },
        "description": description,
        "priority": priority,
    })
}

/// The Table's `columnDefinitions` for a kind, in the real server's order, names and types.
pub fn columns(kind: Kind) -> Vec<Value> {
    let name = col("Name", "string", 0, NAME_DOC);
    let age = col("Age", "string", 0, AGE_DOC);
    match kind {
        Kind::Namespace => vec![
            name,
            col("Status", "string", 0, "The status of the namespace"),
            age,
        ],
        Kind::Node => vec![
            name,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            age,
            col(
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ),
            col("Internal-IP", "string", 1, NODE_ADDRESSES_DOC),
            col("External-IP", "string", 1, NODE_ADDRESSES_DOC),
            col(
                "OS-Image",
                "string",
                1,
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            col(
                "Kernel-Version",
                "string",
                1,
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            col(
                "Container-Runtime",
                "string",
                1,
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ],
        Kind::Pod => vec![
            name,
            col(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            age,
            col(
                "IP",
                "string",
                1,
                "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            col(
                "Node",
                "string",
                1,
                "NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for scheduling by the scheduler defined in schedulerName. Once this field is set, the kubelet for this node becomes responsible for the lifecycle of this pod. This field should not be used to express a desire for the pod to be scheduled on a specific node. https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#nodename",
            ),
            col(
                "Nominated Node",
                "string",
                1,
                "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods. This field does not guarantee that the pod will be scheduled on this node. Scheduler may decide to place the pod elsewhere if other nodes become available sooner. Scheduler may also decide to give the resources on this node to a higher priority pod that is created after preemption. As a result, this field may be different than PodSpec.nodeName when the pod is scheduled.",
            ),
            col(
                "Readiness Gates",
                "string",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all its containers are ready AND all conditions specified in the readiness gates have status equal to \"True\" More info: https://git.k8s.io/enhancements/keps/sig-network/580-pod-readiness-gates",
            ),
        ],
        Kind::Service => vec![
            name,
            col(
                "Type",
                "string",
                0,
                "type determines how the Service is exposed. Defaults to ClusterIP. Valid options are ExternalName, ClusterIP, NodePort, and LoadBalancer. \"ClusterIP\" allocates a cluster-internal IP address for load-balancing to endpoints. Endpoints are determined by the selector or if that is not specified, by manual construction of an Endpoints object or EndpointSlice objects. If clusterIP is \"None\", no virtual IP is allocated and the endpoints are published as a set of endpoints rather than a virtual IP. \"NodePort\" builds on ClusterIP and allocates a port on every node which routes to the same endpoints as the clusterIP. \"LoadBalancer\" builds on NodePort and creates an external load-balancer (if supported in the current cloud) which routes to the same endpoints as the clusterIP. \"ExternalName\" aliases this service to the specified externalName. Several other fields do not apply to ExternalName services. More info: https://kubernetes.io/docs/concepts/services-networking/service/#publishing-services-service-types",
            ),
            col(
                "Cluster-IP",
                "string",
                0,
                "clusterIP is the IP address of the service and is usually assigned randomly. If an address is specified manually, is in-range (as per system configuration), and is not in use, it will be allocated to the service; otherwise creation of the service will fail. This field may not be changed through updates unless the type field is also being changed to ExternalName (which requires this field to be blank) or the type field is being changed from ExternalName (in which case this field may optionally be specified, as describe above).  Valid values are \"None\", empty string (\"\"), or a valid IP address. Setting this to \"None\" makes a \"headless service\" (no virtual IP), which is useful when direct endpoint connections are preferred and proxying is not required.  Only applies to types ClusterIP, NodePort, and LoadBalancer. If this field is specified when creating a Service of type ExternalName, creation will fail. This field will be wiped when updating a Service to type ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies",
            ),
            col(
                "External-IP",
                "string",
                0,
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.  These IPs are not managed by Kubernetes.  The user is responsible for ensuring that traffic arrives at a node with this IP.  A common example is external load-balancers that are not part of the Kubernetes system.",
            ),
            col(
                "Port(s)",
                "string",
                0,
                "The list of ports that are exposed by this service. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies",
            ),
            age,
            col(
                "Selector",
                "string",
                1,
                "Route service traffic to pods with label keys and values matching this selector. If empty or not present, the service is assumed to have an external process managing its endpoints, which Kubernetes will not modify. Only applies to types ClusterIP, NodePort, and LoadBalancer. Ignored if type is ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/",
            ),
        ],
        Kind::Endpoints => vec![
            name,
            col(
                "Endpoints",
                "string",
                0,
                "The set of all endpoints is the union of all subsets. Addresses are placed into subsets according to the IPs they share. A single address with multiple ports, some of which are ready and some of which are not (because they come from different containers) will result in the address being displayed in different subsets for the different ports. No address will appear in both Addresses and NotReadyAddresses in the same subset. Sets of addresses and ports that comprise a service.",
            ),
            age,
        ],
        // The real server leads with Last Seen and marks the (wide-only) Name column as
        // the name; `Type`/`Reason`/... are the Event's own fields.
        Kind::Event => vec![
            col(
                "Last Seen",
                "string",
                0,
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            col(
                "Type",
                "string",
                0,
                "Type of this event (Normal, Warning), new types could be added in the future",
            ),
            col(
                "Reason",
                "string",
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            col(
                "Object",
                "string",
                0,
                "The object that this event is about.",
            ),
            col(
                "Subobject",
                "string",
                1,
                "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]. For example, if the object reference is to a container within a pod, this would take on a value like: \"spec.containers{name}\" (where \"name\" refers to the name of the container that triggered the event) or if no container name is specified \"spec.containers[2]\" (container with index 2 in this pod). This syntax is chosen only to have some well-defined way of referencing a part of an object.",
            ),
            col(
                "Source",
                "string",
                1,
                "The component reporting this event. Should be a short machine understandable string.",
            ),
            col(
                "Message",
                "string",
                0,
                "A human-readable description of the status of this operation.",
            ),
            col(
                "First Seen",
                "string",
                1,
                "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
            ),
            col(
                "Count",
                "string",
                1,
                "The number of times this event has occurred.",
            ),
            col("Name", "string", 1, NAME_DOC),
        ],
        Kind::EndpointSlice => vec![
            name,
            col(
                "AddressType",
                "string",
                0,
                "addressType specifies the type of address carried by this EndpointSlice. All addresses in this slice must be the same type. This field is immutable after creation. The following address types are currently supported: * IPv4: Represents an IPv4 Address. * IPv6: Represents an IPv6 Address. * FQDN: Represents a Fully Qualified Domain Name.",
            ),
            col(
                "Ports",
                "string",
                0,
                "ports specifies the list of network ports exposed by each endpoint in this slice. Each port must have a unique name. When ports is empty, it indicates that there are no defined ports. When a port is defined with a nil port value, it indicates \"all ports\". Each slice may include a maximum of 100 ports.",
            ),
            col(
                "Endpoints",
                "string",
                0,
                "endpoints is a list of unique endpoints in this slice. Each slice may include a maximum of 1000 endpoints.",
            ),
            age,
        ],
        Kind::Deployment => vec![
            name,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col(
                "Up-to-date",
                "string",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                "string",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            age,
            col("Containers", "string", 1, CONTAINERS_DOC),
            col("Images", "string", 1, IMAGES_DOC),
            col(
                "Selector",
                "string",
                1,
                "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
            ),
        ],
        Kind::ReplicaSet => vec![
            name,
            col(
                "Desired",
                "integer",
                0,
                "Replicas is the number of desired replicas. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller/#what-is-a-replicationcontroller",
            ),
            col(
                "Current",
                "integer",
                0,
                "Replicas is the most recently observed number of replicas. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller/#what-is-a-replicationcontroller",
            ),
            col(
                "Ready",
                "integer",
                0,
                "The number of ready replicas for this replica set.",
            ),
            age,
            col("Containers", "string", 1, CONTAINERS_DOC),
            col("Images", "string", 1, IMAGES_DOC),
            col(
                "Selector",
                "string",
                1,
                "Selector is a label query over pods that should match the replica count. If the selector is empty, it is defaulted to the labels present on the pod template. Label keys and values that must match in order to be controlled by this replica set. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
            ),
        ],
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn int(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn list<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s.to_string()
    }
}

fn age(obj: &Value, now: Timestamp) -> Value {
    Value::from(since(obj.pointer("/metadata/creationTimestamp"), now))
}

/// The cells of one object's row (always the wide set, as the real server sends them).
pub fn cells(kind: Kind, obj: &Value, now: Timestamp) -> Vec<Value> {
    match kind {
        Kind::Namespace => vec![
            text(obj, "/metadata/name").into(),
            text(obj, "/status/phase").into(),
            age(obj, now),
        ],
        Kind::Node => node_cells(obj, now),
        Kind::Pod => pod_cells(obj, now),
        Kind::Service => service_cells(obj, now),
        Kind::Endpoints => vec![
            text(obj, "/metadata/name").into(),
            format_endpoints(obj).into(),
            age(obj, now),
        ],
        Kind::Event => event_cells(obj, now),
        Kind::EndpointSlice => endpoint_slice_cells(obj, now),
        Kind::Deployment => deployment_cells(obj, now),
        Kind::ReplicaSet => replica_set_cells(obj, now),
    }
}

/// One Table row for `obj`, carrying its metadata as `PartialObjectMetadata` (the default).
pub fn row(kind: Kind, obj: &Value, now: Timestamp) -> Value {
    row_with(kind, obj, IncludeObject::Metadata, now)
}

/// One Table row for `obj`, carrying what `include` asks for.
pub fn row_with(kind: Kind, obj: &Value, include: IncludeObject, now: Timestamp) -> Value {
    let mut r = Map::new();
    r.insert("cells".into(), Value::Array(cells(kind, obj, now)));
    if kind == Kind::Pod {
        // The real printer marks finished pods so that clients can tell them apart.
        let (reason, message) = match text(obj, "/status/phase") {
            "Succeeded" => ("Succeeded", "The pod has completed successfully."),
            "Failed" => ("Failed", "The pod failed."),
            _ => ("", ""),
        };
        if !reason.is_empty() {
            r.insert(
                "conditions".into(),
                json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]),
            );
        }
    }
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            let metadata = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
            r.insert(
                "object".into(),
                json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": metadata,
                }),
            );
        }
        IncludeObject::Object => {
            // Stored objects may lack their type fields; the real server always sets them.
            let mut full = obj.clone();
            if let Some(m) = full.as_object_mut() {
                let info = kind.info();
                m.entry("apiVersion")
                    .or_insert_with(|| info.api_version().into());
                m.entry("kind").or_insert_with(|| info.kind_name.into());
            }
            r.insert("object".into(), full);
        }
    }
    Value::Object(r)
}

/// A whole Table: the kind's columns and a row per object, in the order given (the lab's
/// store lists in namespace/name order, as etcd does).
///
/// `resource_version` is the list's: `kubectl get -w` starts its watch from it. An empty
/// one is left out, as the real server's `omitempty` does.
pub fn table<'a, I>(
    kind: Kind,
    objs: I,
    resource_version: &str,
    include: IncludeObject,
    now: Timestamp,
) -> Value
where
    I: IntoIterator<Item = &'a Value>,
{
    let rows: Vec<Value> = objs
        .into_iter()
        .map(|o| row_with(kind, o, include, now))
        .collect();
    let mut metadata = Map::new();
    if !resource_version.is_empty() {
        metadata.insert("resourceVersion".into(), resource_version.into());
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns(kind),
        "rows": rows,
    })
}

/// The one-row Table for a single object: the answer to a GET of one item and the
/// `object` of each event of a Table watch. Like the real server, its resourceVersion is
/// the object's own.
pub fn object_table(kind: Kind, obj: &Value, include: IncludeObject, now: Timestamp) -> Value {
    table(
        kind,
        [obj],
        text(obj, "/metadata/resourceVersion"),
        include,
        now,
    )
}

fn pod_cells(pod: &Value, now: Timestamp) -> Vec<Value> {
    let phase = text(pod, "/status/phase");
    let mut reason = phase.to_string();
    let status_reason = text(pod, "/status/reason");
    if !status_reason.is_empty() {
        reason = status_reason.to_string();
    }
    let conditions = list(pod, "/status/conditions");
    if conditions
        .iter()
        .any(|c| text(c, "/type") == "PodScheduled" && text(c, "/reason") == "SchedulingGated")
    {
        reason = "SchedulingGated".to_string();
    }

    // Sidecars (init containers that restart "Always") count as containers of the pod.
    let init_specs = list(pod, "/spec/initContainers");
    let is_sidecar = |name: &str| {
        init_specs
            .iter()
            .any(|c| text(c, "/name") == name && text(c, "/restartPolicy") == "Always")
    };
    let total = list(pod, "/spec/containers").len()
        + init_specs
            .iter()
            .filter(|c| text(c, "/restartPolicy") == "Always")
            .count();
    let mut ready = 0usize;
    let mut restarts = 0i64;
    let mut sidecar_restarts = 0i64;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_sidecar_restart: Option<Timestamp> = None;
    let finished = |c: &Value| parse_time(c.pointer("/lastState/terminated/finishedAt"));

    let init_statuses = list(pod, "/status/initContainerStatuses");
    let mut initializing = false;
    for (i, c) in init_statuses.iter().enumerate() {
        restarts += int(c, "/restartCount");
        let sidecar = is_sidecar(text(c, "/name"));
        if let Some(t) = finished(c) {
            last_restart = last_restart.max(Some(t));
            if sidecar {
                last_sidecar_restart = last_sidecar_restart.max(Some(t));
            }
        }
        if sidecar {
            sidecar_restarts += int(c, "/restartCount");
        }
        let terminated = c.pointer("/state/terminated").filter(|t| t.is_object());
        let waiting_reason = text(c, "/state/waiting/reason");
        if terminated.is_some() && int(c, "/state/terminated/exitCode") == 0 {
            continue;
        }
        if sidecar && c.get("started").and_then(Value::as_bool) == Some(true) {
            if c.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if terminated.is_some() {
            let r = text(c, "/state/terminated/reason");
            let signal = int(c, "/state/terminated/signal");
            reason = if !r.is_empty() {
                format!("Init:{r}")
            } else if signal != 0 {
                format!("Init:Signal:{signal}")
            } else {
                format!("Init:ExitCode:{}", int(c, "/state/terminated/exitCode"))
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }

    let initialized = conditions
        .iter()
        .any(|c| text(c, "/type") == "Initialized" && text(c, "/status") == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        for c in list(pod, "/status/containerStatuses").iter().rev() {
            restarts += int(c, "/restartCount");
            if let Some(t) = finished(c) {
                last_restart = last_restart.max(Some(t));
            }
            let waiting = text(c, "/state/waiting/reason");
            let terminated = c.pointer("/state/terminated").filter(|t| t.is_object());
            let running = c.pointer("/state/running").is_some_and(Value::is_object);
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = terminated {
                let r = text(t, "/reason");
                let signal = int(t, "/signal");
                reason = if !r.is_empty() {
                    r.to_string()
                } else if signal != 0 {
                    format!("Signal:{signal}")
                } else {
                    format!("ExitCode:{}", int(t, "/exitCode"))
                };
            } else if c.get("ready").and_then(Value::as_bool) == Some(true) && running {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = conditions
                .iter()
                .any(|c| text(c, "/type") == "Ready" && text(c, "/status") == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.to_string();
        }
    }

    let deleting = pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null());
    if deleting && status_reason == "NodeLost" {
        reason = "Unknown".to_string();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".to_string();
    }

    let restarts_cell = match last_restart {
        Some(t) if restarts != 0 => {
            format!("{restarts} ({} ago)", human_duration(now.duration_since(t)))
        }
        _ => restarts.to_string(),
    };

    // The internal type keeps podIP and podIPs in step; a stored v1 object may have either.
    let mut pod_ip = list(pod, "/status/podIPs")
        .first()
        .map(|p| text(p, "/ip"))
        .unwrap_or("");
    if pod_ip.is_empty() {
        pod_ip = text(pod, "/status/podIP");
    }
    let gates = list(pod, "/spec/readinessGates");
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let true_count = gates
            .iter()
            .filter(|g| {
                let want = text(g, "/conditionType");
                conditions
                    .iter()
                    .find(|c| text(c, "/type") == want)
                    .is_some_and(|c| text(c, "/status") == "True")
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };

    vec![
        text(pod, "/metadata/name").into(),
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts_cell.into(),
        age(pod, now),
        or_none(pod_ip).into(),
        or_none(text(pod, "/spec/nodeName")).into(),
        or_none(text(pod, "/status/nominatedNodeName")).into(),
        readiness_gates.into(),
    ]
}

fn strings<'a>(v: &'a Value, pointer: &str) -> Vec<&'a str> {
    list(v, pointer).iter().filter_map(Value::as_str).collect()
}

fn service_cells(svc: &Value, now: Timestamp) -> Vec<Value> {
    let svc_type = text(svc, "/spec/type");
    // The internal type keeps clusterIP and clusterIPs in step; a stored v1 object may
    // carry only clusterIP.
    let cluster_ip = strings(svc, "/spec/clusterIPs")
        .first()
        .copied()
        .unwrap_or_else(|| text(svc, "/spec/clusterIP"));
    let external_ips = strings(svc, "/spec/externalIPs");
    let external = match svc_type {
        "ClusterIP" | "NodePort" => or_none(&external_ips.join(",")),
        "LoadBalancer" => {
            // A set, as in the real printer: sorted and without duplicates.
            let ingress: BTreeSet<&str> = list(svc, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| {
                    let ip = text(i, "/ip");
                    if ip.is_empty() {
                        text(i, "/hostname")
                    } else {
                        ip
                    }
                })
                .filter(|s| !s.is_empty())
                .collect();
            let all: Vec<&str> = ingress.into_iter().chain(external_ips).collect();
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => text(svc, "/spec/externalName").to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports: Vec<String> = list(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let port = int(p, "/port");
            let proto = text(p, "/protocol");
            match int(p, "/nodePort") {
                n if n > 0 => format!("{port}:{n}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect();
    vec![
        text(svc, "/metadata/name").into(),
        svc_type.into(),
        or_none(cluster_ip).into(),
        external.into(),
        or_none(&ports.join(",")).into(),
        age(svc, now),
        format_labels(svc.pointer("/spec/selector")).into(),
    ]
}

/// `labels.FormatLabels`: `k=v` pairs sorted by key, or `<none>`.
fn format_labels(map: Option<&Value>) -> String {
    let pairs: Vec<String> = map
        .and_then(Value::as_object)
        .map(|m| {
            // serde_json's map iterates in key order unless `preserve_order` is on.
            let mut kv: Vec<(&String, &Value)> = m.iter().collect();
            kv.sort_by(|a, b| a.0.cmp(b.0));
            kv.into_iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    or_none(&pairs.join(","))
}

/// `metav1.LabelSelectorAsSelector(sel).String()`: requirements sorted by key, `k=v`,
/// `k in (a,b)`, `k notin (a,b)`, `k`, `!k`; empty for an empty or absent selector.
/// `None` when the selector cannot be converted.
fn label_selector_string(sel: Option<&Value>) -> Option<String> {
    let Some(sel) = sel.filter(|s| !s.is_null()) else {
        return Some(String::new());
    };
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in m {
            reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or(""))));
        }
    }
    for e in list(sel, "/matchExpressions") {
        let key = text(e, "/key");
        let mut values = strings(e, "/values");
        values.sort_unstable();
        let s = match text(e, "/operator") {
            op @ ("In" | "NotIn") => {
                if values.is_empty() {
                    return None;
                }
                let word = if op == "In" { "in" } else { "notin" };
                format!("{key} {word} ({})", values.join(","))
            }
            "Exists" if values.is_empty() => key.to_string(),
            "DoesNotExist" if values.is_empty() => format!("!{key}"),
            _ => return None,
        };
        reqs.push((key.to_string(), s));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Some(
        reqs.into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn container_cells(obj: &Value) -> (String, String) {
    let containers = list(obj, "/spec/template/spec/containers");
    let names: Vec<&str> = containers.iter().map(|c| text(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, "/image")).collect();
    (names.join(","), images.join(","))
}

// A v1 object without spec.replicas was defaulted to 1 when stored.
fn desired_replicas(obj: &Value) -> i64 {
    obj.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn deployment_cells(d: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = container_cells(d);
    let selector = label_selector_string(d.pointer("/spec/selector"))
        .unwrap_or_else(|| "<invalid>".to_string());
    vec![
        text(d, "/metadata/name").into(),
        format!(
            "{}/{}",
            int(d, "/status/readyReplicas"),
            desired_replicas(d)
        )
        .into(),
        int(d, "/status/updatedReplicas").into(),
        int(d, "/status/availableReplicas").into(),
        age(d, now),
        names.into(),
        images.into(),
        selector.into(),
    ]
}

fn replica_set_cells(rs: &Value, now: Timestamp) -> Vec<Value> {
    let (names, images) = container_cells(rs);
    // metav1.FormatLabelSelector, unlike the Deployment printer, says <none> and <error>.
    let selector = match label_selector_string(rs.pointer("/spec/selector")) {
        None => "<error>".to_string(),
        Some(s) => or_none(&s),
    };
    vec![
        text(rs, "/metadata/name").into(),
        desired_replicas(rs).into(),
        int(rs, "/status/replicas").into(),
        int(rs, "/status/readyReplicas").into(),
        age(rs, now),
        names.into(),
        images.into(),
        selector.into(),
    ]
}

fn node_cells(node: &Value, now: Timestamp) -> Vec<Value> {
    // The last Ready condition wins, as in the real printer's map.
    let mut status: Vec<&str> = match list(node, "/status/conditions")
        .iter()
        .rfind(|c| text(c, "/type") == "Ready")
    {
        Some(c) if text(c, "/status") == "True" => vec!["Ready"],
        Some(_) => vec!["NotReady"],
        None => vec!["Unknown"],
    };
    if node
        .pointer("/spec/unschedulable")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        status.push("SchedulingDisabled");
    }
    let mut roles = BTreeSet::new();
    if let Some(labels) = node.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            let v = v.as_str().unwrap_or("");
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role.to_string());
                }
            } else if k == "kubernetes.io/role" && !v.is_empty() {
                roles.insert(v.to_string());
            }
        }
    }
    let address = |ty: &str| {
        list(node, "/status/addresses")
            .iter()
            .find(|a| text(a, "/type") == ty)
            .map(|a| text(a, "/address").to_string())
            .unwrap_or_else(|| "<none>".to_string())
    };
    let info = |field: &str| {
        let v = text(node, &format!("/status/nodeInfo/{field}"));
        if v.is_empty() {
            "<unknown>".to_string()
        } else {
            v.to_string()
        }
    };
    vec![
        text(node, "/metadata/name").into(),
        status.join(",").into(),
        or_none(&roles.into_iter().collect::<Vec<_>>().join(",")).into(),
        age(node, now),
        text(node, "/status/nodeInfo/kubeletVersion").into(),
        address("InternalIP").into(),
        address("ExternalIP").into(),
        info("osImage").into(),
        info("kernelVersion").into(),
        info("containerRuntimeVersion").into(),
    ]
}

/// The first three entries, then ` + N more...`; `<unset>` for none.
fn list_with_more(items: Vec<String>) -> String {
    const MAX: usize = 3;
    if items.len() > MAX {
        format!("{} + {} more...", items[..MAX].join(","), items.len() - MAX)
    } else if items.is_empty() {
        "<unset>".to_string()
    } else {
        items.join(",")
    }
}

fn endpoint_slice_cells(slice: &Value, now: Timestamp) -> Vec<Value> {
    let ports: Vec<String> = list(slice, "/ports")
        .iter()
        .map(|p| match p.get("port").and_then(Value::as_i64) {
            Some(n) => n.to_string(),
            None => match p.get("name").and_then(Value::as_str) {
                Some(name) => name.to_string(),
                None => "*".to_string(),
            },
        })
        .collect();
    let addresses: Vec<String> = list(slice, "/endpoints")
        .iter()
        .flat_map(|e| strings(e, "/addresses"))
        .map(str::to_string)
        .collect();
    vec![
        text(slice, "/metadata/name").into(),
        text(slice, "/addressType").into(),
        list_with_more(ports).into(),
        list_with_more(addresses).into(),
        age(slice, now),
    ]
}

/// The printer's `formatEndpoints` with every port: `ip:port` for each (port, address)
/// pair, bare IPs for subsets without ports, the first three then ` + N more...`.
fn format_endpoints(ep: &Value) -> String {
    const MAX: usize = 3;
    let subsets = list(ep, "/subsets");
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    let mut shown: Vec<String> = Vec::new();
    let mut count = 0usize;
    for ss in subsets {
        let addrs = list(ss, "/addresses");
        let ips = addrs.iter().map(|a| text(a, "/ip"));
        let ports = list(ss, "/ports");
        if ports.is_empty() {
            count += addrs.len();
            shown.extend(ips.take(MAX - shown.len()).map(str::to_string));
            continue;
        }
        for p in ports {
            count += addrs.len();
            let port = int(p, "/port");
            let room = MAX - shown.len();
            shown.extend(ips.clone().take(room).map(|ip| {
                if ip.contains(':') {
                    format!("[{ip}]:{port}")
                } else {
                    format!("{ip}:{port}")
                }
            }));
        }
    }
    let joined = shown.join(",");
    if count > MAX {
        format!("{joined} + {} more...", count - MAX)
    } else {
        joined
    }
}

fn event_cells(ev: &Value, now: Timestamp) -> Vec<Value> {
    let first_seen = if parse_time(ev.get("firstTimestamp")).is_some() {
        since(ev.get("firstTimestamp"), now)
    } else {
        since(ev.get("eventTime"), now)
    };
    let mut last_seen = if parse_time(ev.get("lastTimestamp")).is_some() {
        since(ev.get("lastTimestamp"), now)
    } else {
        first_seen.clone()
    };
    let mut count = int(ev, "/count");
    if ev.get("series").is_some_and(Value::is_object) {
        last_seen = since(ev.pointer("/series/lastObservedTime"), now);
        count = int(ev, "/series/count");
    } else if count == 0 {
        // Events from the events.k8s.io API are singletons without a count.
        count = 1;
    }
    let kind = text(ev, "/involvedObject/kind").to_lowercase();
    let name = text(ev, "/involvedObject/name");
    let target = if name.is_empty() {
        kind
    } else {
        format!("{kind}/{name}")
    };
    let first_non_empty = |a: &'static str, b: &'static str| {
        let v = text(ev, a);
        if v.is_empty() { text(ev, b) } else { v }
    };
    let component = first_non_empty("/source/component", "/reportingComponent");
    let host = first_non_empty("/source/host", "/reportingInstance");
    let source = if host.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {host}")
    };
    vec![
        last_seen.into(),
        text(ev, "/type").into(),
        text(ev, "/reason").into(),
        target.into(),
        text(ev, "/involvedObject/fieldPath").into(),
        source.into(),
        text(ev, "/message").trim().into(),
        first_seen.into(),
        count.into(),
        text(ev, "/metadata/name").into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2025-03-01T12:00:00Z".parse().unwrap()
    }

    /// A creationTimestamp `secs` before `now()`.
    fn ago(secs: i64) -> String {
        (now() - SignedDuration::from_secs(secs)).to_string()
    }

    fn cells_of(kind: Kind, obj: &Value) -> Vec<Value> {
        cells(kind, obj, now())
    }

    #[test]
    fn human_duration_follows_apimachinery() {
        let cases: &[(i64, &str)] = &[
            (-5, "<invalid>"),
            (-2, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (599, "9m59s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 30 * 60, "5h30m"),
            (8 * 3600 + 59 * 60, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (8 * 86400 + 5 * 3600, "8d"),
            (36 * 86400, "36d"),
            (400 * 86400, "400d"),
            (730 * 86400, "2y"),
            (3 * 365 * 86400, "3y"),
            (3 * 365 * 86400 + 10 * 86400, "3y10d"),
            (8 * 365 * 86400 + 100 * 86400, "8y"),
        ];
        for &(secs, want) in cases {
            assert_eq!(
                human_duration(SignedDuration::from_secs(secs)),
                want,
                "{secs}s"
            );
        }
        // Go truncates toward zero: -1.5s is within the tolerated skew.
        assert_eq!(human_duration(SignedDuration::from_millis(-1500)), "0s");
        assert_eq!(human_duration(SignedDuration::from_millis(1999)), "1s");
    }

    #[test]
    fn missing_timestamps_are_unknown() {
        assert_eq!(since(None, now()), "<unknown>");
        assert_eq!(since(Some(&Value::Null), now()), "<unknown>");
        assert_eq!(since(Some(&json!("2025-03-01T11:59:55Z")), now()), "5s");
        // MicroTime, as Events' eventTime carries it.
        assert_eq!(
            since(Some(&json!("2025-03-01T11:58:00.123456Z")), now()),
            "119s"
        );
        let row = cells_of(Kind::Namespace, &json!({"metadata": {"name": "x"}}));
        assert_eq!(row[2], "<unknown>");
    }

    #[test]
    fn every_kind_has_a_cell_per_column() {
        for info in Kind::all() {
            let cols = columns(info.kind);
            assert_eq!(
                cols.len(),
                cells_of(info.kind, &json!({})).len(),
                "{:?}",
                info.kind
            );
            for c in &cols {
                let name = c["name"].as_str().unwrap();
                assert_eq!(c["format"], if name == "Name" { "name" } else { "" });
                assert!(c["priority"] == 0 || c["priority"] == 1);
                assert!(!c["description"].as_str().unwrap().is_empty());
            }
        }
    }

    fn service(name: &str, spec: Value, status: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": ago(0)},
            "spec": spec,
            "status": status,
        })
    }

    #[test]
    fn service_rows_match_the_tutorial() {
        let kubernetes = json!({
            "metadata": {"name": "kubernetes", "creationTimestamp": ago(36 * 86400)},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
        });
        assert_eq!(
            Value::Array(cells_of(Kind::Service, &kubernetes)),
            json!([
                "kubernetes",
                "ClusterIP",
                "10.96.0.1",
                "<none>",
                "443/TCP",
                "36d",
                "<none>"
            ])
        );

        let cluster_ip = service(
            "hello-world",
            json!({"type": "ClusterIP", "clusterIP": "10.96.0.140", "clusterIPs": ["10.96.0.140"],
                   "selector": {"app": "hello-world"},
                   "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}),
            json!({"loadBalancer": {}}),
        );
        assert_eq!(
            Value::Array(cells_of(Kind::Service, &cluster_ip)),
            json!([
                "hello-world",
                "ClusterIP",
                "10.96.0.140",
                "<none>",
                "80/TCP",
                "0s",
                "app=hello-world"
            ])
        );

        let node_port = service(
            "hello-world",
            json!({"type": "NodePort", "clusterIPs": ["10.96.0.141"],
                   "ports": [{"port": 8080, "nodePort": 30583, "protocol": "TCP"}]}),
            json!({}),
        );
        let c = cells_of(Kind::Service, &node_port);
        assert_eq!(c[1], "NodePort");
        assert_eq!(c[3], "<none>");
        assert_eq!(c[4], "8080:30583/TCP");

        let lb = service(
            "hello-world",
            json!({"type": "LoadBalancer", "clusterIPs": ["10.96.0.142"],
                   "ports": [{"port": 80, "nodePort": 30584, "protocol": "TCP"}]}),
            json!({"loadBalancer": {"ingress": [{"ip": "172.18.255.200", "ipMode": "VIP"}]}}),
        );
        assert_eq!(
            Value::Array(cells_of(Kind::Service, &lb)[..5].to_vec()),
            json!([
                "hello-world",
                "LoadBalancer",
                "10.96.0.142",
                "172.18.255.200",
                "80:30584/TCP"
            ])
        );

        let pending = service(
            "hello-world",
            json!({"type": "LoadBalancer", "clusterIPs": ["10.96.0.142"],
                   "ports": [{"port": 80, "nodePort": 30584, "protocol": "TCP"}]}),
            json!({"loadBalancer": {}}),
        );
        assert_eq!(cells_of(Kind::Service, &pending)[3], "<pending>");

        // Ingress addresses come sorted and deduplicated, then the external IPs.
        let mixed = service(
            "mixed",
            json!({"type": "LoadBalancer", "externalIPs": ["1.2.3.4"],
                   "ports": [{"port": 80, "protocol": "UDP"}, {"port": 53, "protocol": "UDP"}]}),
            json!({"loadBalancer": {"ingress": [{"ip": "172.18.255.201"}, {"hostname": "lb.example"},
                                                {"ip": "172.18.255.201"}]}}),
        );
        let c = cells_of(Kind::Service, &mixed);
        assert_eq!(c[2], "<none>");
        assert_eq!(c[3], "172.18.255.201,lb.example,1.2.3.4");
        assert_eq!(c[4], "80/UDP,53/UDP");

        let external_name = service(
            "db",
            json!({"type": "ExternalName", "externalName": "db.example.com"}),
            json!({}),
        );
        let c = cells_of(Kind::Service, &external_name);
        assert_eq!(c[2], "<none>");
        assert_eq!(c[3], "db.example.com");
        assert_eq!(c[4], "<none>");

        let selector = service(
            "s",
            json!({"type": "ClusterIP", "clusterIP": "10.96.0.9", "externalIPs": ["5.6.7.8", "1.1.1.1"],
                   "selector": {"tier": "web", "app": "x"}}),
            json!({}),
        );
        let c = cells_of(Kind::Service, &selector);
        assert_eq!(c[2], "10.96.0.9");
        assert_eq!(c[3], "5.6.7.8,1.1.1.1");
        assert_eq!(c[6], "app=x,tier=web");
    }

    fn running_pod(name: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": ago(6),
                         "labels": {"app": "hello-world", "pod-template-hash": "d5c5f6805b"}},
            "spec": {"nodeName": "lab-worker", "containers": [{"name": "hello-world", "image": "hello:1"}]},
            "status": {
                "phase": "Running",
                "podIP": "10.244.1.6",
                "podIPs": [{"ip": "10.244.1.6"}],
                "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "hello-world", "ready": true, "restartCount": 0,
                                       "started": true, "state": {"running": {"startedAt": ago(5)}}}],
            },
        })
    }

    #[test]
    fn running_pod_row_matches_get_pods_wide() {
        let pod = running_pod("hello-world-d5c5f6805b-b6hv4");
        assert_eq!(
            Value::Array(cells_of(Kind::Pod, &pod)),
            json!([
                "hello-world-d5c5f6805b-b6hv4",
                "1/1",
                "Running",
                "0",
                "6s",
                "10.244.1.6",
                "lab-worker",
                "<none>",
                "<none>"
            ])
        );
    }

    #[test]
    fn terminating_pod() {
        let mut pod = running_pod("p");
        pod["metadata"]["deletionTimestamp"] = json!(ago(1));
        assert_eq!(cells_of(Kind::Pod, &pod)[2], "Terminating");
        // A finished pod is not shown as terminating.
        pod["status"]["phase"] = json!("Succeeded");
        pod["status"]["containerStatuses"][0]["state"] =
            json!({"terminated": {"exitCode": 0, "reason": "Completed"}});
        assert_eq!(cells_of(Kind::Pod, &pod)[2], "Completed");
        // An unreachable node's pod shows Unknown.
        pod["status"]["phase"] = json!("Running");
        pod["status"]["reason"] = json!("NodeLost");
        assert_eq!(cells_of(Kind::Pod, &pod)[2], "Unknown");
    }

    #[test]
    fn waiting_pods_show_the_waiting_reason() {
        let mut pod = running_pod("p");
        pod["status"]["phase"] = json!("Pending");
        pod["status"]["podIPs"] = json!([]);
        pod["status"]["podIP"] = Value::Null;
        pod["status"]["containerStatuses"][0] = json!({
            "name": "hello-world", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull", "message": "pull failed"}},
        });
        let c = cells_of(Kind::Pod, &pod);
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], "ErrImagePull");
        assert_eq!(c[5], "<none>");

        pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] =
            json!("ContainerCreating");
        assert_eq!(cells_of(Kind::Pod, &pod)[2], "ContainerCreating");

        // Not yet scheduled: only the phase is known.
        let pending = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
                             "status": {"phase": "Pending"}});
        let c = cells_of(Kind::Pod, &pending);
        assert_eq!(
            Value::Array(c[1..4].to_vec()),
            json!(["0/2", "Pending", "0"])
        );
        assert_eq!(c[6], "<none>");
    }

    #[test]
    fn restarts_say_when_the_last_one_was() {
        let mut pod = running_pod("p");
        pod["status"]["containerStatuses"][0]["restartCount"] = json!(1);
        pod["status"]["containerStatuses"][0]["lastState"] =
            json!({"terminated": {"exitCode": 1, "finishedAt": ago(5)}});
        assert_eq!(cells_of(Kind::Pod, &pod)[3], "1 (5s ago)");

        let mut crashing = running_pod("p");
        crashing["status"]["containerStatuses"][0] = json!({
            "name": "c", "ready": false, "restartCount": 4,
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "finishedAt": ago(200)}},
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        });
        let c = cells_of(Kind::Pod, &crashing);
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "4 (3m20s ago)");
    }

    #[test]
    fn init_containers_and_readiness_gates() {
        let pod = json!({
            "metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "setup"}, {"name": "sidecar", "restartPolicy": "Always"}],
                     "containers": [{"name": "main"}],
                     "readinessGates": [{"conditionType": "example.com/lb"}, {"conditionType": "example.com/dns"}]},
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "example.com/lb", "status": "True"},
                               {"type": "example.com/dns", "status": "False"}],
                "initContainerStatuses": [
                    {"name": "setup", "restartCount": 0, "state": {"running": {}}},
                    {"name": "sidecar", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}},
                ],
                "containerStatuses": [{"name": "main", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}],
            },
        });
        let c = cells_of(Kind::Pod, &pod);
        assert_eq!(c[1], "0/2");
        assert_eq!(c[2], "Init:0/2");
        assert_eq!(c[8], "1/2");
    }

    #[test]
    fn finished_pods_carry_a_completed_condition() {
        let mut pod = running_pod("p");
        pod["status"]["phase"] = json!("Failed");
        let r = row(Kind::Pod, &pod, now());
        assert_eq!(r["conditions"][0]["type"], "Completed");
        assert_eq!(r["conditions"][0]["reason"], "Failed");
        assert!(
            row(Kind::Pod, &running_pod("p"), now())
                .get("conditions")
                .is_none()
        );
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "hello-world", "namespace": "default", "creationTimestamp": ago(350)},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "hello-world"}},
                "template": {"spec": {"containers": [
                    {"name": "hello-world", "image": "registry.lab/hello-world:1.0"},
                    {"name": "log", "image": "busybox"},
                ]}},
            },
            "status": {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2},
        })
    }

    #[test]
    fn deployment_row() {
        assert_eq!(
            Value::Array(cells_of(Kind::Deployment, &deployment())),
            json!([
                "hello-world",
                "2/2",
                2,
                2,
                "5m50s",
                "hello-world,log",
                "registry.lab/hello-world:1.0,busybox",
                "app=hello-world"
            ])
        );
        let fresh = json!({"metadata": {"name": "d"}, "spec": {"replicas": 3}, "status": {}});
        let c = cells_of(Kind::Deployment, &fresh);
        assert_eq!(Value::Array(c[1..4].to_vec()), json!(["0/3", 0, 0]));
        assert_eq!(c[7], "");
    }

    #[test]
    fn label_selectors_print_as_kubectl_does() {
        let sel = json!({
            "matchLabels": {"tier": "web", "app": "x"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "dev"]},
                {"key": "zone", "operator": "NotIn", "values": ["b"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "beta", "operator": "Exists"},
            ],
        });
        assert_eq!(
            label_selector_string(Some(&sel)).unwrap(),
            "app=x,beta,!canary,env in (dev,prod),tier=web,zone notin (b)"
        );
        let bad = json!({"matchExpressions": [{"key": "k", "operator": "In", "values": []}]});
        assert_eq!(label_selector_string(Some(&bad)), None);
        let mut d = deployment();
        d["spec"]["selector"] = bad.clone();
        assert_eq!(cells_of(Kind::Deployment, &d)[7], "<invalid>");
        let rs = json!({"metadata": {"name": "rs"}, "spec": {"selector": bad}});
        assert_eq!(cells_of(Kind::ReplicaSet, &rs)[7], "<error>");
    }

    #[test]
    fn replica_set_row() {
        let rs = json!({
            "metadata": {"name": "hello-world-d5c5f6805b", "creationTimestamp": ago(90)},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "hello-world", "pod-template-hash": "d5c5f6805b"}},
                     "template": {"spec": {"containers": [{"name": "hello-world", "image": "hello:1"}]}}},
            "status": {"replicas": 3, "readyReplicas": 1},
        });
        assert_eq!(
            Value::Array(cells_of(Kind::ReplicaSet, &rs)),
            json!([
                "hello-world-d5c5f6805b",
                3,
                3,
                1,
                "90s",
                "hello-world",
                "hello:1",
                "app=hello-world,pod-template-hash=d5c5f6805b"
            ])
        );
        let empty = json!({"metadata": {"name": "rs"}, "spec": {"selector": {}}});
        assert_eq!(cells_of(Kind::ReplicaSet, &empty)[7], "<none>");
    }

    fn node() -> Value {
        json!({
            "metadata": {"name": "lab-control-plane", "creationTimestamp": ago(36 * 86400),
                         "labels": {"kubernetes.io/hostname": "lab-control-plane",
                                    "node-role.kubernetes.io/control-plane": ""}},
            "spec": {},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "172.18.0.2"},
                              {"type": "Hostname", "address": "lab-control-plane"}],
                "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                "nodeInfo": {"kubeletVersion": "v1.32.2", "osImage": "Debian GNU/Linux 12 (bookworm)",
                             "kernelVersion": "6.1.0-lab", "containerRuntimeVersion": "containerd://1.7.24"},
            },
        })
    }

    #[test]
    fn node_row_matches_get_nodes_wide() {
        assert_eq!(
            Value::Array(cells_of(Kind::Node, &node())),
            json!([
                "lab-control-plane",
                "Ready",
                "control-plane",
                "36d",
                "v1.32.2",
                "172.18.0.2",
                "<none>",
                "Debian GNU/Linux 12 (bookworm)",
                "6.1.0-lab",
                "containerd://1.7.24"
            ])
        );
        let mut n = node();
        n["spec"]["unschedulable"] = json!(true);
        n["status"]["conditions"][1]["status"] = json!("Unknown");
        n["metadata"]["labels"] =
            json!({"kubernetes.io/role": "worker", "node-role.kubernetes.io/infra": ""});
        n["status"]["nodeInfo"] = json!({});
        let c = cells_of(Kind::Node, &n);
        assert_eq!(c[1], "NotReady,SchedulingDisabled");
        assert_eq!(c[2], "infra,worker");
        assert_eq!(c[4], "");
        assert_eq!(c[7], "<unknown>");
        let bare = json!({"metadata": {"name": "n"}});
        let c = cells_of(Kind::Node, &bare);
        assert_eq!(c[1], "Unknown");
        assert_eq!(c[2], "<none>");
    }

    #[test]
    fn endpoint_slice_rows() {
        let slice = json!({
            "metadata": {"name": "hello-world-tmqjb", "creationTimestamp": ago(2)},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.6"]}, {"addresses": ["10.244.1.5"]},
                {"addresses": ["10.244.1.7", "10.244.1.8"]}, {"addresses": ["10.244.1.9"]},
            ],
            "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
        });
        assert_eq!(
            Value::Array(cells_of(Kind::EndpointSlice, &slice)),
            json!([
                "hello-world-tmqjb",
                "IPv4",
                "8080",
                "10.244.1.6,10.244.1.5,10.244.1.7 + 2 more...",
                "2s"
            ])
        );
        let two = json!({"metadata": {"name": "s"}, "addressType": "IPv4",
                         "endpoints": [{"addresses": ["10.244.1.6"]}, {"addresses": ["10.244.1.5"]}],
                         "ports": [{"port": 80}, {"name": "dns"}, {}, {"port": 9}]});
        let c = cells_of(Kind::EndpointSlice, &two);
        assert_eq!(c[2], "80,dns,* + 1 more...");
        assert_eq!(c[3], "10.244.1.6,10.244.1.5");
        let empty = json!({"metadata": {"name": "s"}, "addressType": "IPv4"});
        let c = cells_of(Kind::EndpointSlice, &empty);
        assert_eq!(c[2], "<unset>");
        assert_eq!(c[3], "<unset>");
    }

    #[test]
    fn endpoints_rows() {
        let ep = json!({
            "metadata": {"name": "hello-world"},
            "subsets": [{"addresses": [{"ip": "10.244.1.5"}, {"ip": "10.244.1.6"}],
                         "ports": [{"port": 8080, "protocol": "TCP"}]}],
        });
        assert_eq!(
            cells_of(Kind::Endpoints, &ep)[1],
            "10.244.1.5:8080,10.244.1.6:8080"
        );
        let many = json!({
            "metadata": {"name": "x"},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "fd00::2"}],
                         "ports": [{"port": 80}, {"port": 443}]}],
        });
        assert_eq!(
            cells_of(Kind::Endpoints, &many)[1],
            "10.0.0.1:80,[fd00::2]:80,10.0.0.1:443 + 1 more..."
        );
        let headless =
            json!({"metadata": {"name": "x"}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]});
        assert_eq!(cells_of(Kind::Endpoints, &headless)[1], "10.0.0.1");
        let none = json!({"metadata": {"name": "x"}});
        assert_eq!(cells_of(Kind::Endpoints, &none)[1], "<none>");
    }

    #[test]
    fn namespace_row() {
        let ns = json!({"metadata": {"name": "default", "creationTimestamp": ago(36 * 86400)},
                        "status": {"phase": "Active"}});
        assert_eq!(
            Value::Array(cells_of(Kind::Namespace, &ns)),
            json!(["default", "Active", "36d"])
        );
    }

    #[test]
    fn event_rows() {
        let ev = json!({
            "metadata": {"name": "hello-world-d5c5f6805b-b6hv4.1820a3c4", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "hello-world-d5c5f6805b-b6hv4",
                               "fieldPath": "spec.containers{hello-world}"},
            "reason": "Pulled",
            "message": "Container image \"hello:1\" already present on machine\n",
            "type": "Normal",
            "source": {"component": "kubelet", "host": "lab-worker"},
            "firstTimestamp": ago(300),
            "lastTimestamp": ago(30),
            "count": 3,
        });
        assert_eq!(
            Value::Array(cells_of(Kind::Event, &ev)),
            json!([
                "30s",
                "Normal",
                "Pulled",
                "pod/hello-world-d5c5f6805b-b6hv4",
                "spec.containers{hello-world}",
                "kubelet, lab-worker",
                "Container image \"hello:1\" already present on machine",
                "5m",
                3,
                "hello-world-d5c5f6805b-b6hv4.1820a3c4"
            ])
        );
        // events.k8s.io-style: eventTime, series, reporting fields, no count.
        let new_style = json!({
            "metadata": {"name": "e"},
            "involvedObject": {"kind": "Deployment", "name": "hello-world"},
            "reason": "ScalingReplicaSet", "type": "Normal", "message": "Scaled up",
            "eventTime": ago(100) , "firstTimestamp": null, "lastTimestamp": null,
            "reportingComponent": "deployment-controller",
        });
        let c = cells_of(Kind::Event, &new_style);
        assert_eq!(c[0], "100s");
        assert_eq!(c[3], "deployment/hello-world");
        assert_eq!(c[5], "deployment-controller");
        assert_eq!(c[7], "100s");
        assert_eq!(c[8], 1);
        let mut series = new_style.clone();
        series["series"] = json!({"count": 7, "lastObservedTime": ago(10)});
        let c = cells_of(Kind::Event, &series);
        assert_eq!(c[0], "10s");
        assert_eq!(c[8], 7);
    }

    #[test]
    fn tables_carry_columns_rows_and_objects() {
        let pods = [running_pod("a"), running_pod("b")];
        let t = table(Kind::Pod, &pods, "104", IncludeObject::Metadata, now());
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"], json!({"resourceVersion": "104"}));
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
        assert_eq!(t["columnDefinitions"][5]["name"], "IP");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        let rows = t["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["cells"][0], "b");
        assert_eq!(
            rows[0]["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                   "metadata": pods[0]["metadata"]})
        );

        let none = table(Kind::Pod, pods.iter(), "", IncludeObject::None, now());
        assert_eq!(none["metadata"], json!({}));
        assert!(none["rows"][0].get("object").is_none());

        let full = table(Kind::Pod, [&pods[0]], "7", IncludeObject::Object, now());
        let obj = &full["rows"][0]["object"];
        assert_eq!(obj["kind"], "Pod");
        assert_eq!(obj["apiVersion"], "v1");
        assert_eq!(obj["spec"], pods[0]["spec"]);

        let empty = table(Kind::Service, [], "5", IncludeObject::Metadata, now());
        assert_eq!(empty["rows"], json!([]));
    }

    #[test]
    fn object_tables_have_one_row_and_the_objects_version() {
        let mut d = deployment();
        d["metadata"]["resourceVersion"] = json!("42");
        let t = object_table(Kind::Deployment, &d, IncludeObject::Metadata, now());
        assert_eq!(t["metadata"]["resourceVersion"], "42");
        assert_eq!(t["rows"].as_array().unwrap().len(), 1);
        assert_eq!(t["rows"][0]["cells"][1], "2/2");
        assert_eq!(t["rows"][0]["object"]["metadata"]["resourceVersion"], "42");
    }

    #[test]
    fn include_object_parses_the_query_value() {
        assert_eq!(
            IncludeObject::from_query(None).unwrap(),
            IncludeObject::Metadata
        );
        assert_eq!(
            IncludeObject::from_query(Some("")).unwrap(),
            IncludeObject::Metadata
        );
        assert_eq!(
            IncludeObject::from_query(Some("Metadata")).unwrap(),
            IncludeObject::Metadata
        );
        assert_eq!(
            IncludeObject::from_query(Some("None")).unwrap(),
            IncludeObject::None
        );
        assert_eq!(
            IncludeObject::from_query(Some("Object")).unwrap(),
            IncludeObject::Object
        );
        let err = IncludeObject::from_query(Some("object")).unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(err.message, "unrecognized includeObject value: \"object\"");
    }
}
