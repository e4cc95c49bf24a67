//! The skeleton: the part of a family's table that does not depend on any
//! one service port (base chains, helper chains, shared sets and maps,
//! node and CIDR elements).

use super::*;

pub(super) fn hook(
    chain_type: ChainType,
    hook: HookPoint,
    name: &'static str,
    offset: i32,
) -> Option<Hook> {
    Some(Hook {
        chain_type,
        hook,
        priority: Priority { name, offset },
    })
}

pub(super) fn base_chain(name: &str, h: Option<Hook>, rules: &[&str]) -> Chain {
    Chain {
        name: name.to_string(),
        hook: h,
        rules: rules.iter().map(|r| Rule::new(*r)).collect(),
    }
}

pub(super) fn vmap_set(name: &str, key: String, comment: &str) -> Set {
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

pub(super) fn plain_set(name: &str, ty: String, comment: &str) -> Set {
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

pub(super) fn ep_map(name: &str, fam: &Fam, nodeport: bool, proto: Protocol, comment: &str) -> Set {
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
pub(super) fn skeleton(ctx: &Ctx) -> Table {
    use ChainType::*;
    use HookPoint::*;
    let fam = &ctx.fam;
    let a = fam.f.addr_type();
    let d = fam.daddr();
    let mut t = Table::new(fam.f, TABLE, Some(TABLE_COMMENT));
    let mut add = |c: Chain| {
        t.chains.insert(c.name.clone(), c);
    };
    let firewall = "ct state new jump firewall-check";
    let endpoints = "ct state new jump service-endpoints-check";
    let cluster_ips = "ct state new jump cluster-ips-check";
    let nodeports = "ct state new jump nodeport-endpoints-check";
    let base: [(&str, Option<Hook>, &[&str]); 8] = [
        (
            "filter-prerouting-pre-dnat",
            hook(Filter, Prerouting, "dstnat", -10),
            &[firewall],
        ),
        (
            "filter-output-pre-dnat",
            hook(Filter, Output, "dstnat", -10),
            &[firewall],
        ),
        (
            "filter-forward",
            hook(Filter, Forward, "filter", 0),
            &[endpoints, cluster_ips],
        ),
        (
            "filter-input",
            hook(Filter, Input, "filter", 0),
            &[nodeports, endpoints],
        ),
        (
            "filter-output",
            hook(Filter, Output, "filter", 0),
            &[endpoints, cluster_ips],
        ),
        (
            "nat-prerouting",
            hook(Nat, Prerouting, "dstnat", 0),
            &["jump services"],
        ),
        (
            "nat-output",
            hook(Nat, Output, "dstnat", 0),
            &["jump services"],
        ),
        (
            "nat-postrouting",
            hook(Nat, Postrouting, "srcnat", 0),
            &["jump masquerading"],
        ),
    ];
    for (name, h, rules) in base {
        add(base_chain(name, h, rules));
    }

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
