//! The generator: [`ServiceGraph`] → [`Ruleset`], reproducing kube-proxy's
//! iptables proxier (`syncProxyRules` in pkg/proxy/iptables/proxier.go).
//!
//! It renders the graph's [`Decisions`](kproxy_graph::Decisions); endpoint
//! selection, REJECT versus DROP and the like were decided in the graph.
//! Services are visited in name order (kube-proxy iterates a Go map), so
//! the output is deterministic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use kproxy_graph::{
    FamilyGraph, GenError, Generator, IpFamily, LocalTraffic, NoEndpointVerdict, NodePortIps,
    Protocol, ServiceGraph, ServicePort, ServicePortName, TrafficPolicy,
};

use crate::ir::{
    Addr, AddrTypeDir, BuiltinRule, Chain, FamilyRuleset, Match, Recent, Rule, Ruleset, Table,
    TableName, Target,
};
use crate::naming::{comment_safe, ext_chain, fw_chain, sep_chain, svc_chain, svl_chain};

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
    /// Add `--random-fully` to MASQUERADE (iptables ≥ 1.6.2, as kube-proxy
    /// decides from the version).
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
/// of every service port of `graph` not in its family's `dirty` set
/// (added, changed and removed ports) are moved out of `prev` rather than
/// generated again; top-level chains and the chains of
/// dirty service ports are generated. The result equals [`generate`]'s
/// as long as `dirty` holds every service port whose chains changed, the
/// same promise partial syncs already rely on (the graph's fingerprints),
/// and the node and configuration are unchanged (a full sync otherwise).
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
    dirty: &BTreeMap<IpFamily, BTreeSet<ServicePortName>>,
) -> Ruleset {
    let empty = BTreeSet::new();
    Ruleset {
        families: graph
            .families
            .values()
            .map(|fg| {
                let large = fg.total_endpoints() > LARGE_CLUSTER_ENDPOINTS;
                let dirty = dirty.get(&fg.family).unwrap_or(&empty);
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
                                    dirty.contains(o) || !fg.services.contains_key(o)
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

fn comment(text: String) -> Match {
    Match::Comment(text)
}

fn proto(p: Protocol) -> Match {
    Match::Protocol(p)
}

fn dst_ip(ip: IpAddr) -> Match {
    Match::Destination {
        negated: false,
        addr: Addr::Ip(ip),
    }
}

fn jump(chain: &str) -> Target {
    Target::Jump(chain.to_string())
}

fn ctstate(states: &str) -> Match {
    Match::Conntrack {
        negated: false,
        states: states.into(),
    }
}

fn local_if(lt: &LocalTraffic, negated: bool) -> Option<Match> {
    match lt {
        LocalTraffic::None => None,
        LocalTraffic::Cidr(net) => Some(Match::Source {
            negated,
            addr: Addr::Net(*net),
        }),
        LocalTraffic::Interface(name) => Some(Match::InInterface {
            negated,
            name: name.clone(),
        }),
        LocalTraffic::InterfacePrefix(p) => Some(Match::InInterface {
            negated,
            name: format!("{p}+"),
        }),
    }
}

fn flush_group(reuse: &mut HashMap<ServicePortName, Vec<Chain>>, group: &mut Vec<Chain>) {
    if let Some(o) = group.first().and_then(|c| c.owner.clone()) {
        reuse.entry(o).or_default().append(group);
    }
    group.clear();
}

/// Per-family state while generating.
struct Ctx<'a> {
    graph: &'a ServiceGraph,
    fg: &'a FamilyGraph,
    large: bool,
    filter: Vec<(&'static str, Vec<Rule>)>,
    nat_top: Vec<(&'static str, Vec<Rule>)>,
    nat_services: Vec<Chain>,
    /// Chains of unchanged service ports taken from the previous ruleset
    /// ([`generate_reusing`]): used as they are instead of generated.
    reuse: HashMap<ServicePortName, Vec<Chain>>,
    /// Count localhost NodePort packets ([`GenOptions::nfacct`], IPv4 with
    /// localhost NodePorts on).
    localhost_nfacct: bool,
}

impl Ctx<'_> {
    fn filter_rules(&mut self, chain: &str) -> &mut Vec<Rule> {
        let i = self
            .filter
            .iter()
            .position(|(c, _)| *c == chain)
            .unwrap_or(0);
        &mut self.filter[i].1
    }

    fn nat_rules(&mut self, chain: &str) -> &mut Vec<Rule> {
        let i = self
            .nat_top
            .iter()
            .position(|(c, _)| *c == chain)
            .unwrap_or(0);
        &mut self.nat_top[i].1
    }

    /// kube-proxy's `appendServiceCommentLocked`: no per-endpoint comments
    /// in large-cluster mode.
    fn endpoint_comment(&self, text: String) -> Vec<Match> {
        if self.large {
            Vec::new()
        } else {
            vec![comment(text)]
        }
    }
}

fn generate_family(
    graph: &ServiceGraph,
    fg: &FamilyGraph,
    options: &GenOptions,
    reuse: HashMap<ServicePortName, Vec<Chain>>,
) -> FamilyRuleset {
    let mark = graph.masquerade_mark();
    let large = fg.total_endpoints() > LARGE_CLUSTER_ENDPOINTS;
    let is_v6 = fg.family == IpFamily::V6;
    // kube-proxy writes KUBE-FIREWALL's localnet rule only where it sets
    // route_localnet: IPv4, localhostNodePorts on and a loopback address
    // among the NodePort addresses (`NewProxier` turns localhostNodePorts
    // off otherwise). The graph resolved exactly that per family.
    let kube_firewall = !is_v6 && fg.localhost_nodeports;
    let mut cx = Ctx {
        graph,
        fg,
        large,
        filter: vec![
            (KUBE_SERVICES, Vec::new()),
            (KUBE_EXTERNAL_SERVICES, Vec::new()),
            (KUBE_FORWARD, Vec::new()),
            (KUBE_NODEPORTS, Vec::new()),
            (KUBE_PROXY_FIREWALL, Vec::new()),
        ],
        nat_top: vec![
            (KUBE_SERVICES, Vec::new()),
            (KUBE_NODEPORTS, Vec::new()),
            (KUBE_POSTROUTING, Vec::new()),
            (KUBE_MARK_MASQ, Vec::new()),
        ],
        nat_services: Vec::new(),
        reuse,
        localhost_nfacct: options.nfacct && kube_firewall,
    };
    if kube_firewall {
        cx.filter.push((KUBE_FIREWALL, Vec::new()));
    }

    // nat KUBE-POSTROUTING / KUBE-MARK-MASQ.
    cx.nat_rules(KUBE_POSTROUTING).extend([
        Rule::new(
            vec![Match::Mark {
                negated: true,
                value: mark,
                mask: mark,
            }],
            Target::Return,
        ),
        // Clear the mark so a packet that re-traverses the stack is not
        // masqueraded twice.
        Rule::new(vec![], Target::MarkXor(mark)),
        Rule::new(
            vec![comment("kubernetes service traffic requiring SNAT".into())],
            Target::Masquerade {
                random_fully: options.random_fully,
            },
        ),
    ]);
    cx.nat_rules(KUBE_MARK_MASQ)
        .push(Rule::new(vec![], Target::MarkOr(mark)));

    if kube_firewall {
        // CVE-2020-8558: route_localnet lets neighbours reach 127.0.0.1;
        // identical to kubelet's copy of this rule.
        cx.filter_rules(KUBE_FIREWALL).push(Rule::new(
            vec![
                comment("block incoming localnet connections".into()),
                dst_ip_net("127.0.0.0/8", false),
                src_net("127.0.0.0/8", true),
                Match::Conntrack {
                    negated: true,
                    states: "RELATED,ESTABLISHED,DNAT".into(),
                },
            ],
            Target::Drop,
        ));
    }

    for sp in fg.services.values() {
        service_rules(&mut cx, sp);
    }

    nodeport_catch_all(&mut cx, is_v6);

    // filter KUBE-FORWARD.
    if options.drop_invalid {
        let mut m = vec![ctstate("INVALID")];
        if options.nfacct {
            m.push(Match::Nfacct(NFACCT_CT_STATE_INVALID.into()));
        }
        cx.filter_rules(KUBE_FORWARD)
            .push(Rule::new(m, Target::Drop));
    }
    cx.filter_rules(KUBE_FORWARD).extend([
        Rule::new(
            vec![
                comment("kubernetes forwarding rules".into()),
                Match::Mark {
                    negated: false,
                    value: mark,
                    mask: mark,
                },
            ],
            Target::Accept,
        ),
        Rule::new(
            vec![
                comment("kubernetes forwarding conntrack rule".into()),
                ctstate("RELATED,ESTABLISHED"),
            ],
            Target::Accept,
        ),
    ]);

    let mut filter = Table::new(TableName::Filter);
    for (name, rules) in std::mem::take(&mut cx.filter) {
        filter.chains.push(Chain {
            name: name.into(),
            owner: None,
            rules,
        });
    }
    filter.chains.push(canary());
    filter.builtin_rules = filter_jumps(kube_firewall);

    let mut nat = Table::new(TableName::Nat);
    for (name, rules) in std::mem::take(&mut cx.nat_top) {
        nat.chains.push(Chain {
            name: name.into(),
            owner: None,
            rules,
        });
    }
    nat.chains.push(canary());
    nat.chains.append(&mut cx.nat_services);
    nat.builtin_rules = nat_jumps();

    let mut mangle = Table::new(TableName::Mangle);
    mangle.chains.push(canary());

    FamilyRuleset {
        family: fg.family,
        tables: vec![filter, nat, mangle],
        large_cluster: large,
    }
}

fn canary() -> Chain {
    Chain {
        name: KUBE_PROXY_CANARY.into(),
        owner: None,
        rules: Vec::new(),
    }
}

fn dst_ip_net(net: &str, negated: bool) -> Match {
    Match::Destination {
        negated,
        addr: Addr::Net(net.parse().unwrap_or_default()),
    }
}

fn src_net(net: &str, negated: bool) -> Match {
    Match::Source {
        negated,
        addr: Addr::Net(net.parse().unwrap_or_default()),
    }
}

fn builtin(chain: &str, mut extra: Vec<Match>, text: Option<&str>, to: &str) -> BuiltinRule {
    if let Some(t) = text {
        extra.push(comment(t.into()));
    }
    BuiltinRule {
        chain: chain.into(),
        rule: Rule::new(extra, jump(to)),
    }
}

/// kube-proxy's `iptablesJumpChains` for the filter table (plus kubelet's
/// KUBE-FIREWALL jumps when localhost NodePorts are on). Each is prepended,
/// in this order, so the last ends up first.
fn filter_jumps(kube_firewall: bool) -> Vec<BuiltinRule> {
    let new = || vec![ctstate("NEW")];
    let mut v = vec![
        builtin(
            "INPUT",
            new(),
            Some("kubernetes externally-visible service portals"),
            KUBE_EXTERNAL_SERVICES,
        ),
        builtin(
            "FORWARD",
            new(),
            Some("kubernetes externally-visible service portals"),
            KUBE_EXTERNAL_SERVICES,
        ),
        builtin(
            "INPUT",
            vec![],
            Some("kubernetes health check service ports"),
            KUBE_NODEPORTS,
        ),
        builtin(
            "FORWARD",
            new(),
            Some("kubernetes service portals"),
            KUBE_SERVICES,
        ),
        builtin(
            "OUTPUT",
            new(),
            Some("kubernetes service portals"),
            KUBE_SERVICES,
        ),
        builtin(
            "FORWARD",
            vec![],
            Some("kubernetes forwarding rules"),
            KUBE_FORWARD,
        ),
        builtin(
            "INPUT",
            new(),
            Some("kubernetes load balancer firewall"),
            KUBE_PROXY_FIREWALL,
        ),
        builtin(
            "OUTPUT",
            new(),
            Some("kubernetes load balancer firewall"),
            KUBE_PROXY_FIREWALL,
        ),
        builtin(
            "FORWARD",
            new(),
            Some("kubernetes load balancer firewall"),
            KUBE_PROXY_FIREWALL,
        ),
    ];
    if kube_firewall {
        v.push(builtin("INPUT", vec![], None, KUBE_FIREWALL));
        v.push(builtin("OUTPUT", vec![], None, KUBE_FIREWALL));
    }
    v
}

fn nat_jumps() -> Vec<BuiltinRule> {
    vec![
        builtin(
            "OUTPUT",
            vec![],
            Some("kubernetes service portals"),
            KUBE_SERVICES,
        ),
        builtin(
            "PREROUTING",
            vec![],
            Some("kubernetes service portals"),
            KUBE_SERVICES,
        ),
        builtin(
            "POSTROUTING",
            vec![],
            Some("kubernetes postrouting rules"),
            KUBE_POSTROUTING,
        ),
    ]
}

fn nodeport_catch_all(cx: &mut Ctx<'_>, is_v6: bool) {
    const TEXT: &str =
        "kubernetes service nodeports; NOTE: this must be the last rule in this chain";
    match &cx.fg.nodeport_ips {
        NodePortIps::All => {
            let mut m = vec![
                comment(TEXT.into()),
                Match::AddrType {
                    dir: AddrTypeDir::Dst,
                    kind: "LOCAL".into(),
                },
            ];
            // Localhost NodePorts never work for IPv6, and for IPv4 only
            // with route_localnet (localhostNodePorts).
            if is_v6 {
                m.push(dst_ip_net("::1/128", true));
            } else if !cx.fg.localhost_nodeports {
                m.push(dst_ip_net("127.0.0.0/8", true));
            }
            cx.nat_rules(KUBE_SERVICES)
                .push(Rule::new(m, jump(KUBE_NODEPORTS)));
        }
        NodePortIps::Only(ips) => {
            let mut ips = ips.clone();
            if cx.fg.localhost_nodeports && !is_v6 {
                ips.push(IpAddr::from([127, 0, 0, 1]));
                ips.sort();
                ips.dedup();
            }
            for ip in ips {
                cx.nat_rules(KUBE_SERVICES).push(Rule::new(
                    vec![comment(TEXT.into()), dst_ip(ip)],
                    jump(KUBE_NODEPORTS),
                ));
            }
        }
    }
}

fn verdict(v: NoEndpointVerdict, name: &str) -> (Target, String) {
    match v {
        NoEndpointVerdict::Reject => (Target::Reject, format!("{name} has no endpoints")),
        NoEndpointVerdict::Drop => (Target::Drop, format!("{name} has no local endpoints")),
    }
}

/// One service port: its rules in the top-level chains and its own chains
/// (the body of kube-proxy's per-service loop).
fn service_rules(cx: &mut Ctx<'_>, sp: &ServicePort) {
    let spn = &sp.name;
    let name = comment_safe(&spn.to_string());
    let p = spn.protocol;
    let d = &sp.decisions;
    let has_endpoints = d.has_endpoints;

    let svc = svc_chain(spn);
    let svl = svl_chain(spn);
    let ext = ext_chain(spn);
    let fw = fw_chain(spn);
    let internal_chain = match d.internal_policy_chain {
        TrafficPolicy::Cluster => &svc,
        TrafficPolicy::Local => &svl,
    };
    let external_policy_chain = match d.external_policy_chain {
        TrafficPolicy::Cluster => &svc,
        TrafficPolicy::Local => &svl,
    };
    // kube-proxy's iptables mode needs endpoints before it writes KUBE-FW.
    let uses_fw = d.source_ranges_apply && has_endpoints;
    let lb_chain = if uses_fw { &fw } else { &ext };
    let lb_ips: Vec<IpAddr> = sp.vip_load_balancer_ips().collect();
    let port = sp.port;
    let svc_dst = |ip: IpAddr| vec![proto(p), dst_ip(ip), Match::DestPort(port)];

    // ClusterIP.
    if d.has_internal_endpoints {
        let mut m = vec![comment(format!("{name} cluster IP"))];
        m.extend(svc_dst(sp.cluster_ip));
        cx.nat_rules(KUBE_SERVICES)
            .push(Rule::new(m, jump(internal_chain)));
    } else if let Some(v) = d.internal_verdict {
        let (t, text) = verdict(v, &name);
        let mut m = vec![comment(text)];
        m.extend(svc_dst(sp.cluster_ip));
        cx.filter_rules(KUBE_SERVICES).push(Rule::new(m, t));
    }

    // External IPs.
    for ip in &sp.external_ips {
        if has_endpoints {
            let mut m = vec![comment(format!("{name} external IP"))];
            m.extend(svc_dst(*ip));
            cx.nat_rules(KUBE_SERVICES).push(Rule::new(m, jump(&ext)));
        }
        if let Some(v) = d.external_verdict {
            let (t, text) = verdict(v, &name);
            let mut m = vec![comment(text)];
            m.extend(svc_dst(*ip));
            cx.filter_rules(KUBE_EXTERNAL_SERVICES)
                .push(Rule::new(m, t));
        }
    }

    // LoadBalancer IPs (ipMode Proxy ones get no rule).
    for ip in &lb_ips {
        if has_endpoints {
            let mut m = vec![comment(format!("{name} loadbalancer IP"))];
            m.extend(svc_dst(*ip));
            cx.nat_rules(KUBE_SERVICES)
                .push(Rule::new(m, jump(lb_chain)));
        }
        if uses_fw {
            let mut m = vec![comment(format!("{name} traffic not accepted by {fw}"))];
            m.extend(svc_dst(*ip));
            cx.filter_rules(KUBE_PROXY_FIREWALL)
                .push(Rule::new(m, Target::Drop));
        }
    }
    if let Some(v) = d.external_verdict {
        for ip in &lb_ips {
            let (t, text) = verdict(v, &name);
            let mut m = vec![comment(text)];
            m.extend(svc_dst(*ip));
            cx.filter_rules(KUBE_EXTERNAL_SERVICES)
                .push(Rule::new(m, t));
        }
    }

    // NodePort. Not subject to source ranges (upstream behaviour).
    if let Some(np) = sp.node_port {
        if has_endpoints {
            if cx.localhost_nfacct {
                cx.nat_rules(KUBE_NODEPORTS).push(Rule::new(
                    vec![
                        comment(name.clone()),
                        proto(p),
                        dst_ip_net("127.0.0.0/8", false),
                        Match::DestPort(np),
                        Match::Nfacct(NFACCT_LOCALHOST_NODEPORTS.into()),
                    ],
                    jump(&ext),
                ));
            }
            cx.nat_rules(KUBE_NODEPORTS).push(Rule::new(
                vec![comment(name.clone()), proto(p), Match::DestPort(np)],
                jump(&ext),
            ));
        }
        if let Some(v) = d.external_verdict {
            let (t, text) = verdict(v, &name);
            cx.filter_rules(KUBE_EXTERNAL_SERVICES).push(Rule::new(
                vec![
                    comment(text),
                    Match::AddrType {
                        dir: AddrTypeDir::Dst,
                        kind: "LOCAL".into(),
                    },
                    proto(p),
                    Match::DestPort(np),
                ],
                t,
            ));
        }
    }

    // Health-check node port: accepted whether or not there are local
    // endpoints, so restrictive host firewalls let the LB probe it.
    if let Some(hc) = sp.health_check_node_port {
        cx.filter_rules(KUBE_NODEPORTS).push(Rule::new(
            vec![
                comment(format!("{name} health check node port")),
                proto(Protocol::Tcp),
                Match::DestPort(hc),
            ],
            Target::Accept,
        ));
    }

    // The service's own chains, in kube-proxy's order: EXT, FW, SVC, SVL, SEP.
    if let Some(chains) = cx.reuse.remove(spn) {
        cx.nat_services.extend(chains);
        return;
    }
    let mut chains: Vec<Chain> = Vec::new();
    let own = |name: &str, rules: Vec<Rule>| Chain {
        name: name.to_string(),
        owner: Some(spn.clone()),
        rules,
    };

    // Endpoint chain names, hashed once per endpoint (SHA-256 dominates
    // generation time at scale).
    let seps: HashMap<(IpAddr, u16), (String, String)> = sp
        .reachable_endpoints
        .iter()
        .map(|ep| {
            let addr = ep.addr_string();
            ((ep.ip, ep.port), (sep_chain(spn, &addr), addr))
        })
        .collect();

    let mut internal_masq: Option<Rule> = None;
    if d.has_internal_endpoints {
        let mut m = vec![comment(format!("{name} cluster IP"))];
        m.extend(svc_dst(sp.cluster_ip));
        if cx.graph.config.masquerade_all {
            internal_masq = Some(Rule::new(m, jump(KUBE_MARK_MASQ)));
        } else if let Some(not_local) = local_if(&cx.fg.local_traffic, true) {
            // Off-cluster traffic to a ClusterIP may bounce off-node:
            // masquerade it.
            m.push(not_local);
            internal_masq = Some(Rule::new(m, jump(KUBE_MARK_MASQ)));
        }
    }

    if d.uses_external_chain {
        let mut rules = Vec::new();
        if d.external_policy_chain == TrafficPolicy::Cluster {
            rules.push(Rule::new(
                vec![comment(format!(
                    "masquerade traffic for {name} external destinations"
                ))],
                jump(KUBE_MARK_MASQ),
            ));
        } else {
            // The short-circuits jump to the cluster chain, which exists
            // whenever the port is externally accessible and has endpoints
            // (kube-proxy's UsesClusterEndpoints); guard anyway so a graph
            // without it can never produce a dangling jump.
            let svc_exists = d.uses_cluster_chain;
            if let Some(is_local) = local_if(&cx.fg.local_traffic, false).filter(|_| svc_exists) {
                // Pod → external destination behaves as if it went out to
                // the LB and came back: cluster policy, no masquerade.
                rules.push(Rule::new(
                    vec![
                        comment(format!("pod traffic for {name} external destinations")),
                        is_local,
                    ],
                    jump(&svc),
                ));
            }
            let local_src = || Match::AddrType {
                dir: AddrTypeDir::Src,
                kind: "LOCAL".into(),
            };
            rules.push(Rule::new(
                vec![
                    comment(format!(
                        "masquerade LOCAL traffic for {name} external destinations"
                    )),
                    local_src(),
                ],
                jump(KUBE_MARK_MASQ),
            ));
            if svc_exists {
                rules.push(Rule::new(
                    vec![
                        comment(format!(
                            "route LOCAL traffic for {name} external destinations"
                        )),
                        local_src(),
                    ],
                    jump(&svc),
                ));
            }
        }
        if d.has_external_endpoints {
            rules.push(Rule::new(vec![], jump(external_policy_chain)));
        }
        chains.push(own(&ext, rules));
    }

    if uses_fw {
        let fw_comment = || comment(format!("{name} loadbalancer IP"));
        let mut rules = Vec::new();
        let node_ip = primary_node_ip(cx);
        let mut allow_from_node = false;
        for cidr in &sp.source_ranges {
            rules.push(Rule::new(
                vec![
                    fw_comment(),
                    Match::Source {
                        negated: false,
                        addr: Addr::Net(*cidr),
                    },
                ],
                jump(&ext),
            ));
            if node_ip.is_some_and(|ip| cidr.contains(&ip)) {
                allow_from_node = true;
            }
        }
        // A VIP-like LB's IP is often local on the node: its requests to
        // the VIP loop back with the VIP as source.
        if allow_from_node {
            for ip in &lb_ips {
                rules.push(Rule::new(
                    vec![
                        fw_comment(),
                        Match::Source {
                            negated: false,
                            addr: Addr::Ip(*ip),
                        },
                    ],
                    jump(&ext),
                ));
            }
        }
        rules.push(Rule {
            matches: vec![comment(format!(
                "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"
            ))],
            target: None,
        });
        chains.push(own(&fw, rules));
    }

    if d.uses_cluster_chain {
        let mut rules = Vec::new();
        if internal_chain == &svc
            && let Some(r) = internal_masq.take()
        {
            rules.push(r);
        }
        endpoint_rules(cx, sp, &name, &sp.cluster_endpoints, &seps, &mut rules);
        chains.push(own(&svc, rules));
    }
    if d.uses_local_chain {
        let mut rules = Vec::new();
        if internal_chain == &svl
            && let Some(r) = internal_masq.take()
        {
            rules.push(r);
        }
        endpoint_rules(cx, sp, &name, &sp.local_endpoints, &seps, &mut rules);
        chains.push(own(&svl, rules));
    }

    for ep in &sp.reachable_endpoints {
        let sep = seps
            .get(&(ep.ip, ep.port))
            .map(|(s, _)| s.clone())
            .unwrap_or_else(|| sep_chain(spn, &ep.addr_string()));
        let base = cx.endpoint_comment(name.clone());
        let mut hairpin = base.clone();
        hairpin.push(Match::Source {
            negated: false,
            addr: Addr::Ip(ep.ip),
        });
        let mut dnat = base;
        if sp.session_affinity.is_some() {
            dnat.push(Match::Recent(Recent::Set { name: sep.clone() }));
        }
        dnat.push(proto(p));
        chains.push(own(
            &sep,
            vec![
                // Traffic that loops back to its originator needs SNAT.
                Rule::new(hairpin, jump(KUBE_MARK_MASQ)),
                Rule::new(dnat, Target::Dnat(SocketAddr::new(ep.ip, ep.port))),
            ],
        ));
    }

    cx.nat_services.extend(chains);
}

/// The address kube-proxy calls `nodeIP` for this family.
fn primary_node_ip(cx: &Ctx<'_>) -> Option<IpAddr> {
    cx.graph
        .node
        .primary_ips
        .iter()
        .find(|ip| IpFamily::of(ip) == cx.fg.family)
        .or_else(|| cx.fg.node_ips.first())
        .copied()
}

/// kube-proxy's `writeServiceToEndpointRules`: affinity checks first, then
/// the probabilistic branches, the last one unconditional.
fn endpoint_rules(
    cx: &Ctx<'_>,
    sp: &ServicePort,
    name: &str,
    endpoints: &[std::sync::Arc<kproxy_graph::Endpoint>],
    seps: &HashMap<(IpAddr, u16), (String, String)>,
    rules: &mut Vec<Rule>,
) {
    let chains: Vec<(String, String)> = endpoints
        .iter()
        .map(|ep| match seps.get(&(ep.ip, ep.port)) {
            Some(pair) => pair.clone(),
            None => {
                // Not in reachable_endpoints (the graph guarantees it is);
                // hash it anyway rather than emit a dangling jump.
                let addr = ep.addr_string();
                (sep_chain(&sp.name, &addr), addr)
            }
        })
        .collect();
    if let Some(aff) = sp.session_affinity {
        for (sep, addr) in &chains {
            let mut m = cx.endpoint_comment(format!("{name} -> {addr}"));
            m.push(Match::Recent(Recent::Check {
                name: sep.clone(),
                seconds: aff.timeout_seconds,
            }));
            rules.push(Rule::new(m, jump(sep)));
        }
    }
    let n = chains.len();
    for (i, (sep, addr)) in chains.iter().enumerate() {
        let mut m = cx.endpoint_comment(format!("{name} -> {addr}"));
        if i + 1 < n {
            m.push(Match::Statistic {
                one_in: u32::try_from(n - i).unwrap_or(u32::MAX),
            });
        }
        rules.push(Rule::new(m, jump(sep)));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kproxy_graph::config::parse_nodeport_addresses;
    use kproxy_graph::{Objects, ProxyConfig};

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
