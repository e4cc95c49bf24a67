//! The backends agree: random service graphs (built as Kubernetes objects)
//! and random new connections, rendered by every backend and traced
//! through each ruleset's text, must have the same outcome everywhere,
//! except for the documented differences between kube-proxy's iptables and
//! nftables modes (Kubernetes docs, "Virtual IPs and Service Proxies",
//! the nftables section; pkg/proxy/nftables/README.md upstream), which
//! [`expected`] encodes.
//!
//! proptest drives the generators (`kproxy_testkit::draws`) and shrinks a
//! disagreeing graph and its packets; `KPROXY_PROPTEST_CASES=N` runs N
//! graphs instead of 600, and failures are kept in
//! `equivalence.proptest-regressions`.
//! `planted_divergences_are_caught` shows
//! the comparison fails when a rendered ruleset is mutated (a DNAT branch
//! removed, masquerading flipped).

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use common::render;
use ipnet::IpNet;
use kproxy_graph::{
    BackendKind, DetectLocalMode, FamilyGraph, IpFamily, NodePortAddress, NodePortIps, Objects,
    Protocol, ProxyConfig, ProxyMode, ServiceGraph,
};
use kproxy_testkit::{Draw, TestRng, check_property, draws, proptest_config, sample_draws};
use kproxy_trace::{Node, Outcome, Packet, Verdict, report, tracer_for};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::cell::RefCell;

const NODE: &str = "node-a";
const NODE_IP: &str = "192.168.0.10";
const NODE_IP2: &str = "172.18.0.10";
const NODE_IP6: &str = "fd00:1::10";
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

fn ep_addr(family: IpFamily, node: usize, k: usize) -> String {
    match family {
        IpFamily::V4 => format!("10.244.{node}.{}", k + 2),
        IpFamily::V6 => format!("fd00:244:0:{node}::{}", k + 2),
    }
}

/// A random cluster: Services, EndpointSlices and this node.
fn random_objects(rng: &mut TestRng, dual: bool) -> Vec<Value> {
    let mut items = Vec::new();
    let mut addresses = vec![
        json!({"type": "InternalIP", "address": NODE_IP}),
        json!({"type": "ExternalIP", "address": NODE_IP2}),
    ];
    let mut pod_cidrs = vec!["10.244.0.0/24"];
    if dual {
        addresses.push(json!({"type": "InternalIP", "address": NODE_IP6}));
        pod_cidrs.push("fd00:244:0:0::/64");
    }
    items.push(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        "spec": {"podCIDR": pod_cidrs[0], "podCIDRs": pod_cidrs},
        "status": {"addresses": addresses},
    }));
    let n_services = 1 + rng.index(4);
    for i in 0..n_services {
        let name = format!("svc{i}");
        let kind = *rng.pick(&["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer"]);
        let six = dual && rng.with_probability(0.5);
        let mut families = vec!["IPv4"];
        let mut cluster_ips = vec![format!("10.96.0.{}", 10 + i)];
        if six {
            families.push("IPv6");
            cluster_ips.push(format!("fd00:96::{}", 10 + i));
        }
        let n_ports = 1 + rng.index(2);
        let mut ports = Vec::new();
        let mut used = Vec::new();
        for j in 0..n_ports {
            let mut port: u16 = *rng.pick(&[80, 443, 53, 8080]);
            let proto = *rng.pick(&["TCP", "TCP", "UDP", "SCTP"]);
            while used.contains(&(port, proto)) {
                port += 1;
            }
            used.push((port, proto));
            let pname = if n_ports == 1 && rng.with_probability(0.5) {
                String::new()
            } else {
                format!("p{j}")
            };
            let mut p = json!({"name": pname, "port": port, "protocol": proto,
                "targetPort": 8000 + j});
            if kind != "ClusterIP" {
                p["nodePort"] = json!(30000 + i * 10 + j);
            }
            ports.push(p);
        }
        let mut spec = json!({
            "type": kind, "clusterIP": cluster_ips[0], "clusterIPs": cluster_ips,
            "ipFamilies": families,
            "ipFamilyPolicy": if six { "RequireDualStack" } else { "SingleStack" },
            "ports": ports,
            "internalTrafficPolicy": if rng.with_probability(0.2) { "Local" } else { "Cluster" },
        });
        let mut external = kind != "ClusterIP";
        if rng.with_probability(0.25) {
            spec["externalIPs"] = json!([format!("192.0.2.{}", 50 + i)]);
            external = true;
        }
        if external {
            spec["externalTrafficPolicy"] = json!(if rng.with_probability(0.4) {
                "Local"
            } else {
                "Cluster"
            });
        }
        if rng.with_probability(0.2) {
            spec["sessionAffinity"] = json!("ClientIP");
            spec["sessionAffinityConfig"] =
                json!({"clientIP": {"timeoutSeconds": 60 + rng.index(1000)}});
        }
        let mut status = json!({"loadBalancer": {}});
        if kind == "LoadBalancer" {
            let mode = if rng.with_probability(0.85) {
                "VIP"
            } else {
                "Proxy"
            };
            status = json!({"loadBalancer": {"ingress": [
                {"ip": format!("198.51.100.{}", 10 + i), "ipMode": mode}]}});
            if rng.with_probability(0.5) {
                let ranges = rng
                    .pick(&[
                        vec!["203.0.113.0/25"],
                        vec!["192.168.0.0/24"],
                        vec!["203.0.113.128/25", "198.51.100.0/24"],
                    ])
                    .clone();
                spec["loadBalancerSourceRanges"] = json!(ranges);
            }
        }
        items.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": spec, "status": status,
        }));
        let fams: Vec<IpFamily> = if six {
            vec![IpFamily::V4, IpFamily::V6]
        } else {
            vec![IpFamily::V4]
        };
        for fam in fams {
            let n_eps = if rng.with_probability(0.2) {
                0
            } else {
                1 + rng.index(3)
            };
            let mut eps = Vec::new();
            for k in 0..n_eps {
                let node = rng.index(3);
                let ready = rng.with_probability(0.75);
                let terminating = !ready && rng.with_probability(0.6);
                let serving = ready || (terminating && rng.with_probability(0.6));
                eps.push(json!({
                    "addresses": [ep_addr(fam, node, k + 3 * i)],
                    "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                    "nodeName": NODES[node],
                }));
            }
            let slice_ports: Vec<Value> = (0..n_ports)
                .map(|j| {
                    json!({"name": ports[j]["name"], "port": 8000 + j,
                        "protocol": ports[j]["protocol"]})
                })
                .collect();
            items.push(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "addressType": fam.as_k8s_str(),
                "metadata": {"name": format!("{name}-{}", fam.as_k8s_str().to_lowercase()),
                    "namespace": "ns", "labels": {"kubernetes.io/service-name": name}},
                "endpoints": eps, "ports": slice_ports,
            }));
        }
    }
    items
}

fn config(rng: &mut TestRng, dual: bool) -> ProxyConfig {
    let mut c = ProxyConfig {
        node_name: NODE.into(),
        families: if dual {
            vec![IpFamily::V4, IpFamily::V6]
        } else {
            vec![IpFamily::V4]
        },
        ..ProxyConfig::default()
    };
    let nets = |v: &[&str]| -> Vec<IpNet> { v.iter().map(|s| s.parse().expect("cidr")).collect() };
    c.cluster_cidrs = nets(&["10.244.0.0/16", "fd00:244::/48"]);
    c.service_cidrs = nets(&["10.96.0.0/16", "fd00:96::/112"]);
    c.masquerade_all = rng.with_probability(0.1);
    // How pod traffic is recognised: by source CIDR, or by the interface
    // it arrives on (pods on this node arrive on `cbr0` / `veth*`).
    match rng.index(4) {
        0 => {
            c.detect_local_mode = DetectLocalMode::BridgeInterface;
            c.bridge_interface = Some("cbr0".into());
        }
        1 => {
            c.detect_local_mode = DetectLocalMode::InterfaceNamePrefix;
            c.interface_name_prefix = Some("veth".into());
        }
        _ => {}
    }
    if rng.with_probability(0.5) {
        c.nodeport_addresses = vec![NodePortAddress::Primary];
    }
    c
}

/// Which documented difference applies to a connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Same outcome (masquerade may differ for a hairpin to a remote
    /// endpoint: nftables hairpins only local endpoints, as a real kube-proxy v1.36
    /// does).
    Same,
    /// Wrong port or protocol on an active ClusterIP: iptables has no
    /// rule; nftables REJECTs (docs/backends/nftables.md, "Differences").
    WrongPort,
    /// An unallocated address of the service CIDR: iptables has no rule;
    /// nftables DROPs (docs/backends/nftables.md, "Differences").
    Unallocated,
    /// Loopback NodePorts (iptables only), or a NodePort on a node address
    /// nftables does not accept NodePorts on (default nodePortAddresses:
    /// iptables every local address, nftables the primary; and iptables'
    /// no-endpoint NodePort REJECT/DROP matches every local address even
    /// with nodePortAddresses set): nftables does not handle it.
    NftNotHandled,
    /// The node itself connects to an external or LoadBalancer IP of a
    /// service port with no endpoints: iptables hooks its
    /// KUBE-EXTERNAL-SERVICES REJECT/DROP only into INPUT and FORWARD (as
    /// upstream), so the connection leaves untouched; nftables checks
    /// @no-endpoint-services in output too and REJECTs or DROPs.
    NodeToExternalNoEndpoints,
    /// LB IP with source ranges and no endpoints: iptables REJECTs every
    /// client; nftables DROPs clients outside the ranges (its firewall runs
    /// before DNAT) and REJECTs clients inside, as a real kube-proxy v1.36
    /// does.
    LbRangesNoEndpoints {
        /// The client is inside the ranges.
        allowed: bool,
    },
}

fn expected(ipt: &FamilyGraph, nft: &FamilyGraph, p: &Packet) -> Expect {
    if p.dst.is_loopback() {
        return Expect::NftNotHandled;
    }
    let proto = p.proto;
    let svcs: Vec<_> = ipt.services.values().collect();
    if svcs.iter().any(|s| s.cluster_ip == p.dst)
        && !svcs
            .iter()
            .any(|s| s.cluster_ip == p.dst && s.port == p.dport && s.name.protocol == proto)
    {
        return Expect::WrongPort;
    }
    let is_vip = svcs.iter().any(|s| {
        s.cluster_ip == p.dst
            || s.external_ips.contains(&p.dst)
            || s.vip_load_balancer_ips().any(|ip| ip == p.dst)
    });
    if !is_vip && ipt.service_cidrs.iter().any(|n| n.contains(&p.dst)) {
        return Expect::Unallocated;
    }
    let nft_np = match &nft.nodeport_ips {
        NodePortIps::All => true,
        NodePortIps::Only(ips) => ips.contains(&p.dst),
    };
    // Any node address counts for iptables: besides the default "all"
    // nodePortAddresses, its no-endpoint REJECT/DROP for NodePorts matches
    // `addrtype --dst-type LOCAL` whatever nodePortAddresses says (as
    // upstream writes it), while nftables checks @nodeport-ips.
    let ipt_local = ipt.node_ips.contains(&p.dst);
    if ipt_local
        && !nft_np
        && svcs
            .iter()
            .any(|s| s.node_port == Some(p.dport) && s.name.protocol == proto)
    {
        return Expect::NftNotHandled;
    }
    let from_node = p.src.is_loopback() || ipt.node_ips.contains(&p.src);
    if from_node
        && svcs.iter().any(|s| {
            (s.external_ips.contains(&p.dst) || s.vip_load_balancer_ips().any(|ip| ip == p.dst))
                && s.port == p.dport
                && s.name.protocol == proto
                && !s.decisions.has_endpoints
        })
    {
        return Expect::NodeToExternalNoEndpoints;
    }
    for s in &svcs {
        if s.vip_load_balancer_ips().any(|ip| ip == p.dst)
            && s.port == p.dport
            && s.name.protocol == proto
            && !s.source_ranges.is_empty()
            && !s.decisions.has_endpoints
        {
            let allowed = s.source_ranges.iter().any(|r| r.contains(&p.src));
            return Expect::LbRangesNoEndpoints { allowed };
        }
    }
    Expect::Same
}

fn only(o: &Outcome, v: Verdict) -> bool {
    matches!(o.only(), Some(p) if p.verdict == v && (v != Verdict::Accept || p.dnat.is_none()))
}

/// Outcomes equal, allowing masquerade to differ on hairpin parts (the
/// connection DNATed back to its source).
fn same_allowing_hairpin(a: &Outcome, b: &Outcome, src: IpAddr) -> bool {
    let norm = |o: &Outcome| {
        let mut o = o.clone();
        for p in &mut o.parts {
            if p.dnat.map(|d| d.ip()) == Some(src) {
                p.masquerade = false;
            }
        }
        o
    };
    norm(a).same_as(&norm(b))
}

fn check(expect: Expect, ipt: &Outcome, nft: &Outcome, src: IpAddr) -> bool {
    match expect {
        Expect::Same => same_allowing_hairpin(ipt, nft, src),
        Expect::WrongPort => ipt.is_not_handled() && only(nft, Verdict::Reject),
        Expect::Unallocated => ipt.is_not_handled() && only(nft, Verdict::Drop),
        Expect::NftNotHandled => nft.is_not_handled(),
        Expect::NodeToExternalNoEndpoints => {
            ipt.is_not_handled() && (only(nft, Verdict::Reject) || only(nft, Verdict::Drop))
        }
        Expect::LbRangesNoEndpoints { allowed } => {
            only(ipt, Verdict::Reject)
                && only(
                    nft,
                    if allowed {
                        Verdict::Reject
                    } else {
                        Verdict::Drop
                    },
                )
        }
    }
}

fn random_packets(rng: &mut TestRng, g: &FamilyGraph, n: usize) -> Vec<Packet> {
    let fam = g.family;
    let v4 = fam == IpFamily::V4;
    let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
    let node_ip = if v4 { ip(NODE_IP) } else { ip(NODE_IP6) };
    let mut sources: Vec<IpAddr> = if v4 {
        vec![
            ip("10.244.0.99"),
            ip("10.244.1.99"),
            ip("203.0.113.2"),
            ip("203.0.113.200"),
            node_ip,
        ]
    } else {
        vec![
            ip("fd00:244:0:0::99"),
            ip("fd00:244:0:1::99"),
            ip("2001:db8::2"),
            node_ip,
        ]
    };
    let svcs: Vec<_> = g.services.values().collect();
    for s in &svcs {
        sources.extend(s.endpoints.iter().map(|e| e.ip));
    }
    let protos = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
    let mut out = Vec::new();
    for _ in 0..n {
        let src = *rng.pick(&sources);
        let s = if svcs.is_empty() {
            None
        } else {
            Some(*rng.pick(&svcs))
        };
        let mut proto = s.map(|s| s.name.protocol).unwrap_or(Protocol::Tcp);
        let (dst, dport) = match (rng.index(10), s) {
            (0 | 1, Some(s)) => (s.cluster_ip, s.port),
            (2, Some(s)) => (s.cluster_ip, 9999),
            (3, Some(s)) => {
                proto = *rng.pick(&protos);
                (s.cluster_ip, s.port)
            }
            (4, Some(s)) => (node_ip, s.node_port.unwrap_or(31999)),
            (5, Some(s)) if v4 => (ip(NODE_IP2), s.node_port.unwrap_or(31999)),
            (6, Some(s)) if src == node_ip && v4 => (ip("127.0.0.1"), s.node_port.unwrap_or(31999)),
            (7, Some(s)) => (s.external_ips.first().copied().unwrap_or(node_ip), s.port),
            (8, Some(s)) => (
                s.load_balancer_ips
                    .first()
                    .map(|l| l.ip)
                    .unwrap_or(s.cluster_ip),
                s.port,
            ),
            _ => (
                if v4 {
                    ip("10.96.5.5")
                } else {
                    ip("fd00:96::5:5")
                },
                80,
            ),
        };
        let mut p = Packet::new(src, dst, dport, proto);
        // Pods of this node (10.244.0.0/24, fd00:244:0:0::/64) arrive on
        // their bridge / veth; everything else (other nodes' pods
        // included) on the uplink.
        let local_pod = match src {
            IpAddr::V4(a) => a.octets()[..3] == [10, 244, 0],
            IpAddr::V6(a) => a.segments()[..4] == [0xfd00, 0x244, 0, 0],
        };
        p.iif = Some(
            if local_pod {
                *rng.pick(&["cbr0", "veth1a2b"])
            } else {
                "eth0"
            }
            .to_string(),
        );
        out.push(p);
    }
    out
}

/// A change applied to the iptables-legacy and nftables texts before
/// tracing (to show the comparison catches generator bugs).
type Mutation = fn(BackendKind, String) -> String;

struct Run {
    cases: usize,
    by_expect: BTreeMap<String, usize>,
    failures: Vec<String>,
}

impl Run {
    fn new() -> Run {
        Run {
            cases: 0,
            by_expect: BTreeMap::new(),
            failures: Vec::new(),
        }
    }
}

/// The draws one random graph and its packets take at the most.
const DRAWS: usize = 4096;

/// `graphs` graphs of a fixed sample, the same on every run.
fn run(graphs: usize, packets_per_family: usize, mutate: Option<Mutation>) -> Run {
    let mut r = Run::new();
    for (i, mut rng) in sample_draws(graphs, DRAWS).into_iter().enumerate() {
        run_graph(
            &mut rng,
            &format!("graph {i}"),
            packets_per_family,
            mutate,
            &mut r,
        );
    }
    r
}

/// One random graph from `rng` and `packets_per_family` random packets
/// per family, traced through every backend's rules, into `r`.
fn run_graph(
    rng: &mut TestRng,
    seed: &str,
    packets_per_family: usize,
    mutate: Option<Mutation>,
    r: &mut Run,
) {
    {
        let dual = rng.with_probability(0.3);
        let items = random_objects(rng, dual);
        let mut objects = Objects::default();
        let mut warnings = Vec::new();
        objects.add_value(
            json!({"apiVersion": "v1", "kind": "List", "items": items}),
            &mut warnings,
        );
        let base = config(rng, dual);
        let g_ipt = ServiceGraph::build(
            &objects,
            &ProxyConfig {
                mode: ProxyMode::Iptables,
                ..base.clone()
            },
        );
        let g_nft = ServiceGraph::build(
            &objects,
            &ProxyConfig {
                mode: ProxyMode::Nftables,
                ..base.clone()
            },
        );
        let mut texts = Vec::new();
        for kind in BackendKind::ALL {
            let g = if kind == BackendKind::Nftables {
                &g_nft
            } else {
                &g_ipt
            };
            let mut text = render(kind, g);
            if let Some(m) = mutate {
                text = m(kind, text);
            }
            let iface = match kind {
                BackendKind::Nftables => text.contains("iifname"),
                _ => text.contains(" -i "),
            };
            if iface {
                *r.by_expect
                    .entry(format!("{kind} rulesets matching interfaces"))
                    .or_default() += 1;
            }
            let tracer = tracer_for(kind, &text).unwrap_or_else(|e| {
                panic!("seed {seed}: {kind} ruleset does not parse: {e}\n{text}")
            });
            let unknown = tracer.unknown_rules();
            assert!(
                unknown.is_empty(),
                "seed {seed}: {kind} rules the tracer does not understand: {unknown:#?}"
            );
            texts.push((kind, tracer, text));
        }
        let node = Node::new(g_ipt.node.ips.clone());
        for (fam, fg) in &g_ipt.families {
            let Some(fn_) = g_nft.family(*fam) else {
                continue;
            };
            for p in random_packets(rng, fg, packets_per_family) {
                r.cases += 1;
                let mut outcomes = Vec::new();
                for (kind, tracer, _) in &texts {
                    let t = tracer
                        .trace(&p, &node)
                        .unwrap_or_else(|e| panic!("seed {seed}: tracing {p} through {kind}: {e}"));
                    let total: f64 = t.branches.iter().map(|b| b.probability).sum();
                    if (total - 1.0).abs() > 1e-6 {
                        r.failures.push(format!(
                            "seed {seed}, {p}: {kind} branch probabilities sum to {total}"
                        ));
                    }
                    outcomes.push((*kind, t));
                }
                let expect = expected(fg, fn_, &p);
                *r.by_expect.entry(format!("{expect:?}")).or_default() += 1;
                let (legacy, nft_flavour, nft) = (&outcomes[0].1, &outcomes[1].1, &outcomes[2].1);
                let flavours_agree = legacy.outcome().same_as(&nft_flavour.outcome());
                let ok = flavours_agree && check(expect, &legacy.outcome(), &nft.outcome(), p.src);
                if !ok && r.failures.len() < 5 {
                    r.failures.push(format!(
                        "seed {seed}, {p} (expected {expect:?}; node ips {:?}, nodeport ips ipt {:?} nft {:?}):\n  iptables-legacy: {}\n  iptables-nft:    {}\n  nftables:        {}\n--- iptables-legacy trace\n{}--- nftables trace\n{}",
                        fg.node_ips,
                        fg.nodeport_ips,
                        fn_.nodeport_ips,
                        legacy.outcome(),
                        nft_flavour.outcome(),
                        nft.outcome(),
                        report::text(legacy),
                        report::text(nft),
                    ));
                } else if !ok {
                    r.failures.push(format!("seed {seed}, {p}"));
                }
            }
        }
    }
}

#[test]
fn backends_agree_on_random_graphs_and_packets() {
    let all = RefCell::new(Run::new());
    let graphs = proptest_config(600).cases as usize;
    check_property(file!(), 600, &draws(DRAWS), |mut rng| {
        let mut one = Run::new();
        run_graph(&mut rng, "the case", 8, None, &mut one);
        let mut all = all.borrow_mut();
        all.cases += one.cases;
        for (k, n) in one.by_expect {
            *all.by_expect.entry(k).or_default() += n;
        }
        prop_assert!(
            one.failures.is_empty(),
            "{} of {} cases disagree:\n{}",
            one.failures.len(),
            one.cases,
            one.failures.join("\n")
        );
        Ok(())
    });
    let r = all.into_inner();
    eprintln!("{} cases, by expectation: {:?}", r.cases, r.by_expect);
    // 5,000 over the default 600 graphs.
    assert!(r.cases >= graphs * 25 / 3, "only {} cases", r.cases);
    // Every documented difference was exercised, not only Same.
    for k in [
        "Same",
        "WrongPort",
        "Unallocated",
        "NftNotHandled",
        "iptables-legacy rulesets matching interfaces",
        "nftables rulesets matching interfaces",
    ] {
        assert!(
            r.by_expect.get(k).copied().unwrap_or(0) > 10,
            "{k} rarely exercised: {:?}",
            r.by_expect
        );
    }
}

fn drop_first_dnat(kind: BackendKind, text: String) -> String {
    if kind != BackendKind::IptablesLegacy {
        return text;
    }
    // Remove one endpoint's DNAT rule: that branch falls through.
    let mut done = false;
    text.lines()
        .filter(|l| {
            if !done && l.contains("-j DNAT") {
                done = true;
                return false;
            }
            true
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn no_nft_masquerade(kind: BackendKind, text: String) -> String {
    if kind != BackendKind::Nftables {
        return text;
    }
    // The masquerading chain forgets to masquerade marked traffic.
    text.lines()
        .map(|l| {
            if l.contains(" masquerading meta mark") {
                l.replace("masquerade fully-random", "accept")
            } else {
                l.to_string()
            }
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn planted_divergences_are_caught() {
    let r = run(60, 8, Some(drop_first_dnat));
    assert!(
        !r.failures.is_empty(),
        "a missing DNAT rule went unnoticed in {} cases",
        r.cases
    );
    let r = run(60, 8, Some(no_nft_masquerade));
    assert!(
        !r.failures.is_empty(),
        "nftables without masquerading went unnoticed in {} cases",
        r.cases
    );
}
