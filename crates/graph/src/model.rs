//! The service graph's data model: what one node's proxy must implement.
//!
//! Every address in a [`FamilyGraph`] belongs to that graph's family; intake
//! has already dropped wrong-family and unparsable values (with a
//! [`Warning`](crate::Warning)). Collections are sorted so that the same
//! cluster state always gives the same graph, and therefore byte-identical
//! rules.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::ProxyConfig;
use crate::warning::Warning;

/// An IP family. kproxy programs each family separately (`iptables` and
/// `ip6tables`, `table ip kproxy` and `table ip6 kproxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The family of a CIDR.
    pub fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => IpFamily::V4,
            IpNet::V6(_) => IpFamily::V6,
        }
    }

    /// Both families, IPv4 first.
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    /// Kubernetes' spelling: `IPv4` or `IPv6`.
    pub fn as_k8s_str(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }

    /// The loopback network of this family (`127.0.0.0/8` or `::1/128`).
    pub fn loopback_net(self) -> IpNet {
        match self {
            IpFamily::V4 => "127.0.0.0/8".parse().expect("valid literal"),
            IpFamily::V6 => "::1/128".parse().expect("valid literal"),
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_k8s_str())
    }
}

/// A transport protocol a Service port can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Lower-case name, as used in chain-name hashes and rule text (`tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Parse Kubernetes' spelling (`TCP`, `UDP`, `SCTP`); `None` for anything else.
    pub fn from_k8s(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of one Service port: `namespace/name` plus the port's name
/// (empty for a Service's single unnamed port) and protocol.
///
/// [`Display`](fmt::Display) gives kube-proxy's `ServicePortName.String()`:
/// `ns/svc:port` for a named port and `ns/svc` for an unnamed one. The
/// protocol is not part of that string (as upstream), but it is part of the
/// key, so `dns` over TCP and over UDP are two service ports.
///
/// The parts ([`ServicePortNameParts`], read through `Deref`:
/// `spn.namespace`) are shared: a clone is one reference count, not three
/// strings. A service port's name is a key of several maps at once (the
/// graph's services and fingerprints, each backend's state), so at 50,000
/// Services this holds each name once instead of about six times. Ordering,
/// equality and hashing are those of the parts.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName(Arc<ServicePortNameParts>);

/// What a [`ServicePortName`] is made of.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortNameParts {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name; empty for an unnamed port.
    pub port: String,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl ServicePortName {
    /// `namespace/name`.
    pub fn namespaced_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The parts.
    pub fn parts(&self) -> &ServicePortNameParts {
        &self.0
    }
}

impl std::ops::Deref for ServicePortName {
    type Target = ServicePortNameParts;

    fn deref(&self) -> &ServicePortNameParts {
        &self.0
    }
}

impl From<ServicePortNameParts> for ServicePortName {
    fn from(parts: ServicePortNameParts) -> Self {
        ServicePortName(Arc::new(parts))
    }
}

/// As the parts (`ServicePortName { namespace: .., name: .., port: ..,
/// protocol: .. }`).
impl fmt::Debug for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServicePortName")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("port", &self.port)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// A traffic policy (`internalTrafficPolicy`, `externalTrafficPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster may serve (the default).
    #[default]
    Cluster,
    /// Only endpoints on this node may serve.
    Local,
}

/// ClientIP session affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionAffinity {
    /// How long a client sticks to its endpoint, in seconds (1..=86400,
    /// default 10800).
    pub timeout_seconds: u32,
}

/// One LoadBalancer ingress IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LoadBalancerIp {
    /// The address.
    pub ip: IpAddr,
    /// `ipMode`: with [`LbIpMode::Proxy`] the load balancer delivers traffic
    /// to the node itself and kproxy writes no rule for this address.
    pub mode: LbIpMode,
}

/// `status.loadBalancer.ingress[].ipMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum LbIpMode {
    /// Traffic arrives with the LB IP as destination (the default).
    #[default]
    Vip,
    /// The load balancer proxies; no rule is written for this IP.
    Proxy,
}

/// What a node does with traffic to a service port that nothing can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NoEndpointVerdict {
    /// The Service has no usable endpoint anywhere: reject (ICMP / TCP RST),
    /// so clients fail fast.
    Reject,
    /// The Service has endpoints, but none this traffic may use (a Local
    /// policy with no endpoint on this node): drop, so load balancers'
    /// health checks and clients' retries move on.
    Drop,
}

/// Which topology filter was applied to the cluster endpoints
/// (from the hints the EndpointSlice controller wrote).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TopologyMode {
    /// Endpoints hinted for this node's zone were kept.
    PreferSameZone,
    /// Endpoints hinted for this node were kept.
    PreferSameNode,
}

/// One endpoint of a service port, as merged from the EndpointSlices.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The endpoint's address.
    pub ip: IpAddr,
    /// The target port on the endpoint.
    pub port: u16,
    /// `nodeName`, when the slice says (shared with every other
    /// endpoint on that node).
    pub node_name: Option<Arc<str>>,
    /// `zone`, when the slice says (shared like `node_name`).
    pub zone: Option<Arc<str>>,
    /// `conditions.ready` (nil reads as true).
    pub ready: bool,
    /// `conditions.serving` (nil reads as `ready`).
    pub serving: bool,
    /// `conditions.terminating` (nil reads as false).
    pub terminating: bool,
    /// `hints`; `None` when the endpoint has neither zone nor node hints
    /// (one pointer: most endpoints have none, and a graph holds an
    /// endpoint per service port and address).
    pub hints: Option<Box<Hints>>,
    /// Whether the endpoint runs on this node (`nodeName` equals ours).
    pub is_local: bool,
}

/// An endpoint's topology hints.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hints {
    /// `forZones` names; `None` when the endpoint has no zone hints.
    pub zones: Option<Box<[Arc<str>]>>,
    /// `forNodes` names; `None` when the endpoint has no node hints.
    pub nodes: Option<Box<[Arc<str>]>>,
}

impl Hints {
    /// The hints, or `None` when there are neither zone nor node hints
    /// (how an [`Endpoint`] holds them).
    pub fn new(
        zones: Option<Box<[Arc<str>]>>,
        nodes: Option<Box<[Arc<str>]>>,
    ) -> Option<Box<Hints>> {
        (zones.is_some() || nodes.is_some()).then(|| Box::new(Hints { zones, nodes }))
    }
}

impl Endpoint {
    /// `hints.forZones`; `None` when the endpoint has no zone hints.
    pub fn zone_hints(&self) -> Option<&[Arc<str>]> {
        self.hints.as_ref().and_then(|h| h.zones.as_deref())
    }

    /// `hints.forNodes`; `None` when the endpoint has no node hints.
    pub fn node_hints(&self) -> Option<&[Arc<str>]> {
        self.hints.as_ref().and_then(|h| h.nodes.as_deref())
    }

    /// `ip:port`, with IPv6 in brackets (`[fd00::1]:80`), as kube-proxy
    /// prints endpoints in comments and hashes them into chain names.
    pub fn addr_string(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => format!("{ip}:{}", self.port),
            IpAddr::V6(ip) => format!("[{ip}]:{}", self.port),
        }
    }

    /// Serving and terminating: usable only as a fallback.
    pub fn is_serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// The decisions endpoint selection made for one service port. Generators
/// render these; they never re-derive them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Decisions {
    /// Some endpoint can serve this service port (cluster set non-empty, or,
    /// for a Local policy, any ready or serving-terminating endpoint exists).
    pub has_endpoints: bool,
    /// Traffic to the ClusterIP can be served (false under
    /// `internalTrafficPolicy: Local` with no local endpoint).
    pub has_internal_endpoints: bool,
    /// External traffic can be served (false under
    /// `externalTrafficPolicy: Local` with no local endpoint).
    pub has_external_endpoints: bool,
    /// What to do with ClusterIP traffic when `has_internal_endpoints` is
    /// false; `None` when it is true.
    pub internal_verdict: Option<NoEndpointVerdict>,
    /// What to do with external traffic (NodePort, ExternalIP, LB IP) when
    /// `has_external_endpoints` is false; `None` when it is true (or the
    /// port is not externally reachable).
    pub external_verdict: Option<NoEndpointVerdict>,
    /// The external-traffic chain is written (`KUBE-EXT-*` / `external-*`):
    /// the port is externally accessible and has endpoints. It stays even
    /// with no *local* endpoints so pod and node traffic can short-circuit.
    pub uses_external_chain: bool,
    /// The cluster-policy chain (`KUBE-SVC-*` / `service-*`) is written: the
    /// port uses cluster endpoints and has at least one.
    pub uses_cluster_chain: bool,
    /// The local-policy chain (`KUBE-SVL-*` / `local-*`) is written: the port
    /// uses local endpoints and has at least one.
    pub uses_local_chain: bool,
    /// Which chain ClusterIP traffic goes to.
    pub internal_policy_chain: TrafficPolicy,
    /// Which chain external traffic goes to (after the EXT chain's
    /// short-circuits).
    pub external_policy_chain: TrafficPolicy,
    /// The port has LoadBalancer (VIP-mode) IPs and source ranges, so the
    /// source-range firewall applies to LB IP traffic. kube-proxy's iptables
    /// mode additionally requires `has_endpoints` before writing its
    /// `KUBE-FW-*` chain; nftables mode does not (upstream `syncProxyRules` in
    /// pkg/proxy/iptables/proxier.go and pkg/proxy/nftables/proxier.go).
    pub source_ranges_apply: bool,
    /// The topology filter applied to the cluster endpoints, if any.
    pub topology: Option<TopologyMode>,
    /// Local-policy traffic uses serving-terminating local endpoints because
    /// no ready local endpoint exists.
    pub local_terminating_fallback: bool,
    /// Cluster-policy traffic uses serving-terminating endpoints because no
    /// ready endpoint exists.
    pub cluster_terminating_fallback: bool,
}

/// One service port of one family, with its endpoints and decisions.
///
/// Endpoints are shared (`Arc`) between the full list and the selected
/// sets, so a large cluster holds each endpoint once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// Who this is.
    pub name: ServicePortName,
    /// The Service's port number.
    pub port: u16,
    /// The ClusterIP of this family.
    pub cluster_ip: IpAddr,
    /// `spec.externalIPs` of this family (sorted, de-duplicated).
    pub external_ips: Vec<IpAddr>,
    /// LoadBalancer ingress IPs of this family (sorted, de-duplicated),
    /// including `ipMode: Proxy` ones, which generators skip.
    pub load_balancer_ips: Vec<LoadBalancerIp>,
    /// `spec.loadBalancerSourceRanges` of this family (trimmed, parsed).
    pub source_ranges: Vec<IpNet>,
    /// The NodePort, for NodePort and LoadBalancer Services that have one.
    pub node_port: Option<u16>,
    /// `spec.healthCheckNodePort` (eTP=Local LoadBalancers).
    pub health_check_node_port: Option<u16>,
    /// ClientIP session affinity, if set.
    pub session_affinity: Option<SessionAffinity>,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.externalTrafficPolicy` (Cluster when not externally accessible).
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.trafficDistribution`, as written.
    pub traffic_distribution: Option<String>,
    /// Every endpoint known for this port (merged across slices,
    /// de-duplicated, sorted by `ip:port` text as kube-proxy sorts them).
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The endpoints cluster-policy traffic may use (sorted).
    pub cluster_endpoints: Vec<Arc<Endpoint>>,
    /// The endpoints local-policy traffic may use (sorted).
    pub local_endpoints: Vec<Arc<Endpoint>>,
    /// Union of the two: every endpoint that needs a per-endpoint object
    /// (a `KUBE-SEP-*` chain, say). Sorted.
    pub reachable_endpoints: Vec<Arc<Endpoint>>,
    /// The decisions every backend renders.
    pub decisions: Decisions,
    /// The number of ready local endpoints, as the health-check node port
    /// reports them (serving-terminating ones do not count).
    pub ready_local_endpoints: usize,
}

impl ServicePort {
    /// LoadBalancer IPs that get rules (`ipMode` VIP).
    pub fn vip_load_balancer_ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.load_balancer_ips
            .iter()
            .filter(|lb| lb.mode == LbIpMode::Vip)
            .map(|lb| lb.ip)
    }

    /// Reachable from outside the cluster network: has a NodePort,
    /// ExternalIPs or VIP-mode LoadBalancer IPs.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || self.vip_load_balancer_ips().next().is_some()
    }

    /// Uses cluster endpoints for some traffic: iTP is Cluster, or the port
    /// accepts external traffic at all (even with eTP=Local, pod and node
    /// traffic to external addresses is short-circuited to the cluster
    /// endpoints, as upstream's `UsesClusterEndpoints`).
    pub fn uses_cluster_endpoints(&self) -> bool {
        self.internal_traffic_policy == TrafficPolicy::Cluster || self.externally_accessible()
    }

    /// Uses local endpoints for some traffic (iTP or eTP is Local).
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_traffic_policy == TrafficPolicy::Local
            || (self.externally_accessible()
                && self.external_traffic_policy == TrafficPolicy::Local)
    }
}

/// How the node recognises traffic that comes from its pods, per family
/// (kube-proxy's local-traffic detector).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum LocalTraffic {
    /// No detector: ClusterIP traffic is never masqueraded by source, and
    /// the eTP=Local pod short-circuit is absent.
    #[default]
    None,
    /// Source address inside this CIDR (modes ClusterCIDR and NodeCIDR).
    Cidr(IpNet),
    /// Arrives on this interface (mode BridgeInterface).
    Interface(String),
    /// Arrives on an interface whose name starts with this prefix
    /// (mode InterfaceNamePrefix).
    InterfacePrefix(String),
}

/// Which node addresses accept NodePort traffic, for one family.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodePortIps {
    /// Every local address (kube-proxy iptables mode's default), matched
    /// with `addrtype LOCAL` / `fib daddr type local`.
    All,
    /// Only these addresses (sorted). May be empty: no NodePorts in this
    /// family.
    Only(Vec<IpAddr>),
}

/// This node, as far as the proxy cares.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct NodeInfo {
    /// The node name endpoints are compared with.
    pub name: String,
    /// Node addresses (from `status.addresses` and configuration), sorted,
    /// primary first per family is kept in `primary_ips`.
    pub ips: Vec<IpAddr>,
    /// The primary address of each family (the first InternalIP), if known.
    pub primary_ips: Vec<IpAddr>,
    /// `topology.kubernetes.io/zone`, if set.
    pub zone: Option<String>,
    /// `spec.podCIDRs` (used by the NodeCIDR detector).
    pub pod_cidrs: Vec<IpNet>,
    /// Topology labels (`topology.kubernetes.io/*`); a change forces a full
    /// sync.
    pub topology_labels: BTreeMap<String, String>,
    /// Whether the Node object was found at all.
    pub known: bool,
    /// The node is being deleted, or tainted `ToBeDeletedByClusterAutoscaler`
    /// (kube-proxy's `/healthz` reports it ineligible).
    pub draining: bool,
}

/// Everything one family's rules are generated from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyGraph {
    /// The family.
    pub family: IpFamily,
    /// Service ports with a ClusterIP of this family, by name.
    pub services: BTreeMap<ServicePortName, ServicePort>,
    /// The node's addresses of this family.
    pub node_ips: Vec<IpAddr>,
    /// The local-traffic detector for this family.
    pub local_traffic: LocalTraffic,
    /// Which node addresses accept NodePorts.
    pub nodeport_ips: NodePortIps,
    /// Whether `127.0.0.1:<nodePort>` works (IPv4, iptables, with
    /// localhost NodePorts on and loopback among the NodePort addresses).
    pub localhost_nodeports: bool,
    /// Service CIDRs of this family (for nftables' unallocated-ClusterIP drop).
    pub service_cidrs: Vec<IpNet>,
    /// A per-service fingerprint, for change tracking.
    pub fingerprints: BTreeMap<ServicePortName, u64>,
}

impl FamilyGraph {
    /// An empty graph for `family`.
    pub fn empty(family: IpFamily) -> Self {
        FamilyGraph {
            family,
            services: BTreeMap::new(),
            node_ips: Vec::new(),
            local_traffic: LocalTraffic::None,
            nodeport_ips: NodePortIps::Only(Vec::new()),
            localhost_nodeports: false,
            service_cidrs: Vec::new(),
            fingerprints: BTreeMap::new(),
        }
    }

    /// Total number of endpoints over all service ports (kube-proxy's
    /// large-cluster threshold counts these).
    pub fn total_endpoints(&self) -> usize {
        self.services.values().map(|s| s.endpoints.len()).sum()
    }
}

/// One node's service graph: an immutable snapshot of what the proxy must
/// implement, per family, with the warnings intake raised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceGraph {
    /// This node.
    pub node: NodeInfo,
    /// The validated configuration the graph was built with.
    pub config: ProxyConfig,
    /// Per-family graphs for the enabled families.
    pub families: BTreeMap<IpFamily, FamilyGraph>,
    /// Objects or fields that were skipped, and why.
    pub warnings: Vec<Warning>,
}

impl ServiceGraph {
    /// The graph of one family, if that family is enabled.
    pub fn family(&self, family: IpFamily) -> Option<&FamilyGraph> {
        self.families.get(&family)
    }

    /// The masquerade mark (`1 << masqueradeBit`).
    pub fn masquerade_mark(&self) -> u32 {
        self.config.masquerade_mark()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_port_names_share_their_parts_and_order_by_them() {
        let a = ServicePortName::new("ns", "svc", "http", Protocol::Tcp);
        let b = a.clone();
        assert!(
            std::ptr::eq(a.parts(), b.parts()),
            "a clone shares the parts"
        );
        assert_eq!(a, b);
        let mut names = [
            ServicePortName::new("ns", "svc", "http", Protocol::Udp),
            ServicePortName::new("a", "z", "", Protocol::Tcp),
            ServicePortName::new("ns", "svc", "", Protocol::Tcp),
            a.clone(),
            ServicePortName::new("ns", "sva", "zz", Protocol::Sctp),
        ];
        names.sort();
        let parts: Vec<_> = names.iter().map(|n| n.parts().clone()).collect();
        let mut expected: Vec<_> = names.iter().map(|n| n.parts().clone()).collect();
        expected.sort();
        assert_eq!(parts, expected, "ordered as the parts");
        let shown: Vec<String> = names.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["a/z", "ns/sva:zz", "ns/svc", "ns/svc:http", "ns/svc:http"]
        );
        assert_eq!(
            format!("{a:?}"),
            "ServicePortName { namespace: \"ns\", name: \"svc\", port: \"http\", protocol: Tcp }"
        );
    }
}
