//! A synthetic cluster built in code (no Kubernetes objects): `n` ClusterIP
//! services with `e` endpoints each, for the benchmark.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use kproxy_graph::changes::fingerprint;
use kproxy_graph::select::{select, sort_endpoints};
use kproxy_graph::{
    Endpoint, FamilyGraph, IpFamily, LocalTraffic, NodeInfo, NodePortIps, Protocol, ProxyConfig,
    ProxyMode, ServiceGraph, ServicePort, ServicePortName, TrafficPolicy,
};

/// This node's name.
pub const NODE: &str = "node-0";

fn v4(base: [u8; 4], offset: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) + offset))
}

/// Endpoint `j` of service `i` (unique per cluster, `salt` shifts it).
pub fn endpoint(i: usize, j: usize, e: usize, salt: u32) -> Endpoint {
    Endpoint {
        ip: v4([10, 0, 0, 1], (i * e + j) as u32 + salt),
        port: 8080,
        node_name: Some("node-1".into()),
        zone: None,
        ready: true,
        serving: true,
        terminating: false,
        zone_hints: None,
        node_hints: None,
        is_local: false,
    }
}

/// Service port `i` with endpoints `eps`, decisions made by the graph crate.
pub fn service_port(i: usize, eps: Vec<Endpoint>) -> ServicePort {
    // The graph shares endpoints between its lists.
    let mut eps: Vec<std::sync::Arc<Endpoint>> = eps.into_iter().map(std::sync::Arc::new).collect();
    sort_endpoints(&mut eps);
    let mut sp = ServicePort {
        name: ServicePortName {
            namespace: "bench".into(),
            name: format!("svc-{i}"),
            port: "http".into(),
            protocol: Protocol::Tcp,
        },
        port: 80,
        cluster_ip: v4([172, 16, 0, 1], i as u32),
        external_ips: vec![],
        load_balancer_ips: vec![],
        source_ranges: vec![],
        node_port: None,
        health_check_node_port: None,
        session_affinity: None,
        internal_traffic_policy: TrafficPolicy::Cluster,
        external_traffic_policy: TrafficPolicy::Cluster,
        traffic_distribution: None,
        endpoints: eps,
        cluster_endpoints: vec![],
        local_endpoints: vec![],
        reachable_endpoints: vec![],
        decisions: Default::default(),
        ready_local_endpoints: 0,
    };
    select(&mut sp, NODE, None);
    sp
}

/// The graph: `n` services × `e` endpoints, IPv4 only.
pub fn graph(n: usize, e: usize) -> ServiceGraph {
    let mut fg = FamilyGraph::empty(IpFamily::V4);
    fg.node_ips = vec!["192.168.0.2".parse().expect("ip")];
    fg.local_traffic = LocalTraffic::Cidr("10.0.0.0/8".parse().expect("cidr"));
    fg.nodeport_ips = NodePortIps::Only(fg.node_ips.clone());
    fg.service_cidrs = vec!["172.16.0.0/12".parse().expect("cidr")];
    for i in 0..n {
        let sp = service_port(i, (0..e).map(|j| endpoint(i, j, e, 0)).collect());
        fg.fingerprints.insert(sp.name.clone(), fingerprint(&sp));
        fg.services.insert(sp.name.clone(), sp);
    }
    let config = ProxyConfig {
        node_name: NODE.into(),
        mode: ProxyMode::Nftables,
        families: vec![IpFamily::V4],
        cluster_cidrs: vec!["10.0.0.0/8".parse().expect("cidr")],
        ..ProxyConfig::default()
    };
    ServiceGraph {
        node: NodeInfo {
            name: NODE.into(),
            ips: fg.node_ips.clone(),
            primary_ips: fg.node_ips.clone(),
            known: true,
            ..NodeInfo::default()
        },
        config,
        families: BTreeMap::from([(IpFamily::V4, fg)]),
        warnings: vec![],
    }
}

/// `g` with endpoint 0 of service `i` replaced (a new pod IP).
pub fn change_one_endpoint(g: &ServiceGraph, i: usize, e: usize, salt: u32) -> ServiceGraph {
    let mut g = g.clone();
    if let Some(fg) = g.families.get_mut(&IpFamily::V4) {
        let mut eps: Vec<Endpoint> = (1..e).map(|j| endpoint(i, j, e, 0)).collect();
        eps.push(endpoint(i, 0, e, 20_000_000 + salt));
        let sp = service_port(i, eps);
        fg.fingerprints.insert(sp.name.clone(), fingerprint(&sp));
        fg.services.insert(sp.name.clone(), sp);
    }
    g
}
