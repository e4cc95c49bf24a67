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
pub(crate) const TABLE_COMMENT: &str = "rules for kproxy";

mod assemble;
mod cidrs;
mod layout;
mod service;
mod skeleton;

pub use assemble::*;
pub(crate) use cidrs::*;
pub use layout::*;
pub(crate) use service::*;

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
pub(crate) fn nft_family(f: IpFamily) -> Family {
    match f {
        IpFamily::V4 => Family::Ip,
        IpFamily::V6 => Family::Ip6,
    }
}

/// Generate every family of the graph (both families always: an
/// IPv4-only graph still gets an empty `ip6` table, as kube-proxy does,
/// so a family that goes away is cleaned out by the next full sync).
pub(crate) fn generate_families(
    graph: &ServiceGraph,
) -> Result<Vec<(Family, FamilyRules)>, GenError> {
    IpFamily::ALL
        .into_iter()
        .map(|fam| {
            Ok((
                nft_family(fam),
                with_family(graph, fam, |fg| generate_family(graph, fg))?,
            ))
        })
        .collect()
}

/// `f` of the graph of `fam`, or of an empty one when the graph has none.
fn with_family<R>(graph: &ServiceGraph, fam: IpFamily, f: impl FnOnce(&FamilyGraph) -> R) -> R {
    match graph.family(fam) {
        Some(fg) => f(fg),
        None => f(&FamilyGraph::empty(fam)),
    }
}

/// Every family's skeleton alone (the node-wide part: no service port),
/// for an incremental sync of node-wide sets such as the service CIDRs.
pub(crate) fn skeletons(graph: &ServiceGraph) -> Vec<(Family, Table)> {
    IpFamily::ALL
        .into_iter()
        .map(|fam| {
            let table = with_family(graph, fam, |fg| skeleton::skeleton(&Ctx::new(graph, fg)));
            (nft_family(fam), table)
        })
        .collect()
}

/// Generation context for one family.
pub(crate) struct Ctx<'a> {
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

    /// A context from its parts: the family graph's node-wide fields (its
    /// service ports are not read), the masquerade mark and
    /// `masqueradeAll`. The backend keeps these to generate again what it
    /// applied.
    pub fn from_parts(fg: &'a FamilyGraph, mark: u32, masquerade_all: bool) -> Self {
        Ctx {
            fam: Fam {
                f: nft_family(fg.family),
            },
            fg,
            mark,
            masquerade_all,
        }
    }

    /// The masquerade mark.
    pub fn mark(&self) -> u32 {
        self.mark
    }
}

/// Generate one family.
pub(crate) fn generate_family(
    graph: &ServiceGraph,
    fg: &FamilyGraph,
) -> Result<FamilyRules, GenError> {
    let split = fg.services.len() >= PARALLEL_MIN && two_cpus();
    generate_family_split(graph, fg, split)
}

/// [`generate_family`], the second half of the service ports on another
/// thread when `split`: each service port's rules depend on it and the
/// context alone, so the rules (and the first error, in name order) are
/// the same either way.
fn generate_family_split(
    graph: &ServiceGraph,
    fg: &FamilyGraph,
    split: bool,
) -> Result<FamilyRules, GenError> {
    let ctx = Ctx::new(graph, fg);
    let skeleton = skeleton::skeleton(&ctx);
    let mut services = BTreeMap::new();
    let all: Vec<_> = fg.services.iter().collect();
    let (first, second) = if split {
        all.split_at(all.len() / 2)
    } else {
        (&all[..], &[][..])
    };
    std::thread::scope(|s| -> Result<(), GenError> {
        let other = (!second.is_empty()).then(|| {
            s.spawn(|| {
                second
                    .iter()
                    .map(|(name, sp)| Ok(((*name).clone(), service_rules(&ctx, sp)?)))
                    .collect::<Result<Vec<_>, GenError>>()
            })
        });
        for (name, sp) in first {
            services.insert((*name).clone(), service_rules(&ctx, sp)?);
        }
        if let Some(other) = other {
            let rest = match other.join() {
                Ok(rest) => rest?,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            services.extend(rest);
        }
        Ok(())
    })?;
    Ok(FamilyRules {
        skeleton,
        services,
        mark: ctx.mark,
    })
}

/// Families with fewer service ports than this are generated on one
/// thread.
const PARALLEL_MIN: usize = 512;

/// Whether a second CPU is there to use (asked once).
fn two_cpus() -> bool {
    static TWO: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TWO.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
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

#[cfg(test)]
mod tests {
    use kproxy_testkit::mixed_graph;

    use super::{PARALLEL_MIN, generate_family_split};

    #[test]
    fn a_family_generated_on_two_threads_equals_one_generated_on_one() {
        let graph = mixed_graph(600);
        let fg = graph.families.values().next().expect("a family");
        assert!(fg.services.len() >= PARALLEL_MIN, "{}", fg.services.len());
        let one = generate_family_split(&graph, fg, false).expect("generates");
        let two = generate_family_split(&graph, fg, true).expect("generates");
        assert_eq!(one, two);
    }
}
