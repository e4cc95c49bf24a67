//! The table's layout: the names of the shared sets and maps, the shared
//! load-balancing chains, family spellings and the elements service ports
//! put into shared sets.

use super::*;

/// Names of the shared sets and maps.
pub mod sets {
    /// `BASE-tcp`, `BASE-udp`, `BASE-sctp`: one map per protocol, in
    /// [`PROTOCOLS`](super::PROTOCOLS) order.
    macro_rules! per_protocol {
        ($base:literal) => {
            [
                concat!($base, "-tcp"),
                concat!($base, "-udp"),
                concat!($base, "-sctp"),
            ]
        };
    }

    /// Every ClusterIP (set).
    pub const CLUSTER_IPS: &str = "cluster-ips";
    /// Addresses that accept NodePorts (set).
    pub const NODEPORT_IPS: &str = "nodeport-ips";
    /// The service CIDRs (interval set), whose unallocated addresses are
    /// dropped; declared only when the family has service CIDRs.
    pub const SERVICE_CIDRS: &str = "service-cidrs";
    /// VIP . proto . port → verdict (ClusterIPs, ExternalIPs, LB IPs).
    pub const SERVICE_IPS: &str = "service-ips";
    /// proto . port → verdict (NodePorts).
    pub const SERVICE_NODEPORTS: &str = "service-nodeports";
    /// VIP . proto . port → drop / goto reject-chain.
    pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
    /// proto . port → drop / goto reject-chain.
    pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
    /// LB IP . proto . port → goto firewall chain.
    pub const FIREWALL_IPS: &str = "firewall-ips";
    /// endpoint . endpoint . proto . port of local endpoints (hairpin).
    pub const HAIRPIN: &str = "hairpin-connections";
    /// VIP . proto . port . index → endpoint . port, cluster endpoints
    /// (TCP, UDP, SCTP).
    pub const CLUSTER_EPS: [&str; 3] = per_protocol!("cluster-endpoints");
    /// VIP . proto . port . index → endpoint . port, local endpoints.
    pub const LOCAL_EPS: [&str; 3] = per_protocol!("local-endpoints");
    /// proto . port . index → endpoint . port, cluster endpoints (NodePorts).
    pub const NP_CLUSTER_EPS: [&str; 3] = per_protocol!("nodeport-cluster-endpoints");
    /// proto . port . index → endpoint . port, local endpoints (NodePorts).
    pub const NP_LOCAL_EPS: [&str; 3] = per_protocol!("nodeport-local-endpoints");
    /// One element: the generation of the last sync (the drift canary).
    pub const GENERATION: &str = "sync-generation";
    /// ClientIP affinity, filled from the packet path: client . endpoint
    /// id (two 32-bit halves), one element per client and endpoint of a
    /// Service port, each with that Service's timeout.
    pub const AFFINITY: &str = "affinity";
}

/// The most affinity entries (client, endpoint) a family holds at once.
/// kube-proxy's per-endpoint sets hold nft's default 65,535 each; one
/// shared set needs room for the whole node.
pub(crate) const AFFINITY_SIZE: u32 = 1 << 20;

/// A shared load-balancing chain: DNAT to one of K endpoints of one
/// endpoint set, looked up by the packet's original destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LbChain {
    /// Which data map it reads.
    pub kind: LbKind,
    /// The transport protocol (each protocol has its own data maps).
    pub proto: Protocol,
    /// The number of endpoints (the `numgen` modulus), ≥ 1.
    pub k: usize,
}

/// The endpoint set and key of a shared load-balancing chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LbKind {
    /// `cluster-P-K`: VIP key, cluster endpoints.
    Cluster,
    /// `local-P-K`: VIP key, local endpoints.
    Local,
    /// `nodeport-cluster-P-K`: NodePort key, cluster endpoints.
    NodePortCluster,
    /// `nodeport-local-P-K`: NodePort key, local endpoints.
    NodePortLocal,
    /// `mark-cluster-P-K`: masquerade mark, then `cluster-P-K` (eTP=Cluster VIPs).
    MarkCluster,
    /// `mark-nodeport-cluster-P-K`: mark, then `nodeport-cluster-P-K`.
    MarkNodePortCluster,
}

impl LbKind {
    pub(super) fn prefix(self) -> &'static str {
        match self {
            LbKind::Cluster => "cluster",
            LbKind::Local => "local",
            LbKind::NodePortCluster => "nodeport-cluster",
            LbKind::NodePortLocal => "nodeport-local",
            LbKind::MarkCluster => "mark-cluster",
            LbKind::MarkNodePortCluster => "mark-nodeport-cluster",
        }
    }
}

/// The data map an endpoint set of one protocol lives in
/// (`cluster-endpoints-tcp`, ...); `None` for the marking kinds.
pub(crate) fn ep_map_name(kind: LbKind, proto: Protocol) -> Option<&'static str> {
    let i = match proto {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    };
    let names: [&'static str; 3] = match kind {
        LbKind::Cluster => sets::CLUSTER_EPS,
        LbKind::Local => sets::LOCAL_EPS,
        LbKind::NodePortCluster => sets::NP_CLUSTER_EPS,
        LbKind::NodePortLocal => sets::NP_LOCAL_EPS,
        LbKind::MarkCluster | LbKind::MarkNodePortCluster => return None,
    };
    Some(names[i])
}

/// The protocols, in map order.
pub(super) const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

impl LbChain {
    /// The chain's name (`cluster-tcp-10`).
    pub fn name(&self) -> String {
        format!("{}-{}-{}", self.kind.prefix(), self.proto.as_str(), self.k)
    }

    /// The chain itself.
    pub fn chain(&self, fam: &Fam, mark: u32) -> Chain {
        // No explicit `meta l4proto` match: the data map's `typeof` value
        // (`ip daddr . tcp dport`) makes nft add that protocol dependency
        // itself, and an explicit one for another protocol, or `th dport`
        // in the value, is refused by nft 1.0.6 once the map comes from the
        // kernel (an incremental sync that adds a chain). Hence one map per
        // protocol.
        let vip_key = format!("{} daddr . meta l4proto . th dport", fam.f.as_str());
        let np_key = "meta l4proto . th dport";
        let rule = match (self.inner(), ep_map_name(self.kind, self.proto)) {
            (Some(inner), _) => format!("{} goto {}", mark_stmt(mark), inner.name()),
            (None, Some(map)) => {
                let key = match self.kind {
                    LbKind::Cluster | LbKind::Local => vip_key.as_str(),
                    _ => np_key,
                };
                format!(
                    "dnat {} addr . port to {key} . numgen random mod {} map @{map}",
                    fam.f.as_str(),
                    self.k
                )
            }
            (None, None) => String::from("return"),
        };
        Chain::new(self.name(), vec![Rule::new(rule)])
    }

    /// The inner chain a marking chain goes to (it must exist too).
    pub fn inner(&self) -> Option<LbChain> {
        let kind = match self.kind {
            LbKind::MarkCluster => LbKind::Cluster,
            LbKind::MarkNodePortCluster => LbKind::NodePortCluster,
            _ => return None,
        };
        Some(LbChain { kind, ..*self })
    }
}

pub(super) fn mark_stmt(mark: u32) -> String {
    format!("meta mark set meta mark | {mark:#x}")
}

/// Family-specific spellings.
#[derive(Debug, Clone, Copy)]
pub struct Fam {
    /// The nft family.
    pub f: Family,
}

impl Fam {
    pub(super) fn daddr(&self) -> String {
        format!("{} daddr", self.f.as_str())
    }
    pub(super) fn saddr(&self) -> String {
        format!("{} saddr", self.f.as_str())
    }
    pub(super) fn loopback(&self) -> &'static str {
        match self.f {
            Family::Ip => "127.0.0.0/8",
            Family::Ip6 => "::1",
        }
    }
}

/// One element a service port puts into a shared set or map, kept in its
/// rendered form (`key [comment "c"] [: value]`) in one allocation: the
/// state kept between syncs holds ~12 of these per service port, 600,000
/// at 50,000 services, so their size is most of the backend's memory.
///
/// Where the comment and the value start follows from the key's length
/// and the comment's (`key comment "c" : value`), so two 16-bit lengths and
/// a flag locate them: 40 bytes an element beside its text. Keys are
/// concatenations of addresses, protocols, ports and small integers (under
/// 100 bytes) and comments are bounded by [`names::COMMENT_MAX`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Elem {
    /// The shared set's name (one of [`sets`]).
    pub set: &'static str,
    text: Box<str>,
    key_len: u16,
    /// The comment's length, [`NO_COMMENT`] without one.
    comment_len: u16,
    value: bool,
}

/// [`Elem::comment_len`] of an element without a comment.
const NO_COMMENT: u16 = u16::MAX;
/// ` comment "`, between an element's key and its comment.
const COMMENT_OPEN: &str = " comment \"";
/// ` : `, before a map element's value.
const VALUE_SEP: &str = " : ";

impl Elem {
    /// An element of `set`.
    pub fn new(set: &'static str, key: &str, elem: &Element) -> Elem {
        let mut text = String::with_capacity(
            key.len()
                + elem.comment.as_ref().map_or(0, |c| c.len() + 11)
                + elem.value.as_ref().map_or(0, |v| v.len() + 3),
        );
        text.push_str(key);
        let comment_len = match &elem.comment {
            Some(c) => {
                text.push_str(COMMENT_OPEN);
                text.push_str(c);
                text.push('"');
                u16::try_from(c.len()).unwrap_or(NO_COMMENT - 1)
            }
            None => NO_COMMENT,
        };
        if let Some(v) = &elem.value {
            text.push_str(VALUE_SEP);
            text.push_str(v);
        }
        Elem {
            set,
            text: text.into_boxed_str(),
            key_len: u16::try_from(key.len()).unwrap_or(u16::MAX),
            comment_len,
            value: elem.value.is_some(),
        }
    }

    /// Where the comment ends (its closing quote included), or the key
    /// when there is none.
    fn comment_end(&self) -> usize {
        match self.comment_len {
            NO_COMMENT => self.key_len as usize,
            n => self.key_len as usize + COMMENT_OPEN.len() + n as usize + 1,
        }
    }

    /// The key text.
    pub fn key(&self) -> &str {
        self.text.get(..self.key_len as usize).unwrap_or(&self.text)
    }

    /// The value (maps).
    pub fn value(&self) -> Option<&str> {
        self.value
            .then(|| self.text.get(self.comment_end() + VALUE_SEP.len()..))
            .flatten()
    }

    /// The comment.
    pub fn comment(&self) -> Option<&str> {
        match self.comment_len {
            NO_COMMENT => None,
            n => {
                let at = self.key_len as usize + COMMENT_OPEN.len();
                self.text.get(at..at + n as usize)
            }
        }
    }

    /// As it appears inside `add element ... { }`.
    pub fn rendered(&self) -> &str {
        &self.text
    }

    /// Value and comment as an IR [`Element`].
    pub fn element(&self) -> Element {
        Element {
            value: self.value().map(String::from),
            comment: self.comment().map(String::from),
        }
    }
}
