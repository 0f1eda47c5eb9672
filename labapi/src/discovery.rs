//! Discovery documents (aggregated and legacy), `/version` and the OpenAPI v3 documents kubectl
//! asks for before `apply -f` and `create -f`.

use serde_json::{Value, json};

use crate::resource::{Kind, ResourceInfo};

/// The content type of aggregated discovery answers; without it kubectl reads them as legacy
/// documents and finds no resources.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// The Kubernetes version the lab reports. The installed kubectl dispatches to a binary by the
/// server's minor version; 1.32 selects the client the lab is checked against.
pub const KUBE_VERSION: &str = "v1.32.4";

/// Whether a request's `Accept` header asks for aggregated discovery.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.contains("as=APIGroupDiscoveryList")
}

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": KUBE_VERSION,
        "gitCommit": "services-lab",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn verbs(info: &ResourceInfo) -> Vec<&'static str> {
    if info.writable {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    } else {
        vec!["get", "list", "watch"]
    }
}

fn categories(info: &ResourceInfo) -> Vec<&'static str> {
    match info.kind {
        Kind::Pod | Kind::Service | Kind::Deployment | Kind::ReplicaSet => vec!["all"],
        _ => vec![],
    }
}

fn subresource_kind(info: &ResourceInfo, sub: &str) -> (String, String, String) {
    if sub == "scale" {
        ("autoscaling".into(), "v1".into(), "Scale".into())
    } else if sub == "exec" {
        ("".into(), "v1".into(), "PodExecOptions".into())
    } else {
        (
            info.group.into(),
            info.version.into(),
            info.kind_name.into(),
        )
    }
}

/// What a subresource allows, as on kube-apiserver: a Pod's log is read-only; an exec is a
/// connection, opened with GET (WebSocket) or POST (SPDY).
fn subresource_verbs(sub: &str) -> &'static [&'static str] {
    match sub {
        "log" => &["get"],
        "exec" => &["create", "get"],
        _ => &["get", "patch", "update"],
    }
}

fn aggregated_resource(info: &ResourceInfo) -> Value {
    let subresources: Vec<Value> = info
        .subresources
        .iter()
        .map(|sub| {
            let (g, v, k) = subresource_kind(info, sub);
            json!({
                "subresource": sub,
                "responseKind": {"group": g, "version": v, "kind": k},
                "verbs": subresource_verbs(sub),
            })
        })
        .collect();
    json!({
        "resource": info.plural,
        "responseKind": {"group": info.group, "version": info.version, "kind": info.kind_name},
        "scope": if info.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": info.singular,
        "shortNames": info.short_names,
        "categories": categories(info),
        "verbs": verbs(info),
        "subresources": subresources,
    })
}

fn groups() -> Vec<&'static str> {
    let mut gs: Vec<&'static str> = Vec::new();
    for r in Kind::all() {
        if !r.group.is_empty() && !gs.contains(&r.group) {
            gs.push(r.group);
        }
    }
    gs
}

fn aggregated_group(group: &str) -> Value {
    let resources: Vec<Value> = Kind::all()
        .iter()
        .filter(|r| r.group == group)
        .map(aggregated_resource)
        .collect();
    let mut item = json!({
        "metadata": {"creationTimestamp": null},
        "versions": [{"version": "v1", "freshness": "Current", "resources": resources}],
    });
    if !group.is_empty() {
        item["metadata"]["name"] = json!(group);
    }
    item
}

/// Aggregated discovery for `/api` (core) or `/apis` (named groups).
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group("")]
    } else {
        groups().into_iter().map(aggregated_group).collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// Legacy `/api`.
pub fn legacy_api(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// Legacy `/apis`.
pub fn legacy_apis() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|g| {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Legacy `/api/v1` or `/apis/<group>/<version>` resource list.
pub fn legacy_resources(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for info in Kind::all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": info.plural,
            "singularName": info.singular,
            "namespaced": info.namespaced,
            "kind": info.kind_name,
            "verbs": verbs(info),
            "shortNames": info.short_names,
            "categories": categories(info),
        }));
        for sub in info.subresources {
            let (g, v, k) = subresource_kind(info, sub);
            resources.push(json!({
                "name": format!("{}/{sub}", info.plural),
                "singularName": "",
                "namespaced": info.namespaced,
                "group": g, "version": v, "kind": k,
                "verbs": subresource_verbs(sub),
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one document per group/version.
pub fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<(&str, &str)> = Kind::all().iter().map(|r| (r.group, r.version)).collect();
    gvs.dedup();
    for (g, v) in gvs {
        let p = openapi_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<api|apis/group>/<version>`: for each kind, the PATCH operation with the
/// `fieldValidation` parameter. kubectl looks only for that parameter, and finding it leaves
/// validation to the server (which does it in `decode` and `validate`). No `requestBody` is
/// declared: without full schemas kubectl would warn, and with none it uses its built-in types
/// for strategic merge patches.
pub fn openapi_document(group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for info in Kind::all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let prefix = format!("/{}", openapi_path(group, version));
        let item = if info.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", info.plural)
        } else {
            format!("{prefix}/{}/{{name}}", info.plural)
        };
        paths.insert(
            item,
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": info.kind_name},
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                ],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": KUBE_VERSION}, "paths": paths}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_lists_every_resource_once() {
        let core = aggregated(true);
        let names: Vec<&str> = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["resource"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "namespaces",
                "nodes",
                "pods",
                "services",
                "endpoints",
                "events"
            ]
        );
        let apis = aggregated(false);
        let groups: Vec<&str> = apis["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(groups, ["discovery.k8s.io", "apps"]);
        let deploy = &apis["items"][1]["versions"][0]["resources"][0];
        assert_eq!(deploy["subresources"][1]["responseKind"]["kind"], "Scale");
        // The entry of `list` whose `key` is `value`.
        fn entry<'v>(list: &'v Value, key: &str, value: &str) -> &'v Value {
            list.as_array()
                .unwrap()
                .iter()
                .find(|e| e[key] == value)
                .unwrap()
        }
        // A Pod's log is read-only, in both forms of discovery.
        let core = aggregated(true);
        let pods = entry(
            &core["items"][0]["versions"][0]["resources"],
            "resource",
            "pods",
        );
        let log = entry(&pods["subresources"], "subresource", "log");
        assert_eq!(log["verbs"], json!(["get"]));
        let legacy = legacy_resources("", "v1");
        let log = entry(&legacy["resources"], "name", "pods/log");
        assert_eq!(log["verbs"], json!(["get"]));
        let exec = entry(&legacy["resources"], "name", "pods/exec");
        assert_eq!(exec["kind"], "PodExecOptions");
        assert_eq!(exec["verbs"], json!(["create", "get"]));
    }

    #[test]
    fn openapi_declares_field_validation_for_each_kind() {
        let idx = openapi_index();
        assert!(idx["paths"]["apis/apps/v1"].is_object());
        let doc = openapi_document("apps", "v1").unwrap();
        let op = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert_eq!(op["parameters"][0]["name"], "fieldValidation");
        let core = openapi_document("", "v1").unwrap();
        assert!(core["paths"]["/api/v1/namespaces/{name}"].is_object());
        assert!(openapi_document("batch", "v1").is_none());
    }
}
