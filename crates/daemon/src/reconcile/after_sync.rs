//! What follows a successful sync: stale UDP flows deleted, health and
//! health-check node ports updated, and (once) other modes' rules
//! removed.

use std::time::SystemTime;

use kproxy_graph::IpFamily;

use super::plan::SyncPlan;
use super::{Reconciler, block};
use crate::cleanup;
use crate::metrics::FamilyLabel;
use crate::state::lock;

impl Reconciler {
    /// Delete the UDP conntrack flows the sync made stale, compared with
    /// the last applied graph: removed UDP service ports lose their flows
    /// too.
    pub(super) fn conntrack_cleanup(&mut self, plan: &SyncPlan) {
        let Some(ct) = &mut self.conntrack else {
            return;
        };
        let m = &self.shared.metrics;
        let report = block(|| ct.cleanup(plan.before.as_ref(), &plan.graph, plan.changes.as_ref()));
        // One cleanup covers every family: each gets its time.
        for f in plan.graph.families.keys() {
            m.conntrack_duration
                .get_or_create(&FamilyLabel::of(*f))
                .observe(report.duration.as_secs_f64());
        }
        for (fam, n) in report.deleted {
            m.conntrack_deleted
                .get_or_create(&FamilyLabel::of(fam))
                .inc_by(n);
        }
    }

    /// `/healthz` and the health-check node ports follow the new graph.
    pub(super) fn update_health(&mut self, plan: &SyncPlan, now: SystemTime) {
        let graph = &plan.graph;
        let families: Vec<IpFamily> = graph.families.keys().copied().collect();
        {
            let mut h = self.shared.health();
            h.updated(&families, now);
            h.node_eligible = graph.node.known && !graph.node.draining;
        }
        if let Some(hc) = &mut self.hc_ports {
            hc.update(graph);
        }
    }

    /// After the first successful sync: other modes' leftovers (kproxy's
    /// and kube-proxy's) go, so switching modes never opens a window
    /// without rules.
    pub(super) fn cleanup_other_modes(&mut self) {
        if self.cleaned_other_modes || !self.opts.cleanup_other_modes {
            return;
        }
        self.cleaned_other_modes = true;
        let backend = self.backend.clone();
        block(|| cleanup::other_modes(&mut **lock(&backend)));
    }
}
