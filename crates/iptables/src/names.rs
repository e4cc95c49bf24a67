//! kube-proxy's chain names and probabilities (upstream
//! pkg/proxy/iptables/proxier.go: `servicePortPolicyClusterChain` and its
//! siblings, `computeProbability`; tested by TestComputeProbability).
//!
//! Chain names must stay byte-identical to kube-proxy's so that operators'
//! habits (`iptables -t nat -L KUBE-SVC-...`) and kube-proxy's own cleanup
//! keep working on a kproxy node.

use data_encoding::BASE32;
use kproxy_graph::ServicePortName;
use sha2::{Digest, Sha256};

/// `base32(sha256(s))[:16]`, kube-proxy's `portProtoHash`. Go's
/// `base32.StdEncoding` is RFC 4648 with padding; the first 16 characters
/// never contain padding.
pub fn hash16(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut encoded = BASE32.encode(&digest);
    encoded.truncate(16);
    encoded
}

/// The per-service-port hash: `ServicePortName.String() + protocol`.
pub fn service_hash(spn: &ServicePortName) -> String {
    hash16(&format!("{spn}{}", spn.protocol.as_str()))
}

/// `KUBE-SVC-<hash>`: the cluster-policy chain.
pub fn svc_chain(spn: &ServicePortName) -> String {
    format!("KUBE-SVC-{}", service_hash(spn))
}

/// `KUBE-SVL-<hash>`: the local-policy chain.
pub fn svl_chain(spn: &ServicePortName) -> String {
    format!("KUBE-SVL-{}", service_hash(spn))
}

/// `KUBE-EXT-<hash>`: the external-destinations chain.
pub fn ext_chain(spn: &ServicePortName) -> String {
    format!("KUBE-EXT-{}", service_hash(spn))
}

/// `KUBE-FW-<hash>`: the LoadBalancerSourceRanges chain.
pub fn fw_chain(spn: &ServicePortName) -> String {
    format!("KUBE-FW-{}", service_hash(spn))
}

/// `KUBE-SEP-<hash>` for one endpoint (`endpoint` is `ip:port`, IPv6 as
/// `[ip]:port`).
pub fn sep_chain(spn: &ServicePortName, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!("{spn}{}{endpoint}", spn.protocol.as_str()))
    )
}

/// Prefixes of the per-service chains, the only chains garbage-collected
/// by name (kube-proxy's `isServiceChainName`, plus the pre-1.24
/// `KUBE-XLB-` so that very old leftovers go too).
pub const SERVICE_CHAIN_PREFIXES: [&str; 6] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
    "KUBE-XLB-",
];

/// Whether `name` is a per-service chain (see [`SERVICE_CHAIN_PREFIXES`]).
pub fn is_service_chain(name: &str) -> bool {
    SERVICE_CHAIN_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// kube-proxy's `computeProbability(n)`: `fmt.Sprintf("%0.10f", 1.0/n)`.
/// Rust's `{:.10}` rounds the exact binary value like Go's `%f` does.
pub fn probability(n: u32) -> String {
    format!("{:.10}", 1.0 / f64::from(n.max(1)))
}

/// Largest object-derived text kept in a comment; kernel comments are
/// limited to 255 bytes and kproxy's fixed texts add at most ~60.
pub const MAX_NAME_IN_COMMENT: usize = 180;

/// Make object-derived text safe for a rule comment: every byte outside
/// printable ASCII, and the quoting characters `"`, `'` and `\`, become
/// `?`; the result is bounded to [`MAX_NAME_IN_COMMENT`] bytes. Valid
/// Kubernetes names are unchanged, so comments match kube-proxy's.
pub fn comment_safe(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\') || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if out.len() > MAX_NAME_IN_COMMENT {
        // All ASCII now, so any byte index is a char boundary.
        out.truncate(MAX_NAME_IN_COMMENT);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_testkit::tcp_port_name as spn;

    #[test]
    fn reference_hash_vectors() {
        assert_eq!(hash16("ns1/svc1:p80tcp"), "XPGD46QRK7WJZT7O");
        assert_eq!(hash16("ns1/svc1:p80tcp10.180.0.1:80"), "SXIVWICOYRO3J4NJ");
        let s = spn("ns1", "svc1", "p80");
        assert_eq!(svc_chain(&s), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(ext_chain(&s), "KUBE-EXT-XPGD46QRK7WJZT7O");
        assert_eq!(sep_chain(&s, "10.180.0.1:80"), "KUBE-SEP-SXIVWICOYRO3J4NJ");
        // From kube-proxy's TestOverallIPTablesRules.
        assert_eq!(
            svc_chain(&spn("ns2", "svc2", "p80")),
            "KUBE-SVC-GNZBNJ2PO5MGZ6GT"
        );
        assert_eq!(
            fw_chain(&spn("ns5", "svc5", "p80")),
            "KUBE-FW-NUKIZ6OKUXPJNT4C"
        );
        assert_eq!(
            sep_chain(&spn("ns4", "svc4", "p80"), "10.180.0.4:80"),
            "KUBE-SEP-UKSFD7AGPMPPLUHC"
        );
    }

    #[test]
    fn probabilities_as_kube_proxy() {
        assert_eq!(probability(1), "1.0000000000");
        assert_eq!(probability(2), "0.5000000000");
        assert_eq!(probability(3), "0.3333333333");
        assert_eq!(probability(100001), "0.0000099999");
        let mut prev = probability(1);
        for n in 2..=100000 {
            let p = probability(n);
            assert!(p < prev, "{n}: {p} !< {prev}");
            prev = p;
        }
    }

    #[test]
    fn comments_are_bounded_and_inert() {
        assert_eq!(comment_safe("ns1/svc1:p80"), "ns1/svc1:p80");
        assert_eq!(comment_safe("a\"b\nc\\d'é"), "a?b?c?d??");
        assert_eq!(comment_safe(&"x".repeat(1000)).len(), MAX_NAME_IN_COMMENT);
    }
}
