//! Request paths of the Kubernetes API, parsed into what they address.

use crate::resource::Kind;

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/version`.
    Version,
    /// `/healthz`, `/readyz`, `/livez`.
    Health,
    /// `/api`: core versions (or aggregated core discovery).
    Api,
    /// `/apis`: groups (or aggregated group discovery).
    Apis,
    /// `/api/v1` or `/apis/<group>/<version>`: a group/version's resource list.
    GroupVersion {
        /// API group (empty for core).
        group: String,
        /// Version.
        version: String,
    },
    /// `/openapi/v3`: the index of OpenAPI documents.
    OpenApiIndex,
    /// `/openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`.
    OpenApiDocument {
        /// API group (empty for core).
        group: String,
        /// Version.
        version: String,
    },
    /// A resource collection or object, possibly in a namespace, possibly a subresource.
    Resource(ResourcePath),
}

/// A path that names resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    /// The resource.
    pub kind: Kind,
    /// Namespace from the path, if the path has one.
    pub namespace: Option<String>,
    /// Object name; `None` addresses the collection.
    pub name: Option<String>,
    /// `status` or `scale`.
    pub subresource: Option<String>,
}

/// Why a path was not understood: 404 in every case, but the reason helps logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing is served there.
    #[error("no such path")]
    Unknown,
    /// A group/version/resource that this server does not serve.
    #[error("the server does not serve {0}")]
    UnknownResource(String),
    /// A subresource the resource does not have.
    #[error("{kind:?} has no subresource {subresource:?}")]
    UnknownSubresource {
        /// The resource.
        kind: Kind,
        /// The subresource asked for.
        subresource: String,
    },
}

/// Parses the path part of a request URI (no query).
pub fn parse(path: &str) -> Result<Route, PathError> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segs.as_slice() {
        ["version"] => Ok(Route::Version),
        ["healthz" | "readyz" | "livez", ..] => Ok(Route::Health),
        ["api"] => Ok(Route::Api),
        ["apis"] => Ok(Route::Apis),
        ["openapi", "v3"] => Ok(Route::OpenApiIndex),
        ["openapi", "v3", "api", v] => Ok(Route::OpenApiDocument {
            group: String::new(),
            version: v.to_string(),
        }),
        ["openapi", "v3", "apis", g, v] => Ok(Route::OpenApiDocument {
            group: g.to_string(),
            version: v.to_string(),
        }),
        ["api", v] => group_version("", v),
        ["apis", g, v] => group_version(g, v),
        ["api", v, rest @ ..] => resource("", v, rest),
        ["apis", g, v, rest @ ..] => resource(g, v, rest),
        _ => Err(PathError::Unknown),
    }
}

fn group_version(group: &str, version: &str) -> Result<Route, PathError> {
    if Kind::all()
        .iter()
        .any(|r| r.group == group && r.version == version)
    {
        Ok(Route::GroupVersion {
            group: group.to_string(),
            version: version.to_string(),
        })
    } else {
        Err(PathError::UnknownResource(format!("{group}/{version}")))
    }
}

fn resource(group: &str, version: &str, rest: &[&str]) -> Result<Route, PathError> {
    let (namespace, rest) = match rest {
        // A Namespace's own subresources, not a collection called "status" inside it.
        ["namespaces", _, "status" | "finalize"] => (None, rest),
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(PathError::Unknown),
    };
    let kind = Kind::from_path(group, version, plural)
        .ok_or_else(|| PathError::UnknownResource(format!("{group}/{version}/{plural}")))?;
    let info = kind.info();
    // `/api/v1/namespaces/<ns>` names a Namespace, not a namespaced collection.
    if namespace.is_some() && !info.namespaced {
        return Err(PathError::Unknown);
    }
    if let Some(sub) = &sub
        && !info.subresources.contains(&sub.as_str())
    {
        return Err(PathError::UnknownSubresource {
            kind,
            subresource: sub.clone(),
        });
    }
    Ok(Route::Resource(ResourcePath {
        kind,
        namespace,
        name,
        subresource: sub,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> ResourcePath {
        match parse(path).unwrap() {
            Route::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn tutorial_paths() {
        let r = res("/apis/apps/v1/namespaces/default/deployments/hello-world/scale");
        assert_eq!(r.kind, Kind::Deployment);
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.name.as_deref(), Some("hello-world"));
        assert_eq!(r.subresource.as_deref(), Some("scale"));
        let r = res("/api/v1/services");
        assert_eq!((r.kind, r.namespace, r.name), (Kind::Service, None, None));
        let r = res("/api/v1/namespaces/default");
        assert_eq!(
            (r.kind, r.name.as_deref()),
            (Kind::Namespace, Some("default"))
        );
        let r = res("/api/v1/namespaces");
        assert_eq!(r.kind, Kind::Namespace);
        let r = res("/api/v1/namespaces/default/status");
        assert_eq!(
            (r.kind, r.subresource.as_deref()),
            (Kind::Namespace, Some("status"))
        );
        let r = res("/api/v1/nodes/lab-worker");
        assert_eq!(
            (r.kind, r.name.as_deref()),
            (Kind::Node, Some("lab-worker"))
        );
        assert_eq!(
            parse("/apis/discovery.k8s.io/v1").unwrap(),
            Route::GroupVersion {
                group: "discovery.k8s.io".into(),
                version: "v1".into()
            }
        );
        assert_eq!(
            parse("/openapi/v3/apis/apps/v1").unwrap(),
            Route::OpenApiDocument {
                group: "apps".into(),
                version: "v1".into()
            }
        );
    }

    #[test]
    fn unknown_paths() {
        assert!(parse("/apis/batch/v1/jobs").is_err());
        assert!(parse("/api/v1/namespaces/default/services/x/scale").is_err());
        assert!(parse("/api/v1/namespaces/default/nodes/x").is_err());
        assert!(parse("/nothing").is_err());
    }
}
