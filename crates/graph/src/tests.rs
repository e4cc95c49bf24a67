//! Endpoint selection, intake and change tracking, case by case, after the
//! upstream kube-proxy tests of the same names (kubernetes/kubernetes
//! pkg/proxy/iptables/proxier_test.go and pkg/proxy/nftables/proxier_test.go,
//! e.g. TestInternalTrafficPolicy, TestTerminatingEndpointsTrafficPolicyLocal,
//! TestNoEndpointsReject). Each test asserts the
//! decisions, not just that something was produced.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::config::{NodePortAddress, ProxyConfig, ProxyMode};
use crate::model::*;
use crate::{ChangeSet, ObjectKind, Objects};

const NODE: &str = "test-node";

fn cfg() -> ProxyConfig {
    ProxyConfig {
        node_name: NODE.into(),
        cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        ..ProxyConfig::default()
    }
}

fn node(zone: Option<&str>) -> Value {
    let mut labels = json!({"kubernetes.io/hostname": NODE});
    if let Some(z) = zone {
        labels["topology.kubernetes.io/zone"] = json!(z);
    }
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": labels},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"},
                                 {"type": "ExternalIP", "address": "192.168.1.2"},
                                 {"type": "InternalIP", "address": "2001:db8::1"}]}})
}

fn svc(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// (ip, node, ready, serving, terminating); `None` leaves a field unset.
type Ep<'a> = (
    &'a str,
    Option<&'a str>,
    Option<bool>,
    Option<bool>,
    Option<bool>,
);

/// An EndpointSlice with one unnamed TCP port 80.
fn slice(ns: &str, svc: &str, eps: &[Ep<'_>]) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, node, r, s, t)| {
            let mut cond = serde_json::Map::new();
            if let Some(r) = r {
                cond.insert("ready".into(), json!(r));
            }
            if let Some(s) = s {
                cond.insert("serving".into(), json!(s));
            }
            if let Some(t) = t {
                cond.insert("terminating".into(), json!(t));
            }
            let mut e = json!({"addresses": [ip], "conditions": cond});
            if let Some(n) = node {
                e["nodeName"] = json!(n);
            }
            e
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-1"), "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "ports": [{"port": 80, "protocol": "TCP"}], "endpoints": endpoints})
}

fn ready<'a>(ip: &'a str, node: Option<&'a str>) -> Ep<'a> {
    (ip, node, Some(true), Some(true), Some(false))
}

/// Not ready but serving: a terminating endpoint that can still take traffic.
fn serving_terminating<'a>(ip: &'a str, node: Option<&'a str>) -> Ep<'a> {
    (ip, node, Some(false), Some(true), Some(true))
}

/// Terminating and no longer serving.
fn terminating<'a>(ip: &'a str, node: Option<&'a str>) -> Ep<'a> {
    (ip, node, Some(false), Some(false), Some(true))
}

/// Neither ready, serving nor terminating.
fn not_ready<'a>(ip: &'a str, node: Option<&'a str>) -> Ep<'a> {
    (ip, node, Some(false), Some(false), Some(false))
}

fn graph_of(values: Vec<Value>, config: &ProxyConfig) -> ServiceGraph {
    let mut o = Objects::default();
    let mut w = Vec::new();
    for v in values {
        o.add_value(v, &mut w);
    }
    let mut g = ServiceGraph::build(&o, config);
    g.warnings.extend(w);
    g
}

/// The IPv4 port of Service `svc` (ns1/svc1) in a graph of it, its
/// EndpointSlice of `eps`, and this node without a zone.
fn one_port(svc: Value, eps: &[Ep<'_>]) -> ServicePort {
    let g = graph_of(vec![svc, slice("ns1", "svc1", eps), node(None)], &cfg());
    port(&g, "ns1", "svc1").clone()
}

fn port<'a>(g: &'a ServiceGraph, ns: &str, name: &str) -> &'a ServicePort {
    g.family(IpFamily::V4)
        .unwrap()
        .services
        .values()
        .find(|s| s.name.namespace == ns && s.name.name == name)
        .unwrap_or_else(|| panic!("{ns}/{name} not in graph"))
}

fn ips(eps: &[std::sync::Arc<Endpoint>]) -> Vec<String> {
    eps.iter().map(|e| e.ip.to_string()).collect()
}

/// The Service names of these service ports.
fn names<'a>(ports: impl IntoIterator<Item = &'a ServicePortName>) -> Vec<&'a str> {
    ports.into_iter().map(|n| n.name.as_str()).collect()
}

/// The first service port of family `f` in `g`.
fn first_port(g: &ServiceGraph, f: IpFamily) -> &ServicePort {
    g.family(f).unwrap().services.values().next().unwrap()
}

fn unnamed_cluster_ip(ip: &str, extra: Value) -> Value {
    let mut spec =
        json!({"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80, "protocol": "TCP"}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

// === TestInternalTrafficPolicy ===

#[test]
fn internal_traffic_policy() {
    struct Case {
        name: &'static str,
        itp: &'static str,
        eps: Vec<(&'static str, &'static str)>,
        want: Vec<&'static str>,
        verdict: Option<NoEndpointVerdict>,
    }
    let cases = vec![
        Case {
            name: "cluster: all endpoints",
            itp: "Cluster",
            eps: vec![
                ("10.0.1.1", NODE),
                ("10.0.1.2", "node1"),
                ("10.0.1.3", "node2"),
            ],
            want: vec!["10.0.1.1", "10.0.1.2", "10.0.1.3"],
            verdict: None,
        },
        Case {
            name: "local: only the local one",
            itp: "Local",
            eps: vec![
                ("10.0.1.1", NODE),
                ("10.0.1.2", "node1"),
                ("10.0.1.3", "node2"),
            ],
            want: vec!["10.0.1.1"],
            verdict: None,
        },
        Case {
            name: "local: two local",
            itp: "Local",
            eps: vec![
                ("10.0.1.1", NODE),
                ("10.0.1.2", NODE),
                ("10.0.1.3", "node2"),
            ],
            want: vec!["10.0.1.1", "10.0.1.2"],
            verdict: None,
        },
        Case {
            name: "local: none local -> DROP",
            itp: "Local",
            eps: vec![
                ("10.0.1.1", "node0"),
                ("10.0.1.2", "node1"),
                ("10.0.1.3", "node2"),
            ],
            want: vec![],
            verdict: Some(NoEndpointVerdict::Drop),
        },
    ];
    for c in cases {
        let eps: Vec<_> = c.eps.iter().map(|(ip, n)| ready(ip, Some(n))).collect();
        let sp = one_port(
            svc(
                "ns1",
                "svc1",
                unnamed_cluster_ip("172.30.1.1", json!({"internalTrafficPolicy": c.itp})),
            ),
            &eps,
        );
        let served = match sp.decisions.internal_policy_chain {
            TrafficPolicy::Cluster => &sp.cluster_endpoints,
            TrafficPolicy::Local => &sp.local_endpoints,
        };
        assert_eq!(ips(served), c.want, "{}", c.name);
        assert_eq!(sp.decisions.internal_verdict, c.verdict, "{}", c.name);
        assert_eq!(
            sp.decisions.has_internal_endpoints,
            c.verdict.is_none(),
            "{}",
            c.name
        );
        assert!(sp.decisions.has_endpoints, "{}", c.name);

        // Every case: with the EndpointSlice deleted, REJECT.
        let g = graph_of(
            vec![
                svc(
                    "ns1",
                    "svc1",
                    unnamed_cluster_ip("172.30.1.1", json!({"internalTrafficPolicy": c.itp})),
                ),
                node(None),
            ],
            &cfg(),
        );
        let sp = port(&g, "ns1", "svc1");
        assert_eq!(
            sp.decisions.internal_verdict,
            Some(NoEndpointVerdict::Reject),
            "{} without slice",
            c.name
        );
        assert!(!sp.decisions.has_endpoints);
    }
}

// === TestTerminatingEndpointsTrafficPolicyCluster ===

#[test]
fn terminating_endpoints_cluster_policy() {
    // ready + terminating mix: only ready endpoints serve.
    let sp = one_port(
        svc("ns1", "svc1", unnamed_cluster_ip("172.30.1.1", json!({}))),
        &[
            ready("10.0.1.1", Some(NODE)),
            ready("10.0.1.2", Some("node2")),
            serving_terminating("10.0.1.3", Some(NODE)),
            terminating("10.0.1.4", Some(NODE)),
            not_ready("10.0.1.5", Some(NODE)),
        ],
    );
    assert_eq!(ips(&sp.cluster_endpoints), ["10.0.1.1", "10.0.1.2"]);
    assert!(!sp.decisions.cluster_terminating_fallback);

    // only serving-terminating (and not-serving) endpoints: fall back.
    let sp = one_port(
        svc("ns1", "svc1", unnamed_cluster_ip("172.30.1.1", json!({}))),
        &[
            serving_terminating("10.0.1.2", Some(NODE)),
            serving_terminating("10.0.1.3", Some("node2")),
            terminating("10.0.1.4", Some(NODE)),
            not_ready("10.0.1.5", Some(NODE)),
        ],
    );
    assert_eq!(ips(&sp.cluster_endpoints), ["10.0.1.2", "10.0.1.3"]);
    assert!(sp.decisions.cluster_terminating_fallback);
    assert!(sp.decisions.has_endpoints);
    assert_eq!(sp.decisions.internal_verdict, None);

    // nothing serving at all: REJECT.
    let sp = one_port(
        svc("ns1", "svc1", unnamed_cluster_ip("172.30.1.1", json!({}))),
        &[
            terminating("10.0.1.4", Some(NODE)),
            not_ready("10.0.1.5", Some(NODE)),
        ],
    );
    assert!(sp.cluster_endpoints.is_empty());
    assert_eq!(
        sp.decisions.internal_verdict,
        Some(NoEndpointVerdict::Reject)
    );
}

// === TestTerminatingEndpointsTrafficPolicyLocal / TestHealthCheckNodePortWhenTerminating ===

fn lb_local(extra: Value) -> Value {
    let mut spec = json!({"type": "LoadBalancer", "clusterIP": "172.30.1.1", "clusterIPs": ["172.30.1.1"],
        "externalTrafficPolicy": "Local", "healthCheckNodePort": 30000,
        "ports": [{"port": 80, "protocol": "TCP", "nodePort": 3001}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

fn with_lb_status(mut svc: Value, ip: &str) -> Value {
    svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
    svc
}

#[test]
fn terminating_endpoints_local_policy() {
    let lb = || with_lb_status(svc("ns1", "svc1", lb_local(json!({}))), "1.2.3.4");
    // local ready endpoints exist: terminating ones are ignored.
    let sp = one_port(
        lb(),
        &[
            ready("10.0.1.1", Some(NODE)),
            serving_terminating("10.0.1.2", Some(NODE)),
            ready("10.0.1.3", Some("node2")),
        ],
    );
    assert_eq!(sp.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(ips(&sp.local_endpoints), ["10.0.1.1"]);
    assert_eq!(sp.ready_local_endpoints, 1);
    assert!(!sp.decisions.local_terminating_fallback);

    // only serving-terminating local endpoints: they serve, health check reports 0.
    let sp = one_port(
        lb(),
        &[
            serving_terminating("10.0.1.1", Some(NODE)),
            terminating("10.0.1.2", Some(NODE)),
            ready("10.0.1.3", Some("node2")),
        ],
    );
    assert_eq!(ips(&sp.local_endpoints), ["10.0.1.1"]);
    assert!(sp.decisions.local_terminating_fallback);
    assert_eq!(sp.ready_local_endpoints, 0);
    assert_eq!(sp.decisions.external_verdict, None);
    // The cluster set (ClusterIP, iTP=Cluster) is the ready remote one;
    // reachable endpoints are the union.
    assert_eq!(ips(&sp.cluster_endpoints), ["10.0.1.3"]);
    assert_eq!(ips(&sp.reachable_endpoints), ["10.0.1.1", "10.0.1.3"]);

    // no local endpoint of any kind: external DROP, internal still served.
    let sp = one_port(lb(), &[ready("10.0.1.3", Some("node2"))]);
    assert!(sp.local_endpoints.is_empty());
    assert_eq!(sp.decisions.external_verdict, Some(NoEndpointVerdict::Drop));
    assert_eq!(sp.decisions.internal_verdict, None);
    assert!(
        sp.decisions.uses_external_chain,
        "EXT chain stays for pod/node short-circuits"
    );
    assert!(!sp.decisions.uses_local_chain);
    assert!(sp.decisions.uses_cluster_chain);
}

// === no endpoints (TestNoEndpointsReject) ===

#[test]
fn no_endpoints_reject_everywhere() {
    let mut s = svc(
        "ns1",
        "svc1",
        json!({"type": "LoadBalancer", "clusterIP": "172.30.0.41", "clusterIPs": ["172.30.0.41"],
        "externalIPs": ["192.168.99.11"], "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}]}),
    );
    s = with_lb_status(s, "1.2.3.4");
    let g = graph_of(vec![s, node(None)], &cfg());
    let sp = port(&g, "ns1", "svc1");
    assert_eq!(
        sp.decisions.internal_verdict,
        Some(NoEndpointVerdict::Reject)
    );
    assert_eq!(
        sp.decisions.external_verdict,
        Some(NoEndpointVerdict::Reject)
    );
    assert!(!sp.decisions.uses_external_chain);
    assert!(!sp.decisions.uses_cluster_chain);
    assert_eq!(sp.name.to_string(), "ns1/svc1:p80");
}

// === topology ===

#[test]
fn topology_hints() {
    let topo_slice = |hints: &[Option<&str>]| {
        let mut s = slice(
            "ns1",
            "svc1",
            &[
                ready("10.1.2.3", Some("node1")),
                ready("10.1.2.4", Some("node2")),
                ready("10.1.2.5", Some("node3")),
            ],
        );
        for (i, h) in hints.iter().enumerate() {
            if let Some(z) = h {
                s["endpoints"][i]["hints"] = json!({"forZones": [{"name": z}]});
            }
        }
        s
    };
    let svc1 = || {
        svc(
            "ns1",
            "svc1",
            unnamed_cluster_ip("172.30.1.1", json!({"trafficDistribution": "PreferClose"})),
        )
    };

    let topo_graph = |hints: &[Option<&str>], node: Value| {
        graph_of(vec![svc1(), topo_slice(hints), node], &cfg())
    };

    // every ready endpoint hinted, some for our zone: filter.
    let g = topo_graph(
        &[Some("zone-a"), Some("zone-b"), Some("zone-a")],
        node(Some("zone-a")),
    );
    let sp = port(&g, "ns1", "svc1");
    assert_eq!(sp.decisions.topology, Some(TopologyMode::PreferSameZone));
    assert_eq!(ips(&sp.cluster_endpoints), ["10.1.2.3", "10.1.2.5"]);

    // one endpoint without hints: no filtering.
    let g = topo_graph(
        &[Some("zone-a"), None, Some("zone-a")],
        node(Some("zone-a")),
    );
    let sp = port(&g, "ns1", "svc1");
    assert_eq!(sp.decisions.topology, None);
    assert_eq!(sp.cluster_endpoints.len(), 3);

    // no hint for our zone: no filtering.
    let g = topo_graph(
        &[Some("zone-b"), Some("zone-b"), Some("zone-c")],
        node(Some("zone-a")),
    );
    assert_eq!(port(&g, "ns1", "svc1").cluster_endpoints.len(), 3);

    // node without a zone label: no filtering.
    let g = topo_graph(
        &[Some("zone-a"), Some("zone-b"), Some("zone-a")],
        node(None),
    );
    assert_eq!(port(&g, "ns1", "svc1").cluster_endpoints.len(), 3);

    // node hints: PreferSameNode wins when every ready endpoint has them.
    let mut s = topo_slice(&[Some("zone-a"), Some("zone-a"), Some("zone-a")]);
    s["endpoints"][0]["hints"]["forNodes"] = json!([{"name": "node1"}]);
    s["endpoints"][1]["hints"]["forNodes"] = json!([{"name": NODE}]);
    s["endpoints"][2]["hints"]["forNodes"] = json!([{"name": "node3"}]);
    let g = graph_of(vec![svc1(), s, node(Some("zone-a"))], &cfg());
    let sp = port(&g, "ns1", "svc1");
    assert_eq!(sp.decisions.topology, Some(TopologyMode::PreferSameNode));
    assert_eq!(ips(&sp.cluster_endpoints), ["10.1.2.4"]);
}

// === TestBadIPs and other bad input ===

#[test]
fn bad_input_is_skipped_with_named_warnings() {
    let mut s = svc(
        "ns1",
        "svc1",
        json!({"type": "LoadBalancer", "clusterIP": "172.30.0.41",
        "clusterIPs": ["172.30.0.41", "fd00::1", "bogus"],
        "externalIPs": ["192.168.99.11", "nope", "2001:db8::5"],
        "loadBalancerSourceRanges": [" 203.0.113.0/25 ", "junk"],
        "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 999999}},
        "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 70000},
                  {"name": "bad", "port": 0, "protocol": "TCP"},
                  {"name": "icmp", "port": 7, "protocol": "ICMP"}]}),
    );
    s = with_lb_status(s, "1.2.3.x");
    let mut sl = slice(
        "ns1",
        "svc1",
        &[
            ready("10.180.0.1", Some(NODE)),
            ready("10.180.0.999", None),
            ready("fd00::9", None),
        ],
    );
    sl["ports"][0]["name"] = json!("p80");
    let orphan = slice("ns1", "ghost", &[ready("10.180.0.2", None)]);
    let g = graph_of(vec![s, sl, orphan, node(None)], &cfg());

    let sp = port(&g, "ns1", "svc1");
    assert_eq!(ips(&sp.endpoints), ["10.180.0.1"]);
    assert_eq!(
        sp.external_ips,
        vec!["192.168.99.11".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        sp.source_ranges,
        vec!["203.0.113.0/25".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(sp.node_port, None);
    assert!(sp.load_balancer_ips.is_empty());
    assert_eq!(
        sp.session_affinity,
        Some(SessionAffinity {
            timeout_seconds: 10800
        })
    );
    assert_eq!(
        g.family(IpFamily::V4).unwrap().services.len(),
        1,
        "bad and ICMP ports skipped"
    );
    // The IPv6 ClusterIP makes an IPv6 service port, with its own family's external IP.
    let v6 = first_port(&g, IpFamily::V6);
    assert_eq!(
        v6.external_ips,
        vec!["2001:db8::5".parse::<IpAddr>().unwrap()]
    );

    let fields: Vec<(ObjectKind, String, String)> = g
        .warnings
        .iter()
        .map(|w| (w.kind, w.object.clone(), w.field.clone()))
        .collect();
    let svc1_field = |field| (ObjectKind::Service, "ns1/svc1", field);
    let slice_field = |obj, field| (ObjectKind::EndpointSlice, obj, field);
    for (kind, obj, field) in [
        svc1_field("spec.clusterIPs[2]"),
        svc1_field("spec.externalIPs[1]"),
        svc1_field("spec.loadBalancerSourceRanges[1]"),
        svc1_field("spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
        svc1_field("spec.ports[0].nodePort"),
        svc1_field("spec.ports[1].port"),
        svc1_field("spec.ports[2].protocol"),
        svc1_field("status.loadBalancer.ingress[0].ip"),
        slice_field("ns1/svc1-1", "endpoints[1].addresses[0]"),
        slice_field("ns1/svc1-1", "endpoints[2].addresses[0]"),
        slice_field("ns1/ghost-1", "metadata.labels[kubernetes.io/service-name]"),
    ] {
        assert!(
            fields.contains(&(kind, obj.to_string(), field.to_string())),
            "no warning for {kind} {obj} {field}; got {:#?}",
            g.warnings
        );
    }
}

#[test]
fn schema_mismatch_skips_only_that_object() {
    let bad = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "broken", "namespace": "ns1"},
        "spec": {"ports": "not a list"}});
    let good = svc("ns1", "svc1", unnamed_cluster_ip("172.30.1.1", json!({})));
    let g = graph_of(vec![bad, good, node(None)], &cfg());
    assert_eq!(g.family(IpFamily::V4).unwrap().services.len(), 1);
    assert!(
        g.warnings
            .iter()
            .any(|w| w.object == "ns1/broken" && w.reason.contains("Service schema"))
    );
}

#[test]
fn headless_external_name_and_other_proxies_are_not_proxied() {
    let headless = svc(
        "ns1",
        "headless",
        json!({"clusterIP": "None", "ports": [{"port": 80}]}),
    );
    let ext = svc(
        "ns1",
        "ext",
        json!({"type": "ExternalName", "externalName": "example.com"}),
    );
    let mut other = svc("ns1", "other", unnamed_cluster_ip("172.30.1.3", json!({})));
    other["metadata"]["labels"] =
        json!({"service.kubernetes.io/service-proxy-name": "other-proxy"});
    let mut ours = svc("ns1", "ours", unnamed_cluster_ip("172.30.1.4", json!({})));
    ours["metadata"]["labels"] = json!({"service.kubernetes.io/service-proxy-name": "kproxy"});
    let values = vec![
        headless,
        ext,
        other,
        ours,
        slice("ns1", "headless", &[ready("10.0.0.9", None)]),
        node(None),
    ];

    let g = graph_of(values.clone(), &cfg());
    assert!(g.family(IpFamily::V4).unwrap().services.is_empty());
    assert!(
        g.warnings.is_empty(),
        "slices of unproxied Services are not orphans: {:?}",
        g.warnings
    );

    let mut c = cfg();
    c.proxy_name = Some("kproxy".into());
    let g = graph_of(values, &c);
    assert_eq!(
        names(g.family(IpFamily::V4).unwrap().services.keys()),
        ["ours"]
    );
}

// === dual-stack ===

#[test]
fn dual_stack_service_has_a_port_per_family() {
    let s = svc(
        "ds",
        "web",
        json!({"clusterIP": "172.30.0.51", "clusterIPs": ["172.30.0.51", "fd00:172:30::51"],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
    );
    let mut v4 = slice("ds", "web", &[ready("10.180.0.1", Some(NODE))]);
    v4["ports"][0]["name"] = json!("http");
    let mut v6 = slice("ds", "web", &[ready("fd00:10:180::1", Some("node2"))]);
    v6["ports"][0]["name"] = json!("http");
    v6["addressType"] = json!("IPv6");
    v6["metadata"]["name"] = json!("web-v6");
    let mut c = cfg();
    c.cluster_cidrs.push("fd00:10::/32".parse().unwrap());
    let g = graph_of(vec![s, v4, v6, node(None)], &c);
    let p4 = first_port(&g, IpFamily::V4);
    let p6 = first_port(&g, IpFamily::V6);
    assert_eq!(p4.cluster_ip.to_string(), "172.30.0.51");
    assert_eq!(p6.cluster_ip.to_string(), "fd00:172:30::51");
    assert_eq!(ips(&p4.cluster_endpoints), ["10.180.0.1"]);
    assert_eq!(ips(&p6.cluster_endpoints), ["fd00:10:180::1"]);
    assert_eq!(p6.cluster_endpoints[0].addr_string(), "[fd00:10:180::1]:80");
    assert_eq!(
        g.family(IpFamily::V6).unwrap().local_traffic,
        LocalTraffic::Cidr("fd00:10::/32".parse().unwrap())
    );
    assert_eq!(
        g.family(IpFamily::V6).unwrap().node_ips,
        vec!["2001:db8::1".parse::<IpAddr>().unwrap()]
    );
}

// === endpoint conditions and duplicates ===

#[test]
fn nil_conditions_and_duplicates_across_slices() {
    let s = svc("ns1", "svc1", unnamed_cluster_ip("172.30.1.1", json!({})));
    // nil ready -> ready; nil serving follows ready; nil terminating -> false.
    let a = slice(
        "ns1",
        "svc1",
        &[
            ("10.0.0.1", None, None, None, None),
            ("10.0.0.2", None, Some(false), None, Some(true)),
        ],
    );
    // The same address again in a second slice, ready this time.
    let mut b = slice("ns1", "svc1", &[ready("10.0.0.2", Some(NODE))]);
    b["metadata"]["name"] = json!("svc1-2");
    let g = graph_of(vec![s, a, b, node(None)], &cfg());
    let sp = port(&g, "ns1", "svc1");
    assert_eq!(sp.endpoints.len(), 2, "de-duplicated across slices");
    assert!(sp.endpoints[0].ready && sp.endpoints[0].serving && !sp.endpoints[0].terminating);
    assert!(
        sp.endpoints[1].ready,
        "the ready duplicate wins over the not-ready one"
    );
    assert!(sp.endpoints[1].is_local);
}

#[test]
fn endpoints_sort_as_kube_proxy_sorts_them() {
    let s = svc("ns1", "svc1", unnamed_cluster_ip("172.30.1.1", json!({})));
    let sl = slice(
        "ns1",
        "svc1",
        &[
            ready("10.0.0.10", None),
            ready("10.0.0.9", None),
            ready("10.0.0.1", None),
        ],
    );
    let g = graph_of(vec![s, sl, node(None)], &cfg());
    // By "ip:port" text, as upstream: "10.0.0.10:80" < "10.0.0.1:80"
    // (':' sorts after '0') < "10.0.0.9:80".
    assert_eq!(
        ips(&port(&g, "ns1", "svc1").cluster_endpoints),
        ["10.0.0.10", "10.0.0.1", "10.0.0.9"]
    );
}

// === NodePort addresses ===

#[test]
fn nodeport_addresses_per_mode() {
    let g = graph_of(vec![node(None)], &cfg());
    assert_eq!(
        g.family(IpFamily::V4).unwrap().nodeport_ips,
        NodePortIps::All
    );
    assert!(g.family(IpFamily::V4).unwrap().localhost_nodeports);
    assert!(
        !g.family(IpFamily::V6).unwrap().localhost_nodeports,
        "::1 never works"
    );

    let mut c = cfg();
    c.mode = ProxyMode::Nftables;
    let g = graph_of(vec![node(None)], &c);
    assert_eq!(
        g.family(IpFamily::V4).unwrap().nodeport_ips,
        NodePortIps::Only(vec!["192.168.0.2".parse().unwrap()])
    );
    assert!(!g.family(IpFamily::V4).unwrap().localhost_nodeports);

    let mut c = cfg();
    c.nodeport_addresses = vec![
        NodePortAddress::Cidr("192.168.0.0/24".parse().unwrap()),
        NodePortAddress::Cidr("127.0.0.1/32".parse().unwrap()),
    ];
    let g = graph_of(vec![node(None)], &c);
    assert_eq!(
        g.family(IpFamily::V4).unwrap().nodeport_ips,
        NodePortIps::Only(vec!["192.168.0.2".parse().unwrap()])
    );
    assert!(g.family(IpFamily::V4).unwrap().localhost_nodeports);
    // No IPv6 entry: every IPv6 address, as kube-proxy's
    // `NewNodePortAddresses` (::/0 even when IPv4 has entries).
    assert_eq!(
        g.family(IpFamily::V6).unwrap().nodeport_ips,
        NodePortIps::All
    );
    c.localhost_nodeports = false;
    let g = graph_of(vec![node(None)], &c);
    assert!(!g.family(IpFamily::V4).unwrap().localhost_nodeports);
}

// === external traffic policy / source ranges / ipMode ===

#[test]
fn external_policy_and_firewall_decisions() {
    let mut s = svc(
        "ns5",
        "svc5",
        json!({"type": "LoadBalancer", "clusterIP": "172.30.0.45", "clusterIPs": ["172.30.0.45"],
        "loadBalancerSourceRanges": ["203.0.113.0/25"],
        "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3005}]}),
    );
    s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}, {"ip": "9.9.9.9", "ipMode": "Proxy"}]}});
    let mut sl = slice("ns5", "svc5", &[ready("10.180.0.5", Some("node2"))]);
    sl["ports"][0]["name"] = json!("p80");
    let g = graph_of(vec![s.clone(), sl, node(None)], &cfg());
    let sp = port(&g, "ns5", "svc5");
    assert!(sp.decisions.source_ranges_apply);
    assert!(sp.decisions.uses_external_chain);
    assert_eq!(
        sp.vip_load_balancer_ips()
            .map(|i| i.to_string())
            .collect::<Vec<_>>(),
        ["5.6.7.8"]
    );

    // A ClusterIP-type Service is not externally accessible: eTP ignored.
    let s2 = svc(
        "ns1",
        "svc2",
        unnamed_cluster_ip("172.30.1.2", json!({"externalTrafficPolicy": "Local"})),
    );
    let g = graph_of(
        vec![
            s2,
            slice("ns1", "svc2", &[ready("10.0.0.1", Some("node2"))]),
            node(None),
        ],
        &cfg(),
    );
    let sp = port(&g, "ns1", "svc2");
    assert_eq!(sp.external_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(sp.decisions.external_verdict, None);
    assert!(!sp.decisions.uses_external_chain);
}

// === change tracking ===

#[test]
fn change_tracking_names_only_what_changed() {
    let base = |ep2: &str| {
        vec![
            svc("ns1", "a", unnamed_cluster_ip("172.30.1.1", json!({}))),
            slice("ns1", "a", &[ready("10.0.0.1", None)]),
            svc("ns1", "b", unnamed_cluster_ip("172.30.1.2", json!({}))),
            slice("ns1", "b", &[ready(ep2, None)]),
            node(Some("zone-a")),
        ]
    };
    let g1 = graph_of(base("10.0.0.2"), &cfg());
    let g2 = graph_of(base("10.0.0.3"), &cfg());
    let c = ChangeSet::between(&g1, &g2);
    let v4 = c.family(IpFamily::V4);
    assert!(!c.needs_full_sync);
    assert!(v4.added.is_empty() && v4.removed.is_empty());
    assert_eq!(names(&v4.changed), ["b"]);
    assert!(ChangeSet::between(&g1, &g1.clone()).is_empty());

    // add and remove
    let mut vals = base("10.0.0.2");
    vals.remove(2);
    vals.remove(2);
    vals.push(svc("ns1", "c", unnamed_cluster_ip("172.30.1.3", json!({}))));
    let g3 = graph_of(vals, &cfg());
    let v4 = ChangeSet::between(&g1, &g3).family(IpFamily::V4);
    assert_eq!(names(&v4.added), ["c"]);
    assert_eq!(names(&v4.removed), ["b"]);

    // a node topology label change forces a full sync
    let mut vals = base("10.0.0.2");
    vals[4] = node(Some("zone-b"));
    let g4 = graph_of(vals, &cfg());
    assert!(ChangeSet::between(&g1, &g4).needs_full_sync);
}

// === intake from text ===

#[test]
fn yaml_lists_and_multi_documents() {
    let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a, namespace: ns1}
  spec: {clusterIP: 172.30.1.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: b, namespace: ns1}
  spec: {clusterIP: 172.30.1.2, ports: [{port: 80}]}
---
{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c", "namespace": "ns1"}, "spec": {"clusterIP": "172.30.1.3", "ports": [{"port": 80}]}}
"#;
    let (o, w) = Objects::from_yaml("t.yaml", text).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(o.services.len(), 3);
    let err = Objects::from_yaml("broken.yaml", "kind: Service\n  bad: [indent\n").unwrap_err();
    assert!(
        err.to_string().starts_with("broken.yaml: document 1:"),
        "{err}"
    );
}

#[test]
fn seed_fixture_text() {
    let text = include_str!("../../../testdata/fixtures/seed.yaml");
    let (o, w) = Objects::from_yaml("seed.yaml", text).unwrap();
    assert!(w.is_empty());
    let mut c = cfg();
    c.node_name = "node-01".into();
    let g = ServiceGraph::build(&o, &c);
    let sp = port(&g, "web", "web-service");
    assert_eq!(sp.name.to_string(), "web/web-service");
    assert_eq!(sp.cluster_ip.to_string(), "10.107.33.105");
    assert_eq!(sp.node_port, Some(30007));
    assert_eq!(ips(&sp.cluster_endpoints), ["10.244.1.5", "10.244.2.4"]);
    assert!(sp.local_endpoints.is_empty());
    assert!(sp.decisions.uses_external_chain && sp.decisions.uses_cluster_chain);
    assert_eq!(g.node.ips, vec!["192.168.49.2".parse::<IpAddr>().unwrap()]);
}

#[test]
fn local_policies_everywhere_still_use_cluster_endpoints_for_short_circuits() {
    // iTP=Local and eTP=Local on a LoadBalancer: external traffic from pods
    // and the node short-circuits to the cluster endpoints, so the cluster
    // set is computed (upstream UsesClusterEndpoints).
    let s = with_lb_status(
        svc(
            "ns1",
            "svc1",
            lb_local(json!({"internalTrafficPolicy": "Local"})),
        ),
        "1.2.3.4",
    );
    let g = graph_of(
        vec![
            s,
            slice(
                "ns1",
                "svc1",
                &[
                    ready("10.0.1.1", Some(NODE)),
                    ready("10.0.1.2", Some("node2")),
                ],
            ),
            node(None),
        ],
        &cfg(),
    );
    let sp = port(&g, "ns1", "svc1");
    assert_eq!(ips(&sp.cluster_endpoints), ["10.0.1.1", "10.0.1.2"]);
    assert_eq!(ips(&sp.local_endpoints), ["10.0.1.1"]);
    assert!(sp.decisions.uses_cluster_chain && sp.decisions.uses_local_chain);
    assert_eq!(sp.decisions.internal_policy_chain, TrafficPolicy::Local);
    assert_eq!(sp.decisions.external_policy_chain, TrafficPolicy::Local);
}

/// What `kubectl get servicecidrs -o yaml` prints (trimmed): a ServiceCIDR
/// the API server made, one added later, and one being deleted.
const SERVICE_CIDRS_YAML: &str = r#"apiVersion: v1
items:
- apiVersion: networking.k8s.io/v1
  kind: ServiceCIDR
  metadata:
    creationTimestamp: "2026-11-01T10:00:00Z"
    finalizers: [networking.k8s.io/service-cidr-finalizer]
    name: kubernetes
    resourceVersion: "197"
    uid: 3d6fa37b-5e2d-4b43-a4c9-0f1fbc64b6a1
  spec:
    cidrs: [10.96.0.0/16, fd00:10:96::/112]
  status:
    conditions:
    - lastTransitionTime: "2026-11-01T10:00:00Z"
      message: Kubernetes Service CIDR is ready
      reason: ""
      status: "True"
      type: Ready
- apiVersion: networking.k8s.io/v1
  kind: ServiceCIDR
  metadata:
    name: extra
  spec:
    cidrs: [10.100.0.0/16, not-a-cidr]
- apiVersion: networking.k8s.io/v1
  kind: ServiceCIDR
  metadata:
    deletionTimestamp: "2026-11-02T10:00:00Z"
    finalizers: [networking.k8s.io/service-cidr-finalizer]
    name: leaving
  spec:
    cidrs: [10.200.0.0/24]
  status:
    conditions:
    - lastTransitionTime: "2026-11-02T10:00:00Z"
      message: There are still IPAddresses referencing the ServiceCIDR
      reason: OrphanIPAddress
      status: "False"
      type: Ready
kind: List
metadata:
  resourceVersion: ""
"#;

fn family_cidrs(g: &ServiceGraph, f: IpFamily) -> Vec<String> {
    g.family(f)
        .map(|fg| fg.service_cidrs.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

/// ServiceCIDR objects give each family its service CIDRs: every
/// `spec.cidrs` entry, whatever the status or a pending deletion says
/// (kube-proxy's ServiceCIDRConfig reads the spec of every object its
/// informer holds), united with the configured ones, split by family.
#[test]
fn service_cidrs_from_objects_yaml_and_json() {
    let (objects, warnings) = Objects::from_yaml("cidrs.yaml", SERVICE_CIDRS_YAML).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(objects.service_cidrs.len(), 3);
    let mut config = cfg();
    config.service_cidrs = vec![
        "10.96.0.0/16".parse().unwrap(),
        "172.30.0.0/16".parse().unwrap(),
    ];
    let g = ServiceGraph::build(&objects, &config);
    assert_eq!(
        family_cidrs(&g, IpFamily::V4),
        [
            "10.96.0.0/16",
            "10.100.0.0/16",
            "10.200.0.0/24",
            "172.30.0.0/16"
        ]
    );
    assert_eq!(family_cidrs(&g, IpFamily::V6), ["fd00:10:96::/112"]);
    let bad: Vec<String> = g.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        bad,
        [r#"ServiceCIDR extra: spec.cidrs[1]: "not-a-cidr" is not a CIDR, ignored"#]
    );

    // The same objects as kubectl's JSON (a ServiceCIDRList whose items
    // carry no kind), and a single object.
    let json = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDRList",
        "items": [
            {"metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16", "fd00:10:96::/112"]}},
            {"metadata": {"name": "extra"}, "spec": {"cidrs": ["10.100.0.0/16"]}},
        ]
    })
    .to_string();
    let (objects, warnings) = Objects::from_yaml("cidrs.json", &json).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let g = ServiceGraph::build(&objects, &cfg());
    assert_eq!(
        family_cidrs(&g, IpFamily::V4),
        ["10.96.0.0/16", "10.100.0.0/16"]
    );
    assert_eq!(family_cidrs(&g, IpFamily::V6), ["fd00:10:96::/112"]);
    let single = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "only"}, "spec": {"cidrs": ["fd00:1::/64"]}}"#;
    let (objects, _) = Objects::from_yaml("one.json", single).unwrap();
    let g = ServiceGraph::build(&objects, &cfg());
    assert!(family_cidrs(&g, IpFamily::V4).is_empty());
    assert_eq!(family_cidrs(&g, IpFamily::V6), ["fd00:1::/64"]);

    // A ServiceCIDR that does not match the schema is skipped, named.
    let (objects, warnings) = Objects::from_yaml(
        "bad.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: broken}\nspec: {cidrs: 7}\n",
    )
    .unwrap();
    assert!(objects.service_cidrs.is_empty());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].kind, ObjectKind::ServiceCidr);
    assert_eq!(warnings[0].object, "broken");
}

/// A change of the service CIDRs alone is no reason for a full sync; the
/// change set says it.
#[test]
fn service_cidr_changes_need_no_full_sync() {
    let (objects, _) = Objects::from_yaml("cidrs.yaml", SERVICE_CIDRS_YAML).unwrap();
    let g1 = ServiceGraph::build(&Objects::default(), &cfg());
    let g2 = ServiceGraph::build(&objects, &cfg());
    let c = ChangeSet::between(&g1, &g2);
    assert!(
        c.service_cidrs_changed && !c.needs_full_sync && !c.is_empty(),
        "{c:?}"
    );
    let c = ChangeSet::between(&g2, &g2.clone());
    assert!(!c.service_cidrs_changed && c.is_empty(), "{c:?}");
}
