//! Intake: Kubernetes objects (or their YAML/JSON text) in, a
//! [`ServiceGraph`] out.
//!
//! Invalid values never panic and never affect other Services: the
//! offending item (an address, a port, a whole object) is skipped and a
//! [`Warning`] names the object, the field and the reason.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

use crate::changes::fingerprint;
use crate::config::{DetectLocalMode, NodePortAddress, ProxyConfig, ProxyMode};
use crate::model::{
    Endpoint, FamilyGraph, IpFamily, LbIpMode, LoadBalancerIp, LocalTraffic, NodeInfo, NodePortIps,
    Protocol, ServiceGraph, ServicePort, ServicePortName, SessionAffinity, TrafficPolicy,
};
use crate::select::{select, sort_endpoints};
use crate::warning::{ObjectKind, Warning};

/// The label that assigns a Service to a particular proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label that marks headless Services' EndpointSlices.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The zone label.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// The largest ClientIP affinity timeout the API allows (1 day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86400;

// Streaming intake of large lists (a file beside this one).
#[path = "stream.rs"]
mod stream;

/// The Kubernetes objects a graph is built from.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Nodes (only the proxy's own is used).
    pub nodes: Vec<Node>,
    /// `networking.k8s.io/v1` ServiceCIDRs: with the configured service
    /// CIDRs, the ranges whose unallocated addresses nftables drops.
    pub service_cidrs: Vec<ServiceCIDR>,
}

/// A whole input that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The text is not YAML (or JSON).
    #[error("{source_name}: document {document}: {message}")]
    Yaml {
        /// Where the text came from (a file name).
        source_name: String,
        /// The 1-based document index.
        document: usize,
        /// The parser's message (with line and column).
        message: String,
    },
    /// Sequences or mappings nest deeper than any Kubernetes object.
    #[error(
        "{source_name}: document {document}: line {line}: nested more than {max} levels deep; not read"
    )]
    TooDeep {
        /// Where the text came from (a file name).
        source_name: String,
        /// The 1-based document index.
        document: usize,
        /// The 1-based line where the limit was passed.
        line: usize,
        /// The limit.
        max: usize,
    },
}

fn object_name(v: &serde_json::Value) -> String {
    let meta = v.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("<unnamed>");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
    {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

impl Objects {
    /// Read multi-document YAML or JSON: single objects, `kind: List`, and
    /// the exact output of `kubectl get
    /// services,endpointslices,nodes,servicecidrs -A -o yaml`. Objects of
    /// other kinds are ignored; objects that do not match their schema are
    /// skipped with a warning. `source_name` appears in errors.
    pub fn add_yaml(&mut self, source_name: &str, text: &str) -> Result<Vec<Warning>, IntakeError> {
        // A UTF-8 byte order mark (editors on Windows write one) is not
        // content.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        check_depth(source_name, text)?;
        // Large lists item by item (see `stream`); whatever that path does
        // not take, and every error, is read here as a whole.
        if let Some((mut objects, warnings)) = stream::read(source_name, text) {
            stream::append(self, &mut objects);
            return Ok(warnings);
        }
        self.add_yaml_whole(source_name, text)
    }

    /// [`Objects::add_yaml`] through one `serde_json::Value` tree per
    /// document.
    pub(crate) fn add_yaml_whole(
        &mut self,
        source_name: &str,
        text: &str,
    ) -> Result<Vec<Warning>, IntakeError> {
        let mut warnings = Vec::new();
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value: serde_json::Value =
                serde::Deserialize::deserialize(doc).map_err(|e| IntakeError::Yaml {
                    source_name: source_name.to_string(),
                    document: i + 1,
                    message: e.to_string(),
                })?;
            let before = warnings.len();
            self.add_value(value, &mut warnings);
            place(&mut warnings[before..], source_name, i + 1);
        }
        Ok(warnings)
    }

    /// Add one decoded object (or `List`). Takes the value by ownership:
    /// a large `kind: List` is split into its items without copying them.
    /// What is not an object of a kind kproxy reads (an empty document, a
    /// scalar or sequence, another kind) is ignored with a warning.
    pub fn add_value(&mut self, value: serde_json::Value, warnings: &mut Vec<Warning>) {
        self.add_item(value, None, warnings);
    }

    /// [`Objects::add_value`] of a whole document (`item` `None`) or of a
    /// list's item `item`.
    pub(crate) fn add_item(
        &mut self,
        mut value: serde_json::Value,
        item: Option<usize>,
        warnings: &mut Vec<Warning>,
    ) {
        if let Some(w) = not_an_object(&value, item) {
            warnings.push(w);
            return;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        match kind.as_str() {
            "List" | "ServiceList" | "EndpointSliceList" | "NodeList" | "ServiceCIDRList" => {
                let items = value
                    .as_object_mut()
                    .and_then(|o| o.remove("items"))
                    .unwrap_or(serde_json::Value::Null);
                if let serde_json::Value::Array(items) = items {
                    let item_kind = kind.strip_suffix("List").unwrap_or("");
                    for (i, mut item) in items.into_iter().enumerate() {
                        if item.get("kind").is_none()
                            && !item_kind.is_empty()
                            && let Some(obj) = item.as_object_mut()
                        {
                            obj.insert("kind".into(), item_kind.into());
                        }
                        self.add_item(item, Some(i), warnings);
                    }
                }
            }
            "Service" | "EndpointSlice" | "Node" | "ServiceCIDR" => {
                let name = object_name(&value);
                let (object_kind, result) = match kind.as_str() {
                    "Service" => (
                        ObjectKind::Service,
                        serde_json::from_value::<Service>(value).map(|s| self.services.push(s)),
                    ),
                    "EndpointSlice" => (
                        ObjectKind::EndpointSlice,
                        serde_json::from_value::<EndpointSlice>(value)
                            .map(|s| self.endpoint_slices.push(s)),
                    ),
                    "ServiceCIDR" => (
                        ObjectKind::ServiceCidr,
                        serde_json::from_value::<ServiceCIDR>(value)
                            .map(|c| self.service_cidrs.push(c)),
                    ),
                    _ => (
                        ObjectKind::Node,
                        serde_json::from_value::<Node>(value).map(|n| self.nodes.push(n)),
                    ),
                };
                if let Err(e) = result {
                    warnings.push(Warning::new(
                        object_kind,
                        name,
                        "<object>",
                        format!("does not match the {object_kind} schema, skipped: {e}"),
                    ));
                }
            }
            _ => warnings.extend(unread_kind(&value, &kind, item)),
        }
    }

    /// Parse text into a fresh set of objects.
    pub fn from_yaml(source_name: &str, text: &str) -> Result<(Self, Vec<Warning>), IntakeError> {
        let mut o = Objects::default();
        let w = o.add_yaml(source_name, text)?;
        Ok((o, w))
    }
}

/// The object of a document-level warning until the reader names the file
/// and document ([`place`]).
const UNPLACED: &str = "";

/// Name the file and document of the document-level `warnings` just made.
pub(crate) fn place(warnings: &mut [Warning], source_name: &str, document: usize) {
    for w in warnings {
        if w.kind == ObjectKind::Document && w.object == UNPLACED {
            w.object = format!("{document} of {source_name}");
        }
    }
}

/// The field of a document-level warning: `what` of the document, or of
/// list item `item`.
fn item_field(item: Option<usize>, what: &str) -> String {
    match (item, what) {
        (None, "") => "<document>".into(),
        (None, w) => w.into(),
        (Some(i), "") => format!("items[{i}]"),
        (Some(i), w) => format!("items[{i}].{w}"),
    }
}

/// The warning for a document or list item that is not an object.
fn not_an_object(value: &serde_json::Value, item: Option<usize>) -> Option<Warning> {
    use serde_json::Value;
    let what = match value {
        Value::Object(_) => return None,
        Value::Null => "empty".to_string(),
        Value::Array(a) => format!(
            "a sequence of {} entries, not a Kubernetes object (a list of objects needs kind: List and items)",
            a.len()
        ),
        Value::String(_) => "a string, not a Kubernetes object".to_string(),
        Value::Bool(_) | Value::Number(_) => format!("{value}, not a Kubernetes object"),
    };
    Some(Warning::new(
        ObjectKind::Document,
        UNPLACED,
        item_field(item, ""),
        format!("{what}; ignored"),
    ))
}

/// The kinds kproxy reads from input, for the case-insensitive hint.
const READ_KINDS: [&str; 7] = [
    "Service",
    "EndpointSlice",
    "Node",
    "List",
    "ServiceList",
    "EndpointSliceList",
    "NodeList",
];

/// The warning for an object of a kind kproxy does not read, or `None` for
/// kinds it knows (ServiceCIDR, which other paths read).
fn unread_kind(value: &serde_json::Value, kind: &str, item: Option<usize>) -> Option<Warning> {
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if kind == "ServiceCIDR" && api_version.starts_with("networking.k8s.io/") {
        return None;
    }
    let named = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .is_some_and(|n| n.is_string());
    let name = if named {
        format!(" {}", object_name(value))
    } else {
        String::new()
    };
    let reason = if kind.is_empty() {
        format!("object{name} has no kind; ignored")
    } else {
        let hint = READ_KINDS
            .iter()
            .find(|k| k.eq_ignore_ascii_case(kind))
            .map(|k| format!(" (kinds are case-sensitive: did you mean {k}?)"))
            .unwrap_or_default();
        format!("{kind}{name} is not a kind kproxy reads; ignored{hint}")
    };
    Some(Warning::new(
        ObjectKind::Document,
        UNPLACED,
        item_field(item, "kind"),
        reason,
    ))
}

/// The deepest nesting of sequences and mappings a document may have.
/// Kubernetes objects nest about ten deep; the YAML parser's work grows
/// with the square of the depth (a 200 KB file of nested `[` took a
/// minute to reject).
pub const MAX_DEPTH: usize = 64;

/// The columns of a line's leading spaces and `- ` sequence entries.
fn block_indent(line: &str) -> usize {
    let mut rest = line;
    loop {
        let t = rest.trim_start_matches(' ');
        match t.strip_prefix("- ") {
            Some(after) => rest = after,
            None => return line.len() - t.len(),
        }
    }
}

/// Reject text whose sequences or mappings nest deeper than [`MAX_DEPTH`]
/// before the parser sees it. A cheap linear scan that may overestimate,
/// never underestimate: a line's block indentation (two columns a level,
/// `- ` included) plus the flow brackets (`[`, `{`) open at that point,
/// outside quoted scalars and comments.
fn check_depth(source_name: &str, text: &str) -> Result<(), IntakeError> {
    let mut document = 1;
    let mut flow = 0usize;
    let mut quote: Option<char> = None;
    for (n, line) in text.lines().enumerate() {
        if quote.is_none() && flow == 0 && line.starts_with("---") {
            document += 1;
        }
        let indent = block_indent(line);
        // A quoted scalar starts only where a scalar can start, so the
        // apostrophe of `don't` opens nothing.
        let mut prev = ' ';
        let mut escaped = false;
        for c in line.chars() {
            match quote {
                Some('"') if escaped => escaped = false,
                Some('"') if c == '\\' => escaped = true,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '"' | '\'' if matches!(prev, ' ' | '\t' | '[' | '{' | ',' | ':' | '-') => {
                        quote = Some(c)
                    }
                    '#' if matches!(prev, ' ' | '\t') => break,
                    '[' | '{' => {
                        flow += 1;
                        if indent / 2 + flow > MAX_DEPTH {
                            return Err(IntakeError::TooDeep {
                                source_name: source_name.to_string(),
                                document,
                                line: n + 1,
                                max: MAX_DEPTH,
                            });
                        }
                    }
                    ']' | '}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
        if quote.is_none() && indent / 2 > MAX_DEPTH {
            return Err(IntakeError::TooDeep {
                source_name: source_name.to_string(),
                document,
                line: n + 1,
                max: MAX_DEPTH,
            });
        }
    }
    Ok(())
}

// === building ===

struct Ctx<'a> {
    config: &'a ProxyConfig,
    warnings: Vec<Warning>,
}

impl Ctx<'_> {
    fn warn(
        &mut self,
        kind: ObjectKind,
        object: &str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.warnings
            .push(Warning::new(kind, object, field, reason));
    }
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim().parse().ok()
}

/// What kind of special-purpose address `ip` is, when the API server
/// refuses it as an EndpointSlice address or an external IP (its
/// `ValidateEndpointIP`: unspecified, loopback, link-local and link-local
/// multicast; broadcast and other multicast addresses pass). kube-proxy
/// never sees such an object; from files kproxy skips the address.
fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V4(a) if a.is_loopback() => Some("loopback 127.0.0.0/8"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local 169.254.0.0/16"),
        IpAddr::V4(a) if a.octets()[..3] == [224, 0, 0] => {
            Some("link-local multicast 224.0.0.0/24")
        }
        IpAddr::V4(_) => None,
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => special_purpose(IpAddr::V4(v4)),
            None if a.is_unspecified() => Some("unspecified"),
            None if a.is_loopback() => Some("loopback ::1"),
            None if a.segments()[0] & 0xffc0 == 0xfe80 => Some("link-local fe80::/10"),
            None if a.segments()[0] & 0xff0f == 0xff02 => Some("link-local multicast ff02::/16"),
            None => None,
        },
    }
}

/// The per-Service facts shared by all its ports, for one family.
struct SvcCommon {
    cluster_ip: IpAddr,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<LoadBalancerIp>,
    source_ranges: Vec<IpNet>,
    affinity: Option<SessionAffinity>,
    itp: TrafficPolicy,
    etp_local: bool,
    hcnp: Option<u16>,
    traffic_distribution: Option<String>,
    node_port_type: bool,
}

/// A Service's identity: `(namespace, name)`; a missing namespace reads as
/// `default`, as for the EndpointSlices that refer to it.
pub(crate) type SvcKey = (String, String);

/// The namespace an object is read in (`default` when unset).
pub(crate) fn namespace_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

/// The key of a named Service; `None` (with [`unnamed_service_warning`])
/// for one without a name.
pub(crate) fn service_key(svc: &Service) -> Option<SvcKey> {
    let name = svc.metadata.name.clone()?;
    Some((namespace_of(&svc.metadata), name))
}

/// The warning for a Service without `metadata.name`.
pub(crate) fn unnamed_service_warning() -> Warning {
    Warning::new(
        ObjectKind::Service,
        "<unnamed>",
        "metadata.name",
        "missing, skipped",
    )
}

/// What an EndpointSlice's labels say about it before its Service is
/// looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SliceClass {
    /// Headless, or labelled for another proxy: ignored without a word.
    Ignored,
    /// No `kubernetes.io/service-name` label: this warning, nothing else.
    NoService(Warning),
    /// Part of this Service's endpoints.
    Service(SvcKey),
}

/// Classify one slice for `config` (its proxy name decides which
/// service-proxy-name labels are ours).
pub(crate) fn classify_slice(config: &ProxyConfig, slice: &EndpointSlice) -> SliceClass {
    let labels = slice.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k));
    if label(HEADLESS_LABEL).is_some() {
        return SliceClass::Ignored;
    }
    if let Some(v) = label(SERVICE_PROXY_NAME_LABEL)
        && config.proxy_name.as_deref() != Some(v.as_str())
    {
        return SliceClass::Ignored;
    }
    let ns = namespace_of(&slice.metadata);
    match label(SERVICE_NAME_LABEL) {
        Some(svc) => SliceClass::Service((ns, svc.clone())),
        None => SliceClass::NoService(Warning::new(
            ObjectKind::EndpointSlice,
            format!(
                "{ns}/{}",
                slice.metadata.name.as_deref().unwrap_or("<unnamed>")
            ),
            format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            "missing: the slice belongs to no Service, skipped",
        )),
    }
}

/// The node-wide part of a graph: this node, the per-family graphs
/// without service ports, and the warnings raised on the way.
pub(crate) struct Base {
    pub(crate) node: NodeInfo,
    pub(crate) families: BTreeMap<IpFamily, FamilyGraph>,
    pub(crate) warnings: Vec<Warning>,
}

/// Build the node-wide part from this node's Node object (if any) and
/// the ServiceCIDR objects.
pub(crate) fn build_base<'a>(
    config: &ProxyConfig,
    node: Option<&Node>,
    service_cidrs: impl IntoIterator<Item = &'a ServiceCIDR>,
) -> Base {
    let mut cx = Ctx {
        config,
        warnings: Vec::new(),
    };
    let node = node_info(&mut cx, node);
    let mut cidrs: Vec<IpNet> = config.service_cidrs.iter().map(IpNet::trunc).collect();
    for sc in service_cidrs {
        cidrs.extend(service_cidr_ranges(&mut cx, sc));
    }
    cidrs.sort();
    cidrs.dedup();
    let mut families: BTreeMap<IpFamily, FamilyGraph> = BTreeMap::new();
    for family in &config.families {
        let mut fg = FamilyGraph::empty(*family);
        fg.node_ips = node
            .ips
            .iter()
            .filter(|ip| IpFamily::of(ip) == *family)
            .copied()
            .collect();
        fg.local_traffic = local_traffic(&mut cx, &node, *family);
        let (np, localhost) = nodeport_ips(config, &node, *family);
        fg.nodeport_ips = np;
        fg.localhost_nodeports = localhost;
        fg.service_cidrs = cidrs
            .iter()
            .filter(|c| IpFamily::of_net(c) == *family)
            .copied()
            .collect();
        families.insert(*family, fg);
    }
    Base {
        node,
        families,
        warnings: cx.warnings,
    }
}

/// The ranges of one ServiceCIDR: its `spec.cidrs`, as kube-proxy reads
/// them (`ServiceCIDRConfig` takes the spec, whatever the status or a
/// pending deletion says: a ServiceCIDR being deleted still holds its
/// ClusterIPs until the API server removes it). An unparsable entry is
/// skipped with a warning.
fn service_cidr_ranges(cx: &mut Ctx<'_>, sc: &ServiceCIDR) -> Vec<IpNet> {
    let name = sc.metadata.name.as_deref().unwrap_or("<unnamed>");
    let mut out = Vec::new();
    let entries = sc.spec.as_ref().and_then(|s| s.cidrs.as_ref());
    for (i, c) in entries.into_iter().flatten().enumerate() {
        match c.trim().parse::<IpNet>() {
            Ok(n) => out.push(n.trunc()),
            Err(_) => cx.warn(
                ObjectKind::ServiceCidr,
                name,
                format!("spec.cidrs[{i}]"),
                format!("{c:?} is not a CIDR, ignored"),
            ),
        }
    }
    out
}

/// The service ports (with fingerprints) and warnings one Service and its
/// EndpointSlices contribute to a graph.
pub(crate) struct Unit {
    pub(crate) ports: Vec<(IpFamily, ServicePort, u64)>,
    pub(crate) warnings: Vec<Warning>,
}

/// Build one Service's service ports. `services` are the Service objects
/// with this key (one, unless the input repeats it; empty when only
/// slices refer to it), `slices` the slices classified to it, in
/// namespace and name order. The result depends only on these, the
/// configuration, the enabled `families` and the node's name and zone:
/// that is what lets [`crate::incremental`] rebuild one Service alone.
pub(crate) fn build_unit(
    config: &ProxyConfig,
    node: &NodeInfo,
    families: &[IpFamily],
    key: &SvcKey,
    services: &[&Service],
    slices: &[&EndpointSlice],
) -> Unit {
    let mut cx = Ctx {
        config,
        warnings: Vec::new(),
    };
    let mut ports: BTreeMap<IpFamily, BTreeMap<ServicePortName, ServicePort>> =
        families.iter().map(|f| (*f, BTreeMap::new())).collect();
    let mut proxied = false;
    for svc in services {
        proxied |= intake_service(&mut cx, svc, &key.0, &key.1, &mut ports);
    }
    let known = !services.is_empty();
    // (family, service port name) -> endpoints by ip:port text
    let mut merged: HashMap<(IpFamily, ServicePortName), BTreeMap<String, Endpoint>> =
        HashMap::new();
    for slice in slices {
        intake_slice(
            &mut cx,
            slice,
            key,
            known,
            proxied,
            node,
            &ports,
            &mut merged,
        );
    }
    for ((family, spn), eps) in merged {
        if let Some(sp) = ports.get_mut(&family).and_then(|m| m.get_mut(&spn)) {
            sp.endpoints = eps.into_values().map(std::sync::Arc::new).collect();
        }
    }
    let mut out = Vec::new();
    for (family, m) in ports {
        for (_, mut sp) in m {
            sort_endpoints(&mut sp.endpoints);
            select(&mut sp, &node.name, node.zone.as_deref());
            let fp = fingerprint(&sp);
            out.push((family, sp, fp));
        }
    }
    Unit {
        ports: out,
        warnings: cx.warnings,
    }
}

impl ServiceGraph {
    /// Build this node's graph from `objects`.
    ///
    /// The graph is assembled per Service (the Service with the slices
    /// that name it), so [`crate::incremental::IncrementalGraph`] can
    /// rebuild one Service alone and reach the same result.
    pub fn build(objects: &Objects, config: &ProxyConfig) -> ServiceGraph {
        let node_obj = objects
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(config.node_name.as_str()));
        let Base {
            node,
            mut families,
            mut warnings,
        } = build_base(config, node_obj, &objects.service_cidrs);
        let enabled: Vec<IpFamily> = families.keys().copied().collect();

        // Every Service seen (proxied or not) has a group, so slices of
        // skipped Services are not reported as orphans.
        type Group<'a> = (Vec<&'a Service>, Vec<&'a EndpointSlice>);
        let mut groups: BTreeMap<SvcKey, Group<'_>> = BTreeMap::new();
        for svc in &objects.services {
            match service_key(svc) {
                Some(key) => groups.entry(key).or_default().0.push(svc),
                None => warnings.push(unnamed_service_warning()),
            }
        }
        // Slices in name order, so duplicates resolve the same way every time.
        let mut slices: Vec<&EndpointSlice> = objects.endpoint_slices.iter().collect();
        slices.sort_by(|a, b| {
            (a.metadata.namespace.as_deref(), a.metadata.name.as_deref())
                .cmp(&(b.metadata.namespace.as_deref(), b.metadata.name.as_deref()))
        });
        for slice in slices {
            match classify_slice(config, slice) {
                SliceClass::Ignored => {}
                SliceClass::NoService(w) => warnings.push(w),
                SliceClass::Service(key) => groups.entry(key).or_default().1.push(slice),
            }
        }

        for (key, (services, slices)) in &groups {
            let unit = build_unit(config, &node, &enabled, key, services, slices);
            warnings.extend(unit.warnings);
            for (family, sp, fp) in unit.ports {
                if let Some(fg) = families.get_mut(&family) {
                    fg.fingerprints.insert(sp.name.clone(), fp);
                    fg.services.insert(sp.name.clone(), sp);
                }
            }
        }

        warnings.sort();
        warnings.dedup();
        ServiceGraph {
            node,
            config: config.clone(),
            families,
            warnings,
        }
    }
}

fn node_info(cx: &mut Ctx<'_>, node: Option<&Node>) -> NodeInfo {
    let mut info = NodeInfo {
        name: cx.config.node_name.clone(),
        ..NodeInfo::default()
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut primary: BTreeMap<IpFamily, IpAddr> = BTreeMap::new();
    if let Some(node) = node {
        info.known = true;
        let name = cx.config.node_name.clone();
        if let Some(labels) = &node.metadata.labels {
            info.zone = labels.get(ZONE_LABEL).filter(|z| !z.is_empty()).cloned();
            info.topology_labels = labels
                .iter()
                .filter(|(k, _)| k.starts_with("topology.kubernetes.io/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        info.draining = node.metadata.deletion_timestamp.is_some()
            || node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == "ToBeDeletedByClusterAutoscaler"));
        if let Some(spec) = &node.spec {
            let mut cidrs: Vec<String> = spec.pod_cidrs.clone().unwrap_or_default();
            if cidrs.is_empty()
                && let Some(c) = &spec.pod_cidr
            {
                cidrs.push(c.clone());
            }
            for (i, c) in cidrs.iter().enumerate() {
                match c.trim().parse::<IpNet>() {
                    Ok(n) => info.pod_cidrs.push(n),
                    Err(_) => cx.warn(
                        ObjectKind::Node,
                        &name,
                        format!("spec.podCIDRs[{i}]"),
                        format!("{c:?} is not a CIDR, ignored"),
                    ),
                }
            }
        }
        if let Some(addrs) = node.status.as_ref().and_then(|s| s.addresses.as_ref()) {
            // InternalIPs first: the first InternalIP of a family is its primary.
            for want in ["InternalIP", "ExternalIP"] {
                for (i, a) in addrs.iter().enumerate().filter(|(_, a)| a.type_ == want) {
                    match parse_ip(&a.address) {
                        Some(ip) => {
                            primary.entry(IpFamily::of(&ip)).or_insert(ip);
                            ips.push(ip);
                        }
                        None => cx.warn(
                            ObjectKind::Node,
                            &name,
                            format!("status.addresses[{i}].address"),
                            format!("{:?} is not an IP address, ignored", a.address),
                        ),
                    }
                }
            }
        }
    }
    for ip in &cx.config.extra_node_ips {
        primary.entry(IpFamily::of(ip)).or_insert(*ip);
        ips.push(*ip);
    }
    ips.sort();
    ips.dedup();
    info.ips = ips;
    info.primary_ips = primary.into_values().collect();
    info
}

fn local_traffic(cx: &mut Ctx<'_>, node: &NodeInfo, family: IpFamily) -> LocalTraffic {
    let c = cx.config;
    match c.detect_local_mode {
        DetectLocalMode::ClusterCidr => c
            .cluster_cidrs
            .iter()
            .find(|n| IpFamily::of_net(n) == family)
            .map(|n| LocalTraffic::Cidr(n.trunc()))
            .unwrap_or(LocalTraffic::None),
        DetectLocalMode::NodeCidr => node
            .pod_cidrs
            .iter()
            .find(|n| IpFamily::of_net(n) == family)
            .map(|n| LocalTraffic::Cidr(n.trunc()))
            .unwrap_or(LocalTraffic::None),
        DetectLocalMode::BridgeInterface => match &c.bridge_interface {
            Some(b) if valid_ifname(b) => LocalTraffic::Interface(b.clone()),
            other => {
                cx.warn(
                    ObjectKind::Document,
                    "configuration",
                    "detectLocal.bridgeInterface",
                    format!("{other:?} is not a usable interface name; no local-traffic detector"),
                );
                LocalTraffic::None
            }
        },
        DetectLocalMode::InterfaceNamePrefix => {
            match &c.interface_name_prefix {
                Some(p) if valid_ifname(p) => LocalTraffic::InterfacePrefix(p.clone()),
                other => {
                    cx.warn(ObjectKind::Document, "configuration", "detectLocal.interfaceNamePrefix", format!("{other:?} is not a usable interface name prefix; no local-traffic detector"));
                    LocalTraffic::None
                }
            }
        }
    }
}

/// A Linux interface name: 1 to 15 bytes, no `/`, whitespace, quotes or `+`.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

fn nodeport_ips(config: &ProxyConfig, node: &NodeInfo, family: IpFamily) -> (NodePortIps, bool) {
    let loopback = family.loopback_net();
    let entries: Vec<NodePortAddress> = if config.nodeport_addresses.is_empty() {
        match config.mode {
            ProxyMode::Iptables => Vec::new(),
            ProxyMode::Nftables => vec![NodePortAddress::Primary],
        }
    } else {
        config.nodeport_addresses.clone()
    };
    let fam_entries: Vec<&NodePortAddress> = entries
        .iter()
        .filter(|e| match e {
            NodePortAddress::Primary => true,
            NodePortAddress::Cidr(n) => IpFamily::of_net(n) == family,
        })
        .collect();
    // No entry of this family (even when the other family has some):
    // every address, as kube-proxy's `NewNodePortAddresses` (0.0.0.0/0 or
    // ::/0) in both modes.
    let all = fam_entries.is_empty()
        || fam_entries
            .iter()
            .any(|e| matches!(e, NodePortAddress::Cidr(n) if n.prefix_len() == 0));
    let localhost_allowed =
        config.mode == ProxyMode::Iptables && family == IpFamily::V4 && config.localhost_nodeports;
    if all {
        return (NodePortIps::All, localhost_allowed);
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut localhost = false;
    for e in fam_entries {
        match e {
            NodePortAddress::Primary => ips.extend(
                node.primary_ips
                    .iter()
                    .filter(|ip| IpFamily::of(ip) == family),
            ),
            NodePortAddress::Cidr(n) => {
                ips.extend(node.ips.iter().filter(|ip| n.contains(*ip)));
                // Any overlap with the loopback network admits localhost.
                if loopback.contains(&n.network()) || n.contains(&loopback.network()) {
                    localhost = true;
                }
            }
        }
    }
    ips.retain(|ip| !loopback.contains(ip));
    ips.sort();
    ips.dedup();
    (NodePortIps::Only(ips), localhost && localhost_allowed)
}

/// Intake one Service into every family it has a ClusterIP in. Returns
/// whether the Service is proxied at all.
fn intake_service(
    cx: &mut Ctx<'_>,
    svc: &Service,
    ns: &str,
    name: &str,
    families: &mut BTreeMap<IpFamily, BTreeMap<ServicePortName, ServicePort>>,
) -> bool {
    let obj = format!("{ns}/{name}");
    if let Some(v) = svc
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL))
        && cx.config.proxy_name.as_deref() != Some(v.as_str())
    {
        return false;
    }
    let Some(spec) = &svc.spec else {
        cx.warn(ObjectKind::Service, &obj, "spec", "missing, skipped");
        return false;
    };
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if type_ == "ExternalName" {
        return false;
    }
    let mut cluster_ip_strs: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if cluster_ip_strs.is_empty()
        && let Some(ip) = &spec.cluster_ip
    {
        cluster_ip_strs.push(ip.clone());
    }
    if cluster_ip_strs.is_empty() || cluster_ip_strs.iter().any(|s| s == "None") {
        return false; // headless (or not yet allocated)
    }
    let mut cluster_ips: BTreeMap<IpFamily, IpAddr> = BTreeMap::new();
    for (i, s) in cluster_ip_strs.iter().enumerate() {
        match parse_ip(s) {
            Some(ip) => match cluster_ips.entry(IpFamily::of(&ip)) {
                std::collections::btree_map::Entry::Occupied(_) => cx.warn(
                    ObjectKind::Service,
                    &obj,
                    format!("spec.clusterIPs[{i}]"),
                    format!("{s:?} is a second address of the same family, ignored"),
                ),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(ip);
                }
            },
            None => cx.warn(
                ObjectKind::Service,
                &obj,
                format!("spec.clusterIPs[{i}]"),
                format!("{s:?} is not an IP address, ignored"),
            ),
        }
    }
    if cluster_ips.is_empty() {
        cx.warn(
            ObjectKind::Service,
            &obj,
            "spec.clusterIPs",
            "no valid ClusterIP, Service skipped",
        );
        return false;
    }

    let is_lb = type_ == "LoadBalancer";
    let node_port_type = type_ == "NodePort" || is_lb;

    let mut external_ips: Vec<IpAddr> = Vec::new();
    for (i, s) in spec.external_ips.iter().flatten().enumerate() {
        match parse_ip(s) {
            Some(ip) if let Some(why) = special_purpose(ip) => cx.warn(
                ObjectKind::Service,
                &obj,
                format!("spec.externalIPs[{i}]"),
                format!("{s:?} is a special-purpose address ({why}), which the API server refuses as an external IP; ignored"),
            ),
            Some(ip) => external_ips.push(ip),
            None => cx.warn(
                ObjectKind::Service,
                &obj,
                format!("spec.externalIPs[{i}]"),
                format!("{s:?} is not an IP address, ignored"),
            ),
        }
    }
    let mut lb_ips: Vec<LoadBalancerIp> = Vec::new();
    if is_lb {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            let Some(s) = &ing.ip else { continue };
            let Some(ip) = parse_ip(s) else {
                cx.warn(
                    ObjectKind::Service,
                    &obj,
                    format!("status.loadBalancer.ingress[{i}].ip"),
                    format!("{s:?} is not an IP address, ignored"),
                );
                continue;
            };
            let mode = match ing.ip_mode.as_deref() {
                Some("Proxy") => LbIpMode::Proxy,
                None | Some("VIP") => LbIpMode::Vip,
                Some(other) => {
                    cx.warn(
                        ObjectKind::Service,
                        &obj,
                        format!("status.loadBalancer.ingress[{i}].ipMode"),
                        format!("{other:?} is not VIP or Proxy, treated as VIP"),
                    );
                    LbIpMode::Vip
                }
            };
            lb_ips.push(LoadBalancerIp { ip, mode });
        }
    }
    let mut source_ranges: Vec<IpNet> = Vec::new();
    if is_lb {
        for (i, s) in spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .enumerate()
        {
            match s.trim().parse::<IpNet>() {
                Ok(n) => source_ranges.push(n.trunc()),
                Err(_) => match parse_ip(s) {
                    // A bare address is a /32 (or /128).
                    Some(ip) => source_ranges.push(IpNet::from(ip)),
                    None => cx.warn(
                        ObjectKind::Service,
                        &obj,
                        format!("spec.loadBalancerSourceRanges[{i}]"),
                        format!("{s:?} is not a CIDR, ignored"),
                    ),
                },
            }
        }
    }
    let affinity = if spec.session_affinity.as_deref() == Some("ClientIP") {
        let t = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        let timeout = match t {
            None => DEFAULT_AFFINITY_TIMEOUT,
            Some(t) if t >= 1 && t <= MAX_AFFINITY_TIMEOUT as i32 => t as u32,
            Some(t) => {
                cx.warn(
                    ObjectKind::Service,
                    &obj,
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{t} is outside 1..86400, using {DEFAULT_AFFINITY_TIMEOUT}"),
                );
                DEFAULT_AFFINITY_TIMEOUT
            }
        };
        Some(SessionAffinity {
            timeout_seconds: timeout,
        })
    } else {
        None
    };
    let itp = match spec.internal_traffic_policy.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let etp_local = matches!(spec.external_traffic_policy.as_deref(), Some("Local"));
    let hcnp = if is_lb && etp_local {
        match spec.health_check_node_port {
            None | Some(0) => None,
            Some(p) => match u16::try_from(p) {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    cx.warn(
                        ObjectKind::Service,
                        &obj,
                        "spec.healthCheckNodePort",
                        format!("{p} is not a port, ignored"),
                    );
                    None
                }
            },
        }
    } else {
        None
    };

    for (family, cluster_ip) in cluster_ips {
        let Some(fg) = families.get_mut(&family) else {
            continue;
        };
        let common = SvcCommon {
            cluster_ip,
            external_ips: sorted_family(&external_ips, family),
            lb_ips: {
                let mut v: Vec<LoadBalancerIp> = lb_ips
                    .iter()
                    .filter(|l| IpFamily::of(&l.ip) == family)
                    .copied()
                    .collect();
                v.sort();
                v.dedup_by(|a, b| a.ip == b.ip);
                v
            },
            source_ranges: {
                let mut v: Vec<IpNet> = source_ranges
                    .iter()
                    .filter(|n| IpFamily::of_net(n) == family)
                    .copied()
                    .collect();
                v.sort();
                v.dedup();
                v
            },
            affinity,
            itp,
            etp_local,
            hcnp,
            traffic_distribution: spec.traffic_distribution.clone(),
            node_port_type,
        };
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let proto_s = p.protocol.as_deref().unwrap_or("TCP");
            let Some(protocol) = Protocol::from_k8s(proto_s) else {
                cx.warn(
                    ObjectKind::Service,
                    &obj,
                    format!("spec.ports[{i}].protocol"),
                    format!("{proto_s:?} is not TCP, UDP or SCTP; port skipped"),
                );
                continue;
            };
            let port = match u16::try_from(p.port) {
                Ok(v) if v > 0 => v,
                _ => {
                    cx.warn(
                        ObjectKind::Service,
                        &obj,
                        format!("spec.ports[{i}].port"),
                        format!("{} is outside 1..65535; port skipped", p.port),
                    );
                    continue;
                }
            };
            let node_port = if common.node_port_type {
                match p.node_port {
                    None | Some(0) => None,
                    Some(np) => match u16::try_from(np) {
                        Ok(v) if v > 0 => Some(v),
                        _ => {
                            cx.warn(
                                ObjectKind::Service,
                                &obj,
                                format!("spec.ports[{i}].nodePort"),
                                format!("{np} is outside 1..65535, ignored"),
                            );
                            None
                        }
                    },
                }
            } else {
                None
            };
            let spn = ServicePortName {
                namespace: ns.to_string(),
                name: name.to_string(),
                port: p.name.clone().unwrap_or_default(),
                protocol,
            };
            if fg.contains_key(&spn) {
                cx.warn(
                    ObjectKind::Service,
                    &obj,
                    format!("spec.ports[{i}]"),
                    format!("duplicate port {spn} {protocol}, ignored"),
                );
                continue;
            }
            let mut sp = ServicePort {
                name: spn.clone(),
                port,
                cluster_ip: common.cluster_ip,
                external_ips: common.external_ips.clone(),
                load_balancer_ips: common.lb_ips.clone(),
                source_ranges: common.source_ranges.clone(),
                node_port,
                health_check_node_port: common.hcnp,
                session_affinity: common.affinity,
                internal_traffic_policy: common.itp,
                external_traffic_policy: TrafficPolicy::Cluster,
                traffic_distribution: common.traffic_distribution.clone(),
                endpoints: Vec::new(),
                cluster_endpoints: Vec::new(),
                local_endpoints: Vec::new(),
                reachable_endpoints: Vec::new(),
                decisions: Default::default(),
                ready_local_endpoints: 0,
            };
            if common.etp_local && sp.externally_accessible() {
                sp.external_traffic_policy = TrafficPolicy::Local;
            }
            fg.insert(spn, sp);
        }
    }
    true
}

fn sorted_family(ips: &[IpAddr], family: IpFamily) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = ips
        .iter()
        .filter(|ip| IpFamily::of(ip) == family)
        .copied()
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Merge one slice of the Service `key` into `merged`.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn intake_slice(
    cx: &mut Ctx<'_>,
    slice: &EndpointSlice,
    key: &SvcKey,
    known: bool,
    proxied: bool,
    node: &NodeInfo,
    ports: &BTreeMap<IpFamily, BTreeMap<ServicePortName, ServicePort>>,
    merged: &mut HashMap<(IpFamily, ServicePortName), BTreeMap<String, Endpoint>>,
) {
    let (ns, svc_name) = key;
    let sname = slice.metadata.name.as_deref().unwrap_or("<unnamed>");
    let obj = format!("{ns}/{sname}");
    if !known {
        cx.warn(
            ObjectKind::EndpointSlice,
            &obj,
            format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            format!("Service {ns}/{svc_name} does not exist, slice skipped"),
        );
        return;
    }
    if !proxied {
        return;
    }
    {
        let family = match slice.address_type.as_str() {
            "IPv4" => IpFamily::V4,
            "IPv6" => IpFamily::V6,
            "FQDN" => return,
            other => {
                cx.warn(
                    ObjectKind::EndpointSlice,
                    &obj,
                    "addressType",
                    format!("{other:?} is not IPv4, IPv6 or FQDN, slice skipped"),
                );
                return;
            }
        };
        if !ports.contains_key(&family) {
            return;
        }
        for (pi, p) in slice.ports.iter().flatten().enumerate() {
            let Some(port) = p.port else { continue };
            let port = match u16::try_from(port) {
                Ok(v) if v > 0 => v,
                _ => {
                    cx.warn(
                        ObjectKind::EndpointSlice,
                        &obj,
                        format!("ports[{pi}].port"),
                        format!("{port} is outside 1..65535, port skipped"),
                    );
                    continue;
                }
            };
            let proto_s = p.protocol.as_deref().unwrap_or("TCP");
            let Some(protocol) = Protocol::from_k8s(proto_s) else {
                cx.warn(
                    ObjectKind::EndpointSlice,
                    &obj,
                    format!("ports[{pi}].protocol"),
                    format!("{proto_s:?} is not TCP, UDP or SCTP; port skipped"),
                );
                continue;
            };
            let spn = ServicePortName {
                namespace: ns.clone(),
                name: svc_name.clone(),
                port: p.name.clone().unwrap_or_default(),
                protocol,
            };
            let entry = merged.entry((family, spn)).or_default();
            for (ei, ep) in slice.endpoints.iter().enumerate() {
                let Some(addr) = ep.addresses.first() else {
                    cx.warn(
                        ObjectKind::EndpointSlice,
                        &obj,
                        format!("endpoints[{ei}].addresses"),
                        "empty, endpoint skipped",
                    );
                    continue;
                };
                let ip = match parse_ip(addr) {
                    Some(ip) if let Some(why) = special_purpose(ip) => {
                        if pi == 0 {
                            cx.warn(
                                ObjectKind::EndpointSlice,
                                &obj,
                                format!("endpoints[{ei}].addresses[0]"),
                                format!("{addr:?} is a special-purpose address ({why}), which the API server refuses as an endpoint; endpoint skipped"),
                            );
                        }
                        continue;
                    }
                    Some(ip) if IpFamily::of(&ip) == family => ip,
                    Some(_) => {
                        if pi == 0 {
                            cx.warn(
                                ObjectKind::EndpointSlice,
                                &obj,
                                format!("endpoints[{ei}].addresses[0]"),
                                format!("{addr:?} is not an {family} address, endpoint skipped"),
                            );
                        }
                        continue;
                    }
                    None => {
                        if pi == 0 {
                            cx.warn(
                                ObjectKind::EndpointSlice,
                                &obj,
                                format!("endpoints[{ei}].addresses[0]"),
                                format!("{addr:?} is not an IP address, endpoint skipped"),
                            );
                        }
                        continue;
                    }
                };
                let cond = ep.conditions.clone().unwrap_or_default();
                let ready = cond.ready.unwrap_or(true);
                // discovery/v1: a nil `serving` defers to `ready`.
                let serving = cond.serving.unwrap_or(ready);
                let terminating = cond.terminating.unwrap_or(false);
                let hints = ep.hints.as_ref();
                let endpoint = Endpoint {
                    ip,
                    port,
                    node_name: ep.node_name.clone(),
                    zone: ep.zone.clone(),
                    ready,
                    serving,
                    terminating,
                    zone_hints: hints
                        .and_then(|h| h.for_zones.as_ref())
                        .map(|z| z.iter().map(|z| z.name.clone()).collect()),
                    node_hints: hints
                        .and_then(|h| h.for_nodes.as_ref())
                        .map(|n| n.iter().map(|n| n.name.clone()).collect()),
                    is_local: !node.name.is_empty()
                        && ep.node_name.as_deref() == Some(node.name.as_str()),
                };
                let text = endpoint.addr_string();
                match entry.get(&text) {
                    // A duplicate across slices: keep the first, unless a
                    // later copy is ready and the first is not.
                    Some(existing) if existing.ready || !endpoint.ready => {}
                    _ => {
                        entry.insert(text, endpoint);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod input_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Warnings of `text` read as `f.yaml`, as display strings; the
    /// streaming and the whole-tree readings must agree.
    fn warnings(text: &str) -> Vec<String> {
        let (_, w) = Objects::from_yaml("f.yaml", text).expect("reads");
        let mut whole = Objects::default();
        let ww = whole
            .add_yaml_whole("f.yaml", text.strip_prefix('\u{feff}').unwrap_or(text))
            .expect("reads whole");
        assert_eq!(w, ww, "streamed and whole readings differ");
        w.iter().map(ToString::to_string).collect()
    }

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\nspec:\n  clusterIP: 10.0.0.1\n  ports: [{port: 80, protocol: TCP}]\n";

    #[test]
    fn kinds_kproxy_does_not_read_are_named_with_file_and_document() {
        let text = format!(
            "{SERVICE}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: ns}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm}}\n---\napiVersion: v1\nkind: service\nmetadata: {{name: typo, namespace: ns}}\n---\napiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {{name: kubernetes}}\nspec: {{cidrs: [10.96.0.0/12]}}\n---\napiVersion: v1\nkind: List\nitems:\n- {{apiVersion: v1, kind: Secret, metadata: {{name: s, namespace: ns}}}}\n- {{apiVersion: v1, kind: Endpoints}}\n---\nmetadata: {{name: kindless}}\n"
        );
        assert_eq!(
            warnings(&text),
            [
                "document 2 of f.yaml: kind: Pod ns/p is not a kind kproxy reads; ignored",
                "document 3 of f.yaml: kind: ConfigMap cm is not a kind kproxy reads; ignored",
                "document 4 of f.yaml: kind: service ns/typo is not a kind kproxy reads; ignored (kinds are case-sensitive: did you mean Service?)",
                "document 6 of f.yaml: items[0].kind: Secret ns/s is not a kind kproxy reads; ignored",
                "document 6 of f.yaml: items[1].kind: Endpoints is not a kind kproxy reads; ignored",
                "document 7 of f.yaml: kind: object kindless has no kind; ignored",
            ]
        );
        let (o, _) = Objects::from_yaml("f.yaml", &text).unwrap();
        assert_eq!(o.services.len(), 1, "the Service is read");
    }

    #[test]
    fn empty_documents_and_non_objects_are_warned_about() {
        let text = format!(
            "{SERVICE}---\n---\n# only a comment\n---\n- a\n- b\n---\n42\n---\napiVersion: v1\nkind: List\nitems: [null, x]\n"
        );
        assert_eq!(
            warnings(&text),
            [
                "document 2 of f.yaml: <document>: empty; ignored",
                "document 3 of f.yaml: <document>: empty; ignored",
                "document 4 of f.yaml: <document>: a sequence of 2 entries, not a Kubernetes object (a list of objects needs kind: List and items); ignored",
                "document 5 of f.yaml: <document>: 42, not a Kubernetes object; ignored",
                "document 6 of f.yaml: items[0]: empty; ignored",
                "document 6 of f.yaml: items[1]: a string, not a Kubernetes object; ignored",
            ]
        );
        // A leading `---` and comments before it start no document.
        assert_eq!(
            warnings(&format!("# header\n---\n{SERVICE}")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_byte_order_mark_is_accepted() {
        let text = format!("\u{feff}{SERVICE}");
        let (o, w) = Objects::from_yaml("f.yaml", &text).expect("a BOM is not an error");
        assert_eq!(o.services.len(), 1);
        assert!(w.is_empty(), "{w:?}");
        let json = "\u{feff}{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"j\"}}";
        let (o, _) = Objects::from_yaml("f.json", json).expect("a BOM before JSON");
        assert_eq!(o.services.len(), 1);
    }

    #[test]
    fn special_purpose_addresses_the_api_server_refuses_are_skipped_with_a_warning() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\nspec:\n  clusterIP: 10.0.0.1\n  externalIPs: [0.0.0.0, 127.0.0.5, 169.254.169.254, 224.0.0.1, \"::ffff:127.0.0.1\", 255.255.255.255, 239.1.1.1, 192.0.2.10]\n  ports: [{name: p, port: 80, protocol: TCP}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: ns, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: p, port: 80, protocol: TCP}]\nendpoints:\n- addresses: [127.0.0.1]\n- addresses: [169.254.1.1]\n- addresses: [10.1.0.1]\n";
        let (objects, w) = Objects::from_yaml("f.yaml", text).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let config = ProxyConfig {
            node_name: "n".into(),
            ..ProxyConfig::default()
        };
        let g = ServiceGraph::build(&objects, &config);
        let warnings: Vec<String> = g.warnings.iter().map(ToString::to_string).collect();
        for expected in [
            "Service ns/web: spec.externalIPs[0]: \"0.0.0.0\" is a special-purpose address (unspecified)",
            "Service ns/web: spec.externalIPs[1]: \"127.0.0.5\" is a special-purpose address (loopback 127.0.0.0/8)",
            "Service ns/web: spec.externalIPs[2]: \"169.254.169.254\" is a special-purpose address (link-local 169.254.0.0/16)",
            "Service ns/web: spec.externalIPs[3]: \"224.0.0.1\" is a special-purpose address (link-local multicast 224.0.0.0/24)",
            "Service ns/web: spec.externalIPs[4]: \"::ffff:127.0.0.1\" is a special-purpose address (loopback 127.0.0.0/8)",
            "EndpointSlice ns/web-1: endpoints[0].addresses[0]: \"127.0.0.1\" is a special-purpose address (loopback 127.0.0.0/8)",
            "EndpointSlice ns/web-1: endpoints[1].addresses[0]: \"169.254.1.1\" is a special-purpose address (link-local 169.254.0.0/16)",
        ] {
            assert!(
                warnings.iter().any(|w| w.starts_with(expected)),
                "no warning {expected:?} in {warnings:#?}"
            );
        }
        assert_eq!(warnings.len(), 7, "{warnings:#?}");
        let fg = g.family(IpFamily::V4).unwrap();
        let sp = fg.services.values().next().unwrap();
        let ips: Vec<String> = sp.external_ips.iter().map(ToString::to_string).collect();
        // Broadcast and other multicast addresses pass validation, and
        // kube-proxy programs them.
        assert_eq!(ips, ["192.0.2.10", "239.1.1.1", "255.255.255.255"]);
        let eps: Vec<String> = sp
            .cluster_endpoints
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(eps, ["10.1.0.1"]);
    }

    #[track_caller]
    fn too_deep(text: &str) -> (usize, usize) {
        match Objects::from_yaml("deep.yaml", text) {
            Err(IntakeError::TooDeep { document, line, .. }) => (document, line),
            other => panic!("not rejected as too deep: {other:?}"),
        }
    }

    #[test]
    fn deep_nesting_is_rejected_before_parsing() {
        let flow = |d: usize| format!("a: {}{}\n", "[".repeat(d), "]".repeat(d));
        assert_eq!(
            too_deep(&format!("{SERVICE}---\n{}", flow(100_000))),
            (2, 8)
        );
        // One bracket a line, and braces, count as much.
        let lines: String = (0..100).map(|_| "{a: [\n").collect();
        too_deep(&lines);
        // Block nesting by indentation.
        let block: String = (0..100)
            .map(|i| format!("{}k:\n", "  ".repeat(i)))
            .collect();
        too_deep(&block);
        // Brackets in quoted strings and comments do not count; a Kubernetes
        // object's depth is far from the limit.
        let text = format!(
            "{SERVICE}  selector: {{app: \"{}\"}}\n# {}\n  x: 'it''s [[[['\n",
            "[".repeat(200),
            "[".repeat(200)
        );
        assert!(flow(MAX_DEPTH - 1).len() > 100);
        Objects::from_yaml("ok.yaml", &text).expect("not too deep");
        Objects::from_yaml("ok.yaml", &flow(MAX_DEPTH - 1)).expect("at the limit");
        let e = Objects::from_yaml("deep.yaml", &flow(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "deep.yaml: document 1: line 1: nested more than 64 levels deep; not read"
        );
    }
}
