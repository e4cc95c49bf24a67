//! EndpointSlices in compact form: [`CompactSlice`], its ports and its
//! endpoints, which hold the graph's own [`GraphEndpoint`]s (see the
//! parent module).

use super::*;

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
