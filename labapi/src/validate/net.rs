//! IP addresses and CIDRs, worded as `k8s.io/apimachinery/pkg/util/validation/ip.go`.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::json;

use crate::field::Cause;

/// Parses an IP as Go's `netutils.ParseIPSloppy` does, which also takes IPv4 octets with
/// leading zeros (`010.0.0.1`) as decimal.
pub(crate) fn parse_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    let octets: Vec<&str> = s.split('.').collect();
    if octets.len() != 4 {
        return None;
    }
    let mut bytes = [0u8; 4];
    for (b, o) in bytes.iter_mut().zip(octets) {
        if o.is_empty() || o.len() > 3 || !o.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *b = o.parse().ok()?;
    }
    Some(IpAddr::V4(Ipv4Addr::from(bytes)))
}

/// `IsValidIP`.
pub(crate) fn valid_ip(path: &str, value: &str) -> Vec<Cause> {
    if parse_ip(value).is_some() {
        Vec::new()
    } else {
        vec![Cause::invalid(
            path,
            &json!(value),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        )]
    }
}

/// `IsValidCIDR`.
pub(crate) fn valid_cidr(path: &str, value: &str) -> Vec<Cause> {
    let ok = value.split_once('/').is_some_and(|(ip, bits)| {
        let max = match parse_ip(ip) {
            Some(IpAddr::V4(_)) => 32,
            Some(IpAddr::V6(_)) => 128,
            None => return false,
        };
        !bits.is_empty()
            && bits.chars().all(|c| c.is_ascii_digit())
            && bits.parse::<u32>().is_ok_and(|b| b <= max)
    });
    if ok {
        Vec::new()
    } else {
        vec![Cause::invalid(
            path,
            &json!(value),
            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        )]
    }
}

/// `ValidateNonSpecialIP` / `ValidateEndpointIP`: addresses traffic could never be sent to.
pub(crate) fn non_special_ip(path: &str, value: &str) -> Vec<Cause> {
    let Some(ip) = parse_ip(value) else {
        return vec![Cause::invalid(
            path,
            &json!(value),
            "must be a valid IP address",
        )];
    };
    let (unspecified, loopback, link_local, link_local_multicast) = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (
                v4.is_unspecified(),
                v4.is_loopback(),
                v4.is_link_local(),
                o[0] == 224 && o[1] == 0 && o[2] == 0,
            )
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (
                v6.is_unspecified(),
                v6.is_loopback(),
                s[0] & 0xffc0 == 0xfe80,
                s[0] & 0xff0f == 0xff02,
            )
        }
    };
    let mut causes = Vec::new();
    let v = json!(value);
    if unspecified {
        causes.push(Cause::invalid(
            path,
            &v,
            format!("may not be unspecified ({value})"),
        ));
    }
    if loopback {
        causes.push(Cause::invalid(
            path,
            &v,
            "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        ));
    }
    if link_local {
        causes.push(Cause::invalid(
            path,
            &v,
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        ));
    }
    if link_local_multicast {
        causes.push(Cause::invalid(
            path,
            &v,
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
        ));
    }
    causes
}
