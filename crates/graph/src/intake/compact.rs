//! Compact objects: what the graph reads of a Service or an EndpointSlice,
//! and nothing else.
//!
//! A k8s-openapi object carries every field the API has (and a large
//! cluster's objects carry managedFields, annotations and status the
//! graph never looks at); an endpoint costs about 480 bytes that way. A
//! [`CompactService`] or [`CompactSlice`] keeps the fields the intake
//! reads: addresses as [`IpAddr`] (or the text, when it is not an
//! address's canonical form, so a warning can quote it as it was),
//! conditions as bits, ports, topology, and names that repeat across
//! objects (namespaces, node names, zones, port names) interned. An
//! endpoint with an address is kept as the graph's own endpoint (see
//! [`CompactEndpoint`]), which a graph built from the slice shares: it
//! costs 16 bytes in the slice and 80 in the allocation both hold.
//!
//! Converting an object and building from the compact form gives the
//! same graph, warnings included, as the intake is written against the
//! compact form alone: [`crate::ServiceGraph::build`] converts its
//! objects first. [`CompactService::to_service`] and
//! [`CompactSlice::to_slice`] give back objects with the fields kept
//! (for snapshots), which build the same graph again.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{HEADLESS_LABEL, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL};
use crate::model::{Endpoint as GraphEndpoint, Protocol};

mod slice;

pub use slice::{
    AddressType, CompactEndpoint, CompactSlice, CompactSlicePort, Hints, TRIGGER_TIME_ANNOTATION,
};

/// The interned strings, pruned of unused ones whenever the set has
/// doubled since the last pruning.
struct Interner {
    set: HashSet<Arc<str>>,
    prune_at: usize,
}

/// One shared copy of `s` (namespaces, node names, zones and port names
/// repeat across a cluster's objects).
pub(crate) fn intern(s: &str) -> Arc<str> {
    static NAMES: OnceLock<Mutex<Interner>> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        Mutex::new(Interner {
            set: HashSet::new(),
            prune_at: 1024,
        })
    });
    let mut names = names.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(a) = names.set.get(s) {
        return a.clone();
    }
    if names.set.len() >= names.prune_at {
        names.set.retain(|a| Arc::strong_count(a) > 1);
        names.prune_at = (names.set.len() * 2).max(1024);
    }
    let a: Arc<str> = Arc::from(s);
    names.set.insert(a.clone());
    a
}

fn intern_opt(s: Option<&String>) -> Option<Arc<str>> {
    s.map(|s| intern(s))
}

fn boxed(s: Option<&String>) -> Option<Box<str>> {
    s.map(|s| s.as_str().into())
}

/// An address field as the object spelled it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    /// An address written in its canonical form (what `IpAddr`
    /// prints).
    Ip(IpAddr),
    /// Any other text (an address with spaces or leading zeros, or not an
    /// address at all), kept for the warning that quotes it.
    Text(Box<str>),
}

impl Addr {
    /// Read `s`, keeping it as text unless it is an address's canonical
    /// form.
    pub fn new(s: &str) -> Addr {
        match s.parse::<IpAddr>() {
            // The IPv4 parser takes only the canonical form (four decimal
            // octets without leading zeros), so no text to compare.
            Ok(ip @ IpAddr::V4(_)) => Addr::Ip(ip),
            Ok(ip) if ip.to_string() == s => Addr::Ip(ip),
            _ => Addr::Text(s.into()),
        }
    }

    /// The address, if the text is one (surrounding spaces allowed).
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Addr::Ip(ip) => Some(*ip),
            Addr::Text(t) => t.trim().parse().ok(),
        }
    }

    /// The text the object had.
    pub fn text(&self) -> String {
        match self {
            Addr::Ip(ip) => ip.to_string(),
            Addr::Text(t) => t.to_string(),
        }
    }
}

/// A protocol field: one of the three, or the text of another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProtocolField {
    /// TCP, UDP or SCTP (an unset field reads as TCP).
    Known(Protocol),
    /// Anything else, kept for the warning.
    Other(Box<str>),
}

impl ProtocolField {
    fn new(s: Option<&String>) -> ProtocolField {
        let s = s.map(String::as_str).unwrap_or("TCP");
        match Protocol::from_k8s(s) {
            Some(p) => ProtocolField::Known(p),
            None => ProtocolField::Other(s.into()),
        }
    }

    fn known(&self) -> bool {
        matches!(self, ProtocolField::Known(_))
    }

    /// The text of the field (`TCP` when unset).
    pub fn text(&self) -> &str {
        match self {
            ProtocolField::Known(Protocol::Tcp) => "TCP",
            ProtocolField::Known(Protocol::Udp) => "UDP",
            ProtocolField::Known(Protocol::Sctp) => "SCTP",
            ProtocolField::Other(s) => s,
        }
    }
}

/// `spec.type`, as far as the graph tells types apart (an unknown type
/// reads as ClusterIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ServiceType {
    /// ClusterIP (and unset or unknown).
    #[default]
    ClusterIp,
    /// NodePort.
    NodePort,
    /// LoadBalancer.
    LoadBalancer,
    /// ExternalName (never proxied).
    ExternalName,
}

impl ServiceType {
    fn new(s: Option<&str>) -> ServiceType {
        match s {
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            _ => ServiceType::ClusterIp,
        }
    }

    fn text(self) -> &'static str {
        match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        }
    }
}

/// The labels the graph and the API source filter on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Labels {
    /// `service.kubernetes.io/service-proxy-name`.
    pub proxy_name: Option<Box<str>>,
    /// Whether `service.kubernetes.io/headless` is set.
    pub headless: bool,
}

impl Labels {
    fn new(meta: &ObjectMeta) -> Labels {
        let labels = meta.labels.as_ref();
        Labels {
            proxy_name: boxed(labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL))),
            headless: labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)),
        }
    }

    fn write(&self, out: &mut BTreeMap<String, String>) {
        if let Some(p) = &self.proxy_name {
            out.insert(SERVICE_PROXY_NAME_LABEL.into(), p.to_string());
        }
        if self.headless {
            out.insert(HEADLESS_LABEL.into(), String::new());
        }
    }

    /// Whether a proxy named `proxy_name` proxies the object: not
    /// headless, and not labelled for another proxy.
    pub fn wanted(&self, proxy_name: Option<&str>) -> bool {
        !self.headless
            && self
                .proxy_name
                .as_deref()
                .is_none_or(|v| proxy_name == Some(v))
    }
}

/// One `status.loadBalancer.ingress` entry that has an `ip`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ingress {
    /// Its index in the list (for warnings).
    pub index: u32,
    /// `ip`.
    pub ip: Addr,
    /// `ipMode`.
    pub ip_mode: Option<Arc<str>>,
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompactServicePort {
    /// `name`.
    pub name: Option<Arc<str>>,
    /// `protocol`.
    pub protocol: ProtocolField,
    /// `port`.
    pub port: i32,
    /// `nodePort`.
    pub node_port: Option<i32>,
}

/// The fields of `spec` the graph reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CompactSpec {
    /// `type`.
    pub type_: ServiceType,
    /// `clusterIPs`, or `clusterIP` when that list is empty.
    pub cluster_ips: Box<[Addr]>,
    /// `externalIPs`.
    pub external_ips: Box<[Addr]>,
    /// `loadBalancerSourceRanges`, as written.
    pub source_ranges: Box<[Box<str>]>,
    /// `sessionAffinity: ClientIP`, with
    /// `sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub client_ip_affinity: Option<Option<i32>>,
    /// `internalTrafficPolicy: Local`.
    pub itp_local: bool,
    /// `externalTrafficPolicy: Local`.
    pub etp_local: bool,
    /// `healthCheckNodePort`.
    pub health_check_node_port: Option<i32>,
    /// `trafficDistribution`.
    pub traffic_distribution: Option<Arc<str>>,
    /// `ports`.
    pub ports: Box<[CompactServicePort]>,
}

/// What the graph reads of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CompactService {
    /// `metadata.namespace`.
    pub namespace: Option<Arc<str>>,
    /// `metadata.name`.
    pub name: Option<Box<str>>,
    /// The labels the graph reads.
    pub labels: Labels,
    /// `spec`; `None` when the object has none.
    pub spec: Option<CompactSpec>,
    /// `status.loadBalancer.ingress` entries with an address.
    pub ingress: Box<[Ingress]>,
}

impl From<&Service> for CompactService {
    fn from(svc: &Service) -> Self {
        let spec = svc.spec.as_ref().map(|s| {
            let mut cluster_ips: Vec<Addr> = s
                .cluster_ips
                .iter()
                .flatten()
                .map(|a| Addr::new(a))
                .collect();
            if cluster_ips.is_empty()
                && let Some(ip) = &s.cluster_ip
            {
                cluster_ips.push(Addr::new(ip));
            }
            CompactSpec {
                type_: ServiceType::new(s.type_.as_deref()),
                cluster_ips: cluster_ips.into(),
                external_ips: s
                    .external_ips
                    .iter()
                    .flatten()
                    .map(|a| Addr::new(a))
                    .collect(),
                source_ranges: s
                    .load_balancer_source_ranges
                    .iter()
                    .flatten()
                    .map(|r| r.as_str().into())
                    .collect(),
                client_ip_affinity: (s.session_affinity.as_deref() == Some("ClientIP")).then(
                    || {
                        s.session_affinity_config
                            .as_ref()
                            .and_then(|c| c.client_ip.as_ref())
                            .and_then(|c| c.timeout_seconds)
                    },
                ),
                itp_local: s.internal_traffic_policy.as_deref() == Some("Local"),
                etp_local: s.external_traffic_policy.as_deref() == Some("Local"),
                health_check_node_port: s.health_check_node_port,
                traffic_distribution: intern_opt(s.traffic_distribution.as_ref()),
                ports: s
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| CompactServicePort {
                        name: intern_opt(p.name.as_ref()),
                        protocol: ProtocolField::new(p.protocol.as_ref()),
                        port: p.port,
                        node_port: p.node_port,
                    })
                    .collect(),
            }
        });
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, ing)| {
                Some(Ingress {
                    index: u32::try_from(i).ok()?,
                    ip: Addr::new(ing.ip.as_ref()?),
                    ip_mode: intern_opt(ing.ip_mode.as_ref()),
                })
            })
            .collect();
        CompactService {
            namespace: intern_opt(svc.metadata.namespace.as_ref()),
            name: boxed(svc.metadata.name.as_ref()),
            labels: Labels::new(&svc.metadata),
            spec,
            ingress,
        }
    }
}

impl From<Service> for CompactService {
    fn from(svc: Service) -> Self {
        CompactService::from(&svc)
    }
}

fn meta(namespace: &Option<Arc<str>>, name: &Option<Box<str>>, labels: &Labels) -> ObjectMeta {
    let mut l = BTreeMap::new();
    labels.write(&mut l);
    ObjectMeta {
        namespace: namespace.as_deref().map(String::from),
        name: name.as_deref().map(String::from),
        labels: (!l.is_empty()).then_some(l),
        ..ObjectMeta::default()
    }
}

fn texts(a: &[Addr]) -> Option<Vec<String>> {
    (!a.is_empty()).then(|| a.iter().map(Addr::text).collect())
}

impl CompactService {
    /// The namespace it is read in (`default` when unset).
    pub fn namespace_or_default(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    /// A Service with the fields kept (which builds the same graph).
    pub fn to_service(&self) -> Service {
        let spec = self.spec.as_ref().map(|s| ServiceSpec {
            type_: Some(s.type_.text().into()),
            // As the API server writes it: clusterIP is clusterIPs[0].
            cluster_ip: s.cluster_ips.first().map(Addr::text),
            cluster_ips: texts(&s.cluster_ips),
            external_ips: texts(&s.external_ips),
            load_balancer_source_ranges: (!s.source_ranges.is_empty())
                .then(|| s.source_ranges.iter().map(|r| r.to_string()).collect()),
            session_affinity: s.client_ip_affinity.map(|_| "ClientIP".into()),
            session_affinity_config: s.client_ip_affinity.flatten().map(|t| {
                SessionAffinityConfig {
                    client_ip: Some(ClientIPConfig {
                        timeout_seconds: Some(t),
                    }),
                }
            }),
            internal_traffic_policy: s.itp_local.then(|| "Local".into()),
            external_traffic_policy: s.etp_local.then(|| "Local".into()),
            health_check_node_port: s.health_check_node_port,
            traffic_distribution: s.traffic_distribution.as_deref().map(String::from),
            ports: (!s.ports.is_empty()).then(|| {
                s.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: p.name.as_deref().map(String::from),
                        protocol: Some(p.protocol.text().into()),
                        port: p.port,
                        node_port: p.node_port,
                        ..ServicePort::default()
                    })
                    .collect()
            }),
            ..ServiceSpec::default()
        });
        let status = (!self.ingress.is_empty()).then(|| {
            let mut ingress = Vec::new();
            for ing in &self.ingress {
                // Entries without an address hold their index.
                while ingress.len() < ing.index as usize {
                    ingress.push(LoadBalancerIngress::default());
                }
                ingress.push(LoadBalancerIngress {
                    ip: Some(ing.ip.text()),
                    ip_mode: ing.ip_mode.as_deref().map(String::from),
                    ..LoadBalancerIngress::default()
                });
            }
            ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(ingress),
                }),
                ..ServiceStatus::default()
            }
        });
        Service {
            metadata: meta(&self.namespace, &self.name, &self.labels),
            spec,
            status,
        }
    }
}

/// Objects as the intake reads them, Services and EndpointSlices in
/// compact form: an [`super::ObjectSink`] that converts each object as it
/// is read, so a large input never holds all its typed objects at once
/// (at 50,000 Services with 10 endpoints each, about 250 MB of typed
/// objects against about 50 MB of compact ones). Reading into it gives
/// the same objects, in the same order, as reading into
/// [`crate::Objects`] and converting each afterwards.
#[derive(Debug, Clone, Default)]
pub struct CompactObjects {
    /// Services.
    pub services: Vec<Arc<CompactService>>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<Arc<CompactSlice>>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// ServiceCIDRs.
    pub service_cidrs: Vec<ServiceCIDR>,
}

impl CompactObjects {
    /// Parse text (as [`crate::Objects::from_yaml`] does) into compact
    /// objects.
    pub fn from_yaml(
        source_name: &str,
        text: &str,
    ) -> Result<(Self, Vec<crate::Warning>), super::IntakeError> {
        let mut o = CompactObjects::default();
        let w = super::add_yaml(&mut o, source_name, text)?;
        o.services.shrink_to_fit();
        o.endpoint_slices.shrink_to_fit();
        Ok((o, w))
    }
}

impl super::ObjectSink for CompactObjects {
    fn service(&mut self, s: Service) {
        self.services.push(Arc::new(CompactService::from(s)));
    }
    fn endpoint_slice(&mut self, s: EndpointSlice) {
        self.endpoint_slices.push(Arc::new(CompactSlice::from(s)));
    }
    fn node(&mut self, n: Node) {
        self.nodes.push(n);
    }
    fn service_cidr(&mut self, c: ServiceCIDR) {
        self.service_cidrs.push(c);
    }
    fn append(&mut self, from: &mut Self) {
        super::stream::move_to(&mut self.services, &mut from.services);
        super::stream::move_to(&mut self.endpoint_slices, &mut from.endpoint_slices);
        super::stream::move_to(&mut self.nodes, &mut from.nodes);
        super::stream::move_to(&mut self.service_cidrs, &mut from.service_cidrs);
    }
}

#[cfg(test)]
mod tests;
