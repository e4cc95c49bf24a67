//! A mixed synthetic cluster as YAML, for tests of the paths that only
//! large inputs take (the graph build and the nftables generation split
//! their work across two threads from 512 items).

use std::fmt::Write;

/// The node the cluster's local endpoints are on.
pub const MIXED_NODE: &str = "test-node";

/// `n` Services `default/s<i>` of four kinds in turn (ClusterIP with
/// ClientIP affinity, NodePort, LoadBalancer with
/// `externalTrafficPolicy: Local`, plain ClusterIP), each with one
/// EndpointSlice of two endpoints, one on [`MIXED_NODE`] and one on
/// `node-2`; and the Node itself. Addresses: ClusterIP `10.96.x.y`,
/// endpoints `10.1.x.y` and `10.2.x.y`, LoadBalancer `203.0.x.y`, with
/// x.y = i/250 . i%250+1.
pub fn mixed_cluster_yaml(n: u32) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {MIXED_NODE}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: 192.168.0.2\n"
    );
    for i in 0..n {
        let (a, b) = (i / 250, i % 250 + 1);
        let (node_port, hc) = (30000 + i % 2000, 32000 + i % 700);
        let (kind, port_extra, spec_extra, status) = match i % 4 {
            0 => (
                "ClusterIP",
                String::new(),
                "  sessionAffinity: ClientIP\n".to_string(),
                String::new(),
            ),
            1 => (
                "NodePort",
                format!("    nodePort: {node_port}\n"),
                String::new(),
                String::new(),
            ),
            2 => (
                "LoadBalancer",
                format!("    nodePort: {node_port}\n"),
                format!("  externalTrafficPolicy: Local\n  healthCheckNodePort: {hc}\n"),
                format!("status:\n  loadBalancer:\n    ingress:\n    - ip: 203.0.{a}.{b}\n"),
            ),
            _ => ("ClusterIP", String::new(), String::new(), String::new()),
        };
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  namespace: default\n  name: s{i}\nspec:\n  type: {kind}\n  clusterIP: 10.96.{a}.{b}\n{spec_extra}  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n    targetPort: 8080\n{port_extra}{status}"
        );
        let _ = write!(
            y,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  namespace: default\n  name: s{i}-a\n  labels:\n    kubernetes.io/service-name: s{i}\naddressType: IPv4\nports:\n- name: http\n  port: 8080\n  protocol: TCP\nendpoints:\n- addresses: [10.1.{a}.{b}]\n  nodeName: {MIXED_NODE}\n- addresses: [10.2.{a}.{b}]\n  nodeName: node-2\n"
        );
    }
    y
}

/// The graph of [`mixed_cluster_yaml`]`(n)` as seen from [`MIXED_NODE`],
/// with the default configuration otherwise.
pub fn mixed_graph(n: u32) -> kproxy_graph::ServiceGraph {
    let (objects, warnings) = kproxy_graph::Objects::from_yaml("mixed", &mixed_cluster_yaml(n))
        .expect("the mixed cluster reads");
    assert!(warnings.is_empty(), "{warnings:?}");
    let config = kproxy_graph::ProxyConfig {
        node_name: MIXED_NODE.into(),
        ..kproxy_graph::ProxyConfig::default()
    };
    kproxy_graph::ServiceGraph::build(&objects, &config)
}
