//! One family's ruleset around the services: the top-level chains
//! (KUBE-SERVICES, KUBE-NODEPORTS, KUBE-FORWARD, KUBE-POSTROUTING,
//! KUBE-MARK-MASQ, KUBE-FIREWALL), the canaries and kube-proxy's jumps
//! from the built-in chains (`iptablesJumpChains`).

use std::collections::HashMap;
use std::net::IpAddr;

use kproxy_graph::{FamilyGraph, IpFamily, NodePortIps, ServiceGraph, ServicePortName};

use crate::ir::{
    AddrTypeDir, BuiltinRule, Chain, FamilyRuleset, Match, Rule, Table, TableName, Target,
};

use super::context::{Ctx, comment, ctstate, dst_ip, dst_ip_net, jump, src_net};
use super::service::service_rules;
use super::{
    GenOptions, KUBE_EXTERNAL_SERVICES, KUBE_FIREWALL, KUBE_FORWARD, KUBE_MARK_MASQ,
    KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_PROXY_CANARY, KUBE_PROXY_FIREWALL, KUBE_SERVICES,
    LARGE_CLUSTER_ENDPOINTS, NFACCT_CT_STATE_INVALID,
};

pub(super) fn generate_family(
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
    filter
        .chains
        .extend(unowned(std::mem::take(&mut cx.filter)));
    filter.chains.push(canary());
    filter.builtin_rules = filter_jumps(kube_firewall);

    let mut nat = Table::new(TableName::Nat);
    nat.chains.extend(unowned(std::mem::take(&mut cx.nat_top)));
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

/// Chains of kproxy's own (no Service owns them) from their names and rules.
fn unowned(chains: Vec<(&'static str, Vec<Rule>)>) -> impl Iterator<Item = Chain> {
    chains.into_iter().map(|(name, rules)| Chain {
        name: name.into(),
        owner: None,
        rules,
    })
}
