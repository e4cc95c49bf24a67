//! Building a [`ServiceGraph`] in code, without Kubernetes objects.
//!
//! [`ServiceGraph::build`] reads Kubernetes objects; [`ServiceGraph::builder`]
//! takes service ports described field by field ([`ServicePort::builder`])
//! and does what intake does after reading: endpoints sorted and
//! de-duplicated as kube-proxy sorts them, `is_local` from the node name,
//! endpoint selection and its [`Decisions`](crate::Decisions), and the
//! per-service fingerprints change tracking compares. Either way the graph
//! is consistent; a graph assembled field by field may not be.
//!
//! ```
//! use kproxy_graph::{Endpoint, IpFamily, NodeInfo, Protocol, ProxyConfig, ServiceGraph,
//!                    ServicePort, ServicePortName};
//!
//! let config = ProxyConfig { node_name: "node-a".into(), ..ProxyConfig::default() };
//! let web = ServicePortName::new("shop", "web", "http", Protocol::Tcp);
//! let graph = ServiceGraph::builder(config, NodeInfo::named("node-a"))
//!     .service(
//!         ServicePort::builder(web.clone(), "10.96.0.10".parse().unwrap(), 80)
//!             .endpoint(Endpoint::new("10.244.0.5".parse().unwrap(), 8080).on_node("node-a")),
//!     )
//!     .build()
//!     .unwrap();
//! let sp = &graph.family(IpFamily::V4).unwrap().services[&web];
//! assert!(sp.decisions.has_endpoints);
//! assert_eq!(sp.cluster_endpoints.len(), 1);
//! assert!(sp.endpoints[0].is_local);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::changes::fingerprint;
use crate::config::ProxyConfig;
use crate::model::{
    Endpoint, FamilyGraph, Hints, IpFamily, LbIpMode, LoadBalancerIp, NodeInfo, ServiceGraph,
    ServicePort, ServicePortName, ServicePortNameParts, SessionAffinity, TrafficPolicy,
};
use crate::select::{select, sort_endpoints};

/// Why [`ServiceGraphBuilder::build`] refused a service port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The ClusterIP's family is not among the configuration's families.
    #[error("{service}: ClusterIP {ip} is {family}, which the configuration does not enable")]
    FamilyNotEnabled {
        /// The service port.
        service: ServicePortName,
        /// Its ClusterIP.
        ip: IpAddr,
        /// The ClusterIP's family.
        family: IpFamily,
    },
    /// An address or CIDR of another family than the ClusterIP's.
    #[error("{service}: {field} {value} is not {family} like the ClusterIP")]
    WrongFamily {
        /// The service port.
        service: ServicePortName,
        /// The field (`externalIPs`, `endpoints`, ...).
        field: &'static str,
        /// The offending value.
        value: String,
        /// The ClusterIP's family.
        family: IpFamily,
    },
    /// Two service ports with the same name in one family.
    #[error("{0}: added twice")]
    Duplicate(ServicePortName),
}

impl ServicePortName {
    /// `namespace/name`, port name (empty for an unnamed port) and protocol.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        port: impl Into<String>,
        protocol: crate::model::Protocol,
    ) -> Self {
        ServicePortNameParts {
            namespace: namespace.into(),
            name: name.into(),
            port: port.into(),
            protocol,
        }
        .into()
    }
}

impl NodeInfo {
    /// The node's primary address of `family` (the address kube-proxy
    /// calls `nodeIP`), if known.
    pub fn primary_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.primary_ips
            .iter()
            .find(|ip| IpFamily::of(ip) == family)
            .copied()
    }
}

impl Endpoint {
    /// A ready, serving, not terminating endpoint with no node, zone or
    /// hints. Whether it is local is decided when the graph is built.
    pub fn new(ip: IpAddr, port: u16) -> Self {
        Endpoint {
            ip,
            port,
            node_name: None,
            zone: None,
            ready: true,
            serving: true,
            terminating: false,
            hints: None,
            is_local: false,
        }
    }

    /// The endpoint runs on `node`.
    pub fn on_node(mut self, node: impl Into<String>) -> Self {
        self.node_name = Some(Arc::from(node.into()));
        self
    }

    /// The endpoint is in `zone`.
    pub fn in_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(Arc::from(zone.into()));
        self
    }

    /// The endpoint's conditions: ready, serving, terminating.
    pub fn conditions(mut self, ready: bool, serving: bool, terminating: bool) -> Self {
        self.ready = ready;
        self.serving = serving;
        self.terminating = terminating;
        self
    }

    /// Topology hints: the zones (`hints.forZones`) and nodes
    /// (`hints.forNodes`) the endpoint is meant for.
    pub fn hints(mut self, zones: Option<Vec<String>>, nodes: Option<Vec<String>>) -> Self {
        let names = |v: Vec<String>| v.into_iter().map(Arc::from).collect();
        self.hints = Hints::new(zones.map(names), nodes.map(names));
        self
    }
}

impl NodeInfo {
    /// A known node with only a name.
    pub fn named(name: impl Into<String>) -> Self {
        NodeInfo {
            name: name.into(),
            known: true,
            ..NodeInfo::default()
        }
    }
}

/// One service port described field by field; [`ServiceGraphBuilder`]
/// turns it into a [`ServicePort`].
#[derive(Debug, Clone)]
pub struct ServicePortBuilder {
    name: ServicePortName,
    port: u16,
    cluster_ip: IpAddr,
    external_ips: Vec<IpAddr>,
    load_balancer_ips: Vec<LoadBalancerIp>,
    source_ranges: Vec<IpNet>,
    node_port: Option<u16>,
    health_check_node_port: Option<u16>,
    session_affinity: Option<SessionAffinity>,
    internal_traffic_policy: TrafficPolicy,
    external_traffic_policy: TrafficPolicy,
    traffic_distribution: Option<String>,
    endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// A service port `name` on `cluster_ip:port`, with the defaults of a
    /// ClusterIP Service (Cluster traffic policies, no affinity, no
    /// endpoints); add to it with the builder's methods.
    pub fn builder(name: ServicePortName, cluster_ip: IpAddr, port: u16) -> ServicePortBuilder {
        ServicePortBuilder {
            name,
            port,
            cluster_ip,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            source_ranges: Vec::new(),
            node_port: None,
            health_check_node_port: None,
            session_affinity: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            traffic_distribution: None,
            endpoints: Vec::new(),
        }
    }
}

impl ServicePortBuilder {
    /// `spec.ports[].nodePort`.
    pub fn node_port(mut self, port: u16) -> Self {
        self.node_port = Some(port);
        self
    }

    /// `spec.healthCheckNodePort`.
    pub fn health_check_node_port(mut self, port: u16) -> Self {
        self.health_check_node_port = Some(port);
        self
    }

    /// `spec.externalIPs` (of the ClusterIP's family).
    pub fn external_ips(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.external_ips.extend(ips);
        self
    }

    /// A LoadBalancer ingress IP (`ipMode` VIP).
    pub fn load_balancer_ip(self, ip: IpAddr) -> Self {
        self.load_balancer_ip_mode(ip, LbIpMode::Vip)
    }

    /// A LoadBalancer ingress IP with its `ipMode`.
    pub fn load_balancer_ip_mode(mut self, ip: IpAddr, mode: LbIpMode) -> Self {
        self.load_balancer_ips.push(LoadBalancerIp { ip, mode });
        self
    }

    /// `spec.loadBalancerSourceRanges` (of the ClusterIP's family).
    pub fn source_ranges(mut self, ranges: impl IntoIterator<Item = IpNet>) -> Self {
        self.source_ranges.extend(ranges);
        self
    }

    /// ClientIP session affinity with this timeout in seconds.
    pub fn session_affinity(mut self, timeout_seconds: u32) -> Self {
        self.session_affinity = Some(SessionAffinity { timeout_seconds });
        self
    }

    /// `spec.internalTrafficPolicy`.
    pub fn internal_traffic_policy(mut self, policy: TrafficPolicy) -> Self {
        self.internal_traffic_policy = policy;
        self
    }

    /// `spec.externalTrafficPolicy`.
    pub fn external_traffic_policy(mut self, policy: TrafficPolicy) -> Self {
        self.external_traffic_policy = policy;
        self
    }

    /// `spec.trafficDistribution`, as written (`PreferClose`, ...).
    pub fn traffic_distribution(mut self, value: impl Into<String>) -> Self {
        self.traffic_distribution = Some(value.into());
        self
    }

    /// One endpoint.
    pub fn endpoint(mut self, ep: Endpoint) -> Self {
        self.endpoints.push(ep);
        self
    }

    /// Several endpoints.
    pub fn endpoints(mut self, eps: impl IntoIterator<Item = Endpoint>) -> Self {
        self.endpoints.extend(eps);
        self
    }

    /// The service port for `node`: every list in the graph's order,
    /// endpoints de-duplicated by `ip:port` (a ready copy wins), selection
    /// done.
    fn finish(self, node: &NodeInfo) -> Result<ServicePort, BuildError> {
        let family = IpFamily::of(&self.cluster_ip);
        let wrong = |field: &'static str, value: String| BuildError::WrongFamily {
            service: self.name.clone(),
            field,
            value,
            family,
        };
        let mut external_ips = self.external_ips.clone();
        let mut load_balancer_ips = self.load_balancer_ips.clone();
        let source_ranges = self.source_ranges.clone();
        if let Some(ip) = external_ips.iter().find(|ip| IpFamily::of(ip) != family) {
            return Err(wrong("externalIPs", ip.to_string()));
        }
        if let Some(lb) = load_balancer_ips
            .iter()
            .find(|lb| IpFamily::of(&lb.ip) != family)
        {
            return Err(wrong("loadBalancer ingress", lb.ip.to_string()));
        }
        if let Some(net) = source_ranges.iter().find(|n| IpFamily::of_net(n) != family) {
            return Err(wrong("loadBalancerSourceRanges", net.to_string()));
        }
        if let Some(ep) = self
            .endpoints
            .iter()
            .find(|e| IpFamily::of(&e.ip) != family)
        {
            return Err(wrong("endpoints", ep.addr_string()));
        }
        external_ips.sort();
        external_ips.dedup();
        load_balancer_ips.sort();
        load_balancer_ips.dedup_by_key(|lb| lb.ip);

        // De-duplicate endpoints by `ip:port` (a ready copy wins, as intake
        // merges slices), mark the local ones.
        let mut by_addr: BTreeMap<String, Endpoint> = BTreeMap::new();
        for mut ep in self.endpoints {
            ep.is_local =
                !node.name.is_empty() && ep.node_name.as_deref() == Some(node.name.as_str());
            let key = ep.addr_string();
            match by_addr.get(&key) {
                Some(existing) if existing.ready || !ep.ready => {}
                _ => {
                    by_addr.insert(key, ep);
                }
            }
        }
        let mut endpoints: Vec<Arc<Endpoint>> = by_addr.into_values().map(Arc::new).collect();
        sort_endpoints(&mut endpoints);

        let mut sp = ServicePort {
            name: self.name,
            port: self.port,
            cluster_ip: self.cluster_ip,
            external_ips,
            load_balancer_ips,
            source_ranges,
            node_port: self.node_port,
            health_check_node_port: self.health_check_node_port,
            session_affinity: self.session_affinity,
            internal_traffic_policy: self.internal_traffic_policy,
            external_traffic_policy: self.external_traffic_policy,
            traffic_distribution: self.traffic_distribution,
            endpoints,
            cluster_endpoints: Vec::new(),
            local_endpoints: Vec::new(),
            reachable_endpoints: Vec::new(),
            decisions: Default::default(),
            ready_local_endpoints: 0,
        };
        if !sp.externally_accessible() {
            // As intake: the external policy only means something for a
            // port that accepts external traffic.
            sp.external_traffic_policy = TrafficPolicy::Cluster;
        }
        select(&mut sp, &node.name, node.zone.as_deref());
        Ok(sp)
    }
}

/// A [`ServiceGraph`] under construction: see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ServiceGraphBuilder {
    config: ProxyConfig,
    node: NodeInfo,
    families: BTreeMap<IpFamily, FamilyGraph>,
    services: Vec<ServicePortBuilder>,
}

impl ServiceGraph {
    /// Start a graph for `node` under `config`; every family in
    /// `config.families` gets a [`FamilyGraph`] (empty unless
    /// [`ServiceGraphBuilder::family`] gives its node-wide settings).
    pub fn builder(config: ProxyConfig, node: NodeInfo) -> ServiceGraphBuilder {
        let families = config
            .families
            .iter()
            .map(|f| (*f, FamilyGraph::empty(*f)))
            .collect();
        ServiceGraphBuilder {
            config,
            node,
            families,
            services: Vec::new(),
        }
    }
}

impl ServiceGraph {
    /// Add or replace one service port (in the family of its ClusterIP),
    /// normalised, selected and fingerprinted as [`ServiceGraphBuilder`]
    /// does; returns the service port it replaced.
    pub fn upsert_service(
        &mut self,
        sp: ServicePortBuilder,
    ) -> Result<Option<ServicePort>, BuildError> {
        let family = IpFamily::of(&sp.cluster_ip);
        let Some(fg) = self.families.get_mut(&family) else {
            return Err(BuildError::FamilyNotEnabled {
                service: sp.name.clone(),
                ip: sp.cluster_ip,
                family,
            });
        };
        let sp = sp.finish(&self.node)?;
        fg.fingerprints.insert(sp.name.clone(), fingerprint(&sp));
        Ok(fg.services.insert(sp.name.clone(), sp))
    }

    /// Remove one service port of `family`; returns it if it was there.
    pub fn remove_service(
        &mut self,
        family: IpFamily,
        name: &ServicePortName,
    ) -> Option<ServicePort> {
        let fg = self.families.get_mut(&family)?;
        fg.fingerprints.remove(name);
        fg.services.remove(name)
    }
}

impl ServiceGraphBuilder {
    /// The node-wide settings of one family: node IPs, local-traffic
    /// detector, NodePort addresses, localhost NodePorts, service CIDRs.
    /// Its `services` and `fingerprints` are ignored: add service ports
    /// with [`service`](Self::service). Enables the family if the
    /// configuration did not.
    pub fn family(mut self, mut settings: FamilyGraph) -> Self {
        settings.services.clear();
        settings.fingerprints.clear();
        self.families.insert(settings.family, settings);
        self
    }

    /// Add a service port (to the family of its ClusterIP).
    pub fn service(mut self, sp: ServicePortBuilder) -> Self {
        self.services.push(sp);
        self
    }

    /// The graph: each service port normalised and selected for this node,
    /// and fingerprinted. Fails on a service port of a family that is not
    /// enabled, an address of the wrong family, or a name given twice.
    pub fn build(self) -> Result<ServiceGraph, BuildError> {
        let ServiceGraphBuilder {
            mut config,
            node,
            mut families,
            services,
        } = self;
        let mut seen: BTreeSet<(IpFamily, ServicePortName)> = BTreeSet::new();
        for b in services {
            let family = IpFamily::of(&b.cluster_ip);
            let Some(fg) = families.get_mut(&family) else {
                return Err(BuildError::FamilyNotEnabled {
                    service: b.name.clone(),
                    ip: b.cluster_ip,
                    family,
                });
            };
            if !seen.insert((family, b.name.clone())) {
                return Err(BuildError::Duplicate(b.name.clone()));
            }
            let sp = b.finish(&node)?;
            fg.fingerprints.insert(sp.name.clone(), fingerprint(&sp));
            fg.services.insert(sp.name.clone(), sp);
        }
        for f in families.keys() {
            if !config.families.contains(f) {
                config.families.push(*f);
            }
        }
        Ok(ServiceGraph {
            node,
            config,
            families,
            warnings: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::Objects;
    use crate::model::Protocol;

    const NODE: &str = "test-node";

    /// The same Service read from Kubernetes objects and described to the
    /// builder gives the same service port, decisions and fingerprint.
    #[test]
    fn builder_matches_intake() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.41
  clusterIPs: [172.30.0.41]
  externalIPs: [192.168.99.11]
  externalTrafficPolicy: Local
  healthCheckNodePort: 30000
  sessionAffinity: ClientIP
  ports:
  - {name: p80, port: 80, protocol: TCP, targetPort: 80, nodePort: 3001}
status:
  loadBalancer:
    ingress:
    - ip: 1.2.3.4
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc1-abcde
  namespace: ns1
  labels: {kubernetes.io/service-name: svc1}
addressType: IPv4
ports:
- {name: p80, port: 80, protocol: TCP}
endpoints:
- addresses: [10.180.2.1]
  conditions: {ready: true}
  nodeName: test-node
- addresses: [10.180.0.1]
  conditions: {ready: true}
  nodeName: other
- addresses: [10.180.0.3]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: test-node
"#;
        let config = ProxyConfig {
            node_name: NODE.into(),
            ..ProxyConfig::default()
        };
        let (objects, warnings) = Objects::from_yaml("t.yaml", yaml).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let read = ServiceGraph::build(&objects, &config);
        let name = ServicePortName::new("ns1", "svc1", "p80", Protocol::Tcp);
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let built = ServiceGraph::builder(config, read.node.clone())
            .service(
                ServicePort::builder(name.clone(), ip("172.30.0.41"), 80)
                    .node_port(3001)
                    .health_check_node_port(30000)
                    .external_ips([ip("192.168.99.11")])
                    .load_balancer_ip(ip("1.2.3.4"))
                    .external_traffic_policy(TrafficPolicy::Local)
                    .session_affinity(10800)
                    .endpoints([
                        Endpoint::new(ip("10.180.0.3"), 80)
                            .on_node(NODE)
                            .conditions(false, true, true),
                        Endpoint::new(ip("10.180.0.1"), 80).on_node("other"),
                        Endpoint::new(ip("10.180.2.1"), 80).on_node(NODE),
                    ]),
            )
            .build()
            .unwrap();
        let (r, b) = (
            read.family(IpFamily::V4).unwrap(),
            built.family(IpFamily::V4).unwrap(),
        );
        assert_eq!(b.services[&name], r.services[&name]);
        assert_eq!(b.fingerprints[&name], r.fingerprints[&name]);
        assert_eq!(b.services[&name].local_endpoints.len(), 1);
    }

    #[test]
    fn builder_refuses_inconsistent_input() {
        let config = ProxyConfig {
            node_name: NODE.into(),
            families: vec![IpFamily::V4],
            ..ProxyConfig::default()
        };
        let name = ServicePortName::new("ns", "a", "", Protocol::Tcp);
        let sp = || ServicePort::builder(name.clone(), "10.0.0.1".parse().unwrap(), 80);
        let err = ServiceGraph::builder(config.clone(), NodeInfo::named(NODE))
            .service(sp().endpoint(Endpoint::new("fd00::1".parse().unwrap(), 80)))
            .build()
            .unwrap_err();
        assert!(
            matches!(
                err,
                BuildError::WrongFamily {
                    field: "endpoints",
                    ..
                }
            ),
            "{err}"
        );
        let err = ServiceGraph::builder(config.clone(), NodeInfo::named(NODE))
            .service(sp())
            .service(sp())
            .build()
            .unwrap_err();
        assert_eq!(err, BuildError::Duplicate(name.clone()));
        let err = ServiceGraph::builder(config, NodeInfo::named(NODE))
            .service(ServicePort::builder(
                name.clone(),
                "fd00::1".parse().unwrap(),
                80,
            ))
            .build()
            .unwrap_err();
        assert!(matches!(err, BuildError::FamilyNotEnabled { .. }), "{err}");
    }
}
