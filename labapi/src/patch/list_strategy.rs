//! How a strategic merge patch treats each list of the served kinds: the
//! `patchStrategy`/`patchMergeKey` tags of the Kubernetes Go types, as a table.
//!
//! Lists are named by the path of field names from the object's root, with `*` standing for
//! "an element of the enclosing list": a Deployment's container ports are
//! `spec.template.spec.containers.*.ports`.

use crate::resource::Kind;

/// What a strategic merge patch does with a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the object's (the default for lists without a tag).
    Replace,
    /// Elements are objects matched by this field; matches merge, others are added.
    MergeByKey(&'static str),
    /// Elements are primitives merged as a set (`metadata.finalizers`).
    MergeSet,
}

/// The strategy for the list at `path` in an object of `kind`.
pub fn list_strategy(kind: Kind, path: &[&str]) -> ListStrategy {
    use ListStrategy::{MergeByKey, MergeSet, Replace};
    match path {
        ["metadata", "ownerReferences"] => return MergeByKey("uid"),
        ["metadata", "finalizers"] => return MergeSet,
        _ => {}
    }
    match (kind, path) {
        (Kind::Pod, ["spec", rest @ ..]) => pod_spec(rest),
        (Kind::Pod, ["status", "conditions"]) => MergeByKey("type"),
        (Kind::Pod, ["status", "podIPs" | "hostIPs"]) => MergeByKey("ip"),
        (Kind::Deployment | Kind::ReplicaSet, ["spec", "template", "spec", rest @ ..]) => {
            pod_spec(rest)
        }
        (Kind::Deployment | Kind::ReplicaSet, ["status", "conditions"]) => MergeByKey("type"),
        (Kind::Node, ["status", "conditions" | "addresses"]) => MergeByKey("type"),
        (Kind::Node, ["spec", "podCIDRs"]) => MergeSet,
        (Kind::Service, ["spec", "ports"]) => MergeByKey("port"),
        (Kind::Service | Kind::Namespace, ["status", "conditions"]) => MergeByKey("type"),
        _ => Replace,
    }
}

/// Lists inside a `PodSpec`, `path` being relative to it.
fn pod_spec(path: &[&str]) -> ListStrategy {
    use ListStrategy::{MergeByKey, Replace};
    match path {
        [list] if is_container_list(list) => MergeByKey("name"),
        [list, "*", field] if is_container_list(list) => container(field),
        ["volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates"] => {
            MergeByKey("name")
        }
        ["hostAliases"] => MergeByKey("ip"),
        ["topologySpreadConstraints"] => MergeByKey("topologyKey"),
        // `tolerations` carries no tag upstream: replaced like any other list.
        _ => Replace,
    }
}

fn is_container_list(field: &str) -> bool {
    matches!(
        field,
        "containers" | "initContainers" | "ephemeralContainers"
    )
}

/// Lists inside a `Container`.
fn container(field: &str) -> ListStrategy {
    use ListStrategy::{MergeByKey, Replace};
    match field {
        "ports" => MergeByKey("containerPort"),
        "env" => MergeByKey("name"),
        "volumeMounts" => MergeByKey("mountPath"),
        "volumeDevices" => MergeByKey("devicePath"),
        _ => Replace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ListStrategy::{MergeByKey, MergeSet, Replace};

    #[test]
    fn pod_spec_lists_are_found_under_each_kind() {
        for (kind, prefix) in [
            (Kind::Pod, &["spec"][..]),
            (Kind::Deployment, &["spec", "template", "spec"][..]),
            (Kind::ReplicaSet, &["spec", "template", "spec"][..]),
        ] {
            let at = |rest: &[&'static str]| {
                let path: Vec<&str> = prefix.iter().chain(rest).copied().collect();
                list_strategy(kind, &path)
            };
            assert_eq!(at(&["containers"]), MergeByKey("name"));
            assert_eq!(at(&["initContainers"]), MergeByKey("name"));
            assert_eq!(
                at(&["containers", "*", "ports"]),
                MergeByKey("containerPort")
            );
            assert_eq!(at(&["initContainers", "*", "env"]), MergeByKey("name"));
            assert_eq!(
                at(&["containers", "*", "volumeMounts"]),
                MergeByKey("mountPath")
            );
            assert_eq!(at(&["containers", "*", "args"]), Replace);
            assert_eq!(at(&["volumes"]), MergeByKey("name"));
            assert_eq!(at(&["imagePullSecrets"]), MergeByKey("name"));
            assert_eq!(at(&["hostAliases"]), MergeByKey("ip"));
            assert_eq!(at(&["tolerations"]), Replace);
        }
    }

    #[test]
    fn other_lists() {
        assert_eq!(
            list_strategy(Kind::Service, &["spec", "ports"]),
            MergeByKey("port")
        );
        assert_eq!(list_strategy(Kind::Deployment, &["spec", "ports"]), Replace);
        assert_eq!(
            list_strategy(Kind::Node, &["status", "addresses"]),
            MergeByKey("type")
        );
        for kind in [Kind::Pod, Kind::Node, Kind::Deployment, Kind::ReplicaSet] {
            assert_eq!(
                list_strategy(kind, &["status", "conditions"]),
                MergeByKey("type")
            );
        }
        assert_eq!(
            list_strategy(Kind::Event, &["metadata", "ownerReferences"]),
            MergeByKey("uid")
        );
        assert_eq!(
            list_strategy(Kind::Service, &["metadata", "finalizers"]),
            MergeSet
        );
        assert_eq!(list_strategy(Kind::EndpointSlice, &["endpoints"]), Replace);
    }
}
