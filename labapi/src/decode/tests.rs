use super::*;

pub(crate) const TUTORIAL_DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello-world
spec:
  selector:
    matchLabels:
      app: hello-world
  replicas: 1
  template:
    metadata:
      labels:
        app: hello-world
    spec:
      containers:
        - name: hello-world
          image: gcr.io/google-samples/hello-app:1.0
          ports:
            - containerPort: 8080
              protocol: TCP
";

fn strict(kind: Kind, body: &Value) -> Result<(Value, Vec<String>), ApiError> {
    decode(kind, body.to_string().as_bytes(), FieldValidation::Strict)
}

fn deployment_with(spec_extra: Value) -> Value {
    let mut d: Value = serde_yaml::from_str(TUTORIAL_DEPLOYMENT).unwrap();
    for (k, v) in spec_extra.as_object().unwrap() {
        d["spec"][k] = v.clone();
    }
    d
}

#[test]
fn field_validation_defaults_to_warn_and_rejects_unknown_values() {
    assert_eq!(FieldValidation::from_query(None), Ok(FieldValidation::Warn));
    assert_eq!(
        FieldValidation::from_query(Some("")),
        Ok(FieldValidation::Warn)
    );
    assert_eq!(
        FieldValidation::from_query(Some("Strict")),
        Ok(FieldValidation::Strict)
    );
    assert_eq!(
        FieldValidation::from_query(Some("Ignore")),
        Ok(FieldValidation::Ignore)
    );
    let e = FieldValidation::from_query(Some("strict")).unwrap_err();
    assert_eq!(e.code, 422);
    assert_eq!(
        e.message,
        r#"CreateOptions.meta.k8s.io "" is invalid: fieldValidation: Unsupported value: "strict": supported values: "", "Ignore", "Strict", "Warn""#
    );
    let e = FieldValidation::from_query_for(Some("x"), "PatchOptions").unwrap_err();
    assert!(
        e.message
            .starts_with(r#"PatchOptions.meta.k8s.io "" is invalid"#)
    );
    assert_eq!(
        e.to_status()["details"]["causes"][0]["field"],
        "fieldValidation"
    );
}

#[test]
fn tutorial_deployment_yaml_decodes_unchanged_without_warnings() {
    let (obj, warnings) = decode(
        Kind::Deployment,
        TUTORIAL_DEPLOYMENT.as_bytes(),
        FieldValidation::Strict,
    )
    .unwrap();
    assert!(warnings.is_empty());
    let parsed: Value = serde_yaml::from_str(TUTORIAL_DEPLOYMENT).unwrap();
    assert_eq!(obj, parsed);
}

#[test]
fn strict_rejects_an_unknown_field_in_kube_apiservers_words() {
    let body = deployment_with(json!({ "replicass": 3 }));
    let e = strict(Kind::Deployment, &body).unwrap_err();
    assert_eq!(e.code, 400);
    assert_eq!(e.reason, "BadRequest");
    assert_eq!(
        e.message,
        r#"Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: unknown field "spec.replicass""#
    );
}

#[test]
fn strict_lists_every_unknown_field_with_list_indexes() {
    let mut body = deployment_with(json!({ "replicass": 3 }));
    body["spec"]["template"]["spec"]["containers"][0]["imagee"] = json!("x");
    body["extra"] = json!({ "a": 1 });
    let e = strict(Kind::Deployment, &body).unwrap_err();
    assert_eq!(
        e.message,
        r#"Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: unknown field "extra", unknown field "spec.replicass", unknown field "spec.template.spec.containers[0].imagee""#
    );
}

#[test]
fn warn_drops_unknown_fields_and_reports_them() {
    let mut body = deployment_with(json!({ "replicass": 3 }));
    body["spec"]["template"]["spec"]["containers"][0]["ports"][0]["hostPortt"] = json!(1);
    let (obj, warnings) = decode(
        Kind::Deployment,
        body.to_string().as_bytes(),
        FieldValidation::Warn,
    )
    .unwrap();
    assert_eq!(
        warnings,
        [
            r#"unknown field "spec.replicass""#,
            r#"unknown field "spec.template.spec.containers[0].ports[0].hostPortt""#
        ]
    );
    assert_eq!(
        obj,
        serde_yaml::from_str::<Value>(TUTORIAL_DEPLOYMENT).unwrap()
    );
}

#[test]
fn ignore_drops_unknown_fields_silently() {
    let body = deployment_with(json!({ "replicass": 3 }));
    let (obj, warnings) = decode(
        Kind::Deployment,
        body.to_string().as_bytes(),
        FieldValidation::Ignore,
    )
    .unwrap();
    assert!(warnings.is_empty());
    assert!(obj["spec"].get("replicass").is_none());
}

#[test]
fn empty_maps_and_lists_of_known_fields_are_not_unknown() {
    // Guards the premise of the round-trip test: k8s-openapi keeps `Some(empty)` fields.
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "p", "labels": {}, "annotations": {}, "finalizers": [] },
        "spec": {
            "containers": [{ "name": "c", "image": "i", "resources": {}, "ports": [], "env": [] }],
            "securityContext": {}, "volumes": [], "tolerations": [], "nodeSelector": {}
        },
        "status": {}
    });
    let (obj, warnings) = strict(Kind::Pod, &pod).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(obj, pod);
    let svc = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": { "name": "s" },
        "spec": { "selector": {}, "ports": [] }, "status": { "loadBalancer": {} }
    });
    assert_eq!(strict(Kind::Service, &svc).unwrap().0, svc);
}

#[test]
fn opaque_maps_keep_every_key() {
    let body = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": "s",
            "labels": { "example.com/anything": "x" },
            "managedFields": [{
                "manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1",
                "fieldsV1": { "f:spec": { "f:ports": { ".": {} } } }
            }]
        },
        "spec": { "ports": [{ "port": 80, "targetPort": "http" }] }
    });
    let (obj, warnings) = strict(Kind::Service, &body).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(obj, body);
}

#[test]
fn kubectl_expose_body_decodes_and_loses_its_nulls() {
    let body = br#"{"apiVersion":"v1","kind":"Service","metadata":{"creationTimestamp":null,"name":"hello-world"},"spec":{"ports":[{"port":80,"protocol":"TCP","targetPort":8080}],"selector":{"app":"hello-world"}},"status":{"loadBalancer":{}}}"#;
    let (obj, warnings) = decode(Kind::Service, body, FieldValidation::Warn).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(obj["metadata"], json!({ "name": "hello-world" }));
    assert_eq!(obj["spec"]["ports"][0]["targetPort"], 8080);
}

#[test]
fn missing_kind_and_api_version_come_from_the_url() {
    let (obj, _) = strict(Kind::Deployment, &json!({ "metadata": { "name": "x" } })).unwrap();
    assert_eq!(obj["kind"], "Deployment");
    assert_eq!(obj["apiVersion"], "apps/v1");
    let (obj, _) = strict(
        Kind::Service,
        &json!({ "kind": "Service", "apiVersion": "" }),
    )
    .unwrap();
    assert_eq!(obj["apiVersion"], "v1");
}

#[test]
fn a_body_of_another_version_or_kind_is_a_bad_request() {
    let e = strict(
        Kind::Service,
        &json!({ "apiVersion": "apps/v1", "kind": "Service" }),
    )
    .unwrap_err();
    assert_eq!(e.code, 400);
    assert_eq!(
        e.message,
        "the API version in the data (apps/v1) does not match the expected API version (v1)"
    );
    let e = strict(
        Kind::Service,
        &json!({ "apiVersion": "apps/v1", "kind": "Deployment" }),
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        r#"Deployment in version "v1" cannot be handled as a Service: converting (v1.Deployment) to (core.Service): unknown conversion"#
    );
    let e = strict(
        Kind::Deployment,
        &json!({ "apiVersion": "apps/v1", "kind": "Service" }),
    )
    .unwrap_err();
    assert_eq!(
        e.message,
        r#"Service in version "v1" cannot be handled as a Deployment: no kind "Service" is registered for version "apps/v1" in scheme "pkg/api/legacyscheme/scheme.go:30""#
    );
}

#[test]
fn malformed_bodies_are_bad_requests_that_name_the_problem() {
    let e = decode(Kind::Deployment, b"", FieldValidation::Strict).unwrap_err();
    assert_eq!(
        e.message,
        "the object provided is unrecognized (must be of type Deployment): couldn't get version/kind; json parse error: unexpected end of JSON input (<empty>)"
    );
    let e = decode(Kind::Deployment, br#"{"spec": "#, FieldValidation::Strict).unwrap_err();
    assert_eq!(e.code, 400);
    assert!(
        e.message.starts_with(
            "the object provided is unrecognized (must be of type Deployment): couldn't get version/kind; json parse error: EOF while parsing"
        ),
        "{}",
        e.message
    );
    assert!(e.message.ends_with(r#"({"spec": )"#), "{}", e.message);
    let e = decode(Kind::Deployment, b"[1,2]", FieldValidation::Strict).unwrap_err();
    assert!(
        e.message.contains("cannot unmarshal array into Go value"),
        "{}",
        e.message
    );
    assert!(e.message.ends_with("(5b312c325d)"), "{}", e.message);
    let e = decode(Kind::Deployment, b"a: b\n c: d:\n", FieldValidation::Strict).unwrap_err();
    assert!(e.message.contains("): yaml: "), "{}", e.message);
}

#[test]
fn a_wrongly_typed_field_names_the_kind_and_the_decoder_error() {
    let body = deployment_with(json!({ "replicas": "one" }));
    let e = strict(Kind::Deployment, &body).unwrap_err();
    assert_eq!(e.code, 400);
    assert!(
        e.message
            .starts_with(r#"Deployment in version "v1" cannot be handled as a Deployment: invalid type: string "one""#),
        "{}",
        e.message
    );
}

#[test]
fn every_kind_round_trips_its_own_minimal_object() {
    for info in Kind::all() {
        let body = json!({ "metadata": { "name": "x" } });
        let (obj, warnings) = strict(info.kind, &body).unwrap();
        assert!(warnings.is_empty(), "{:?}", info.kind);
        assert_eq!(obj["kind"], info.kind_name);
    }
}

#[test]
fn typed_reads_objects_and_words_failures_as_decode_errors() {
    use k8s_openapi::api::apps::v1::Deployment;
    let d: Value = serde_yaml::from_str(TUTORIAL_DEPLOYMENT).unwrap();
    let typed_d: Deployment = typed(&d).unwrap();
    assert_eq!(typed_d.spec.unwrap().replicas, Some(1));
    let svc = json!({ "apiVersion": "v1", "kind": "Service" });
    let e = typed::<Deployment>(&svc).unwrap_err();
    assert_eq!(e.code, 400);
    assert!(
        e.message
            .starts_with(r#"Service in version "v1" cannot be handled as a Deployment: "#),
        "{}",
        e.message
    );
}

#[test]
fn a_non_string_kind_is_unrecognized() {
    let e = strict(Kind::Service, &json!({ "kind": 7 })).unwrap_err();
    assert_eq!(
        e.message,
        r#"the object provided is unrecognized (must be of type Service): couldn't get version/kind; json parse error: json: cannot unmarshal number into Go struct field .kind of type string ({"kind":7})"#
    );
}
