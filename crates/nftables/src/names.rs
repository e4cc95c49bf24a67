//! Names and comments derived from Kubernetes objects.
//!
//! Everything that reaches the `nft` text from an object passes through
//! here: chain and set names become bare nft identifiers (nft 1.0.6 accepts
//! no quoted chain names) made only of `[A-Za-z0-9_./-]` after a fixed
//! lower-case prefix, bounded in length and made unique by a hash of the
//! unsanitised name; comments drop quotes, backslashes and control
//! characters and are bounded. So no object can make the text fail to parse
//! or smuggle in a statement.

use std::net::IpAddr;

use base32_lite::encode_hash8;
use kproxy_graph::{Endpoint, ServicePortName};

/// Longest comment kproxy writes (nft's limit is 128 bytes).
pub const COMMENT_MAX: usize = 100;

/// Longest name part taken from objects (nft's limit for names is 256).
pub const NAME_BASE_MAX: usize = 160;

/// A comment that is safe inside `"..."` and at most [`COMMENT_MAX`] bytes.
pub fn comment(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(COMMENT_MAX));
    for c in s.chars() {
        let c = if c.is_ascii_graphic() || c == ' ' {
            if c == '"' || c == '\\' { '_' } else { c }
        } else {
            '_'
        };
        if out.len() + 1 > COMMENT_MAX {
            break;
        }
        out.push(c);
    }
    out
}

/// Keep identifier characters; replace the rest with `_`.
fn ident_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// kube-proxy's `servicePortChainNameBase` input: `ns/svc/proto/port`.
pub fn service_base_raw(name: &ServicePortName) -> String {
    format!(
        "{}/{}/{}/{}",
        name.namespace,
        name.name,
        name.protocol.as_str(),
        name.port
    )
}

/// The endpoint suffix kube-proxy uses: `ip/port`, IPv6 colons as dots.
/// Only digits, hex letters, dots and one slash: safe as is.
fn endpoint_suffix(ep: &Endpoint) -> String {
    let ip = match ep.ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => v6.to_string().replace(':', "."),
    };
    format!("{ip}/{}", ep.port)
}

/// `HASH8-ns/svc/proto/port`, kube-proxy's `hashAndTruncate` shape, with
/// each object-derived part sanitised and the whole bounded.
pub fn hash_and_truncate(raw: &str, parts: &[&str]) -> String {
    hash_and_truncate_with(raw, parts, "")
}

/// [`hash_and_truncate`] with a `tail` appended as is (the caller
/// guarantees it holds identifier characters only).
fn hash_and_truncate_with(raw: &str, parts: &[&str], tail: &str) -> String {
    let hash = encode_hash8(raw.as_bytes());
    let mut name = String::with_capacity(9 + raw.len());
    name.push_str(&hash);
    name.push('-');
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            name.push('/');
        }
        name.push_str(&ident_part(p));
    }
    name.push_str(tail);
    if name.len() > NAME_BASE_MAX {
        // ASCII only by construction, so byte truncation is safe.
        name.truncate(NAME_BASE_MAX - 3);
        name.push_str("...");
    }
    name
}

/// The base of a service port's per-service objects.
pub fn service_base(name: &ServicePortName) -> String {
    hash_and_truncate(
        &service_base_raw(name),
        &[
            &name.namespace,
            &name.name,
            name.protocol.as_str(),
            &name.port,
        ],
    )
}

/// The base of a service port's per-endpoint objects.
pub fn endpoint_base(name: &ServicePortName, ep: &Endpoint) -> String {
    let suffix = endpoint_suffix(ep);
    let raw = format!("{}__{}", service_base_raw(name), suffix);
    hash_and_truncate_with(
        &raw,
        &[
            &name.namespace,
            &name.name,
            name.protocol.as_str(),
            &name.port,
        ],
        &format!("__{suffix}"),
    )
}

/// The typed expression an affinity endpoint id half is written as.
/// nft 1.0.6 cannot type a literal inside a concatenation it looks up
/// (`ip saddr . 42 @set` fails with "Can't parse symbolic invalid
/// expressions"), so each 32-bit half is `numgen inc mod 1 offset N`: a
/// counter modulo 1 plus N, which is always N.
pub const AFFINITY_ID_TYPE: &str = "numgen inc mod 1";

/// A service port's endpoint as the affinity set keys it: the first 64
/// bits of sha256 of the endpoint's full name (the one its chain name is
/// cut from). Stable across restarts.
pub fn affinity_id(name: &ServicePortName, ep: &Endpoint) -> (u32, u32) {
    let raw = format!("{}__{}", service_base_raw(name), endpoint_suffix(ep));
    base32_lite::hash64(raw.as_bytes())
}

/// An affinity id as nft reads it in a key: two `numgen inc mod 1 offset
/// N` halves.
pub fn affinity_key((hi, lo): (u32, u32)) -> String {
    format!("{AFFINITY_ID_TYPE} offset {hi} . {AFFINITY_ID_TYPE} offset {lo}")
}

/// `ns/svc:port` for comments (kube-proxy's ServicePortName string).
pub fn service_comment(name: &ServicePortName) -> String {
    comment(&name.to_string())
}

/// A tiny dependency-free sha256+base32 for chain-name hashes, matching
/// kube-proxy's `base32.StdEncoding(sha256(name))[:8]`.
mod base32_lite {
    use sha2::{Digest, Sha256};

    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

    /// The first 8 base32 characters of sha256(data).
    pub fn encode_hash8(data: &[u8]) -> String {
        let digest = Sha256::digest(data);
        // 8 base32 chars = 40 bits = the first 5 bytes.
        let mut v: u64 = 0;
        for b in &digest[..5] {
            v = (v << 8) | u64::from(*b);
        }
        (0..8)
            .map(|i| ALPHABET[((v >> (35 - 5 * i)) & 31) as usize] as char)
            .collect()
    }

    /// The first 64 bits of sha256(data), as two 32-bit halves.
    pub fn hash64(data: &[u8]) -> (u32, u32) {
        let d = Sha256::digest(data);
        (
            u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
            u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_testkit::tcp_port_name as spn;

    #[test]
    fn matches_kube_proxy_hashes() {
        // From kube-proxy's tests (pkg/proxy/nftables/proxier_test.go,
        // Test_servicePortChainNameBase) and a real v1.36.
        for (port, want) in [
            (spn("ns1", "svc1", "p80"), "ULMVA6XW-ns1/svc1/tcp/p80"),
            (
                spn("web", "web-service", ""),
                "3PDGMKCJ-web/web-service/tcp/",
            ),
        ] {
            assert_eq!(service_base(&port), want);
        }
    }

    #[test]
    fn endpoint_names_match_kube_proxy() {
        let ep = Endpoint::new("10.180.0.1".parse().unwrap(), 80);
        // Upstream's `servicePortEndpointChainNameBase` doc comment:
        // endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
        assert_eq!(
            endpoint_base(&spn("ns1", "svc1", "p80"), &ep),
            "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn hostile_names_are_bounded_identifiers() {
        let evil = spn("ns\" ; flush ruleset ; #", &"x".repeat(500), "p\n80");
        let b = service_base(&evil);
        assert!(b.len() <= NAME_BASE_MAX);
        assert!(
            b.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._/".contains(c)),
            "{b}"
        );
        let c = service_comment(&evil);
        assert!(c.len() <= COMMENT_MAX);
        assert!(!c.contains('"') && !c.contains('\n'));
    }

    #[test]
    fn distinct_names_stay_distinct_after_sanitising() {
        assert_ne!(
            service_base(&spn("a", "b c", "")),
            service_base(&spn("a", "b_c", ""))
        );
    }
}
