//! The resources the lab's API serves, with what discovery, URLs and messages need of them.

/// A resource type the lab serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Namespace (cluster-scoped).
    Namespace,
    /// `v1` Node (cluster-scoped).
    Node,
    /// `v1` Pod.
    Pod,
    /// `v1` Service.
    Service,
    /// `v1` Endpoints, a read-only mirror of the EndpointSlices.
    Endpoints,
    /// `v1` Event.
    Event,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` ReplicaSet.
    ReplicaSet,
}

/// What the API needs to know about one resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    /// The kind.
    pub kind: Kind,
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// The `kind` field of objects.
    pub kind_name: &'static str,
    /// Plural resource name used in URLs and messages.
    pub plural: &'static str,
    /// Singular resource name.
    pub singular: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names kubectl resolves (`svc`, `po`, ...).
    pub short_names: &'static [&'static str],
    /// Subresources served (`status`, `scale`).
    pub subresources: &'static [&'static str],
    /// Whether clients may write it (Endpoints is a read-only mirror).
    pub writable: bool,
}

const ALL: &[ResourceInfo] = &[
    ResourceInfo {
        kind: Kind::Namespace,
        group: "",
        version: "v1",
        kind_name: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        subresources: &["status"],
        writable: true,
    },
    ResourceInfo {
        kind: Kind::Node,
        group: "",
        version: "v1",
        kind_name: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        subresources: &["status"],
        writable: true,
    },
    ResourceInfo {
        kind: Kind::Pod,
        group: "",
        version: "v1",
        kind_name: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        subresources: &["status", "log", "exec"],
        writable: true,
    },
    ResourceInfo {
        kind: Kind::Service,
        group: "",
        version: "v1",
        kind_name: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
        subresources: &["status"],
        writable: true,
    },
    ResourceInfo {
        kind: Kind::Endpoints,
        group: "",
        version: "v1",
        kind_name: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        namespaced: true,
        short_names: &["ep"],
        subresources: &[],
        writable: false,
    },
    ResourceInfo {
        kind: Kind::Event,
        group: "",
        version: "v1",
        kind_name: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        subresources: &[],
        writable: true,
    },
    ResourceInfo {
        kind: Kind::EndpointSlice,
        group: "discovery.k8s.io",
        version: "v1",
        kind_name: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: &[],
        subresources: &[],
        writable: true,
    },
    ResourceInfo {
        kind: Kind::Deployment,
        group: "apps",
        version: "v1",
        kind_name: "Deployment",
        plural: "deployments",
        singular: "deployment",
        namespaced: true,
        short_names: &["deploy"],
        subresources: &["status", "scale"],
        writable: true,
    },
    ResourceInfo {
        kind: Kind::ReplicaSet,
        group: "apps",
        version: "v1",
        kind_name: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        namespaced: true,
        short_names: &["rs"],
        subresources: &["status", "scale"],
        writable: true,
    },
];

impl Kind {
    /// Every resource the lab serves, in discovery order.
    pub fn all() -> &'static [ResourceInfo] {
        ALL
    }

    /// This kind's description.
    pub fn info(self) -> &'static ResourceInfo {
        ALL.iter()
            .find(|r| r.kind == self)
            .expect("every kind is listed")
    }

    /// The resource served at `<group>/<version>/<plural>`, if any.
    pub fn from_path(group: &str, version: &str, plural: &str) -> Option<Kind> {
        ALL.iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .map(|r| r.kind)
    }

    /// The resource whose objects have this `apiVersion` and `kind`.
    pub fn from_type(api_version: &str, kind_name: &str) -> Option<Kind> {
        ALL.iter()
            .find(|r| r.api_version() == api_version && r.kind_name == kind_name)
            .map(|r| r.kind)
    }
}

impl ResourceInfo {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `services` or `deployments.apps`: how Kubernetes names the resource in messages.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_types_find_the_same_resource() {
        for info in Kind::all() {
            assert_eq!(
                Kind::from_path(info.group, info.version, info.plural),
                Some(info.kind)
            );
            assert_eq!(
                Kind::from_type(&info.api_version(), info.kind_name),
                Some(info.kind)
            );
        }
        assert_eq!(
            Kind::Deployment.info().qualified_plural(),
            "deployments.apps"
        );
        assert_eq!(Kind::Service.info().qualified_plural(), "services");
    }
}
