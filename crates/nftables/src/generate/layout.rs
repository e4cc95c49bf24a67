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

/// One element a service port puts into a shared set or map, in its
/// rendered form (`key [comment "c"] [: value]`) in one allocation: the
/// skeleton's elements on their way into a full render. A service port's
/// own elements are packed into [`Elems`].
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

/// Append `key [comment "c"] [: value]` to `text`: the key's and the
/// comment's lengths.
fn write_elem(text: &mut String, key: &str, elem: &Element) -> (u16, u16) {
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
    (u16::try_from(key.len()).unwrap_or(u16::MAX), comment_len)
}

fn elem_text_len(key: &str, elem: &Element) -> usize {
    key.len()
        + elem.comment.as_ref().map_or(0, |c| c.len() + 11)
        + elem.value.as_ref().map_or(0, |v| v.len() + 3)
}

impl Elem {
    /// An element of `set`.
    pub fn new(set: &'static str, key: &str, elem: &Element) -> Elem {
        let mut text = String::with_capacity(elem_text_len(key, elem));
        let (key_len, comment_len) = write_elem(&mut text, key, elem);
        Elem {
            set,
            text: text.into_boxed_str(),
            key_len,
            comment_len,
            value: elem.value.is_some(),
        }
    }

    /// A view of it, as [`Elems`] gives its elements.
    pub fn as_ref(&self) -> ElemRef<'_> {
        ElemRef {
            set: self.set,
            text: &self.text,
            key_len: self.key_len,
            comment_len: self.comment_len,
            value: self.value,
        }
    }

    /// The key text.
    pub fn key(&self) -> &str {
        self.as_ref().key()
    }

    /// The value (maps).
    pub fn value(&self) -> Option<&str> {
        self.as_ref().value()
    }

    /// The comment.
    pub fn comment(&self) -> Option<&str> {
        self.as_ref().comment()
    }

    /// As it appears inside `add element ... { }`.
    pub fn rendered(&self) -> &str {
        &self.text
    }

    /// Value and comment as an IR [`Element`].
    pub fn element(&self) -> Element {
        self.as_ref().element()
    }
}

/// One element of a set, borrowed from an [`Elem`] or an [`Elems`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ElemRef<'a> {
    /// The shared set's name (one of [`sets`]).
    pub set: &'static str,
    text: &'a str,
    key_len: u16,
    comment_len: u16,
    value: bool,
}

impl<'a> ElemRef<'a> {
    /// Where the comment ends (its closing quote included), or the key
    /// when there is none.
    fn comment_end(&self) -> usize {
        match self.comment_len {
            NO_COMMENT => self.key_len as usize,
            n => self.key_len as usize + COMMENT_OPEN.len() + n as usize + 1,
        }
    }

    /// The key text.
    pub fn key(&self) -> &'a str {
        self.text.get(..self.key_len as usize).unwrap_or(self.text)
    }

    /// The value (maps).
    pub fn value(&self) -> Option<&'a str> {
        self.value
            .then(|| self.text.get(self.comment_end() + VALUE_SEP.len()..))
            .flatten()
    }

    /// The comment.
    pub fn comment(&self) -> Option<&'a str> {
        match self.comment_len {
            NO_COMMENT => None,
            n => {
                let at = self.key_len as usize + COMMENT_OPEN.len();
                self.text.get(at..at + n as usize)
            }
        }
    }

    /// As it appears inside `add element ... { }`.
    pub fn rendered(&self) -> &'a str {
        self.text
    }

    /// Value and comment as an IR [`Element`].
    pub fn element(&self) -> Element {
        Element {
            value: self.value().map(String::from),
            comment: self.comment().map(String::from),
        }
    }
}

/// The sets an element can name, by index: the shared sets, then any
/// other name seen (tests' own sets), added on first use.
fn set_index(set: &'static str) -> u8 {
    if let Some(i) = STATIC_SETS.iter().position(|s| *s == set) {
        return i as u8;
    }
    let mut other = OTHER_SETS.lock().unwrap_or_else(|e| e.into_inner());
    let i = match other.iter().position(|s| *s == set) {
        Some(i) => i,
        None => {
            other.push(set);
            other.len() - 1
        }
    };
    u8::try_from(STATIC_SETS.len() + i).expect("fewer than 256 set names")
}

fn set_of(i: u8) -> &'static str {
    match STATIC_SETS.get(i as usize) {
        Some(s) => s,
        None => {
            let other = OTHER_SETS.lock().unwrap_or_else(|e| e.into_inner());
            other[i as usize - STATIC_SETS.len()]
        }
    }
}

static OTHER_SETS: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

/// The skeleton's sets: every set whose name is fixed.
pub(super) const STATIC_SETS: [&str; 23] = [
    sets::CLUSTER_IPS,
    sets::NODEPORT_IPS,
    sets::SERVICE_CIDRS,
    sets::SERVICE_IPS,
    sets::SERVICE_NODEPORTS,
    sets::NO_ENDPOINT_SERVICES,
    sets::NO_ENDPOINT_NODEPORTS,
    sets::FIREWALL_IPS,
    sets::HAIRPIN,
    sets::CLUSTER_EPS[0],
    sets::CLUSTER_EPS[1],
    sets::CLUSTER_EPS[2],
    sets::LOCAL_EPS[0],
    sets::LOCAL_EPS[1],
    sets::LOCAL_EPS[2],
    sets::NP_CLUSTER_EPS[0],
    sets::NP_CLUSTER_EPS[1],
    sets::NP_CLUSTER_EPS[2],
    sets::NP_LOCAL_EPS[0],
    sets::NP_LOCAL_EPS[1],
    sets::NP_LOCAL_EPS[2],
    sets::GENERATION,
    sets::AFFINITY,
];

/// Where one element of an [`Elems`] is: 12 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ElemAt {
    start: u32,
    key_len: u16,
    comment_len: u16,
    set: u8,
    value: bool,
}

/// A service port's elements, packed: their rendered texts one after the
/// other in one string, and 12 bytes an element to find each (its set as
/// a byte). The state kept between syncs holds ~12 elements per service
/// port, 600,000 at 50,000 services: an [`Elem`] each took 40 bytes and an
/// allocation of its own (about 16 bytes of allocator overhead).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Elems {
    text: String,
    at: Vec<ElemAt>,
}

impl Elems {
    /// No elements.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add an element of `set`.
    pub fn push(&mut self, set: &'static str, key: &str, elem: &Element) {
        let start = u32::try_from(self.text.len()).expect("a contribution under 4 GiB");
        self.text.reserve(elem_text_len(key, elem));
        let (key_len, comment_len) = write_elem(&mut self.text, key, elem);
        self.at.push(ElemAt {
            start,
            key_len,
            comment_len,
            set: set_index(set),
            value: elem.value.is_some(),
        });
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Element `i`.
    pub fn get(&self, i: usize) -> Option<ElemRef<'_>> {
        let a = self.at.get(i)?;
        let end = self
            .at
            .get(i + 1)
            .map_or(self.text.len(), |n| n.start as usize);
        Some(ElemRef {
            set: set_of(a.set),
            text: self.text.get(a.start as usize..end)?,
            key_len: a.key_len,
            comment_len: a.comment_len,
            value: a.value,
        })
    }

    /// The elements in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = ElemRef<'_>> + ExactSizeIterator + '_ {
        (0..self.at.len()).map(|i| self.get(i).expect("in range"))
    }

    /// Drop spare capacity (the state keeps contributions for long).
    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.at.shrink_to_fit();
    }
}

impl<'a> FromIterator<&'a Elem> for Elems {
    fn from_iter<I: IntoIterator<Item = &'a Elem>>(iter: I) -> Self {
        let mut out = Elems::new();
        for e in iter {
            out.push(e.set, e.key(), &e.element());
        }
        out
    }
}

impl FromIterator<Elem> for Elems {
    fn from_iter<I: IntoIterator<Item = Elem>>(iter: I) -> Self {
        let mut out = Elems::new();
        for e in iter {
            out.push(e.set, e.key(), &e.element());
        }
        out
    }
}
