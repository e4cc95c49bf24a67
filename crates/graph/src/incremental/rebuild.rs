//! The rebuild stage of [`IncrementalGraph`]: [`IncrementalGraph::update`]
//! applies the pending changes, rebuilding only the Services they touch
//! (or everything after a configuration change).

use super::*;

/// Rebuild each family's maps of service ports and fingerprints with
/// full nodes. A full rebuild inserts the ports in key order, and a
/// `BTreeMap` filled by appending keeps its nodes a little over half full
/// (a full leaf splits six to the left, the rest to the right): at 50,000
/// Services the service-port map took about 45 MB where its entries need
/// about 25. Collecting a sorted map builds full nodes.
fn pack_maps(graph: &mut ServiceGraph) {
    for fg in graph.families.values_mut() {
        fg.services = std::mem::take(&mut fg.services).into_iter().collect();
        fg.fingerprints = std::mem::take(&mut fg.fingerprints).into_iter().collect();
    }
}

impl IncrementalGraph {
    /// Apply the pending changes to the graph; see [`Update`].
    pub fn update(&mut self) -> Update {
        if self.full_dirty {
            return self.rebuild_all();
        }
        let families_unchanged = || {
            let changes = ChangeSet {
                families: self
                    .graph
                    .families
                    .keys()
                    .map(|f| (*f, FamilyChanges::default()))
                    .collect(),
                needs_full_sync: false,
                service_cidrs_changed: false,
            };
            Update {
                changes,
                ..Update::default()
            }
        };
        if !self.is_dirty() {
            return families_unchanged();
        }
        let before = header(&self.graph);
        let mut g = self.take_graph();
        let graph = Arc::make_mut(&mut g);
        if self.base_dirty {
            let base = build_base(
                &self.config,
                self.nodes.get(&self.config.node_name).map(|n| &**n),
                self.service_cidrs.values().map(|c| &**c),
            );
            if base.node.name != graph.node.name || base.node.zone != graph.node.zone {
                // Endpoint selection reads the node's name and zone.
                self.dirty.extend(self.groups.keys().cloned());
            }
            self.apply_base(graph, base);
            self.base_dirty = false;
        }
        let mut families: BTreeMap<IpFamily, FamilyChanges> = graph
            .families
            .keys()
            .filter(|f| before.families.contains_key(f))
            .map(|f| (*f, FamilyChanges::default()))
            .collect();
        let mut removed: BTreeMap<IpFamily, Vec<ServicePort>> = BTreeMap::new();
        let dirty = std::mem::take(&mut self.dirty);
        let rebuilt = dirty.len();
        for key in dirty {
            self.rebuild_group(graph, &key, &mut families, &mut removed);
        }
        self.assemble_warnings(graph);
        self.graph = g;
        let node_wide = ChangeSet::between(&before, &header(&self.graph));
        Update {
            changes: ChangeSet {
                families,
                needs_full_sync: node_wide.needs_full_sync,
                service_cidrs_changed: node_wide.service_cidrs_changed,
            },
            removed,
            rebuilt,
            full_rebuild: false,
        }
    }

    /// Copy the node-wide part into `graph`, keeping its service ports.
    pub(super) fn apply_base(&mut self, graph: &mut ServiceGraph, base: Base) {
        graph.node = base.node;
        graph.config = self.config.clone();
        for (f, h) in base.families {
            let fg = graph
                .families
                .entry(f)
                .or_insert_with(|| FamilyGraph::empty(f));
            fg.node_ips = h.node_ips;
            fg.local_traffic = h.local_traffic;
            fg.nodeport_ips = h.nodeport_ips;
            fg.localhost_nodeports = h.localhost_nodeports;
            fg.service_cidrs = h.service_cidrs;
        }
        self.base_warnings = base.warnings;
        self.warnings_dirty = true;
    }

    pub(super) fn rebuild_group(
        &mut self,
        graph: &mut ServiceGraph,
        key: &SvcKey,
        changes: &mut BTreeMap<IpFamily, FamilyChanges>,
        removed: &mut BTreeMap<IpFamily, Vec<ServicePort>>,
    ) {
        let Some(group) = self.groups.get_mut(key) else {
            return;
        };
        // Take out what the group contributed last time: its ports are
        // the graph's entries named `namespace/name`, one run of keys.
        let mut old: BTreeMap<(IpFamily, ServicePortName), (Option<ServicePort>, Option<u64>)> =
            BTreeMap::new();
        let first = ServicePortName::new(key.0.clone(), key.1.clone(), "", Protocol::Tcp);
        for (f, fg) in graph.families.iter_mut() {
            let names: Vec<ServicePortName> = fg
                .services
                .range(&first..)
                .take_while(|(k, _)| k.namespace == key.0 && k.name == key.1)
                .map(|(k, _)| k.clone())
                .collect();
            for spn in names {
                let sp = fg.services.remove(&spn);
                let fp = fg.fingerprints.remove(&spn);
                old.insert((*f, spn), (sp, fp));
            }
        }
        for w in std::mem::take(&mut group.warnings) {
            if let Some(n) = self.warnings.get_mut(&w) {
                *n -= 1;
                if *n == 0 {
                    self.warnings.remove(&w);
                }
            }
        }
        self.warnings_dirty = true;

        let services: Vec<&CompactService> = group.service.as_deref().into_iter().collect();
        let slices: Vec<&CompactSlice> = group.slices.iter().map(|s| &**s).collect();
        let unit = build_unit(
            &self.config,
            &graph.node,
            &self.families,
            key,
            &services,
            &slices,
        );
        for (f, sp, fp) in unit.ports {
            let Some(fg) = graph.families.get_mut(&f) else {
                continue;
            };
            let name = sp.name.clone();
            let fc = changes.entry(f).or_default();
            match old.remove(&(f, name.clone())) {
                Some((_, Some(prev))) if prev == fp => {}
                Some(_) => {
                    fc.changed.insert(name.clone());
                }
                None => {
                    fc.added.insert(name.clone());
                }
            }
            fg.fingerprints.insert(name.clone(), fp);
            fg.services.insert(name, sp);
        }
        for ((f, name), (sp, _)) in old {
            changes.entry(f).or_default().removed.insert(name);
            if let Some(sp) = sp {
                removed.entry(f).or_default().push(sp);
            }
        }
        for w in &unit.warnings {
            *self.warnings.entry(w.clone()).or_default() += 1;
        }
        group.warnings = unit.warnings;
        if group.service.is_none() && group.slices.is_empty() {
            self.groups.remove(key);
        }
    }

    pub(super) fn assemble_warnings(&mut self, graph: &mut ServiceGraph) {
        if !self.warnings_dirty {
            return;
        }
        let mut w: Vec<Warning> = self.warnings.keys().cloned().collect();
        w.extend(self.base_warnings.iter().cloned());
        w.extend(self.extra_warnings.iter().cloned());
        if self.unnamed_services > 0 {
            w.push(unnamed_service_warning());
        }
        w.sort();
        w.dedup();
        graph.warnings = w;
        self.warnings_dirty = false;
    }

    /// The current graph, leaving an empty one of this configuration in
    /// its place.
    fn take_graph(&mut self) -> Arc<ServiceGraph> {
        let empty = ServiceGraph {
            node: Default::default(),
            config: self.config.clone(),
            families: BTreeMap::new(),
            warnings: Vec::new(),
        };
        std::mem::replace(&mut self.graph, Arc::new(empty))
    }

    /// Rebuild from the objects alone: the first update, and after a
    /// configuration change (slices are classified with the proxy name).
    pub(super) fn rebuild_all(&mut self) -> Update {
        let prev = self.take_graph();
        let base = build_base(
            &self.config,
            self.nodes.get(&self.config.node_name).map(|n| &**n),
            self.service_cidrs.values().map(|c| &**c),
        );
        self.families = base.families.keys().copied().collect();
        let mut graph = ServiceGraph {
            node: Default::default(),
            config: self.config.clone(),
            families: BTreeMap::new(),
            warnings: Vec::new(),
        };
        self.apply_base(&mut graph, base);
        // Reclassify every slice: the proxy name may have changed.
        self.warnings.clear();
        for g in self.groups.values_mut() {
            g.slices.clear();
            g.warnings.clear();
        }
        self.groups.retain(|_, g| g.service.is_some());
        for slice in self.slices.values() {
            match classify_slice(&self.config, slice) {
                SliceClass::Ignored => {}
                SliceClass::NoService(w) => *self.warnings.entry(w).or_default() += 1,
                SliceClass::Service(svc) => {
                    self.groups
                        .entry(svc)
                        .or_default()
                        .insert_slice(slice.clone());
                }
            }
        }
        let keys: Vec<SvcKey> = self.groups.keys().cloned().collect();
        let rebuilt = keys.len();
        let mut scratch = BTreeMap::new();
        let mut scratch_removed = BTreeMap::new();
        for key in keys {
            self.rebuild_group(&mut graph, &key, &mut scratch, &mut scratch_removed);
        }
        pack_maps(&mut graph);
        self.groups = std::mem::take(&mut self.groups).into_iter().collect();
        self.warnings_dirty = true;
        self.assemble_warnings(&mut graph);
        self.dirty.clear();
        self.base_dirty = false;
        self.full_dirty = false;
        let changes = ChangeSet::between(&prev, &graph);
        let mut removed: BTreeMap<IpFamily, Vec<ServicePort>> = BTreeMap::new();
        let mut prev = Arc::try_unwrap(prev).unwrap_or_else(|a| (*a).clone());
        for (f, fc) in &changes.families {
            if let Some(pf) = prev.families.get_mut(f) {
                for name in &fc.removed {
                    if let Some(sp) = pf.services.remove(name) {
                        removed.entry(*f).or_default().push(sp);
                    }
                }
            }
        }
        self.graph = Arc::new(graph);
        Update {
            changes,
            removed,
            rebuilt,
            full_rebuild: true,
        }
    }
}
