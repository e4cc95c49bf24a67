//! Incremental graph building: a sync after a few object changes costs
//! work in proportion to the Services they touch, not to the cluster.
//!
//! [`IncrementalGraph`] keeps the objects indexed by Service (the Service
//! and the EndpointSlices whose `kubernetes.io/service-name` label names
//! it) together with the graph built from them. It keeps them in compact
//! form ([`CompactService`], [`CompactSlice`]: only what the graph reads,
//! and an endpoint is the same allocation the graph's endpoint lists
//! point to); objects
//! given as k8s-openapi types are converted on the way in. Upserts and deletes mark
//! the Services they affect; [`IncrementalGraph::update`] rebuilds only
//! those Services' ports (with the same per-Service code as
//! [`ServiceGraph::build`]), keeps every other port and its fingerprint,
//! and reports the [`ChangeSet`] against the previous update. A change of
//! this node's Node object rebuilds the node-wide part (and every Service
//! when the zone changed, since endpoint selection reads it), and so does
//! a change of the ServiceCIDR objects (which rebuilds no Service: the
//! change set then only says that the service CIDRs changed); a change of
//! the configuration beyond the extra node addresses rebuilds everything.
//!
//! The result equals [`ServiceGraph::build`] on the same objects,
//! warnings included (the tests check it after every step of random
//! change sequences). Objects are identified by namespace and name, as
//! the API server identifies them: upserting an object replaces the one
//! with its identity.
//!
//! The graph is held in an [`Arc`] and changed in place: keep no other
//! clone of it across an [`IncrementalGraph::update`], or the update copies
//! the whole graph first (still correct, only slower).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

use crate::by_name::ByName;
use crate::changes::{ChangeSet, FamilyChanges};
use crate::config::ProxyConfig;
use crate::intake::compact::{CompactService, CompactSlice};
use crate::intake::{
    Base, Objects, SliceClass, SvcKey, build_base, build_unit, classify_slice, service_key,
    unnamed_service_warning,
};
use crate::model::{FamilyGraph, IpFamily, Protocol, ServiceGraph, ServicePort, ServicePortName};
use crate::warning::Warning;

/// An EndpointSlice's identity: `(namespace, name)`.
type SliceKey = (String, String);

/// One Service's objects and what they last contributed to the graph.
#[derive(Debug, Default)]
struct Group {
    service: Option<Arc<CompactService>>,
    /// The slices that name this Service, sorted by name (the order
    /// [`ServiceGraph::build`] merges them in). A vector: most Services
    /// have one slice, and a map node would cost more than the slice.
    slices: Vec<Arc<CompactSlice>>,
    /// The warnings it raised.
    warnings: Vec<Warning>,
}

fn slice_name(s: &CompactSlice) -> &str {
    s.name.as_deref().unwrap_or("")
}

impl Group {
    fn insert_slice(&mut self, slice: Arc<CompactSlice>) {
        match self
            .slices
            .binary_search_by(|s| slice_name(s).cmp(slice_name(&slice)))
        {
            Ok(i) => self.slices[i] = slice,
            Err(i) => self.slices.insert(i, slice),
        }
    }

    fn remove_slice(&mut self, name: &str) {
        if let Ok(i) = self.slices.binary_search_by(|s| slice_name(s).cmp(name)) {
            self.slices.remove(i);
        }
    }
}

/// What an [`IncrementalGraph::update`] changed.
#[derive(Debug, Clone, Default)]
pub struct Update {
    /// The changes against the graph of the previous update: what
    /// [`ChangeSet::between`] would report for the two graphs.
    pub changes: ChangeSet,
    /// The service ports that left the graph, per family (for clean-ups
    /// that need the old port, such as stale UDP flows).
    pub removed: BTreeMap<IpFamily, Vec<ServicePort>>,
    /// How many Services were rebuilt.
    pub rebuilt: usize,
    /// Whether everything was rebuilt (first update, configuration change).
    pub full_rebuild: bool,
}

/// Counts of objects that really changed (kube-proxy's change counters),
/// from one batch of upserts and deletes.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Services added, changed or removed.
    pub services: u64,
    /// EndpointSlices added, changed or removed.
    pub slices: u64,
    /// Nodes added, changed or removed.
    pub nodes: u64,
    /// ServiceCIDRs added, changed or removed.
    pub service_cidrs: u64,
    /// The slices added or changed, for their trigger-time annotations:
    /// each with its namespace, name, `addressType` and that annotation
    /// only.
    pub changed_slices: Vec<Arc<EndpointSlice>>,
    /// The slices removed, as `(namespace, name)`.
    pub deleted_slices: Vec<(String, String)>,
}

impl Applied {
    /// Add another batch's counts.
    pub fn merge(&mut self, other: Applied) {
        self.services += other.services;
        self.slices += other.slices;
        self.nodes += other.nodes;
        self.service_cidrs += other.service_cidrs;
        self.changed_slices.extend(other.changed_slices);
        self.deleted_slices.extend(other.deleted_slices);
    }
}

/// Service objects, EndpointSlices and Nodes indexed by Service, with the
/// graph built from them, updated per changed Service.
#[derive(Debug)]
pub struct IncrementalGraph {
    config: ProxyConfig,
    families: Vec<IpFamily>,
    groups: BTreeMap<SvcKey, Group>,
    /// Every slice by identity. Its class (which group it is in) is not
    /// kept: it is computed again from the slice and the configuration,
    /// which only change together with a rebuild of everything.
    slices: ByName<CompactSlice>,
    nodes: BTreeMap<String, Arc<Node>>,
    /// ServiceCIDRs by name (cluster-scoped).
    service_cidrs: BTreeMap<String, Arc<ServiceCIDR>>,
    /// Services without a name (never from the API server): each is
    /// skipped with the same warning.
    unnamed_services: usize,
    /// Warnings of groups and of slices that name no Service, counted:
    /// several objects may raise the same one.
    warnings: BTreeMap<Warning, usize>,
    /// Warnings of the node-wide part.
    base_warnings: Vec<Warning>,
    /// Warnings the caller adds (the source's own).
    extra_warnings: Vec<Warning>,
    dirty: std::collections::BTreeSet<SvcKey>,
    base_dirty: bool,
    warnings_dirty: bool,
    /// Everything must be rebuilt (new, or configuration changed).
    full_dirty: bool,
    graph: Arc<ServiceGraph>,
}

/// Equal objects: the same allocation (the API source's store hands out
/// the same `Arc` for an unchanged object), else equal content.
fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

/// Compact copies of API objects.
fn compacted<T, C: for<'a> From<&'a T>>(objects: Vec<Arc<T>>) -> impl Iterator<Item = Arc<C>> {
    objects.into_iter().map(|o| Arc::new(C::from(&o)))
}

/// An EndpointSlice's identity, as [`ByName`] reads it.
fn slice_key(slice: &CompactSlice) -> (&str, &str) {
    (
        slice.namespace_or_default(),
        slice.name.as_deref().unwrap_or_default(),
    )
}

/// The graph without its service ports: what decides
/// [`ChangeSet::needs_full_sync`], cheap to copy.
fn header(g: &ServiceGraph) -> ServiceGraph {
    ServiceGraph {
        node: g.node.clone(),
        config: g.config.clone(),
        families: g
            .families
            .iter()
            .map(|(f, fg)| {
                let mut h = FamilyGraph::empty(*f);
                h.node_ips = fg.node_ips.clone();
                h.local_traffic = fg.local_traffic.clone();
                h.nodeport_ips = fg.nodeport_ips.clone();
                h.localhost_nodeports = fg.localhost_nodeports;
                h.service_cidrs = fg.service_cidrs.clone();
                (*f, h)
            })
            .collect(),
        warnings: Vec::new(),
    }
}

impl IncrementalGraph {
    /// An empty cluster seen with `config`.
    pub fn new(config: ProxyConfig) -> Self {
        let base = build_base(&config, None, []);
        let families = base.families.keys().copied().collect();
        let graph = Arc::new(ServiceGraph {
            node: base.node,
            config: config.clone(),
            families: base.families,
            warnings: Vec::new(),
        });
        IncrementalGraph {
            config,
            families,
            groups: BTreeMap::new(),
            slices: ByName::new(slice_key),
            nodes: BTreeMap::new(),
            service_cidrs: BTreeMap::new(),
            unnamed_services: 0,
            warnings: BTreeMap::new(),
            base_warnings: base.warnings,
            extra_warnings: Vec::new(),
            dirty: Default::default(),
            base_dirty: true,
            warnings_dirty: true,
            full_dirty: true,
            graph,
        }
    }

    /// The graph of the last [`update`](Self::update).
    pub fn graph(&self) -> &Arc<ServiceGraph> {
        &self.graph
    }

    /// The configuration in use.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Whether the next [`update`](Self::update) has anything to do.
    pub fn is_dirty(&self) -> bool {
        self.full_dirty || self.base_dirty || self.warnings_dirty || !self.dirty.is_empty()
    }

    /// Use `config` from the next update on. A change of the extra node
    /// addresses alone (host addresses) rebuilds the node-wide part; any
    /// other change rebuilds everything.
    pub fn set_config(&mut self, config: ProxyConfig) {
        if config == self.config {
            return;
        }
        let mut a = config.clone();
        let mut b = self.config.clone();
        a.extra_node_ips.clear();
        b.extra_node_ips.clear();
        if a != b {
            self.full_dirty = true;
        }
        self.base_dirty = true;
        self.config = config;
    }

    /// Warnings to report with the graph's own (the source's), replacing
    /// the previous ones.
    pub fn set_extra_warnings(&mut self, warnings: Vec<Warning>) {
        if warnings != self.extra_warnings {
            self.extra_warnings = warnings;
            self.warnings_dirty = true;
        }
    }

    fn mark(&mut self, key: SvcKey) {
        if !self.full_dirty {
            self.dirty.insert(key);
        }
    }

    /// Add or replace a Service. Returns whether anything changed.
    pub fn upsert_service(&mut self, svc: Arc<Service>) -> bool {
        self.upsert_compact_service(Arc::new(CompactService::from(&*svc)))
    }

    /// [`upsert_service`](Self::upsert_service) of a compact Service.
    pub fn upsert_compact_service(&mut self, svc: Arc<CompactService>) -> bool {
        let Some(key) = service_key(&svc) else {
            self.unnamed_services += 1;
            self.warnings_dirty = true;
            return true;
        };
        let group = self.groups.entry(key.clone()).or_default();
        if group.service.as_ref().is_some_and(|old| same(old, &svc)) {
            return false;
        }
        group.service = Some(svc);
        self.mark(key);
        true
    }

    /// Remove a Service. Returns whether it existed.
    pub fn delete_service(&mut self, namespace: &str, name: &str) -> bool {
        let key = (namespace.to_string(), name.to_string());
        let Some(group) = self.groups.get_mut(&key) else {
            return false;
        };
        if group.service.take().is_none() {
            return false;
        }
        self.mark(key);
        true
    }

    /// Add or replace an EndpointSlice. Returns whether anything changed.
    pub fn upsert_slice(&mut self, slice: Arc<EndpointSlice>) -> bool {
        self.upsert_compact_slice(Arc::new(CompactSlice::from(&*slice)))
    }

    /// [`upsert_slice`](Self::upsert_slice) of a compact slice.
    pub fn upsert_compact_slice(&mut self, slice: Arc<CompactSlice>) -> bool {
        let (ns, name) = slice_key(&slice);
        if let Some(old) = self.slices.get(ns, name)
            && same(old, &slice)
        {
            return false;
        }
        self.remove_slice_entry(ns, name);
        match classify_slice(&self.config, &slice) {
            SliceClass::Ignored => {}
            SliceClass::NoService(w) => {
                *self.warnings.entry(w).or_default() += 1;
                self.warnings_dirty = true;
            }
            SliceClass::Service(svc) => {
                self.groups
                    .entry(svc.clone())
                    .or_default()
                    .insert_slice(slice.clone());
                self.mark(svc);
            }
        }
        self.slices.insert(slice);
        true
    }

    /// Remove an EndpointSlice. Returns whether it existed.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) -> bool {
        self.remove_slice_entry(namespace, name)
    }

    fn remove_slice_entry(&mut self, namespace: &str, name: &str) -> bool {
        let Some(old) = self.slices.remove(namespace, name) else {
            return false;
        };
        // The class it was filed under: the configuration has not changed
        // since (a change rebuilds everything, refiling every slice).
        match classify_slice(&self.config, &old) {
            SliceClass::Ignored => {}
            SliceClass::NoService(w) => {
                self.forget_warning(&w);
                self.warnings_dirty = true;
            }
            SliceClass::Service(svc) => {
                if let Some(g) = self.groups.get_mut(&svc) {
                    g.remove_slice(slice_name(&old));
                }
                self.mark(svc);
            }
        }
        true
    }

    fn forget_warning(&mut self, w: &Warning) {
        if let Some(n) = self.warnings.get_mut(w) {
            *n -= 1;
            if *n == 0 {
                self.warnings.remove(w);
            }
        }
    }

    /// Add or replace a Node (only the one named in the configuration is
    /// read). Returns whether anything changed.
    pub fn upsert_node(&mut self, node: Arc<Node>) -> bool {
        let name = node.metadata.name.clone().unwrap_or_default();
        if self.nodes.get(&name).is_some_and(|old| same(old, &node)) {
            return false;
        }
        if name == self.config.node_name {
            self.base_dirty = true;
        }
        self.nodes.insert(name, node);
        true
    }

    /// Remove a Node. Returns whether it existed.
    pub fn delete_node(&mut self, name: &str) -> bool {
        if self.nodes.remove(name).is_none() {
            return false;
        }
        if name == self.config.node_name {
            self.base_dirty = true;
        }
        true
    }

    /// Add or replace a ServiceCIDR. Returns whether anything changed.
    /// Only the node-wide part is rebuilt: the service CIDRs of each
    /// family (no Service reads them).
    pub fn upsert_service_cidr(&mut self, cidr: Arc<ServiceCIDR>) -> bool {
        let name = cidr.metadata.name.clone().unwrap_or_default();
        if self
            .service_cidrs
            .get(&name)
            .is_some_and(|old| same(old, &cidr))
        {
            return false;
        }
        self.service_cidrs.insert(name, cidr);
        self.base_dirty = true;
        true
    }

    /// Remove a ServiceCIDR. Returns whether it existed.
    pub fn delete_service_cidr(&mut self, name: &str) -> bool {
        if self.service_cidrs.remove(name).is_none() {
            return false;
        }
        self.base_dirty = true;
        true
    }

    /// Make the ServiceCIDRs the whole set. Returns how many changed.
    pub fn replace_service_cidrs(&mut self, cidrs: Vec<Arc<ServiceCIDR>>) -> u64 {
        self.replace_named(
            cidrs,
            |g| &g.service_cidrs,
            Self::upsert_service_cidr,
            Self::delete_service_cidr,
        )
    }

    /// Make the Services the whole set: upsert each, delete the rest (for a
    /// relist). Returns how many changed.
    pub fn replace_compact_services(
        &mut self,
        services: impl IntoIterator<Item = Arc<CompactService>>,
    ) -> u64 {
        let mut n = 0;
        let mut keep: std::collections::BTreeSet<SvcKey> = Default::default();
        let unnamed_before = self.unnamed_services;
        self.unnamed_services = 0;
        for svc in services {
            if let Some(k) = service_key(&svc) {
                keep.insert(k);
            }
            n += u64::from(self.upsert_compact_service(svc));
        }
        if self.unnamed_services != unnamed_before {
            self.warnings_dirty = true;
        }
        let gone: Vec<SvcKey> = self
            .groups
            .iter()
            .filter(|(k, g)| g.service.is_some() && !keep.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for (ns, name) in gone {
            n += u64::from(self.delete_service(&ns, &name));
        }
        n
    }

    /// [`replace_compact_services`](Self::replace_compact_services) with
    /// the API's Services.
    pub fn replace_services(&mut self, services: Vec<Arc<Service>>) -> u64 {
        self.replace_compact_services(compacted(services))
    }

    /// Make the EndpointSlices the whole set: upsert each, delete the rest.
    /// Returns the slices counted in [`Applied::slices`],
    /// [`Applied::changed_slices`] and [`Applied::deleted_slices`].
    pub fn replace_compact_slices(
        &mut self,
        slices: impl IntoIterator<Item = Arc<CompactSlice>>,
    ) -> Applied {
        let mut out = Applied::default();
        let mut keep = ByName::new(slice_key);
        for s in slices {
            if self.upsert_compact_slice(s.clone()) {
                out.slices += 1;
                out.changed_slices.push(Arc::new(s.trigger_only()));
            }
            keep.insert(s);
        }
        let gone: Vec<SliceKey> = self
            .slices
            .iter()
            .filter(|((ns, name), _)| keep.get(ns, name).is_none())
            .map(|((ns, name), _)| (ns.to_string(), name.to_string()))
            .collect();
        for (ns, name) in gone {
            if self.delete_slice(&ns, &name) {
                out.slices += 1;
                out.deleted_slices.push((ns, name));
            }
        }
        out
    }

    /// [`replace_compact_slices`](Self::replace_compact_slices) with the
    /// API's EndpointSlices.
    pub fn replace_slices(&mut self, slices: Vec<Arc<EndpointSlice>>) -> Applied {
        self.replace_compact_slices(compacted(slices))
    }

    /// Make the Nodes the whole set. Returns how many changed.
    pub fn replace_nodes(&mut self, nodes: Vec<Arc<Node>>) -> u64 {
        self.replace_named(nodes, |g| &g.nodes, Self::upsert_node, Self::delete_node)
    }

    /// Make `objects` the whole set of a cluster-scoped kind, kept by name
    /// in `held`: upsert each, delete the rest. Returns how many changed.
    fn replace_named<T>(
        &mut self,
        objects: Vec<Arc<T>>,
        held: fn(&Self) -> &BTreeMap<String, Arc<T>>,
        upsert: fn(&mut Self, Arc<T>) -> bool,
        delete: fn(&mut Self, &str) -> bool,
    ) -> u64
    where
        T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    {
        let keep: std::collections::BTreeSet<String> = objects
            .iter()
            .map(|o| o.metadata().name.clone().unwrap_or_default())
            .collect();
        let mut n = 0;
        for o in objects {
            n += u64::from(upsert(self, o));
        }
        let gone: Vec<String> = held(self)
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for name in gone {
            n += u64::from(delete(self, &name));
        }
        n
    }

    /// Make `objects` the whole state (a file source's new reading).
    /// Objects repeating an identity: the last one counts.
    pub fn replace_all(&mut self, objects: Objects) -> Applied {
        // Each object is converted and dropped in turn: the k8s-openapi
        // objects and their compact copies are never all held at once.
        let mut out = self.replace_compact_slices(
            objects
                .endpoint_slices
                .into_iter()
                .map(|s| Arc::new(CompactSlice::from(s))),
        );
        out.services = self.replace_compact_services(
            objects
                .services
                .into_iter()
                .map(|s| Arc::new(CompactService::from(s))),
        );
        out.nodes = self.replace_nodes(objects.nodes.into_iter().map(Arc::new).collect());
        out.service_cidrs =
            self.replace_service_cidrs(objects.service_cidrs.into_iter().map(Arc::new).collect());
        out
    }

    /// The current objects, Services and slices in namespace and name
    /// order (what [`ServiceGraph::build`] would be given).
    pub fn objects(&self) -> Objects {
        let mut slices: Vec<((&str, &str), &Arc<CompactSlice>)> = self.slices.iter().collect();
        slices.sort_by(|a, b| a.0.cmp(&b.0));
        Objects {
            services: self
                .groups
                .values()
                .filter_map(|g| g.service.as_deref().map(CompactService::to_service))
                .collect(),
            endpoint_slices: slices.into_iter().map(|(_, s)| s.to_slice()).collect(),
            nodes: self.nodes.values().map(|n| (**n).clone()).collect(),
            service_cidrs: self.service_cidrs.values().map(|c| (**c).clone()).collect(),
        }
    }
}

mod rebuild;

#[cfg(test)]
mod tests;
