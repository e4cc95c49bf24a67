//! Embedding kproxy's graph and nftables generator in another controller:
//! build a service graph in code (no Kubernetes objects, no kernel, no
//! async runtime) and print the `nft -f` ruleset kproxy would load.
//!
//! ```text
//! cargo run -p kproxy-nftables --example library
//! ```

use std::collections::BTreeMap;

use kproxy_graph::changes::fingerprint;
use kproxy_graph::select::{select, sort_endpoints};
use kproxy_graph::{
    Endpoint, FamilyGraph, Generator, IpFamily, LocalTraffic, NodeInfo, NodePortIps, Protocol,
    ProxyConfig, ProxyMode, Render, ServiceGraph, ServicePort, ServicePortName, TrafficPolicy,
};
use kproxy_nftables::NftGenerator;

const NODE: &str = "node-a";

/// An endpoint (a pod) on `node`.
fn pod(ip: &str, port: u16, node: &str) -> Endpoint {
    Endpoint {
        ip: ip.parse().expect("literal address"),
        port,
        node_name: Some(node.to_string()),
        zone: None,
        ready: true,
        serving: true,
        terminating: false,
        zone_hints: None,
        node_hints: None,
        is_local: node == NODE,
    }
}

/// A service port; `select` (the graph crate's endpoint selection) fills
/// in the cluster and local endpoint sets and the decisions generators
/// render, exactly as it does for Services read from Kubernetes.
fn service(
    name: &str,
    cluster_ip: &str,
    port: u16,
    node_port: Option<u16>,
    eps: Vec<Endpoint>,
) -> ServicePort {
    // The graph shares endpoints between its lists.
    let mut eps: Vec<std::sync::Arc<Endpoint>> = eps.into_iter().map(std::sync::Arc::new).collect();
    sort_endpoints(&mut eps);
    let mut sp = ServicePort {
        name: ServicePortName {
            namespace: "shop".into(),
            name: name.into(),
            port: "http".into(),
            protocol: Protocol::Tcp,
        },
        port,
        cluster_ip: cluster_ip.parse().expect("literal address"),
        external_ips: vec![],
        load_balancer_ips: vec![],
        source_ranges: vec![],
        node_port,
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

fn main() {
    let mut v4 = FamilyGraph::empty(IpFamily::V4);
    v4.node_ips = vec!["192.168.1.10".parse().expect("literal address")];
    v4.nodeport_ips = NodePortIps::Only(v4.node_ips.clone());
    v4.local_traffic = LocalTraffic::Cidr("10.244.0.0/16".parse().expect("literal CIDR"));
    v4.service_cidrs = vec!["10.96.0.0/12".parse().expect("literal CIDR")];
    for sp in [
        service(
            "frontend",
            "10.96.0.10",
            80,
            Some(30080),
            vec![
                pod("10.244.0.5", 8080, NODE),
                pod("10.244.1.7", 8080, "node-b"),
            ],
        ),
        service(
            "cart",
            "10.96.0.11",
            80,
            None,
            vec![pod("10.244.1.8", 8080, "node-b")],
        ),
        // No endpoints: traffic to it is rejected.
        service("checkout", "10.96.0.12", 80, None, vec![]),
    ] {
        v4.fingerprints.insert(sp.name.clone(), fingerprint(&sp));
        v4.services.insert(sp.name.clone(), sp);
    }
    let graph = ServiceGraph {
        node: NodeInfo {
            name: NODE.into(),
            ips: v4.node_ips.clone(),
            primary_ips: v4.node_ips.clone(),
            known: true,
            ..NodeInfo::default()
        },
        config: ProxyConfig {
            node_name: NODE.into(),
            mode: ProxyMode::Nftables,
            families: vec![IpFamily::V4],
            cluster_cidrs: vec!["10.244.0.0/16".parse().expect("literal CIDR")],
            ..ProxyConfig::default()
        },
        families: BTreeMap::from([(IpFamily::V4, v4)]),
        warnings: vec![],
    };
    match NftGenerator.generate(&graph) {
        Ok(ruleset) => print!("{}", ruleset.render()),
        Err(e) => {
            eprintln!("cannot generate the ruleset: {e}");
            std::process::exit(1);
        }
    }
}
