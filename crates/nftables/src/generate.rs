//! The generator: [`ServiceGraph`] → one [`Table`] per family.
//!
//! The output is split into the part that does not depend on any one
//! service (the skeleton: base chains, helper chains, the shared sets and
//! maps, node and CIDR elements) and one [`ServiceRules`] per service port
//! (its elements in the shared maps, the per-service chains and sets it
//! needs, and the shared load-balancing chains it uses). A full sync
//! assembles them all ([`FamilyRules::assemble`]); an incremental sync
//! regenerates only the service ports that changed and diffs their
//! contributions (see [`crate::diff`]).
//!
//! Layout (docs/backends/nftables.md has the whole story): traffic is
//! classified by the verdict maps `service-ips` (VIP . proto . port) and
//! `service-nodeports` (proto . port) into *shared* load-balancing chains,
//! one per endpoint count K and endpoint set (`cluster-K`, `local-K`,
//! `nodeport-cluster-K`, `nodeport-local-K`), whose single rule DNATs
//! through a data map keyed by the original destination and
//! `numgen random mod K`. Per-service chains exist only where a feature
//! needs them: `externalTrafficPolicy: Local` short-circuits, ClientIP
//! affinity, and source-range firewalls.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use kproxy_graph::{
    Endpoint, FamilyGraph, GenError, Generator, IpFamily, LocalTraffic, NoEndpointVerdict,
    NodePortIps, Protocol, ServiceGraph, ServicePort, ServicePortName, TrafficPolicy,
};

use crate::ir::{
    Chain, ChainType, ChunkWriter, Element, Family, Hook, HookPoint, Op, Priority, Rule, Set,
    SetType, Table,
};
use crate::names;

/// The table name kproxy owns in both families.
pub const TABLE: &str = "kproxy";
/// The table's comment.
pub const TABLE_COMMENT: &str = "rules for kproxy";

/// Names of the shared sets and maps.
pub mod sets {
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
    pub const CLUSTER_EPS: [&str; 3] = [
        "cluster-endpoints-tcp",
        "cluster-endpoints-udp",
        "cluster-endpoints-sctp",
    ];
    /// VIP . proto . port . index → endpoint . port, local endpoints.
    pub const LOCAL_EPS: [&str; 3] = [
        "local-endpoints-tcp",
        "local-endpoints-udp",
        "local-endpoints-sctp",
    ];
    /// proto . port . index → endpoint . port, cluster endpoints (NodePorts).
    pub const NP_CLUSTER_EPS: [&str; 3] = [
        "nodeport-cluster-endpoints-tcp",
        "nodeport-cluster-endpoints-udp",
        "nodeport-cluster-endpoints-sctp",
    ];
    /// proto . port . index → endpoint . port, local endpoints (NodePorts).
    pub const NP_LOCAL_EPS: [&str; 3] = [
        "nodeport-local-endpoints-tcp",
        "nodeport-local-endpoints-udp",
        "nodeport-local-endpoints-sctp",
    ];
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
pub const AFFINITY_SIZE: u32 = 1 << 20;

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
    fn prefix(self) -> &'static str {
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
pub fn ep_map_name(kind: LbKind, proto: Protocol) -> Option<&'static str> {
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
const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

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

fn mark_stmt(mark: u32) -> String {
    format!("meta mark set meta mark | {mark:#x}")
}

/// Family-specific spellings.
#[derive(Debug, Clone, Copy)]
pub struct Fam {
    /// The nft family.
    pub f: Family,
}

impl Fam {
    fn daddr(&self) -> String {
        format!("{} daddr", self.f.as_str())
    }
    fn saddr(&self) -> String {
        format!("{} saddr", self.f.as_str())
    }
    fn loopback(&self) -> &'static str {
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Elem {
    /// The shared set's name (one of [`sets`]).
    pub set: &'static str,
    text: Box<str>,
    key_len: u32,
    comment: Option<(u32, u32)>,
    value_at: Option<u32>,
}

impl Elem {
    /// An element of `set`.
    pub fn new(set: &'static str, key: &str, elem: &Element) -> Elem {
        let mut text = String::with_capacity(
            key.len()
                + elem.comment.as_ref().map_or(0, |c| c.len() + 11)
                + elem.value.as_ref().map_or(0, |v| v.len() + 3),
        );
        text.push_str(key);
        let comment = elem.comment.as_ref().map(|c| {
            text.push_str(" comment \"");
            let start = text.len() as u32;
            text.push_str(c);
            let end = text.len() as u32;
            text.push('"');
            (start, end)
        });
        let value_at = elem.value.as_ref().map(|v| {
            text.push_str(" : ");
            let at = text.len() as u32;
            text.push_str(v);
            at
        });
        Elem {
            set,
            text: text.into_boxed_str(),
            key_len: key.len() as u32,
            comment,
            value_at,
        }
    }

    /// The key text.
    pub fn key(&self) -> &str {
        &self.text[..self.key_len as usize]
    }

    /// The value (maps).
    pub fn value(&self) -> Option<&str> {
        self.value_at.map(|at| &self.text[at as usize..])
    }

    /// The comment.
    pub fn comment(&self) -> Option<&str> {
        self.comment
            .map(|(a, b)| &self.text[a as usize..b as usize])
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

/// What one service port contributes to its family's table: chains and
/// elements of the skeleton's sets and maps (no sets of its own).
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct ServiceRules {
    /// Per-service chains (affinity, eTP=Local, firewall), sorted by name.
    pub chains: Vec<Chain>,
    /// Elements in shared sets and maps.
    pub elems: Vec<Elem>,
    /// The ids its endpoints have in the shared `affinity` set, sorted:
    /// when an endpoint goes away, the backend removes its entries.
    pub affinity_ids: Vec<(u32, u32)>,
    /// The shared load-balancing chains it uses.
    pub lb: BTreeSet<LbChain>,
}

/// One family's rules: the skeleton plus each service port's contribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyRules {
    /// Base and helper chains, shared sets and maps with the elements that
    /// do not belong to a service port.
    pub skeleton: Table,
    /// Per service port.
    pub services: BTreeMap<ServicePortName, ServiceRules>,
    /// The masquerade mark (shared load-balancing chains use it).
    pub mark: u32,
}

impl FamilyRules {
    /// The complete table. Where two service ports claim the same key
    /// (two Services with one ExternalIP and port, say) the first in
    /// service-port order wins, so the output is still loadable.
    pub fn assemble(&self) -> Table {
        let mut t = self.structure();
        for sr in self.services.values() {
            for e in &sr.elems {
                if let Some(set) = t.sets.get_mut(e.set) {
                    set.elements
                        .entry(e.key().to_string())
                        .or_insert_with(|| e.element());
                }
            }
        }
        t
    }

    /// The table without the service ports' elements: every chain (base,
    /// helper, per-service, shared load-balancing) and every set and map
    /// (with the skeleton's own elements).
    pub fn structure(&self) -> Table {
        let mut t = self.skeleton.clone();
        let mut lbs = BTreeSet::new();
        for sr in self.services.values() {
            for c in &sr.chains {
                t.chains.entry(c.name.clone()).or_insert_with(|| c.clone());
            }
            lbs.extend(sr.lb.iter().copied());
        }
        let fam = Fam { f: t.fam() };
        for lb in lb_closure(&lbs) {
            let c = lb.chain(&fam, self.mark);
            t.chains.insert(c.name.clone(), c);
        }
        t
    }

    /// Write the statements that replace this family's table (`add table;
    /// delete table;` then everything) into `w`. Same content as
    /// [`crate::ir::Transaction::replace_table`] of [`FamilyRules::assemble`], with
    /// elements in service-port order, without building either.
    pub fn render_full(&self, w: &mut ChunkWriter) {
        let st = self.structure();
        let (f, t) = (st.fam(), st.name.as_str());
        w.op(
            f,
            t,
            &Op::AddTable {
                comment: st.comment.clone(),
            },
        );
        w.op(f, t, &Op::DeleteTable);
        w.op(
            f,
            t,
            &Op::AddTable {
                comment: st.comment.clone(),
            },
        );
        for c in st.chains.values() {
            w.op(
                f,
                t,
                &Op::AddChain {
                    name: c.name.clone(),
                    hook: c.hook.clone(),
                },
            );
        }
        for s in st.sets.values() {
            w.op(f, t, &Op::AddSet(s.decl_only()));
        }
        for c in st.chains.values() {
            for r in &c.rules {
                w.op(
                    f,
                    t,
                    &Op::AddRule {
                        chain: c.name.clone(),
                        rule: r.clone(),
                    },
                );
            }
        }
        // Data maps and sets first, verdict maps last: when the load is
        // split, a service is routed only once its endpoints are in place.
        let is_verdict =
            |s: &Set| matches!(&s.set_type, SetType::Type(ty) if ty.ends_with(": verdict"));
        let ordered = st
            .sets
            .values()
            .filter(|s| !is_verdict(s))
            .chain(st.sets.values().filter(|s| is_verdict(s)));
        // One pass over the contributions, bucketed by set; the first
        // claim of a key wins (the same rule as `assemble`).
        let mut own: Vec<Elem> = Vec::new();
        for (name, set) in &st.sets {
            for (k, e) in &set.elements {
                // Skeleton sets are named by `sets` constants; find the
                // static name so the element can be bucketed with the rest.
                if let Some(static_name) = skeleton_set_name(name) {
                    own.push(Elem::new(static_name, k, e));
                }
            }
        }
        let mut buckets: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut seen: HashSet<(&str, &str), FastHash> = HashSet::default();
        for e in own
            .iter()
            .chain(self.services.values().flat_map(|sr| sr.elems.iter()))
        {
            if st.sets.contains_key(e.set) && seen.insert((e.set, e.key())) {
                buckets.entry(e.set).or_default().push(e.rendered());
            }
        }
        drop(seen);
        for s in ordered {
            if let Some(b) = buckets.remove(s.name.as_str()) {
                w.rendered_elements(f, t, &s.name, b);
            }
        }
    }
}

/// The static name of a skeleton set.
fn skeleton_set_name(name: &str) -> Option<&'static str> {
    [
        sets::CLUSTER_IPS,
        sets::NODEPORT_IPS,
        sets::SERVICE_CIDRS,
        sets::SERVICE_IPS,
        sets::SERVICE_NODEPORTS,
        sets::NO_ENDPOINT_SERVICES,
        sets::NO_ENDPOINT_NODEPORTS,
        sets::FIREWALL_IPS,
        sets::HAIRPIN,
        sets::GENERATION,
        sets::AFFINITY,
    ]
    .into_iter()
    .chain(sets::CLUSTER_EPS)
    .chain(sets::LOCAL_EPS)
    .chain(sets::NP_CLUSTER_EPS)
    .chain(sets::NP_LOCAL_EPS)
    .find(|s| *s == name)
}

/// FNV-1a: the render path hashes ~600,000 short keys at 50,000 services,
/// where SipHash's DoS resistance buys nothing (the keys are ours).
#[derive(Debug, Clone, Copy, Default)]
pub struct FastHash;

impl std::hash::BuildHasher for FastHash {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

/// The FNV-1a hasher of [`FastHash`].
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The nftables generator (pure; no I/O).
#[derive(Debug, Clone, Default)]
pub struct NftGenerator;

/// The generator's output: per family, the skeleton and each service
/// port's contribution ([`FamilyRules`]); [`NftRuleset::tables`] assembles
/// them into [`Table`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRuleset {
    /// Per family, IPv4 first.
    pub families: Vec<FamilyRules>,
}

impl NftRuleset {
    /// The assembled tables, IPv4 first.
    pub fn tables(&self) -> Vec<Table> {
        self.families.iter().map(FamilyRules::assemble).collect()
    }
}

impl kproxy_graph::Render for NftRuleset {
    fn render(&self) -> String {
        let mut w = ChunkWriter::new(usize::MAX);
        for fr in &self.families {
            fr.render_full(&mut w);
        }
        w.finish().concat()
    }
}

impl Generator for NftGenerator {
    type Ruleset = NftRuleset;

    fn generate(&self, graph: &ServiceGraph) -> Result<NftRuleset, GenError> {
        Ok(NftRuleset {
            families: generate_families(graph)?
                .into_iter()
                .map(|(_, fr)| fr)
                .collect(),
        })
    }
}

/// The nft family for a graph family.
pub fn nft_family(f: IpFamily) -> Family {
    match f {
        IpFamily::V4 => Family::Ip,
        IpFamily::V6 => Family::Ip6,
    }
}

/// Generate every family of the graph (both families always: an
/// IPv4-only graph still gets an empty `ip6` table, as kube-proxy does,
/// so a family that goes away is cleaned out by the next full sync).
pub fn generate_families(graph: &ServiceGraph) -> Result<Vec<(Family, FamilyRules)>, GenError> {
    let mut out = Vec::new();
    for fam in IpFamily::ALL {
        let empty;
        let fg = match graph.family(fam) {
            Some(fg) => fg,
            None => {
                empty = FamilyGraph::empty(fam);
                &empty
            }
        };
        out.push((nft_family(fam), generate_family(graph, fg)?));
    }
    Ok(out)
}

/// Every family's skeleton alone (the node-wide part: no service port),
/// for an incremental sync of node-wide sets such as the service CIDRs.
pub fn skeletons(graph: &ServiceGraph) -> Vec<(Family, Table)> {
    IpFamily::ALL
        .into_iter()
        .map(|fam| {
            let empty;
            let fg = match graph.family(fam) {
                Some(fg) => fg,
                None => {
                    empty = FamilyGraph::empty(fam);
                    &empty
                }
            };
            (nft_family(fam), skeleton(&Ctx::new(graph, fg)))
        })
        .collect()
}

/// Generation context for one family.
pub struct Ctx<'a> {
    fam: Fam,
    fg: &'a FamilyGraph,
    mark: u32,
    masquerade_all: bool,
}

impl<'a> Ctx<'a> {
    /// A context for one family graph.
    pub fn new(graph: &ServiceGraph, fg: &'a FamilyGraph) -> Self {
        Ctx {
            fam: Fam {
                f: nft_family(fg.family),
            },
            fg,
            mark: graph.masquerade_mark(),
            masquerade_all: graph.config.masquerade_all,
        }
    }

    /// The masquerade mark.
    pub fn mark(&self) -> u32 {
        self.mark
    }

    /// The nft family.
    pub fn fam(&self) -> Fam {
        self.fam
    }
}

/// Generate one family.
pub fn generate_family(graph: &ServiceGraph, fg: &FamilyGraph) -> Result<FamilyRules, GenError> {
    let ctx = Ctx::new(graph, fg);
    let skeleton = skeleton(&ctx);
    let mut services = BTreeMap::new();
    for (name, sp) in &fg.services {
        services.insert(name.clone(), service_rules(&ctx, sp)?);
    }
    Ok(FamilyRules {
        skeleton,
        services,
        mark: ctx.mark,
    })
}

/// The local-traffic detector as a match, `negate` for "not from pods".
fn detector(ctx: &Ctx, negate: bool) -> Option<String> {
    let op = if negate { "!= " } else { "" };
    match &ctx.fg.local_traffic {
        LocalTraffic::None => None,
        LocalTraffic::Cidr(c) => Some(format!("{} {op}{c}", ctx.fam.saddr())),
        LocalTraffic::Interface(i) => Some(format!("iifname {op}\"{}\"", ifname(i))),
        LocalTraffic::InterfacePrefix(p) => Some(format!("iifname {op}\"{}*\"", ifname(p))),
    }
}

/// Interface names are validated by intake; filter again so nothing can
/// escape the quotes (or become a wildcard) whatever reaches us.
fn ifname(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '*'))
        .take(15)
        .collect()
}

fn hook(chain_type: ChainType, hook: HookPoint, name: &'static str, offset: i32) -> Option<Hook> {
    Some(Hook {
        chain_type,
        hook,
        priority: Priority { name, offset },
    })
}

fn base_chain(name: &str, h: Option<Hook>, rules: &[&str]) -> Chain {
    Chain {
        name: name.to_string(),
        hook: h,
        rules: rules.iter().map(|r| Rule::new(*r)).collect(),
    }
}

fn vmap_set(name: &str, key: String, comment: &str) -> Set {
    Set {
        name: name.to_string(),
        map: true,
        set_type: SetType::Type(format!("{key} : verdict")),
        flags: vec![],
        timeout: None,
        size: None,
        comment: Some(names::comment(comment)),
        elements: BTreeMap::new(),
    }
}

fn plain_set(name: &str, ty: String, comment: &str) -> Set {
    Set {
        name: name.to_string(),
        map: false,
        set_type: SetType::Type(ty),
        flags: vec![],
        timeout: None,
        size: None,
        comment: Some(names::comment(comment)),
        elements: BTreeMap::new(),
    }
}

fn ep_map(name: &str, fam: &Fam, nodeport: bool, proto: Protocol, comment: &str) -> Set {
    let f = fam.f.as_str();
    let key = if nodeport {
        "meta l4proto . th dport . numgen random mod 1".to_string()
    } else {
        format!("{f} daddr . meta l4proto . th dport . numgen random mod 1")
    };
    Set {
        name: name.to_string(),
        map: true,
        // `tcp dport` (per protocol) rather than `th dport`: see `LbChain::chain`.
        set_type: SetType::Typeof(format!("{key} : {f} daddr . {} dport", proto.as_str())),
        flags: vec![],
        timeout: None,
        size: None,
        comment: Some(names::comment(comment)),
        elements: BTreeMap::new(),
    }
}

/// Base chains, with the priorities documented in docs/backends/nftables.md
/// (kube-proxy v1.34+'s: the source-range firewall pre-DNAT at dstnat-10,
/// the no-endpoint and ClusterIP checks post-DNAT at filter, DNAT at
/// dstnat, masquerading at srcnat).
fn skeleton(ctx: &Ctx) -> Table {
    use ChainType::*;
    use HookPoint::*;
    let fam = &ctx.fam;
    let a = fam.f.addr_type();
    let d = fam.daddr();
    let mut t = Table::new(fam.f, TABLE, Some(TABLE_COMMENT));
    let mut add = |c: Chain| {
        t.chains.insert(c.name.clone(), c);
    };
    add(base_chain(
        "filter-prerouting-pre-dnat",
        hook(Filter, Prerouting, "dstnat", -10),
        &["ct state new jump firewall-check"],
    ));
    add(base_chain(
        "filter-output-pre-dnat",
        hook(Filter, Output, "dstnat", -10),
        &["ct state new jump firewall-check"],
    ));
    add(base_chain(
        "filter-forward",
        hook(Filter, Forward, "filter", 0),
        &[
            "ct state new jump service-endpoints-check",
            "ct state new jump cluster-ips-check",
        ],
    ));
    add(base_chain(
        "filter-input",
        hook(Filter, Input, "filter", 0),
        &[
            "ct state new jump nodeport-endpoints-check",
            "ct state new jump service-endpoints-check",
        ],
    ));
    add(base_chain(
        "filter-output",
        hook(Filter, Output, "filter", 0),
        &[
            "ct state new jump service-endpoints-check",
            "ct state new jump cluster-ips-check",
        ],
    ));
    add(base_chain(
        "nat-prerouting",
        hook(Nat, Prerouting, "dstnat", 0),
        &["jump services"],
    ));
    add(base_chain(
        "nat-output",
        hook(Nat, Output, "dstnat", 0),
        &["jump services"],
    ));
    add(base_chain(
        "nat-postrouting",
        hook(Nat, Postrouting, "srcnat", 0),
        &["jump masquerading"],
    ));

    // NodePort destination match, shared by `services` and
    // `nodeport-endpoints-check`; None when no address accepts NodePorts.
    let np_match = match &ctx.fg.nodeport_ips {
        NodePortIps::All => Some(format!(
            "fib daddr type local {d} != {} meta l4proto . th dport",
            fam.loopback()
        )),
        NodePortIps::Only(ips) if ips.is_empty() => None,
        NodePortIps::Only(_) => Some(format!(
            "{d} @{} meta l4proto . th dport",
            sets::NODEPORT_IPS
        )),
    };

    let mut services = Vec::new();
    let mark = mark_stmt(ctx.mark);
    if ctx.masquerade_all {
        services.push(Rule::new(format!("{d} @{} {mark}", sets::CLUSTER_IPS)));
    } else if let Some(not_pod) = detector(ctx, true) {
        services.push(Rule::new(format!(
            "{d} @{} {not_pod} {mark}",
            sets::CLUSTER_IPS
        )));
    }
    services.push(Rule::new(format!(
        "{d} . meta l4proto . th dport vmap @{}",
        sets::SERVICE_IPS
    )));
    if let Some(m) = &np_match {
        services.push(Rule::new(format!("{m} vmap @{}", sets::SERVICE_NODEPORTS)));
    }
    add(Chain::new("services", services));

    add(Chain::new(
        "masquerading",
        vec![
            Rule::new(format!(
                "meta mark & {m:#x} != 0 meta mark set meta mark ^ {m:#x} masquerade fully-random",
                m = ctx.mark
            )),
            Rule::new(format!(
                "ct status dnat {s} . {d} . meta l4proto . th dport @{} masquerade fully-random",
                sets::HAIRPIN,
                s = fam.saddr()
            )),
        ],
    ));
    add(Chain::new(
        "firewall-check",
        vec![Rule::new(format!(
            "{d} . meta l4proto . th dport vmap @{}",
            sets::FIREWALL_IPS
        ))],
    ));
    add(Chain::new(
        "service-endpoints-check",
        vec![Rule::new(format!(
            "{d} . meta l4proto . th dport vmap @{}",
            sets::NO_ENDPOINT_SERVICES
        ))],
    ));
    add(Chain::new(
        "nodeport-endpoints-check",
        np_match
            .iter()
            .map(|m| Rule::new(format!("{m} vmap @{}", sets::NO_ENDPOINT_NODEPORTS)))
            .collect(),
    ));
    let mut cip = vec![Rule::commented(
        format!("{d} @{} reject", sets::CLUSTER_IPS),
        "Reject traffic to invalid ports of ClusterIPs",
    )];
    // kube-proxy writes the CIDRs inline (`ip daddr { ... } drop`) and
    // rewrites the chain every sync; a named set lets a ServiceCIDR change
    // be an element update.
    let service_cidrs = (!ctx.fg.service_cidrs.is_empty()).then(|| {
        let mut set = plain_set(
            sets::SERVICE_CIDRS,
            a.to_string(),
            "Service CIDRs: unallocated ClusterIPs are dropped",
        );
        set.flags = vec!["interval"];
        for c in disjoint_cidrs(ctx.fg.service_cidrs.clone()) {
            set.elements.insert(c.to_string(), Element::default());
        }
        cip.push(Rule::commented(
            format!("{d} @{} drop", sets::SERVICE_CIDRS),
            "Drop traffic to unallocated ClusterIPs",
        ));
        set
    });
    add(Chain::new("cluster-ips-check", cip));
    add(Chain::new("reject-chain", vec![Rule::new("reject")]));

    let vip = format!("{a} . inet_proto . inet_service");
    let np = "inet_proto . inet_service".to_string();
    let mut sets_ = vec![
        plain_set(sets::CLUSTER_IPS, a.to_string(), "Active ClusterIPs"),
        plain_set(
            sets::NODEPORT_IPS,
            a.to_string(),
            "IPs that accept NodePort traffic",
        ),
        vmap_set(
            sets::SERVICE_IPS,
            vip.clone(),
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        ),
        vmap_set(sets::SERVICE_NODEPORTS, np.clone(), "NodePort traffic"),
        vmap_set(
            sets::NO_ENDPOINT_SERVICES,
            vip.clone(),
            "vmap to drop or reject packets to services with no endpoints",
        ),
        vmap_set(
            sets::NO_ENDPOINT_NODEPORTS,
            np,
            "vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        vmap_set(
            sets::FIREWALL_IPS,
            vip,
            "destinations that are subject to LoadBalancerSourceRanges",
        ),
        plain_set(
            sets::HAIRPIN,
            format!("{a} . {a} . inet_proto . inet_service"),
            "local endpoint connections to themselves",
        ),
        plain_set(sets::GENERATION, "mark".to_string(), "sync generation"),
        Set {
            name: sets::AFFINITY.to_string(),
            map: false,
            set_type: SetType::Typeof(format!(
                "{} . {ID} . {ID}",
                fam.saddr(),
                ID = names::AFFINITY_ID_TYPE
            )),
            flags: vec!["dynamic", "timeout"],
            timeout: None,
            size: Some(AFFINITY_SIZE),
            comment: Some(names::comment("ClientIP affinity: client . endpoint id")),
            elements: BTreeMap::new(),
        },
    ];
    for proto in PROTOCOLS {
        for (kind, nodeport, what) in [
            (LbKind::Cluster, false, "cluster endpoints by VIP"),
            (LbKind::Local, false, "local endpoints by VIP"),
            (
                LbKind::NodePortCluster,
                true,
                "cluster endpoints by NodePort",
            ),
            (LbKind::NodePortLocal, true, "local endpoints by NodePort"),
        ] {
            if let Some(name) = ep_map_name(kind, proto) {
                sets_.push(ep_map(name, fam, nodeport, proto, what));
            }
        }
    }
    if let NodePortIps::Only(ips) = &ctx.fg.nodeport_ips {
        for ip in ips {
            sets_[1].elements.insert(ip.to_string(), Element::default());
        }
    }
    sets_.extend(service_cidrs);
    for s in sets_ {
        t.sets.insert(s.name.clone(), s);
    }
    t
}

fn verdict(v: Option<NoEndpointVerdict>) -> String {
    match v {
        Some(NoEndpointVerdict::Drop) => "drop".to_string(),
        // Reject when unspecified: the graph says there is nothing to serve.
        Some(NoEndpointVerdict::Reject) | None => "goto reject-chain".to_string(),
    }
}

fn ep_value(ep: &Endpoint) -> String {
    format!("{} . {}", ep.ip, ep.port)
}

/// Which key an endpoint lookup uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Vip(IpAddr),
    NodePort(u16),
}

struct SvcCtx<'a, 'b> {
    ctx: &'a Ctx<'b>,
    sp: &'a ServicePort,
    proto: &'static str,
    base: String,
    comment: String,
    out: ServiceRules,
}

impl SvcCtx<'_, '_> {
    fn elem(&mut self, set: &'static str, key: String, value: Option<String>, comment: bool) {
        let e = Element {
            value,
            comment: comment.then(|| self.comment.clone()),
        };
        self.out.elems.push(Elem::new(set, &key, &e));
    }

    fn eps(&self, policy: TrafficPolicy) -> &[std::sync::Arc<Endpoint>] {
        match policy {
            TrafficPolicy::Cluster => &self.sp.cluster_endpoints,
            TrafficPolicy::Local => &self.sp.local_endpoints,
        }
    }

    fn vip_key(&self, ip: IpAddr) -> String {
        format!("{ip} . {} . {}", self.proto, self.sp.port)
    }

    /// The chain that load-balances `policy`'s endpoints for traffic
    /// arriving `via`, adding the endpoint elements it reads. `None` when
    /// that set is empty.
    fn policy_target(&mut self, policy: TrafficPolicy, via: Via) -> Option<String> {
        let n = self.eps(policy).len();
        if n == 0 {
            return None;
        }
        if self.sp.session_affinity.is_some() {
            let prefix = match policy {
                TrafficPolicy::Cluster => "service",
                TrafficPolicy::Local => "local",
            };
            return Some(format!("{prefix}-{}", self.base));
        }
        let (kind, key_prefix) = match (policy, via) {
            (TrafficPolicy::Cluster, Via::Vip(ip)) => (LbKind::Cluster, self.vip_key(ip)),
            (TrafficPolicy::Local, Via::Vip(ip)) => (LbKind::Local, self.vip_key(ip)),
            (TrafficPolicy::Cluster, Via::NodePort(p)) => {
                (LbKind::NodePortCluster, format!("{} . {p}", self.proto))
            }
            (TrafficPolicy::Local, Via::NodePort(p)) => {
                (LbKind::NodePortLocal, format!("{} . {p}", self.proto))
            }
        };
        let protocol = self.sp.name.protocol;
        let map = ep_map_name(kind, protocol)?;
        let values: Vec<String> = self.eps(policy).iter().map(|e| ep_value(e)).collect();
        for (i, v) in values.into_iter().enumerate() {
            self.elem(map, format!("{key_prefix} . {i}"), Some(v), false);
        }
        let lb = LbChain {
            kind,
            proto: protocol,
            k: n,
        };
        self.out.lb.insert(lb);
        Some(lb.name())
    }

    /// The chain external traffic arriving `via` goes to.
    fn external_target(&mut self, via: Via) -> Option<String> {
        let d = &self.sp.decisions;
        let affinity = self.sp.session_affinity.is_some();
        if d.external_policy_chain == TrafficPolicy::Cluster {
            if affinity {
                let inner = self.policy_target(TrafficPolicy::Cluster, via)?;
                let name = format!("external-{}", self.base);
                self.ensure_chain(
                    &name,
                    vec![Rule::new(format!(
                        "{} goto {inner}",
                        mark_stmt(self.ctx.mark)
                    ))],
                );
                return Some(name);
            }
            self.policy_target(TrafficPolicy::Cluster, via)?;
            let n = self.sp.cluster_endpoints.len();
            let kind = match via {
                Via::Vip(_) => LbKind::MarkCluster,
                Via::NodePort(_) => LbKind::MarkNodePortCluster,
            };
            let lb = LbChain {
                kind,
                proto: self.sp.name.protocol,
                k: n,
            };
            self.out.lb.insert(lb);
            return Some(lb.name());
        }
        // externalTrafficPolicy: Local, kube-proxy's external chain.
        let name = match (via, affinity) {
            (Via::NodePort(_), false) => format!("nodeport-{}", self.base),
            _ => format!("external-{}", self.base),
        };
        let mut rules = Vec::new();
        let cluster = if d.uses_cluster_chain {
            self.policy_target(TrafficPolicy::Cluster, via)
        } else {
            None
        };
        if let Some(ct) = &cluster {
            if let Some(pod) = detector(self.ctx, false) {
                rules.push(Rule::commented(
                    format!("{pod} goto {ct}"),
                    "short-circuit pod traffic",
                ));
            }
            rules.push(Rule::commented(
                format!(
                    "fib saddr type local {} goto {ct}",
                    mark_stmt(self.ctx.mark)
                ),
                "short-circuit local traffic",
            ));
        }
        if d.has_external_endpoints
            && let Some(lt) = self.policy_target(TrafficPolicy::Local, via)
        {
            rules.push(Rule::new(format!("goto {lt}")));
        }
        self.ensure_chain(&name, rules);
        Some(name)
    }

    fn ensure_chain(&mut self, name: &str, rules: Vec<Rule>) {
        if !self.out.chains.iter().any(|c| c.name == name) {
            self.out.chains.push(Chain::new(name, rules));
        }
    }

    /// ClientIP affinity: kube-proxy's `service-`/`local-` chains without
    /// its per-endpoint chains or sets. The clients live in the one shared
    /// `affinity` set, keyed by client . endpoint id with the Service's
    /// timeout on each element (the kernel finds named sets by walking a
    /// list, so a set per endpoint makes loads quadratic). Each endpoint
    /// is one rule that sends a remembered client back to it, refreshing
    /// the entry; then new clients are spread by a cascade of `numgen
    /// random mod N-i 0` rules (probability 1/N each, as the iptables
    /// backends' `statistic` rules), each remembering the pick. No chain
    /// per endpoint: nft reads every chain of the table into its cache
    /// for any later transaction, so tens of thousands of them would make
    /// every incremental sync slow.
    fn affinity_chains(&mut self) {
        let Some(aff) = self.sp.session_affinity else {
            return;
        };
        let fam = self.ctx.fam;
        let d = &self.sp.decisions;
        let mut wanted = Vec::new();
        if d.uses_cluster_chain && !self.sp.cluster_endpoints.is_empty() {
            wanted.push(("service", self.sp.cluster_endpoints.clone()));
        }
        if d.uses_local_chain && !self.sp.local_endpoints.is_empty() {
            wanted.push(("local", self.sp.local_endpoints.clone()));
        }
        let mut ids = BTreeSet::new();
        for (prefix, eps) in wanted {
            let mut rules = Vec::new();
            let mut picks = Vec::new();
            for ep in eps.iter() {
                let id = names::affinity_id(&self.sp.name, ep);
                ids.insert(id);
                let key = names::affinity_key(id);
                let dst = match ep.ip {
                    IpAddr::V4(ip) => format!("{ip}:{}", ep.port),
                    IpAddr::V6(ip) => format!("[{ip}]:{}", ep.port),
                };
                let then = format!(
                    "meta l4proto {} update @{} {{ {} . {key} timeout {}s }} dnat {} to {dst}",
                    self.proto,
                    sets::AFFINITY,
                    fam.saddr(),
                    aff.timeout_seconds,
                    fam.f.as_str()
                );
                rules.push(Rule::new(format!(
                    "{} . {key} @{} {then}",
                    fam.saddr(),
                    sets::AFFINITY
                )));
                picks.push(then);
            }
            let n = picks.len();
            for (i, then) in picks.into_iter().enumerate() {
                if i + 1 < n {
                    rules.push(Rule::new(format!("numgen random mod {} 0 {then}", n - i)));
                } else {
                    rules.push(Rule::new(then));
                }
            }
            let name = format!("{prefix}-{}", self.base);
            self.ensure_chain(&name, rules);
        }
        self.out.affinity_ids = ids.into_iter().collect();
    }
}

/// Everything one service port contributes.
pub fn service_rules(ctx: &Ctx, sp: &ServicePort) -> Result<ServiceRules, GenError> {
    if IpFamily::of(&sp.cluster_ip) != ctx.fg.family {
        return Err(GenError::Unsupported {
            object: sp.name.to_string(),
            reason: format!("ClusterIP {} is not {}", sp.cluster_ip, ctx.fg.family),
        });
    }
    let mut s = SvcCtx {
        ctx,
        sp,
        proto: sp.name.protocol.as_str(),
        base: names::service_base(&sp.name),
        comment: names::service_comment(&sp.name),
        out: ServiceRules::default(),
    };
    let d = sp.decisions.clone();
    let same_family = |ip: &IpAddr| IpFamily::of(ip) == ctx.fg.family;

    s.affinity_chains();

    // ClusterIP.
    s.elem(sets::CLUSTER_IPS, sp.cluster_ip.to_string(), None, false);
    let cip_key = s.vip_key(sp.cluster_ip);
    let internal = if d.has_internal_endpoints {
        s.policy_target(d.internal_policy_chain, Via::Vip(sp.cluster_ip))
    } else {
        None
    };
    match internal {
        Some(target) => s.elem(
            sets::SERVICE_IPS,
            cip_key,
            Some(format!("goto {target}")),
            true,
        ),
        None => s.elem(
            sets::NO_ENDPOINT_SERVICES,
            cip_key,
            Some(verdict(d.internal_verdict)),
            true,
        ),
    }

    // ExternalIPs and VIP-mode LoadBalancer IPs.
    let mut vips: Vec<IpAddr> = sp
        .external_ips
        .iter()
        .copied()
        .filter(same_family)
        .collect();
    let lb_ips: Vec<IpAddr> = sp.vip_load_balancer_ips().filter(same_family).collect();
    vips.extend(lb_ips.iter().copied());
    vips.sort();
    vips.dedup();
    for ip in &vips {
        let key = s.vip_key(*ip);
        if d.uses_external_chain
            && let Some(target) = s.external_target(Via::Vip(*ip))
        {
            s.elem(
                sets::SERVICE_IPS,
                key.clone(),
                Some(format!("goto {target}")),
                true,
            );
        }
        if !d.has_external_endpoints {
            s.elem(
                sets::NO_ENDPOINT_SERVICES,
                key,
                Some(verdict(d.external_verdict)),
                true,
            );
        }
    }

    // NodePort.
    if let Some(np) = sp.node_port {
        let key = format!("{} . {np}", s.proto);
        if d.uses_external_chain
            && let Some(target) = s.external_target(Via::NodePort(np))
        {
            s.elem(
                sets::SERVICE_NODEPORTS,
                key.clone(),
                Some(format!("goto {target}")),
                true,
            );
        }
        if !d.has_external_endpoints {
            s.elem(
                sets::NO_ENDPOINT_NODEPORTS,
                key,
                Some(verdict(d.external_verdict)),
                true,
            );
        }
    }

    // LoadBalancerSourceRanges: a firewall chain, entered pre-DNAT.
    if d.source_ranges_apply && !lb_ips.is_empty() {
        let ranges: Vec<_> = sp
            .source_ranges
            .iter()
            .filter(|r| kproxy_graph::IpFamily::of_net(r) == ctx.fg.family)
            .collect();
        let mut allowed: Vec<IpNet> = ranges.iter().map(|r| **r).collect();
        // A load balancer that hairpins traffic from a node back to it
        // uses its own IP as source; kube-proxy allows the LB IPs when a
        // range contains a node IP.
        if ranges
            .iter()
            .any(|r| ctx.fg.node_ips.iter().any(|ip| r.contains(ip)))
        {
            allowed.extend(lb_ips.iter().map(|ip| IpNet::from(*ip)));
        }
        let allowed: Vec<String> = disjoint_cidrs(allowed)
            .iter()
            .map(|n| n.to_string())
            .collect();
        let name = format!("firewall-{}", s.base);
        let rule = if allowed.is_empty() {
            Rule::new("drop")
        } else {
            Rule::new(format!(
                "{} != {{ {} }} drop",
                ctx.fam.saddr(),
                allowed.join(", ")
            ))
        };
        s.ensure_chain(&name, vec![rule]);
        for ip in &lb_ips {
            s.elem(
                sets::FIREWALL_IPS,
                s.vip_key(*ip),
                Some(format!("goto {name}")),
                true,
            );
        }
    }

    // Hairpin: a local endpoint reaching itself through the service.
    for ep in &sp.reachable_endpoints {
        if ep.is_local && same_family(&ep.ip) {
            s.elem(
                sets::HAIRPIN,
                format!("{ip} . {ip} . {} . {}", s.proto, ep.port, ip = ep.ip),
                None,
                false,
            );
        }
    }

    s.out.chains.sort_by(|a, b| a.name.cmp(&b.name));
    s.out.elems.shrink_to_fit();
    Ok(s.out)
}

/// Add the shared load-balancing chains `lbs` (and the chains they go to).
pub fn lb_closure(lbs: &BTreeSet<LbChain>) -> BTreeSet<LbChain> {
    let mut all = lbs.clone();
    for lb in lbs {
        if let Some(i) = lb.inner() {
            all.insert(i);
        }
    }
    all
}

/// The CIDRs of `nets` (normalised to their network address) without the
/// ones another contains. An anonymous nft interval set refuses
/// overlapping elements, and two CIDRs either nest or are disjoint, so
/// this is all that is needed.
///
/// O(n log n): sorted by network address, shorter prefixes first, a CIDR
/// inside any kept one is inside the last kept one (the kept ones are
/// disjoint and in address order, so an earlier one ends before the last
/// one starts). One containment check per CIDR.
pub fn disjoint_cidrs(nets: Vec<IpNet>) -> Vec<IpNet> {
    disjoint_sorted(nets, |outer, inner| outer.contains(inner))
}

/// [`disjoint_cidrs`] with the containment check as a parameter (the
/// tests count its calls).
fn disjoint_sorted(
    nets: Vec<IpNet>,
    mut contains: impl FnMut(&IpNet, &IpNet) -> bool,
) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = nets.into_iter().map(|n| n.trunc()).collect();
    // `IpNet` orders by family, address, then prefix length: a container
    // comes before everything it contains.
    nets.sort_unstable();
    nets.dedup();
    let mut out: Vec<IpNet> = Vec::with_capacity(nets.len());
    for n in nets {
        if !out.last().is_some_and(|last| contains(last, &n)) {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_made_disjoint() {
        let nets = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.3/32",
            "192.168.1.7/24",
            "192.168.1.0/24",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let got: Vec<String> = disjoint_cidrs(nets).iter().map(|n| n.to_string()).collect();
        assert_eq!(got, vec!["10.0.0.0/8", "192.168.1.0/24"]);
    }

    /// Random nested and disjoint CIDRs of both families: the same answer
    /// as the definition (keep what no other CIDR contains), in order.
    #[test]
    fn disjoint_cidrs_matches_the_definition() {
        use kproxy_testkit::rand::rngs::StdRng;
        use kproxy_testkit::rand::{RngExt, SeedableRng};
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let nets: Vec<IpNet> = (0..rng.random_range(0..40))
                .map(|_| {
                    let a = rng.random_range(0..16u32) << 24 | rng.random_range(0..4u32) << 8;
                    if rng.random_bool(0.2) {
                        let ip = std::net::Ipv6Addr::from(u128::from(a) << 96);
                        IpNet::new(ip.into(), rng.random_range(0..=128)).unwrap()
                    } else {
                        let ip = std::net::Ipv4Addr::from(a);
                        IpNet::new(ip.into(), rng.random_range(0..=32)).unwrap()
                    }
                })
                .collect();
            let truncated: Vec<IpNet> = nets.iter().map(|n| n.trunc()).collect();
            let mut want: Vec<IpNet> = truncated
                .iter()
                .filter(|n| !truncated.iter().any(|o| o != *n && o.contains(*n)))
                .copied()
                .collect();
            want.sort();
            want.dedup();
            assert_eq!(disjoint_cidrs(nets.clone()), want, "seed {seed}: {nets:?}");
        }
    }

    /// Linear in the number of ranges (60,000 source ranges were
    /// quadratic): one containment check per CIDR, whatever their shape.
    #[test]
    fn disjoint_cidrs_checks_each_cidr_once() {
        let n = 20_000u32;
        // Disjoint /32s, and a run of CIDRs each inside the one before.
        let mut nets: Vec<IpNet> = (0..n)
            .map(|i| IpNet::new(std::net::Ipv4Addr::from(0x0b00_0000 + i * 4).into(), 32).unwrap())
            .collect();
        nets.extend((8..=32).map(|p| IpNet::new([12, 0, 0, 0].into(), p).unwrap()));
        let total = nets.len();
        let mut calls = 0usize;
        let out = disjoint_sorted(nets, |a, b| {
            calls += 1;
            a.contains(b)
        });
        assert_eq!(out.len(), n as usize + 1);
        assert!(
            calls < total,
            "{calls} containment checks for {total} CIDRs"
        );
    }
}
