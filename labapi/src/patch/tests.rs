use serde_json::{Value, json};

use super::*;

/// A Deployment as the server stores it after `kubectl apply` of the hello-world example.
fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "hello-world",
            "namespace": "default",
            "uid": "8a5b8a44-5a3c-4b36-9d1c-0c3f1d3e9a10",
            "resourceVersion": "42",
            "generation": 1,
            "labels": { "app": "hello-world", "tier": "web" },
            "annotations": {
                "deployment.kubernetes.io/revision": "1",
                "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"apps/v1\"}\n"
            }
        },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "hello-world" } },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": { "maxSurge": "25%", "maxUnavailable": "25%" }
            },
            "template": {
                "metadata": { "labels": { "app": "hello-world" } },
                "spec": {
                    "containers": [{
                        "name": "hello-world",
                        "image": "gcr.io/google-samples/hello-app:1.0",
                        "ports": [{ "containerPort": 8080, "protocol": "TCP" }],
                        "env": [
                            { "name": "PORT", "value": "8080" },
                            { "name": "MODE", "value": "demo" }
                        ],
                        "resources": {},
                        "imagePullPolicy": "IfNotPresent"
                    }],
                    "restartPolicy": "Always",
                    "dnsPolicy": "ClusterFirst"
                }
            }
        },
        "status": {
            "replicas": 1,
            "conditions": [
                { "type": "Available", "status": "True" },
                { "type": "Progressing", "status": "True" }
            ]
        }
    })
}

fn service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": "hello-world", "namespace": "default" },
        "spec": {
            "type": "NodePort",
            "selector": { "app": "hello-world" },
            "ports": [
                { "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080 }
            ]
        }
    })
}

fn smp(kind: Kind, target: &Value, patch: &str) -> Result<Value, ApiError> {
    apply_patch(kind, target, PatchType::StrategicMerge, patch.as_bytes())
}

fn smp_ok(kind: Kind, target: &Value, patch: &str) -> Value {
    smp(kind, target, patch).unwrap_or_else(|e| panic!("patch {patch} failed: {e}"))
}

fn containers(d: &Value) -> &Vec<Value> {
    d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
}

fn names(list: &Value, key: &str) -> Vec<Value> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|v| v[key].clone())
        .collect()
}

/// No `$` key anywhere in the value.
fn assert_no_directives(value: &Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                assert!(!k.starts_with('$'), "directive {k} left in the result");
                assert_no_directives(v);
            }
        }
        Value::Array(list) => list.iter().for_each(assert_no_directives),
        _ => {}
    }
}

#[test]
fn content_types() {
    assert_eq!(
        PatchType::from_content_type("application/json-patch+json"),
        Ok(PatchType::Json)
    );
    assert_eq!(
        PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
        Ok(PatchType::Merge)
    );
    assert_eq!(
        PatchType::from_content_type("Application/Strategic-Merge-Patch+JSON"),
        Ok(PatchType::StrategicMerge)
    );
    for bad in [
        "application/apply-patch+yaml",
        "application/json",
        "text/plain",
        "",
    ] {
        let e = PatchType::from_content_type(bad).unwrap_err();
        assert_eq!((e.code, e.reason), (415, "UnsupportedMediaType"), "{bad}");
    }
    for t in [PatchType::Json, PatchType::Merge, PatchType::StrategicMerge] {
        assert_eq!(PatchType::from_content_type(t.content_type()), Ok(t));
    }
}

// The three bodies kubectl 1.32 sends for `apply`, `set image` and dropping `ports`.

#[test]
fn kubectl_apply_scale_and_annotation() {
    let patch = r#"{"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"apiVersion\":\"apps/v1\",\"spec\":{\"replicas\":3}}\n"}},"spec":{"replicas":3}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
        "{\"apiVersion\":\"apps/v1\",\"spec\":{\"replicas\":3}}\n"
    );
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    let mut expected = deployment();
    expected["spec"]["replicas"] = json!(3);
    expected["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
        d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].clone();
    assert_eq!(d, expected);
}

#[test]
fn kubectl_set_image() {
    let patch = r#"{"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"hello-world"}],"containers":[{"image":"gcr.io/google-samples/hello-app:2.0","name":"hello-world"}]}}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    let mut expected = deployment();
    expected["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!("gcr.io/google-samples/hello-app:2.0");
    assert_eq!(d, expected);
    assert_no_directives(&d);
}

#[test]
fn kubectl_apply_drops_ports() {
    let patch = r#"{"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"hello-world"}],"containers":[{"name":"hello-world","ports":null}]}}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    let c = &containers(&d)[0];
    assert!(c.get("ports").is_none());
    assert_eq!(c["image"], "gcr.io/google-samples/hello-app:1.0");
    assert_eq!(containers(&d).len(), 1);
    assert_no_directives(&d);
}

#[test]
fn adding_a_container_keeps_the_existing_one() {
    // kubectl apply names both containers in $setElementOrder, so the order is the user's.
    let patch = r#"{"spec":{"template":{"spec":{
        "$setElementOrder/containers":[{"name":"hello-world"},{"name":"sidecar"}],
        "containers":[{"name":"sidecar","image":"busybox:1.36","args":["sleep","3600"]}]}}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    let list = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        names(list, "name"),
        [json!("hello-world"), json!("sidecar")]
    );
    assert_eq!(
        list[0],
        deployment()["spec"]["template"]["spec"]["containers"][0]
    );
    assert_eq!(list[1]["args"], json!(["sleep", "3600"]));

    // Without an order, upstream puts elements new to the list before the existing ones.
    let patch = r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox:1.36"}]}}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    let list = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        names(list, "name"),
        [json!("sidecar"), json!("hello-world")]
    );
}

#[test]
fn deleting_a_container_by_key() {
    let mut two = deployment();
    two["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "sidecar", "image": "busybox:1.36" }));
    let patch = r#"{"spec":{"template":{"spec":{
        "$setElementOrder/containers":[{"name":"hello-world"}],
        "containers":[{"$patch":"delete","name":"sidecar"}]}}}}"#;
    let d = smp_ok(Kind::Deployment, &two, patch);
    assert_eq!(d, deployment());

    // Deleting what is not there changes nothing.
    let patch =
        r#"{"spec":{"template":{"spec":{"containers":[{"$patch":"delete","name":"nosuch"}]}}}}"#;
    assert_eq!(smp_ok(Kind::Deployment, &deployment(), patch), deployment());
}

#[test]
fn env_merges_by_name() {
    let patch = r#"{"spec":{"template":{"spec":{"containers":[{"name":"hello-world",
        "env":[{"name":"MODE","value":"prod"},{"name":"NEW","value":"1"}]}]}}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    let env = &containers(&d)[0]["env"];
    // MODE and NEW are in the patch in that order; PORT, server-only, preceded MODE.
    assert_eq!(
        env,
        &json!([
            { "name": "PORT", "value": "8080" },
            { "name": "MODE", "value": "prod" },
            { "name": "NEW", "value": "1" }
        ])
    );

    let patch = r#"{"spec":{"template":{"spec":{"containers":[{"name":"hello-world",
        "env":[{"name":"PORT","$patch":"delete"}]}]}}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    assert_eq!(names(&containers(&d)[0]["env"], "name"), [json!("MODE")]);
}

#[test]
fn container_ports_merge_by_container_port() {
    let patch = r#"{"spec":{"template":{"spec":{"containers":[{"name":"hello-world",
        "ports":[{"containerPort":8080,"name":"http"},{"containerPort":9090,"name":"metrics"}]}]}}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    assert_eq!(
        containers(&d)[0]["ports"],
        json!([
            { "containerPort": 8080, "protocol": "TCP", "name": "http" },
            { "containerPort": 9090, "name": "metrics" }
        ])
    );
}

#[test]
fn service_ports_merge_by_port() {
    let patch = r#"{"spec":{"ports":[{"port":80,"targetPort":9376},{"port":443,"name":"https","targetPort":8443}]}}"#;
    let s = smp_ok(Kind::Service, &service(), patch);
    assert_eq!(
        s["spec"]["ports"],
        json!([
            { "name": "http", "port": 80, "targetPort": 9376, "protocol": "TCP", "nodePort": 30080 },
            { "name": "https", "port": 443, "targetPort": 8443 }
        ])
    );
    // The same list in a Deployment's spec has no merge key, so it would be replaced.
    let d = smp_ok(Kind::Deployment, &service(), patch);
    assert_eq!(
        d["spec"]["ports"],
        json!([{"port":80,"targetPort":9376},{"port":443,"name":"https","targetPort":8443}])
    );
}

#[test]
fn replace_directive_on_a_map() {
    let patch = r#"{"spec":{"strategy":{"$patch":"replace","type":"Recreate"}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    assert_eq!(d["spec"]["strategy"], json!({ "type": "Recreate" }));

    let patch = r#"{"metadata":{"labels":{"$patch":"replace","only":"this"}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    assert_eq!(d["metadata"]["labels"], json!({ "only": "this" }));

    let patch = r#"{"spec":{"strategy":{"$patch":"delete"}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    assert_eq!(d["spec"]["strategy"], json!({}));
}

#[test]
fn replace_directive_in_a_list() {
    let patch = r#"{"spec":{"template":{"spec":{"containers":[{"$patch":"replace"},{"name":"only","image":"busybox"}]}}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"],
        json!([{ "name": "only", "image": "busybox" }])
    );
}

#[test]
fn retain_keys_drops_unlisted_fields() {
    // kubectl apply switching a Deployment to Recreate.
    let patch = r#"{"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate"}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    assert_eq!(d["spec"]["strategy"], json!({ "type": "Recreate" }));
    assert_no_directives(&d);

    let patch = r#"{"spec":{"strategy":{"$retainKeys":["type"],"rollingUpdate":{"maxSurge":1}}}}"#;
    let e = smp(Kind::Deployment, &deployment(), patch).unwrap_err();
    assert_eq!(e.code, 400);
    assert!(e.message.contains("rollingUpdate"), "{}", e.message);
}

#[test]
fn null_deletes_a_label() {
    let patch = r#"{"metadata":{"labels":{"tier":null,"track":"stable"}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    assert_eq!(
        d["metadata"]["labels"],
        json!({ "app": "hello-world", "track": "stable" })
    );
    // Nulls for fields the object lacks do not end up in it.
    let patch = r#"{"spec":{"paused":null,"minReadySeconds":5}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    assert!(d["spec"].get("paused").is_none());
    assert_eq!(d["spec"]["minReadySeconds"], 5);
    let patch = r#"{"metadata":{"newMap":{"a":null,"b":"x"}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    assert_eq!(d["metadata"]["newMap"], json!({ "b": "x" }));
}

#[test]
fn lists_without_a_merge_key_are_replaced() {
    let mut pod = json!({
        "metadata": { "name": "p" },
        "spec": {
            "containers": [{ "name": "c", "image": "i", "args": ["a", "b"] }],
            "tolerations": [{ "key": "k1", "operator": "Exists" }]
        }
    });
    let patch = r#"{"spec":{"tolerations":[{"key":"k2","operator":"Exists"}],
        "containers":[{"name":"c","args":["z"]}]}}"#;
    pod = smp_ok(Kind::Pod, &pod, patch);
    assert_eq!(
        pod["spec"]["tolerations"],
        json!([{ "key": "k2", "operator": "Exists" }])
    );
    assert_eq!(pod["spec"]["containers"][0]["args"], json!(["z"]));
    assert_eq!(pod["spec"]["containers"][0]["image"], "i");
}

#[test]
fn status_conditions_merge_by_type() {
    let patch = r#"{"status":{"conditions":[{"type":"Available","status":"False","reason":"MinimumReplicasUnavailable"}]}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    assert_eq!(
        d["status"]["conditions"],
        json!([
            { "type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable" },
            { "type": "Progressing", "status": "True" }
        ])
    );
}

#[test]
fn finalizers_merge_as_a_set() {
    let mut d = deployment();
    d["metadata"]["finalizers"] = json!(["a", "b"]);
    let patch = r#"{"metadata":{"finalizers":["b","c"]}}"#;
    let out = smp_ok(Kind::Deployment, &d, patch);
    assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));

    let patch = r#"{"metadata":{"$deleteFromPrimitiveList/finalizers":["a"]}}"#;
    let out = smp_ok(Kind::Deployment, &d, patch);
    assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    assert_no_directives(&out);

    // kubectl apply's form: the full order, the deletions, the additions.
    let patch = r#"{"metadata":{"$setElementOrder/finalizers":["b","c"],
        "$deleteFromPrimitiveList/finalizers":["a"],"finalizers":["c"]}}"#;
    let out = smp_ok(Kind::Deployment, &d, patch);
    assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
}

#[test]
fn owner_references_merge_by_uid() {
    let mut rs = json!({ "metadata": { "name": "rs", "ownerReferences": [
        { "uid": "u1", "kind": "Deployment", "name": "a", "controller": true }
    ]}});
    let patch = r#"{"metadata":{"ownerReferences":[{"uid":"u1","controller":false}]}}"#;
    rs = smp_ok(Kind::ReplicaSet, &rs, patch);
    assert_eq!(
        rs["metadata"]["ownerReferences"],
        json!([{ "uid": "u1", "kind": "Deployment", "name": "a", "controller": false }])
    );
}

#[test]
fn set_element_order_follows_upstream() {
    // The cases of apimachinery's design note and tests, on a Pod's env.
    let pod = |env: &[&str]| {
        json!({ "spec": { "containers": [{ "name": "c",
            "env": env.iter().map(|n| json!({ "name": n })).collect::<Vec<_>>() }] } })
    };
    let env_of = |p: &Value| names(&p["spec"]["containers"][0]["env"], "name");
    let run = |live: &[&str], patch: Value| {
        let mut container = json!({ "name": "c" });
        let fields = patch.as_object().expect("an object").clone();
        container.as_object_mut().expect("an object").extend(fields);
        let patch = json!({ "spec": { "containers": [container] } });
        env_of(&smp_ok(Kind::Pod, &pod(live), &patch.to_string()))
    };
    let n = |list: &[&str]| list.iter().map(|s| json!(s)).collect::<Vec<_>>();

    // Elements named by the order come in its order; new ones included.
    assert_eq!(
        run(
            &["1", "2"],
            json!({
                "$setElementOrder/env": [{"name":"4"},{"name":"1"},{"name":"2"},{"name":"3"}],
                "env": [{"name":"4"},{"name":"3"}]
            })
        ),
        n(&["4", "1", "2", "3"])
    );
    // Reordering without changing anything.
    assert_eq!(
        run(
            &["B", "A"],
            json!({ "$setElementOrder/env": [{"name":"A"},{"name":"B"}] })
        ),
        n(&["A", "B"])
    );
    // Names the list does not have are ignored.
    assert_eq!(
        run(
            &["1", "3"],
            json!({
                "$setElementOrder/env": [{"name":"3"},{"name":"2"},{"name":"1"}],
                "env": [{"name":"3","value":"x"},{"name":"1","value":"y"}]
            })
        ),
        n(&["3", "1"])
    );
    // Without an order, the patch's order wins and server-only elements keep their place
    // relative to the server's list.
    assert_eq!(
        run(
            &["1", "2", "3"],
            json!({ "env": [{"name":"3"},{"name":"1"}] })
        ),
        n(&["2", "3", "1"])
    );
    // A delete for a name that is not there, next to an addition.
    assert_eq!(
        run(
            &["hello2"],
            json!({
                "$setElementOrder/env": [{"name":"hello"},{"name":"doesntexist"}],
                "env": [{"name":"hello"},{"$patch":"delete","name":"doesntexist"}]
            })
        ),
        n(&["hello", "hello2"])
    );
}

#[test]
fn set_element_order_must_agree_with_the_patch() {
    let patch = r#"{"spec":{"template":{"spec":{
        "$setElementOrder/containers":[{"name":"a"},{"name":"b"}],
        "containers":[{"name":"b","image":"x"},{"name":"a","image":"y"}]}}}}"#;
    let e = smp(Kind::Deployment, &deployment(), patch).unwrap_err();
    assert_eq!(e.code, 400);
    assert!(e.message.contains("doesn't match"), "{}", e.message);
    assert!(
        e.message.contains("spec.template.spec.containers"),
        "{}",
        e.message
    );
}

#[test]
fn directives_in_new_fields_are_processed() {
    // The Deployment has no volumes yet: the list is taken from the patch, directives out.
    let patch = r#"{"spec":{"template":{"spec":{
        "$setElementOrder/volumes":[{"name":"data"}],
        "volumes":[{"name":"data","emptyDir":{}},{"name":"gone","$patch":"delete"}],
        "containers":[{"name":"hello-world","volumeMounts":[{"mountPath":"/data","name":"data"}]}]}}}}"#;
    let d = smp_ok(Kind::Deployment, &deployment(), patch);
    assert_eq!(
        d["spec"]["template"]["spec"]["volumes"],
        json!([{ "name": "data", "emptyDir": {} }])
    );
    assert_eq!(
        containers(&d)[0]["volumeMounts"],
        json!([{ "mountPath": "/data", "name": "data" }])
    );
    assert_no_directives(&d);
}

#[test]
fn strategic_errors() {
    let bad = |patch: &str| {
        let e = smp(Kind::Deployment, &deployment(), patch).unwrap_err();
        assert_eq!((e.code, e.reason), (400, "BadRequest"), "{patch}: {e}");
        e.message
    };
    let m = bad(r#"{"spec":"#);
    assert!(
        m.starts_with("invalid strategic merge patch: EOF while parsing"),
        "{m}"
    );
    let m = bad(r#"[{"op":"add"}]"#);
    assert!(m.contains("expected a JSON object, got an array"), "{m}");
    let m = bad(r#"{"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}"#);
    assert!(
        m.contains("does not contain declared merge key: name"),
        "{m}"
    );
    let m = bad(r#"{"spec":{"template":{"spec":{"containers":[{"$patch":"delete"}]}}}}"#);
    assert!(m.contains("merge key"), "{m}");
    let m = bad(r#"{"spec":{"$patch":"frobnicate"}}"#);
    assert!(m.contains("unknown patch type"), "{m}");
    let m = bad(r#"{"spec":{"$bogus":1}}"#);
    assert!(m.contains("unknown directive \"$bogus\""), "{m}");
    let m = bad(r#"{"spec":{"template":{"spec":{"containers":["x"]}}}}"#);
    assert!(m.contains("not all objects"), "{m}");
}

#[test]
fn merge_patch() {
    let d = apply_patch(
        Kind::Deployment,
        &deployment(),
        PatchType::Merge,
        br#"{"spec":{"replicas":2}}"#,
    )
    .unwrap();
    let mut expected = deployment();
    expected["spec"]["replicas"] = json!(2);
    assert_eq!(d, expected);

    // Lists are replaced wholesale, nulls delete.
    let d = apply_patch(
        Kind::Deployment,
        &deployment(),
        PatchType::Merge,
        br#"{"metadata":{"labels":{"tier":null}},"spec":{"template":{"spec":{"containers":[{"name":"x","image":"y"}]}}}}"#,
    )
    .unwrap();
    assert_eq!(d["metadata"]["labels"], json!({ "app": "hello-world" }));
    assert_eq!(containers(&d), &vec![json!({ "name": "x", "image": "y" })]);

    for body in [&br#"{"spec":"#[..], b"[1]", b"null"] {
        let e = apply_patch(Kind::Deployment, &deployment(), PatchType::Merge, body).unwrap_err();
        assert_eq!(e.code, 400, "{e}");
        assert!(e.message.starts_with("invalid merge patch: "), "{e}");
    }
}

#[test]
fn json_patch_operations() {
    let body = br#"[
        {"op":"test","path":"/spec/replicas","value":1},
        {"op":"replace","path":"/spec/replicas","value":5},
        {"op":"add","path":"/metadata/labels/track","value":"canary"},
        {"op":"remove","path":"/metadata/labels/tier"},
        {"op":"add","path":"/spec/template/spec/containers/0/env/-","value":{"name":"X","value":"1"}}
    ]"#;
    let d = apply_patch(Kind::Deployment, &deployment(), PatchType::Json, body).unwrap();
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(
        d["metadata"]["labels"],
        json!({ "app": "hello-world", "track": "canary" })
    );
    assert_eq!(
        names(&containers(&d)[0]["env"], "name"),
        [json!("PORT"), json!("MODE"), json!("X")]
    );
}

#[test]
fn json_patch_failures() {
    let failed = |body: &[u8]| {
        let e = apply_patch(Kind::Deployment, &deployment(), PatchType::Json, body).unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"), "{e}");
        assert!(
            e.message
                .starts_with("the server rejected our request due to an error in our request: "),
            "{e}"
        );
        e.message
    };
    let m = failed(br#"[{"op":"test","path":"/spec/replicas","value":7}]"#);
    assert!(m.contains("value did not match"), "{m}");
    let m = failed(br#"[{"op":"remove","path":"/spec/nosuch"}]"#);
    assert!(m.contains("/spec/nosuch"), "{m}");
    // A failed operation leaves nothing applied: the caller keeps its object.
    failed(br#"[{"op":"replace","path":"/spec/replicas","value":9},{"op":"test","path":"/x","value":1}]"#);

    for body in [
        &br#"[{"op":"add","path":"/a"}"#[..],
        br#"{"op":"add","path":"/a","value":1}"#,
        br#"[{"op":"frobnicate","path":"/a"}]"#,
        br#"[{"op":"add","value":1}]"#,
    ] {
        let e = apply_patch(Kind::Deployment, &deployment(), PatchType::Json, body).unwrap_err();
        assert_eq!((e.code, e.reason), (400, "BadRequest"), "{e}");
        assert!(e.message.starts_with("invalid JSON patch: "), "{e}");
    }

    // Replacing the whole object with something else is refused.
    let e = apply_patch(
        Kind::Deployment,
        &deployment(),
        PatchType::Json,
        br#"[{"op":"replace","path":"","value":[1]}]"#,
    )
    .unwrap_err();
    assert_eq!(e.code, 400);
    assert!(e.message.contains("not a JSON object"), "{e}");
}
