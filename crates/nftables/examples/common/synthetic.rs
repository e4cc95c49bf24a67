//! A synthetic cluster built in code (no Kubernetes objects): `n` ClusterIP
//! services with `e` endpoints each, for the benchmark.

use std::net::{IpAddr, Ipv4Addr};

use kproxy_graph::{
    Endpoint, FamilyGraph, IpFamily, LocalTraffic, NodeInfo, NodePortIps, Protocol, ProxyConfig,
    ProxyMode, ServiceGraph, ServicePort, ServicePortBuilder, ServicePortName,
};

/// This node's name.
pub const NODE: &str = "node-0";

fn v4(base: [u8; 4], offset: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) + offset))
}

/// Endpoint `j` of service `i` (unique per cluster, `salt` shifts it).
pub fn endpoint(i: usize, j: usize, e: usize, salt: u32) -> Endpoint {
    Endpoint::new(v4([10, 0, 0, 1], (i * e + j) as u32 + salt), 8080).on_node("node-1")
}

/// Service port `i` with endpoints `eps`.
pub fn service_port(i: usize, eps: Vec<Endpoint>) -> ServicePortBuilder {
    ServicePort::builder(
        ServicePortName::new("bench", format!("svc-{i}"), "http", Protocol::Tcp),
        v4([172, 16, 0, 1], i as u32),
        80,
    )
    .endpoints(eps)
}

/// The graph: `n` services × `e` endpoints, IPv4 only.
pub fn graph(n: usize, e: usize) -> ServiceGraph {
    let mut fg = FamilyGraph::empty(IpFamily::V4);
    fg.node_ips = vec!["192.168.0.2".parse().expect("ip")];
    fg.local_traffic = LocalTraffic::Cidr("10.0.0.0/8".parse().expect("cidr"));
    fg.nodeport_ips = NodePortIps::Only(fg.node_ips.clone());
    fg.service_cidrs = vec!["172.16.0.0/12".parse().expect("cidr")];
    let config = ProxyConfig {
        node_name: NODE.into(),
        mode: ProxyMode::Nftables,
        families: vec![IpFamily::V4],
        cluster_cidrs: vec!["10.0.0.0/8".parse().expect("cidr")],
        ..ProxyConfig::default()
    };
    let node = NodeInfo {
        ips: fg.node_ips.clone(),
        primary_ips: fg.node_ips.clone(),
        ..NodeInfo::named(NODE)
    };
    let mut b = ServiceGraph::builder(config, node).family(fg);
    for i in 0..n {
        b = b.service(service_port(
            i,
            (0..e).map(|j| endpoint(i, j, e, 0)).collect(),
        ));
    }
    b.build().expect("a consistent synthetic graph")
}

/// `g` with endpoint 0 of service `i` replaced (a new pod IP).
pub fn change_one_endpoint(g: &ServiceGraph, i: usize, e: usize, salt: u32) -> ServiceGraph {
    let mut g = g.clone();
    let mut eps: Vec<Endpoint> = (1..e).map(|j| endpoint(i, j, e, 0)).collect();
    eps.push(endpoint(i, 0, e, 20_000_000 + salt));
    g.upsert_service(service_port(i, eps))
        .expect("a consistent synthetic service");
    g
}
