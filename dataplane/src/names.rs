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
