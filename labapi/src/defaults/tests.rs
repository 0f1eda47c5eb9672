use super::*;
use crate::decode::tests::TUTORIAL_DEPLOYMENT;

fn defaulted(kind: Kind, mut obj: Value) -> Value {
    apply_defaults(kind, &mut obj);
    let once = obj.clone();
    apply_defaults(kind, &mut obj);
    assert_eq!(obj, once, "defaults of {kind:?} are not idempotent");
    obj
}

#[test]
fn tutorial_deployment_gets_what_the_real_server_shows() {
    let d = defaulted(
        Kind::Deployment,
        serde_yaml::from_str(TUTORIAL_DEPLOYMENT).unwrap(),
    );
    let expected = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "hello-world" },
        "spec": {
            "progressDeadlineSeconds": 600,
            "replicas": 1,
            "revisionHistoryLimit": 10,
            "selector": { "matchLabels": { "app": "hello-world" } },
            "strategy": {
                "rollingUpdate": { "maxSurge": "25%", "maxUnavailable": "25%" },
                "type": "RollingUpdate"
            },
            "template": {
                "metadata": { "creationTimestamp": null, "labels": { "app": "hello-world" } },
                "spec": {
                    "containers": [{
                        "image": "gcr.io/google-samples/hello-app:1.0",
                        "imagePullPolicy": "IfNotPresent",
                        "name": "hello-world",
                        "ports": [{ "containerPort": 8080, "protocol": "TCP" }],
                        "resources": {},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File"
                    }],
                    "dnsPolicy": "ClusterFirst",
                    "restartPolicy": "Always",
                    "schedulerName": "default-scheduler",
                    "securityContext": {},
                    "terminationGracePeriodSeconds": 30
                }
            }
        }
    });
    assert_eq!(d, expected);
}

#[test]
fn deployment_keeps_what_the_client_set() {
    let d = defaulted(
        Kind::Deployment,
        json!({ "spec": {
            "replicas": 0,
            "strategy": { "type": "Recreate" },
            "revisionHistoryLimit": 0,
            "template": { "spec": { "restartPolicy": "Never", "dnsPolicy": "Default" } }
        }}),
    );
    assert_eq!(d["spec"]["replicas"], 0);
    assert_eq!(d["spec"]["revisionHistoryLimit"], 0);
    assert_eq!(d["spec"]["strategy"], json!({ "type": "Recreate" }));
    assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Never");
    assert_eq!(d["spec"]["template"]["spec"]["dnsPolicy"], "Default");
    let d = defaulted(
        Kind::Deployment,
        json!({ "spec": { "strategy": { "rollingUpdate": { "maxSurge": 1 } } } }),
    );
    assert_eq!(
        d["spec"]["strategy"],
        json!({ "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 1, "maxUnavailable": "25%" } })
    );
}

#[test]
fn replica_set_gets_replicas_and_pod_template_defaults() {
    let rs = defaulted(
        Kind::ReplicaSet,
        json!({ "spec": { "template": { "spec": { "containers": [{ "name": "c", "image": "nginx" }] } } } }),
    );
    assert_eq!(rs["spec"]["replicas"], 1);
    assert!(rs["spec"].get("strategy").is_none());
    let c = &rs["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["imagePullPolicy"], "Always");
    assert!(
        rs["spec"]["template"]["spec"]
            .get("enableServiceLinks")
            .is_none()
    );
}

#[test]
fn image_pull_policy_follows_the_tag() {
    for (image, policy) in [
        ("nginx", "Always"),
        ("nginx:latest", "Always"),
        ("localhost:5000/nginx", "Always"),
        ("localhost:5000/nginx:1.27", "IfNotPresent"),
        ("gcr.io/google-samples/hello-app:1.0", "IfNotPresent"),
        ("nginx@sha256:0123456789abcdef", "IfNotPresent"),
        ("nginx:latest@sha256:0123456789abcdef", "Always"),
        ("", "IfNotPresent"),
    ] {
        let pod = defaulted(
            Kind::Pod,
            json!({ "spec": { "containers": [{ "name": "c", "image": image }] } }),
        );
        assert_eq!(
            pod["spec"]["containers"][0]["imagePullPolicy"], policy,
            "{image}"
        );
    }
    let pod = defaulted(
        Kind::Pod,
        json!({ "spec": { "containers": [{ "name": "c", "image": "nginx", "imagePullPolicy": "Never" }] } }),
    );
    assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Never");
}

#[test]
fn pods_get_pod_only_defaults() {
    let pod = defaulted(
        Kind::Pod,
        json!({ "spec": {
            "hostNetwork": true,
            "initContainers": [{ "name": "init", "image": "busybox:1.36" }],
            "containers": [{
                "name": "c", "image": "nginx:1",
                "ports": [{ "containerPort": 80 }],
                "resources": { "limits": { "cpu": "1" }, "requests": { "memory": "1Mi" } },
                "env": [{ "name": "N", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                "readinessProbe": { "httpGet": { "port": 80 } }
            }],
            "volumes": [{ "name": "v", "configMap": { "name": "cm" } }]
        }}),
    );
    let spec = &pod["spec"];
    assert_eq!(spec["enableServiceLinks"], true);
    assert_eq!(spec["priority"], 0);
    assert_eq!(spec["preemptionPolicy"], "PreemptLowerPriority");
    assert_eq!(spec["initContainers"][0]["imagePullPolicy"], "IfNotPresent");
    let c = &spec["containers"][0];
    assert_eq!(
        c["ports"][0],
        json!({ "containerPort": 80, "protocol": "TCP", "hostPort": 80 })
    );
    assert_eq!(
        c["resources"],
        json!({ "limits": { "cpu": "1" }, "requests": { "cpu": "1", "memory": "1Mi" } })
    );
    assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
    assert_eq!(
        c["readinessProbe"],
        json!({
            "httpGet": { "port": 80, "path": "/", "scheme": "HTTP" },
            "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3
        })
    );
    assert_eq!(spec["volumes"][0]["configMap"]["defaultMode"], 420);
    let pod = defaulted(
        Kind::Pod,
        json!({ "spec": { "priorityClassName": "high" } }),
    );
    assert!(pod["spec"].get("priority").is_none());
}

#[test]
fn expose_service_gets_cluster_ip_defaults() {
    let svc = defaulted(
        Kind::Service,
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": { "name": "hello-world" },
            "spec": { "ports": [{ "port": 80, "protocol": "TCP", "targetPort": 8080 }],
                      "selector": { "app": "hello-world" } },
            "status": { "loadBalancer": {} }
        }),
    );
    assert_eq!(
        svc["spec"],
        json!({
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{ "port": 80, "protocol": "TCP", "targetPort": 8080 }],
            "selector": { "app": "hello-world" },
            "sessionAffinity": "None",
            "type": "ClusterIP"
        })
    );
    assert_eq!(svc["status"], json!({ "loadBalancer": {} }));
}

#[test]
fn service_ports_default_protocol_and_target_port() {
    let svc = defaulted(
        Kind::Service,
        json!({ "spec": { "ports": [
            { "port": 80 }, { "port": 81, "targetPort": 0 }, { "port": 82, "targetPort": "" },
            { "port": 83, "targetPort": "http", "protocol": "UDP" }
        ] } }),
    );
    let ports = &svc["spec"]["ports"];
    assert_eq!(
        ports[0],
        json!({ "port": 80, "protocol": "TCP", "targetPort": 80 })
    );
    assert_eq!(ports[1]["targetPort"], 81);
    assert_eq!(ports[2]["targetPort"], 82);
    assert_eq!(
        ports[3],
        json!({ "port": 83, "protocol": "UDP", "targetPort": "http" })
    );
    assert_eq!(svc["status"], json!({ "loadBalancer": {} }));
}

#[test]
fn node_port_and_load_balancer_services_get_external_defaults() {
    let np = defaulted(
        Kind::Service,
        json!({ "spec": { "type": "NodePort", "ports": [{ "port": 8080 }] } }),
    );
    assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");
    assert!(np["spec"].get("allocateLoadBalancerNodePorts").is_none());
    let lb = defaulted(
        Kind::Service,
        json!({
            "spec": { "type": "LoadBalancer", "ports": [{ "port": 80 }] },
            "status": { "loadBalancer": { "ingress": [{ "ip": "172.18.255.200" }] } }
        }),
    );
    assert_eq!(lb["spec"]["externalTrafficPolicy"], "Cluster");
    assert_eq!(lb["spec"]["allocateLoadBalancerNodePorts"], true);
    assert_eq!(lb["spec"]["internalTrafficPolicy"], "Cluster");
    assert_eq!(lb["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP");
    let cip = defaulted(
        Kind::Service,
        json!({ "spec": { "ports": [{ "port": 80 }] } }),
    );
    assert!(cip["spec"].get("externalTrafficPolicy").is_none());
    let ext = defaulted(
        Kind::Service,
        json!({ "spec": { "ports": [{ "port": 80 }], "externalIPs": ["192.0.2.1"] } }),
    );
    assert_eq!(ext["spec"]["externalTrafficPolicy"], "Cluster");
}

#[test]
fn external_name_services_get_no_ip_families() {
    let svc = defaulted(
        Kind::Service,
        json!({ "spec": { "type": "ExternalName", "externalName": "example.com" } }),
    );
    assert!(svc["spec"].get("ipFamilies").is_none());
    assert!(svc["spec"].get("ipFamilyPolicy").is_none());
    assert!(svc["spec"].get("internalTrafficPolicy").is_none());
}

#[test]
fn session_affinity_config_follows_the_affinity() {
    let svc = defaulted(
        Kind::Service,
        json!({ "spec": { "sessionAffinity": "ClientIP", "ports": [{ "port": 80 }] } }),
    );
    assert_eq!(
        svc["spec"]["sessionAffinityConfig"],
        json!({ "clientIP": { "timeoutSeconds": 10800 } })
    );
    let svc = defaulted(
        Kind::Service,
        json!({ "spec": { "sessionAffinity": "ClientIP",
                          "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": 60 } } } }),
    );
    assert_eq!(
        svc["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
        60
    );
    let svc = defaulted(
        Kind::Service,
        json!({ "spec": { "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": 60 } } } }),
    );
    assert!(svc["spec"].get("sessionAffinityConfig").is_none());
}

#[test]
fn namespace_gets_finalizer_phase_and_name_label() {
    let ns = defaulted(
        Kind::Namespace,
        json!({ "metadata": { "name": "lab", "labels": { "kubernetes.io/metadata.name": "other" } } }),
    );
    assert_eq!(
        ns,
        json!({
            "metadata": { "name": "lab", "labels": { "kubernetes.io/metadata.name": "lab" } },
            "spec": { "finalizers": ["kubernetes"] },
            "status": { "phase": "Active" }
        })
    );
    let ns = defaulted(
        Kind::Namespace,
        json!({ "metadata": { "name": "x" }, "spec": { "finalizers": [] } }),
    );
    assert_eq!(ns["spec"]["finalizers"], json!([]));
}

#[test]
fn endpoint_slices_and_endpoints_get_port_defaults() {
    let slice = defaulted(
        Kind::EndpointSlice,
        json!({
            "addressType": "IPv4",
            "endpoints": [{ "addresses": ["10.244.1.2"], "conditions": { "ready": true } }],
            "ports": [{ "port": 8080 }, { "name": "dns", "port": 53, "protocol": "UDP" }]
        }),
    );
    assert_eq!(
        slice["ports"][0],
        json!({ "name": "", "port": 8080, "protocol": "TCP" })
    );
    assert_eq!(slice["ports"][1]["protocol"], "UDP");
    assert_eq!(
        slice["endpoints"][0]["conditions"],
        json!({ "ready": true })
    );
    let ep = defaulted(
        Kind::Endpoints,
        json!({ "subsets": [{ "ports": [{ "port": 8080 }] }] }),
    );
    assert_eq!(ep["subsets"][0]["ports"][0]["protocol"], "TCP");
}

#[test]
fn nodes_copy_capacity_to_allocatable_and_events_are_untouched() {
    let node = defaulted(
        Kind::Node,
        json!({ "status": { "capacity": { "cpu": "2" } } }),
    );
    assert_eq!(node["status"]["allocatable"], json!({ "cpu": "2" }));
    let event = json!({ "metadata": { "name": "e" }, "reason": "Started" });
    assert_eq!(defaulted(Kind::Event, event.clone()), event);
}
