//! Assembly: one Service and its slices into service ports, and the
//! whole graph from objects.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::Objects;
use super::compact::{CompactService, CompactSlice, ProtocolField};
use super::node::{Base, build_base};
use super::service::intake_service;
use super::slice::{SliceClass, classify_slice, intake_slice};
use crate::changes::fingerprint;
use crate::config::ProxyConfig;
use crate::model::{
    Endpoint, IpFamily, NodeInfo, Protocol, ServiceGraph, ServicePort, ServicePortName,
};
use crate::select::select;
use crate::warning::{ObjectKind, Warning};

pub(super) struct Ctx<'a> {
    pub(super) config: &'a ProxyConfig,
    pub(super) warnings: Vec<Warning>,
}

impl Ctx<'_> {
    pub(super) fn warn(
        &mut self,
        kind: ObjectKind,
        object: &str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.warnings
            .push(Warning::new(kind, object, field, reason));
    }

    /// A port's protocol, or `None` when kproxy does not proxy it: the
    /// port is then skipped, with a warning on `field` (made only then).
    pub(super) fn port_protocol(
        &mut self,
        kind: ObjectKind,
        object: &str,
        field: impl FnOnce() -> String,
        protocol: &ProtocolField,
    ) -> Option<Protocol> {
        match protocol {
            ProtocolField::Known(p) => Some(*p),
            ProtocolField::Other(text) => {
                let reason = format!("{text:?} is not TCP, UDP or SCTP; port skipped");
                self.warn(kind, object, field(), reason);
                None
            }
        }
    }
}

pub(super) fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim().parse().ok()
}

/// What kind of special-purpose address `ip` is, when the API server
/// refuses it as an EndpointSlice address or an external IP (its
/// `ValidateEndpointIP`: unspecified, loopback, link-local and link-local
/// multicast; broadcast and other multicast addresses pass). kube-proxy
/// never sees such an object; from files kproxy skips the address.
pub(super) fn special_purpose(ip: IpAddr) -> Option<&'static str> {
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

/// A Service's identity: `(namespace, name)`; a missing namespace reads as
/// `default`, as for the EndpointSlices that refer to it.
pub(crate) type SvcKey = (String, String);

/// The key of a named Service; `None` (with [`unnamed_service_warning`])
/// for one without a name.
pub(crate) fn service_key(svc: &CompactService) -> Option<SvcKey> {
    let name = svc.name.as_deref()?.to_string();
    Some((svc.namespace_or_default().to_string(), name))
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
    services: &[&CompactService],
    slices: &[&CompactSlice],
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
    let mut merged: HashMap<(IpFamily, ServicePortName), BTreeMap<String, Arc<Endpoint>>> =
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
            sp.endpoints = eps.into_values().collect();
        }
    }
    let mut out = Vec::new();
    for (family, m) in ports {
        for (_, mut sp) in m {
            // Already in `ip:port` text order: `merged` is keyed by that
            // text, so sorting them again would only cost.
            debug_assert!(sp.endpoints.is_sorted_by_key(|e| e.addr_string()));
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

/// Inputs shorter than this are mapped on one thread.
const PARALLEL_MIN: usize = 512;

/// `f` of each of `items`, in order; the second half on another thread
/// when the input is large and the machine has a second CPU. Each item's
/// result depends on that item alone, so the result is the same either
/// way.
fn par_map<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    if items.len() < PARALLEL_MIN || !super::two_cpus() {
        return items.iter().map(f).collect();
    }
    let (first, second) = items.split_at(items.len() / 2);
    std::thread::scope(|s| {
        let other = s.spawn(|| second.iter().map(&f).collect::<Vec<U>>());
        let mut out = Vec::with_capacity(items.len());
        out.extend(first.iter().map(&f));
        match other.join() {
            Ok(rest) => out.extend(rest),
            Err(panic) => std::panic::resume_unwind(panic),
        }
        out
    })
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
        let services: Vec<CompactService> = par_map(&objects.services, |s| CompactService::from(s));
        let slices: Vec<CompactSlice> =
            par_map(&objects.endpoint_slices, |s| CompactSlice::from(s));

        // Every Service seen (proxied or not) has a group, so slices of
        // skipped Services are not reported as orphans.
        type Group<'a> = (Vec<&'a CompactService>, Vec<&'a CompactSlice>);
        let mut groups: BTreeMap<SvcKey, Group<'_>> = BTreeMap::new();
        for svc in &services {
            match service_key(svc) {
                Some(key) => groups.entry(key).or_default().0.push(svc),
                None => warnings.push(unnamed_service_warning()),
            }
        }
        // Slices in name order, so duplicates resolve the same way every time.
        let mut slices: Vec<&CompactSlice> = slices.iter().collect();
        slices.sort_by(|a, b| {
            (a.namespace.as_deref(), a.name.as_deref())
                .cmp(&(b.namespace.as_deref(), b.name.as_deref()))
        });
        for slice in slices {
            match classify_slice(config, slice) {
                SliceClass::Ignored => {}
                SliceClass::NoService(w) => warnings.push(w),
                SliceClass::Service(key) => groups.entry(key).or_default().1.push(slice),
            }
        }

        let groups: Vec<(&SvcKey, &Group<'_>)> = groups.iter().collect();
        let units = par_map(&groups, |(key, (services, slices))| {
            build_unit(config, &node, &enabled, key, services, slices)
        });
        for unit in units {
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
