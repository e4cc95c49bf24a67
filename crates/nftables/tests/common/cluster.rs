//! Build service graphs from generated Kubernetes objects (Services and
//! EndpointSlices as JSON values, through `kproxy_graph::Objects`).

use kproxy_graph::{ChangeSet, Objects, ProxyConfig, ProxyMode, ServiceGraph};
use serde_json::{Value, json};

/// One Service with one port and its endpoints.
#[derive(Debug, Clone)]
pub struct Svc {
    pub ns: String,
    pub name: String,
    pub cluster_ip: String,
    pub port: u16,
    pub port_name: String,
    pub protocol: &'static str,
    pub node_port: Option<u16>,
    pub external_ips: Vec<String>,
    pub lb_ips: Vec<String>,
    pub source_ranges: Vec<String>,
    pub affinity: Option<u32>,
    pub etp_local: bool,
    pub itp_local: bool,
    /// (ip, node name, ready)
    pub endpoints: Vec<(String, String, bool)>,
    pub target_port: u16,
}

impl Svc {
    /// A ClusterIP service with no endpoints.
    pub fn new(ns: &str, name: &str, cluster_ip: &str, port: u16) -> Svc {
        Svc {
            ns: ns.into(),
            name: name.into(),
            cluster_ip: cluster_ip.into(),
            port,
            port_name: String::new(),
            protocol: "TCP",
            node_port: None,
            external_ips: vec![],
            lb_ips: vec![],
            source_ranges: vec![],
            affinity: None,
            etp_local: false,
            itp_local: false,
            endpoints: vec![],
            target_port: port,
        }
    }

    /// Add a ready endpoint on `node`.
    pub fn ep(mut self, ip: &str, node: &str) -> Svc {
        self.endpoints.push((ip.into(), node.into(), true));
        self
    }

    fn service_type(&self) -> &'static str {
        if !self.lb_ips.is_empty() {
            "LoadBalancer"
        } else if self.node_port.is_some() {
            "NodePort"
        } else {
            "ClusterIP"
        }
    }

    /// The Service and EndpointSlice objects.
    pub fn objects(&self) -> Vec<Value> {
        let mut port = json!({
            "name": self.port_name, "port": self.port, "protocol": self.protocol,
            "targetPort": self.target_port,
        });
        if let Some(np) = self.node_port {
            port["nodePort"] = json!(np);
        }
        let family = if self.cluster_ip.contains(':') {
            "IPv6"
        } else {
            "IPv4"
        };
        let mut spec = json!({
            "type": self.service_type(),
            "clusterIP": self.cluster_ip,
            "clusterIPs": [self.cluster_ip],
            "ipFamilies": [family],
            "ports": [port],
            "externalIPs": self.external_ips,
            "loadBalancerSourceRanges": self.source_ranges,
            "internalTrafficPolicy": if self.itp_local { "Local" } else { "Cluster" },
        });
        if self.service_type() != "ClusterIP" {
            spec["externalTrafficPolicy"] = json!(if self.etp_local { "Local" } else { "Cluster" });
            if self.etp_local && self.service_type() == "LoadBalancer" {
                spec["healthCheckNodePort"] = json!(32000);
            }
        }
        if let Some(t) = self.affinity {
            spec["sessionAffinity"] = json!("ClientIP");
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": t}});
        }
        let ingress: Vec<Value> = self.lb_ips.iter().map(|ip| json!({"ip": ip})).collect();
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": self.name, "namespace": self.ns},
            "spec": spec,
            "status": {"loadBalancer": {"ingress": ingress}},
        });
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .map(|(ip, node, ready)| {
                json!({
                    "addresses": [ip],
                    "conditions": {"ready": ready, "serving": ready, "terminating": false},
                    "nodeName": node,
                })
            })
            .collect();
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "addressType": family,
            "metadata": {
                "name": format!("{}-abcde", self.name), "namespace": self.ns,
                "labels": {"kubernetes.io/service-name": self.name},
            },
            "ports": [{"name": self.port_name, "port": self.target_port, "protocol": self.protocol}],
            "endpoints": endpoints,
        });
        vec![svc, slice]
    }
}

/// The node every test graph is built for, with its Node object.
pub fn node_object() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "test-node", "labels": {"kubernetes.io/hostname": "test-node"}},
        "spec": {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24"]},
        "status": {"addresses": [
            {"address": "192.168.0.2", "type": "InternalIP"},
            {"address": "fd00::2", "type": "InternalIP"},
        ]},
    })
}

/// The configuration of test graphs (nftables mode, kube-proxy's test conventions).
pub fn config() -> ProxyConfig {
    ProxyConfig {
        node_name: "test-node".into(),
        mode: ProxyMode::Nftables,
        cluster_cidrs: vec![
            "10.0.0.0/8".parse().expect("cidr"),
            "fd00:10::/64".parse().expect("cidr"),
        ],
        service_cidrs: vec![
            "172.30.0.0/16".parse().expect("cidr"),
            "fd00:30::/108".parse().expect("cidr"),
        ],
        ..ProxyConfig::default()
    }
}

/// Build the graph of `services` on `test-node`.
pub fn graph(services: &[Svc]) -> ServiceGraph {
    let mut objects = Objects::default();
    let mut warnings = Vec::new();
    objects.add_value(node_object(), &mut warnings);
    for s in services {
        for o in s.objects() {
            objects.add_value(o, &mut warnings);
        }
    }
    ServiceGraph::build(&objects, &config())
}

/// The changes from `prev` to `next`.
pub fn changes(prev: &ServiceGraph, next: &ServiceGraph) -> ChangeSet {
    ChangeSet::between(prev, next)
}

/// `n` Services `ns/s<i>` on port 80, ClusterIPs `<svc_net>.x.y`, each with
/// two endpoints, `<ep_nets[0]>.x.y` on node-2 and `<ep_nets[1]>.x.y` on
/// node-3 (x.y: i/250 and i%250+1).
pub fn bulk(n: usize, ns: &str, svc_net: &str, ep_nets: [&str; 2]) -> Vec<Svc> {
    (0..n)
        .map(|i| {
            let host = format!("{}.{}", i / 250, i % 250 + 1);
            Svc::new(ns, &format!("s{i}"), &format!("{svc_net}.{host}"), 80)
                .ep(&format!("{}.{host}", ep_nets[0]), "node-2")
                .ep(&format!("{}.{host}", ep_nets[1]), "node-3")
        })
        .collect()
}
