//! One service port: its rules in the top-level chains and its own
//! chains (`KUBE-SVC/SVL/EXT/FW/SEP`), the body of kube-proxy's
//! per-service loop in `syncProxyRules`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use kproxy_graph::{NoEndpointVerdict, Protocol, ServicePort, TrafficPolicy};

use crate::ir::{Addr, AddrTypeDir, Chain, Match, Recent, Rule, Target};
use crate::naming::{comment_safe, ext_chain, fw_chain, sep_chain, svc_chain, svl_chain};

use super::context::{Ctx, comment, dst_ip, dst_ip_net, jump, local_if, proto};
use super::endpoint::endpoint_rules;
use super::{
    KUBE_EXTERNAL_SERVICES, KUBE_MARK_MASQ, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL, KUBE_SERVICES,
    NFACCT_LOCALHOST_NODEPORTS,
};

fn verdict(v: NoEndpointVerdict, name: &str) -> (Target, String) {
    match v {
        NoEndpointVerdict::Reject => (Target::Reject, format!("{name} has no endpoints")),
        NoEndpointVerdict::Drop => (Target::Drop, format!("{name} has no local endpoints")),
    }
}

/// One service port: its rules in the top-level chains and its own chains
/// (the body of kube-proxy's per-service loop).
pub(super) fn service_rules(cx: &mut Ctx<'_>, sp: &ServicePort) {
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
        // Sources allowed through the firewall go on to the external chain.
        let allow_from = |addr: Addr| {
            let source = Match::Source {
                negated: false,
                addr,
            };
            Rule::new(vec![fw_comment(), source], jump(&ext))
        };
        let mut rules = Vec::new();
        let node_ip = primary_node_ip(cx);
        let mut allow_from_node = false;
        for cidr in &sp.source_ranges {
            rules.push(allow_from(Addr::Net(*cidr)));
            if node_ip.is_some_and(|ip| cidr.contains(&ip)) {
                allow_from_node = true;
            }
        }
        // A VIP-like LB's IP is often local on the node: its requests to
        // the VIP loop back with the VIP as source.
        if allow_from_node {
            for ip in &lb_ips {
                rules.push(allow_from(Addr::Ip(*ip)));
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

    // The cluster chain (SVC) and the local one (SVL), each with the
    // internal masquerade rule when internal traffic goes through it.
    let policy_chains = [
        (d.uses_cluster_chain, &svc, &sp.cluster_endpoints),
        (d.uses_local_chain, &svl, &sp.local_endpoints),
    ];
    for (used, chain, eps) in policy_chains {
        if !used {
            continue;
        }
        let mut rules = Vec::new();
        if internal_chain == chain
            && let Some(r) = internal_masq.take()
        {
            rules.push(r);
        }
        endpoint_rules(cx, sp, &name, eps, &seps, &mut rules);
        chains.push(own(chain, rules));
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
        .primary_ip(cx.fg.family)
        .or_else(|| cx.fg.node_ips.first().copied())
}
