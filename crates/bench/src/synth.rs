//! The synthetic cluster: N Services with M endpoints each, spread over
//! nodes and zones, generated from a seed so every run sees the same
//! cluster.
//!
//! The mix follows what large clusters look like: mostly ClusterIP
//! Services, some NodePort and LoadBalancer ones (NodePorts come from the
//! real 30000-32767 range, so once it is used up further external
//! Services become ClusterIP, as they would have to in a real cluster), a
//! few with ClientIP affinity, Local traffic policies, several ports or
//! UDP. The cluster is kept as [`Objects`] (typed Kubernetes objects, what
//! the daemon builds its graph from) and can be written as the YAML
//! `kproxy run --source` reads.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_graph::{IpFamily, Objects, ProxyConfig, ProxyMode, ServiceGraph};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt as _, SeedableRng as _};
use serde_json::{Value, json};

/// The node the bench programs (endpoints on it are local).
pub const NODE_NAME: &str = "bench-node";
/// That node's InternalIP; the data-plane bench gives it to the node
/// namespace's veth.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// The pod network.
pub const CLUSTER_CIDR: &str = "10.0.0.0/8";
/// The Service network ClusterIPs are allocated from.
pub const SERVICE_CIDR: &str = "172.16.0.0/12";

/// The `kproxy run` flags of every benchmarked daemon: the synthetic
/// cluster's node and CIDRs, IPv4 only, no listeners, and none of the
/// side work (cleanup of other modes, conntrack, health-check NodePorts)
/// that would blur the measured sync.
pub const DAEMON_FLAGS: [&str; 15] = [
    "--node-name",
    NODE_NAME,
    "--cluster-cidr",
    CLUSTER_CIDR,
    "--service-cidr",
    SERVICE_CIDR,
    "--ip-families",
    "ipv4",
    "--healthz-bind-address",
    "",
    "--metrics-bind-address",
    "",
    "--no-cleanup-other-modes",
    "--no-conntrack-cleanup",
    "--no-health-check-node-ports",
];

/// `kproxy run --backend BACKEND --source SOURCE` with [`DAEMON_FLAGS`]:
/// the argv of a benchmarked daemon.
pub fn daemon_argv(kproxy: &Path, backend: &str, source: &Path) -> Vec<String> {
    let mut argv = vec![
        kproxy.to_string_lossy().into_owned(),
        "run".into(),
        "--backend".into(),
        backend.into(),
        "--source".into(),
        source.to_string_lossy().into_owned(),
    ];
    argv.extend(DAEMON_FLAGS.map(String::from));
    argv
}
/// The data-plane target's namespace: sorts after every synthetic
/// namespace, so in iptables' linear `KUBE-SERVICES` walk its rule is the
/// last one (the worst case, and the one that shows growth).
pub const TARGET_NAMESPACE: &str = "zz-bench";
/// The data-plane target Service's name.
pub const TARGET_NAME: &str = "target";
/// The data-plane target's ClusterIP (the last address of the Service
/// network, never handed to a synthetic Service).
pub const TARGET_VIP: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 254);
/// The data-plane target's only endpoint: an address of the node
/// namespace itself, where the bench's listener runs.
pub const TARGET_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 254);
/// The target's port (Service port = target port).
pub const TARGET_PORT: u16 = 8080;

/// Generator parameters.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Number of Services.
    pub services: usize,
    /// Endpoints per Service.
    pub endpoints: usize,
    /// Nodes endpoints are spread over (node 0 is [`NODE_NAME`]).
    pub nodes: usize,
    /// Zones nodes are spread over.
    pub zones: usize,
    /// The seed.
    pub seed: u64,
    /// Percentage of Services with ClientIP affinity (each such endpoint
    /// is a named affinity set in nftables).
    pub affinity_pct: u64,
    /// Every Service of this kind (`ClusterIP`, `NodePort`), one TCP port,
    /// no affinity, Cluster traffic policy: a uniform cluster, for
    /// measuring one shape at scale. `None`: the mix above.
    pub only: Option<&'static str>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            services: 1000,
            endpoints: 10,
            nodes: 100,
            zones: 3,
            seed: 1,
            affinity_pct: 5,
            only: None,
        }
    }
}

impl Params {
    /// The default mix with `services` Services of `endpoints` endpoints.
    pub fn sized(services: usize, endpoints: usize) -> Params {
        Params {
            services,
            endpoints,
            ..Params::default()
        }
    }
}

/// What kind of Service a synthetic one is (for the summary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mix {
    /// ClusterIP Services.
    pub cluster_ip: usize,
    /// NodePort Services.
    pub node_port: usize,
    /// LoadBalancer Services.
    pub load_balancer: usize,
    /// With ClientIP affinity.
    pub affinity: usize,
    /// With a Local traffic policy (internal or external).
    pub local_policy: usize,
    /// With more than one port.
    pub multi_port: usize,
    /// UDP (DNS-like, TCP and UDP port 53).
    pub udp: usize,
    /// Service ports in total.
    pub service_ports: usize,
    /// Endpoints in total (per Service, not per port).
    pub endpoints: usize,
}

/// A synthetic cluster and the counters needed to change it repeatably.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The parameters it was generated with.
    pub params: Params,
    /// The objects (Services, EndpointSlices, this node).
    pub objects: Objects,
    /// What was generated.
    pub mix: Mix,
    /// xoshiro256++ (`rand`, a named algorithm): same seed, same cluster,
    /// byte for byte, on every platform.
    rng: Xoshiro256PlusPlus,
    next_service: usize,
    next_pod_ip: u32,
    next_node_port: u16,
}

fn ip_from(base: Ipv4Addr, offset: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(offset))
}

impl Cluster {
    /// Generate a cluster. Deterministic for a given [`Params`].
    pub fn generate(params: Params) -> anyhow::Result<Cluster> {
        anyhow::ensure!(
            params.services < 900_000,
            "--services {}: the synthetic Service network holds at most 900000 Services",
            params.services
        );
        anyhow::ensure!(
            params.nodes > 0 && params.zones > 0,
            "--nodes and --zones must be positive"
        );
        let mut c = Cluster {
            params,
            objects: Objects::default(),
            mix: Mix::default(),
            rng: Xoshiro256PlusPlus::seed_from_u64(params.seed),
            next_service: 0,
            next_pod_ip: 0,
            next_node_port: 30000,
        };
        c.objects.nodes.push(node_object()?);
        for _ in 0..params.services {
            c.add_service(params.only)?;
        }
        Ok(c)
    }

    /// The configuration every benchmark builds graphs with: this node,
    /// IPv4 only, the synthetic pod and Service networks.
    pub fn proxy_config(mode: ProxyMode) -> anyhow::Result<ProxyConfig> {
        Ok(ProxyConfig {
            node_name: NODE_NAME.to_string(),
            mode,
            families: vec![IpFamily::V4],
            cluster_cidrs: vec![CLUSTER_CIDR.parse().context("cluster CIDR")?],
            service_cidrs: vec![SERVICE_CIDR.parse().context("service CIDR")?],
            ..ProxyConfig::default()
        })
    }

    /// This node's graph for `mode`.
    pub fn graph(&self, mode: ProxyMode) -> anyhow::Result<ServiceGraph> {
        Ok(ServiceGraph::build(
            &self.objects,
            &Self::proxy_config(mode)?,
        ))
    }

    fn pod_ip(&mut self) -> Ipv4Addr {
        // 10.1.0.0 upwards: 16M addresses, far more than any run needs;
        // 10.255.255.254 is the data-plane target's endpoint.
        let ip = ip_from(Ipv4Addr::new(10, 1, 0, 0), self.next_pod_ip);
        self.next_pod_ip += 1;
        ip
    }

    fn node_port(&mut self) -> Option<u16> {
        if self.next_node_port > 32767 {
            return None;
        }
        let p = self.next_node_port;
        self.next_node_port += 1;
        Some(p)
    }

    /// Add one synthetic Service with its EndpointSlices; `kind` forces
    /// `ClusterIP` etc., `None` draws it from the mix. Returns its
    /// namespace and name.
    pub fn add_service(&mut self, kind: Option<&str>) -> anyhow::Result<(String, String)> {
        let i = self.next_service;
        self.next_service += 1;
        let ns = format!("ns-{:03}", i % 200);
        let name = format!("svc-{i:06}");
        // ClusterIPs from 172.16.0.10 on, by index (unique, never the target's).
        let cluster_ip = ip_from(Ipv4Addr::new(172, 16, 0, 10), i as u32);
        let r = &mut self.rng;
        let drawn = match r.random_range(0..100u32) {
            0..=74 => "ClusterIP",
            75..=89 => "NodePort",
            _ => "LoadBalancer",
        };
        let mut kind = kind.unwrap_or(drawn).to_string();
        let udp = kind == "ClusterIP" && self.rng.random_ratio(3, 100);
        let multi = !udp && self.rng.random_ratio(10, 100);
        let affinity = self
            .rng
            .random_ratio(self.params.affinity_pct.min(100) as u32, 100);
        let local = self.rng.random_ratio(5, 100);
        // A uniform cluster draws as the mix does (the same seed gives the
        // same endpoints) but keeps one shape.
        let uniform = self.params.only.is_some();
        let (udp, multi, affinity, local) = (
            udp && !uniform,
            multi && !uniform,
            affinity && !uniform,
            local && !uniform,
        );
        let mut ports: Vec<(String, &str, u16, u16)> = if udp {
            vec![
                ("dns".into(), "UDP", 53, 5353),
                ("dns-tcp".into(), "TCP", 53, 5353),
            ]
        } else if multi {
            vec![
                ("http".into(), "TCP", 80, 8080),
                ("https".into(), "TCP", 443, 8443),
            ]
        } else {
            vec![("http".into(), "TCP", 80, 8080)]
        };
        // External Services need a NodePort per port; fall back to
        // ClusterIP once the range is used up.
        let mut node_ports = Vec::new();
        if kind != "ClusterIP" {
            for _ in &ports {
                match self.node_port() {
                    Some(p) => node_ports.push(p),
                    None => break,
                }
            }
            if node_ports.len() < ports.len() {
                kind = "ClusterIP".into();
                node_ports.clear();
            }
        }
        let mut spec_ports = Vec::new();
        for (k, (pname, proto, port, target)) in ports.iter_mut().enumerate() {
            let mut p =
                json!({"name": pname, "protocol": proto, "port": port, "targetPort": target});
            if let Some(np) = node_ports.get(k) {
                p["nodePort"] = json!(np);
            }
            spec_ports.push(p);
        }
        let mut spec = json!({
            "type": kind,
            "clusterIP": cluster_ip.to_string(),
            "clusterIPs": [cluster_ip.to_string()],
            "ipFamilies": ["IPv4"],
            "ports": spec_ports,
            "sessionAffinity": if affinity { "ClientIP" } else { "None" },
        });
        if affinity {
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 10800}});
        }
        let external = kind != "ClusterIP";
        if local {
            if external {
                spec["externalTrafficPolicy"] = json!("Local");
            } else {
                spec["internalTrafficPolicy"] = json!("Local");
            }
        }
        let mut status = json!({});
        if kind == "LoadBalancer" {
            // 198.18.0.0/15 (benchmarking range): one ingress IP per LB.
            let lb = ip_from(Ipv4Addr::new(198, 18, 0, 0), i as u32);
            status = json!({"loadBalancer": {"ingress": [{"ip": lb.to_string()}]}});
            if local {
                spec["healthCheckNodePort"] = json!(self.node_port().unwrap_or(32767));
            }
        }
        let svc = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{i}")},
            "spec": spec,
            "status": status,
        });
        let svc: Service = serde_json::from_value(svc).context("synthetic Service")?;
        self.objects.services.push(svc);

        let mut endpoints = Vec::new();
        for _ in 0..self.params.endpoints {
            endpoints.push(self.endpoint_value());
        }
        let slice_ports: Vec<Value> = ports
            .iter()
            .map(|(pname, proto, _, target)| json!({"name": pname, "protocol": proto, "port": target}))
            .collect();
        // At most 100 endpoints per slice, as the EndpointSlice controller.
        for (k, chunk) in endpoints.chunks(100).enumerate() {
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{name}-{k:05}"),
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "endpoints": chunk,
                "ports": slice_ports,
            });
            let slice: EndpointSlice =
                serde_json::from_value(slice).context("synthetic EndpointSlice")?;
            self.objects.endpoint_slices.push(slice);
        }

        self.mix.service_ports += ports.len();
        self.mix.endpoints += self.params.endpoints;
        match kind.as_str() {
            "NodePort" => self.mix.node_port += 1,
            "LoadBalancer" => self.mix.load_balancer += 1,
            _ => self.mix.cluster_ip += 1,
        }
        self.mix.affinity += usize::from(affinity);
        self.mix.local_policy += usize::from(local);
        self.mix.multi_port += usize::from(multi);
        self.mix.udp += usize::from(udp);
        Ok((ns, name))
    }

    fn endpoint_value(&mut self) -> Value {
        let ip = self.pod_ip();
        let node = self.rng.random_range(0..self.params.nodes);
        let node_name = if node == 0 {
            NODE_NAME.to_string()
        } else {
            format!("node-{node:04}")
        };
        let zone = format!("zone-{}", node % self.params.zones);
        json!({
            "addresses": [ip.to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": node_name,
            "zone": zone,
        })
    }

    /// The Service at position `index` of the object list (namespace, name).
    pub fn service_name(&self, index: usize) -> Option<(String, String)> {
        let s = self.objects.services.get(index)?;
        Some((
            s.metadata.namespace.clone().unwrap_or_default(),
            s.metadata.name.clone().unwrap_or_default(),
        ))
    }

    /// The EndpointSlices that name Service `ns/name`.
    pub fn slices_of<'a>(
        &'a self,
        ns: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.objects.endpoint_slices.iter().filter(move |s| {
            s.metadata.namespace.as_deref() == Some(ns)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .map(String::as_str)
                    == Some(name)
        })
    }

    /// Replace the first endpoint of the Service at `index` with a new pod
    /// (a rolling update's unit of work). Returns the Service's namespace
    /// and name.
    pub fn change_endpoint(&mut self, index: usize) -> anyhow::Result<(String, String)> {
        let (ns, name) = self
            .service_name(index)
            .with_context(|| format!("no Service at index {index}"))?;
        let new = self.endpoint_value();
        let new: k8s_openapi::api::discovery::v1::Endpoint =
            serde_json::from_value(new).context("synthetic endpoint")?;
        let slice = self
            .objects
            .endpoint_slices
            .iter_mut()
            .find(|s| {
                s.metadata.namespace.as_deref() == Some(ns.as_str())
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        .map(String::as_str)
                        == Some(name.as_str())
            })
            .with_context(|| format!("Service {ns}/{name} has no EndpointSlice"))?;
        match slice.endpoints.first_mut() {
            Some(e) => *e = new,
            None => slice.endpoints.push(new),
        }
        Ok((ns, name))
    }

    /// Remove the Service at `index` and its EndpointSlices.
    pub fn remove_service(&mut self, index: usize) -> anyhow::Result<String> {
        let (ns, name) = self
            .service_name(index)
            .with_context(|| format!("no Service at index {index}"))?;
        self.objects.services.remove(index);
        self.objects.endpoint_slices.retain(|s| {
            !(s.metadata.namespace.as_deref() == Some(ns.as_str())
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .map(String::as_str)
                    == Some(name.as_str()))
        });
        Ok(format!("{ns}/{name}"))
    }

    /// Add the data-plane target: a ClusterIP Service at [`TARGET_VIP`]
    /// whose only endpoint is [`TARGET_ENDPOINT`] on this node.
    pub fn add_target(&mut self) -> anyhow::Result<()> {
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": TARGET_NAME, "namespace": TARGET_NAMESPACE},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": TARGET_VIP.to_string(),
                "clusterIPs": [TARGET_VIP.to_string()],
                "ipFamilies": ["IPv4"],
                "ports": [{"name": "tcp", "protocol": "TCP", "port": TARGET_PORT, "targetPort": TARGET_PORT}],
            },
        });
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "target-0", "namespace": TARGET_NAMESPACE,
                         "labels": {"kubernetes.io/service-name": TARGET_NAME}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [TARGET_ENDPOINT.to_string()],
                           "conditions": {"ready": true}, "nodeName": NODE_NAME}],
            "ports": [{"name": "tcp", "protocol": "TCP", "port": TARGET_PORT}],
        });
        self.objects
            .services
            .push(serde_json::from_value(svc).context("target Service")?);
        self.objects
            .endpoint_slices
            .push(serde_json::from_value(slice).context("target EndpointSlice")?);
        Ok(())
    }

    /// The cluster as one `kind: List` YAML document (what `kubectl get
    /// services,endpointslices,nodes -A -o yaml` prints).
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        let mut items: Vec<Value> = Vec::new();
        for n in &self.objects.nodes {
            items.push(serde_json::to_value(n).context("Node")?);
        }
        for s in &self.objects.services {
            items.push(serde_json::to_value(s).context("Service")?);
        }
        for s in &self.objects.endpoint_slices {
            items.push(serde_json::to_value(s).context("EndpointSlice")?);
        }
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        serde_yaml_ng::to_string(&list).context("writing YAML")
    }
}

fn node_object() -> anyhow::Result<Node> {
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE_NAME, "labels": {
            "kubernetes.io/hostname": NODE_NAME,
            "topology.kubernetes.io/zone": "zone-0",
        }},
        "spec": {"podCIDR": "10.1.0.0/24", "podCIDRs": ["10.1.0.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP.to_string()}]},
    });
    serde_json::from_value(node).context("synthetic Node")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_repeatable_and_builds_a_graph() {
        let p = Params::sized(300, 3);
        let a = Cluster::generate(p).expect("generate");
        let b = Cluster::generate(p).expect("generate");
        assert_eq!(a.to_yaml().expect("yaml"), b.to_yaml().expect("yaml"));
        assert_eq!(
            a.mix.cluster_ip + a.mix.node_port + a.mix.load_balancer,
            300
        );
        assert!(a.mix.node_port > 0 && a.mix.load_balancer > 0 && a.mix.affinity > 0);
        let g = a.graph(ProxyMode::Nftables).expect("graph");
        assert!(g.warnings.is_empty(), "{:?}", g.warnings);
        let fam = g.family(IpFamily::V4).expect("v4");
        assert_eq!(fam.services.len(), a.mix.service_ports);
        assert!(fam.services.values().all(|s| s.endpoints.len() == 3));
    }

    #[test]
    fn mutations_change_exactly_one_service_port_set() {
        let mut c = Cluster::generate(Params::sized(50, 2)).expect("generate");
        let g0 = c.graph(ProxyMode::Nftables).expect("graph");
        c.change_endpoint(7).expect("change");
        let g1 = c.graph(ProxyMode::Nftables).expect("graph");
        let ch = kproxy_graph::ChangeSet::between(&g0, &g1).family(IpFamily::V4);
        assert!(ch.added.is_empty() && ch.removed.is_empty());
        assert!(!ch.changed.is_empty());
        assert!(ch.changed.iter().all(|n| n.name == "svc-000007"));
        c.remove_service(0).expect("remove");
        c.add_service(Some("ClusterIP")).expect("add");
        let g2 = c.graph(ProxyMode::Nftables).expect("graph");
        let ch = kproxy_graph::ChangeSet::between(&g1, &g2).family(IpFamily::V4);
        assert!(ch.removed.iter().all(|n| n.name == "svc-000000") && !ch.removed.is_empty());
        assert!(ch.added.iter().all(|n| n.name == "svc-000050") && !ch.added.is_empty());
    }

    #[test]
    fn nodeports_never_exceed_the_range() {
        let c = Cluster::generate(Params::sized(20_000, 1)).expect("generate");
        assert!(c.next_node_port <= 32768);
        let g = c.graph(ProxyMode::Iptables).expect("graph");
        assert!(
            g.warnings.is_empty(),
            "{:?}",
            &g.warnings[..g.warnings.len().min(3)]
        );
    }
}
