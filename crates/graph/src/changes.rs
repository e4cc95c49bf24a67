//! Change tracking between two service graphs.
//!
//! Each [`FamilyGraph`] carries a fingerprint per service port, computed
//! when the graph is built; comparing two graphs compares fingerprints, not
//! every field of every Service.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use crate::model::{FamilyGraph, IpFamily, ServiceGraph, ServicePort, ServicePortName};

/// A stable fingerprint of one service port: everything a generator may
/// render for it (VIPs, ports, policies, endpoints, decisions).
pub(crate) fn fingerprint(sp: &ServicePort) -> u64 {
    // FxHash has no keys: equal input gives equal output within one build,
    // which is all change tracking needs (the fingerprints live in the
    // process alone). SipHash's resistance to chosen collisions buys
    // nothing here, and cost a third of the graph build at 10,000
    // Services.
    let mut h = rustc_hash::FxHasher::default();
    sp.hash(&mut h);
    h.finish()
}

/// What changed in one family between two graphs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyChanges {
    /// Service ports that are new.
    pub added: BTreeSet<ServicePortName>,
    /// Service ports that are gone.
    pub removed: BTreeSet<ServicePortName>,
    /// Service ports whose fingerprint changed.
    pub changed: BTreeSet<ServicePortName>,
}

impl FamilyChanges {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Added or changed: the service ports whose objects must be (re)written.
    pub fn dirty(&self) -> impl Iterator<Item = &ServicePortName> {
        self.added.iter().chain(self.changed.iter())
    }

    /// Compare two family graphs.
    pub fn between(prev: &FamilyGraph, next: &FamilyGraph) -> Self {
        let mut c = FamilyChanges::default();
        for (name, fp) in &next.fingerprints {
            match prev.fingerprints.get(name) {
                None => {
                    c.added.insert(name.clone());
                }
                Some(old) if old != fp => {
                    c.changed.insert(name.clone());
                }
                Some(_) => {}
            }
        }
        for name in prev.fingerprints.keys() {
            if !next.fingerprints.contains_key(name) {
                c.removed.insert(name.clone());
            }
        }
        c
    }
}

/// What changed between two graphs, and whether the change needs a full
/// sync anyway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Per-family service changes.
    pub families: std::collections::BTreeMap<IpFamily, FamilyChanges>,
    /// Something outside the service ports changed (node topology labels,
    /// node addresses, configuration, detector): only a full sync is right.
    pub needs_full_sync: bool,
    /// The service CIDRs of some family changed (ServiceCIDR objects):
    /// a backend that renders them updates only those (nftables' drop
    /// set); no full sync is needed for it.
    pub service_cidrs_changed: bool,
}

impl ChangeSet {
    /// Compare `prev` with `next`.
    pub fn between(prev: &ServiceGraph, next: &ServiceGraph) -> Self {
        let mut needs_full_sync = prev.config != next.config
            || prev.node.topology_labels != next.node.topology_labels
            || prev.node.zone != next.node.zone
            || prev.node.ips != next.node.ips
            || prev.node.pod_cidrs != next.node.pod_cidrs;
        let mut service_cidrs_changed = false;
        let mut families = std::collections::BTreeMap::new();
        for (family, nf) in &next.families {
            match prev.families.get(family) {
                Some(pf) => {
                    if pf.local_traffic != nf.local_traffic
                        || pf.nodeport_ips != nf.nodeport_ips
                        || pf.localhost_nodeports != nf.localhost_nodeports
                    {
                        needs_full_sync = true;
                    }
                    service_cidrs_changed |= pf.service_cidrs != nf.service_cidrs;
                    families.insert(*family, FamilyChanges::between(pf, nf));
                }
                None => needs_full_sync = true,
            }
        }
        if prev.families.keys().ne(next.families.keys()) {
            needs_full_sync = true;
        }
        ChangeSet {
            families,
            needs_full_sync,
            service_cidrs_changed,
        }
    }

    /// No service port and no service CIDR changed, and no full sync is
    /// needed.
    pub fn is_empty(&self) -> bool {
        !self.needs_full_sync
            && !self.service_cidrs_changed
            && self.families.values().all(FamilyChanges::is_empty)
    }

    /// The changes of one family (empty if none were recorded).
    pub fn family(&self, family: IpFamily) -> FamilyChanges {
        self.families.get(&family).cloned().unwrap_or_default()
    }
}
