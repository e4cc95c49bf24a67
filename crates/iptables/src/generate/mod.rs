//! The generator: [`ServiceGraph`] → [`Ruleset`], reproducing kube-proxy's
//! iptables proxier (`syncProxyRules` in pkg/proxy/iptables/proxier.go).
//!
//! It renders the graph's [`Decisions`](kproxy_graph::Decisions); endpoint
//! selection, REJECT versus DROP and the like were decided in the graph.
//! Services are visited in name order (kube-proxy iterates a Go map), so
//! the output is deterministic.
//!
//! - here: the chain names, [`GenOptions`], the nfacct counters and
//!   the entry points ([`generate`], [`generate_reusing`],
//!   [`IptablesGenerator`]);
//! - `context`: the per-family state (`Ctx`) and the match/target
//!   shorthands;
//! - `skeleton`: one family's ruleset around the services: the
//!   top-level chains (KUBE-SERVICES, KUBE-NODEPORTS, KUBE-FORWARD,
//!   KUBE-POSTROUTING, KUBE-MARK-MASQ, KUBE-FIREWALL), the canaries and
//!   the jumps from the built-in chains;
//! - `service`: one service port's rules and its own chains
//!   (`KUBE-SVC/SVL/EXT/FW/SEP`);
//! - `endpoint`: the jumps from a service chain to its endpoint chains.

mod context;
mod endpoint;
mod service;
mod skeleton;

use std::collections::HashMap;

use kproxy_graph::{ChangeSet, FamilyChanges, GenError, Generator, ServiceGraph, ServicePortName};

use crate::ir::{Chain, Ruleset, TableName};

use skeleton::generate_family;

/// filter/nat `KUBE-SERVICES`.
pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
/// filter `KUBE-EXTERNAL-SERVICES`.
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
/// filter `KUBE-FORWARD`.
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
/// filter/nat `KUBE-NODEPORTS`.
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
/// filter `KUBE-PROXY-FIREWALL`.
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// filter `KUBE-FIREWALL` (shared with kubelet; never deleted).
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
/// nat `KUBE-POSTROUTING`.
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
/// nat `KUBE-MARK-MASQ`.
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// The canary chain, in mangle, nat and filter.
pub const KUBE_PROXY_CANARY: &str = "KUBE-PROXY-CANARY";

/// kube-proxy's `largeClusterEndpointsThreshold`.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// The top-level chains kproxy (and kube-proxy) own, per table: rewritten
/// on every sync, removed by cleanup. `KUBE-FIREWALL` is not among them:
/// kubelet owns an identical copy.
pub fn top_level_chains(table: TableName) -> &'static [&'static str] {
    match table {
        TableName::Filter => &[
            KUBE_SERVICES,
            KUBE_EXTERNAL_SERVICES,
            KUBE_FORWARD,
            KUBE_NODEPORTS,
            KUBE_PROXY_FIREWALL,
            KUBE_PROXY_CANARY,
        ],
        TableName::Nat => &[
            KUBE_SERVICES,
            KUBE_NODEPORTS,
            KUBE_POSTROUTING,
            KUBE_MARK_MASQ,
            KUBE_PROXY_CANARY,
        ],
        TableName::Mangle => &[KUBE_PROXY_CANARY],
    }
}

/// Options of the generator that are not part of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenOptions {
    /// Add `--random-fully` to MASQUERADE. kube-proxy does when the node's
    /// iptables is 1.6.2 or newer: the iptables backend turns this off
    /// before its first sync when `iptables --version` says otherwise
    /// ([`Flavour::has_random_fully`](crate::Flavour::has_random_fully)).
    /// On by default, as `kproxy render` writes it.
    pub random_fully: bool,
    /// Write the KUBE-FORWARD `ctstate INVALID` drop (kube-proxy skips it
    /// when `nf_conntrack_tcp_be_liberal` is set).
    pub drop_invalid: bool,
    /// Count into kube-proxy's nfacct counters ([`NFACCT_CT_STATE_INVALID`]
    /// on the INVALID drop, [`NFACCT_LOCALHOST_NODEPORTS`] on a localhost
    /// NodePort rule per NodePort), as kube-proxy does when it could create
    /// them. The counters must exist before such rules load
    /// (`-m nfacct` fails with `ENOENT` otherwise): the iptables backend
    /// creates them over nfnetlink_acct and turns this off, with one
    /// warning, when the kernel has no nfnetlink_acct.
    pub nfacct: bool,
}

/// kube-proxy's nfacct counter of INVALID packets dropped in KUBE-FORWARD
/// (`metrics.IPTablesCTStateInvalidDroppedNFAcctCounter`).
pub const NFACCT_CT_STATE_INVALID: &str = "ct_state_invalid_dropped_pkts";
/// kube-proxy's nfacct counter of packets accepted by localhost NodePorts
/// (`metrics.LocalhostNodePortAcceptedNFAcctCounter`).
pub const NFACCT_LOCALHOST_NODEPORTS: &str = "localhost_nps_accepted_pkts";
/// Both counters.
pub const NFACCT_COUNTERS: [&str; 2] = [NFACCT_CT_STATE_INVALID, NFACCT_LOCALHOST_NODEPORTS];

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            random_fully: true,
            drop_invalid: true,
            nfacct: true,
        }
    }
}

/// The iptables generator.
#[derive(Debug, Clone, Default)]
pub struct IptablesGenerator {
    /// Options.
    pub options: GenOptions,
}

impl Generator for IptablesGenerator {
    type Ruleset = Ruleset;

    fn generate(&self, graph: &ServiceGraph) -> Result<Ruleset, GenError> {
        Ok(generate(graph, &self.options))
    }
}

/// Generate the ruleset of every family in `graph`.
pub fn generate(graph: &ServiceGraph, options: &GenOptions) -> Ruleset {
    Ruleset {
        families: graph
            .families
            .values()
            .map(|fg| generate_family(graph, fg, options, HashMap::new()))
            .collect(),
    }
}

/// [`generate`] for a partial sync: the own chains (`KUBE-SVC/SEP/EXT/...`)
/// of every service port of `graph` that `changes` does not name (as
/// added, changed or removed) are moved out of `prev` rather than
/// generated again; top-level chains and the chains of the ports it names
/// are generated. The result equals [`generate`]'s as long as `changes`
/// names every service port whose chains changed since `prev`, the same
/// promise partial syncs already rely on (the graph's fingerprints), and
/// the node and configuration are unchanged (a full sync otherwise).
/// A family whose large-cluster mode flipped is generated in full.
///
/// Why: at 50,000 services generation is ~1.5 s of CPU, nearly all of it
/// in the 600,000 per-service chains, and allocating and freeing them.
/// `prev` keeps its top-level chains and its dirty service ports' chains
/// (what [`crate::exec::plan_partial`] compares against).
pub fn generate_reusing(
    graph: &ServiceGraph,
    options: &GenOptions,
    prev: &mut Ruleset,
    changes: &ChangeSet,
) -> Ruleset {
    let none = FamilyChanges::default();
    Ruleset {
        families: graph
            .families
            .values()
            .map(|fg| {
                let large = fg.total_endpoints() > LARGE_CLUSTER_ENDPOINTS;
                let fc = changes.families.get(&fg.family).unwrap_or(&none);
                let mut reuse: HashMap<ServicePortName, Vec<Chain>> = HashMap::new();
                if let Some(pf) = prev
                    .families
                    .iter_mut()
                    .find(|f| f.family == fg.family && f.large_cluster == large)
                {
                    for t in pf.tables.iter_mut() {
                        let (keep, take): (Vec<Chain>, Vec<Chain>) =
                            std::mem::take(&mut t.chains).into_iter().partition(|c| {
                                c.owner.as_ref().is_none_or(|o| {
                                    fc.added.contains(o)
                                        || fc.changed.contains(o)
                                        || fc.removed.contains(o)
                                        || !fg.services.contains_key(o)
                                })
                            });
                        t.chains = keep;
                        // A service port's chains are adjacent: one owner
                        // clone and one map entry per port, not per chain.
                        let mut group: Vec<Chain> = Vec::new();
                        for c in take {
                            if group.first().is_some_and(|g| g.owner != c.owner) {
                                flush_group(&mut reuse, &mut group);
                            }
                            group.push(c);
                        }
                        flush_group(&mut reuse, &mut group);
                    }
                }
                generate_family(graph, fg, options, reuse)
            })
            .collect(),
    }
}

fn flush_group(reuse: &mut HashMap<ServicePortName, Vec<Chain>>, group: &mut Vec<Chain>) {
    if let Some(o) = group.first().and_then(|c| c.owner.clone()) {
        reuse.entry(o).or_default().append(group);
    }
    group.clear();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kproxy_graph::config::parse_nodeport_addresses;
    use kproxy_graph::{IpFamily, Objects, ProxyConfig};

    const CLUSTER: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: np}
spec:
  type: NodePort
  clusterIPs: [172.30.0.61, \"fd00:172:30::61\"]
  ipFamilies: [IPv4, IPv6]
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 3061}
---
apiVersion: v1
kind: Node
metadata: {name: test-node}
status:
  addresses:
  - {type: InternalIP, address: 192.168.0.2}
  - {type: InternalIP, address: \"2001:db8::2\"}
";

    const LOCALNET: &str = "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP";

    /// Whether each family's ruleset has the localnet rule and the
    /// KUBE-FIREWALL chain at all, for `nodePortAddresses` = `entries`.
    fn localnet(entries: &[&str], localhost_nodeports: bool) -> [(bool, bool); 2] {
        let (objects, _) = Objects::from_yaml("cluster.yaml", CLUSTER).unwrap();
        let config = ProxyConfig {
            node_name: "test-node".into(),
            nodeport_addresses: parse_nodeport_addresses(
                "nodePortAddresses",
                &entries.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .unwrap(),
            localhost_nodeports,
            ..ProxyConfig::default()
        };
        let g = ServiceGraph::build(&objects, &config);
        let r = generate(&g, &GenOptions::default());
        [IpFamily::V4, IpFamily::V6].map(|f| {
            let text = r.family(f).unwrap().render_full();
            (
                text.lines().any(|l| l == LOCALNET),
                text.contains(KUBE_FIREWALL),
            )
        })
    }

    #[test]
    fn localnet_rule_only_with_localhost_nodeports() {
        let (on, off) = ((true, true), (false, false));
        assert_eq!(localnet(&[], true), [on, off], "unset");
        assert_eq!(localnet(&["127.0.0.0/8"], true), [on, off], "localhost");
        assert_eq!(localnet(&["0.0.0.0/0"], true), [on, off], "everything");
        assert_eq!(localnet(&["192.168.0.0/24"], true), [off, off], "a CIDR");
        assert_eq!(localnet(&["primary"], true), [off, off], "primary");
        assert_eq!(
            localnet(
                &["192.168.0.0/24", "127.0.0.1/32", "2001:db8::/64", "::1/128"],
                true
            ),
            [on, off],
            "both families"
        );
        assert_eq!(
            localnet(&["2001:db8::/64"], true),
            [on, off],
            "no IPv4 entry: every IPv4 address, localhost included"
        );
        assert_eq!(localnet(&[], false), [off, off], "localhostNodePorts off");
    }
}
