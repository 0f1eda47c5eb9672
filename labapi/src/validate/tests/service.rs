//! Services.

use super::*;

#[test]
fn service_ports_are_required_unless_headless_or_external_name() {
    assert_eq!(service_errors(json!({})), ["spec.ports: Required value"]);
    assert!(service_errors(json!({ "clusterIP": "None" })).is_empty());
    assert!(
        service_errors(json!({ "type": "ExternalName", "externalName": "example.com." }))
            .is_empty()
    );
    assert_eq!(
        service_errors(json!({ "type": "ExternalName" })),
        ["spec.externalName: Required value"]
    );
    assert_eq!(
        service_errors(
            json!({ "type": "ExternalName", "externalName": "Example.com", "clusterIP": "10.96.0.5" })
        ),
        [
            "spec.clusterIPs: Forbidden: may not be set for ExternalName services",
            r#"spec.externalName: Invalid value: "Example.com": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"#,
        ]
    );
}

#[test]
fn service_port_names_are_required_and_unique_when_several() {
    assert_eq!(
        service_errors(json!({ "ports": [{ "port": 80 }, { "port": 443, "name": "https" }] })),
        ["spec.ports[0].name: Required value"]
    );
    assert_eq!(
        service_errors(
            json!({ "ports": [{ "port": 80, "name": "web" }, { "port": 443, "name": "web" }] })
        ),
        [r#"spec.ports[1].name: Duplicate value: "web""#]
    );
    assert_eq!(
        service_errors(json!({ "ports": [{ "port": 80, "name": "Web" }] })),
        [
            r#"spec.ports[0].name: Invalid value: "Web": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#
        ]
    );
}

#[test]
fn service_ports_protocols_and_target_ports_are_checked() {
    assert_eq!(
        service_errors(json!({ "ports": [{ "port": 80, "protocol": "ICMP" }] })),
        [
            r#"spec.ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#
        ]
    );
    assert_eq!(
        service_errors(json!({ "ports": [{ "port": 80, "targetPort": 65536 }] })),
        ["spec.ports[0].targetPort: Invalid value: 65536: must be between 1 and 65535, inclusive"]
    );
    assert!(service_errors(json!({ "ports": [{ "port": 80, "targetPort": "http" }] })).is_empty());
    assert_eq!(
        service_errors(json!({ "ports": [{ "port": 80, "targetPort": "http-endpoint-long" }] })),
        [
            r#"spec.ports[0].targetPort: Invalid value: "http-endpoint-long": must be no more than 15 characters"#
        ]
    );
    assert_eq!(
        service_errors(json!({ "ports": [{ "port": 80, "targetPort": "8080" }] })),
        [
            r#"spec.ports[0].targetPort: Invalid value: "8080": must contain at least one letter (a-z)"#
        ]
    );
    assert_eq!(
        service_errors(json!({ "ports": [{ "port": 0, "targetPort": 80 }] })),
        ["spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"]
    );
}

#[test]
fn repeated_ports_and_node_ports_are_duplicates() {
    assert_eq!(
        service_errors(
            json!({ "ports": [{ "port": 80, "name": "a" }, { "port": 80, "name": "b" }] })
        ),
        [
            r#"spec.ports[1]: Duplicate value: core.ServicePort{Name:"", Protocol:"TCP", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}"#
        ]
    );
    assert!(service_errors(json!({ "ports": [{ "port": 53, "name": "a" }, { "port": 53, "name": "b", "protocol": "UDP" }] })).is_empty());
    assert_eq!(
        service_errors(json!({ "type": "NodePort", "ports": [
            { "port": 80, "name": "a", "nodePort": 30080 }, { "port": 81, "name": "b", "nodePort": 30080 }
        ] })),
        ["spec.ports[1].nodePort: Duplicate value: 30080"]
    );
}

#[test]
fn node_ports_are_for_node_port_and_load_balancer_services() {
    assert_eq!(
        service_errors(json!({ "ports": [{ "port": 80, "nodePort": 30080 }] })),
        ["spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"]
    );
    assert!(
        service_errors(json!({ "type": "NodePort", "ports": [{ "port": 80, "nodePort": 30080 }] }))
            .is_empty()
    );
    let cause =
        validate_node_port("spec.ports[0].nodePort", 40000, &DEFAULT_NODE_PORT_RANGE).unwrap();
    let e = ApiError::invalid(Kind::Service.info(), "web", &[cause]);
    assert_eq!(
        e.message,
        r#"Service "web" is invalid: spec.ports[0].nodePort: Invalid value: 40000: provided port is not in the valid range. The range of valid ports is 30000-32767"#
    );
    assert!(validate_node_port("f", 30000, &DEFAULT_NODE_PORT_RANGE).is_none());
    assert!(validate_node_port("f", 32767, &DEFAULT_NODE_PORT_RANGE).is_none());
    assert!(validate_node_port("f", 29999, &(20000..=29999)).is_none());
    assert_eq!(
        node_port_allocated("spec.ports[0].nodePort", 30080).to_string(),
        "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
    );
}

#[test]
fn service_types_and_cluster_ips_are_checked() {
    assert_eq!(
        service_errors(json!({ "type": "Internal", "ports": [{ "port": 80 }] })),
        [
            r#"spec.type: Unsupported value: "Internal": supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort""#
        ]
    );
    assert!(
        service_errors(json!({ "clusterIP": "10.96.0.10", "ports": [{ "port": 80 }] })).is_empty()
    );
    assert!(service_errors(json!({ "clusterIP": "", "ports": [{ "port": 80 }] })).is_empty());
    assert_eq!(
        service_errors(json!({ "clusterIP": "10.96.0.300", "ports": [{ "port": 80 }] })),
        [
            r#"spec.clusterIPs[0]: Invalid value: "10.96.0.300": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"#
        ]
    );
    assert_eq!(
        service_errors(
            json!({ "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.2"], "ports": [{ "port": 80 }] })
        ),
        [
            r#"spec.clusterIPs: Invalid value: []string{"10.96.0.2"}: first value must match `clusterIP`"#
        ]
    );
    assert_eq!(
        service_errors(
            json!({ "type": "NodePort", "clusterIP": "None", "ports": [{ "port": 80 }] })
        ),
        [
            r#"spec.clusterIPs[0]: Invalid value: "None": may not be set to 'None' for NodePort services"#
        ]
    );
    assert_eq!(
        service_errors(json!({ "externalIPs": ["127.0.0.1", "bad"], "ports": [{ "port": 80 }] })),
        [
            r#"spec.externalIPs[0]: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#,
            r#"spec.externalIPs[1]: Invalid value: "bad": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"#,
        ]
    );
}

#[test]
fn the_lab_serves_single_stack_ipv4_only() {
    assert_eq!(
        service_errors(json!({ "ipFamilies": ["IPv6"], "ports": [{ "port": 80 }] })),
        [r#"spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster"#]
    );
    assert_eq!(
        service_errors(json!({ "ipFamilyPolicy": "RequireDualStack", "ports": [{ "port": 80 }] })),
        [
            r#"spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is not configured for dual-stack services"#
        ]
    );
    assert!(
        service_errors(json!({ "ipFamilyPolicy": "PreferDualStack", "ports": [{ "port": 80 }] }))
            .is_empty()
    );
    assert_eq!(
        service_errors(
            json!({ "ipFamilyPolicy": "DualStack", "ipFamilies": ["IPv4", "IPv4"], "ports": [{ "port": 80 }] })
        ),
        [
            r#"spec.ipFamilies[1]: Duplicate value: "IPv4""#,
            r#"spec.ipFamilyPolicy: Unsupported value: "DualStack": supported values: "PreferDualStack", "RequireDualStack", "SingleStack""#,
        ]
    );
    assert_eq!(
        service_errors(json!({ "ipFamilies": ["IPv5"], "ports": [{ "port": 80 }] })),
        [r#"spec.ipFamilies[0]: Unsupported value: "IPv5": supported values: "IPv4", "IPv6""#]
    );
}

#[test]
fn session_affinity_is_none_or_client_ip_with_a_sane_timeout() {
    assert_eq!(
        service_errors(json!({ "sessionAffinity": "Cookie", "ports": [{ "port": 80 }] })),
        [
            r#"spec.sessionAffinity: Unsupported value: "Cookie": supported values: "ClientIP", "None""#
        ]
    );
    let affinity = |t: i64| {
        service_errors(
            json!({ "sessionAffinity": "ClientIP", "ports": [{ "port": 80 }],
                               "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": t } } }),
        )
    };
    assert!(affinity(86400).is_empty());
    assert!(affinity(1).is_empty());
    assert_eq!(
        affinity(86401),
        [
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 86401: must be greater than 0 and less than 86400"
        ]
    );
    assert_eq!(affinity(0).len(), 1);
}

#[test]
fn traffic_policies_are_cluster_or_local() {
    assert_eq!(
        service_errors(
            json!({ "type": "NodePort", "externalTrafficPolicy": "Global", "ports": [{ "port": 80 }] })
        ),
        [
            r#"spec.externalTrafficPolicy: Unsupported value: "Global": supported values: "Cluster", "Local""#
        ]
    );
    assert_eq!(
        service_errors(json!({ "externalTrafficPolicy": "Local", "ports": [{ "port": 80 }] })),
        [
            r#"spec.externalTrafficPolicy: Invalid value: "Local": may only be set for externally-accessible services"#
        ]
    );
    assert_eq!(
        service_errors(json!({ "internalTrafficPolicy": "Node", "ports": [{ "port": 80 }] })),
        [
            r#"spec.internalTrafficPolicy: Unsupported value: "Node": supported values: "Cluster", "Local""#
        ]
    );
    assert!(
        service_errors(
            json!({ "type": "LoadBalancer", "externalTrafficPolicy": "Local",
                                   "healthCheckNodePort": 30100, "ports": [{ "port": 80 }] })
        )
        .is_empty()
    );
    assert_eq!(
        service_errors(
            json!({ "type": "NodePort", "healthCheckNodePort": 30100, "ports": [{ "port": 80 }] })
        ),
        [
            "spec.healthCheckNodePort: Invalid value: 30100: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"
        ]
    );
}

#[test]
fn load_balancer_fields_are_for_load_balancers() {
    assert_eq!(
        service_errors(
            json!({ "loadBalancerSourceRanges": ["10.0.0.0/8"], "ports": [{ "port": 80 }] })
        ),
        [
            "spec.LoadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'"
        ]
    );
    assert_eq!(
        service_errors(
            json!({ "type": "LoadBalancer", "loadBalancerSourceRanges": [" 10.0.0.0/8 ", "10.0.0.0/33"],
                               "ports": [{ "port": 80 }] })
        ),
        [
            r#"spec.LoadBalancerSourceRanges[1]: Invalid value: "10.0.0.0/33": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"#
        ]
    );
    assert_eq!(
        service_errors(json!({ "allocateLoadBalancerNodePorts": true, "ports": [{ "port": 80 }] })),
        [
            "spec.allocateLoadBalancerNodePorts: Forbidden: may only be used when `type` is 'LoadBalancer'"
        ]
    );
    assert_eq!(
        service_errors(json!({ "type": "LoadBalancer", "ports": [{ "port": 10250 }] })),
        [
            "spec.ports[0]: Invalid value: 10250: may not expose port 10250 externally since it is used by kubelet"
        ]
    );
}

#[test]
fn service_selectors_are_labels() {
    assert_eq!(
        service_errors(json!({ "selector": { "app": "hello world" }, "ports": [{ "port": 80 }] })),
        [
            r#"spec.selector: Invalid value: "hello world": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"#
        ]
    );
}
