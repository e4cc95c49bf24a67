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

/// `addressType`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AddressType {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
    /// FQDN (never proxied).
    Fqdn,
    /// Anything else, kept for the warning.
    Other(Box<str>),
}

impl AddressType {
    fn text(&self) -> &str {
        match self {
            AddressType::V4 => "IPv4",
            AddressType::V6 => "IPv6",
            AddressType::Fqdn => "FQDN",
            AddressType::Other(s) => s,
        }
    }
}

/// One entry of an EndpointSlice's `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompactSlicePort {
    /// `name`.
    pub name: Option<Arc<str>>,
    /// `protocol`.
    pub protocol: ProtocolField,
    /// `port`.
    pub port: Option<i32>,
}

pub use crate::model::Hints;

/// What the graph reads of one endpoint.
///
/// An endpoint whose address is written in its canonical form (what the
/// API server's EndpointSlices hold) is kept as the graph's own
/// [`GraphEndpoint`], behind the `Arc` the graph's endpoint lists point
/// to: built for the slice's first port, and not local (what the graph
/// holds for every node but the endpoint's own), so a graph built from
/// the slice shares it instead of holding each endpoint a second time.
/// The conditions are kept as written beside it (the graph's endpoint has
/// them resolved). Any other endpoint keeps its fields as read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompactEndpoint(EndpointData);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum EndpointData {
    /// The endpoint as the graph holds it, and `conditions` as written.
    Shared {
        endpoint: Arc<GraphEndpoint>,
        conditions: u8,
    },
    /// The fields as read.
    Other(Box<OtherEndpoint>),
}

/// An endpoint the graph cannot share: no address, or one not in its
/// canonical form (kept for the warning that quotes it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OtherEndpoint {
    address: Option<Addr>,
    conditions: u8,
    node_name: Option<Arc<str>>,
    zone: Option<Arc<str>>,
    hints: Option<Box<Hints>>,
}

const READY: u8 = 0;
const SERVING: u8 = 2;
const TERMINATING: u8 = 4;

fn put(bits: &mut u8, shift: u8, v: Option<bool>) {
    *bits |= match v {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    } << shift;
}

fn get(bits: u8, shift: u8) -> Option<bool> {
    match (bits >> shift) & 3 {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    }
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> Box<[Arc<str>]> {
    it.map(|s| intern(s)).collect()
}

impl CompactEndpoint {
    /// Read `ep`, an endpoint of a slice whose first usable port is
    /// `port` (0 when it has none): the port the shared endpoint is built
    /// for.
    pub fn new(ep: &Endpoint, port: u16) -> CompactEndpoint {
        let mut conditions = 0;
        if let Some(c) = &ep.conditions {
            put(&mut conditions, READY, c.ready);
            put(&mut conditions, SERVING, c.serving);
            put(&mut conditions, TERMINATING, c.terminating);
        }
        let address = ep.addresses.first().map(|a| Addr::new(a));
        let node_name = intern_opt(ep.node_name.as_ref());
        let zone = intern_opt(ep.zone.as_ref());
        let hints = ep.hints.as_ref().map(|h| {
            Box::new(Hints {
                zones: h
                    .for_zones
                    .as_ref()
                    .map(|z| names(z.iter().map(|z| &z.name))),
                nodes: h
                    .for_nodes
                    .as_ref()
                    .map(|n| names(n.iter().map(|n| &n.name))),
            })
        });
        // Empty hints (`hints: {}`) read as none in the graph; kept as
        // read, so the slice gives them back.
        let empty_hints = hints
            .as_ref()
            .is_some_and(|h| h.zones.is_none() && h.nodes.is_none());
        match address {
            Some(Addr::Ip(ip)) if !empty_hints => {
                let ready = get(conditions, READY).unwrap_or(true);
                CompactEndpoint(EndpointData::Shared {
                    endpoint: Arc::new(GraphEndpoint {
                        ip,
                        port,
                        node_name,
                        zone,
                        ready,
                        // discovery/v1: a nil `serving` defers to `ready`.
                        serving: get(conditions, SERVING).unwrap_or(ready),
                        terminating: get(conditions, TERMINATING).unwrap_or(false),
                        hints,
                        is_local: false,
                    }),
                    conditions,
                })
            }
            address => CompactEndpoint(EndpointData::Other(Box::new(OtherEndpoint {
                address,
                conditions,
                node_name,
                zone,
                hints,
            }))),
        }
    }

    fn conditions(&self) -> u8 {
        match &self.0 {
            EndpointData::Shared { conditions, .. } => *conditions,
            EndpointData::Other(o) => o.conditions,
        }
    }

    /// The first of `addresses` (the only one kube-proxy uses); `None`
    /// when the list is empty.
    pub fn address(&self) -> Option<Addr> {
        match &self.0 {
            EndpointData::Shared { endpoint, .. } => Some(Addr::Ip(endpoint.ip)),
            EndpointData::Other(o) => o.address.clone(),
        }
    }

    /// `nodeName`.
    pub fn node_name(&self) -> Option<&Arc<str>> {
        match &self.0 {
            EndpointData::Shared { endpoint, .. } => endpoint.node_name.as_ref(),
            EndpointData::Other(o) => o.node_name.as_ref(),
        }
    }

    /// `zone`.
    pub fn zone(&self) -> Option<&Arc<str>> {
        match &self.0 {
            EndpointData::Shared { endpoint, .. } => endpoint.zone.as_ref(),
            EndpointData::Other(o) => o.zone.as_ref(),
        }
    }

    /// `hints`.
    pub fn hints(&self) -> Option<&Hints> {
        match &self.0 {
            EndpointData::Shared { endpoint, .. } => endpoint.hints.as_deref(),
            EndpointData::Other(o) => o.hints.as_deref(),
        }
    }

    /// `conditions.ready`.
    pub fn ready(&self) -> Option<bool> {
        get(self.conditions(), READY)
    }
    /// `conditions.serving`.
    pub fn serving(&self) -> Option<bool> {
        get(self.conditions(), SERVING)
    }
    /// `conditions.terminating`.
    pub fn terminating(&self) -> Option<bool> {
        get(self.conditions(), TERMINATING)
    }

    /// The endpoint the graph holds for it at `ip` (its address, read)
    /// and `port`, local or not: the shared one when it is that, else a
    /// new one with the same fields.
    pub(crate) fn graph_endpoint(
        &self,
        ip: IpAddr,
        port: u16,
        is_local: bool,
    ) -> Arc<GraphEndpoint> {
        match &self.0 {
            EndpointData::Shared { endpoint, .. }
                if endpoint.ip == ip && endpoint.port == port && endpoint.is_local == is_local =>
            {
                endpoint.clone()
            }
            EndpointData::Shared { endpoint, .. } => Arc::new(GraphEndpoint {
                ip,
                port,
                is_local,
                ..(**endpoint).clone()
            }),
            EndpointData::Other(o) => {
                let ready = get(o.conditions, READY).unwrap_or(true);
                Arc::new(GraphEndpoint {
                    ip,
                    port,
                    node_name: o.node_name.clone(),
                    zone: o.zone.clone(),
                    ready,
                    serving: get(o.conditions, SERVING).unwrap_or(ready),
                    terminating: get(o.conditions, TERMINATING).unwrap_or(false),
                    hints: o
                        .hints
                        .as_ref()
                        .and_then(|h| Hints::new(h.zones.clone(), h.nodes.clone())),
                    is_local,
                })
            }
        }
    }

    /// The shared endpoint, if it has one (for the tests).
    #[cfg(test)]
    pub(crate) fn shared(&self) -> Option<&Arc<GraphEndpoint>> {
        match &self.0 {
            EndpointData::Shared { endpoint, .. } => Some(endpoint),
            EndpointData::Other(_) => None,
        }
    }
}

/// What the graph (and the network-programming latency) reads of an
/// EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompactSlice {
    /// `metadata.namespace`.
    pub namespace: Option<Arc<str>>,
    /// `metadata.name`.
    pub name: Option<Box<str>>,
    /// The labels the graph reads.
    pub labels: Labels,
    /// The `kubernetes.io/service-name` label.
    pub service_name: Option<Box<str>>,
    /// The `endpoints.kubernetes.io/last-change-trigger-time` annotation.
    pub trigger_time: Option<Box<str>>,
    /// `addressType`.
    pub address_type: AddressType,
    /// `ports`.
    pub ports: Box<[CompactSlicePort]>,
    /// `endpoints`.
    pub endpoints: Box<[CompactEndpoint]>,
}

/// The annotation with the time of the change that made the EndpointSlice
/// controller write a slice.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

impl From<&EndpointSlice> for CompactSlice {
    fn from(s: &EndpointSlice) -> Self {
        // The port the graph reads first: the endpoints' shared form is
        // built for it.
        let port = s
            .ports
            .iter()
            .flatten()
            .filter(|p| ProtocolField::new(p.protocol.as_ref()).known())
            .find_map(|p| u16::try_from(p.port?).ok().filter(|p| *p > 0))
            .unwrap_or(0);
        CompactSlice {
            namespace: intern_opt(s.metadata.namespace.as_ref()),
            name: boxed(s.metadata.name.as_ref()),
            labels: Labels::new(&s.metadata),
            service_name: boxed(
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ),
            trigger_time: boxed(
                s.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION)),
            ),
            address_type: match s.address_type.as_str() {
                "IPv4" => AddressType::V4,
                "IPv6" => AddressType::V6,
                "FQDN" => AddressType::Fqdn,
                other => AddressType::Other(other.into()),
            },
            ports: s
                .ports
                .iter()
                .flatten()
                .map(|p| CompactSlicePort {
                    name: intern_opt(p.name.as_ref()),
                    protocol: ProtocolField::new(p.protocol.as_ref()),
                    port: p.port,
                })
                .collect(),
            endpoints: s
                .endpoints
                .iter()
                .map(|ep| CompactEndpoint::new(ep, port))
                .collect(),
        }
    }
}

impl From<EndpointSlice> for CompactSlice {
    fn from(s: EndpointSlice) -> Self {
        CompactSlice::from(&s)
    }
}

impl CompactSlice {
    /// The namespace it is read in (`default` when unset).
    pub fn namespace_or_default(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    /// An EndpointSlice with this one's namespace, name, `addressType`
    /// and trigger-time annotation only (what
    /// [`crate::incremental::Applied::changed_slices`] holds).
    pub fn trigger_only(&self) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: self.namespace.as_deref().map(String::from),
                name: self.name.as_deref().map(String::from),
                annotations: self.trigger_time.as_ref().map(|t| {
                    BTreeMap::from([(TRIGGER_TIME_ANNOTATION.to_string(), t.to_string())])
                }),
                ..ObjectMeta::default()
            },
            address_type: self.address_type.text().into(),
            ..EndpointSlice::default()
        }
    }

    /// An EndpointSlice with the fields kept (which builds the same
    /// graph).
    pub fn to_slice(&self) -> EndpointSlice {
        let mut metadata = meta(&self.namespace, &self.name, &self.labels);
        if let Some(svc) = &self.service_name {
            metadata
                .labels
                .get_or_insert_default()
                .insert(SERVICE_NAME_LABEL.into(), svc.to_string());
        }
        if let Some(t) = &self.trigger_time {
            metadata.annotations = Some(BTreeMap::from([(
                TRIGGER_TIME_ANNOTATION.to_string(),
                t.to_string(),
            )]));
        }
        EndpointSlice {
            metadata,
            address_type: self.address_type.text().into(),
            ports: (!self.ports.is_empty()).then(|| {
                self.ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: p.name.as_deref().map(String::from),
                        protocol: Some(p.protocol.text().into()),
                        port: p.port,
                        ..EndpointPort::default()
                    })
                    .collect()
            }),
            endpoints: self
                .endpoints
                .iter()
                .map(|ep| Endpoint {
                    addresses: ep.address().iter().map(Addr::text).collect(),
                    conditions: (ep.conditions() != 0).then(|| EndpointConditions {
                        ready: ep.ready(),
                        serving: ep.serving(),
                        terminating: ep.terminating(),
                    }),
                    node_name: ep.node_name().map(|n| n.to_string()),
                    zone: ep.zone().map(|z| z.to_string()),
                    hints: ep.hints().map(|h| EndpointHints {
                        for_zones: h.zones.as_ref().map(|z| {
                            z.iter()
                                .map(|n| ForZone {
                                    name: n.to_string(),
                                })
                                .collect()
                        }),
                        for_nodes: h.nodes.as_ref().map(|z| {
                            z.iter()
                                .map(|n| ForNode {
                                    name: n.to_string(),
                                })
                                .collect()
                        }),
                    }),
                    ..Endpoint::default()
                })
                .collect(),
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
