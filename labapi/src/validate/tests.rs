use super::*;
use crate::decode::tests::TUTORIAL_DEPLOYMENT;
use crate::decode::{FieldValidation, decode};
use crate::defaults::apply_defaults;
use crate::status::ApiError;

mod service;
mod workloads;

fn texts(causes: &[Cause]) -> Vec<String> {
    causes.iter().map(Cause::to_string).collect()
}

fn defaulted(kind: Kind, mut obj: Value) -> Value {
    apply_defaults(kind, &mut obj);
    obj
}

/// A defaulted Service named `name` with `spec`.
fn service(name: &str, spec: Value) -> Value {
    defaulted(
        Kind::Service,
        json!({ "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": name, "namespace": "default" }, "spec": spec }),
    )
}

fn service_errors(spec: Value) -> Vec<String> {
    texts(&validate(Kind::Service, &service("svc", spec)))
}

fn tutorial_deployment() -> Value {
    let (obj, _) = decode(
        Kind::Deployment,
        TUTORIAL_DEPLOYMENT.as_bytes(),
        FieldValidation::Strict,
    )
    .unwrap();
    let mut obj = defaulted(Kind::Deployment, obj);
    obj["metadata"]["namespace"] = json!("default");
    obj
}

/// The tutorial Deployment, changed by `edit` and defaulted again.
fn deployment_errors(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut d = tutorial_deployment();
    edit(&mut d);
    let d = defaulted(Kind::Deployment, d);
    texts(&validate(Kind::Deployment, &d))
}

fn container_errors(edit: impl FnOnce(&mut Value)) -> Vec<String> {
    deployment_errors(|d| edit(&mut d["spec"]["template"]["spec"]["containers"][0]))
}

// ---- what the tutorial does passes ----

#[test]
fn tutorial_objects_pass_after_defaults() {
    assert_eq!(
        texts(&validate(Kind::Deployment, &tutorial_deployment())),
        Vec::<String>::new()
    );
    for extra in [
        json!({}),
        json!({ "type": "NodePort" }),
        json!({ "type": "LoadBalancer" }),
    ] {
        let mut spec = json!({
            "ports": [{ "port": 80, "protocol": "TCP", "targetPort": 8080 }],
            "selector": { "app": "hello-world" }
        });
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let svc = service("hello-world", spec);
        assert_eq!(
            texts(&validate(Kind::Service, &svc)),
            Vec::<String>::new(),
            "{svc}"
        );
    }
    let ns = defaulted(
        Kind::Namespace,
        json!({ "metadata": { "name": "default" } }),
    );
    assert!(validate(Kind::Namespace, &ns).is_empty());
    let node = json!({ "metadata": { "name": "lab-worker.local" } });
    assert!(validate(Kind::Node, &node).is_empty());
    let pod = defaulted(
        Kind::Pod,
        json!({ "metadata": { "generateName": "hello-world-5d4b9c7f8-", "namespace": "default" },
                "spec": { "containers": [{ "name": "hello-world", "image": "hello-app:1.0",
                                           "ports": [{ "containerPort": 8080 }] }] } }),
    );
    assert!(validate(Kind::Pod, &pod).is_empty());
}

// ---- the messages the tutorial's mistakes produce ----

#[test]
fn out_of_range_service_port_reads_as_kubectl_prints_it() {
    let svc = service(
        "bad",
        json!({ "ports": [{ "port": 70000, "targetPort": 8080 }] }),
    );
    let causes = validate(Kind::Service, &svc);
    let e = ApiError::invalid(Kind::Service.info(), "bad", &causes);
    assert_eq!(
        e.message,
        r#"Service "bad" is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"#
    );
    assert_eq!(
        e.to_status()["details"]["causes"][0]["reason"],
        "FieldValueInvalid"
    );
}

#[test]
fn service_names_are_dns_1035_labels() {
    let svc = service("Hello_World", json!({ "ports": [{ "port": 80 }] }));
    assert_eq!(
        texts(&validate(Kind::Service, &svc)),
        [
            r#"metadata.name: Invalid value: "Hello_World": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"#
        ]
    );
    let svc = service("1st", json!({ "ports": [{ "port": 80 }] }));
    assert_eq!(validate(Kind::Service, &svc).len(), 1);
    let long = "a".repeat(64);
    let svc = service(&long, json!({ "ports": [{ "port": 80 }] }));
    assert_eq!(
        texts(&validate(Kind::Service, &svc)),
        [format!(
            r#"metadata.name: Invalid value: "{long}": must be no more than 63 characters"#
        )]
    );
}

#[test]
fn template_labels_must_match_the_selector() {
    let errs = deployment_errors(|d| {
        d["spec"]["template"]["metadata"]["labels"] = json!({ "app": "other", "tier": "web" });
    });
    assert_eq!(
        errs,
        [
            r#"spec.template.metadata.labels: Invalid value: map[string]string{"app":"other", "tier":"web"}: `selector` does not match template `labels`"#
        ]
    );
}

// ---- metadata ----

#[test]
fn object_names_follow_each_kinds_rule() {
    let errs = deployment_errors(|d| d["metadata"]["name"] = json!(""));
    assert_eq!(
        errs,
        ["metadata.name: Required value: name or generateName is required"]
    );
    let errs = deployment_errors(|d| d["metadata"]["name"] = json!("Hello"));
    assert_eq!(
        errs,
        [
            r#"metadata.name: Invalid value: "Hello": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"#
        ]
    );
    assert!(deployment_errors(|d| d["metadata"]["name"] = json!("hello.world")).is_empty());
    let ns = defaulted(Kind::Namespace, json!({ "metadata": { "name": "a.b" } }));
    assert_eq!(
        texts(&validate(Kind::Namespace, &ns)),
        [r#"metadata.name: Invalid value: "a.b": must not contain dots"#]
    );
    let ns = defaulted(Kind::Namespace, json!({ "metadata": { "name": "Lab" } }));
    assert_eq!(
        texts(&validate(Kind::Namespace, &ns)),
        [
            r#"metadata.name: Invalid value: "Lab": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#
        ]
    );
    let long = "a".repeat(254);
    let event = json!({ "metadata": { "name": long, "namespace": "default" } });
    assert_eq!(
        texts(&validate(Kind::Event, &event)),
        [format!(
            r#"metadata.name: Invalid value: "{long}": must be no more than 253 characters"#
        )]
    );
}

#[test]
fn generate_name_and_namespace_are_checked() {
    let pod = |meta: Value| {
        let pod = defaulted(
            Kind::Pod,
            json!({ "metadata": meta, "spec": { "containers": [{ "name": "c", "image": "i" }] } }),
        );
        texts(&validate(Kind::Pod, &pod))
    };
    assert!(pod(json!({ "generateName": "web-" })).is_empty());
    assert_eq!(pod(json!({ "generateName": "Web-" })).len(), 1);
    assert!(
        pod(json!({ "generateName": "Web-" }))[0]
            .starts_with("metadata.generateName: Invalid value: \"Web-\"")
    );
    assert_eq!(
        pod(json!({ "name": "p", "namespace": "Bad" }))[0],
        r#"metadata.namespace: Invalid value: "Bad": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#
    );
}

#[test]
fn labels_and_annotations_are_qualified_names_and_label_values() {
    let errs = deployment_errors(|d| {
        d["metadata"]["labels"] =
            json!({ "bad key": "ok", "example.com/ok": "-bad", "a/b/c": "x" });
    });
    assert_eq!(
        errs,
        [
            r#"metadata.labels: Invalid value: "a/b/c": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"#,
            r#"metadata.labels: Invalid value: "bad key": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#,
            r#"metadata.labels: Invalid value: "-bad": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"#,
        ]
    );
    let errs = deployment_errors(|d| d["metadata"]["labels"] = json!({ "k": "v".repeat(64) }));
    assert_eq!(
        errs,
        [format!(
            r#"metadata.labels: Invalid value: "{}": must be no more than 63 characters"#,
            "v".repeat(64)
        )]
    );
    let errs = deployment_errors(|d| d["metadata"]["labels"] = json!({ "/k": "" }));
    assert_eq!(
        errs,
        [r#"metadata.labels: Invalid value: "/k": prefix part must be non-empty"#]
    );
    // Annotation keys may use capitals; their total size is capped at 256 KiB.
    assert!(
        deployment_errors(|d| d["metadata"]["annotations"] = json!({ "Example.COM/Key": "v" }))
            .is_empty()
    );
    let errs = deployment_errors(|d| {
        d["metadata"]["annotations"] = json!({ "big": "x".repeat(256 * 1024) });
    });
    assert_eq!(
        errs,
        ["metadata.annotations: Too long: may not be more than 262144 bytes"]
    );
    let errs = deployment_errors(|d| {
        d["spec"]["template"]["metadata"]["annotations"] = json!({ "a b": "x" });
    });
    assert!(
        errs[0]
            .starts_with(r#"spec.template.metadata.annotations: Invalid value: "a b": name part"#)
    );
}

// ---- endpoint slices ----

fn slice_errors(slice: Value) -> Vec<String> {
    let mut slice = defaulted(Kind::EndpointSlice, slice);
    slice["metadata"] = json!({ "name": "hello-world-abcde", "namespace": "default" });
    texts(&validate(Kind::EndpointSlice, &slice))
}

#[test]
fn endpoint_slices_check_address_types_addresses_and_ports() {
    let good = json!({
        "addressType": "IPv4",
        "endpoints": [{ "addresses": ["10.244.1.2"], "conditions": { "ready": true }, "nodeName": "lab-worker" }],
        "ports": [{ "name": "", "port": 8080, "protocol": "TCP" }]
    });
    assert!(slice_errors(good.clone()).is_empty());
    assert_eq!(
        slice_errors(json!({ "addressType": "IPX" })),
        [r#"addressType: Unsupported value: "IPX": supported values: "FQDN", "IPv4", "IPv6""#]
    );
    assert_eq!(slice_errors(json!({})), ["addressType: Required value"]);
    let mut bad = good.clone();
    bad["endpoints"] = json!([
        { "addresses": ["10.244.1.300", "fd00::1", "127.0.0.1", "169.254.1.1"] },
        { "addresses": [] }
    ]);
    assert_eq!(
        slice_errors(bad),
        [
            r#"endpoints[0].addresses[0]: Invalid value: "10.244.1.300": must be a valid IPv4 address"#,
            r#"endpoints[0].addresses[1]: Invalid value: "fd00::1": must be a valid IPv4 address"#,
            r#"endpoints[0].addresses[2]: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#,
            r#"endpoints[0].addresses[3]: Invalid value: "169.254.1.1": may not be in the link-local range (169.254.0.0/16, fe80::/10)"#,
            "endpoints[1].addresses: Required value: must contain at least 1 address",
        ]
    );
    let mut v6 = good.clone();
    v6["addressType"] = json!("IPv6");
    v6["endpoints"][0]["addresses"] = json!(["fd00::1", "10.0.0.1"]);
    assert_eq!(
        slice_errors(v6),
        [r#"endpoints[0].addresses[1]: Invalid value: "10.0.0.1": must be a valid IPv6 address"#]
    );
    let mut fqdn = good.clone();
    fqdn["addressType"] = json!("FQDN");
    fqdn["endpoints"][0]["addresses"] = json!(["example.com", "localhost"]);
    assert_eq!(
        slice_errors(fqdn),
        [
            r#"endpoints[0].addresses[1]: Invalid value: "localhost": should be a domain with at least two segments separated by dots"#
        ]
    );
    let mut many = good.clone();
    many["endpoints"][0]["addresses"] = json!(vec!["10.244.1.2"; 101]);
    assert_eq!(
        slice_errors(many),
        ["endpoints[0].addresses: Too many: 101: must have at most 100 items"]
    );
    let mut ports = good;
    ports["ports"] =
        json!([{ "name": "http", "port": 80 }, { "name": "http", "port": 81, "protocol": "ICMP" }]);
    assert_eq!(
        slice_errors(ports),
        [
            r#"ports[1].name: Duplicate value: "http""#,
            r#"ports[1].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#,
        ]
    );
}

// ---- updates ----

#[test]
fn an_allocated_cluster_ip_may_not_change() {
    let old = service(
        "web",
        json!({ "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [{ "port": 80 }] }),
    );
    let mut new = old.clone();
    assert!(validate_update(Kind::Service, &old, &new).is_empty());
    new["spec"]["clusterIP"] = json!("10.96.0.11");
    new["spec"]["clusterIPs"] = json!(["10.96.0.11"]);
    assert_eq!(
        texts(&validate_update(Kind::Service, &old, &new)),
        [r#"spec.clusterIPs[0]: Invalid value: []string{"10.96.0.11"}: may not change once set"#]
    );
    let mut carried = old.clone();
    carried["spec"].as_object_mut().unwrap().remove("clusterIP");
    carried["spec"]
        .as_object_mut()
        .unwrap()
        .remove("clusterIPs");
    assert!(validate_update(Kind::Service, &old, &carried).is_empty());
    let mut external = old.clone();
    external["spec"] = json!({ "type": "ExternalName", "externalName": "example.com",
                               "sessionAffinity": "None" });
    assert!(validate_update(Kind::Service, &old, &external).is_empty());
}

#[test]
fn a_pod_may_change_only_its_images_deadline_grace_period_and_added_tolerations() {
    let old = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "bad", "namespace": "default" },
        "spec": {
            "containers": [{ "name": "web", "image": "nginx" }],
            "nodeName": "lab-worker",
            "tolerations": [{ "key": "a", "operator": "Exists" }],
        },
    });
    let mut old = old;
    apply_defaults(Kind::Pod, &mut old);
    let mut new = old.clone();
    new["spec"]["containers"][0]["image"] = json!("gcr.io/google-samples/hello-app:1.0");
    new["spec"]["activeDeadlineSeconds"] = json!(60);
    new["spec"]["tolerations"] = json!([
        { "key": "a", "operator": "Exists" },
        { "key": "b", "operator": "Exists" },
    ]);
    assert_eq!(
        texts(&validate_update(Kind::Pod, &old, &new)),
        Vec::<String>::new()
    );
    // Defaults first, as the API server applies them before it validates.
    let forbidden = |new: &Value| {
        let mut new = new.clone();
        apply_defaults(Kind::Pod, &mut new);
        texts(&validate_update(Kind::Pod, &old, &new))
    };
    let message = "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";
    // A container more (what `kubectl apply` of another container name merges into).
    let mut added = old.clone();
    added["spec"]["containers"] =
        json!([{ "name": "web", "image": "nginx" }, { "name": "web2", "image": "nginx" }]);
    assert_eq!(forbidden(&added), [message]);
    let mut renamed = old.clone();
    renamed["spec"]["containers"][0]["name"] = json!("web2");
    assert_eq!(forbidden(&renamed), [message]);
    let mut removed = old.clone();
    removed["spec"]["tolerations"] = json!([]);
    assert_eq!(forbidden(&removed), [message]);
    let mut moved = old.clone();
    moved["spec"]["nodeName"] = json!("lab-worker2");
    assert_eq!(forbidden(&moved), [message]);
}

#[test]
fn a_workload_selector_may_not_change() {
    let old = tutorial_deployment();
    let mut new = old.clone();
    new["spec"]["replicas"] = json!(3);
    assert!(validate_update(Kind::Deployment, &old, &new).is_empty());
    new["spec"]["selector"]["matchExpressions"] = json!([]);
    assert!(validate_update(Kind::Deployment, &old, &new).is_empty());
    new["spec"]["selector"] = json!({ "matchLabels": { "app": "other" } });
    new["spec"]["template"]["metadata"]["labels"] = json!({ "app": "other" });
    assert_eq!(
        texts(&validate_update(Kind::Deployment, &old, &new)),
        [
            r#"spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{"app":"other"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"#
        ]
    );
    let mut bad = old.clone();
    bad["spec"]["replicas"] = json!(-1);
    assert_eq!(validate_update(Kind::ReplicaSet, &old, &bad).len(), 1);
}
