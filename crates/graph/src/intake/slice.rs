//! EndpointSlices: which Service a slice belongs to, and its endpoints
//! merged into that Service's ports.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::SERVICE_NAME_LABEL;
use super::build::{Ctx, SvcKey, special_purpose};
use super::compact::{AddressType, CompactSlice};
use crate::config::ProxyConfig;
use crate::model::{Endpoint, IpFamily, NodeInfo, ServicePort, ServicePortName};
use crate::warning::{ObjectKind, Warning};

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
pub(crate) fn classify_slice(config: &ProxyConfig, slice: &CompactSlice) -> SliceClass {
    if slice.labels.headless {
        return SliceClass::Ignored;
    }
    if let Some(v) = &slice.labels.proxy_name
        && config.proxy_name.as_deref() != Some(&**v)
    {
        return SliceClass::Ignored;
    }
    let ns = slice.namespace_or_default().to_string();
    match &slice.service_name {
        Some(svc) => SliceClass::Service((ns, svc.to_string())),
        None => SliceClass::NoService(Warning::new(
            ObjectKind::EndpointSlice,
            format!("{ns}/{}", slice.name.as_deref().unwrap_or("<unnamed>")),
            format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            "missing: the slice belongs to no Service, skipped",
        )),
    }
}

/// Merge one slice of the Service `key` into `merged`.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
pub(super) fn intake_slice(
    cx: &mut Ctx<'_>,
    slice: &CompactSlice,
    key: &SvcKey,
    known: bool,
    proxied: bool,
    node: &NodeInfo,
    ports: &BTreeMap<IpFamily, BTreeMap<ServicePortName, ServicePort>>,
    merged: &mut HashMap<(IpFamily, ServicePortName), BTreeMap<String, Arc<Endpoint>>>,
) {
    let (ns, svc_name) = key;
    let sname = slice.name.as_deref().unwrap_or("<unnamed>");
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
        let family = match &slice.address_type {
            AddressType::V4 => IpFamily::V4,
            AddressType::V6 => IpFamily::V6,
            AddressType::Fqdn => return,
            AddressType::Other(other) => {
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
        for (pi, p) in slice.ports.iter().enumerate() {
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
            let field = || format!("ports[{pi}].protocol");
            let Some(protocol) =
                cx.port_protocol(ObjectKind::EndpointSlice, &obj, field, &p.protocol)
            else {
                continue;
            };
            let spn = ServicePortName::new(
                ns.clone(),
                svc_name.clone(),
                p.name.as_deref().unwrap_or_default(),
                protocol,
            );
            let entry = merged.entry((family, spn)).or_default();
            for (ei, ep) in slice.endpoints.iter().enumerate() {
                let Some(address) = ep.address() else {
                    cx.warn(
                        ObjectKind::EndpointSlice,
                        &obj,
                        format!("endpoints[{ei}].addresses"),
                        "empty, endpoint skipped",
                    );
                    continue;
                };
                let addr = || address.text();
                let ip = match address.ip() {
                    Some(ip) if let Some(why) = special_purpose(ip) => Err(format!(
                        "{:?} is a special-purpose address ({why}), which the API server refuses as an endpoint; endpoint skipped",
                        addr()
                    )),
                    Some(ip) if IpFamily::of(&ip) == family => Ok(ip),
                    Some(_) => Err(format!(
                        "{:?} is not an {family} address, endpoint skipped",
                        addr()
                    )),
                    None => Err(format!(
                        "{:?} is not an IP address, endpoint skipped",
                        addr()
                    )),
                };
                let ip = match ip {
                    Ok(ip) => ip,
                    Err(reason) => {
                        // Said once, with the first port.
                        if pi == 0 {
                            cx.warn(
                                ObjectKind::EndpointSlice,
                                &obj,
                                format!("endpoints[{ei}].addresses[0]"),
                                reason,
                            );
                        }
                        continue;
                    }
                };
                let is_local = !node.name.is_empty()
                    && ep.node_name().map(|n| &**n) == Some(node.name.as_str());
                let endpoint = ep.graph_endpoint(ip, port, is_local);
                let text = crate::display::addr_text(endpoint.ip, endpoint.port);
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
