//! kube-proxy's chain names.
//!
//! iptables chain names are limited to 28 characters, so kube-proxy names a service's chains
//! by a hash: the first 16 characters of the standard base32 encoding of the SHA-256 of the
//! service port name and the lower-cased protocol (plus `ip:port` for an endpoint's chain).
//! The same suffix is shared by `KUBE-SVC-`, `KUBE-SVL-`, `KUBE-EXT-` and `KUBE-FW-`.

use sha2::{Digest, Sha256};

use crate::model::Protocol;

/// `base32(sha256(input))[..16]`, kube-proxy's `portProtoHash`.
fn hash16(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut encoded = data_encoding::BASE32.encode(&digest);
    encoded.truncate(16);
    encoded
}

/// The hash suffix shared by a service port's chains.
pub fn service_hash(port_name: &str, protocol: Protocol) -> String {
    hash16(&format!("{port_name}{}", protocol.lower()))
}

/// `KUBE-SVC-<hash>`: dispatch to all usable endpoints.
pub fn svc_chain(port_name: &str, protocol: Protocol) -> String {
    format!("KUBE-SVC-{}", service_hash(port_name, protocol))
}

/// `KUBE-SVL-<hash>`: dispatch to node-local endpoints (Local traffic policy).
pub fn svl_chain(port_name: &str, protocol: Protocol) -> String {
    format!("KUBE-SVL-{}", service_hash(port_name, protocol))
}

/// `KUBE-EXT-<hash>`: traffic to NodePorts, external IPs and load-balancer IPs.
pub fn ext_chain(port_name: &str, protocol: Protocol) -> String {
    format!("KUBE-EXT-{}", service_hash(port_name, protocol))
}

/// `KUBE-FW-<hash>`: loadBalancerSourceRanges checks.
pub fn fw_chain(port_name: &str, protocol: Protocol) -> String {
    format!("KUBE-FW-{}", service_hash(port_name, protocol))
}

/// `KUBE-SEP-<hash>`: one endpoint of a service port; `endpoint` is `ip:port`.
pub fn sep_chain(port_name: &str, protocol: Protocol, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!("{port_name}{}{endpoint}", protocol.lower()))
    )
}

/// kube-proxy's nftables name for a chain: `PREFIX-<8 base32 chars>-<readable>`.
fn nft_name(prefix: &str, readable: &str) -> String {
    let digest = Sha256::digest(readable.as_bytes());
    let encoded = data_encoding::BASE32.encode(&digest);
    format!("{prefix}-{}-{readable}", &encoded[..8])
}

/// The readable part of a service port's nftables names: `ns/name/proto/portName`.
pub fn nft_service_base(
    namespace: &str,
    name: &str,
    protocol: Protocol,
    port_name: &str,
) -> String {
    format!("{namespace}/{name}/{}/{port_name}", protocol.lower())
}

/// `service-…`, `external-…`, `local-…` chains of kube-proxy's nftables mode.
pub fn nft_service_chain(prefix: &str, base: &str) -> String {
    nft_name(prefix, base)
}

/// `endpoint-…` chain of kube-proxy's nftables mode.
pub fn nft_endpoint_chain(base: &str, ip: std::net::Ipv4Addr, port: u16) -> String {
    nft_name("endpoint", &format!("{base}__{ip}/{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tutorials_service_chain() {
        assert_eq!(
            svc_chain("default/hello-world", Protocol::Tcp),
            "KUBE-SVC-DZ6LTOHRG6HQWHYE"
        );
        assert_eq!(
            ext_chain("default/hello-world", Protocol::Tcp),
            "KUBE-EXT-DZ6LTOHRG6HQWHYE"
        );
    }

    #[test]
    fn upstream_test_names() {
        assert_eq!(
            svc_chain("ns1/svc1:p80", Protocol::Tcp),
            "KUBE-SVC-XPGD46QRK7WJZT7O"
        );
        assert_eq!(
            sep_chain("ns1/svc1:p80", Protocol::Tcp, "10.180.0.1:80"),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        assert_eq!(
            fw_chain("ns5/svc5:p80", Protocol::Tcp),
            "KUBE-FW-NUKIZ6OKUXPJNT4C"
        );
    }

    #[test]
    fn protocol_is_lower_cased_before_hashing() {
        // `default/hello-worldTCP` would give NWHXGJOFLSK2ZCNY.
        assert_ne!(
            service_hash("default/hello-world", Protocol::Tcp),
            "NWHXGJOFLSK2ZCNY"
        );
    }

    #[test]
    fn nftables_names_match_kube_proxy() {
        let base = nft_service_base("ns1", "svc1", Protocol::Tcp, "p80");
        assert_eq!(
            nft_service_chain("service", &base),
            "service-ULMVA6XW-ns1/svc1/tcp/p80"
        );
        assert_eq!(
            nft_endpoint_chain(&base, "10.180.0.1".parse().unwrap(), 80),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
        let tutorial = nft_service_base("default", "hello-world", Protocol::Tcp, "");
        assert_eq!(
            nft_service_chain("service", &tutorial),
            "service-AN52JS3S-default/hello-world/tcp/"
        );
    }

    #[test]
    fn names_fit_iptables_limit() {
        assert!(
            sep_chain(
                "a-very-long-namespace/a-very-long-name:port",
                Protocol::Sctp,
                "10.0.0.1:1"
            )
            .len()
                <= 28
        );
    }
}
