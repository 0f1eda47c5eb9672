//! Deployments, ReplicaSets, pod templates and containers.

use super::*;

#[test]
fn workload_selectors_are_required_valid_and_non_empty() {
    let errs = deployment_errors(|d| {
        d["spec"].as_object_mut().unwrap().remove("selector");
    });
    assert_eq!(errs, ["spec.selector: Required value"]);
    let errs = deployment_errors(|d| d["spec"]["selector"] = json!({}));
    assert_eq!(
        errs,
        [
            "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for deployment"
        ]
    );
    let errs = deployment_errors(|d| {
        d["spec"]["selector"] =
            json!({ "matchExpressions": [{ "key": "app", "operator": "Is", "values": ["x"] }] });
    });
    assert_eq!(
        errs,
        [
            r#"spec.selector.matchExpressions[0].operator: Invalid value: "Is": not a valid selector operator"#,
            r#"spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement{v1.LabelSelectorRequirement{Key:"app", Operator:"Is", Values:[]string{"x"}}}}: invalid label selector"#,
        ]
    );
    let errs = deployment_errors(|d| {
        d["spec"]["selector"] = json!({ "matchExpressions": [{ "key": "app", "operator": "In" }] });
    });
    assert_eq!(
        errs[0],
        "spec.selector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
    );
    let errs = deployment_errors(|d| {
        d["spec"]["selector"] = json!({ "matchExpressions": [{ "key": "app", "operator": "Exists", "values": ["x"] }] });
    });
    assert_eq!(
        errs[0],
        "spec.selector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
    );
}

#[test]
fn selector_expressions_select_like_kubernetes() {
    let ok = |exprs: Value| {
        deployment_errors(|d| d["spec"]["selector"] = json!({ "matchExpressions": exprs }))
            .is_empty()
    };
    assert!(ok(
        json!([{ "key": "app", "operator": "In", "values": ["a", "hello-world"] }])
    ));
    assert!(!ok(
        json!([{ "key": "app", "operator": "In", "values": ["a"] }])
    ));
    assert!(ok(
        json!([{ "key": "app", "operator": "NotIn", "values": ["a"] }])
    ));
    assert!(!ok(
        json!([{ "key": "app", "operator": "NotIn", "values": ["hello-world"] }])
    ));
    assert!(ok(json!([{ "key": "app", "operator": "Exists" }])));
    assert!(ok(json!([{ "key": "tier", "operator": "DoesNotExist" }])));
    assert!(!ok(json!([{ "key": "app", "operator": "DoesNotExist" }])));
}

#[test]
fn workload_counts_and_strategy_are_checked() {
    let errs = deployment_errors(|d| d["spec"]["replicas"] = json!(-1));
    assert_eq!(
        errs,
        ["spec.replicas: Invalid value: -1: must be greater than or equal to 0"]
    );
    assert!(deployment_errors(|d| d["spec"]["replicas"] = json!(0)).is_empty());
    let errs = deployment_errors(|d| {
        d["spec"]["strategy"]["rollingUpdate"] = json!({ "maxSurge": 0, "maxUnavailable": "0%" });
    });
    assert_eq!(
        errs,
        [
            r#"spec.strategy.rollingUpdate.maxUnavailable: Invalid value: intstr.IntOrString{Type:1, IntVal:0, StrVal:"0%"}: may not be 0 when `maxSurge` is 0"#
        ]
    );
    let errs = deployment_errors(|d| {
        d["spec"]["strategy"]["rollingUpdate"] =
            json!({ "maxSurge": "1", "maxUnavailable": "150%" });
    });
    assert_eq!(
        errs,
        [
            r#"spec.strategy.rollingUpdate.maxSurge: Invalid value: intstr.IntOrString{Type:1, IntVal:0, StrVal:"1"}: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"#,
            r#"spec.strategy.rollingUpdate.maxUnavailable: Invalid value: intstr.IntOrString{Type:1, IntVal:0, StrVal:"150%"}: must not be greater than 100%"#,
        ]
    );
    let errs = deployment_errors(|d| {
        d["spec"]["strategy"] = json!({ "type": "Recreate", "rollingUpdate": { "maxSurge": 1 } });
    });
    assert_eq!(
        errs,
        [
            "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'"
        ]
    );
    let errs = deployment_errors(|d| d["spec"]["strategy"] = json!({ "type": "BlueGreen" }));
    assert_eq!(
        errs,
        [
            r#"spec.strategy: Unsupported value: "BlueGreen": supported values: "Recreate", "RollingUpdate""#
        ]
    );
    let errs = deployment_errors(|d| d["spec"]["progressDeadlineSeconds"] = json!(5));
    assert!(errs.is_empty());
    let errs = deployment_errors(|d| {
        d["spec"]["minReadySeconds"] = json!(10);
        d["spec"]["progressDeadlineSeconds"] = json!(10);
    });
    assert_eq!(
        errs,
        ["spec.progressDeadlineSeconds: Invalid value: 10: must be greater than minReadySeconds"]
    );
}

#[test]
fn workload_pods_must_restart_always() {
    let errs =
        deployment_errors(|d| d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never"));
    assert_eq!(
        errs,
        [
            r#"spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always""#
        ]
    );
    let errs =
        deployment_errors(|d| d["spec"]["template"]["spec"]["restartPolicy"] = json!("Sometimes"));
    assert_eq!(
        errs,
        [
            r#"spec.template.spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never""#,
            r#"spec.template.spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always""#,
        ]
    );
}

#[test]
fn replica_sets_check_selector_template_and_replicas() {
    let mut rs = tutorial_deployment();
    rs["kind"] = json!("ReplicaSet");
    for key in [
        "strategy",
        "progressDeadlineSeconds",
        "revisionHistoryLimit",
    ] {
        rs["spec"].as_object_mut().unwrap().remove(key);
    }
    assert!(validate(Kind::ReplicaSet, &rs).is_empty());
    rs["spec"]["replicas"] = json!(-2);
    rs["spec"]["template"]["metadata"]["labels"] = json!({});
    assert_eq!(
        texts(&validate(Kind::ReplicaSet, &rs)),
        [
            "spec.replicas: Invalid value: -2: must be greater than or equal to 0",
            "spec.template.metadata.labels: Invalid value: map[string]string{}: `selector` does not match template `labels`",
        ]
    );
}

#[test]
fn containers_are_required_named_and_unique() {
    let errs = deployment_errors(|d| d["spec"]["template"]["spec"]["containers"] = json!([]));
    assert_eq!(errs, ["spec.template.spec.containers: Required value"]);
    let errs = container_errors(|c| c["name"] = json!("Hello_World"));
    assert_eq!(
        errs,
        [
            r#"spec.template.spec.containers[0].name: Invalid value: "Hello_World": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#
        ]
    );
    let errs = container_errors(|c| c["name"] = json!(""));
    assert_eq!(
        errs,
        ["spec.template.spec.containers[0].name: Required value"]
    );
    let errs = deployment_errors(|d| {
        let c = d["spec"]["template"]["spec"]["containers"][0].clone();
        d["spec"]["template"]["spec"]["containers"] = json!([c.clone(), c]);
        d["spec"]["template"]["spec"]["initContainers"] =
            json!([{ "name": "hello-world", "image": "busybox" }]);
    });
    assert_eq!(
        errs,
        [
            r#"spec.template.spec.containers[1].name: Duplicate value: "hello-world""#,
            r#"spec.template.spec.initContainers[0].name: Duplicate value: "hello-world""#,
        ]
    );
    let errs = container_errors(|c| c["image"] = json!(""));
    assert_eq!(
        errs,
        ["spec.template.spec.containers[0].image: Required value"]
    );
}

#[test]
fn container_ports_protocols_and_policies_are_checked() {
    let errs = container_errors(|c| c["ports"][0]["containerPort"] = json!(70000));
    assert_eq!(
        errs,
        [
            "spec.template.spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"
        ]
    );
    let errs = container_errors(|c| c["ports"][0]["containerPort"] = json!(0));
    assert_eq!(
        errs,
        ["spec.template.spec.containers[0].ports[0].containerPort: Required value"]
    );
    let errs = container_errors(|c| c["ports"][0]["protocol"] = json!("HTTP"));
    assert_eq!(
        errs,
        [
            r#"spec.template.spec.containers[0].ports[0].protocol: Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP""#
        ]
    );
    let errs = container_errors(|c| c["ports"][0]["hostPort"] = json!(-1));
    assert_eq!(
        errs,
        [
            "spec.template.spec.containers[0].ports[0].hostPort: Invalid value: -1: must be between 1 and 65535, inclusive"
        ]
    );
    let errs = container_errors(|c| {
        c["ports"] = json!([{ "name": "http", "containerPort": 80 }, { "name": "http", "containerPort": 81 },
                            { "name": "Web--", "containerPort": 82 }]);
    });
    assert_eq!(
        errs,
        [
            r#"spec.template.spec.containers[0].ports[1].name: Duplicate value: "http""#,
            r#"spec.template.spec.containers[0].ports[2].name: Invalid value: "Web--": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"#,
            r#"spec.template.spec.containers[0].ports[2].name: Invalid value: "Web--": must not contain consecutive hyphens"#,
            r#"spec.template.spec.containers[0].ports[2].name: Invalid value: "Web--": must not begin or end with a hyphen"#,
        ]
    );
    let errs = container_errors(|c| c["imagePullPolicy"] = json!("Sometimes"));
    assert_eq!(
        errs,
        [
            r#"spec.template.spec.containers[0].imagePullPolicy: Unsupported value: "Sometimes": supported values: "Always", "IfNotPresent", "Never""#
        ]
    );
    let errs = container_errors(|c| c["terminationMessagePolicy"] = json!("Log"));
    assert_eq!(
        errs,
        [
            r#"spec.template.spec.containers[0].terminationMessagePolicy: Unsupported value: "Log": supported values: "File", "FallbackToLogsOnError""#
        ]
    );
    let errs = container_errors(|c| c["env"] = json!([{ "value": "x" }]));
    assert_eq!(
        errs,
        ["spec.template.spec.containers[0].env[0].name: Required value"]
    );
    let errs = deployment_errors(|d| d["spec"]["template"]["spec"]["dnsPolicy"] = json!("Google"));
    assert_eq!(
        errs,
        [
            r#"spec.template.spec.dnsPolicy: Unsupported value: "Google": supported values: "ClusterFirstWithHostNet", "ClusterFirst", "Default", "None""#
        ]
    );
}

#[test]
fn pods_share_the_container_rules_and_may_restart_otherwise() {
    let pod = |spec: Value| {
        let pod = defaulted(
            Kind::Pod,
            json!({ "metadata": { "name": "p" }, "spec": spec }),
        );
        texts(&validate(Kind::Pod, &pod))
    };
    assert!(
        pod(json!({ "restartPolicy": "OnFailure", "containers": [{ "name": "c", "image": "i" }] }))
            .is_empty()
    );
    assert_eq!(pod(json!({})), ["spec.containers: Required value"]);
    assert_eq!(
        pod(
            json!({ "containers": [{ "name": "c", "image": "i", "ports": [{ "containerPort": 80, "protocol": "tcp" }] }] })
        ),
        [
            r#"spec.containers[0].ports[0].protocol: Unsupported value: "tcp": supported values: "SCTP", "TCP", "UDP""#
        ]
    );
}
