//! kube-proxy's nftables layout, rendered from the same service graph, as
//! a comparison baseline (not product code).
//!
//! This is the per-service layout kube-proxy's nftables mode writes
//! (v1.33's shapes, upstream pkg/proxy/nftables/proxier.go and
//! TestOverallNFTablesRules): `table ip kube-proxy`, one
//! `service-*` chain per service port whose load balancing is an anonymous
//! `numgen random mod N vmap { 0 : goto endpoint-A , ... }`, one
//! `endpoint-*` chain per endpoint with the hairpin mark and the DNAT,
//! `external-*`/`local-*` chains, `affinity-*` sets, and the
//! `service-ips`/`service-nodeports`/`no-endpoint-*` verdict maps. Every
//! anonymous vmap is a separate set object in the kernel, which is what
//! makes this layout slow to load; the bench renders it as one `nft -f`
//! transaction, as kube-proxy's full sync does (before the chunking of
//! kubernetes#139546).

use std::fmt::Write as _;

use kproxy_graph::{
    Endpoint, FamilyGraph, IpFamily, LocalTraffic, NoEndpointVerdict, NodePortIps, ServiceGraph,
    ServicePort, TrafficPolicy,
};

const T: &str = "ip kube-proxy";

/// `hashAndTruncate`: kube-proxy prefixes every per-service name with the
/// first 8 characters of the base32 SHA-256 of the name. The bench uses a
/// cheaper 40-bit FNV hash in the same alphabet: what matters for the
/// kernel is the names' length and uniqueness, not their exact letters.
fn hash8(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    (0..8)
        .map(|i| char::from(ALPHABET[((h >> (i * 5)) & 31) as usize]))
        .collect()
}

fn base(sp: &ServicePort) -> String {
    format!(
        "{}/{}/{}/{}",
        sp.name.namespace, sp.name.name, sp.name.protocol, sp.name.port
    )
}

fn chain(prefix: &str, b: &str) -> String {
    format!("{prefix}-{}-{b}", hash8(b))
}

fn ep_base(sp: &ServicePort, ep: &Endpoint) -> String {
    // IPv6 colons are not allowed in names: kube-proxy writes them as dots.
    format!(
        "{}__{}/{}",
        base(sp),
        ep.ip.to_string().replace(':', "."),
        ep.port
    )
}

/// Which of kube-proxy's nftables layouts to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// v1.33-v1.35: a Service chain load-balances with an anonymous
    /// `numgen` verdict map to one chain per endpoint, which DNATs.
    EndpointChains,
    /// v1.36: a Service chain without affinity DNATs through an anonymous
    /// `numgen` data map (`dnat to numgen random mod N map { i : ip . port }`);
    /// endpoint chains remain only for affinity.
    DnatMap,
}

/// Render kube-proxy's nftables ruleset (the v1.33-v1.35 layout) for the
/// IPv4 family of `graph`.
pub fn render(graph: &ServiceGraph) -> String {
    render_layout(graph, Layout::EndpointChains)
}

/// Render kube-proxy's nftables ruleset in `layout` for the IPv4 family
/// of `graph`.
pub fn render_layout(graph: &ServiceGraph, layout: Layout) -> String {
    let mut out = String::with_capacity(1 << 20);
    let Some(fam) = graph.family(IpFamily::V4) else {
        return out;
    };
    let mark = graph.masquerade_mark();
    header(&mut out, fam, mark);
    for sp in fam.services.values() {
        service(&mut out, fam, sp, layout);
    }
    out
}

fn header(o: &mut String, fam: &FamilyGraph, mark: u32) {
    let w = &mut *o;
    let _ = writeln!(w, "add table {T} {{ comment \"rules for kube-proxy\" ; }}");
    for (name, ty, hook, prio) in [
        ("filter-prerouting-pre-dnat", "filter", "prerouting", "-110"),
        ("filter-output-pre-dnat", "filter", "output", "-110"),
        ("filter-forward", "filter", "forward", "0"),
        ("filter-input", "filter", "input", "0"),
        ("filter-output", "filter", "output", "0"),
        ("nat-prerouting", "nat", "prerouting", "-100"),
        ("nat-output", "nat", "output", "-100"),
        ("nat-postrouting", "nat", "postrouting", "100"),
    ] {
        let _ = writeln!(
            w,
            "add chain {T} {name} {{ type {ty} hook {hook} priority {prio} ; }}"
        );
    }
    for name in [
        "services",
        "service-endpoints-check",
        "nodeport-endpoints-check",
        "firewall-check",
        "reject-chain",
        "cluster-ips-check",
        "mark-for-masquerade",
        "masquerading",
    ] {
        let _ = writeln!(w, "add chain {T} {name}");
    }
    let _ = writeln!(
        w,
        "add set {T} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    );
    let all_nodeports = matches!(fam.nodeport_ips, NodePortIps::All);
    if !all_nodeports {
        let _ = writeln!(w, "add set {T} nodeport-ips {{ type ipv4_addr ; }}");
        if let NodePortIps::Only(ips) = &fam.nodeport_ips {
            for ip in ips {
                let _ = writeln!(w, "add element {T} nodeport-ips {{ {ip} }}");
            }
        }
    }
    for (name, ty) in [
        (
            "service-ips",
            "ipv4_addr . inet_proto . inet_service : verdict",
        ),
        ("service-nodeports", "inet_proto . inet_service : verdict"),
        (
            "no-endpoint-services",
            "ipv4_addr . inet_proto . inet_service : verdict",
        ),
        (
            "no-endpoint-nodeports",
            "inet_proto . inet_service : verdict",
        ),
        (
            "firewall-ips",
            "ipv4_addr . inet_proto . inet_service : verdict",
        ),
    ] {
        let _ = writeln!(w, "add map {T} {name} {{ type {ty} ; }}");
    }
    let r = |w: &mut String, chain: &str, rule: &str| {
        let _ = writeln!(w, "add rule {T} {chain} {rule}");
    };
    r(
        w,
        "filter-prerouting-pre-dnat",
        "ct state new jump firewall-check",
    );
    r(
        w,
        "filter-output-pre-dnat",
        "ct state new jump firewall-check",
    );
    r(
        w,
        "filter-forward",
        "ct state new jump service-endpoints-check",
    );
    r(w, "filter-forward", "ct state new jump cluster-ips-check");
    r(
        w,
        "filter-input",
        "ct state new jump nodeport-endpoints-check",
    );
    r(
        w,
        "filter-input",
        "ct state new jump service-endpoints-check",
    );
    r(
        w,
        "filter-output",
        "ct state new jump service-endpoints-check",
    );
    r(w, "filter-output", "ct state new jump cluster-ips-check");
    r(w, "nat-prerouting", "jump services");
    r(w, "nat-output", "jump services");
    r(w, "nat-postrouting", "jump masquerading");
    r(
        w,
        "services",
        "ip daddr . meta l4proto . th dport vmap @service-ips",
    );
    let np_match = if all_nodeports {
        "fib daddr type local ip daddr != 127.0.0.0/8"
    } else {
        "ip daddr @nodeport-ips"
    };
    r(
        w,
        "services",
        &format!("{np_match} meta l4proto . th dport vmap @service-nodeports"),
    );
    r(
        w,
        "service-endpoints-check",
        "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
    );
    r(
        w,
        "nodeport-endpoints-check",
        &format!("{np_match} meta l4proto . th dport vmap @no-endpoint-nodeports"),
    );
    r(
        w,
        "firewall-check",
        "ip daddr . meta l4proto . th dport vmap @firewall-ips",
    );
    r(w, "reject-chain", "reject");
    r(w, "cluster-ips-check", "ip daddr @cluster-ips reject");
    for cidr in &fam.service_cidrs {
        r(
            w,
            "cluster-ips-check",
            &format!("ip daddr {{ {cidr} }} drop"),
        );
    }
    r(
        w,
        "mark-for-masquerade",
        &format!("meta mark set meta mark | {mark:#x}"),
    );
    r(
        w,
        "masquerading",
        &format!("meta mark & {mark:#x} == 0 return"),
    );
    r(
        w,
        "masquerading",
        &format!("meta mark set meta mark ^ {mark:#x}"),
    );
    r(w, "masquerading", "masquerade fully-random");
}

fn verdict_text(v: NoEndpointVerdict) -> &'static str {
    match v {
        NoEndpointVerdict::Reject => "goto reject-chain",
        NoEndpointVerdict::Drop => "drop",
    }
}

fn service(o: &mut String, fam: &FamilyGraph, sp: &ServicePort, layout: Layout) {
    let dnat_map = layout == Layout::DnatMap && sp.session_affinity.is_none();
    let d = &sp.decisions;
    let b = base(sp);
    let proto = sp.name.protocol.as_str();
    let svc_chain = chain("service", &b);
    let local_chain = chain("local", &b);
    let ext_chain = chain("external", &b);
    let _ = writeln!(o, "add element {T} cluster-ips {{ {} }}", sp.cluster_ip);

    // Endpoint chains and affinity sets.
    let endpoint_chains: &[std::sync::Arc<Endpoint>] = if dnat_map {
        &[]
    } else {
        &sp.reachable_endpoints
    };
    for ep in endpoint_chains {
        let eb = ep_base(sp, ep);
        let ec = chain("endpoint", &eb);
        let _ = writeln!(o, "add chain {T} {ec}");
        if let Some(aff) = sp.session_affinity {
            let _ = writeln!(
                o,
                "add set {T} {} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {}s ; }}",
                chain("affinity", &eb),
                aff.timeout_seconds
            );
        }
        let _ = writeln!(
            o,
            "add rule {T} {ec} ip saddr {} jump mark-for-masquerade",
            ep.ip
        );
        if sp.session_affinity.is_some() {
            let _ = writeln!(
                o,
                "add rule {T} {ec} update @{} {{ ip saddr }}",
                chain("affinity", &eb)
            );
        }
        let _ = writeln!(
            o,
            "add rule {T} {ec} meta l4proto {proto} dnat to {}:{}",
            ep.ip, ep.port
        );
    }

    let lb_chain = |o: &mut String,
                    name: &str,
                    eps: &[std::sync::Arc<Endpoint>],
                    masq_cluster_ip: bool| {
        let _ = writeln!(o, "add chain {T} {name}");
        if masq_cluster_ip && let LocalTraffic::Cidr(c) = &fam.local_traffic {
            let _ = writeln!(
                o,
                "add rule {T} {name} ip daddr {} ip saddr != {c} jump mark-for-masquerade",
                sp.cluster_ip
            );
        }
        if sp.session_affinity.is_some() {
            for ep in eps {
                let eb = ep_base(sp, ep);
                let _ = writeln!(
                    o,
                    "add rule {T} {name} ip saddr @{} goto {}",
                    chain("affinity", &eb),
                    chain("endpoint", &eb)
                );
            }
        }
        if dnat_map {
            let elems: Vec<String> = eps
                .iter()
                .enumerate()
                .map(|(i, ep)| format!("{i} : {} . {}", ep.ip, ep.port))
                .collect();
            let _ = writeln!(
                o,
                "add rule {T} {name} meta l4proto {proto} dnat ip to numgen random mod {} map {{ {} }}",
                eps.len(),
                elems.join(" , ")
            );
            return;
        }
        let elems: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, ep)| format!("{i} : goto {}", chain("endpoint", &ep_base(sp, ep))))
            .collect();
        let _ = writeln!(
            o,
            "add rule {T} {name} numgen random mod {} vmap {{ {} }}",
            eps.len(),
            elems.join(" , ")
        );
    };
    if d.uses_cluster_chain && !sp.cluster_endpoints.is_empty() {
        lb_chain(o, &svc_chain, &sp.cluster_endpoints, true);
    }
    if d.uses_local_chain && !sp.local_endpoints.is_empty() {
        lb_chain(o, &local_chain, &sp.local_endpoints, false);
    }
    let policy_chain = |p: TrafficPolicy| match p {
        TrafficPolicy::Cluster => &svc_chain,
        TrafficPolicy::Local => &local_chain,
    };
    if d.uses_external_chain {
        let _ = writeln!(o, "add chain {T} {ext_chain}");
        if d.external_policy_chain == TrafficPolicy::Local {
            if let LocalTraffic::Cidr(c) = &fam.local_traffic {
                let _ = writeln!(o, "add rule {T} {ext_chain} ip saddr {c} goto {svc_chain}");
            }
            let _ = writeln!(
                o,
                "add rule {T} {ext_chain} fib saddr type local jump mark-for-masquerade"
            );
            let _ = writeln!(
                o,
                "add rule {T} {ext_chain} fib saddr type local goto {svc_chain}"
            );
            if sp.local_endpoints.is_empty() {
                let _ = writeln!(o, "add rule {T} {ext_chain} drop");
            } else {
                let _ = writeln!(o, "add rule {T} {ext_chain} goto {local_chain}");
            }
        } else {
            let _ = writeln!(o, "add rule {T} {ext_chain} jump mark-for-masquerade");
            let _ = writeln!(o, "add rule {T} {ext_chain} goto {svc_chain}");
        }
    }

    // Map elements.
    let key = |ip: &dyn std::fmt::Display| format!("{ip} . {proto} . {}", sp.port);
    if d.has_internal_endpoints {
        let _ = writeln!(
            o,
            "add element {T} service-ips {{ {} : goto {} }}",
            key(&sp.cluster_ip),
            policy_chain(d.internal_policy_chain)
        );
    } else if let Some(v) = d.internal_verdict {
        let _ = writeln!(
            o,
            "add element {T} no-endpoint-services {{ {} : {} }}",
            key(&sp.cluster_ip),
            verdict_text(v)
        );
    }
    let externals: Vec<std::net::IpAddr> = sp
        .external_ips
        .iter()
        .copied()
        .chain(sp.vip_load_balancer_ips())
        .collect();
    for ip in &externals {
        if d.uses_external_chain {
            let _ = writeln!(
                o,
                "add element {T} service-ips {{ {} : goto {ext_chain} }}",
                key(ip)
            );
        } else if let Some(v) = d.external_verdict {
            let _ = writeln!(
                o,
                "add element {T} no-endpoint-services {{ {} : {} }}",
                key(ip),
                verdict_text(v)
            );
        }
    }
    if let Some(np) = sp.node_port {
        if d.uses_external_chain {
            let _ = writeln!(
                o,
                "add element {T} service-nodeports {{ {proto} . {np} : goto {ext_chain} }}"
            );
        } else if let Some(v) = d.external_verdict {
            let _ = writeln!(
                o,
                "add element {T} no-endpoint-nodeports {{ {proto} . {np} : {} }}",
                verdict_text(v)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{Cluster, Params};

    #[test]
    fn renders_per_service_chains_with_anonymous_vmaps() {
        let c = Cluster::generate(Params::sized(40, 3)).expect("generate");
        let g = c.graph(kproxy_graph::ProxyMode::Nftables).expect("graph");
        let text = render(&g);
        assert!(text.starts_with("add table ip kube-proxy"));
        let vmaps = text.matches("numgen random mod 3 vmap {").count();
        assert!(
            vmaps >= 40,
            "one vmap per service port at least, got {vmaps}"
        );
        assert!(text.contains("dnat to 10.1.0.0:8080"));
        assert_eq!(hash8("ns1/svc1/tcp/p80").len(), 8);
    }

    #[test]
    fn the_dnat_map_layout_has_no_endpoint_chains() {
        let c = Cluster::generate(Params {
            only: Some("ClusterIP"),
            ..Params::sized(20, 3)
        })
        .expect("generate");
        let g = c.graph(kproxy_graph::ProxyMode::Nftables).expect("graph");
        let text = render_layout(&g, Layout::DnatMap);
        assert_eq!(text.matches("add chain ip kube-proxy endpoint-").count(), 0);
        assert_eq!(
            text.matches("dnat ip to numgen random mod 3 map {").count(),
            20,
            "{text}"
        );
        let chains = render(&g)
            .matches("add chain ip kube-proxy endpoint-")
            .count();
        assert_eq!(chains, 60);
    }
}
